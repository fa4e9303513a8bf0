//! kiln-nn's one error type: modules, losses, optimizers, data files, training, quantization and
//! Hugging Face folders all report an [`NnError`].

use kiln_graph::OpError;
use std::fmt;
use thiserror::Error;

/// What kiln-nn can report.
#[derive(Debug, Error)]
pub enum NnError {
    /// From an op or the device.
    #[error(transparent)]
    Op(#[from] OpError),
    /// A data file that is missing, truncated or not what it claims.
    #[error("data file {path}: {message}")]
    Data {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A training run that cannot continue.
    #[error("training: {0}")]
    Training(String),
    /// An argument outside what the function accepts (an empty range, a zero size).
    #[error("{0}")]
    Invalid(String),
    /// A module or optimizer configuration that cannot be built (a width that does not divide
    /// by the heads, a probability outside its range...).
    #[error("configuration: {0}")]
    Config(String),
    /// A model or calibration set that cannot be quantized as asked.
    #[error("quantization: {0}")]
    Quantization(String),
    /// A model file (Hugging Face folder) that is missing, unreadable, truncated or not what it
    /// claims.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A config.json field that is missing, unsupported or disagrees with something else.
    #[error("{path}: config field `{field}`: {message}")]
    ConfigField {
        /// The config file.
        path: String,
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Weights that do not fit the config: every missing, unexpected and mis-shaped tensor.
    #[error("{path}: the weights do not match config.json: {report}")]
    Weights {
        /// The weights file.
        path: String,
        /// What disagrees.
        report: WeightsReport,
    },
    /// A tokenizer that cannot be read or does not fit the model.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The tokenizer file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A model folder that is not there.
    #[error("model folder {path} not found: {hint}")]
    MissingModel {
        /// Where it was looked for.
        path: String,
        /// How to get it.
        hint: String,
    },
    /// Input a model cannot take (too long, ids out of range, empty).
    #[error("input: {0}")]
    Input(String),
}

impl From<kiln_ops::DeviceError> for NnError {
    fn from(e: kiln_ops::DeviceError) -> Self {
        NnError::Op(e.into())
    }
}

/// kiln-nn's result type.
pub type Result<T, E = NnError> = std::result::Result<T, E>;

/// Everything that keeps a weights file from fitting a model, all at once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WeightsReport {
    /// Tensors the model needs that the file lacks.
    pub missing: Vec<String>,
    /// Tensors in the file the model has no place for.
    pub unexpected: Vec<String>,
    /// Tensors whose shape or dtype disagrees, each with the config field(s) involved.
    pub mismatched: Vec<String>,
    /// What the lists add up to, shown first: each config field that disagrees with the file
    /// (with both values), a layer count that does.
    pub notes: Vec<String>,
}

impl WeightsReport {
    /// Nothing disagrees.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

impl fmt::Display for WeightsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self.notes.clone();
        // Long lists (a whole model missing) are cut, with the count.
        let list = |v: &[String]| {
            let shown: Vec<&str> = v.iter().take(8).map(String::as_str).collect();
            let more = v.len().saturating_sub(8);
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!("{} ({}{tail})", v.len(), shown.join(", "))
        };
        if !self.mismatched.is_empty() {
            parts.push(format!("mis-shaped {}", list(&self.mismatched)));
        }
        if !self.missing.is_empty() {
            parts.push(format!("missing {}", list(&self.missing)));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!("unexpected {}", list(&self.unexpected)));
        }
        f.write_str(&parts.join("; "))
    }
}
