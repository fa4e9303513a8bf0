//! softmax and log_softmax along the last axis, and cross-entropy from logits with integer labels
//! (fused log-softmax + NLL, mean over non-ignored rows).

use crate::{
    expect_dtype, expect_nonempty, launch_1d, Array, DType, Device, OpError, Params, Result,
};

fn rows_cols(op: &'static str, x: &Array) -> Result<(usize, usize)> {
    expect_dtype(op, x, DType::F32)?;
    expect_nonempty(op, x)?;
    let cols = *x.shape.last().ok_or_else(|| OpError::Shape {
        op,
        expected: "at least 1 dimension".into(),
        got: "[]".into(),
    })?;
    Ok((x.numel() / cols, cols))
}

fn params(rows: usize, cols: usize, ignore: i32) -> Params {
    Params::new().u(rows as u32).u(cols as u32).i(ignore)
}

/// softmax (log = false) or log_softmax (log = true) along the last axis.
pub fn softmax(dev: &Device, x: &Array, log: bool) -> Result<Array> {
    let (rows, cols) = rows_cols("softmax", x)?;
    let y = Array::empty(dev, &x.shape)?;
    let k = dev.kernel("softmax", "softmax", &[("OP", log as u32 as f64)])?;
    launch_1d(dev, &k, &[&x.buf, &y.buf], &params(rows, cols, -1), rows)?;
    Ok(y)
}

/// Gradient of [`softmax`] from its output y.
pub fn softmax_backward(dev: &Device, y: &Array, dy: &Array, log: bool) -> Result<Array> {
    let (rows, cols) = rows_cols("softmax_backward", y)?;
    crate::elementwise::same_shape("softmax_backward", &y.shape, &dy.shape)?;
    let dx = Array::empty(dev, &y.shape)?;
    let k = dev.kernel("softmax", "softmax_backward", &[("OP", log as u32 as f64)])?;
    launch_1d(
        dev,
        &k,
        &[&y.buf, &dy.buf, &dx.buf],
        &params(rows, cols, -1),
        rows,
    )?;
    Ok(dx)
}

/// What cross-entropy's forward pass keeps for its backward.
pub struct CrossEntropy {
    /// `[2]`: the mean loss and the number of rows counted.
    pub loss: Array,
    /// softmax(logits) - onehot(labels), unscaled, zero rows where ignored.
    pub grad: Array,
}

/// Cross-entropy of logits `[R, C]` against i32 labels `[R]`; rows labelled `ignore_index` do not count.
/// Labels are checked on the device: one outside [0, C) makes the loss NaN (callers that hold the
/// labels on the host should check them first, see [`check_labels`]).
pub fn cross_entropy(
    dev: &Device,
    logits: &Array,
    labels: &Array,
    ignore_index: Option<i32>,
) -> Result<CrossEntropy> {
    let (rows, cols) = rows_cols("cross_entropy", logits)?;
    if logits.shape.len() != 2 {
        return Err(OpError::Shape {
            op: "cross_entropy",
            expected: "logits [rows, classes]".into(),
            got: format!("{:?}", logits.shape),
        });
    }
    expect_dtype("cross_entropy labels", labels, DType::I32)?;
    if labels.shape != [rows] {
        return Err(OpError::Shape {
            op: "cross_entropy",
            expected: format!("labels [{rows}]"),
            got: format!("{:?}", labels.shape),
        });
    }
    let loss = Array::empty(dev, &[2])?;
    let grad = Array::empty(dev, &logits.shape)?;
    let k = dev.kernel("softmax", "xent_forward", &[])?;
    // One workgroup strides over the rows and reduces the loss in a fixed order.
    dev.launch(
        &k,
        &[&logits.buf, &labels.buf, &grad.buf, &loss.buf],
        &params(rows, cols, ignore_index.unwrap_or(i32::MIN)),
        [1, 1, 1],
    )?;
    Ok(CrossEntropy { loss, grad })
}

