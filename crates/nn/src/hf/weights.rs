//! `model.safetensors` by Hugging Face's tensor names: read (f32, f16 and bf16, widened to f32),
//! checked against the shapes a config implies, and written back as `save_pretrained` writes it.

use crate::error::{NnError, Result};
use crate::hf::file_err;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// A tensor the model expects: its name and, per dimension, the size and the config.json field
/// that gives it (so a disagreement names the field).
#[derive(Clone, Debug)]
pub struct Spec {
    /// Hugging Face's name (`encoder.layer.0.attention.self.query.weight`).
    pub name: String,
    /// (size, config field) per dimension.
    pub dims: Vec<(usize, &'static str)>,
    /// The model works without it (BERT's pooler).
    pub optional: bool,
}

impl Spec {
    /// A required tensor.
    pub fn new(name: impl Into<String>, dims: &[(usize, &'static str)]) -> Spec {
        Spec {
            name: name.into(),
            dims: dims.to_vec(),
            optional: false,
        }
    }
    /// The same, optional.
    pub fn optional(mut self) -> Spec {
        self.optional = true;
        self
    }
    /// The expected shape.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().map(|d| d.0).collect()
    }
}

pub use crate::error::WeightsReport;

/// What to do with a tensor name found in a file.
pub enum Name {
    /// The model's tensor of this (canonical) name.
    Tensor(String),
    /// A buffer or a head the model does not use (`embeddings.position_ids`, GPT-2's
    /// `attn.bias`, a tied `lm_head.weight`): skipped.
    Ignore,
}

/// A safetensors file read whole, with its tensors matched to a model's [`Spec`]s.
pub struct Weights {
    path: String,
    bytes: Vec<u8>,
    /// Canonical name -> name in the file.
    names: HashMap<String, String>,
}

impl Weights {
    /// Reads `path` and matches it against `specs`: `canonical` maps each file name to the
    /// model's name (or says to ignore it). Every missing required tensor, unexpected tensor and
    /// tensor of the wrong shape or dtype is reported together, each mismatch naming the config
    /// field of the dimension that disagrees.
    pub fn load(path: &Path, specs: &[Spec], canonical: impl Fn(&str) -> Name) -> Result<Weights> {
        let bytes = std::fs::read(path).map_err(|e| file_err(path, e.to_string()))?;
        let st = parse(path, &bytes)?;
        let mut names = HashMap::new();
        let mut report = WeightsReport::default();
        for file_name in st.names() {
            match canonical(file_name) {
                Name::Ignore => {}
                Name::Tensor(c) => {
                    if let Some(prev) = names.insert(c.clone(), file_name.to_string()) {
                        report
                            .mismatched
                            .push(format!("{c}: stored twice (as {prev} and {file_name})"));
                    }
                }
            }
        }
        let by_name: HashMap<&str, &Spec> = specs.iter().map(|s| (s.name.as_str(), s)).collect();
        // (field, config's size, file's size) -> tensors that disagree so.
        let mut fields: BTreeMap<(&str, usize, usize), usize> = BTreeMap::new();
        let mut sorted: Vec<&String> = names.keys().collect();
        sorted.sort();
        for c in sorted {
            if !by_name.contains_key(c.as_str()) {
                report.unexpected.push(names[c].clone());
            }
        }
        for s in specs {
            let Some(file_name) = names.get(&s.name) else {
                if !s.optional {
                    report.missing.push(s.name.clone());
                }
                continue;
            };
            let v = st.tensor(file_name).expect("a listed name");
            if !matches!(v.dtype(), Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                report.mismatched.push(format!(
                    "{}: dtype {:?}, expected a float tensor (F32, F16 or BF16)",
                    s.name,
                    v.dtype()
                ));
            } else if v.shape() != s.shape() {
                report.mismatched.push(shape_mismatch(s, v.shape()));
                if v.shape().len() == s.dims.len() {
                    for (&(size, field), &got) in s.dims.iter().zip(v.shape()) {
                        if size != got && !field.is_empty() {
                            *fields.entry((field, size, got)).or_insert(0usize) += 1;
                        }
                    }
                }
            }
        }
        for ((field, size, got), n) in fields {
            report.notes.push(format!(
                "config.json's {field} = {size} disagrees with the file's {got} ({n} tensors)"
            ));
        }
        if !report.is_empty() {
            return Err(NnError::Weights {
                path: path.display().to_string(),
                report,
            });
        }
        Ok(Weights {
            path: path.display().to_string(),
            bytes,
            names,
        })
    }

