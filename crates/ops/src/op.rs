//! The op trait: what kiln's autograd needs of an operation, for built-in ops and users' own
//! alike (as PyTorch's `torch.autograd.Function` or candle's `CustomOp`).
//!
//! An op computes one output array (or several) from its input arrays on the device and says how
//! to turn the outputs' gradients into its inputs' gradients. kiln-graph's `Tensor::apply` runs
//! an op and records it on the tape (`Tensor::apply_multi` for several outputs); recorded
//! training steps replay its dispatches like any other. An op may declare how many inputs it
//! takes ([`Op::arity`]): a call with another count is a typed error naming the op.
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

    /// How many inputs the op takes; `None` (the default) for any number. `Tensor::apply`
    /// refuses another count with an error naming the op, before `forward` sees `inputs`.
    fn arity(&self) -> Option<usize> {
        None
    }

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

    /// The backward pass of an op with several outputs: `dys[i]` is output i's gradient, `None`
    /// where that output did not reach the loss. The default, for one output, calls
    /// [`Op::backward`] with output 0's gradient (zeros where it has none).
    fn backward_outputs(
        &self,
        dev: &Device,
        ctx: &Ctx,
        dys: &[Option<&Array>],
    ) -> Result<Vec<Option<Array>>> {
        match dys.first().copied().flatten() {
            Some(dy) => self.backward(dev, ctx, dy),
            None => self.backward(dev, ctx, &Array::full(dev, &ctx.output.shape, 0.0)?),
        }
    }
}

/// An op's forward result: its outputs and what the backward pass keeps.
pub struct Forward {
    /// The (first) output.
    pub output: Array,
    /// The outputs after the first, for ops with several (`Tensor::apply_multi`).
    pub more: Vec<Array>,
    /// State for the backward pass.
    pub saved: Saved,
}

impl Forward {
    /// An output with state kept for the backward pass.
    pub fn with_saved<T: Any + Send + Sync>(output: Array, saved: T) -> Forward {
        Forward {
            output,
            more: Vec::new(),
            saved: Saved::new(saved),
        }
    }

    /// Several outputs (at least one), for an op applied with `Tensor::apply_multi`.
    pub fn outputs(outputs: Vec<Array>) -> Result<Forward> {
        let mut it = outputs.into_iter();
        let output = it.next().ok_or_else(|| OpError::Invalid {
            op: "forward",
            message: "an op must produce at least one output".into(),
        })?;
        Ok(Forward {
            output,
            more: it.collect(),
            saved: Saved::default(),
        })
    }

    /// The same outputs with `saved` kept for the backward pass.
    pub fn saving<T: Any + Send + Sync>(mut self, saved: T) -> Forward {
        self.saved = Saved::new(saved);
        self
    }

    /// Every output, in order.
    pub fn all_outputs(&self) -> impl Iterator<Item = &Array> {
        std::iter::once(&self.output).chain(&self.more)
    }
}

impl From<Array> for Forward {
    /// An output whose backward pass needs only the inputs and the output.
    fn from(output: Array) -> Forward {
        Forward {
            output,
            more: Vec::new(),
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
    /// The forward pass's (first) output.
    pub output: &'a Array,
    /// Every output of the forward pass, in order (the first is `output`).
    pub outputs: &'a [&'a Array],
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

/// An element-wise op's whole launch: a new output shaped like `inputs[0]` (and of its dtype),
/// bound after the inputs, and [`crate::launch::elementwise`] over its elements: the whole
/// forward or backward of an element-wise [`Op`].
pub fn map<P: crate::KernelParams>(
    dev: &Device,
    kernel: &std::sync::Arc<kiln_device::Kernel>,
    inputs: &[&Array],
    params: &P,
) -> Result<Array> {
    let first = inputs.first().ok_or_else(|| OpError::Invalid {
        op: "op::map",
        message: "takes at least one input (the output is shaped like the first)".into(),
    })?;
    let out = Array::empty_like(dev, first)?;
    let mut bufs: Vec<&crate::Buffer> = inputs.iter().map(|a| &a.buf).collect();
    bufs.push(&out.buf);
    crate::launch::elementwise(dev, kernel, &bufs, params, out.numel())?;
    Ok(out)
}
