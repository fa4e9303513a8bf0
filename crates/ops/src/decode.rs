//! Attention for generating one token at a time with a key/value cache: [`kv_append`] writes the
//! new positions' keys and values into per-layer caches, [`decode_attention`] attends one query
//! row per head to every cached key (shaders/decode_attention.wgsl). A step then costs the new
//! token's work only, instead of recomputing the whole prefix.
//!
//! Both read the fused projection's rows in place (`[B, T, C]` with q, k and v at given column
//! offsets, as GPT-2's `c_attn` or MultiheadAttention's `in_proj` give them), and the attention
//! output comes back as `[B, H*D]`, heads side by side, as the output projection takes it: no
//! permutes between them.

use crate::kernels::{all_fit, KernelSpec};
use crate::{expect_dtype, Array, DType, Device, OpError, Params, Result};
use kiln_device::{Variant, VariantTable};

/// Workgroup size of the kernels (the WGSL `WG`).
const WG: usize = 64;

/// The most keys one split takes and the widest head `decode_split` holds (the WGSL `MAXC`).
pub const MAX_CHUNK: usize = 256;

/// One decode attention call: `bh` (batch x heads) query rows against `len` cached keys of
/// width `head_dim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeCall {
    /// Batch x heads.
    pub bh: usize,
    /// Cached positions attended to.
    pub len: usize,
    /// Head width.
    pub head_dim: usize,
}

/// Keys per split at most, on GPUs: short chunks keep each workgroup's serial loops (a lane per
/// key, then a lane per column over the chunk's keys) to a few memory round trips.
const GPU_CHUNK: usize = 64;

/// The splits of the cache and the keys per split for `decode_split` on `dev`: enough
/// workgroups for eight per compute unit (B * H alone leaves a large GPU idle at batch 1), at
/// least 16 keys a split, at most 64 on GPUs ([`MAX_CHUNK`] elsewhere). Every split holds at
/// least one key (the combine pass relies on it).
pub fn splits(dev: &Device, c: &DecodeCall) -> (usize, usize) {
    let prof = dev.adapter_profile();
    let units = prof.compute_units.max(1) as usize;
    let most = if prof.is_software {
        MAX_CHUNK
    } else {
        GPU_CHUNK
    };
    let want = (8 * units).div_ceil(c.bh.max(1));
    let s = want
        .min(c.len.div_ceil(16))
        .max(c.len.div_ceil(most))
        .max(1);
    let chunk = c.len.div_ceil(s);
    (c.len.div_ceil(chunk), chunk)
}

/// How decode attention runs a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodePlan {
    /// The cache in `splits` slices of `chunk` keys, a workgroup each, then a combine pass.
    Split {
        /// Slices of the cache.
        splits: usize,
        /// Keys per slice.
        chunk: usize,
    },
    /// A workgroup per (batch, head) over the whole cache.
    Single,
}

/// Decode attention's variants, most preferred first.
pub static DECODE: VariantTable<DecodeCall, DecodePlan> = VariantTable {
    family: "decode",
    variants: &[
        Variant {
            name: "decode_split",
            plan: |d, c| {
                if c.head_dim > MAX_CHUNK {
                    return Err(format!("heads of at most {MAX_CHUNK} columns"));
                }
                all_fit(
                    d,
                    &[KernelSpec::new("decode_attention", "decode_split", &[])],
                )?;
                let (splits, chunk) = splits(d, c);
                Ok(DecodePlan::Split { splits, chunk })
            },
            // On GPUs; a software adapter's few threads gain nothing from a second pass.
            prefers: |d, _| !d.adapter_profile().is_software,
        },
        Variant {
            name: "decode_single",
            plan: |d, _| {
                all_fit(
                    d,
                    &[KernelSpec::new("decode_attention", "decode_attention", &[])],
                )?;
                Ok(DecodePlan::Single)
            },
            prefers: |_, _| true,
        },
    ],
};

