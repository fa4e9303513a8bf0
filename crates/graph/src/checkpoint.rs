//! Activation checkpointing (PyTorch's `torch.utils.checkpoint`): a function's forward pass runs
//! without keeping its intermediate tensors, and runs again inside the backward pass, where its
//! own backward pass follows at once. Memory drops from every intermediate of every checkpointed
//! block to one block's at a time, plus each block's inputs; compute grows by one forward pass.
//!
//! The function sees its inputs as tensors and must reach everything that should receive a
//! gradient through them (a Transformer block takes its input and its own weights), so the
//! checkpoint hands each input its gradient like any op does: the tape's hooks
//! ([`Tensor::backward_with`]), accumulation and recorded steps see nothing different. The
//! recomputation runs under the mixed-precision mode the forward pass ran under, and dropout masks
//! are pure functions of their generator's state (which moves only between steps), so it
//! reproduces the forward pass exactly.

use crate::mode::{autocast_f16_when, enable_grad, is_autocast_f16, no_grad};
use crate::{Result, Tensor};
use kiln_ops::op::{Ctx, Forward, Op};
use kiln_ops::{Array, DType, Device, OpError};
use std::sync::Arc;

type Function = dyn Fn(&[Tensor]) -> Result<Tensor> + Send + Sync;

/// The checkpointed function as an op: its forward pass keeps nothing but its inputs, its backward
/// pass recomputes and differentiates.
struct Checkpoint {
    f: Arc<Function>,
    /// Whether the forward pass ran under `autocast_f16` (the recomputation must too).
    autocast: bool,
}

impl Op for Checkpoint {
    fn name(&self) -> &str {
        "checkpoint"
    }

    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<Forward> {
        let leaves: Vec<Tensor> = inputs
            .iter()
            .map(|a| Tensor::from_array(dev, (*a).clone()))
            .collect();
        let out = no_grad(|| (self.f)(&leaves))?;
        Ok(out.array().clone().into())
    }

    fn backward(&self, dev: &Device, ctx: &Ctx, dy: &Array) -> Result<Vec<Option<Array>>> {
        // Fresh leaves over the same arrays: their gradients are this op's input gradients,
        // kept apart from whatever the real inputs have accumulated.
        let leaves: Vec<Tensor> = ctx
            .inputs
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let t = Tensor::from_array(dev, (*a).clone());
                if ctx.needs(i) && a.dtype() == DType::F32 {
                    t.requires_grad_(true)
                } else {
                    Ok(t)
                }
            })
            .collect::<Result<_>>()?;
        let out = enable_grad(|| autocast_f16_when(self.autocast, || (self.f)(&leaves)))?;
        if out.shape() != dy.shape.as_slice() {
            return Err(OpError::Invalid {
                op: "checkpoint",
                message: format!(
                    "the recomputed output is {:?}, the forward pass gave {:?}: the function must \
                     depend on its inputs alone",
                    out.shape(),
                    dy.shape
                ),
            });
        }
        if out.requires_grad() {
            out.backward_from(dy.clone(), &mut |_| Ok(()))?;
        }
        Ok(leaves.iter().map(Tensor::grad).collect())
    }
}

/// Runs `f` on `inputs` without keeping its intermediate tensors; the backward pass runs it again
/// (with gradients) to differentiate it, as `torch.utils.checkpoint.checkpoint(f, *inputs,
/// use_reentrant=False)`. The result equals `f(inputs)` and so do the gradients: the same kernels
/// run on the same values.
///
/// `f` must compute from its arguments alone (given in the order of `inputs`): a tensor it
/// captures instead receives no gradient through the checkpoint. Pass a block's parameters as
/// inputs. Inputs that need no gradient (ids, masks) are passed through unchanged.
///
/// ```no_run
/// # fn main() -> Result<(), kiln_ops::OpError> {
/// use kiln_graph::{checkpoint, Device, Tensor};
/// let dev = Device::shared()?;
/// let x = Tensor::from_f32(&dev, &[1.0, -2.0, 3.0], &[3])?.requires_grad_(true)?;
/// let w = Tensor::from_f32(&dev, &[0.5, 0.5, 0.5], &[3])?.requires_grad_(true)?;
/// // y = tanh(x * w), recomputed in the backward pass.
/// let y = checkpoint(&[&x, &w], |t| t[0].mul(&t[1])?.tanh())?;
/// y.sum_all()?.backward()?;
/// assert!(w.grad().is_some());
/// # Ok(()) }
/// ```
pub fn checkpoint(
    inputs: &[&Tensor],
    f: impl Fn(&[Tensor]) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    Tensor::apply(
        Checkpoint {
            f: Arc::new(f),
            autocast: is_autocast_f16(),
        },
        inputs,
    )
}
