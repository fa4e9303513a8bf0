//! The GEMM engine every product runs on: matmuls, linear layers and the convolutions (as
//! implicit GEMMs). [`GemmCall`] describes one product (operand layouts, fused bias, activation,
//! epilogue); the variant tables ([`GEMM`], [`GEMM_F16`]; names in [`crate::kernels`]) plan it for
//! the adapter, and one launcher runs exactly that plan.
//!
//! On GPUs: register-blocked tiles up to 128 x 128 with 16-byte loads on interior tiles
//! (`shaders/gemm.wgsl`), a GEMV for decode-sized M, and K split across workgroups where the
//! output alone would leave the adapter idle. On software adapters, kernels shaped for a CPU
//! running WGSL: 2-D f32 matmuls read both operands through 64 KiB uniform windows
//! (`uniform`, `shaders/gemm_uniform.wgsl`), which lavapipe gathers four to five times faster
//! than it loads storage buffers, and batched ones take `gemm_sg` or `gemm_direct`.
//!
//! f16 operands (mixed precision: f16 inputs, f32 accumulation and output) run on cooperative
//! matrices (`coop`, `shaders/gemm_coop.wgsl`) where the adapter has them, and otherwise are
//! widened to f32 and take the f32 path.

mod banks;
mod coop;
pub(crate) mod uniform;

use uniform::{
    uniform_blocks, uniform_item_lens, uniform_run_count, uniform_wx, MAX_UNIFORM_BLOCKS,
};

pub use banks::{bank_accesses, coop_bank_accesses};
use coop::coop_plan;
pub use coop::{coop_size, CoopPlan, F16Plan, GEMM_F16};

use crate::elementwise::Unary;
use crate::kernels::{all_fit, binding_fits, KernelSpec, Planned};
use crate::reduce::{reduce, reduce_raw, Reduce};
use crate::{
    or_placeholder, uniform_runs, Array, Buffer, DType, Device, OpError, Params, Result,
    UniformRun, WINDOW_FLOATS,
};
use kiln_device::{Variant, VariantTable};

/// Which operands the GEMM kernel reads, and how (the shader's MODE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// C = op(A) op(B), strided.
    Matmul = 0,
    /// Convolution forward as implicit GEMM.
    ConvForward = 1,
    /// Convolution input gradient as implicit GEMM.
    ConvInputGrad = 2,
    /// Convolution weight gradient as implicit GEMM.
    ConvWeightGrad = 3,
}

/// Every field of the shader's parameter block.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Geom {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batch: usize,
    pub a: [usize; 3],
    pub b: [usize; 3],
    pub c: [usize; 3],
    pub bias_mode: u32,
    /// cin, h, w, cout, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw
    pub conv: [usize; 14],
}

/// An activation fused into a GEMM's epilogue (after the bias).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Activation {
    /// None: the product plus bias.
    #[default]
    None,
    /// max(x, 0).
    Relu,
    /// x * Phi(x), the erf form (PyTorch's default).
    Gelu,
    /// tanh x.
    Tanh,
    /// 1 / (1 + e^-x).
    Sigmoid,
}

impl Activation {
    /// The shader's ACT code.
    fn code(self) -> u32 {
        match self {
            Activation::None => 0,
            Activation::Relu => 1,
            Activation::Gelu => 2,
            Activation::Tanh => 3,
            Activation::Sigmoid => 4,
        }
    }

    /// The element-wise op with the same function (and gradient).
    pub fn unary(self) -> Option<Unary> {
        match self {
            Activation::None => None,
            Activation::Relu => Some(Unary::Relu),
            Activation::Gelu => Some(Unary::Gelu),
            Activation::Tanh => Some(Unary::Tanh),
            Activation::Sigmoid => Some(Unary::Sigmoid),
        }
    }
}

/// One GEMM to run, as the kernel choice sees it: the geometry, the operand type, and what the
/// kernels need to know of the buffers.
#[derive(Clone, Debug)]
pub struct GemmCall {
    pub(crate) mode: Mode,
    pub(crate) g: Geom,
    /// f16 A and B (cooperative matrices).
    pub(crate) f16: bool,
    /// Elements of A, B and C.
    pub(crate) lens: [usize; 3],
    /// Whether A, B and C can be bound as arrays of 16-byte quads.
    pub(crate) quads: [bool; 3],
    /// Both operands 2-D (no batch dimension): gemm_uniform's case.
    pub(crate) plain: bool,
    /// The activation to fuse, and whether to keep the value before it.
    pub(crate) act: Activation,
    pub(crate) pre: bool,
}

