//! Modules. Parameter names and weight layouts follow PyTorch's state_dict (`conv1.weight` is
//! [6, 1, 5, 5]); initialisation follows PyTorch's defaults from a seeded generator.

use crate::Result;
use kiln_graph::{Device, Tensor};
use kiln_ops::conv::Conv2dSpec;
use kiln_ops::pool::Pool2dSpec;
use kiln_ops::testing::Rng;

/// Parameter names under a prefix: `weight` becomes `prefix.weight`.
pub(crate) fn prefixed(prefix: &str, named: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    named
        .into_iter()
        .map(|(n, t)| (format!("{prefix}.{n}"), t))
        .collect()
}

/// Lets code that transforms models (quantization) find a module's concrete type.
pub trait AsAny: std::any::Any {
    /// The module as `Any`, for `downcast_ref`.
    fn as_any(&self) -> &dyn std::any::Any;
    /// The boxed module as `Any`, for `downcast`.
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any>;
}

impl<T: std::any::Any> AsAny for T {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

/// A network piece: forward, and its parameters by name.
pub trait Module: Send + Sync + AsAny {
    /// Runs the module.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// Parameters with dotted PyTorch-style names, in registration order.
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    /// Parameters in registration order.
    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters()
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }
    /// Switches training-only behaviour (dropout) on or off.
    fn set_training(&mut self, _training: bool) {}
    /// Moves every random generator (dropout) to the next step's offset. Training loops call it
    /// once per step; it rewrites a device buffer, so recorded steps need no re-recording.
    fn advance_rng(&self) -> Result<()> {
        Ok(())
    }
    /// Offsets of every random generator (dropout), in a fixed order, for checkpoints.
    fn rng_offsets(&self) -> Vec<u32> {
        Vec::new()
    }
    /// Restores offsets from [`Module::rng_offsets`]; returns how many were used.
    fn set_rng_offsets(&self, _offsets: &[u32]) -> Result<usize> {
        Ok(0)
    }
}

/// Zeroes activations with probability `p` while training (scaling the rest by 1/(1-p));
/// the identity in evaluation mode, as PyTorch's `nn.Dropout`.
pub struct Dropout {
    p: f32,
    training: bool,
    dev: Device,
    rng: std::sync::Mutex<kiln_ops::dropout::DropoutRng>,
}

impl Dropout {
    /// Dropout with probability `p` and a seeded generator.
    pub fn new(dev: &Device, p: f32, seed: u64) -> Result<Dropout> {
        let rng = kiln_ops::dropout::DropoutRng::new(dev, seed)?;
        Ok(Dropout {
            p,
            training: true,
            dev: dev.clone(),
            rng: std::sync::Mutex::new(rng),
        })
    }
}

impl Module for Dropout {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !self.training || self.p == 0.0 {
            return Ok(x.clone());
        }
        Ok(x.dropout(self.p, self.rng.lock().unwrap().buffer())?)
    }
    fn set_training(&mut self, training: bool) {
        self.training = training;
    }
    fn advance_rng(&self) -> Result<()> {
        Ok(self.rng.lock().unwrap().advance(&self.dev)?)
    }
    fn rng_offsets(&self) -> Vec<u32> {
        vec![self.rng.lock().unwrap().offset()]
    }
    fn set_rng_offsets(&self, offsets: &[u32]) -> Result<usize> {
        match offsets.first() {
            Some(&o) => {
                self.rng.lock().unwrap().set_offset(&self.dev, o)?;
                Ok(1)
            }
            None => Ok(0),
        }
    }
}

/// Uniform(-bound, bound) values for a parameter, as PyTorch's `kaiming_uniform_(a=sqrt(5))`
/// (weights) and its bias rule both reduce to bound = 1/sqrt(fan_in).
fn uniform_param(dev: &Device, rng: &mut Rng, shape: &[usize], fan_in: usize) -> Result<Tensor> {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    let n: usize = shape.iter().product();
    let v = rng.vec(n, -bound, bound);
    Ok(Tensor::from_f32(dev, &v, shape)?.requires_grad(true))
}

/// y = x W^T + b, W: [out, in].
pub struct Linear {
    /// [out_features, in_features]
    pub weight: Tensor,
    /// `[out_features]`
    pub bias: Option<Tensor>,
}

