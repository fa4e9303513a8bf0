//! Scaled-dot-product attention, fused flash-style (online softmax, no score matrix stored), with
//! causal and key-padding masks, forward and backward; and an unfused reference path built from
//! matmul + softmax + matmul for tests.

use crate::{expect_dtype, Array, DType, Device, OpError, Params, Result};

/// Largest head dimension the fused kernel takes (its per-invocation accumulators).
pub const MAX_HEAD_DIM: usize = 128;

/// What the fused forward keeps for its backward.
pub struct AttentionSaved {
    /// [rows, 2]: each query row's log-sum-exp (then rowsum(dO * O) during the backward).
    pub stats: Array,
    /// The output O.
    pub out: Array,
}

/// Masks and scale.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionSpec {
    /// Mask keys after the query's position (j > i).
    pub causal: bool,
    /// Score scale; None for 1/sqrt(head_dim).
    pub scale: Option<f32>,
}

struct Dims {
    b: usize,
    h: usize,
    tq: usize,
    tk: usize,
    d: usize,
}

fn dims(q: &Array, k: &Array, v: &Array, pad: Option<&Array>) -> Result<Dims> {
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
        expect_dtype("attention", t, DType::F32)?;
        if t.shape.len() != 4 {
            return Err(OpError::Shape {
                op: "attention",
                expected: format!("{name} [batch, heads, seq, head_dim]"),
                got: format!("{:?}", t.shape),
            });
        }
    }
    let (b, h, tq, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
    let tk = k.shape[2];
    if k.shape != [b, h, tk, d] || v.shape != k.shape {
        return Err(OpError::Shape {
            op: "attention",
            expected: format!("k and v [{b}, {h}, Tk, {d}] (q {:?})", q.shape),
            got: format!("k {:?}, v {:?}", k.shape, v.shape),
        });
    }
    if d == 0 || d > MAX_HEAD_DIM {
        return Err(OpError::Invalid {
            op: "attention",
            message: format!("head_dim {d} outside 1..={MAX_HEAD_DIM}"),
        });
    }
    if let Some(p) = pad {
        expect_dtype("attention key_padding_mask", p, DType::I32)?;
        if p.shape != [b, tk] {
            return Err(OpError::Shape {
                op: "attention",
                expected: format!("key_padding_mask [{b}, {tk}]"),
                got: format!("{:?}", p.shape),
            });
        }
    }
    Ok(Dims { b, h, tq, tk, d })
}

fn params(g: &Dims, spec: &AttentionSpec, has_pad: bool) -> Params {
    let scale = spec.scale.unwrap_or(1.0 / (g.d as f32).sqrt());
    Params::new()
        .us(&[
            g.b as u32,
            g.h as u32,
            g.tq as u32,
            g.tk as u32,
            g.d as u32,
            spec.causal as u32,
            has_pad as u32,
        ])
        .f(scale)
}

fn pad_buf(dev: &Device, pad: Option<&Array>) -> Result<crate::Buffer> {
    Ok(match pad {
        Some(p) => p.buf.clone(),
        None => dev.alloc(1, DType::I32)?,
    })
}

/// O = softmax(Q K^T * scale + masks) V. Q: [B, H, Tq, D], K, V: [B, H, Tk, D]; key_padding_mask:
/// i32 [B, Tk], nonzero = ignore that key. Rows with every key masked give zeros.
pub fn attention(
    dev: &Device,
    q: &Array,
    k: &Array,
    v: &Array,
    pad: Option<&Array>,
    spec: &AttentionSpec,
) -> Result<(Array, AttentionSaved)> {
    let g = dims(q, k, v, pad)?;
    let rows = g.b * g.h * g.tq;
    let out = Array::empty(dev, &q.shape)?;
    let stats = Array::empty(dev, &[rows, 2])?;
    let pb = pad_buf(dev, pad)?;
    let kern = dev.kernel("attention", "attention_forward", &[])?;
    launch_1d64(
        dev,
        &kern,
        &[&q.buf, &k.buf, &v.buf, &pb, &stats.buf, &out.buf],
        &params(&g, spec, pad.is_some()),
        rows,
    )?;
    Ok((out.clone(), AttentionSaved { stats, out }))
}

/// (dQ, dK, dV) for dO.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dev: &Device,
    q: &Array,
    k: &Array,
    v: &Array,
    pad: Option<&Array>,
    spec: &AttentionSpec,
    saved: &AttentionSaved,
    dout: &Array,
) -> Result<(Array, Array, Array)> {
    let g = dims(q, k, v, pad)?;
    crate::elementwise::same_shape("attention_backward", &q.shape, &dout.shape)?;
    let p = params(&g, spec, pad.is_some());
    let pb = pad_buf(dev, pad)?;
    let rows = g.b * g.h * g.tq;
    let prep = dev.kernel("attention", "attention_backward_prep", &[])?;
    launch_1d64(
        dev,
        &prep,
        &[&dout.buf, &saved.stats.buf, &saved.out.buf],
        &p,
        rows,
    )?;
    let dq = Array::empty(dev, &q.shape)?;
    let kq = dev.kernel("attention", "attention_backward_q", &[])?;
    launch_1d64(
        dev,
        &kq,
        &[
            &q.buf,
            &k.buf,
            &v.buf,
            &pb,
            &dout.buf,
            &saved.stats.buf,
            &dq.buf,
        ],
        &p,
        rows,
    )?;
    let (dk, dv) = (Array::empty(dev, &k.shape)?, Array::empty(dev, &v.shape)?);
    let kkv = dev.kernel("attention", "attention_backward_kv", &[])?;
    launch_1d64(
        dev,
        &kkv,
        &[
            &q.buf,
            &k.buf,
            &v.buf,
            &pb,
            &dout.buf,
            &saved.stats.buf,
            &dk.buf,
            &dv.buf,
        ],
        &p,
        g.b * g.h * g.tk,
    )?;
    Ok((dq, dk, dv))
}

