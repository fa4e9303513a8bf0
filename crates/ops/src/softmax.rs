//! softmax and log_softmax along the last axis, and cross-entropy from logits with integer labels
//! (fused log-softmax + NLL, mean over non-ignored rows).

use crate::rows::{self, RowOp};
use crate::{expect_dtype, Array, DType, Device, OpError, Result};

/// softmax (log = false) or log_softmax (log = true) along the last axis.
pub fn softmax(dev: &Device, x: &Array, log: bool) -> Result<Array> {
    let (rows, cols) = rows::rows_cols("softmax", x)?;
    let y = Array::empty(dev, &x.shape)?;
    let vec4 = rows::quads(cols, &[&x.buf, &y.buf]);
    let p = rows::params(rows, cols, cols, -1, 0.0);
    let bufs = [&x.buf, &y.buf];
    let log = [("OP", log as u32 as f64)];
    rows::run(dev, RowOp::Softmax, (rows, cols, vec4), &log, &bufs, &p)?;
    Ok(y)
}

/// Gradient of [`softmax`] from its output y.
pub fn softmax_backward(dev: &Device, y: &Array, dy: &Array, log: bool) -> Result<Array> {
    let (rows, cols) = rows::rows_cols("softmax_backward", y)?;
    crate::elementwise::same_shape("softmax_backward", &y.shape, &dy.shape)?;
    let dx = Array::empty(dev, &y.shape)?;
    let vec4 = rows::quads(cols, &[&y.buf, &dy.buf, &dx.buf]);
    let p = rows::params(rows, cols, cols, -1, 0.0);
    let bufs = [&y.buf, &dy.buf, &dx.buf];
    let log = [("OP", log as u32 as f64)];
    rows::run(
        dev,
        RowOp::SoftmaxBackward,
        (rows, cols, vec4),
        &log,
        &bufs,
        &p,
    )?;
    Ok(dx)
}

/// What cross-entropy's forward pass keeps for its backward: per-row log-sum-exp, not the
/// probabilities (the backward recomputes them from the logits, one more read of the logits
/// instead of a stored copy of them).
pub struct CrossEntropy {
    /// `[2]`: the mean loss and the number of rows counted.
    pub loss: Array,
    /// `[rows, 2]`: each row's loss (0 where ignored) and log-sum-exp.
    pub stats: Array,
    /// The logits `[rows, stride]`.
    pub logits: Array,
    /// The labels `[rows]`.
    pub labels: Array,
    /// Classes counted per row (the first `classes` of each row's `stride`).
    pub classes: usize,
    /// Rows with this label do not count.
    pub ignore_index: Option<i32>,
}

fn xent_params(rows: usize, classes: usize, stride: usize, ignore: Option<i32>) -> crate::Params {
    rows::params(rows, classes, stride, ignore.unwrap_or(i32::MIN), 0.0)
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
    let classes = logits.shape.last().copied().unwrap_or(0);
    cross_entropy_padded(dev, logits, labels, classes, ignore_index)
}

/// [`cross_entropy`] over the first `classes` columns of logits `[R, stride]`: the columns past
/// `classes` (a vocabulary padded to a multiple of 64 or 128, as GPT-2 trainers pad it) take no
/// probability and get a zero gradient.
pub fn cross_entropy_padded(
    dev: &Device,
    logits: &Array,
    labels: &Array,
    classes: usize,
    ignore_index: Option<i32>,
) -> Result<CrossEntropy> {
    let (rows, stride) = rows::rows_cols("cross_entropy", logits)?;
    if logits.shape.len() != 2 {
        return Err(OpError::Shape {
            op: "cross_entropy",
            expected: "logits [rows, classes]".into(),
            got: format!("{:?}", logits.shape),
        });
    }
    if classes == 0 || classes > stride {
        return Err(OpError::Shape {
            op: "cross_entropy",
            expected: format!("between 1 and {stride} classes counted per row"),
            got: format!("{classes}"),
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
    let stats = Array::empty(dev, &[rows, 2])?;
    let p = xent_params(rows, classes, stride, ignore_index);
    let vec4 = rows::quads(stride, &[&logits.buf]);
    let bufs = [&logits.buf, &labels.buf, &stats.buf];
    rows::run(
        dev,
        RowOp::CrossEntropy,
        (rows, stride, vec4),
        &[],
        &bufs,
        &p,
    )?;
    // The mean over rows in a second pass, in a fixed order: the same loss on every run.
    let k = rows::xent_mean_spec().kernel(dev)?;
    dev.launch(&k, &[&labels.buf, &stats.buf, &loss.buf], &p, [1, 1, 1])?;
    Ok(CrossEntropy {
        loss,
        stats,
        logits: logits.clone(),
        labels: labels.clone(),
        classes,
        ignore_index,
    })
}

/// dlogits = (softmax(logits) - onehot(labels)) * dloss / count, for dloss of shape `[]` or
/// `[1]`; zero on ignored rows and on padding columns.
pub fn cross_entropy_backward(dev: &Device, saved: &CrossEntropy, dloss: &Array) -> Result<Array> {
    if dloss.numel() != 1 {
        return Err(OpError::Shape {
            op: "cross_entropy_backward",
            expected: "a scalar upstream gradient".into(),
            got: format!("{:?}", dloss.shape),
        });
    }
    let x = &saved.logits;
    let (rows, stride) = (x.shape[0], x.shape[1]);
    let dx = Array::empty(dev, &x.shape)?;
    let p = xent_params(rows, saved.classes, stride, saved.ignore_index);
    let vec4 = rows::quads(stride, &[&x.buf, &dx.buf]);
    let bufs = [
        &x.buf,
        &dloss.buf,
        &saved.labels.buf,
        &dx.buf,
        &saved.stats.buf,
        &saved.loss.buf,
    ];
    let op = RowOp::CrossEntropyBackward;
    rows::run(dev, op, (rows, stride, vec4), &[], &bufs, &p)?;
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
    /// Count only the first `classes` columns of each row (a padded vocabulary); all where None.
    pub classes: Option<usize>,
}

impl crate::op::Op for CrossEntropyLoss {
    fn name(&self) -> &str {
        "cross_entropy"
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<crate::op::Forward> {
        let (logits, labels) = (inputs[0], inputs[1]);
        let classes = match self.classes {
            Some(c) => c,
            None => logits.shape.last().copied().unwrap_or(0),
        };
        let ce = cross_entropy_padded(dev, logits, labels, classes, self.ignore_index)?;
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
