//! Ops whose backward pass is written with [`Tensor`] ops (as a `torch.autograd.Function`
//! whose backward calls torch functions): a forward on device arrays, usually one WGSL kernel,
//! and a backward composed from kiln's differentiable ops instead of a second kernel.
//!
//! The backward runs without recording (kiln's tape does not take second derivatives), on
//! tensors that hold the forward pass's inputs and output.

use crate::mode::no_grad;
use crate::{Result, Tensor};
use kiln_ops::op::{Ctx, Forward, Op, Saved};
use kiln_ops::{Array, Device};

/// An op with a forward pass on device arrays and a backward pass on tensors. Applied with
/// [`Tensor::apply_fn`].
pub trait Function: Send + Sync + 'static {
    /// A short name for errors and profiles.
    fn name(&self) -> &str;
    /// How many inputs it takes (`None`: any number), checked before `forward` runs.
    fn arity(&self) -> Option<usize> {
        None
    }
    /// Computes the output from `inputs` on `dev`.
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<Forward>;
    /// The inputs' gradients from the output's, one entry per input (`None` where an input
    /// needs none), each of its input's shape.
    fn backward(&self, ctx: &FunctionCtx, dy: &Tensor) -> Result<Vec<Option<Tensor>>>;
}

/// What a [`Function`]'s backward sees: the forward pass's inputs and output as tensors, what it
/// saved, and which inputs need a gradient.
pub struct FunctionCtx<'a> {
    /// The inputs, in order.
    pub inputs: &'a [Tensor],
    /// The output.
    pub output: &'a Tensor,
    /// What the forward pass saved.
    pub saved: &'a Saved,
    /// Per input: whether a gradient is wanted.
    pub needs: &'a [bool],
}

/// A [`Function`] seen as an [`Op`].
struct FunctionOp<F>(F);

impl<F: Function> Op for FunctionOp<F> {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn arity(&self) -> Option<usize> {
        self.0.arity()
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<Forward> {
        self.0.forward(dev, inputs)
    }
    fn backward(&self, dev: &Device, ctx: &Ctx, dy: &Array) -> Result<Vec<Option<Array>>> {
        let inputs: Vec<Tensor> = ctx
            .inputs
            .iter()
            .map(|a| Tensor::from_array(dev, (*a).clone()))
            .collect();
        let output = Tensor::from_array(dev, ctx.output.clone());
        let dy = Tensor::from_array(dev, dy.clone());
        let fctx = FunctionCtx {
            inputs: &inputs,
            output: &output,
            saved: ctx.saved,
            needs: ctx.needs,
        };
        let grads = no_grad(|| self.0.backward(&fctx, &dy))?;
        Ok(grads
            .into_iter()
            .map(|g| g.map(|t| t.array().clone()))
            .collect())
    }
}

impl Tensor {
    /// Runs a [`Function`] on `inputs` and records it on the tape, as [`Tensor::apply`] does an
    /// [`Op`].
    pub fn apply_fn(f: impl Function, inputs: &[&Tensor]) -> Result<Tensor> {
        Tensor::apply(FunctionOp(f), inputs)
    }
}
