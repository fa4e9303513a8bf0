//! kiln-nn: modules with PyTorch's parameter names and layouts, losses, optimizers, learning-rate
//! schedules, data readers, safetensors files and Hugging Face models ([`hf`]). The loops that
//! train them are in kiln-train.
//!
//! Every module implements [`Module`]: a leaf ([`Linear`], [`LayerNorm`], [`Dropout`]...)
//! declares its own tensors, a composite ([`Sequential`], the Transformer [`transformer::Stack`]
//! and its layers, BERT, GPT-2) declares its children by name, and parameter names, train/eval,
//! dropout generators and freezing follow from them. Every error is an [`NnError`]
//! ([`error`]).

pub mod activation;
pub mod conv;
pub mod data;
pub mod dropout;
pub mod embedding;
pub mod error;
#[cfg(feature = "hf")]
pub mod hf;
pub mod init;
pub mod lambda;
pub mod lenet;
pub mod linear;
pub mod lm;
pub mod loss;
/// The older path of [`lenet`] (`models::lenet5`), kept for code written against it.
pub mod models {
    pub use crate::lenet::{lenet5, lenet5_with_classes};
}
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
pub use error::{NnError, Result};
pub use kiln_graph::{no_grad, Array, Device, OpError, StepPlan, Tensor};
pub use lambda::{Flatten, Lambda};
pub use lenet::{lenet5, lenet5_with_classes};
pub use linear::{Linear, LinearConfig};
pub use module::Module;
pub use norm::{LayerNorm, LayerNormConfig};
pub use optim::{Adam, AdamW, Optimizer, RmsProp, Sgd};
pub use pool::{AvgPool2d, MaxPool2d};
pub use sequential::Sequential;
pub use split_embedding::{SplitEmbedding, SplitEmbeddingConfig};
