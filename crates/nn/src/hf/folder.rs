//! Model folders: the tensors a model is built from (loaded by Hugging Face's names, or drawn at
//! random with `transformers`' initialisation), and the files copied beside the weights when a
//! folder is saved.

use crate::error::Result;
use crate::hf::file_err;
use crate::hf::weights::Weights;
use crate::init::Rng;
use crate::{Dropout, DropoutConfig, LayerNorm, Linear};
use kiln_graph::{Device, Tensor};
use std::path::Path;

/// Where a model's tensors come from.
pub(crate) enum Source<'a> {
    /// A weights file, by name.
    File(&'a Weights),
    /// N(0, std^2) weights, zero biases, LayerNorm 1 and 0 (`transformers`' `_init_weights`).
    Random { rng: &'a mut Rng, std: f64 },
}

impl Source<'_> {
    /// `name`'s values (n of them), or a draw: `kind` says which rule a random one follows.
    pub(crate) fn values(&mut self, name: &str, n: usize, kind: Kind) -> Result<Vec<f32>> {
        match self {
            Source::File(w) => w.f32(name),
            Source::Random { rng, std } => Ok(match kind {
                Kind::Weight => (0..n).map(|_| (*std * rng.normal()) as f32).collect(),
                Kind::Scaled(f) => (0..n).map(|_| (*std * f * rng.normal()) as f32).collect(),
                Kind::Zeros => vec![0.0; n],
                Kind::Ones => vec![1.0; n],
            }),
        }
    }

    /// A parameter of `shape`.
    pub(crate) fn param(
        &mut self,
        dev: &Device,
        name: &str,
        shape: &[usize],
        kind: Kind,
    ) -> Result<Tensor> {
        let v = self.values(name, shape.iter().product(), kind)?;
        Ok(Tensor::from_f32(dev, &v, shape)?.requires_grad_(true)?)
    }

    /// A Linear `prefix.weight` `[out, in]`, `prefix.bias` `[out]`.
    pub(crate) fn linear(
        &mut self,
        dev: &Device,
        prefix: &str,
        inp: usize,
        out: usize,
    ) -> Result<Linear> {
        Ok(Linear {
            weight: self.param(dev, &format!("{prefix}.weight"), &[out, inp], Kind::Weight)?,
            bias: Some(self.param(dev, &format!("{prefix}.bias"), &[out], Kind::Zeros)?),
        })
    }

    /// A LayerNorm `prefix.weight`, `prefix.bias` over `dim`.
    pub(crate) fn layer_norm(
        &mut self,
        dev: &Device,
        prefix: &str,
        dim: usize,
        eps: f64,
    ) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.param(dev, &format!("{prefix}.weight"), &[dim], Kind::Ones)?,
            bias: self.param(dev, &format!("{prefix}.bias"), &[dim], Kind::Zeros)?,
            eps: eps as f32,
        })
    }
}

/// How a random parameter starts.
#[derive(Clone, Copy)]
pub(crate) enum Kind {
    Weight,
    /// A weight drawn with the standard deviation times this factor (GPT-2's residual
    /// projections).
    Scaled(f64),
    Zeros,
    Ones,
}

/// Dropout modules with seeds drawn in order from one generator, so a model's masks are the same
/// from run to run.
pub(crate) struct Dropouts(Rng);

impl Dropouts {
    pub(crate) fn new(seed: u64) -> Self {
        Dropouts(Rng::new(seed))
    }
    pub(crate) fn next(&mut self, dev: &Device, p: f32) -> Result<Dropout> {
        DropoutConfig::new(p).with_seed(self.0.next_u64()).init(dev)
    }
}

/// Files a saved folder keeps from the one the model came from: tokenizer files, generation and
/// sentence-transformers settings, and the module folders `modules.json` names (pooling,
/// normalisation). Weights in other formats and config.json (written anew) are not copied.
pub(crate) fn copy_companions(src: &Path, dst: &Path) -> Result<()> {
    const FILES: &[&str] = &[
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "added_tokens.json",
        "vocab.txt",
        "vocab.json",
        "merges.txt",
        "generation_config.json",
        "modules.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "README.md",
    ];
    for f in FILES {
        let from = src.join(f);
        if from.is_file() {
            copy(&from, &dst.join(f))?;
        }
    }
    // The module folders sentence-transformers loads (1_Pooling/...), as modules.json lists them.
    let modules = std::fs::read_to_string(src.join("modules.json")).ok();
    let list: Vec<serde_json::Value> = modules
        .and_then(|m| serde_json::from_str(&m).ok())
        .unwrap_or_default();
    for m in list {
        let Some(p) = m
            .get("path")
            .and_then(|p| p.as_str())
            .filter(|p| !p.is_empty())
        else {
            continue;
        };
        // Only plain relative folder names: never a path out of the folder.
        if p.contains("..") || p.starts_with('/') {
            continue;
        }
        let from = src.join(p);
        if from.is_dir() {
            std::fs::create_dir_all(dst.join(p))
                .map_err(|e| file_err(&dst.join(p), e.to_string()))?;
            for entry in std::fs::read_dir(&from).map_err(|e| file_err(&from, e.to_string()))? {
                let entry = entry.map_err(|e| file_err(&from, e.to_string()))?;
                if entry.path().is_file() {
                    copy(&entry.path(), &dst.join(p).join(entry.file_name()))?;
                }
            }
        }
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    if from == to {
        return Ok(());
    }
    let bytes = std::fs::read(from).map_err(|e| file_err(from, e.to_string()))?;
    crate::serialize::write_atomically(to, &bytes)?;
    Ok(())
}

/// Creates `dir` (and its parents).
pub(crate) fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e.to_string()))
}

/// The config and weights files of a model folder, or an error naming what is missing.
pub(crate) fn model_files(dir: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    if !dir.is_dir() {
        return Err(crate::hf::NnError::MissingModel {
            path: dir.display().to_string(),
            hint: "give a Hugging Face model folder (config.json, model.safetensors)".into(),
        });
    }
    let config = dir.join("config.json");
    let weights = dir.join("model.safetensors");
    if !config.is_file() {
        return Err(file_err(
            &config,
            "missing: a model folder needs config.json",
        ));
    }
    if !weights.is_file() {
        let other = [
            "pytorch_model.bin",
            "tf_model.h5",
            "model.safetensors.index.json",
        ]
        .iter()
        .find(|f| dir.join(f).is_file());
        let msg = match other {
            Some(f) => format!(
                "missing; the folder has {f}, which kiln does not read (convert it to a single \
                 model.safetensors)"
            ),
            None => "missing: a model folder needs model.safetensors".into(),
        };
        return Err(file_err(&weights, msg));
    }
    Ok((config, weights))
}
