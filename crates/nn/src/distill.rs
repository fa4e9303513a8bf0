//! Knowledge distillation (Hinton et al.): the student learns from the teacher's
//! temperature-softened outputs mixed with the hard labels:
//!   loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, labels),
//! KL averaged over the batch (PyTorch's `batchmean`). The teacher gets no gradient.

use crate::Result;
use kiln_graph::{Array, Tensor};

/// The distillation loss of student logits `[N, C]` against teacher logits `[N, C]` and labels `[N]`.
pub fn distillation_loss(
    student: &Tensor,
    teacher: &Tensor,
    labels: &Array,
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