/// A layer's key and value caches: `[B, H, Tmax, D]` each, positions `0..len` filled.
pub struct KvCache {
    /// Keys.
    pub k: Array,
    /// Values.
    pub v: Array,
    /// Positions written so far.
    pub len: usize,
}

impl KvCache {
    /// Empty caches for `batch` sequences of up to `max_len` positions, `heads` heads of width
    /// `head_dim`.
    pub fn new(
        dev: &Device,
        batch: usize,
        heads: usize,
        max_len: usize,
        head_dim: usize,
    ) -> Result<KvCache> {
        let shape = [batch, heads, max_len, head_dim];
        Ok(KvCache {
            k: Array::empty(dev, &shape)?,
            v: Array::empty(dev, &shape)?,
            len: 0,
        })
    }
    /// Positions the caches hold at most.
    pub fn capacity(&self) -> usize {
        self.k.shape[2]
    }
}

#[allow(clippy::too_many_arguments)]
fn params(
    b: usize,
    h: usize,
    d: usize,
    tmax: usize,
    t: usize,
    c: usize,
    cols: (usize, usize),
    start: usize,
    scale: f32,
) -> Params {
    Params::new()
        .us(&[
            b as u32,
            h as u32,
            d as u32,
            tmax as u32,
            t as u32,
            c as u32,
            cols.0 as u32,
            cols.1 as u32,
            start as u32,
        ])
        .f(scale)
}

fn groups(op: &'static str, dev: &Device, n: usize) -> Result<u32> {
    u32::try_from(n)
        .ok()
        .filter(|&g| g <= dev.limits().max_compute_workgroups_per_dimension)
        .ok_or_else(|| OpError::Invalid {
            op,
            message: format!("{n} workgroups exceed one dispatch"),
        })
}

/// Checks src `[B, T, C]` (or `[B, C]` for one position) against the caches and the columns
/// `[col, col + H*D)` it is read at; returns (B, T, C).
fn check_src(
    op: &'static str,
    src: &Array,
    cache: &KvCache,
    cols: &[usize],
) -> Result<(usize, usize, usize)> {
    expect_dtype(op, src, DType::F32)?;
    let [b, h, _, d] = cache.k.shape[..] else {
        return Err(OpError::Shape {
            op,
            expected: "caches [B, H, Tmax, D]".into(),
            got: format!("{:?}", cache.k.shape),
        });
    };
    if cache.v.shape != cache.k.shape {
        return Err(OpError::Shape {
            op,
            expected: format!("value cache {:?} like the key cache", cache.k.shape),
            got: format!("{:?}", cache.v.shape),
        });
    }
    let (sb, st, sc) = match src.shape[..] {
        [sb, st, sc] => (sb, st, sc),
        [sb, sc] => (sb, 1, sc),
        _ => (0, 0, 0),
    };
    let e = h * d;
    if sb != b || cols.iter().any(|&c| c + e > sc) {
        return Err(OpError::Shape {
            op,
            expected: format!(
                "rows [{b}, T, C] holding {e} columns from each of {cols:?} (caches {:?})",
                cache.k.shape
            ),
            got: format!("{:?}", src.shape),
        });
    }
    Ok((b, st, sc))
}

/// Writes the keys and values of `src`'s T positions (`[B, T, C]`, keys at columns `k_col ..
/// k_col + H*D`, values at `v_col ..`, heads side by side) at positions `cache.len ..` of the
/// caches, and advances `cache.len`. An error, never a write past the end, when they do not fit.
pub fn kv_append(
    dev: &Device,
    cache: &mut KvCache,
    src: &Array,
    k_col: usize,
    v_col: usize,
) -> Result<()> {
    let (b, t, c) = check_src("kv_append", src, cache, &[k_col, v_col])?;
    let (h, tmax, d) = (cache.k.shape[1], cache.k.shape[2], cache.k.shape[3]);
    if cache.len + t > tmax {
        return Err(OpError::Invalid {
            op: "kv_append",
            message: format!(
                "{} cached + {t} new positions exceed the cache's {tmax}",
                cache.len
            ),
        });
    }
    let p = params(b, h, d, tmax, t, c, (k_col, v_col), cache.len, 0.0)
        .u(0)
        .u(0);
    let k = dev.kernel("decode_attention", "kv_append", &[])?;
    let n = b * t * h * d;
    dev.launch(
        &k,
        &[&src.buf, &cache.k.buf, &cache.v.buf],
        &p,
        [n.div_ceil(WG) as u32, 1, 1],
    )?;
    cache.len += t;
    Ok(())
}

