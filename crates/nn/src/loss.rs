//! Losses: the training objectives [`Loss`] names (cross-entropy, MSE, binary cross-entropy with
//! logits) and knowledge distillation's.

use crate::error::Result;
use kiln_graph::Tensor;

/// The training objective.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Softmax cross-entropy of logits [n, classes] against class ids (mean over the batch).
    CrossEntropy,
    /// Mean squared error against targets of the output's shape.
    Mse,
    /// Binary cross-entropy of logits against 0/1 targets (the numerically stable
    /// `max(z, 0) - z y + log(1 + exp(-|z|))`, as `BCEWithLogitsLoss`).
    BinaryCrossEntropy,
}

/// The loss of `out` against targets `y`: i32 class ids for cross-entropy, f32 values of the
/// output's shape for the others.
pub fn loss_of(out: &Tensor, y: &Tensor, loss: Loss) -> Result<Tensor> {
    match loss {
        Loss::CrossEntropy => Ok(out.cross_entropy(y, None)?),
        Loss::Mse => Ok(out.mse_loss(y)?),
        Loss::BinaryCrossEntropy => {
            let t = y;
            let softplus = out
                .unary(kiln_ops::elementwise::Unary::Abs)?
                .neg()?
                .exp()?
                .affine(1.0, 1.0)?
                .log()?;
            Ok(out.relu()?.sub(&out.mul(t)?)?.add(&softplus)?.mean_all()?)
        }
    }
}

/// Knowledge distillation (Hinton et al.): the student learns from the teacher's
/// temperature-softened outputs mixed with the hard labels:
///   loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, labels),
/// KL averaged over the batch (PyTorch's `batchmean`). The teacher gets no gradient.
///
/// Student logits `[N, C]`, teacher logits `[N, C]`, labels `[N]`; returns shape `[1]`.
pub fn distillation_loss(
    student: &Tensor,
    teacher: &Tensor,
    labels: &Tensor,
    temperature: f32,
    alpha: f32,
) -> Result<Tensor> {
    let n = *student.shape().first().unwrap_or(&1) as f32;
    let t = temperature;
    let log_ps = student.affine(1.0 / t, 0.0)?.log_softmax()?;
    let log_pt = teacher.detach().affine(1.0 / t, 0.0)?.log_softmax()?;
    let kl = log_pt
        .exp()?
        .mul(&log_pt.sub(&log_ps)?)?
        .sum_all()?
        .affine(1.0 / n, 0.0)?;
    let hard = student.cross_entropy(labels, None)?;
    Ok(kl
        .affine(alpha * t * t, 0.0)?
        .add(&hard.affine(1.0 - alpha, 0.0)?)?)
}