impl GemmCall {
    /// A matmul `[batch] x op(A) [m, k] x op(B) [k, n]` (`ta`/`tb`: stored transposed;
    /// `a_batched`/`b_batched`: the operand has the batch dimension, else it is shared), for
    /// planning: buffers are assumed pool-allocated (16-byte quads).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        batch: usize,
        m: usize,
        n: usize,
        k: usize,
        ta: bool,
        tb: bool,
        a_batched: bool,
        b_batched: bool,
        f16: bool,
    ) -> GemmCall {
        let a_strides = if ta { [1, m] } else { [k, 1] };
        let b_strides = if tb { [1, k] } else { [n, 1] };
        let g = Geom {
            m,
            n,
            k,
            batch,
            a: [
                if a_batched { m * k } else { 0 },
                a_strides[0],
                a_strides[1],
            ],
            b: [
                if b_batched { k * n } else { 0 },
                b_strides[0],
                b_strides[1],
            ],
            c: [m * n, n, 1],
            bias_mode: 1,
            conv: [0; 14],
        };
        let ba = if a_batched { batch } else { 1 };
        let bb = if b_batched { batch } else { 1 };
        GemmCall {
            mode: Mode::Matmul,
            g,
            f16,
            lens: [ba * m * k, bb * k * n, batch * m * n],
            quads: [true; 3],
            plain: !a_batched && !b_batched && batch == 1,
            act: Activation::None,
            pre: false,
        }
    }

    /// The implicit GEMM of a convolution pass (x: [N, Ci, H, W], w: [Co, Ci, KH, KW]), for
    /// planning.
    pub fn conv(
        mode: Mode,
        x: [usize; 4],
        w: [usize; 4],
        spec: &crate::geometry::Conv2dSpec,
    ) -> crate::Result<GemmCall> {
        let (oh, ow) = spec.out_hw("conv2d", x[2], x[3], w[2], w[3])?;
        Ok(Self::conv_geom(mode, x, w, oh, ow, spec))
    }

    pub(crate) fn conv_geom(
        mode: Mode,
        x: [usize; 4],
        w: [usize; 4],
        oh: usize,
        ow: usize,
        spec: &crate::geometry::Conv2dSpec,
    ) -> GemmCall {
        let conv = spec.gemm_geom(x, w, oh, ow);
        let (xl, wl, yl) = (
            x.iter().product(),
            w.iter().product(),
            x[0] * w[0] * oh * ow,
        );
        let (m, n, k, lens, bias_mode) = match mode {
            Mode::ConvForward => (w[0], x[0] * oh * ow, w[1] * w[2] * w[3], [wl, xl, yl], 2),
            Mode::ConvInputGrad => (
                w[1],
                x[0] * x[2] * x[3],
                w[0] * w[2] * w[3],
                [wl, yl, xl],
                0,
            ),
            _ => (w[0], w[1] * w[2] * w[3], x[0] * oh * ow, [yl, xl, wl], 0),
        };
        GemmCall {
            mode,
            g: Geom {
                m,
                n,
                k,
                batch: 1,
                bias_mode,
                conv,
                ..Default::default()
            },
            f16: false,
            lens,
            quads: [true; 3],
            plain: false,
            act: Activation::None,
            pre: false,
        }
    }

    /// The same call with an activation fused after the bias (`pre`: keep the value before it).
    pub fn with_activation(mut self, act: Activation, pre: bool) -> GemmCall {
        self.act = act;
        self.pre = pre && act != Activation::None;
        self
    }

    fn software(&self, dev: &Device) -> bool {
        dev.adapter_profile().is_software
    }
}