/// One query row per (batch, head) against the first `cache.len` cached keys and values: `src`
/// is `[B, C]` (or `[B, 1, C]`) with the query at columns `q_col .. q_col + H*D`; returns `[B,
/// H*D]`. `scale` None is 1/sqrt(D). The cache must hold at least one position.
pub fn decode_attention(
    dev: &Device,
    src: &Array,
    q_col: usize,
    cache: &KvCache,
    scale: Option<f32>,
) -> Result<Array> {
    let (b, t, c) = check_src("decode_attention", src, cache, &[q_col])?;
    let (h, tmax, d) = (cache.k.shape[1], cache.k.shape[2], cache.k.shape[3]);
    if t != 1 || cache.len == 0 {
        return Err(OpError::Invalid {
            op: "decode_attention",
            message: format!(
                "takes one query position against a non-empty cache; got {t} positions, {} cached",
                cache.len
            ),
        });
    }
    let scale = scale.unwrap_or(1.0 / (d as f32).sqrt());
    let out = Array::empty(dev, &[b, h * d])?;
    let call = DecodeCall {
        bh: b * h,
        len: cache.len,
        head_dim: d,
    };
    let p = params(b, h, d, tmax, cache.len, c, (q_col, 0), 0, scale);
    if let DecodePlan::Split { splits, chunk } = DECODE.choose(dev, &call)?.plan {
        let p = p.u(chunk as u32).u(splits as u32);
        let part = dev.alloc(b * h * splits * (d + 2), DType::F32)?;
        let bufs = [&src.buf, &cache.k.buf, &cache.v.buf, &part];
        let k = dev.kernel("decode_attention", "decode_split", &[])?;
        let n = groups("decode_attention", dev, b * h * splits)?;
        dev.launch(&k, &bufs, &p, [n, 1, 1])?;
        let k = dev.kernel("decode_attention", "decode_combine", &[])?;
        let n = groups("decode_attention", dev, b * h)?;
        dev.launch(&k, &[&part, &out.buf], &p, [n, 1, 1])?;
        return Ok(out);
    }
    let p = p.u(0).u(0);
    let scores = dev.alloc(b * h * cache.len, DType::F32)?;
    let k = dev.kernel("decode_attention", "decode_attention", &[])?;
    let n = groups("decode_attention", dev, b * h)?;
    dev.launch(
        &k,
        &[&src.buf, &cache.k.buf, &cache.v.buf, &scores, &out.buf],
        &p,
        [n, 1, 1],
    )?;
    Ok(out)
}

/// CPU reference (f64).
pub mod cpu {
    /// One query per (b, h): q `[B, H*D]`, caches `[B, H, len, D]` (only `len` positions);
    /// returns `[B, H*D]`.
    #[allow(clippy::too_many_arguments)]
    pub fn decode_attention(
        q: &[f64],
        k: &[f64],
        v: &[f64],
        b: usize,
        h: usize,
        len: usize,
        d: usize,
        scale: f64,
    ) -> Vec<f64> {
        let mut out = vec![0.0; b * h * d];
        for bi in 0..b {
            for hi in 0..h {
                let q0 = bi * h * d + hi * d;
                let k0 = (bi * h + hi) * len * d;
                let s: Vec<f64> = (0..len)
                    .map(|j| (0..d).map(|t| q[q0 + t] * k[k0 + j * d + t]).sum::<f64>() * scale)
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let sum: f64 = e.iter().sum();
                for t in 0..d {
                    out[q0 + t] = (0..len).map(|j| e[j] / sum * v[k0 + j * d + t]).sum();
                }
            }
        }
        out
    }
}
