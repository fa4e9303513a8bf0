//! kiln-train: the loops that train, evaluate and use models built with kiln-nn.
//!
//! - [`data`]: the index-based [`Dataset`] trait (in-memory arrays, MNIST's IDX files, token
//!   shards) and the [`DataLoader`] that shuffles, shards across processes and reads batches on a
//!   background thread.
//! - [`fit`](mod@fit): `fit` / `evaluate` / `predict` over a [`Dataset`], each training step recorded once
//!   per batch size and replayed; and the Keras-style [`fit::Compiled`].
//! - [`fit_async`](mod@fit_async): the same loop as a future (readbacks awaited, never waited for), for browser
//!   pages and async programs.
//! - [`lm_train`]: the language-model loop (random windows of a corpus, periodic evaluation).
//! - [`gpt`]: the GPT-2 recipe (AdamW's parameter groups, clipping, warm-up and cosine decay),
//!   gradient accumulation inside recorded steps, and the FLOPs behind MFU.
//! - [`checkpoint`]: training checkpoints that resume a run exactly.
//! - [`finite`]: watching parameters and optimizer state for NaN and infinities on the device.
//! - [`parallel`]: the hook for data-parallel training in several processes (kiln-dist) and the
//!   rule that splits each batch among them.
//! - [`history`] and [`report`]: per-epoch figures, as CSV and an SVG plot.

pub mod checkpoint;
pub mod data;
pub mod finite;
pub mod fit;
pub mod fit_async;
pub mod gpt;
pub mod history;
pub mod lm_train;
pub mod parallel;
mod progress;
pub mod report;

mod error;
pub use error::{Result, TrainError};

pub use data::{
    ArrayDataset, Batch, BatchTargets, DataLoader, Dataset, Inputs, TargetKind, Targets,
};
pub use fit::{evaluate, fit, predict, Compiled, EpochCallback, FitConfig, EVAL_BATCH_SIZE};
pub use fit_async::{evaluate_async, fit_async, StepLoss};
pub use history::EpochStats;
pub use kiln_nn::loss::Loss;
