//! `Linear`: y = x W^T + b with PyTorch's layout (W: [out, in]) and initialisation.

use crate::error::Result;
use crate::init::{with_default_rng, Init, Rng};
use crate::module::Module;
use kiln_graph::{Device, Tensor};

/// A [`Linear`] layer's shape and initialisation (PyTorch's defaults: a bias; weight and bias
/// U(-1/sqrt(in), 1/sqrt(in))).
///
/// ```no_run
/// # fn main() -> Result<(), kiln_nn::NnError> {
/// use kiln_nn::{LinearConfig, Module};
/// let dev = kiln_graph::Device::shared()?;
/// let fc = LinearConfig::new(784, 256).with_bias(false).init(&dev)?;
/// assert_eq!(fc.weight.shape(), [256, 784]);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct LinearConfig {
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Whether the layer adds a bias.
    pub bias: bool,
    /// How the weight starts.
    pub weight_init: Init,
    /// How the bias starts.
    pub bias_init: Init,
}

impl LinearConfig {
    /// `in_features` to `out_features`, with PyTorch's defaults.
    pub fn new(in_features: usize, out_features: usize) -> LinearConfig {
        LinearConfig {
            in_features,
            out_features,
            bias: true,
            weight_init: Init::FanInUniform,
            bias_init: Init::FanInUniform,
        }
    }
    /// Whether to add a bias.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
    /// How the weight starts.
    pub fn with_weight_init(mut self, init: Init) -> Self {
        self.weight_init = init;
        self
    }
    /// How the bias starts.
    pub fn with_bias_init(mut self, init: Init) -> Self {
        self.bias_init = init;
        self
    }
    /// The layer, drawn from this thread's default generator (see [`crate::init`]).
    pub fn init(&self, dev: &Device) -> Result<Linear> {
        with_default_rng(|rng| self.init_with(dev, rng))
    }
    /// The layer, drawn from `rng` (weight first, then bias).
    pub fn init_with(&self, dev: &Device, rng: &mut Rng) -> Result<Linear> {
        let w = [self.out_features, self.in_features];
        Ok(Linear {
            weight: self.weight_init.param(dev, rng, &w, &w)?,
            bias: if self.bias {
                Some(self.bias_init.param(dev, rng, &[self.out_features], &w)?)
            } else {
                None
            },
        })
    }
}

/// y = x W^T + b, W: [out, in].
pub struct Linear {
    /// [out_features, in_features]
    pub weight: Tensor,
    /// `[out_features]`
    pub bias: Option<Tensor>,
}

impl Module for Linear {
    /// x: [..., in] -> [..., out] (leading axes flattened for the product).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.shape().len() <= 2 {
            return Ok(x.linear(&self.weight, self.bias.as_ref())?);
        }
        let (lead, inp) = x.shape().split_at(x.shape().len() - 1);
        let rows: usize = lead.iter().product();
        let y = x
            .reshape(&[rows, inp[0]])?
            .linear(&self.weight, self.bias.as_ref())?;
        let mut shape = lead.to_vec();
        shape.push(self.weight.shape()[0]);
        Ok(y.reshape(&shape)?)
    }
    fn own_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![("weight".to_string(), self.weight.clone())];
        v.extend(self.bias.iter().map(|b| ("bias".to_string(), b.clone())));
        v
    }
}
