//! layer_norm over the last axis with gamma and beta, forward and backward.

use crate::rows::{self, RowOp};

use crate::{
    expect_dtype, expect_nonempty, launch_1d, Array, DType, Device, OpError, Params, Result,
};

/// What layer_norm keeps for its backward: [rows, 2] of (mean, rstd).
pub struct LayerNormSaved {
    /// Per-row mean and reciprocal standard deviation.
    pub stats: Array,
}

fn rows_cols(op: &'static str, x: &Array, gamma: &Array) -> Result<(usize, usize)> {
    expect_dtype(op, x, DType::F32)?;
    expect_nonempty(op, x)?;
    let cols = *x.shape.last().unwrap();
    if gamma.shape != [cols] {
        return Err(OpError::Shape {
            op,
            expected: format!("gamma [{cols}]"),
            got: format!("{:?}", gamma.shape),
        });
    }
    Ok((x.numel() / cols, cols))
}

/// y = layer_norm(x) * gamma + beta over the last axis.
pub fn layer_norm(
    dev: &Device,
    x: &Array,
    gamma: &Array,
    beta: &Array,
    eps: f32,
) -> Result<(Array, LayerNormSaved)> {
    let (rows, cols) = rows_cols("layer_norm", x, gamma)?;
    if beta.shape != gamma.shape {
        return Err(OpError::Shape {
            op: "layer_norm",
            expected: format!("beta {:?}", gamma.shape),
            got: format!("{:?}", beta.shape),
        });
    }
    let y = Array::empty(dev, &x.shape)?;
    let stats = Array::empty(dev, &[rows, 2])?;
    let vec4 = rows::quads(cols, &[&x.buf, &gamma.buf, &beta.buf, &y.buf]);
    let p = rows::params(rows, cols, cols, 0, eps);
    let bufs = [&x.buf, &gamma.buf, &beta.buf, &y.buf, &stats.buf];
    rows::run(dev, RowOp::LayerNorm, (rows, cols, vec4), &[], &bufs, &p)?;
    Ok((y, LayerNormSaved { stats }))
}

/// (dx, dgamma, dbeta) for dy.
pub fn layer_norm_backward(
    dev: &Device,
    x: &Array,
    gamma: &Array,
    saved: &LayerNormSaved,
    dy: &Array,
) -> Result<(Array, Array, Array)> {
    let (rows, cols) = rows_cols("layer_norm_backward", x, gamma)?;
    crate::elementwise::same_shape("layer_norm_backward", &x.shape, &dy.shape)?;
    let dx = Array::empty(dev, &x.shape)?;
    let vec4 = rows::quads(cols, &[&x.buf, &gamma.buf, &dy.buf, &dx.buf]);
    let rp = rows::params(rows, cols, cols, 0, 0.0);
    let bufs = [&x.buf, &dy.buf, &gamma.buf, &dx.buf, &saved.stats.buf];
    let op = RowOp::LayerNormBackward;
    rows::run(dev, op, (rows, cols, vec4), &[], &bufs, &rp)?;
    // The parameter gradients' kernels (norm.wgsl) read the same stats as [rows, 2] floats.
    let p = Params::new().u(rows as u32).u(cols as u32).f(0.0);
    let (dg, db) = (Array::empty(dev, &[cols])?, Array::empty(dev, &[cols])?);
    let call = crate::reduce::ColsumCall {
        outer: 1,
        len: rows,
        inner: cols,
        mean: false,
    };
    let plan = crate::reduce::COLSUM.choose(dev, &call)?.plan;
    if let crate::reduce::ColsumPlan::TwoPass { rows_per_block: rb } = plan {
        // Partial sums per block of rows, then their sum: the columns' work spread over blocks.
        let blocks = rows.div_ceil(rb);
        let (pg, pb) = (
            dev.alloc(blocks * cols, DType::F32)?,
            dev.alloc(blocks * cols, DType::F32)?,
        );
        let k = dev.kernel(
            "norm",
            "layer_norm_backward_params_blocks",
            &[("RB", rb as f64)],
        )?;
        let groups = [cols.div_ceil(crate::WG as usize) as u32, blocks as u32, 1];
        let bufs = [&x.buf, &dy.buf, &saved.stats.buf, &pg, &pb];
        dev.launch(&k, &bufs, &p, groups)?;
        for (part, sum) in [(&pg, &dg), (&pb, &db)] {
            crate::reduce::reduce_raw(
                dev,
                part,
                &sum.buf,
                1,
                blocks,
                cols,
                crate::reduce::Reduce::Sum,
            )?;
        }
    } else {
        let k = dev.kernel("norm", "layer_norm_backward_params", &[])?;
        launch_1d(
            dev,
            &k,
            &[&x.buf, &dy.buf, &saved.stats.buf, &dg.buf, &db.buf],
            &p,
            cols,
        )?;
    }
    Ok((dx, dg, db))
}

/// CPU reference.
pub mod cpu {
    /// Row-wise layer norm with affine parameters.
    pub fn layer_norm(x: &[f64], cols: usize, gamma: &[f64], beta: &[f64], eps: f64) -> Vec<f64> {
        x.chunks(cols)
            .flat_map(|r| {
                let mean = r.iter().sum::<f64>() / cols as f64;
                let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
                let rstd = 1.0 / (var + eps).sqrt();
                r.iter()
                    .enumerate()
                    .map(move |(j, v)| (v - mean) * rstd * gamma[j] + beta[j])
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// Layer normalisation over the last axis as an op: inputs x, gamma `[cols]`, beta `[cols]`.
#[derive(Clone, Copy, Debug)]
pub struct LayerNorm {
    /// Added to the variance.
    pub eps: f32,
}

impl crate::op::Op for LayerNorm {
    fn name(&self) -> &str {
        "layer_norm"
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<crate::op::Forward> {
        let (y, saved) = layer_norm(dev, inputs[0], inputs[1], inputs[2], self.eps)?;
        Ok(crate::op::Forward::with_saved(y, saved))
    }
    fn backward(
        &self,
        dev: &Device,
        ctx: &crate::op::Ctx,
        dy: &Array,
    ) -> Result<Vec<Option<Array>>> {
        let saved = ctx.saved.get::<LayerNormSaved>("layer_norm")?;
        let (dx, dg, db) = layer_norm_backward(dev, ctx.inputs[0], ctx.inputs[1], saved, dy)?;
        Ok(vec![Some(dx), Some(dg), Some(db)])
    }
}
