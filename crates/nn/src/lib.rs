//! kiln-nn: modules with PyTorch's parameter names and layouts, losses, optimizers, learning-rate
//! schedules, data readers, safetensors files and Hugging Face models ([`hf`]). The loops that train them are in kiln-train.

pub mod activation;
pub mod conv;
pub mod data;
pub mod dropout;
pub mod embedding;
#[cfg(feature = "hf")]
pub mod hf;
pub mod init;
pub mod lambda;
pub mod linear;
pub mod lm;
pub mod loss;
pub mod models;
pub mod module;
pub mod norm;
pub mod optim;
pub mod pool;
pub mod prune;
pub mod quant;
pub mod rnn;
pub mod schedule;
pub mod sequential;
pub mod serialize;
pub mod shards;
pub mod split_embedding;
pub mod transformer;

pub use activation::{Gelu, Relu, Sigmoid, Softmax, Tanh};
pub use conv::{Conv2d, Conv2dConfig};
pub use dropout::{Dropout, DropoutConfig};
pub use embedding::{Embedding, EmbeddingConfig};
pub use kiln_graph::{no_grad, Array, Device, OpError, StepPlan, Tensor};
pub use lambda::{Flatten, Lambda};
pub use linear::{Linear, LinearConfig};
pub use module::Module;
pub use norm::{LayerNorm, LayerNormConfig};
pub use optim::{Adam, AdamW, Optimizer, RmsProp, Sgd};
pub use pool::{AvgPool2d, MaxPool2d};
pub use sequential::Sequential;
pub use split_embedding::{SplitEmbedding, SplitEmbeddingConfig};
use thiserror::Error;

/// Errors of the nn layer.
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
}

impl From<kiln_ops::DeviceError> for NnError {
    fn from(e: kiln_ops::DeviceError) -> Self {
        NnError::Op(e.into())
    }
}

/// The nn layer's result type.
pub type Result<T, E = NnError> = std::result::Result<T, E>;
