//! Scaled-dot-product attention, FlashAttention-2 style: a workgroup per block of queries, K and
//! V tiles through workgroup memory, an online softmax in registers (no score matrix stored),
//! causal blocks skipped; the backward recomputes the probabilities from each row's saved
//! logsumexp, a workgroup per key block for dK and dV and one per query block for dQ (no atomics:
//! the same result every run). Masks: causal, key padding ([B, Tk], nonzero = ignore) and an
//! additive float mask ([Tq, Tk] shared by batches and heads, or [B, H, Tq, Tk]; -inf masks).
//!
//! Kernels ([`ATTENTION`]): f32 on `shaders/attention.wgsl` (a row's R invocations add their
//! partial dot products through workgroup memory) or `shaders/attention_sg.wgsl` (by subgroup
//! shuffles), each kernel's R chosen by the adapter's register budget ([`register_budget`],
//! [`FlashKernel::live_floats`]) as well as its workgroup memory; with f16 operands, forward and
//! backward on cooperative matrices where the adapter has them (`shaders/attention_coop.wgsl`,
//! f32 accumulation), else widened to f32. An unfused path built from matmul + softmax + matmul
//! is kept to test against.

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
    head_masks: bool,
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
            head_masks: false,
        }
    }

    /// The same call with f16 Q, K and V (autocast).
    pub fn with_f16(mut self, f16: bool) -> AttnCall {
        self.f16 = f16;
        self
    }

    /// The same call with an additive mask per batch item and head ([B, H, Tq, Tk]).
    pub fn with_head_masks(mut self, yes: bool) -> AttnCall {
        self.head_masks = yes;
        self
    }

    /// Elements of the largest additive mask the call may take.
    fn mask_elems(&self) -> usize {
        self.tq * self.tk * if self.head_masks { self.b * self.h } else { 1 }
    }
}

/// The attention family's variants: for f16 operands, forward and backward on cooperative
/// matrices of the adapter's fragment size; else (f16 operands widened) the f32
/// FlashAttention-2 kernels, whose R invocations per row add their partial dot products by
/// subgroup shuffles (`flash_sg`, GPUs with subgroups) or through workgroup memory (`flash`,
/// anywhere; the software adapters' choice).
pub static ATTENTION: VariantTable<AttnCall, Kernels> = VariantTable {
    family: "attention",
    variants: &[
        Variant {
            name: "flash_coop16",
            plan: |d, c| coop_config(d, c, 16).map(Kernels::Coop),
            prefers: |_, _| true,
        },
        Variant {
            name: "flash_coop8",
            plan: |d, c| coop_config(d, c, 8).map(Kernels::Coop),
            prefers: |_, _| true,
        },
        Variant {
            name: "flash_sg",
            plan: |d, c| flash_config(d, c, Exchange::Subgroup).map(Kernels::Flash),
            prefers: |d, c| !d.adapter_profile().is_software && splits_rows(d, c),
        },
        Variant {
            name: "flash",
            plan: |d, c| flash_config(d, c, Exchange::Shared).map(Kernels::Flash),
            prefers: |_, _| true,
        },
    ],
};

/// How the R invocations of a row add their partial dot products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exchange {
    /// Subgroup shuffles between adjacent lanes (`shaders/attention_sg.wgsl`).
    Subgroup,
    /// Workgroup memory, transposed so that stores and reads are conflict-free
    /// (`shaders/attention.wgsl`).
    Shared,
}

/// The f32 flash kernels, for their register model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashKernel {
    /// `flash_forward`: q and the output accumulator.
    Forward,
    /// `flash_backward_kv`: k, v and the dK, dV accumulators.
    KeyValue,
    /// `flash_backward_q`: q, dO and the dQ accumulator.
    Query,
}

impl FlashKernel {
    /// Live f32 values per invocation of the kernel when it holds `dv` vec4s of each row
    /// operand and accumulator: 4 `dv` per operand, plus a chunk of four keys' (or queries')
    /// scores, probabilities and (backward) dP and dS, the row statistics, and the indices.
    pub fn live_floats(self, dv: usize) -> usize {
        match self {
            FlashKernel::Forward => 8 * dv + 16,
            FlashKernel::KeyValue => 16 * dv + 20,
            FlashKernel::Query => 12 * dv + 20,
        }
    }
}

