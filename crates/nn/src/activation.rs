//! Parameter-free modules: activations, softmax, flatten and pooling.

use crate::module::Module;
use crate::Result;
use kiln_graph::Tensor;
use kiln_ops::pool::Pool2dSpec;

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
    /// [N, ...] -> [N, rest].
    Flatten => flatten,
}

/// Max pooling.
#[derive(Clone, Copy, Debug)]
pub struct MaxPool2d(pub Pool2dSpec);

impl Module for MaxPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.max_pool2d(self.0)?)
    }
}

/// Average pooling (padding counted in the divisor, as PyTorch's default).
#[derive(Clone, Copy, Debug)]
pub struct AvgPool2d(pub Pool2dSpec);

impl Module for AvgPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.avg_pool2d(self.0)?)
    }
}