/// The f32 GEMM's variants, most preferred first (see [`crate::kernels`]). The first four suit
/// software adapters, where a load costs far more than a multiply-add and shared memory saves
/// nothing; the tiles suit GPUs; `gemm_direct` runs anything anywhere.
pub static GEMM: VariantTable<GemmCall, GemmPlan> = VariantTable {
    family: "matmul",
    variants: &[
        Variant {
            name: "gemm_uniform",
            plan: |d, c| gemm_supports(d, c, GemmKind::Uniform),
            prefers: |d, c| c.software(d) && uniform_blocks(d, c) <= MAX_UNIFORM_BLOCKS,
        },
        Variant {
            name: "gemm_sg",
            plan: |d, c| gemm_supports(d, c, GemmKind::Sg),
            prefers: |d, c| c.software(d),
        },
        Variant {
            name: "gemm_direct_ua",
            plan: |d, c| gemm_supports(d, c, GemmKind::Direct { ua: true }),
            prefers: |d, c| c.software(d),
        },
        Variant {
            name: "gemm_4x4",
            plan: |d, c| gemm_supports(d, c, GemmKind::Tiles4x4),
            // Mesa 25's llvmpipe gathers storage loads where 22.3 loaded one lane at a time,
            // and the shared-memory tiles then pay off on large outputs (conv3x3_128's
            // forward: 5.2 GFLOP/s against 1.8); small ones (LSTM gates) stay direct.
            prefers: |d, c| {
                c.software(d)
                    && c.g.m >= 64
                    && c.g.n >= 64
                    && d.adapter_profile().mesa_version >= Some((25, 0))
            },
        },
        Variant {
            name: "gemv",
            plan: |d, c| gemm_supports(d, c, GemmKind::Gemv),
            // Few rows (generation): a tile would leave most of its rows idle.
            prefers: |d, c| !c.software(d) && c.g.m <= GEMV_MAX_M,
        },
        Variant {
            name: "gemm_128x128",
            plan: |d, c| gemm_supports(d, c, GemmKind::Tile(TILE_128X128)),
            prefers: |d, c| !c.software(d) && c.g.m >= 256 && c.g.n >= 256,
        },
        Variant {
            name: "gemm_128x64",
            plan: |d, c| gemm_supports(d, c, GemmKind::Tile(TILE_128X64)),
            prefers: |d, c| !c.software(d) && c.g.m >= 128 && c.g.n >= 64,
        },
        Variant {
            name: "gemm_64x64",
            plan: |d, c| gemm_supports(d, c, GemmKind::Tile(TILE_64X64)),
            prefers: |d, c| !c.software(d) && c.g.m > 16 && c.g.n > 16,
        },
        Variant {
            name: "gemm_16x64",
            plan: |d, c| gemm_supports(d, c, GemmKind::Tile(TILE_16X64)),
            prefers: |d, c| !c.software(d) && c.g.m <= 16,
        },
        Variant {
            name: "gemm_64x16",
            plan: |d, c| gemm_supports(d, c, GemmKind::Tile(TILE_64X16)),
            prefers: |d, c| !c.software(d),
        },
        Variant {
            name: "gemm_direct",
            plan: |d, c| gemm_supports(d, c, GemmKind::Direct { ua: false }),
            prefers: |_, _| true,
        },
    ],
};

/// A GPU tile: workgroup tile TBM x TBN, TRM x TRN outputs per invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    bm: usize,
    bn: usize,
    rm: usize,
    rn: usize,
}

/// K slab depth of the GPU tiles.
const TILE_BK: usize = 8;

/// The most rows `gemv` takes (its accumulators are named, one per row).
pub const GEMV_MAX_M: usize = 8;
/// gemv_ncols: output columns per workgroup (64 lanes of four, each with 4 lanes along k).
const GEMV_NCOLS: usize = 256;

/// Which gemv kernel runs a call: `Some(true)` gemv_kdot (B's rows along k, vec4-aligned with
/// A's), `Some(false)` gemv_ncols (B's rows along n, in whole vec4s), None neither.
fn gemv_layout(c: &GemmCall) -> Option<bool> {
    let g = &c.g;
    let al = |v: usize| v.is_multiple_of(4);
    if c.mode != Mode::Matmul || g.m > GEMV_MAX_M || !c.quads[1] {
        return None;
    }
    let kdot = g.b[1] == 1
        && g.a[2] == 1
        && c.quads[0]
        && al(g.k)
        && al(g.a[0])
        && al(g.a[1])
        && al(g.b[0])
        && al(g.b[2]);
    let ncols = g.b[2] == 1 && al(g.n) && al(g.b[0]) && al(g.b[1]);
    if kdot {
        Some(true)
    } else if ncols {
        Some(false)
    } else {
        None
    }
}

/// gemv_kdot's lanes per output column: about eight vec4s of K each, 4 to 64.
fn gemv_lanes(k: usize) -> usize {
    k.div_ceil(4).div_ceil(8).next_power_of_two().clamp(4, 64)
}

const fn tile(bm: usize, bn: usize, rm: usize, rn: usize) -> Tile {
    Tile { bm, bn, rm, rn }
}
const TILE_128X128: Tile = tile(128, 128, 8, 8);
const TILE_128X64: Tile = tile(128, 64, 8, 4);
const TILE_64X64: Tile = tile(64, 64, 4, 4);
const TILE_16X64: Tile = tile(16, 64, 4, 4);
const TILE_64X16: Tile = tile(64, 16, 4, 4);

/// The GPU tiles with their variants' names (the bank audit and the tests go through them all).
const GPU_TILES: [(&str, Tile); 5] = [
    ("gemm_128x128", TILE_128X128),
    ("gemm_128x64", TILE_128X64),
    ("gemm_64x64", TILE_64X64),
    ("gemm_16x64", TILE_16X64),
    ("gemm_64x16", TILE_64X16),
];

