//! `Conv2d`: 2-D convolution with PyTorch's weight layout [out, in, kh, kw] and initialisation.

use crate::error::Result;
use crate::init::{with_default_rng, Init, Rng};
use crate::module::Module;
use kiln_graph::{Device, Tensor};
use kiln_ops::conv::Conv2dSpec;

/// A [`Conv2d`] layer's shape, geometry and initialisation (PyTorch's defaults: stride 1, no
/// padding, dilation 1, a bias, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias).
///
/// ```no_run
/// # fn main() -> Result<(), kiln_nn::NnError> {
/// use kiln_nn::Conv2dConfig;
/// let dev = kiln_graph::Device::shared()?;
/// let conv1 = Conv2dConfig::new(1, 6, [5, 5]).with_padding([2, 2]).init(&dev)?;
/// assert_eq!(conv1.weight.shape(), [6, 1, 5, 5]);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Conv2dConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel height and width.
    pub kernel_size: [usize; 2],
    /// Stride, padding and dilation.
    pub spec: Conv2dSpec,
    /// Whether the layer adds a bias.
    pub bias: bool,
    /// How the weight starts.
    pub weight_init: Init,
    /// How the bias starts.
    pub bias_init: Init,
}

impl Conv2dConfig {
    /// `in_channels` to `out_channels` with a `kernel_size` kernel and PyTorch's defaults.
    pub fn new(in_channels: usize, out_channels: usize, kernel_size: [usize; 2]) -> Self {
        Conv2dConfig {
            in_channels,
            out_channels,
            kernel_size,
            spec: Conv2dSpec::default(),
            bias: true,
            weight_init: Init::FanInUniform,
            bias_init: Init::FanInUniform,
        }
    }
    /// Step between windows (height, width).
    pub fn with_stride(mut self, stride: [usize; 2]) -> Self {
        self.spec.stride = (stride[0], stride[1]);
        self
    }
    /// Zeros added on each side (height, width).
    pub fn with_padding(mut self, padding: [usize; 2]) -> Self {
        self.spec.padding = (padding[0], padding[1]);
        self
    }
    /// Spacing between kernel taps (height, width).
    pub fn with_dilation(mut self, dilation: [usize; 2]) -> Self {
        self.spec.dilation = (dilation[0], dilation[1]);
        self
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
    pub fn init(&self, dev: &Device) -> Result<Conv2d> {
        with_default_rng(|rng| self.init_with(dev, rng))
    }
    /// The layer, drawn from `rng` (weight first, then bias).
    pub fn init_with(&self, dev: &Device, rng: &mut Rng) -> Result<Conv2d> {
        let [kh, kw] = self.kernel_size;
        let w = [self.out_channels, self.in_channels, kh, kw];
        Ok(Conv2d {
            weight: self.weight_init.param(dev, rng, &w, &w)?,
            bias: if self.bias {
                Some(self.bias_init.param(dev, rng, &[self.out_channels], &w)?)
            } else {
                None
            },
            spec: self.spec,
        })
    }
}

/// 2-D convolution, weight [out, in, kh, kw].
pub struct Conv2d {
    /// [out_channels, in_channels, kh, kw]
    pub weight: Tensor,
    /// `[out_channels]`
    pub bias: Option<Tensor>,
    /// Stride, padding, dilation.
    pub spec: Conv2dSpec,
}

impl Module for Conv2d {
    /// x: [N, in, H, W] -> [N, out, OH, OW].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.conv2d(&self.weight, self.bias.as_ref(), self.spec)?)
    }
    fn own_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![("weight".to_string(), self.weight.clone())];
        v.extend(self.bias.iter().map(|b| ("bias".to_string(), b.clone())));
        v
    }
}
