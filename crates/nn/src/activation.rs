//! Activations (and softmax) as modules.

use crate::error::Result;
use crate::module::Module;
use kiln_graph::Tensor;

macro_rules! activation {
    ($(#[$doc:meta] $name:ident => $method:ident),* $(,)?) => {$(
        #[$doc]
        #[derive(Clone, Copy, Debug, Default)]
        pub struct $name;
        impl Module for $name {
            fn forward(&self, x: &Tensor) -> Result<Tensor> {
                Ok(x.$method()?)
            }
        }
    )*};
}

activation! {
    /// max(x, 0).
    Relu => relu,
    /// 1 / (1 + e^-x).
    Sigmoid => sigmoid,
    /// tanh x.
    Tanh => tanh,
    /// x * Phi(x) (the exact erf form, PyTorch's default).
    Gelu => gelu,
    /// softmax over the last axis.
    Softmax => softmax,
}
