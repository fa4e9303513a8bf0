//! The `Module` trait every network piece implements, as PyTorch's `nn.Module`.

use crate::Result;
use kiln_graph::Tensor;

/// Parameter names under a prefix: `weight` becomes `prefix.weight`.
pub fn prefixed(prefix: &str, named: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    named
        .into_iter()
        .map(|(n, t)| (format!("{prefix}.{n}"), t))
        .collect()
}

/// The random-generator offsets of `modules`, in order (a composite's `rng_offsets`).
pub fn rng_offsets_of<'a>(modules: impl IntoIterator<Item = &'a dyn Module>) -> Vec<u32> {
    modules.into_iter().flat_map(|m| m.rng_offsets()).collect()
}

/// Restores offsets from [`rng_offsets_of`] into `modules`, in the same order; how many were
/// used (a composite's `set_rng_offsets`).
pub fn set_rng_offsets_of<'a>(
    modules: impl IntoIterator<Item = &'a dyn Module>,
    offsets: &[u32],
) -> Result<usize> {
    let mut used = 0;
    for m in modules {
        used += m.set_rng_offsets(&offsets[used.min(offsets.len())..])?;
    }
    Ok(used)
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

/// A network piece: `forward`, its parameters by name (PyTorch's state_dict names), training
/// mode, and the state of its random generators (dropout) for checkpoints.
pub trait Module: Send + Sync + AsAny {
    /// Runs the module on its usual input (a module with several inputs, such as attention,
    /// documents what this one means and has its own method for the general case).
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
    /// Training mode, as PyTorch's `module.train()`.
    fn train(&mut self) {
        self.set_training(true)
    }
    /// Evaluation mode, as PyTorch's `module.eval()`.
    fn eval(&mut self) {
        self.set_training(false)
    }
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