/// Whether `gemm_sg` can read both operands as aligned vec4s, and along which dimensions:
/// `Some((a_mv, b_kv))` (A's vec4s run along M, B's along K).
fn vec4_layout(g: &Geom) -> Option<(bool, bool)> {
    let al = |v: usize| v.is_multiple_of(4);
    if !al(g.k) || !al(g.a[0]) || !al(g.b[0]) {
        return None;
    }
    let a_mv = if g.a[2] == 1 && al(g.a[1]) {
        false
    } else if g.a[1] == 1 && al(g.a[2]) && al(g.m) {
        true
    } else {
        return None;
    };
    let b_kv = if g.b[2] == 1 && al(g.b[1]) && al(g.n) {
        false
    } else if g.b[1] == 1 && al(g.b[2]) {
        true
    } else {
        return None;
    };
    Some((a_mv, b_kv))
}

/// Floats in gemm.wgsl's uniform array `au` (64 KiB).
const AU_FLOATS: usize = 16384;
const DIRECT_WX: usize = 64;
/// Rows of C per `gemm_sg` workgroup (32 measured best on lavapipe).
const SG_RM: usize = 32;

/// The override constants every gemm.wgsl kernel takes for the MODE's addressing.
fn mode_consts(c: &GemmCall) -> Vec<(&'static str, f64)> {
    let cg = &c.g.conv; // cin, h, w, cout, oh, ow, kh, kw, sh, sw, ...
    let mut consts: Vec<(&str, f64)> = vec![("MODE", c.mode as u32 as f64)];
    if c.mode != Mode::Matmul {
        consts.extend([
            ("CKW", cg[7] as f64),
            ("CKHW", (cg[6] * cg[7]) as f64),
            ("COW", cg[5] as f64),
            ("COHW", (cg[4] * cg[5]) as f64),
            ("CW", cg[2] as f64),
            ("CHW", (cg[1] * cg[2]) as f64),
            ("CSH", cg[8] as f64),
            ("CSW", cg[9] as f64),
        ]);
    }
    consts
}

/// Whether gemm_tile4 may run a call's interior tiles: a matmul whose operands and C allow
/// 16-byte loads and stores with no bounds tests, and a K of whole slabs.
fn tile4_layout(c: &GemmCall, splits: usize) -> Option<(bool, bool)> {
    let g = &c.g;
    let al = |v: usize| v.is_multiple_of(4);
    if c.mode != Mode::Matmul || !g.k.is_multiple_of(TILE_BK) || !c.quads.iter().all(|&q| q) {
        return None;
    }
    let a_kfast = if g.a[2] == 1 && al(g.a[1]) && al(g.a[0]) {
        true
    } else if g.a[1] == 1 && al(g.a[2]) && al(g.a[0]) {
        false
    } else {
        return None;
    };
    let b_nfast = if g.b[2] == 1 && al(g.b[1]) && al(g.b[0]) {
        true
    } else if g.b[1] == 1 && al(g.b[2]) && al(g.b[0]) {
        false
    } else {
        return None;
    };
    let c_ok = g.c[2] == 1 && al(g.c[1]) && al(g.c[0]) && (splits == 1 || al(c.lens[2]));
    c_ok.then_some((a_kfast, b_nfast))
}

/// The f32 GEMM's kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmKind {
    /// 2-D matmuls through uniform windows (software adapters).
    Uniform,
    /// Shared rows of A passed round a subgroup (software adapters).
    Sg,
    /// A register block per invocation straight from memory; `ua`: A from a uniform copy.
    Direct {
        /// A read through its uniform copy.
        ua: bool,
    },
    /// 4 x 4 outputs per invocation through shared-memory slabs (software adapters).
    Tiles4x4,
    /// A GPU tile: interior tiles with 16-byte loads and bounds-tested edge tiles, a fused
    /// bias and activation epilogue.
    Tile(Tile),
    /// At most 8 rows: gemv_kdot or gemv_ncols by B's layout.
    Gemv,
}

/// How a variant runs a call: its kernel, pipelines, and its workgroup block and K split.
#[derive(Clone, Debug)]
pub struct GemmPlan {
    pub(crate) kind: GemmKind,
    /// Pipelines: the main one first; a GPU tile's interior kernel second where it has one.
    specs: Vec<KernelSpec>,
    /// Output rows and columns one workgroup covers.
    block: (usize, usize),
    splits: usize,
    chunk: usize,
}