/// Live f32 values per invocation the attention kernels plan for on an adapter.
///
/// GPUs: 128. NVIDIA and AMD GPUs give an invocation at most 255 (256) 32-bit registers, and
/// a 64K-register SM (CU) keeps two 128-invocation workgroups resident at 256 registers each;
/// 128 live values leave the rest for addresses, loop state and temporaries, so nothing spills
/// at that occupancy (Apple GPUs, with fewer registers per SIMD lane, get the same smaller tiles
/// rather than spills). Software adapters: 160, which gives the tiles measured fastest on
/// lavapipe (the forward holding a 64-wide row in one invocation, the backward half of one):
/// a CPU keeps what does not fit its vector registers in its L1 cache.
pub fn register_budget(prof: &kiln_device::AdapterProfile) -> usize {
    if prof.is_software {
        160
    } else {
        128
    }
}

/// The row split of one flash kernel within `budget`: invocations per row R (a power of two),
/// the padded head dimension DP (a multiple of 4 R) and vec4s per invocation DV = DP / (4 R).
fn row_split(kernel: FlashKernel, d: usize, budget: usize) -> (usize, usize, usize) {
    let dv_max = [16, 8, 4, 2, 1]
        .into_iter()
        .find(|&dv| kernel.live_floats(dv) <= budget)
        .unwrap_or(1);
    let r = d.div_ceil(4 * dv_max).max(1).next_power_of_two();
    let dp = d.next_multiple_of(4 * r);
    (r, dp, dp / (4 * r))
}

/// Whether any f32 kernel splits a row over several invocations on this adapter (else the two
/// exchanges run the same code, and the one without subgroups is taken).
fn splits_rows(dev: &Device, c: &AttnCall) -> bool {
    let budget = register_budget(dev.adapter_profile());
    [
        FlashKernel::Forward,
        FlashKernel::KeyValue,
        FlashKernel::Query,
    ]
    .into_iter()
    .any(|k| row_split(k, c.d, budget).0 > 1)
}

/// One f32 flash kernel as planned: its pipeline, rows per workgroup, and its register model.
#[derive(Clone, Debug)]
pub struct FlashTile {
    /// The pipeline.
    pub spec: KernelSpec,
    /// Rows (queries, or keys for dK and dV) per workgroup.
    pub rows: usize,
    /// Invocations per row.
    pub r: usize,
    /// vec4s of each row operand per invocation.
    pub dv: usize,
    /// Live f32 values per invocation ([`FlashKernel::live_floats`]).
    pub live_floats: usize,
}

/// The flash kernels' pipelines for a call.
pub struct FlashConfig {
    forward: FlashTile,
    prep: KernelSpec,
    kv: FlashTile,
    q: FlashTile,
}

/// The spec of one flash kernel: `rows` rows of R invocations per workgroup, tiles of `tile`
/// rows staged.
fn flash_spec(
    x: Exchange,
    entry: &str,
    (r, dp): (usize, usize),
    rows: usize,
    tile: usize,
    kv: bool,
) -> KernelSpec {
    let f = |v: usize| v as f64;
    let mut c = vec![
        ("DP", f(dp)),
        ("R", f(r)),
        ("WG", f(rows * r)),
        ("TILE", f(tile * dp / 4)),
        ("ROWS", f(tile)),
    ];
    if x == Exchange::Shared {
        c.push(("PART", f(if r > 1 { tile / 4 * rows * r } else { 1 })));
    }
    if kv {
        c.extend([("BKV", f(rows)), ("BQ2", f(tile))]);
    } else {
        c.extend([("BQ", f(rows)), ("BKV", f(tile))]);
    }
    let shader = match x {
        Exchange::Subgroup => "attention_sg",
        Exchange::Shared => "attention",
    };
    KernelSpec::new(shader, entry, &c)
}

