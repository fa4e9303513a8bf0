//! Named tensors as safetensors files with PyTorch's state_dict names and layouts, written
//! atomically (temporary file in the same directory, flushed and synced, then renamed) and carrying
//! a CRC32 of their payload, so a truncated or altered file is rejected on load. Training
//! checkpoints (optimizer state, epochs done) build on these in kiln-train.

use crate::{NnError, Result};
use kiln_graph::Tensor;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

const CHECKSUM_KEY: &str = "kiln.crc32";
/// Metadata key that marks a quantized model file, with its precision ("int8", "f16").
pub(crate) const QUANTIZED_KEY: &str = "kiln.quantized";

pub(crate) fn err(path: &Path, message: impl Into<String>) -> NnError {
    NnError::Data {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Writes `named` tensors (f32) and `metadata` to `path` atomically: the previous file, if any,
/// stays intact until the new one is complete on disk.
pub fn save(path: &Path, named: &[(String, Tensor)], metadata: &[(String, String)]) -> Result<()> {
    let mut tensors = Vec::with_capacity(named.len());
    for (name, t) in named {
        tensors.push(RawTensor::f32(name, t.shape(), &t.to_vec()?));
    }
    save_raw(path, tensors, metadata)
}

/// One tensor as stored: name, dtype, shape and little-endian bytes.
#[derive(Clone, Debug)]
pub(crate) struct RawTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl RawTensor {
    pub fn f32(name: &str, shape: &[usize], v: &[f32]) -> RawTensor {
        RawTensor {
            name: name.to_string(),
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            data: bytes_of(v),
        }
    }
    /// The values as f32 (the dtype must be F32).
    pub fn to_f32(&self) -> Vec<f32> {
        self.data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
}

/// Writes tensors of any dtype with a checksum, atomically.
pub(crate) fn save_raw(
    path: &Path,
    mut tensors: Vec<RawTensor>,
    metadata: &[(String, String)],
) -> Result<()> {
    // The checksum covers names, shapes and data in name order (the order safetensors stores).
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let mut meta: HashMap<String, String> = metadata.iter().cloned().collect();
    meta.insert(
        CHECKSUM_KEY.into(),
        format!(
            "{:08x}",
            checksum(
                tensors
                    .iter()
                    .map(|t| (t.name.as_str(), &t.shape[..], &t.data[..]))
            )
        ),
    );
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|t| {
            Ok((
                t.name.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.data)
                    .map_err(|e| err(path, e.to_string()))?,
            ))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| err(path, e.to_string()))?;
    write_atomically(path, &bytes)
}

/// Reads every tensor (checksum verified) and the metadata.
pub(crate) fn read_raw(
    path: &Path,
) -> Result<(HashMap<String, RawTensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path).map_err(|e| err(path, e.to_string()))?;
    let (st, meta) = verified(path, &bytes)?;
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let t = RawTensor {
                name: name.clone(),
                dtype: v.dtype(),
                shape: v.shape().to_vec(),
                data: v.data().to_vec(),
            };
            (name, t)
        })
        .collect();
    Ok((tensors, meta))
}

/// Writes bytes to a temporary file beside `path`, syncs it, and renames it over `path`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| err(path, "not a file path"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is synced.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(
            path,
            format!("writing failed, previous file left as it was: {e}"),
        ));
    }
    Ok(())
}

fn bytes_of(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn checksum<'a>(items: impl Iterator<Item = (&'a str, &'a [usize], &'a [u8])>) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for (name, shape, data) in items {
        h.update(name.as_bytes());
        for d in shape {
            h.update(&(*d as u64).to_le_bytes());
        }
        h.update(data);
    }
    h.finalize()
}

/// What a non-strict load skipped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Model parameters the file does not have (left as they were).
    pub missing: Vec<String>,
    /// File tensors the model does not have.
    pub unexpected: Vec<String>,
    /// Names in both with different shapes or dtypes (left as they were), with the reason.
    pub mismatched: Vec<String>,
}

/// The file's metadata (checksum verified).
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    let bytes = std::fs::read(path).map_err(|e| err(path, e.to_string()))?;
    let (_, meta) = verified(path, &bytes)?;
    Ok(meta)
}

fn verified<'a>(
    path: &Path,
    bytes: &'a [u8],
) -> Result<(SafeTensors<'a>, HashMap<String, String>)> {
    if bytes.is_empty() {
        return Err(err(path, "empty file"));
    }
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        err(
            path,
            format!("not a valid safetensors file ({e}); truncated?"),
        )
    })?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| err(path, e.to_string()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    if let Some(want) = meta.get(CHECKSUM_KEY) {
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        let views: Vec<TensorView> = names
            .iter()
            .map(|n| st.tensor(n).expect("listed name"))
            .collect();
        let got = format!(
            "{:08x}",
            checksum(
                names
                    .iter()
                    .zip(&views)
                    .map(|(n, v)| (n.as_str(), v.shape(), v.data()))
            )
        );
        if &got != want {
            return Err(err(path, format!("checksum mismatch: the file says {want}, its contents give {got} (altered or corrupt)")));
        }
    }
    Ok((st, meta))
}

/// Loads tensors into the model's parameters by name. Strict: any missing, unexpected or
/// mis-shaped tensor is an error naming it, and nothing is changed. Non-strict: those are skipped
/// and reported.
pub fn load(path: &Path, named: &[(String, Tensor)], strict: bool) -> Result<LoadReport> {
    let bytes = std::fs::read(path).map_err(|e| err(path, e.to_string()))?;
    let (st, meta) = verified(path, &bytes)?;
    if let Some(q) = meta.get(QUANTIZED_KEY) {
        return Err(err(
            path,
            format!("holds a {q}-quantized model, not f32 parameters: load it with quant::QuantizedModel::load"),
        ));
    }
    let mut report = LoadReport::default();
    let mut writes = Vec::new();
    for (name, t) in named {
        match st.tensor(name) {
            Err(_) => report.missing.push(name.clone()),
            Ok(v) if v.dtype() != Dtype::F32 => report
                .mismatched
                .push(format!("{name}: dtype {:?}, model has F32", v.dtype())),
            Ok(v) if v.shape() != t.shape() => report.mismatched.push(format!(
                "{name}: shape {:?} in the file, {:?} in the model",
                v.shape(),
                t.shape()
            )),
            Ok(v) => writes.push((t, v)),
        }
    }
    let known: std::collections::HashSet<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    report.unexpected = st
        .names()
        .into_iter()
        .filter(|n| !known.contains(*n))
        .map(str::to_string)
        .collect();
    report.unexpected.sort();
    if strict && (report.missing.len() + report.unexpected.len() + report.mismatched.len()) > 0 {
        return Err(err(
            path,
            format!(
                "does not match the model: missing {:?}, unexpected {:?}, mismatched {:?}",
                report.missing, report.unexpected, report.mismatched
            ),
        ));
    }
    for (t, v) in writes {
        let vals: Vec<f32> = v
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        t.device().write(&t.array().buf, &vals)?;
    }
    Ok(report)
}
