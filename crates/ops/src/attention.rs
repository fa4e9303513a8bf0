//! Scaled-dot-product attention, FlashAttention-2 style (`shaders/attention.wgsl`): a workgroup
//! per block of queries, K and V tiles through workgroup memory, an online softmax in registers
//! (no score matrix stored), causal blocks skipped; the backward recomputes the probabilities from
//! each row's saved logsumexp, a workgroup per key block for dK and dV and one per query block for
//! dQ (no atomics: the same result every run). Masks: causal, key padding ([B, Tk], nonzero =
//! ignore) and an additive float mask ([Tq, Tk], shared by batches and heads; -inf masks). With
//! f16 operands the forward runs on cooperative matrices where the adapter has them
//! (`shaders/attention_coop.wgsl`), f32 accumulation, and the backward on the f32 kernels with
//! the operands widened; elsewhere f16 operands are widened for both. An unfused path built from
//! matmul + softmax + matmul is kept to test against.

use crate::kernels::{all_fit, binding_fits, KernelSpec, Planned};
use crate::{expect_dtype, Array, Buffer, DType, Device, OpError, Params, Result};
use kiln_device::{Variant, VariantTable};

/// Largest head dimension the fused kernels take (64 per invocation, at most two per row).
pub const MAX_HEAD_DIM: usize = 128;

/// What the fused forward keeps for its backward.
pub struct AttentionSaved {
    /// [rows, 2]: each query row's log-sum-exp (then rowsum(dO * O) during the backward).
    pub stats: Array,
    /// The output O.
    pub out: Array,
    /// The additive mask the forward was given, which the backward applies again.
    pub mask: Option<Array>,
}

/// Masks and scale.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionSpec {
    /// Mask keys after the query's position (j > i).
    pub causal: bool,
    /// Score scale; None for 1/sqrt(head_dim).
    pub scale: Option<f32>,
}

/// One attention call as the kernel choice sees it.
#[derive(Clone, Copy, Debug)]
pub struct AttnCall {
    b: usize,
    h: usize,
    tq: usize,
    tk: usize,
    d: usize,
    f16: bool,
}

impl AttnCall {
    /// Q: [b, h, tq, d], K, V: [b, h, tk, d] in f32, for planning.
    pub fn new(b: usize, h: usize, tq: usize, tk: usize, d: usize) -> AttnCall {
        AttnCall {
            b,
            h,
            tq,
            tk,
            d,
            f16: false,
        }
    }

    /// The same call with f16 Q, K and V (autocast).
    pub fn with_f16(mut self, f16: bool) -> AttnCall {
        self.f16 = f16;
        self
    }
}

/// The attention family's variants: for f16 operands the forward on cooperative matrices of
/// the adapter's fragment size; else (and for every backward) the f32 FlashAttention-2 kernels,
/// f16 operands widened.
pub static ATTENTION: VariantTable<AttnCall> = VariantTable {
    family: "attention",
    variants: &[
        Variant {
            name: "flash_coop16",
            supports: |d, c| coop_config(d, c, 16).map(|_| ()),
            prefers: |_, _| true,
        },
        Variant {
            name: "flash_coop8",
            supports: |d, c| coop_config(d, c, 8).map(|_| ()),
            prefers: |_, _| true,
        },
        Variant {
            name: "flash",
            supports: |d, c| flash_config(d, c).map(|_| ()),
            prefers: |_, _| true,
        },
    ],
};