/// The largest tiles whose kernels fit the device's profile, each kernel's row split from the
/// adapter's register budget ([`register_budget`]); blocks of rows shrink before tiles do.
fn flash_config(
    dev: &Device,
    c: &AttnCall,
    x: Exchange,
) -> std::result::Result<FlashConfig, String> {
    call_fits(dev, c)?;
    let prof = dev.adapter_profile();
    let budget = register_budget(prof);
    if x == Exchange::Subgroup {
        if !prof.caps.subgroups {
            return Err("the adapter has no subgroups".into());
        }
        let min_sg = match prof.subgroup_min_size {
            0 => prof.subgroup_max(),
            m => m,
        } as usize;
        for k in [
            FlashKernel::Forward,
            FlashKernel::KeyValue,
            FlashKernel::Query,
        ] {
            let (r, ..) = row_split(k, c.d, budget);
            if r > min_sg {
                return Err(format!(
                    "{r} invocations per row exceed the adapter's smallest subgroup ({min_sg})"
                ));
            }
        }
    }
    let prep = KernelSpec::new("attention", "flash_backward_prep", &[("WG", 64.0)]);
    all_fit(dev, std::slice::from_ref(&prep))?;
    let gpu = !prof.is_software;
    // The first (rows, tile) pair whose kernel fits.
    let first_fit = |kernel: FlashKernel, entry: &str, rows: &[usize], tiles: &[usize]| {
        let (r, dp, dv) = row_split(kernel, c.d, budget);
        let kv = kernel == FlashKernel::KeyValue;
        let mut last = String::new();
        for &rows in rows {
            let rows = match kernel {
                // dK and dV: invocations per workgroup, as keys of R invocations.
                FlashKernel::KeyValue => (rows / r).max(1),
                _ => rows,
            };
            if rows * r > prof.limits.max_compute_invocations_per_workgroup as usize {
                continue;
            }
            for &tile in tiles {
                let spec = flash_spec(x, entry, (r, dp), rows, tile, kv);
                match all_fit(dev, std::slice::from_ref(&spec)) {
                    Ok(()) => {
                        return Ok(FlashTile {
                            spec,
                            rows,
                            r,
                            dv,
                            live_floats: kernel.live_floats(dv),
                        })
                    }
                    Err(e) => last = e,
                }
            }
        }
        Err(last)
    };
    let kv_invocations: &[usize] = if gpu { &[256, 128, 64] } else { &[64, 32, 16] };
    let forward = first_fit(
        FlashKernel::Forward,
        "flash_forward",
        &[64, 32],
        &[64, 32, 16, 8],
    )?;
    let kv = first_fit(
        FlashKernel::KeyValue,
        "flash_backward_kv",
        kv_invocations,
        &[32, 16, 8],
    )?;
    let q = first_fit(
        FlashKernel::Query,
        "flash_backward_q",
        &[64, 32, 16],
        &[32, 16, 8],
    )?;
    Ok(FlashConfig {
        forward,
        prep,
        kv,
        q,
    })
}

/// The checks every variant makes: head dimension, grid, bindings.
fn call_fits(dev: &Device, c: &AttnCall) -> std::result::Result<(), String> {
    if c.d == 0 || c.d > MAX_HEAD_DIM {
        return Err(format!("head_dim {} outside 1..={MAX_HEAD_DIM}", c.d));
    }
    if c.h > 65535 || c.b > 65535 {
        return Err("more than 65,535 heads or batch items".into());
    }
    let elems = c.b * c.h * c.tq.max(c.tk) * c.d;
    binding_fits(dev, (2 * elems + 64) as u64 * 4)?;
    binding_fits(dev, c.mask_elems() as u64 * 4)
}

/// The cooperative-matrix kernels of one fragment size: forward, the backward's preparation
/// (max |dO| and |V| partials, then D and the scaled f16 dO) and its two kernels.
pub struct CoopConfig {
    forward: KernelSpec,
    absmax: KernelSpec,
    prep: KernelSpec,
    kv: KernelSpec,
    q: KernelSpec,
    /// Rows per workgroup of the forward, dK/dV and dQ kernels.
    rows: [usize; 3],
}

impl CoopConfig {
    fn specs(self) -> Vec<KernelSpec> {
        vec![self.forward, self.absmax, self.prep, self.kv, self.q]
    }
}

/// Invocations of `flash_coop_absmax` and `flash_coop_prep`, and the most partials the first
/// leaves for the second (one per invocation of a prep workgroup).
const COOP_AM_WG: usize = 64;

/// Live f32 values per lane of the cooperative kernels with `nf` fragments of size `s` along
/// the head dimension (32-lane subgroups: a 16 x 16 f32 accumulator is 8 values per lane, an
/// f16 operand fragment 4 registers): the forward holds the output accumulators and the Q
/// fragments, dK/dV two rows of accumulators, dQ one; plus indices and bookkeeping.
pub fn coop_live_floats(kernel: FlashKernel, s: usize, nf: usize) -> usize {
    let (acc, opnd) = (s * s / 32, s * s / 64);
    match kernel {
        FlashKernel::Forward => nf * (acc + opnd) + 16,
        FlashKernel::KeyValue => 2 * nf * acc + 16,
        FlashKernel::Query => nf * acc + 16,
    }
}