impl Linear {
    /// PyTorch's default initialisation.
    pub fn new(
        dev: &Device,
        rng: &mut Rng,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Linear> {
        Ok(Linear {
            weight: uniform_param(dev, rng, &[out_features, in_features], in_features)?,
            bias: if bias {
                Some(uniform_param(dev, rng, &[out_features], in_features)?)
            } else {
                None
            },
        })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.linear(&self.weight, self.bias.as_ref())?)
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![("weight".to_string(), self.weight.clone())];
        v.extend(self.bias.iter().map(|b| ("bias".to_string(), b.clone())));
        v
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

impl Conv2d {
    /// PyTorch's default initialisation; square kernel.
    pub fn new(
        dev: &Device,
        rng: &mut Rng,
        cin: usize,
        cout: usize,
        k: usize,
        spec: Conv2dSpec,
    ) -> Result<Conv2d> {
        let fan_in = cin * k * k;
        Ok(Conv2d {
            weight: uniform_param(dev, rng, &[cout, cin, k, k], fan_in)?,
            bias: Some(uniform_param(dev, rng, &[cout], fan_in)?),
            spec,
        })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.conv2d(&self.weight, self.bias.as_ref(), self.spec)?)
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![("weight".to_string(), self.weight.clone())];
        v.extend(self.bias.iter().map(|b| ("bias".to_string(), b.clone())));
        v
    }
}

/// Layer normalisation over the last axis (PyTorch's `nn.LayerNorm`: weight 1, bias 0, eps 1e-5).
pub struct LayerNorm {
    /// `[dim]`, initialised to 1.
    pub weight: Tensor,
    /// `[dim]`, initialised to 0.
    pub bias: Tensor,
    /// Added to the variance.
    pub eps: f32,
}

impl LayerNorm {
    /// Normalises the last axis of size `dim`.
    pub fn new(dev: &Device, dim: usize) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: Tensor::full(dev, &[dim], 1.0)?.requires_grad(true),
            bias: Tensor::full(dev, &[dim], 0.0)?.requires_grad(true),
            eps: 1e-5,
        })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.layer_norm(&self.weight, &self.bias, self.eps)?)
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        vec![
            ("weight".into(), self.weight.clone()),
            ("bias".into(), self.bias.clone()),
        ]
    }
}

/// A lookup table [vocab, dim] initialised N(0, 1), as PyTorch's `nn.Embedding`.
pub struct Embedding {
    /// [vocab, dim]
    pub weight: Tensor,
}

impl Embedding {
    /// A table of `vocab` rows of width `dim`.
    pub fn new(dev: &Device, rng: &mut Rng, vocab: usize, dim: usize) -> Result<Embedding> {
        let v: Vec<f32> = (0..vocab * dim).map(|_| rng.normal() as f32).collect();
        Ok(Embedding {
            weight: Tensor::from_f32(dev, &v, &[vocab, dim])?.requires_grad(true),
        })
    }
    /// Rows for i32 ids (checked on the device side to stay in bounds; see
    /// [`kiln_ops::norm::check_ids_in_range`] for a host check).
    pub fn lookup(&self, ids: &kiln_ops::Array) -> Result<Tensor> {
        Ok(self.weight.embedding(ids)?)
    }
    /// The parameters by name.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        vec![("weight".into(), self.weight.clone())]
    }
}

/// Max pooling.
pub struct MaxPool2d(pub Pool2dSpec);

impl Module for MaxPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.max_pool2d(self.0)?)
    }
}

/// Average pooling (padding counted in the divisor, as PyTorch's default).
pub struct AvgPool2d(pub Pool2dSpec);

impl Module for AvgPool2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.avg_pool2d(self.0)?)
    }
}

/// Parameter-free element-wise and row-wise modules.
macro_rules! activation {
    ($(#[$doc:meta] $name:ident => $method:ident),* $(,)?) => {$(
        #[$doc]
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
    ReLU => relu,
    /// 1 / (1 + e^-x).
    Sigmoid => sigmoid,
    /// tanh x.
    Tanh => tanh,
    /// x * Phi(x) (the exact erf form, PyTorch's default).
    GELU => gelu,
    /// softmax over the last axis.
    Softmax => softmax,
}

/// [N, ...] -> [N, rest].
pub struct Flatten;

impl Module for Flatten {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.flatten()?)
    }
}

/// Modules applied in order; parameters named by position (`0.weight`) or by the given names.
#[derive(Default)]
pub struct Sequential {
    layers: Vec<(String, Box<dyn Module>)>,
}

