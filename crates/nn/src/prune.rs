//! Magnitude pruning: masks that zero the smallest weights (globally or per tensor) to a target
//! sparsity, applied by the optimizer after every update so pruned weights stay zero while
//! fine-tuning, in recorded steps too.

use crate::error::{NnError, Result};
use kiln_graph::Tensor;
use kiln_ops::Buffer;

/// A 0/1 mask for one parameter.
pub struct Mask {
    /// The parameter it applies to.
    pub param: Tensor,
    /// 1.0 where the weight is kept, 0.0 where pruned.
    pub mask: Buffer,
    /// Entries pruned.
    pub pruned: usize,
}

/// Masks pruning the `sparsity` fraction (in [0, 1)) of smallest-magnitude weights, over all
/// `params` together (`global`) or within each one.
pub fn magnitude_masks(params: &[Tensor], sparsity: f32, global: bool) -> Result<Vec<Mask>> {
    if !(0.0..1.0).contains(&sparsity) {
        return Err(NnError::Training(format!(
            "sparsity {sparsity} outside [0, 1)"
        )));
    }
    let values: Vec<Vec<f32>> = params
        .iter()
        .map(|p| p.to_vec())
        .collect::<std::result::Result<_, _>>()?;
    let threshold = |vals: &mut Vec<f32>| -> f32 {
        let k = (vals.len() as f64 * sparsity as f64).floor() as usize;
        if k == 0 {
            return -1.0;
        }
        vals.sort_by(|a, b| a.total_cmp(b));
        vals[k - 1]
    };
    let global_t = global.then(|| {
        let mut all: Vec<f32> = values.iter().flatten().map(|v| v.abs()).collect();
        threshold(&mut all)
    });
    params
        .iter()
        .zip(&values)
        .map(|(p, v)| {
            let t = global_t.unwrap_or_else(|| threshold(&mut v.iter().map(|x| x.abs()).collect()));
            let m: Vec<f32> = v
                .iter()
                .map(|x| if x.abs() <= t { 0.0 } else { 1.0 })
                .collect();
            let pruned = m.iter().filter(|x| **x == 0.0).count();
            let mask = p.device().upload(&m)?;
            kiln_ops::elementwise::mask_in_place(p.device(), &p.array().buf, &mask)?;
            Ok(Mask {
                param: p.clone(),
                mask,
                pruned,
            })
        })
        .collect()
}

/// Fraction of zero entries over `params`.
pub fn sparsity(params: &[Tensor]) -> Result<f32> {
    let (mut zeros, mut total) = (0usize, 0usize);
    for p in params {
        let v = p.to_vec()?;
        zeros += v.iter().filter(|x| **x == 0.0).count();
        total += v.len();
    }
    Ok(zeros as f32 / total.max(1) as f32)
}