/// The variant's pipelines for `c` (None where the variant cannot express the call at all).
fn gemm_plan(dev: &Device, c: &GemmCall, kind: GemmKind) -> Option<GemmPlan> {
    let g = &c.g;
    let mut consts = mode_consts(c);
    let (specs, block, bk) = match kind {
        GemmKind::Uniform => (
            vec![KernelSpec::new(
                "gemm_uniform",
                "gemm_uniform",
                &[("WX", uniform_wx(c.g.n) as f64)],
            )],
            (g.m, g.n),
            1,
        ),
        GemmKind::Sg => {
            let (a_mv, b_kv) = vec4_layout(g)?;
            // Four columns per invocation: N = 64 needs 16 invocations, not 64 with 48 idle.
            let sg = (dev.adapter_profile().subgroup_max_size as usize).max(8);
            let wx =
                g.n.div_ceil(4)
                    .next_power_of_two()
                    .clamp(sg.min(DIRECT_WX), DIRECT_WX);
            let spec = KernelSpec::new(
                "gemm_sg",
                "gemm_sg",
                &[
                    ("RM", SG_RM as f64),
                    ("WX", wx as f64),
                    ("A_MV", a_mv as u8 as f64),
                    ("B_KV", b_kv as u8 as f64),
                ],
            );
            (vec![spec], (SG_RM, wx * 4), 16)
        }
        GemmKind::Direct { ua } => {
            // With A read through the uniform copy, loads of A cost little, so the register
            // block grows along M, where each loaded B element is reused; else 8 x 8 measured
            // best on lavapipe (speed follows products per load instruction).
            let (rm, rn) = if ua {
                (g.m.min(16), 4)
            } else {
                (g.m.min(8), g.n.min(8))
            };
            consts.extend([
                ("RM", rm as f64),
                ("RN", rn as f64),
                ("WX", DIRECT_WX as f64),
                ("WY", 1.0),
                ("A_UNIFORM", ua as u8 as f64),
            ]);
            let mut specs = vec![KernelSpec::new("gemm", "gemm_direct", &consts)];
            if ua {
                specs.push(KernelSpec::new("fill", "copy", &[]));
            }
            (specs, (rm, DIRECT_WX * rn), 16)
        }
        GemmKind::Tiles4x4 => {
            consts.extend([("TM", 16.0), ("TN", 16.0), ("BK", 16.0)]);
            (vec![KernelSpec::new("gemm", "gemm", &consts)], (64, 64), 16)
        }
        GemmKind::Gemv => {
            let kdot = gemv_layout(c)?;
            let mr = [("MR", g.m as f64)];
            if kdot {
                let lanes = gemv_lanes(g.k);
                let spec = KernelSpec::new("gemv", "gemv_kdot", &[mr[0], ("LPR", lanes as f64)]);
                // No K split: the lanes of a column already share K.
                return Some(GemmPlan {
                    kind,
                    specs: vec![spec],
                    block: (g.m, 256 / lanes),
                    splits: 1,
                    chunk: g.k,
                });
            }
            // K split in steps of 4 (one k per lane of a k group): a few columns' products with
            // a long K spread over the whole adapter.
            (
                vec![KernelSpec::new("gemv", "gemv_ncols", &mr)],
                (g.m, GEMV_NCOLS),
                4,
            )
        }
        GemmKind::Tile(t) => {
            consts.extend([
                ("TBM", t.bm as f64),
                ("TBN", t.bn as f64),
                ("TRM", t.rm as f64),
                ("TRN", t.rn as f64),
                ("TBK", TILE_BK as f64),
                ("ACT", c.act.code() as f64),
                ("PRE", c.pre as u8 as f64),
            ]);
            let edge = [consts.clone(), vec![("CHECK", 1.0)]].concat();
            (
                vec![KernelSpec::new("gemm", "gemm_tile", &edge)],
                (t.bm, t.bn),
                TILE_BK,
            )
        }
    };
    let (splits, chunk) = k_split(dev, g, block, bk, kind == GemmKind::Uniform);
    let mut plan = GemmPlan {
        kind,
        specs,
        block,
        splits,
        chunk,
    };
    if let GemmKind::Tile(t) = kind {
        // The interior tiles take a kernel without bounds tests where K is whole slabs.
        // (K = 0 stays on the checked kernel: the unchecked one loads a first slab regardless.)
        if g.k > 0 && g.k.is_multiple_of(TILE_BK) && g.m >= t.bm && g.n >= t.bn {
            let mut consts = plan.specs[0].constants.clone();
            consts.retain(|(k, _)| *k != "CHECK");
            let interior = match tile4_layout(c, splits) {
                Some((a_kfast, b_nfast)) => {
                    consts.extend([
                        ("A_KFAST", a_kfast as u8 as f64),
                        ("B_NFAST", b_nfast as u8 as f64),
                    ]);
                    KernelSpec::new("gemm", "gemm_tile4", &consts)
                }
                None => {
                    consts.push(("CHECK", 0.0));
                    KernelSpec::new("gemm", "gemm_tile", &consts)
                }
            };
            plan.specs.push(interior);
        }
    }
    Some(plan)
}

