//! `LayerNorm` over the last axis, as PyTorch's `nn.LayerNorm`.

use crate::error::Result;
use crate::module::Module;
use kiln_graph::{Device, Tensor};

/// A [`LayerNorm`]'s width and epsilon (PyTorch's default eps: 1e-5; weight 1, bias 0).
#[derive(Clone, Debug)]
pub struct LayerNormConfig {
    /// Size of the normalised (last) axis.
    pub dim: usize,
    /// Added to the variance.
    pub eps: f32,
}

impl LayerNormConfig {
    /// Normalises a last axis of size `dim`.
    pub fn new(dim: usize) -> Self {
        LayerNormConfig { dim, eps: 1e-5 }
    }
    /// Added to the variance (BERT uses 1e-12).
    pub fn with_eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }
    /// The layer: weight ones, bias zeros.
    pub fn init(&self, dev: &Device) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: Tensor::full(dev, &[self.dim], 1.0)?.requires_grad_(true)?,
            bias: Tensor::zeros(dev, &[self.dim])?.requires_grad_(true)?,
            eps: self.eps,
        })
    }
}

/// Layer normalisation over the last axis with an affine weight and bias.
#[derive(Clone)]
pub struct LayerNorm {
    /// `[dim]`, initialised to 1.
    pub weight: Tensor,
    /// `[dim]`, initialised to 0.
    pub bias: Tensor,
    /// Added to the variance.
    pub eps: f32,
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.layer_norm(&self.weight, &self.bias, self.eps)?)
    }
    fn own_parameters(&self) -> Vec<(String, Tensor)> {
        vec![
            ("weight".into(), self.weight.clone()),
            ("bias".into(), self.bias.clone()),
        ]
    }
}
