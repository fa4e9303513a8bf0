//! The `Module` trait every network piece implements, as PyTorch's `nn.Module`.

use crate::error::Result;
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
///
/// A leaf (Linear, LayerNorm, Dropout...) declares its own tensors in
/// [`Module::own_parameters`] (and a leaf with state, as Dropout, its training switch and
/// generator); a composite declares its parts in [`Module::children`] and
/// [`Module::children_mut`], as PyTorch's `named_children`, and every other method comes from
/// them: parameter names are `child.param` (`encoder.layers.0.linear1.weight`), `train()` /
/// `eval()`, the generator offsets and [`Module::freeze`] reach every child in order.
///
/// ```no_run
/// # fn main() -> Result<(), kiln_nn::NnError> {
/// use kiln_nn::{Dropout, DropoutConfig, Linear, LinearConfig, Module, Tensor};
///
/// struct Mlp {
///     fc1: Linear,
///     drop: Dropout,
///     fc2: Linear,
/// }
///
/// impl Module for Mlp {
///     fn forward(&self, x: &Tensor) -> kiln_nn::Result<Tensor> {
///         self.fc2.forward(&self.drop.forward(&self.fc1.forward(x)?.relu()?)?)
///     }
///     fn children(&self) -> Vec<(String, &dyn Module)> {
///         vec![("fc1".into(), &self.fc1), ("drop".into(), &self.drop), ("fc2".into(), &self.fc2)]
///     }
///     fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
///         vec![
///             ("fc1".into(), &mut self.fc1),
///             ("drop".into(), &mut self.drop),
///             ("fc2".into(), &mut self.fc2),
///         ]
///     }
/// }
///
/// let dev = kiln_nn::Device::shared()?;
/// let mut mlp = Mlp {
///     fc1: LinearConfig::new(784, 64).init(&dev)?,
///     drop: DropoutConfig::new(0.1).init(&dev)?,
///     fc2: LinearConfig::new(64, 10).init(&dev)?,
/// };
/// let names: Vec<String> = mlp.named_parameters().into_iter().map(|(n, _)| n).collect();
/// assert_eq!(names, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]);
/// mlp.eval(); // the dropout inside is the identity now
/// # Ok(()) }
/// ```
pub trait Module: Send + Sync + AsAny {
    /// Runs the module on its usual input (a module with several inputs, such as attention,
    /// documents what this one means and has its own method for the general case).
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// The tensors this module holds itself, not through a child (PyTorch's
    /// `named_parameters(recurse=False)`): what a leaf declares.
    fn own_parameters(&self) -> Vec<(String, Tensor)> {
        Vec::new()
    }
    /// The named sub-modules, in registration order (PyTorch's `named_children`): what a
    /// composite declares.
    fn children(&self) -> Vec<(String, &dyn Module)> {
        Vec::new()
    }
    /// [`Module::children`], mutable (for [`Module::set_training`]); the same names in the same
    /// order.
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        Vec::new()
    }
    /// Parameters with dotted PyTorch-style names, in registration order: the module's own,
    /// then each child's under the child's name.
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = self.own_parameters();
        for (name, child) in self.children() {
            v.extend(prefixed(&name, child.named_parameters()));
        }
        v
    }
    /// Parameters in registration order.
    fn parameters(&self) -> Vec<Tensor> {
        self.named_parameters()
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }
    /// Switches training-only behaviour (dropout) on or off, in every child.
    fn set_training(&mut self, training: bool) {
        for (_, child) in self.children_mut() {
            child.set_training(training);
        }
    }
    /// Training mode, as PyTorch's `module.train()`.
    fn train(&mut self) {
        self.set_training(true)
    }
    /// Evaluation mode, as PyTorch's `module.eval()`.
    fn eval(&mut self) {
        self.set_training(false)
    }
    /// Stops gradients to every parameter (`module.requires_grad_(False)`): a frozen module
    /// still runs forward and passes gradients through to its input, and optimizers leave its
    /// parameters as they are.
    fn freeze(&self) -> Result<()> {
        for t in self.parameters() {
            t.requires_grad_(false)?;
        }
        Ok(())
    }
    /// Undoes [`Module::freeze`]: every parameter needs a gradient again.
    fn unfreeze(&self) -> Result<()> {
        for t in self.parameters() {
            t.requires_grad_(true)?;
        }
        Ok(())
    }
    /// Moves every random generator (dropout) to the next step's offset. Training loops call it
    /// once per step; it rewrites a device buffer, so recorded steps need no re-recording.
    fn advance_rng(&self) -> Result<()> {
        self.children()
            .into_iter()
            .try_for_each(|(_, child)| child.advance_rng())
    }
    /// Offsets of every random generator (dropout), in a fixed order (the children's), for
    /// checkpoints.
    fn rng_offsets(&self) -> Vec<u32> {
        rng_offsets_of(self.children().into_iter().map(|(_, child)| child))
    }
    /// Restores offsets from [`Module::rng_offsets`]; returns how many were used.
    fn set_rng_offsets(&self, offsets: &[u32]) -> Result<usize> {
        set_rng_offsets_of(self.children().into_iter().map(|(_, child)| child), offsets)
    }
}

/// `items` named `prefix.0`, `prefix.1`... (a list of layers as a composite's children).
pub fn indexed<'a, M: Module>(prefix: &str, items: &'a [M]) -> Vec<(String, &'a dyn Module)> {
    items
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("{prefix}.{i}"), m as &dyn Module))
        .collect()
}

/// [`indexed`], mutable.
pub fn indexed_mut<'a, M: Module>(
    prefix: &str,
    items: &'a mut [M],
) -> Vec<(String, &'a mut dyn Module)> {
    items
        .iter_mut()
        .enumerate()
        .map(|(i, m)| (format!("{prefix}.{i}"), m as &mut dyn Module))
        .collect()
}
