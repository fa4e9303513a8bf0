//! The op trait: what kiln's autograd needs of an operation, for built-in ops and users' own
//! alike (as PyTorch's `torch.autograd.Function` or candle's `CustomOp`).
//!
//! An op computes one output array from its input arrays on the device and says how to turn the
//! output's gradient into its inputs' gradients. kiln-graph's `Tensor::apply` runs an op and
//! records it on the tape; recorded training steps replay its dispatches like any other.
//!
//! ```
//! use kiln_ops::op::{Ctx, Forward, Op};
//! use kiln_ops::elementwise::{self, Binary, Unary};
//! use kiln_ops::{Array, Device, Result};
//!
//! /// y = x^2, built from kiln's element-wise kernels (a user op would usually launch its own
//! /// WGSL with `Device::kernel_from_source`).
//! struct Square;
//!
//! impl Op for Square {
//!     fn name(&self) -> &str {
//!         "square"
//!     }
//!     fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<Forward> {
//!         Ok(elementwise::unary(dev, inputs[0], Unary::Square)?.into())
//!     }
//!     fn backward(&self, dev: &Device, ctx: &Ctx, dy: &Array) -> Result<Vec<Option<Array>>> {
//!         // dy * 2x
//!         let two_x = elementwise::unary(dev, ctx.inputs[0], Unary::Affine(2.0, 0.0))?;
//!         Ok(vec![Some(elementwise::binary(dev, dy, &two_x, Binary::Mul)?)])
//!     }
//! }
//! ```

use crate::{Array, Device, OpError, Result};
use std::any::Any;

/// An operation with a forward pass on device arrays and (optionally) a backward pass.
pub trait Op: Send + Sync + 'static {
    /// A short name for errors and profiles ("matmul", "my_swish").
    fn name(&self) -> &str;

    /// Computes the output from `inputs`, recording its dispatches on `dev`; returns it with
    /// whatever the backward pass needs beyond the inputs and the output (see [`Saved`]).
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<Forward>;

    /// The gradients of the inputs from the output's gradient `dy`, one entry per input: `None`
    /// for an input that needs none (`ctx.needs(i)` is false; computing it anyway is allowed
    /// but wasted) or that has no gradient (integer ids, masks). Each gradient has its input's
    /// shape. The default is an error naming the op: an op without a backward can run only where
    /// no input needs a gradient.
    fn backward(&self, dev: &Device, ctx: &Ctx, dy: &Array) -> Result<Vec<Option<Array>>> {
        let _ = (dev, ctx, dy);
        Err(OpError::NoBackward {
            op: self.name().to_string(),
        })
    }

    /// The kernel variant the forward pass takes for these inputs under the device's kernel
    /// policy, for ops that have several (tests, profiles); `None` for ops with one kernel.
    fn variant(&self, dev: &Device, inputs: &[&Array]) -> Option<String> {
        let _ = (dev, inputs);
        None
    }
}

/// An op's forward result: the output and what the backward pass keeps.
pub struct Forward {
    /// The output.
    pub output: Array,
    /// State for the backward pass.
    pub saved: Saved,
}

impl Forward {
    /// An output with state kept for the backward pass.
    pub fn with_saved<T: Any + Send + Sync>(output: Array, saved: T) -> Forward {
        Forward {
            output,
            saved: Saved::new(saved),
        }
    }
}

impl From<Array> for Forward {
    /// An output whose backward pass needs only the inputs and the output.
    fn from(output: Array) -> Forward {
        Forward {
            output,
            saved: Saved::default(),
        }
    }
}

/// Whatever a forward pass hands its backward pass beyond the inputs and the output (row
/// statistics, argmax indices...), kept as long as the graph lives.
#[derive(Default)]
pub struct Saved(Option<Box<dyn Any + Send + Sync>>);

impl Saved {
    /// Keeps `value`.
    pub fn new<T: Any + Send + Sync>(value: T) -> Saved {
        Saved(Some(Box::new(value)))
    }

    /// The kept value as a `T`; an error naming the op when nothing, or something else, was kept.
    pub fn get<T: Any>(&self, op: &str) -> Result<&T> {
        self.0
            .as_ref()
            .and_then(|v| v.downcast_ref())
            .ok_or_else(|| OpError::Invalid {
                op: "backward",
                message: format!(
                    "{op}: the forward pass saved no {}",
                    std::any::type_name::<T>()
                ),
            })
    }
}

/// What an op's backward pass sees: its inputs and output as the forward pass had them, what
/// the forward pass saved, and which inputs need a gradient.
pub struct Ctx<'a> {
    /// The forward pass's inputs, in order.
    pub inputs: &'a [&'a Array],
    /// The forward pass's output.
    pub output: &'a Array,
    /// What the forward pass saved.
    pub saved: &'a Saved,
    /// Per input: whether a gradient is wanted.
    pub needs: &'a [bool],
}

impl Ctx<'_> {
    /// Whether input `i` needs a gradient.
    pub fn needs(&self, i: usize) -> bool {
        self.needs.get(i).copied().unwrap_or(false)
    }
}