/// The cooperative-matrix forward for fragment size `s`: the largest block of query rows and
/// tile of keys whose workgroup memory fits, and the rows per workgroup.
fn coop_config(
    dev: &Device,
    c: &AttnCall,
    s: usize,
) -> std::result::Result<(KernelSpec, usize), String> {
    if !c.f16 {
        return Err("takes f16 operands".into());
    }
    let prof = dev.adapter_profile();
    if !prof.coop_f16_sizes.contains(&(s as u32)) {
        return Err(format!(
            "the adapter has no {s} x {s} f16 cooperative matrix with f32 accumulators"
        ));
    }
    // The full check (head dimension, bindings, the f32 backward's kernels).
    flash_config(dev, c)?;
    let max_sg = prof.subgroup_max() as f64;
    let min_sg = match prof.subgroup_min_size {
        0 => max_sg,
        m => (m as f64).min(max_sg),
    };
    let dp = c.d.next_multiple_of(s);
    let mut last = String::new();
    for sgc in [4, 2, 1] {
        for bkv in [64, 32, 16, 8].into_iter().filter(|&t| t >= s) {
            let f = |v: usize| v as f64;
            let spec = KernelSpec::new(
                "attention_coop",
                &format!("flash_coop{s}"),
                &[
                    ("S", f(s)),
                    ("SGC", f(sgc)),
                    ("SG", max_sg),
                    ("MIN_SG", min_sg),
                    ("DP", f(dp)),
                    ("BKV", f(bkv)),
                ],
            );
            match all_fit(dev, std::slice::from_ref(&spec)) {
                Ok(()) => return Ok((spec, sgc * s)),
                Err(e) => last = e,
            }
        }
    }
    Err(last)
}

/// The flash kernels' pipelines for a call, with their tile sizes.
struct FlashConfig {
    forward: KernelSpec,
    prep: KernelSpec,
    kv: KernelSpec,
    q: KernelSpec,
    /// Query rows per forward workgroup, keys per dK/dV workgroup, query rows per dQ workgroup.
    bq: usize,
    bkv: usize,
    bq_q: usize,
}

/// Invocations per row and the padded head dimension for `vec4s` vec4s per invocation at most.
fn row_split(d: usize, vec4s: usize) -> (usize, usize) {
    let r = d.div_ceil(4 * vec4s).max(1);
    (r, d.next_multiple_of(4 * r))
}

/// The specs of one flash kernel: `rows` rows of R invocations per workgroup, tiles of `tile`
/// rows staged.
fn flash_spec(entry: &str, dp: usize, r: usize, rows: usize, tile: usize, bq2: bool) -> KernelSpec {
    let f = |v: usize| v as f64;
    let part = if r > 1 { rows * r * tile } else { 1 };
    let mut c = vec![
        ("DP", f(dp)),
        ("R", f(r)),
        ("WG", f(rows * r)),
        ("TILE", f(tile * dp / 4)),
        ("ROWS", f(tile)),
        ("PART", f(part)),
    ];
    if bq2 {
        c.extend([("BKV", f(rows)), ("BQ2", f(tile))]);
    } else {
        c.extend([("BQ", f(rows)), ("BKV", f(tile))]);
    }
    KernelSpec::new("attention", entry, &c)
}