/// The attention kernels use 64-invocation workgroups (a row each).
fn launch_1d64(
    dev: &Device,
    k: &std::sync::Arc<kiln_device::Kernel>,
    bufs: &[&crate::Buffer],
    p: &Params,
    n: usize,
) -> Result<()> {
    dev.launch(k, bufs, p, [n.div_ceil(64) as u32, 1, 1])?;
    Ok(())
}

/// The unfused path: scores = Q K^T * scale (+ -1e30 where masked), softmax, @ V, from the
/// general ops. Kept to test the fused kernel against. (A fully masked row gives a uniform
/// average here, where the fused kernel gives zeros.)
pub fn attention_unfused(
    dev: &Device,
    q: &Array,
    k: &Array,
    v: &Array,
    pad: Option<&[i32]>,
    spec: &AttentionSpec,
) -> Result<Array> {
    let g = dims(q, k, v, None)?;
    let bh = g.b * g.h;
    let q3 = q.reshape(&[bh, g.tq, g.d])?;
    let k3 = k.reshape(&[bh, g.tk, g.d])?;
    let v3 = v.reshape(&[bh, g.tk, g.d])?;
    let scale = spec.scale.unwrap_or(1.0 / (g.d as f32).sqrt());
    let s = crate::matmul::matmul(dev, &q3, &k3, false, true, None)?;
    let s = crate::elementwise::unary(dev, &s, crate::elementwise::Unary::Affine(scale, 0.0))?;
    let mut mask = vec![0.0f32; bh * g.tq * g.tk];
    for z in 0..bh {
        for i in 0..g.tq {
            for j in 0..g.tk {
                let padded = pad.is_some_and(|p| p[(z / g.h) * g.tk + j] != 0);
                if (spec.causal && j > i) || padded {
                    mask[(z * g.tq + i) * g.tk + j] = -1e30;
                }
            }
        }
    }
    let s = crate::elementwise::binary(
        dev,
        &s,
        &Array::from_f32(dev, &mask, &[bh, g.tq, g.tk])?,
        crate::elementwise::Binary::Add,
    )?;
    let a = crate::softmax::softmax(dev, &s, false)?;
    crate::matmul::matmul(dev, &a, &v3, false, false, None)?.reshape(&q.shape)
}

/// CPU reference (f64), fully masked rows as zeros like the fused kernel.
pub mod cpu {
    /// O for q: [bh, tq, d], k, v: [bh, tk, d]; pad: [b, tk] nonzero = masked.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        q: &[f64],
        k: &[f64],
        v: &[f64],
        h: usize,
        tq: usize,
        tk: usize,
        d: usize,
        causal: bool,
        pad: Option<&[i32]>,
        scale: f64,
    ) -> Vec<f64> {
        let bh = q.len() / (tq * d);
        let mut out = vec![0.0; q.len()];
        for z in 0..bh {
            for i in 0..tq {
                let keep: Vec<usize> = (0..tk)
                    .filter(|&j| {
                        let padded = pad.is_some_and(|p| p[(z / h) * tk + j] != 0);
                        let future = causal && j > i;
                        !(padded || future)
                    })
                    .collect();
                if keep.is_empty() {
                    continue;
                }
                let s: Vec<f64> = keep
                    .iter()
                    .map(|&j| {
                        (0..d)
                            .map(|t| q[(z * tq + i) * d + t] * k[(z * tk + j) * d + t])
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                for (w, &j) in e.iter().zip(&keep) {
                    for t in 0..d {
                        out[(z * tq + i) * d + t] += w / sum * v[(z * tk + j) * d + t];
                    }
                }
            }
        }
        out
    }
}

/// Fused scaled-dot-product attention as an op: inputs Q [B, H, Tq, D], K and V [B, H, Tk, D],
/// and optionally an i32 key-padding mask [B, Tk] (nonzero = ignore; no gradient).
#[derive(Clone, Copy, Debug, Default)]
pub struct Attention(pub AttentionSpec);

impl crate::op::Op for Attention {
    fn name(&self) -> &str {
        "attention"
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<crate::op::Forward> {
        let (q, k, v, pad) = (inputs[0], inputs[1], inputs[2], inputs.get(3).copied());
        let (out, saved) = attention(dev, q, k, v, pad, &self.0)?;
        Ok(crate::op::Forward::with_saved(out, saved))
    }
    fn backward(
        &self,
        dev: &Device,
        ctx: &crate::op::Ctx,
        dy: &Array,
    ) -> Result<Vec<Option<Array>>> {
        let i = ctx.inputs;
        let saved = ctx.saved.get::<AttentionSaved>("attention")?;
        let (dq, dk, dv) =
            attention_backward(dev, i[0], i[1], i[2], i.get(3).copied(), &self.0, saved, dy)?;
        let mut grads = vec![Some(dq), Some(dk), Some(dv)];
        if i.len() > 3 {
            grads.push(None);
        }
        Ok(grads)
    }
}
