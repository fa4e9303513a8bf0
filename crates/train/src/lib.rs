//! kiln-train: the loops that train, evaluate and use models built with kiln-nn.
//!
//! - [`fit`]: `fit` / `evaluate` / `predict` over an in-memory [`fit::Dataset`], each training step
//!   recorded once per batch size and replayed; and the Keras-style [`fit::Compiled`].
//! - [`fit_async`]: the same loop as a future (readbacks awaited, never waited for), for browser
//!   pages and async programs.
//! - [`lm`]: the language-model loop (random windows of a corpus, periodic evaluation).
//! - [`gpt`]: the GPT-2 recipe (AdamW's parameter groups, clipping, warm-up and cosine decay),
//!   gradient accumulation inside recorded steps, and the FLOPs behind MFU.
//! - [`checkpoint`]: training checkpoints that resume a run exactly.
//! - [`finite`]: watching parameters and optimizer state for NaN and infinities on the device.
//! - [`parallel`]: the hook for data-parallel training in several processes (kiln-dist) and the
//!   rule that splits each batch among them.
//! - [`history`] and [`report`]: per-epoch figures, as CSV and an SVG plot.

pub mod checkpoint;
pub mod finite;
pub mod fit;
pub mod fit_async;
pub mod gpt;
pub mod history;
pub mod lm;
pub mod parallel;
mod progress;
pub mod regression;
pub mod report;

pub use fit::{
    evaluate, fit, fit_classifier, fit_parallel, predict, Compiled, Dataset, FitConfig, Targets,
};
pub use fit_async::{evaluate_async, fit_async, StepLoss};
pub use history::EpochStats;
pub use kiln_nn::loss::Loss;

use kiln_nn::NnError;
use kiln_ops::{DeviceError, OpError};
use thiserror::Error;

/// Errors of the training loops.
#[derive(Debug, Error)]
pub enum TrainError {
    /// From a module, an optimizer, an op or the device.
    #[error(transparent)]
    Nn(#[from] NnError),
    /// A training run that cannot continue (bad settings, a non-finite loss).
    #[error("training: {0}")]
    Training(String),
    /// From the data-parallel layer (kiln-dist): the transport, or another process.
    #[error("data-parallel training: {0}")]
    Parallel(Box<dyn std::error::Error + Send + Sync>),
    /// A checkpoint or report file that cannot be read or written.
    #[error("{path}: {message}")]
    File {
        /// The file or directory.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

impl From<OpError> for TrainError {
    fn from(e: OpError) -> Self {
        TrainError::Nn(e.into())
    }
}

impl From<DeviceError> for TrainError {
    fn from(e: DeviceError) -> Self {
        TrainError::Nn(e.into())
    }
}

/// The training layer's result type.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