/// K split across workgroups when the output alone would leave the adapter idle (long K, few
/// output tiles: weight gradients): at least about 4 tiles per compute unit (16 workgroups on
/// software adapters), each split at least `bk`-deep slabs.
fn k_split(
    dev: &Device,
    g: &Geom,
    (bm, bn): (usize, usize),
    bk: usize,
    never: bool,
) -> (usize, usize) {
    let prof = dev.adapter_profile();
    let tiles = g.m.div_ceil(bm) * g.n.div_ceil(bn) * g.batch;
    let target = match (prof.is_software, prof.compute_units) {
        (true, _) => 16,
        (false, 0) => 128,
        (false, units) => 4 * units as usize,
    };
    let mut splits = 1;
    if !never && tiles < target && g.k >= 8 * bk {
        splits = (target / tiles).min(g.k / (4 * bk)).clamp(1, 64);
    }
    let chunk = g.k.div_ceil(splits).next_multiple_of(bk).max(bk);
    (g.k.div_ceil(chunk).max(1), chunk)
}

/// The f32 variants' hard conditions: the call fits the variant's kernels and every limit.
fn gemm_supports(
    dev: &Device,
    c: &GemmCall,
    kind: GemmKind,
) -> std::result::Result<GemmPlan, String> {
    if c.f16 {
        return Err("takes f32 operands (f16 ones go through matmul_f16)".into());
    }
    let g = &c.g;
    match kind {
        GemmKind::Uniform => {
            if c.mode != Mode::Matmul || !c.plain {
                return Err("2-D matmuls only".into());
            }
            let align = dev.limits().min_uniform_buffer_offset_alignment as usize / 4;
            let (la, lb) = uniform_item_lens(c);
            if la.max(lb) + align - 1 > WINDOW_FLOATS {
                return Err("an operand row is longer than a 64 KiB uniform window".into());
            }
            // A K split's partial sums (one [M, N] part per window of K) must fit one binding.
            let (ta, tb) = (g.a[1] == 1 && g.a[2] != 1, g.b[1] == 1 && g.b[2] != 1);
            let parts = match (ta, tb) {
                _ if la == 0 || lb == 0 => 1,
                (true, false) => uniform_run_count(la.max(lb), g.k, align),
                (true, true) => uniform_run_count(la, g.k, align),
                (false, false) => uniform_run_count(lb, g.k, align),
                (false, true) => 1,
            };
            binding_fits(dev, (parts * c.lens[2]) as u64 * 4)?;
        }
        GemmKind::Sg if c.mode != Mode::Matmul || vec4_layout(g).is_none() => {
            return Err("vec4-aligned matmuls only".into());
        }
        GemmKind::Direct { ua: true } if c.lens[0] > AU_FLOATS => {
            return Err("A is larger than the 64 KiB uniform copy".into());
        }
        GemmKind::Gemv if gemv_layout(c).is_none() => {
            return Err(format!(
                "matmuls of at most {GEMV_MAX_M} rows whose B rows run along k or n in vec4s"
            ));
        }
        _ => {}
    }
    for &len in &c.lens {
        binding_fits(dev, len as u64 * 4)?;
    }
    let plan = gemm_plan(dev, c, kind).ok_or("the kernel cannot express this call")?;
    if plan.splits > 1 {
        binding_fits(dev, (c.lens[2] * plan.splits) as u64 * 4)?;
    }
    all_fit(dev, &plan.specs)?;
    Ok(plan)
}

/// The variant the device's policy chooses for a GEMM, and its pipelines.
pub fn plan(dev: &Device, c: &GemmCall) -> Result<Planned> {
    let (family, variant, kernels) = if c.f16 {
        let v = GEMM_F16.choose(dev, c)?;
        let kernels = match v.plan {
            F16Plan::Coop(p) => [vec![p.checked], p.words.into_iter().collect()].concat(),
            F16Plan::Widen => {
                let f32_call = GemmCall {
                    f16: false,
                    ..c.clone()
                };
                GEMM.choose(dev, &f32_call)?.plan.specs
            }
        };
        (GEMM_F16.family, v.variant, kernels)
    } else {
        let v = GEMM.choose(dev, c)?;
        (GEMM.family, v.variant, v.plan.specs)
    };
    Ok(Planned {
        family,
        variant,
        kernels,
        largest_binding: c.lens.iter().max().copied().unwrap_or(0) as u64 * 4,
    })
}

