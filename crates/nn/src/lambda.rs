//! Modules made of a function: [`Lambda`] (any tensor function, or an op), and [`Flatten`].

use crate::error::Result;
use crate::module::Module;
use kiln_graph::Tensor;
use kiln_ops::op::Op;
use std::sync::Arc;

/// A module that applies a function (Keras's `Lambda`): a user's op, or any composition of tensor
/// methods, in a [`crate::Sequential`] without a wrapper type of its own. No parameters.
///
/// ```no_run
/// # fn main() -> Result<(), kiln_nn::NnError> {
/// use kiln_nn::{Lambda, LinearConfig, Sequential};
/// # let dev = kiln_nn::Device::shared()?;
/// let model = Sequential::new()
///     .push(LinearConfig::new(4, 8).init(&dev)?)
///     .push(Lambda::new("square", |x| x.square()))
///     .push(LinearConfig::new(8, 1).init(&dev)?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Lambda {
    name: String,
    f: Arc<TensorFn>,
}

/// What a [`Lambda`] applies.
type TensorFn = dyn Fn(&Tensor) -> kiln_graph::Result<Tensor> + Send + Sync;

impl Lambda {
    /// A module computing `f(x)`; `name` is for messages.
    pub fn new(
        name: &str,
        f: impl Fn(&Tensor) -> kiln_graph::Result<Tensor> + Send + Sync + 'static,
    ) -> Lambda {
        Lambda {
            name: name.to_string(),
            f: Arc::new(f),
        }
    }

    /// A module applying `op` to its input (an op of one input: its arity is checked).
    pub fn op(op: impl Op + Clone) -> Lambda {
        let name = op.name().to_string();
        Lambda::new(&name, move |x| Tensor::apply(op.clone(), &[x]))
    }

    /// The name given.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Debug for Lambda {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lambda({})", self.name)
    }
}

impl Module for Lambda {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok((self.f)(x)?)
    }
}

/// `[N, ...] -> [N, rest]`, as PyTorch's `nn.Flatten`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Flatten;

impl Module for Flatten {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.flatten()?)
    }
}