/// The largest tiles whose kernels fit the device's profile: the forward keeps a row's q and
/// output in registers (R invocations per row, 16 vec4s each); the backward keeps 32 floats per
/// row and operand (its kernels hold three or four). Blocks of rows shrink before tiles do.
fn flash_config(dev: &Device, c: &AttnCall) -> std::result::Result<FlashConfig, String> {
    if c.d == 0 || c.d > MAX_HEAD_DIM {
        return Err(format!("head_dim {} outside 1..={MAX_HEAD_DIM}", c.d));
    }
    if c.h > 65535 || c.b > 65535 {
        return Err("more than 65,535 heads or batch items".into());
    }
    let elems = c.b * c.h * c.tq.max(c.tk) * c.d;
    binding_fits(dev, (2 * elems + 64) as u64 * 4)?;
    binding_fits(dev, (c.tq * c.tk) as u64 * 4)?;
    let (r, dp) = row_split(c.d, 16);
    let (r2, dp2) = row_split(c.d, 8);
    let prep = KernelSpec::new("attention", "flash_backward_prep", &[("WG", 64.0)]);
    all_fit(dev, std::slice::from_ref(&prep))?;
    // The first (rows, tile) pair whose kernel fits.
    let first_fit = |entry: &str, dp: usize, r: usize, pairs: &[(usize, usize)], kv: bool| {
        let mut last = String::new();
        for &(rows, tile) in pairs {
            let s = flash_spec(entry, dp, r, rows, tile, kv);
            match all_fit(dev, std::slice::from_ref(&s)) {
                Ok(()) => return Ok((s, rows)),
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    let pairs = |rows: &[usize], tiles: &[usize]| -> Vec<(usize, usize)> {
        rows.iter()
            .flat_map(|&r| tiles.iter().map(move |&t| (r, t)))
            .collect()
    };
    let (forward, bq) = first_fit(
        "flash_forward",
        dp,
        r,
        &pairs(&[64, 32], &[64, 32, 16, 8]),
        false,
    )?;
    let (kv, bkv) = first_fit(
        "flash_backward_kv",
        dp2,
        r2,
        &pairs(&[64 / r2, 32 / r2, 16 / r2], &[32, 16, 8]),
        true,
    )?;
    let (q, bq_q) = first_fit(
        "flash_backward_q",
        dp2,
        r2,
        &pairs(&[64, 32, 16], &[32, 16, 8]),
        false,
    )?;
    Ok(FlashConfig {
        forward,
        prep,
        kv,
        q,
        bq,
        bkv,
        bq_q,
    })
}

/// The variant the device's policy chooses for an attention call, and its pipelines.
pub fn plan(dev: &Device, c: &AttnCall) -> Result<Planned> {
    let v = ATTENTION.choose(dev, c)?;
    let invalid = |message| OpError::Invalid {
        op: "attention",
        message,
    };
    let cfg = flash_config(dev, c).map_err(invalid)?;
    let mut kernels = vec![cfg.forward, cfg.prep, cfg.kv, cfg.q];
    let coop = match v.name {
        "flash_coop16" => Some(16),
        "flash_coop8" => Some(8),
        _ => None,
    };
    if let Some(s) = coop {
        kernels[0] = coop_config(dev, c, s).map_err(invalid)?.0;
    }
    Ok(Planned {
        family: ATTENTION.family,
        variant: v.name,
        kernels,
        largest_binding: (2 * c.b * c.h * c.tq.max(c.tk) * c.d + 64) as u64 * 4,
    })
}

struct Dims {
    b: usize,
    h: usize,
    tq: usize,
    tk: usize,
    d: usize,
}

fn dims(
    q: &Array,
    k: &Array,
    v: &Array,
    pad: Option<&Array>,
    mask: Option<&Array>,
) -> Result<Dims> {
    for (name, t) in [("q", q), ("k", k), ("v", v)] {
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
    if let Some(m) = mask {
        expect_dtype("attention attn_mask", m, DType::F32)?;
        if m.shape != [tq, tk] {
            return Err(OpError::Shape {
                op: "attention",
                expected: format!("attn_mask [{tq}, {tk}] (added to every batch item and head)"),
                got: format!("{:?}", m.shape),
            });
        }
    }
    Ok(Dims { b, h, tq, tk, d })
}

fn params(g: &Dims, spec: &AttentionSpec, has_pad: bool, has_mask: bool, dv_off: usize) -> Params {
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
        .us(&[has_mask as u32, dv_off as u32])
}

/// A mask buffer, or a one-element stand-in for a binding the kernels leave unread without it.
fn or_unused(dev: &Device, a: Option<&Array>, dtype: DType) -> Result<Buffer> {
    Ok(match a {
        Some(a) => a.buf.clone(),
        None => dev.alloc(1, dtype)?,
    })
}

/// f16 operands widened to f32 (the fused kernels compute in f32).
fn widened(dev: &Device, x: &Array) -> Result<Array> {
    match x.dtype() {
        DType::F16 => crate::half::cast(dev, x, DType::F32),
        _ => {
            expect_dtype("attention", x, DType::F32)?;
            Ok(x.clone())
        }
    }
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
    attention_masked(dev, q, k, v, pad, None, spec)
}

/// [`attention`] with an additive float mask `attn_mask` [Tq, Tk] added to the scaled scores of
/// every batch item and head (PyTorch's float `attn_mask`; a boolean mask becomes -inf where it
/// masks). The backward ([`attention_backward`]) takes it from the saved state.
pub fn attention_masked(
    dev: &Device,
    q: &Array,
    k: &Array,
    v: &Array,
    pad: Option<&Array>,
    attn_mask: Option<&Array>,
    spec: &AttentionSpec,
) -> Result<(Array, AttentionSaved)> {
    let g = dims(q, k, v, pad, attn_mask)?;
    let f16 = [q, k, v].iter().all(|t| t.dtype() == DType::F16);
    let call = AttnCall::new(g.b, g.h, g.tq, g.tk, g.d).with_f16(f16);
    let variant = ATTENTION.choose(dev, &call)?.name;
    let coop = match variant {
        "flash_coop16" => Some(16),
        "flash_coop8" => Some(8),
        _ => None,
    };
    let (q, k, v) = match coop {
        Some(_) => (q.clone(), k.clone(), v.clone()),
        None => (widened(dev, q)?, widened(dev, k)?, widened(dev, v)?),
    };
    let rows = g.b * g.h * g.tq;
    let saved = |out: Array, stats| AttentionSaved {
        stats,
        out,
        mask: attn_mask.cloned(),
    };
    if rows == 0 || g.tk == 0 {
        // No keys: every row fully masked (zeros, logsumexp -3.4e38), as the kernel gives them.
        let out = Array::full(dev, &[g.b, g.h, g.tq, g.d], 0.0)?;
        let stats = Array::full(dev, &[rows, 2], -3.402823e38)?;
        return Ok((out.clone(), saved(out, stats)));
    }
    let out = Array::empty(dev, &[g.b, g.h, g.tq, g.d])?;
    let stats = Array::empty(dev, &[rows, 2])?;
    let invalid = |message| OpError::Invalid {
        op: "attention",
        message,
    };
    let (spec_fwd, bq) = match coop {
        Some(s) => coop_config(dev, &call, s).map_err(invalid)?,
        None => {
            let cfg = flash_config(dev, &call).map_err(invalid)?;
            (cfg.forward, cfg.bq)
        }
    };
    let pb = or_unused(dev, pad, DType::I32)?;
    let mb = or_unused(dev, attn_mask, DType::F32)?;
    let p = params(&g, spec, pad.is_some(), attn_mask.is_some(), 0);
    let k_fwd = spec_fwd.kernel(dev)?;
    let groups = [g.tq.div_ceil(bq) as u32, g.h as u32, g.b as u32];
    dev.launch(
        &k_fwd,
        &[&q.buf, &k.buf, &v.buf, &pb, &stats.buf, &out.buf, &mb],
        &p,
        groups,
    )?;
    Ok((out.clone(), saved(out, stats)))
}

/// (dQ, dK, dV) for dO, in f32 (the masks and spec as the forward was given them).
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
    let g = dims(q, k, v, pad, saved.mask.as_ref())?;
    crate::elementwise::same_shape("attention_backward", &q.shape, &dout.shape)?;
    expect_dtype("attention_backward", dout, DType::F32)?;
    let (q, k, v) = (widened(dev, q)?, widened(dev, k)?, widened(dev, v)?);
    let (nq, nk) = (g.b * g.h * g.tq * g.d, g.b * g.h * g.tk * g.d);
    if nq == 0 || nk == 0 {
        let z = |s: &[usize]| Array::full(dev, s, 0.0);
        return Ok((z(&q.shape)?, z(&k.shape)?, z(&v.shape)?));
    }
    // The backward runs the f32 kernels (f16 operands widened above), whichever variant ran the
    // forward: a forced variant must still run here.
    let call = AttnCall::new(g.b, g.h, g.tq, g.tk, g.d);
    let cfg = flash_config(dev, &call).map_err(|message| OpError::Invalid {
        op: "attention",
        message,
    })?;
    let pb = or_unused(dev, pad, DType::I32)?;
    let mb = or_unused(dev, saved.mask.as_ref(), DType::F32)?;
    // dK and dV share one buffer (the kernel's eight storage bindings): dV from an offset that
    // keeps its binding aligned.
    let dv_off = nk.next_multiple_of(64);
    let p = params(&g, spec, pad.is_some(), saved.mask.is_some(), dv_off);
    let rows = g.b * g.h * g.tq;
    let prep = cfg.prep.kernel(dev)?;
    let bufs = [&dout.buf, &saved.stats.buf, &saved.out.buf];
    dev.launch(&prep, &bufs, &p, [rows.div_ceil(64) as u32, 1, 1])?;
    let dq = Array::empty(dev, &q.shape)?;
    let kq = cfg.q.kernel(dev)?;
    let groups = [g.tq.div_ceil(cfg.bq_q) as u32, g.h as u32, g.b as u32];
    let bufs = [
        &q.buf,
        &k.buf,
        &v.buf,
        &pb,
        &dout.buf,
        &saved.stats.buf,
        &dq.buf,
        &mb,
    ];
    dev.launch(&kq, &bufs, &p, groups)?;
    let dkv = dev.alloc(dv_off + nk, DType::F32)?;
    let kkv = cfg.kv.kernel(dev)?;
    let groups = [g.tk.div_ceil(cfg.bkv) as u32, g.h as u32, g.b as u32];
    let bufs = [
        &q.buf,
        &k.buf,
        &v.buf,
        &pb,
        &dout.buf,
        &saved.stats.buf,
        &dkv,
        &mb,
    ];
    dev.launch(&kkv, &bufs, &p, groups)?;
    let part = |off: usize| -> Result<Array> {
        let buf = dkv.window((off * 4) as u64, nk).ok_or(OpError::Invalid {
            op: "attention_backward",
            message: "dK and dV outgrow their buffer".into(),
        })?;
        Ok(Array {
            buf,
            shape: k.shape.clone(),
        })
    };
    Ok((dq, part(0)?, part(dv_off)?))
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
    let g = dims(q, k, v, None, None)?;
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
        attention_masked(q, k, v, h, tq, tk, d, causal, pad, None, scale)
    }

    /// [`attention`] with an additive mask [tq, tk] (-inf masks the key for that query).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_masked(
        q: &[f64],
        k: &[f64],
        v: &[f64],
        h: usize,
        tq: usize,
        tk: usize,
        d: usize,
        causal: bool,
        pad: Option<&[i32]>,
        mask: Option<&[f64]>,
        scale: f64,
    ) -> Vec<f64> {
        let bh = q.len() / (tq * d);
        let mut out = vec![0.0; q.len()];
        for z in 0..bh {
            for i in 0..tq {
                let add = |j: usize| mask.map_or(0.0, |m| m[i * tk + j]);
                let keep: Vec<usize> = (0..tk)
                    .filter(|&j| {
                        let padded = pad.is_some_and(|p| p[(z / h) * tk + j] != 0);
                        let future = causal && j > i;
                        !(padded || future || add(j) == f64::NEG_INFINITY)
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
                            + add(j)
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
    // The masked op without an additive mask, the padding mask where a fourth input is given.
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<crate::op::Forward> {
        self.masked(inputs.len()).forward(dev, inputs)
    }
    fn backward(
        &self,
        dev: &Device,
        ctx: &crate::op::Ctx,
        dy: &Array,
    ) -> Result<Vec<Option<Array>>> {
        self.masked(ctx.inputs.len()).backward(dev, ctx, dy)
    }
}

impl Attention {
    fn masked(&self, inputs: usize) -> AttentionMasked {
        AttentionMasked {
            spec: self.0,
            key_padding: inputs > 3,
        }
    }
}

/// Attention with an additive float mask as an op (PyTorch's float `attn_mask`; a boolean mask
/// becomes -inf where it masks): inputs Q [B, H, Tq, D], K and V [B, H, Tk, D], then the i32
/// key-padding mask [B, Tk] where `key_padding`, then the additive mask [Tq, Tk] shared by batches
/// and heads. The masks take no gradient.
#[derive(Clone, Copy, Debug, Default)]
pub struct AttentionMasked {
    /// Causal mask and scale.
    pub spec: AttentionSpec,
    /// Whether a key-padding mask comes before the additive one.
    pub key_padding: bool,
}

impl crate::op::Op for AttentionMasked {
    fn name(&self) -> &str {
        "attention"
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<crate::op::Forward> {
        let pad = self.key_padding.then(|| inputs[3]);
        let mask = inputs.get(3 + self.key_padding as usize).copied();
        let (out, saved) =
            attention_masked(dev, inputs[0], inputs[1], inputs[2], pad, mask, &self.spec)?;
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
        let pad = self.key_padding.then(|| i[3]);
        let (dq, dk, dv) = attention_backward(dev, i[0], i[1], i[2], pad, &self.spec, saved, dy)?;
        let mut grads = vec![Some(dq), Some(dk), Some(dv)];
        grads.resize(i.len(), None);
        Ok(grads)
    }
}