/// The cooperative-matrix kernels for fragment size `s`: each kernel's largest block of rows and
/// tile of streamed rows whose workgroup memory fits, within the register budget.
fn coop_config(dev: &Device, c: &AttnCall, s: usize) -> std::result::Result<CoopConfig, String> {
    if !c.f16 {
        return Err("takes f16 operands".into());
    }
    let prof = dev.adapter_profile();
    if !prof.coop_f16_sizes.contains(&(s as u32)) {
        return Err(format!(
            "the adapter has no {s} x {s} f16 cooperative matrix with f32 accumulators"
        ));
    }
    call_fits(dev, c)?;
    let dp = c.d.next_multiple_of(s);
    let nf = dp / s;
    if nf > 8 {
        return Err(format!(
            "head_dim {} needs {nf} fragments of {s} along it (at most 8)",
            c.d
        ));
    }
    let budget = register_budget(prof);
    for k in [
        FlashKernel::Forward,
        FlashKernel::KeyValue,
        FlashKernel::Query,
    ] {
        let live = coop_live_floats(k, s, nf);
        if live > budget {
            return Err(format!(
                "{k:?} would hold {live} live floats per lane, over the adapter's budget of {budget}"
            ));
        }
    }
    let max_sg = prof.subgroup_max() as usize;
    let min_sg = match prof.subgroup_min_size {
        0 => max_sg,
        m => (m as usize).min(max_sg),
    };
    let lanes_per_row = (min_sg / s).clamp(1, 8);
    let f = |v: usize| v as f64;
    let first_fit = |entry: &str| {
        let mut last = String::new();
        for sgc in [4, 2, 1] {
            for bkv in [64, 32, 16, 8].into_iter().filter(|&t| t >= s) {
                let spec = KernelSpec::new(
                    "attention_coop",
                    entry,
                    &[
                        ("S", f(s)),
                        ("SGC", f(sgc)),
                        ("SG", f(max_sg)),
                        ("MIN_SG", f(min_sg)),
                        ("DP", f(dp)),
                        ("BKV", f(bkv)),
                        ("LR", f(lanes_per_row)),
                    ],
                );
                match all_fit(dev, std::slice::from_ref(&spec)) {
                    Ok(()) => return Ok((spec, sgc * s)),
                    Err(e) => last = e,
                }
            }
        }
        Err(last)
    };
    let (forward, bq) = first_fit(&format!("flash_coop{s}"))?;
    let (kv, bk) = first_fit(&format!("flash_coop{s}_kv"))?;
    let (q, bq_q) = first_fit(&format!("flash_coop{s}_q"))?;
    let small = |entry: &str| {
        KernelSpec::new(
            "attention_coop",
            entry,
            &[("AM_WG", f(COOP_AM_WG)), ("DP", f(dp))],
        )
    };
    let (absmax, prep) = (small("flash_coop_absmax"), small("flash_coop_prep"));
    all_fit(dev, &[absmax.clone(), prep.clone()])?;
    Ok(CoopConfig {
        forward,
        absmax,
        prep,
        kv,
        q,
        rows: [bq, bk, bq_q],
    })
}

/// The f32 flash tiles a call would run with the device's policy (forward, dK and dV, dQ),
/// for planning and tests: where the policy chooses a cooperative variant, the f32 tiles of
/// the subgroup or shared exchange it would otherwise take.
pub fn flash_tiles(dev: &Device, c: &AttnCall) -> Result<[FlashTile; 3]> {
    match ATTENTION.choose(dev, &c.with_f16(false))?.plan {
        Kernels::Flash(cfg) => Ok([cfg.forward, cfg.kv, cfg.q]),
        Kernels::Coop(_) => Err(OpError::Invalid {
            op: "attention",
            message: "f32 operands planned on cooperative matrices".into(),
        }),
    }
}

/// The variant the device's policy chooses for an attention call, and its pipelines.
pub fn plan(dev: &Device, c: &AttnCall) -> Result<Planned> {
    let v = ATTENTION.choose(dev, c)?;
    let kernels = match v.plan {
        Kernels::Coop(cfg) => cfg.specs(),
        Kernels::Flash(cfg) => vec![cfg.forward.spec, cfg.prep, cfg.kv.spec, cfg.q.spec],
    };
    Ok(Planned {
        family: ATTENTION.family,
        variant: v.variant,
        kernels,
        largest_binding: ((2 * c.b * c.h * c.tq.max(c.tk) * c.d + 64) as u64 * 4)
            .max(c.mask_elems() as u64 * 4),
    })
}

