//! A recurrence's weight gradient in one product: the input side of an RNN or LSTM layer whose
//! gate pre-activations add an input term and a recurrent one.

use crate::{Result, Tensor};
use kiln_ops::op::{Ctx, Forward, Op};
use kiln_ops::{layout, matmul, Array, Device, OpError};
use std::sync::{Arc, Mutex};

/// h_0 [B, H] and the hidden states h_1 .. h_T [B, T, H], given by [`Recurrence::finish`].
type States = Arc<Mutex<Option<(Array, Array)>>>;

/// The op behind [`Tensor::recurrence`]: inputs xw [B, T, G] and w [G, H]; the output is xw
/// itself; w's gradient comes from xw's gradient and the hidden states.
struct RecurrenceOp {
    states: States,
}

impl Op for RecurrenceOp {
    fn name(&self) -> &str {
        "recurrence"
    }
    fn forward(&self, _dev: &Device, inputs: &[&Array]) -> Result<Forward> {
        Ok(inputs[0].clone().into())
    }
    fn backward(&self, dev: &Device, ctx: &Ctx, g: &Array) -> Result<Vec<Option<Array>>> {
        let (h0, seq) = self
            .states
            .lock()
            .unwrap()
            .clone()
            .ok_or_else(|| OpError::Invalid {
                op: "recurrence",
                message: "backward before Recurrence::finish gave the hidden states".into(),
            })?;
        if !ctx.needs(1) {
            return Ok(vec![Some(g.clone()), None]);
        }
        let (b, t, gates) = (g.shape[0], g.shape[1], g.shape[2]);
        let hd = h0.shape[1];
        // h_{t-1} for every step: h_0, then the hidden states but the last.
        let first = h0.reshape(&[b, 1, hd])?;
        let prev = if t == 1 {
            first
        } else {
            let rest = layout::slice(dev, &seq, 1, 0, t - 1)?;
            layout::concat(dev, &[&first, &rest], 1)?
        };
        let dw = matmul::matmul(
            dev,
            &g.reshape(&[b * t, gates])?,
            &prev.reshape(&[b * t, hd])?,
            true,
            false,
            None,
        )?;
        Ok(vec![Some(g.clone()), Some(dw)])
    }
}

impl Tensor {
    /// The input side of a recurrence whose gate pre-activations add an input term and a
    /// recurrent one, g_t = xw[:, t] + h_{t-1} w^T (LSTM; RNN; not GRU, whose reset gate scales
    /// part of the recurrent term). self is xw [B, T, G], all steps' input terms; w is [G, H].
    ///
    /// Then dg_t, the gradient of both terms, is xw's gradient at step t, so w's gradient
    /// (the sum over steps of dg_t^T h_{t-1}) is one product of xw's whole gradient and the
    /// hidden states, taken once after every step's gradient is in, as cuDNN does, instead of a
    /// product and a sum per step. Returns xw again as a new node (same values, no copy) to slice
    /// the steps' input terms from, and the [`Recurrence`] that gives the steps' recurrent terms
    /// and must be given the hidden states when the steps are done.
    pub fn recurrence(&self, w: &Tensor) -> Result<(Tensor, Recurrence)> {
        let (xs, ws) = (self.shape(), w.shape());
        if xs.len() != 3 || ws.len() != 2 || ws[0] != xs[2] {
            return Err(OpError::Shape {
                op: "recurrence",
                expected: "input terms [B, T, G] and a weight [G, H]".into(),
                got: format!("{xs:?} and {ws:?}"),
            });
        }
        let states = States::default();
        let op = RecurrenceOp {
            states: states.clone(),
        };
        let node = Tensor::apply(op, &[self, w])?;
        Ok((
            node,
            Recurrence {
                w: w.detach(),
                shape: [xs[0], xs[1], ws[1]],
                states,
            },
        ))
    }
}

/// The recurrent side of [`Tensor::recurrence`].
pub struct Recurrence {
    /// The weight, cut from the graph: its gradient comes from the recurrence node.
    w: Tensor,
    /// [B, T, H].
    shape: [usize; 3],
    states: States,
}

impl Recurrence {
    /// One step's recurrent term h_{t-1} w^T [B, G]; the gradient reaches h_{t-1} only.
    pub fn step(&self, h_prev: &Tensor) -> Result<Tensor> {
        h_prev.linear(&self.w, None)
    }

    /// Gives the hidden states the steps took, h_0 [B, H] and h_1 .. h_T as [B, T, H], for the
    /// weight's gradient. Call it once the steps are recorded, before the backward pass.
    pub fn finish(&self, h0: &Tensor, seq: &Tensor) -> Result<()> {
        let [b, t, h] = self.shape;
        if h0.shape() != [b, h] || seq.shape() != [b, t, h] {
            return Err(OpError::Shape {
                op: "Recurrence::finish",
                expected: format!("h_0 [{b}, {h}] and the hidden states [{b}, {t}, {h}]"),
                got: format!("{:?} and {:?}", h0.shape(), seq.shape()),
            });
        }
        *self.states.lock().unwrap() = Some((h0.array().clone(), seq.array().clone()));
        Ok(())
    }
}