    /// Whether the file has the model's tensor `name`.
    pub fn has(&self, name: &str) -> bool {
        self.names.contains_key(name)
    }

    /// The model's tensor `name` as f32 values (f16 and bf16 widened exactly).
    pub fn f32(&self, name: &str) -> Result<Vec<f32>> {
        let file_name = self.names.get(name).ok_or_else(|| NnError::File {
            path: self.path.clone(),
            message: format!("no tensor {name}"),
        })?;
        let st = parse(Path::new(&self.path), &self.bytes)?;
        let v = st.tensor(file_name).expect("a listed name");
        Ok(widen(&v))
    }
}

fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>> {
    if bytes.is_empty() {
        return Err(file_err(path, "empty file"));
    }
    SafeTensors::deserialize(bytes).map_err(|e| {
        file_err(
            path,
            format!("not a valid safetensors file ({e}): truncated, or another format?"),
        )
    })
}

fn widen(v: &TensorView) -> Vec<f32> {
    let d = v.data();
    match v.dtype() {
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }
}

fn shape_mismatch(s: &Spec, got: &[usize]) -> String {
    let want = s.shape();
    let mut fields: Vec<String> = if got.len() == want.len() {
        s.dims
            .iter()
            .zip(got)
            .filter(|((size, _), g)| size != *g)
            .map(|((size, field), g)| match *field {
                "" => format!("a fixed size {size} disagrees with {g}"),
                f => format!("{f} = {size} disagrees with {g}"),
            })
            .collect()
    } else {
        vec![format!(
            "expected {} dimensions from {}",
            want.len(),
            s.dims
                .iter()
                .map(|d| d.1)
                .filter(|f| !f.is_empty())
                .collect::<Vec<_>>()
                .join(", ")
        )]
    };
    fields.dedup();
    format!(
        "{}: shape {got:?} in the file, config.json gives {want:?} ({})",
        s.name,
        fields.join("; ")
    )
}

/// Writes `tensors` (name, shape, f32 values) as a safetensors file with `save_pretrained`'s
/// metadata (`format: pt`), atomically.
pub fn save(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<()> {
    save_with_metadata(path, tensors, &[])
}

/// [`save`] with more metadata (string pairs) beside `format: pt`.
pub fn save_with_metadata(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: &[(String, String)],
) -> Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| {
            let b = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (n.clone(), s.clone(), b)
        })
        .collect();
    let mut views = BTreeMap::new();
    for (n, s, b) in &bytes {
        let view = TensorView::new(Dtype::F32, s.clone(), b)
            .map_err(|e| file_err(path, format!("{n}: {e}")))?;
        views.insert(n.clone(), view);
    }
    let mut meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    meta.extend(metadata.iter().cloned());
    let out =
        safetensors::serialize(views, Some(meta)).map_err(|e| file_err(path, e.to_string()))?;
    crate::serialize::write_atomically(path, &out)?;
    Ok(())
}

/// A weights error with a note naming the config's layer-count `field` where the weights hold layers past it
/// (tensors `prefix<N>.` with N >= `layers`) or lack whole layers.
pub fn layer_hint(e: NnError, layers: usize, prefix: &str, field: &str) -> NnError {
    let NnError::Weights { path, mut report } = e else {
        return e;
    };
    let index = |n: &String| {
        n.split_once(prefix)
            .and_then(|(_, r)| r.split('.').next()?.parse::<usize>().ok())
    };
    if report
        .unexpected
        .iter()
        .any(|n| index(n).is_some_and(|i| i >= layers))
    {
        report.notes.push(format!(
            "the file has layers past config.json's {field} = {layers}"
        ));
    } else if !report.missing.is_empty() && report.missing.iter().all(|n| index(n).is_some()) {
        let first = report.missing.iter().filter_map(index).min().unwrap_or(0);
        report.notes.push(format!(
            "the file has no layer {first} and beyond, config.json's {field} = {layers}"
        ));
    }
    NnError::Weights { path, report }
}