struct Dims {
    b: usize,
    h: usize,
    tq: usize,
    tk: usize,
    d: usize,
    /// 0 no additive mask, 1 one [Tq, Tk] for every batch item and head, 2 one per batch item
    /// and head ([B, H, Tq, Tk]).
    mask: u32,
}

impl Dims {
    fn call(&self, f16: bool) -> AttnCall {
        AttnCall::new(self.b, self.h, self.tq, self.tk, self.d)
            .with_f16(f16)
            .with_head_masks(self.mask == 2)
    }
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
    let mut kind = 0;
    if let Some(m) = mask {
        expect_dtype("attention attn_mask", m, DType::F32)?;
        kind = if m.shape == [tq, tk] {
            1
        } else if m.shape == [b, h, tq, tk] {
            2
        } else {
            return Err(OpError::Shape {
                op: "attention",
                expected: format!(
                    "attn_mask [{tq}, {tk}] (added to every batch item and head) or [{b}, {h}, {tq}, {tk}]"
                ),
                got: format!("{:?}", m.shape),
            });
        };
    }
    Ok(Dims {
        b,
        h,
        tq,
        tk,
        d,
        mask: kind,
    })
}

fn params(g: &Dims, spec: &AttentionSpec, has_pad: bool, dv_off: usize, parts: usize) -> Params {
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
        .us(&[g.mask, dv_off as u32, parts as u32])
}

/// A mask buffer, or a one-element stand-in for a binding the kernels leave unread without it.
fn or_unused(dev: &Device, a: Option<&Array>, dtype: DType) -> Result<Buffer> {
    Ok(match a {
        Some(a) => a.buf.clone(),
        None => dev.alloc(1, dtype)?,
    })
}

/// f16 operands widened to f32 (the f32 kernels).
fn widened(dev: &Device, x: &Array) -> Result<Array> {
    match x.dtype() {
        DType::F16 => crate::half::cast(dev, x, DType::F32),
        _ => {
            expect_dtype("attention", x, DType::F32)?;
            Ok(x.clone())
        }
    }
}

/// The kernels a chosen attention variant runs (its plan in [`ATTENTION`]).
pub enum Kernels {
    /// FlashAttention-2 tiles in f32.
    Flash(FlashConfig),
    /// Cooperative-matrix kernels in f16.
    Coop(CoopConfig),
}

