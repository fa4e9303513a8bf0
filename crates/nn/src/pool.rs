//! Pooling layers, as PyTorch's `nn.MaxPool2d` and `nn.AvgPool2d`.

use crate::error::Result;
use crate::module::Module;
use kiln_graph::Tensor;
use kiln_ops::pool::Pool2dSpec;

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