/// Runs the GEMM `c` on the buffers: the variant the device's policy chooses, K split across
/// workgroups where the output alone would leave the adapter idle, then the partials summed.
///
/// `alpha`, a one-element device buffer, scales C (before the bias); only f16 operands take
/// it. `pre` receives the value before the activation where `c.pre`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    dev: &Device,
    c: &GemmCall,
    a: &Buffer,
    b: &Buffer,
    bias: Option<&Buffer>,
    alpha: Option<&Buffer>,
    out: &Buffer,
    pre: Option<&Buffer>,
) -> Result<()> {
    let g = &c.g;
    if g.m == 0 || g.n == 0 || g.batch == 0 {
        return Ok(());
    }
    let u = |v: usize| v as u32;
    let bias_buf = &or_placeholder(dev, bias)?;
    let params = |splits: usize, chunk: usize, full: (usize, usize), edge: bool| {
        Params::new()
            .us(&[
                u(g.m),
                u(g.n),
                u(g.k),
                u(splits),
                u(chunk),
                if bias.is_some() { g.bias_mode } else { 0 },
            ])
            .us(&[u(c.lens[2]), u(g.batch)])
            .us(&g.a.map(u))
            .us(&g.b.map(u))
            .us(&g.c.map(u))
            .us(&g.conv.map(u))
            .us(&[u(full.0), u(full.1), edge as u32])
    };
    if c.f16 {
        let invalid = |message: &str| OpError::Invalid {
            op: "gemm",
            message: message.into(),
        };
        let F16Plan::Coop(plan) = GEMM_F16.choose(dev, c)?.plan else {
            return Err(invalid(
                "f16 operands need cooperative matrices (matmul widens them)",
            ));
        };
        // The chosen tile, planned again where alpha scales the product.
        let plan = match alpha {
            Some(_) => coop_plan(dev, c, plan.tile, true)
                .ok_or_else(|| invalid("no cooperative tile fits the workgroup memory"))?,
            None => plan,
        };
        let (bm, bn) = (plan.block, plan.block);
        let (splits, chunk) = k_split(dev, g, (bm, bn), plan.bk as usize, false);
        let target = split_target(dev, c, splits)?;
        let dst = target.as_ref().unwrap_or(out);
        // Without ALPHA the kernel never reads its alpha binding; any buffer fills it.
        let alpha = alpha.unwrap_or(bias_buf);
        let checked = plan.checked.kernel(dev)?;
        let z = u(g.batch * splits);
        let full = (g.m / bm, g.n / bn);
        match &plan.words {
            Some(words) => {
                let k = words.kernel(dev)?;
                let p = params(splits, chunk, full, false);
                dev.launch(
                    &k,
                    &[a, b, bias_buf, dst, alpha],
                    &p,
                    [u(full.1), u(full.0), z],
                )?;
                let col_tiles = if full.1 * bn < g.n {
                    g.m.div_ceil(bm)
                } else {
                    0
                };
                let row_tiles = if full.0 * bm < g.m { full.1 } else { 0 };
                if col_tiles + row_tiles > 0 {
                    let p = params(splits, chunk, full, true);
                    let groups = [edge_groups(dev, col_tiles + row_tiles)?, 1, z];
                    dev.launch(&checked, &[a, b, bias_buf, dst, alpha], &p, groups)?;
                }
            }
            None => {
                let p = params(splits, chunk, full, false);
                let groups = [u(g.n.div_ceil(bn)), u(g.m.div_ceil(bm)), z];
                dev.launch(&checked, &[a, b, bias_buf, dst, alpha], &p, groups)?;
            }
        }
        return finish_splits(dev, c, target, splits, out);
    }
    if alpha.is_some() {
        return Err(OpError::Invalid {
            op: "gemm",
            message: "an alpha buffer is only taken with f16 operands".into(),
        });
    }
    let plan = GEMM.choose(dev, c)?.plan;
    let fused = matches!(plan.kind, GemmKind::Tile(_));
    // The activation goes into the epilogue where the kernel has one and K is not split;
    // otherwise the product is finished first and the activation applied after.
    let split_act = c.act != Activation::None && (!fused || plan.splits > 1);
    let plan = if split_act {
        let plain = GemmCall {
            act: Activation::None,
            pre: false,
            ..c.clone()
        };
        gemm_plan(dev, &plain, plan.kind).ok_or(OpError::Invalid {
            op: "gemm",
            message: "the kernel cannot express the call without its activation".into(),
        })?
    } else {
        plan
    };
    // With the activation as a pass of its own, the product goes to `pre` (or a temporary) and
    // the activation from there to `out`.
    let (product, out) = match (split_act, pre.filter(|_| c.pre)) {
        (false, _) => (out.clone(), None),
        (true, Some(p)) => (p.clone(), Some(out)),
        (true, None) => (dev.alloc(c.lens[2], DType::F32)?, Some(out)),
    };
    let (splits, chunk) = (plan.splits, plan.chunk);
    let target = split_target(dev, c, splits)?;
    let dst = target.as_ref().unwrap_or(&product);
    let (bm, bn) = plan.block;
    let grid = [
        u(g.n.div_ceil(bn)),
        u(g.m.div_ceil(bm)),
        u(g.batch * splits),
    ];
    let main = plan.specs[0].kernel(dev)?;
    match plan.kind {
        GemmKind::Uniform => {
            return Err(OpError::Invalid {
                op: "gemm",
                message: "gemm_uniform runs 2-D matmuls through matmul()".into(),
            })
        }
        GemmKind::Direct { ua } => {
            // The uniform binding always needs a full-size buffer; A is copied in when used.
            let au = dev.alloc(AU_FLOATS, DType::F32)?;
            if ua {
                let copy = plan.specs[1].kernel(dev)?;
                let p = Params::new().u(a.len() as u32).f(0.0);
                crate::launch_1d(dev, &copy, &[&au, a], &p, a.len())?;
            }
            let p = params(splits, chunk, (0, 0), false);
            dev.launch(&main, &[a, b, bias_buf, dst, &au], &p, grid)?;
        }
        GemmKind::Sg | GemmKind::Tiles4x4 | GemmKind::Gemv => {
            let p = params(splits, chunk, (0, 0), false);
            dev.launch(&main, &[a, b, bias_buf, dst], &p, grid)?;
        }
        GemmKind::Tile(_) => {
            let pre_buf = match pre.filter(|_| c.pre && !split_act) {
                Some(p) => p.clone(),
                None => or_placeholder(dev, None)?,
            };
            let bufs = [a, b, bias_buf, dst, &pre_buf];
            let full = (g.m / bm, g.n / bn);
            match plan.specs.get(1) {
                Some(interior) => {
                    let k = interior.kernel(dev)?;
                    let p = params(splits, chunk, full, false);
                    dev.launch(&k, &bufs, &p, [u(full.1), u(full.0), grid[2]])?;
                    let col_tiles = if full.1 * bn < g.n {
                        g.m.div_ceil(bm)
                    } else {
                        0
                    };
                    let row_tiles = if full.0 * bm < g.m { full.1 } else { 0 };
                    if col_tiles + row_tiles > 0 {
                        let p = params(splits, chunk, full, true);
                        let groups = [edge_groups(dev, col_tiles + row_tiles)?, 1, grid[2]];
                        dev.launch(&main, &bufs, &p, groups)?;
                    }
                }
                None => {
                    let p = params(splits, chunk, full, false);
                    dev.launch(&main, &bufs, &p, grid)?;
                }
            }
        }
    }
    finish_splits(dev, c, target, splits, &product)?;
    if let (Some(out), Some(op)) = (out, c.act.unary()) {
        crate::elementwise::unary_into(dev, &product, op, out, c.lens[2])?;
    }
    Ok(())
}