/// The variant for a call and its kernels.
fn kernels_for(dev: &Device, call: &AttnCall) -> Result<Kernels> {
    Ok(ATTENTION.choose(dev, call)?.plan)
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

/// [`attention`] with an additive float mask `attn_mask`, [Tq, Tk] (added to the scaled scores of
/// every batch item and head) or [B, H, Tq, Tk] (one per batch item and head): PyTorch's float
/// `attn_mask`; a boolean mask becomes -inf where it masks. The backward
/// ([`attention_backward`]) takes it from the saved state.
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
    let call = g.call(f16);
    let kernels = kernels_for(dev, &call)?;
    let (q, k, v) = match kernels {
        Kernels::Coop(_) => (q.clone(), k.clone(), v.clone()),
        Kernels::Flash(_) => (widened(dev, q)?, widened(dev, k)?, widened(dev, v)?),
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
    let (spec_fwd, bq) = match kernels {
        Kernels::Coop(c) => (c.forward, c.rows[0]),
        Kernels::Flash(c) => (c.forward.spec, c.forward.rows),
    };
    let pb = or_unused(dev, pad, DType::I32)?;
    let mb = or_unused(dev, attn_mask, DType::F32)?;
    let p = params(&g, spec, pad.is_some(), 0, 0);
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

/// (dQ, dK, dV) for dO, in f32 (the masks and spec as the forward was given them). With f16
/// operands on cooperative matrices dO is rounded to f16 after scaling by a power of two chosen
/// on the device (so that dO and dS keep f16's precision without a loss scale).
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
    let f16 = [q, k, v].iter().all(|t| t.dtype() == DType::F16);
    let (nq, nk) = (g.b * g.h * g.tq * g.d, g.b * g.h * g.tk * g.d);
    if nq == 0 || nk == 0 {
        let z = |s: &[usize]| Array::full(dev, s, 0.0);
        return Ok((z(&q.shape)?, z(&k.shape)?, z(&v.shape)?));
    }
    // The variant the forward ran (the same device and call choose the same one).
    let kernels = kernels_for(dev, &g.call(f16))?;
    let (q, k, v) = match kernels {
        Kernels::Coop(_) => (q.clone(), k.clone(), v.clone()),
        Kernels::Flash(_) => (widened(dev, q)?, widened(dev, k)?, widened(dev, v)?),
    };
    let pb = or_unused(dev, pad, DType::I32)?;
    let mb = or_unused(dev, saved.mask.as_ref(), DType::F32)?;
    // dK and dV share one buffer (the kernels' storage bindings): dV from an offset that keeps
    // its binding aligned.
    let dv_off = nk.next_multiple_of(64);
    let rows = g.b * g.h * g.tq;
    let dq = Array::empty(dev, &q.shape)?;
    let dkv = dev.alloc(dv_off + nk, DType::F32)?;
    match kernels {
        Kernels::Flash(cfg) => {
            let p = params(&g, spec, pad.is_some(), dv_off, 0);
            let prep = cfg.prep.kernel(dev)?;
            let bufs = [&dout.buf, &saved.stats.buf, &saved.out.buf];
            dev.launch(&prep, &bufs, &p, [rows.div_ceil(64) as u32, 1, 1])?;
            let kq = cfg.q.spec.kernel(dev)?;
            let groups = [g.tq.div_ceil(cfg.q.rows) as u32, g.h as u32, g.b as u32];
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
            let kkv = cfg.kv.spec.kernel(dev)?;
            let groups = [g.tk.div_ceil(cfg.kv.rows) as u32, g.h as u32, g.b as u32];
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
        }
        Kernels::Coop(cfg) => {
            // max |dO| and |V| in partials, then sigma, D * sigma and dO * sigma as f16.
            let n = nq.max(nk);
            let parts = n.div_ceil(COOP_AM_WG * 16).clamp(1, COOP_AM_WG);
            let p = params(&g, spec, pad.is_some(), dv_off, parts);
            let part = dev.alloc(2 * parts, DType::F32)?;
            let am = cfg.absmax.kernel(dev)?;
            dev.launch(&am, &[&v.buf, &dout.buf, &part], &p, [parts as u32, 1, 1])?;
            let do16 = dev.alloc(nq, DType::F16)?;
            let sigma = dev.alloc(1, DType::F32)?;
            let prep = cfg.prep.kernel(dev)?;
            let bufs = [
                &dout.buf,
                &saved.stats.buf,
                &saved.out.buf,
                &do16,
                &part,
                &sigma,
            ];
            dev.launch(&prep, &bufs, &p, [rows.div_ceil(COOP_AM_WG) as u32, 1, 1])?;
            let bufs = |o: &Buffer| {
                [
                    q.buf.clone(),
                    k.buf.clone(),
                    v.buf.clone(),
                    pb.clone(),
                    do16.clone(),
                    saved.stats.buf.clone(),
                    o.clone(),
                    mb.clone(),
                    sigma.clone(),
                ]
            };
            let kq = cfg.q.kernel(dev)?;
            let b = bufs(&dq.buf);
            let groups = [g.tq.div_ceil(cfg.rows[2]) as u32, g.h as u32, g.b as u32];
            dev.launch(&kq, &b.iter().collect::<Vec<_>>(), &p, groups)?;
            let kkv = cfg.kv.kernel(dev)?;
            let b = bufs(&dkv);
            let groups = [g.tk.div_ceil(cfg.rows[1]) as u32, g.h as u32, g.b as u32];
            dev.launch(&kkv, &b.iter().collect::<Vec<_>>(), &p, groups)?;
        }
    }
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

    /// [`attention`] with an additive mask, [tq, tk] for every batch item and head or (a mask of
    /// bh * tq * tk values) one per batch item and head; -inf masks the key for that query.
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
                let add = |j: usize| {
                    mask.map_or(0.0, |m| {
                        let head = if m.len() == bh * tq * tk {
                            z * tq * tk
                        } else {
                            0
                        };
                        m[head + i * tk + j]
                    })
                };
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

/// The attention kernels' workgroup-memory accesses for the bank audit ([`crate::banks`]), as
/// planned on `dev`'s profile for head dimensions 32, 64 and 128 (and f16 on its cooperative
/// sizes), with the strides and pads read from the specialised shaders:
/// - the f32 kernels (both exchanges): tile stores, the row reads of the dot products and
///   updates (partners on adjacent vec4s), and the workgroup-memory exchange (partials stored at
///   `[chunk * WG + lid]`, a row's R read side by side);
/// - the cooperative kernels: operand staging, fragment loads (NVIDIA's `ldmatrix` model: 32
///   rows of 16 bytes per 16 x 16 fragment), the score scratch written as accumulators (the m16n8
///   model: lane l holds rows l / 4 and l / 4 + 8, columns 2 (l % 4) and the next, per 8 columns)
///   and read by the softmax bookkeeping (LR lanes per row, columns h + LR t), and P's f16 stores.
pub fn bank_accesses(dev: &Device) -> Result<Vec<crate::banks::Access>> {
    let mut out = Vec::new();
    let invalid = |message| OpError::Invalid {
        op: "attention bank model",
        message,
    };
    for d in [32, 64, 128] {
        let call = AttnCall::new(8, 12, 1024, 1024, d);
        for (x, name) in [
            (Exchange::Subgroup, "flash_sg"),
            (Exchange::Shared, "flash"),
        ] {
            let cfg = match flash_config(dev, &call, x) {
                Ok(c) => c,
                Err(_) if x == Exchange::Subgroup => continue,
                Err(e) => return Err(invalid(e)),
            };
            for t in [&cfg.forward, &cfg.kv, &cfg.q] {
                flash_accesses(&mut out, &t.spec, &format!("{name} d{d} {}", t.spec.entry))?;
            }
        }
        for s in dev.adapter_profile().coop_f16_sizes.clone() {
            let Ok(cfg) = coop_config(dev, &call.with_f16(true), s as usize) else {
                continue;
            };
            for spec in [&cfg.forward, &cfg.kv, &cfg.q] {
                coop_accesses(
                    &mut out,
                    spec,
                    &format!("flash_coop{s} d{d} {}", spec.entry),
                )?;
            }
        }
    }
    Ok(out)
}

/// The accesses of one cooperative attention pipeline (as [`bank_accesses`] declares them),
/// labelled `label`: for tests that vary a constant.
pub fn coop_bank_accesses(spec: &KernelSpec, label: &str) -> Result<Vec<crate::banks::Access>> {
    let mut out = Vec::new();
    coop_accesses(&mut out, spec, label)?;
    Ok(out)
}

fn values(spec: &KernelSpec, names: &[&str]) -> Result<Vec<u64>> {
    names.iter().map(|n| spec.value(n)).collect()
}

/// The f32 kernels' accesses.
fn flash_accesses(
    out: &mut Vec<crate::banks::Access>,
    spec: &KernelSpec,
    label: &str,
) -> Result<()> {
    use crate::banks::Access;
    let v = values(spec, &["DP", "R", "WG", "DV", "TILE"])?;
    let (dp, r, wg, dv, tile) = (v[0], v[1], v[2], v[3], v[4]);
    let groups = wg.div_ceil(32) as u32;
    let lid = move |lane: u32, g: u32| -> Option<u64> {
        let l = g as u64 * 32 + lane as u64;
        (l < wg).then_some(l)
    };
    out.push(
        Access::new(
            label,
            "t1/t2",
            "tile store (vec4 e = lid + k WG)",
            16,
            tile.div_ceil(wg) as u32,
            |_, _| None,
        )
        .grouped(groups, move |lane, g, k| {
            let e = lid(lane, g)? + k as u64 * wg;
            (e < tile).then_some(16 * e)
        }),
    );
    out.push(
        Access::new(
            label,
            "t1/t2",
            "row read (vec4 c R + r of one row)",
            16,
            dv as u32,
            |_, _| None,
        )
        .grouped(groups, move |lane, g, c| {
            let l = lid(lane, g)?;
            Some(16 * (3 * (dp / 4) + c as u64 * r + l % r))
        }),
    );
    if spec.shader == "attention" && r > 1 {
        let chunks = (spec.value("PART")? / wg) as u32;
        out.push(
            Access::new(
                label,
                "part",
                "exchange store ([ch WG + lid])",
                16,
                chunks,
                |_, _| None,
            )
            .grouped(groups, move |lane, g, ch| {
                Some(16 * (ch as u64 * wg + lid(lane, g)?))
            }),
        );
        out.push(
            Access::new(
                label,
                "part",
                "exchange read (a row's R partials)",
                16,
                r as u32,
                |_, _| None,
            )
            .grouped(groups, move |lane, g, t| {
                let l = lid(lane, g)?;
                Some(16 * (wg + (l / r) * r + t as u64))
            }),
        );
    }
    Ok(())
}

/// The cooperative kernels' accesses (32-lane subgroups).
fn coop_accesses(
    out: &mut Vec<crate::banks::Access>,
    spec: &KernelSpec,
    label: &str,
) -> Result<()> {
    use crate::banks::Access;
    let v = values(
        spec,
        &["S", "SGC", "DP", "BKV", "LR", "QS", "SCS", "PS", "WG"],
    )?;
    let (s, sgc, dp, bkv, lr, qs, scs, ps, wg) =
        (v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]);
    let bq = sgc * s;
    // Staging: element e = lid + k WG of a [rows][DP] block into rows of stride QS.
    out.push(
        Access::new(
            label,
            "B1/T1",
            "operand staging (f16 e = lid + k WG)",
            2,
            (bq * dp).div_ceil(wg) as u32,
            |_, _| None,
        )
        .grouped((wg / 32) as u32, move |lane, g, k| {
            let e = g as u64 * 32 + lane as u64 + k as u64 * wg;
            (e < bq * dp).then(|| 2 * ((e / dp) * qs + e % dp))
        }),
    );
    let ldm = move |stride: u64, lane: u32, r0: u64, c0: u64| -> Option<u64> {
        let lane = lane as u64;
        if s == 8 && lane >= 8 {
            return None;
        }
        Some(2 * ((r0 + lane % s) * stride + c0 + (lane / s) * 8))
    };
    out.push(
        Access::new(
            label,
            "B1/T1",
            "fragment load (ldmatrix model)",
            16,
            (dp / s) as u32,
            |_, _| None,
        )
        .grouped(sgc as u32, move |lane, sg, f| {
            ldm(qs, lane, sg as u64 * s, f as u64 * s)
        }),
    );
    out.push(
        Access::new(
            label,
            "Ps/Pd",
            "fragment load (ldmatrix model)",
            16,
            (bkv / s) as u32,
            |_, _| None,
        )
        .grouped(sgc as u32, move |lane, sg, f| {
            ldm(ps, lane, sg as u64 * s, f as u64 * s)
        }),
    );
    out.push(
        Access::new(
            label,
            "Sc/Sd",
            "scores stored as accumulators (m16n8 model)",
            8,
            ((s / 8) * (s / 8) * (bkv / s)) as u32,
            |_, _| None,
        )
        .grouped(sgc as u32, move |lane, sg, step| {
            let lane = lane as u64;
            let per = (s / 8) * (s / 8);
            let (kf, st) = (step as u64 / per, step as u64 % per);
            let (r8, c8) = ((st / (s / 8)) * 8, (st % (s / 8)) * 8);
            (lane / 4 < s)
                .then(|| 4 * ((sg as u64 * s + lane / 4 + r8) * scs + kf * s + c8 + 2 * (lane % 4)))
        }),
    );
    // Bookkeeping: lane -> row lane / LR of the pass, column h + LR t.
    let rows_per_pass = 32 / lr;
    out.push(
        Access::new(
            label,
            "Sc/Sd",
            "softmax bookkeeping read (LR lanes a row)",
            4,
            (bkv / lr) as u32,
            |_, _| None,
        )
        .grouped(sgc as u32, move |lane, sg, t| {
            let (r, h) = (lane as u64 / lr, lane as u64 % lr);
            (r < s.min(rows_per_pass)).then(|| 4 * ((sg as u64 * s + r) * scs + h + lr * t as u64))
        }),
    );
    out.push(
        Access::new(
            label,
            "Ps/Pd",
            "P store (f16, LR lanes a row)",
            2,
            (bkv / lr) as u32,
            |_, _| None,
        )
        .grouped(sgc as u32, move |lane, sg, t| {
            let (r, h) = (lane as u64 / lr, lane as u64 % lr);
            (r < s.min(rows_per_pass)).then(|| 2 * ((sg as u64 * s + r) * ps + h + lr * t as u64))
        }),
    );
    out.push(
        Access::new(
            label,
            "Sc",
            "output scratch read (e = lane + 32 k)",
            4,
            (s * s / 32).max(1) as u32,
            |_, _| None,
        )
        .grouped(sgc as u32, move |lane, sg, k| {
            let e = lane as u64 + 32 * k as u64;
            (e < s * s).then(|| 4 * ((sg as u64 * s + e / s) * scs + e % s))
        }),
    );
    Ok(())
}