impl Sequential {
    /// An empty stack.
    pub fn new() -> Sequential {
        Sequential::default()
    }
    /// Appends a module named by its position.
    pub fn push(mut self, m: impl Module + 'static) -> Sequential {
        let name = self.layers.len().to_string();
        self.layers.push((name, Box::new(m)));
        self
    }
    /// Appends a module with a name (its parameters become `name.weight`...).
    pub fn push_named(mut self, name: &str, m: impl Module + 'static) -> Sequential {
        self.layers.push((name.to_string(), Box::new(m)));
        self
    }
    /// Appends an already boxed module with a name.
    pub fn push_boxed(mut self, name: &str, m: Box<dyn Module>) -> Sequential {
        self.layers.push((name.to_string(), m));
        self
    }
    /// The modules and their names, in order.
    pub fn layers(&self) -> impl Iterator<Item = (&str, &dyn Module)> {
        self.layers.iter().map(|(n, m)| (n.as_str(), m.as_ref()))
    }
    /// Takes the stack apart into its named modules.
    pub fn into_layers(self) -> Vec<(String, Box<dyn Module>)> {
        self.layers
    }
    /// A stack of named modules, in order (the inverse of [`Sequential::into_layers`]).
    pub fn from_layers(layers: Vec<(String, Box<dyn Module>)>) -> Sequential {
        Sequential { layers }
    }
}

impl Module for Sequential {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for (_, m) in &self.layers {
            h = m.forward(&h)?;
        }
        Ok(h)
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        self.layers
            .iter()
            .flat_map(|(n, m)| prefixed(n, m.named_parameters()))
            .collect()
    }
    fn set_training(&mut self, training: bool) {
        for (_, m) in &mut self.layers {
            m.set_training(training);
        }
    }
    fn advance_rng(&self) -> Result<()> {
        self.layers.iter().try_for_each(|(_, m)| m.advance_rng())
    }
    fn rng_offsets(&self) -> Vec<u32> {
        self.layers
            .iter()
            .flat_map(|(_, m)| m.rng_offsets())
            .collect()
    }
    fn set_rng_offsets(&self, offsets: &[u32]) -> Result<usize> {
        let mut used = 0;
        for (_, m) in &self.layers {
            used += m.set_rng_offsets(&offsets[used..])?;
        }
        Ok(used)
    }
}

/// The seed's LeNet-5 for 28x28 inputs: conv 1->6 5x5 pad 2, ReLU, max-pool 2; conv 6->16 5x5,
/// ReLU, max-pool 2; linear 400->120->84->10 (each pooling runs before its ReLU, which gives the
/// same values and gradients for less work). Names as PyTorch: conv1, conv2, fc1, fc2, fc3.
pub fn lenet5(dev: &Device, seed: u64) -> Result<Sequential> {
    lenet5_with_classes(dev, seed, 10)
}

/// LeNet-5 with a `classes`-way last layer (fine-tuning to another label set).
pub fn lenet5_with_classes(dev: &Device, seed: u64, classes: usize) -> Result<Sequential> {
    let mut rng = Rng::new(seed);
    let pad2 = Conv2dSpec {
        padding: (2, 2),
        ..Default::default()
    };
    Ok(Sequential::new()
        // Pooling before ReLU: max commutes with ReLU (a monotonic function), so outputs and
        // gradients are those of ReLU-then-pool, and ReLU touches a quarter of the values.
        .push_named("conv1", Conv2d::new(dev, &mut rng, 1, 6, 5, pad2)?)
        .push_named("pool1", MaxPool2d(Pool2dSpec::square(2)))
        .push_named("relu1", ReLU)
        .push_named(
            "conv2",
            Conv2d::new(dev, &mut rng, 6, 16, 5, Conv2dSpec::default())?,
        )
        .push_named("pool2", MaxPool2d(Pool2dSpec::square(2)))
        .push_named("relu2", ReLU)
        .push_named("flatten", Flatten)
        .push_named("fc1", Linear::new(dev, &mut rng, 400, 120, true)?)
        .push_named("relu3", ReLU)
        .push_named("fc2", Linear::new(dev, &mut rng, 120, 84, true)?)
        .push_named("relu4", ReLU)
        .push_named("fc3", Linear::new(dev, &mut rng, 84, classes, true)?))
}