/// Where a K-split GEMM writes its partial sums ([splits, C]); None without a split.
fn split_target(dev: &Device, c: &GemmCall, splits: usize) -> Result<Option<Buffer>> {
    Ok(if splits > 1 {
        Some(dev.alloc(c.lens[2] * splits, DType::F32)?)
    } else {
        None
    })
}

/// Sums a K split's partials into C.
fn finish_splits(
    dev: &Device,
    c: &GemmCall,
    target: Option<Buffer>,
    splits: usize,
    out: &Buffer,
) -> Result<()> {
    if let Some(t) = target {
        reduce_raw(dev, &t, out, 1, splits, c.lens[2], Reduce::Sum)?;
    }
    Ok(())
}

/// Workgroups of an edge-tile dispatch: the kernels number edge tiles by `workgroup_id.x` alone,
/// so more than one dimension's limit is refused rather than split across x and y.
fn edge_groups(dev: &Device, tiles: usize) -> Result<u32> {
    let max = dev.limits().max_compute_workgroups_per_dimension as usize;
    if tiles > max {
        return Err(OpError::Invalid {
            op: "gemm",
            message: format!(
                "{tiles} edge tiles, over the adapter's {max} workgroups per dimension"
            ),
        });
    }
    Ok(tiles as u32)
}

#[cfg(test)]
mod tile_tests {
    use super::*;

    /// gemm.wgsl's tile kernels hold the next slab in two vec4 registers per operand: every
    /// GPU tile's slab must take at most two loads per invocation.
    #[test]
    fn gpu_tiles_load_a_slab_in_at_most_two_steps() {
        for (v, t) in GPU_TILES {
            let invocations = (t.bm / t.rm) * (t.bn / t.rn);
            for side in [t.bm, t.bn] {
                assert!(side * TILE_BK / 4 <= 2 * invocations, "{v}");
            }
            assert!([4, 8].contains(&t.rm) && [4, 8].contains(&t.rn), "{v}");
        }
    }
}