/// dlogits = grad * dloss / count, for dloss of shape `[]` or `[1]`.
pub fn cross_entropy_backward(dev: &Device, saved: &CrossEntropy, dloss: &Array) -> Result<Array> {
    if dloss.numel() != 1 {
        return Err(OpError::Shape {
            op: "cross_entropy_backward",
            expected: "a scalar upstream gradient".into(),
            got: format!("{:?}", dloss.shape),
        });
    }
    let g = &saved.grad;
    let dx = Array::empty(dev, &g.shape)?;
    let k = dev.kernel("softmax", "xent_backward", &[])?;
    let (rows, cols) = (g.shape[0], g.shape[1]);
    launch_1d(
        dev,
        &k,
        &[&g.buf, &dloss.buf, &dx.buf, &saved.loss.buf],
        &params(rows, cols, 0),
        rows * cols,
    )?;
    Ok(dx)
}

/// Host-side label check: every label in [0, classes) or equal to `ignore_index`.
pub fn check_labels(labels: &[i32], classes: usize, ignore_index: Option<i32>) -> Result<()> {
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| Some(l) != ignore_index && (l < 0 || l as usize >= classes))
    {
        return Err(OpError::Invalid {
            op: "cross_entropy",
            message: format!("label {l} at position {i} is outside [0, {classes})"),
        });
    }
    Ok(())
}

/// CPU references.
pub mod cpu {
    /// Row-wise softmax or log_softmax.
    pub fn softmax(x: &[f64], cols: usize, log: bool) -> Vec<f64> {
        x.chunks(cols)
            .flat_map(|r| {
                let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let s: f64 = r.iter().map(|v| (v - m).exp()).sum();
                r.iter()
                    .map(move |v| {
                        if log {
                            v - m - s.ln()
                        } else {
                            (v - m).exp() / s
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Mean cross-entropy over rows not labelled `ignore`.
    pub fn cross_entropy(x: &[f64], cols: usize, labels: &[i32], ignore: Option<i32>) -> f64 {
        let ls = softmax(x, cols, true);
        let (mut sum, mut n) = (0.0, 0);
        for (r, &l) in labels.iter().enumerate() {
            if Some(l) == ignore {
                continue;
            }
            sum -= ls[r * cols + l as usize];
            n += 1;
        }
        if n == 0 {
            0.0
        } else {
            sum / n as f64
        }
    }
}

/// softmax (or log_softmax) along the last axis as an op.
#[derive(Clone, Copy, Debug, Default)]
pub struct Softmax {
    /// log_softmax instead of softmax.
    pub log: bool,
}

impl crate::op::Op for Softmax {
    fn name(&self) -> &str {
        if self.log {
            "log_softmax"
        } else {
            "softmax"
        }
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<crate::op::Forward> {
        Ok(softmax(dev, inputs[0], self.log)?.into())
    }
    fn backward(
        &self,
        dev: &Device,
        ctx: &crate::op::Ctx,
        dy: &Array,
    ) -> Result<Vec<Option<Array>>> {
        Ok(vec![Some(softmax_backward(dev, ctx.output, dy, self.log)?)])
    }
}

/// Mean cross-entropy of logits `[N, C]` against i32 labels `[N]` as an op (output `[1]`; the
/// labels get no gradient), as PyTorch's `CrossEntropyLoss`.
#[derive(Clone, Copy, Debug, Default)]
pub struct CrossEntropyLoss {
    /// Rows with this label do not count.
    pub ignore_index: Option<i32>,
}

impl crate::op::Op for CrossEntropyLoss {
    fn name(&self) -> &str {
        "cross_entropy"
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<crate::op::Forward> {
        let ce = cross_entropy(dev, inputs[0], inputs[1], self.ignore_index)?;
        // The loss buffer holds [mean, count]; the output shows the mean only.
        let mean = Array {
            buf: ce
                .loss
                .buf
                .view(1, DType::F32)
                .ok_or_else(|| OpError::Invalid {
                    op: "cross_entropy",
                    message: "the loss buffer has no room for its mean".into(),
                })?,
            shape: vec![1],
        };
        Ok(crate::op::Forward::with_saved(mean, ce))
    }
    fn backward(
        &self,
        dev: &Device,
        ctx: &crate::op::Ctx,
        dy: &Array,
    ) -> Result<Vec<Option<Array>>> {
        let ce = ctx.saved.get::<CrossEntropy>("cross_entropy")?;
        Ok(vec![Some(cross_entropy_backward(dev, ce, dy)?), None])
    }
}
