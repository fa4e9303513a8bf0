//! Batched matmul with either operand transposed (a stride swap, no copy) and an optional fused
//! bias, on the shared tiled GEMM kernel (`shaders/gemm.wgsl`), which also runs the convolutions.
//!
//! The kernel comes from a variant table ([`GEMM`], [`GEMM_F16`]; names in [`crate::kernels`]):
//! on GPUs, register-blocked tiles up to 128 x 128 with 16-byte loads on interior tiles; on
//! software adapters, kernels shaped for a CPU running WGSL: 2-D f32 matmuls read both operands
//! through 64 KiB uniform windows (`shaders/gemm_uniform.wgsl`), which lavapipe gathers four to
//! five times faster than it loads storage buffers, and batched ones take `gemm_sg` or
//! `gemm_direct`.
//!
//! f16 operands (mixed precision: f16 inputs, f32 accumulation and output) run on cooperative
//! matrices (`shaders/gemm_coop.wgsl`) where the adapter has them, and otherwise are widened to
//! f32 and take the f32 path.
//!
//! [`matmul_bias_act`] fuses an activation after the bias into the tiles' epilogue.

use crate::elementwise::Unary;
use crate::half::{cast, cast_f16_scaled};
use crate::kernels::{all_fit, binding_fits, KernelSpec, Planned};
use crate::reduce::{reduce, reduce_raw, sum_to, Reduce};
use crate::{
    expect_dtype, or_placeholder, uniform_runs, Array, Buffer, DType, Device, OpError, Params,
    Result, UniformRun, WINDOW_FLOATS,
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
pub static GEMM: VariantTable<GemmCall> = VariantTable {
    family: "matmul",
    variants: &[
        Variant {
            name: "gemm_uniform",
            supports: |d, c| gemm_supports(d, c, "gemm_uniform"),
            prefers: |d, c| c.software(d) && uniform_blocks(d, c) <= MAX_UNIFORM_BLOCKS,
        },
        Variant {
            name: "gemm_sg",
            supports: |d, c| gemm_supports(d, c, "gemm_sg"),
            prefers: |d, c| c.software(d),
        },
        Variant {
            name: "gemm_direct_ua",
            supports: |d, c| gemm_supports(d, c, "gemm_direct_ua"),
            prefers: |d, c| c.software(d),
        },
        Variant {
            name: "gemm_4x4",
            supports: |d, c| gemm_supports(d, c, "gemm_4x4"),
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
            name: "gemm_128x128",
            supports: |d, c| gemm_supports(d, c, "gemm_128x128"),
            prefers: |d, c| !c.software(d) && c.g.m >= 256 && c.g.n >= 256,
        },
        Variant {
            name: "gemm_128x64",
            supports: |d, c| gemm_supports(d, c, "gemm_128x64"),
            prefers: |d, c| !c.software(d) && c.g.m >= 128 && c.g.n >= 64,
        },
        Variant {
            name: "gemm_64x64",
            supports: |d, c| gemm_supports(d, c, "gemm_64x64"),
            prefers: |d, c| !c.software(d) && c.g.m > 16 && c.g.n > 16,
        },
        Variant {
            name: "gemm_16x64",
            supports: |d, c| gemm_supports(d, c, "gemm_16x64"),
            prefers: |d, c| !c.software(d) && c.g.m <= 16,
        },
        Variant {
            name: "gemm_64x16",
            supports: |d, c| gemm_supports(d, c, "gemm_64x16"),
            prefers: |d, c| !c.software(d),
        },
        Variant {
            name: "gemm_direct",
            supports: |d, c| gemm_supports(d, c, "gemm_direct"),
            prefers: |_, _| true,
        },
    ],
};

/// The f16 GEMM's variants (f16 A and B, f32 accumulation and C): cooperative matrices of the
/// adapter's fragment size, 128 x 128 per workgroup (16 x 16 fragments: 64 x 64 per subgroup;
/// 8 x 8 fragments: 32 x 32 per subgroup, 16 subgroups) or 64 x 64 for small outputs; else the
/// operands widen to f32.
pub static GEMM_F16: VariantTable<GemmCall> = VariantTable {
    family: "matmul_f16",
    variants: &[
        Variant {
            name: "coop16",
            supports: |d, c| coop_supports(d, c, COOP16),
            prefers: |_, c| c.g.m > 64 && c.g.n > 64,
        },
        Variant {
            name: "coop16_small",
            supports: |d, c| coop_supports(d, c, COOP16_SMALL),
            prefers: |_, _| true,
        },
        Variant {
            name: "coop8",
            supports: |d, c| coop_supports(d, c, COOP8),
            prefers: |_, c| c.g.m > 64 && c.g.n > 64,
        },
        Variant {
            name: "coop8_small",
            supports: |d, c| coop_supports(d, c, COOP8_SMALL),
            prefers: |_, _| true,
        },
        Variant {
            name: "widen",
            supports: |_, _| Ok(()),
            prefers: |_, _| true,
        },
    ],
};

/// A cooperative-matrix tile: fragment size, fragments per subgroup along M and along N (4 or 2:
/// the kernel writes the F x F products out with constant indices), computing subgroups along M
/// and N.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CoopTile {
    s: u32,
    f: u32,
    sgm: u32,
    sgn: u32,
}

/// 128 x 128 per workgroup (16 x 16 fragments: 2 x 2 subgroups of 64 x 64, 16 accumulators of
/// 8 floats per lane).
const COOP16: CoopTile = CoopTile {
    s: 16,
    f: 4,
    sgm: 2,
    sgn: 2,
};
/// 64 x 64 (2 x 2 subgroups of 32 x 32).
const COOP16_SMALL: CoopTile = CoopTile {
    s: 16,
    f: 2,
    sgm: 2,
    sgn: 2,
};
/// 128 x 128 on 8 x 8 fragments: 4 x 4 subgroups of 32 x 32 (16 accumulators of 2 floats per
/// lane, where 64 of them per subgroup would spill on Apple GPUs).
const COOP8: CoopTile = CoopTile {
    s: 8,
    f: 4,
    sgm: 4,
    sgn: 4,
};
/// 64 x 64 on 8 x 8 fragments (2 x 2 subgroups of 32 x 32).
const COOP8_SMALL: CoopTile = CoopTile {
    s: 8,
    f: 4,
    sgm: 2,
    sgn: 2,
};

fn coop_tile_of(variant: &str) -> Option<CoopTile> {
    match variant {
        "coop16" => Some(COOP16),
        "coop16_small" => Some(COOP16_SMALL),
        "coop8" => Some(COOP8),
        "coop8_small" => Some(COOP8_SMALL),
        _ => None,
    }
}

/// Slab groups (8 f16) an invocation of `gemm_coop` may hold between load and store: its
/// registers are written out for up to 16 (GPUs with 32-lane subgroups hold 4 or fewer; software
/// adapters' 8-lane subgroups make small workgroups).
const COOP_MAX_GROUPS: u32 = 16;

/// How a cooperative tile runs a call: the bounds-checked kernel, the 16-byte-load kernel for
/// interior tiles where the layout allows it, the workgroup block and the slab depth.
struct CoopPlan {
    checked: KernelSpec,
    words: Option<KernelSpec>,
    block: usize,
    bk: u32,
}

/// What a `gemm_coop` pipeline is specialised for besides its tile: the adapter's (largest,
/// smallest) subgroup sizes, the slab depth, alpha, and the operands' contiguous dimensions.
struct CoopLayout {
    sg: (u32, u32),
    bk: u32,
    alpha: bool,
    a_kfast: bool,
    b_nfast: bool,
}

/// The `gemm_coop` pipeline of a tile and layout: bounds-checked, or (`words`) the interior
/// kernel with 8-byte loads.
fn coop_spec(t: CoopTile, l: &CoopLayout, words: bool) -> KernelSpec {
    let entry = format!("gemm_coop{}{}", t.s, if words { "v" } else { "" });
    let b = |v: bool| v as u8 as f64;
    KernelSpec::new(
        "gemm_coop",
        &entry,
        &[
            ("S", t.s as f64),
            ("SGM", t.sgm as f64),
            ("SGN", t.sgn as f64),
            ("F", t.f as f64),
            ("SG", l.sg.0 as f64),
            ("MIN_SG", l.sg.1 as f64),
            ("BK", l.bk as f64),
            ("ALPHA", b(l.alpha)),
            ("A_KFAST", b(l.a_kfast)),
            ("B_NFAST", b(l.b_nfast)),
        ],
    )
}

fn coop_plan(dev: &Device, c: &GemmCall, t: CoopTile, alpha: bool) -> Option<CoopPlan> {
    let prof = dev.adapter_profile();
    let max_sg = prof.subgroup_max();
    let min_sg = match prof.subgroup_min_size {
        0 => max_sg,
        s => s.min(max_sg),
    };
    let g = &c.g;
    let (a_kfast, b_nfast) = (g.a[2] == 1, g.b[2] == 1);
    let block = (t.s * t.f * t.sgm) as usize;
    debug_assert_eq!(t.sgm, t.sgn, "square workgroup tiles");
    let wg = max_sg * t.sgm * t.sgn;
    // The deepest slab whose double buffers fit the workgroup memory and whose groups fit an
    // invocation's registers.
    for bk in [32u32, 16] {
        if (block as u32 * bk / 8).div_ceil(wg) > COOP_MAX_GROUPS {
            continue;
        }
        let layout = CoopLayout {
            sg: (max_sg, min_sg),
            bk,
            alpha,
            a_kfast,
            b_nfast,
        };
        let checked = coop_spec(t, &layout, false);
        if checked.fits(dev).is_err() {
            continue;
        }
        // 16-byte loads: eight f16 along each operand's contiguous dimension from aligned
        // offsets, whole slabs.
        let al = |v: usize| v.is_multiple_of(8);
        let a_ok = al(g.a[0])
            && if a_kfast {
                al(g.a[1])
            } else {
                g.a[1] == 1 && al(g.a[2])
            };
        let b_ok = al(g.b[0])
            && if b_nfast {
                al(g.b[1])
            } else {
                g.b[1] == 1 && al(g.b[2])
            };
        let words = (a_ok
            && b_ok
            && g.k.is_multiple_of(bk as usize)
            && c.quads[0]
            && c.quads[1]
            && g.m >= block
            && g.n >= block)
            .then(|| coop_spec(t, &layout, true));
        return Some(CoopPlan {
            checked,
            words,
            block,
            bk,
        });
    }
    None
}

fn coop_supports(dev: &Device, c: &GemmCall, t: CoopTile) -> std::result::Result<(), String> {
    if !c.f16 || c.mode != Mode::Matmul {
        return Err("takes f16 matmuls only".into());
    }
    if !dev.adapter_profile().coop_f16_sizes.contains(&t.s) {
        return Err(format!(
            "the adapter has no {0} x {0} f16 cooperative matrix with f32 accumulators",
            t.s
        ));
    }
    for &len in &c.lens {
        binding_fits(dev, len as u64 * 4)?;
    }
    let plan = coop_plan(dev, c, t, false).ok_or("no slab depth fits the workgroup memory")?;
    let mut specs = vec![plan.checked];
    specs.extend(plan.words);
    all_fit(dev, &specs)
}

/// The cooperative-matrix size f16 matmuls use on this device (its policy included): `Ok(None)`
/// means they widen to f32 instead.
pub fn coop_size(dev: &Device) -> Result<Option<u32>> {
    let probe = GemmCall::matmul(1, 128, 128, 128, false, false, false, false, true);
    Ok(coop_tile_of(GEMM_F16.choose(dev, &probe)?.name).map(|t| t.s))
}

/// A GPU tile: workgroup tile TBM x TBN, TRM x TRN outputs per invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Tile {
    bm: usize,
    bn: usize,
    rm: usize,
    rn: usize,
}

/// K slab depth of the GPU tiles.
const TILE_BK: usize = 8;

fn tile_of(variant: &str) -> Option<Tile> {
    let t = |bm, bn, rm, rn| Some(Tile { bm, bn, rm, rn });
    match variant {
        "gemm_128x128" => t(128, 128, 8, 8),
        "gemm_128x64" => t(128, 64, 8, 4),
        "gemm_64x64" => t(64, 64, 4, 4),
        "gemm_16x64" => t(16, 64, 4, 4),
        "gemm_64x16" => t(64, 16, 4, 4),
        _ => None,
    }
}

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

/// How a variant runs a call: its pipelines, and its workgroup block and K split.
struct GemmPlan {
    /// Pipelines: the main one first; a GPU tile's interior kernel second where it has one.
    specs: Vec<KernelSpec>,
    /// Output rows and columns one workgroup covers.
    block: (usize, usize),
    splits: usize,
    chunk: usize,
}

/// The variant's pipelines for `c` (None where the variant cannot express the call at all).
fn gemm_plan(dev: &Device, c: &GemmCall, variant: &str) -> Option<GemmPlan> {
    let g = &c.g;
    let mut consts = mode_consts(c);
    let (specs, block, bk) = match variant {
        "gemm_uniform" => (
            vec![KernelSpec::new(
                "gemm_uniform",
                "gemm_uniform",
                &[("WX", uniform_wx(c.g.n) as f64)],
            )],
            (g.m, g.n),
            1,
        ),
        "gemm_sg" => {
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
        "gemm_direct" | "gemm_direct_ua" => {
            let ua = variant == "gemm_direct_ua";
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
        "gemm_4x4" => {
            consts.extend([("TM", 16.0), ("TN", 16.0), ("BK", 16.0)]);
            (vec![KernelSpec::new("gemm", "gemm", &consts)], (64, 64), 16)
        }
        name => {
            let t = tile_of(name)?;
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
    let (splits, chunk) = k_split(dev, g, block, bk, variant == "gemm_uniform");
    let mut plan = GemmPlan {
        specs,
        block,
        splits,
        chunk,
    };
    if let Some(t) = tile_of(variant) {
        // The interior tiles take a kernel without bounds tests where K is whole slabs.
        if g.k.is_multiple_of(TILE_BK) && g.m >= t.bm && g.n >= t.bn {
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
fn gemm_supports(dev: &Device, c: &GemmCall, variant: &str) -> std::result::Result<(), String> {
    if c.f16 {
        return Err("takes f32 operands (f16 ones go through matmul_f16)".into());
    }
    let g = &c.g;
    match variant {
        "gemm_uniform" => {
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
        "gemm_sg" if c.mode != Mode::Matmul || vec4_layout(g).is_none() => {
            return Err("vec4-aligned matmuls only".into());
        }
        "gemm_direct_ua" if c.lens[0] > AU_FLOATS => {
            return Err("A is larger than the 64 KiB uniform copy".into());
        }
        _ => {}
    }
    for &len in &c.lens {
        binding_fits(dev, len as u64 * 4)?;
    }
    let plan = gemm_plan(dev, c, variant).ok_or("not a variant of this family")?;
    if plan.splits > 1 {
        binding_fits(dev, (c.lens[2] * plan.splits) as u64 * 4)?;
    }
    all_fit(dev, &plan.specs)
}

/// The variant the device's policy chooses for a GEMM, and its pipelines.
pub fn plan(dev: &Device, c: &GemmCall) -> Result<Planned> {
    let table = if c.f16 { &GEMM_F16 } else { &GEMM };
    let v = table.choose(dev, c)?;
    let kernels = match v.name {
        name if coop_tile_of(name).is_some() => {
            let p = coop_plan(dev, c, coop_tile_of(name).expect("a tile"), false);
            p.map(|p| [vec![p.checked], p.words.into_iter().collect()].concat())
                .unwrap_or_default()
        }
        "widen" => gemm_plan(
            dev,
            &GemmCall {
                f16: false,
                ..c.clone()
            },
            GEMM.choose(
                dev,
                &GemmCall {
                    f16: false,
                    ..c.clone()
                },
            )?
            .name,
        )
        .map(|p| p.specs)
        .unwrap_or_default(),
        name => gemm_plan(dev, c, name).map(|p| p.specs).unwrap_or_default(),
    };
    Ok(Planned {
        family: table.family,
        variant: v.name,
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
        let v = GEMM_F16.choose(dev, c)?;
        let invalid = |message: &str| OpError::Invalid {
            op: "gemm",
            message: message.into(),
        };
        let tile = coop_tile_of(v.name).ok_or_else(|| {
            invalid("f16 operands need cooperative matrices (matmul widens them)")
        })?;
        let plan = coop_plan(dev, c, tile, alpha.is_some())
            .ok_or_else(|| invalid("no cooperative tile fits the workgroup memory"))?;
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
    let v = GEMM.choose(dev, c)?;
    let fused = tile_of(v.name).is_some();
    // The activation goes into the epilogue where the kernel has one and K is not split;
    // otherwise the product is finished first and the activation applied after.
    let plan = gemm_plan(dev, c, v.name).ok_or(OpError::Invalid {
        op: "gemm",
        message: format!("variant {} cannot express this call", v.name),
    })?;
    let split_act = c.act != Activation::None && (!fused || plan.splits > 1);
    let plan = if split_act {
        let plain = GemmCall {
            act: Activation::None,
            pre: false,
            ..c.clone()
        };
        gemm_plan(dev, &plain, v.name).expect("the same variant")
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
    match v.name {
        "gemm_uniform" => {
            return Err(OpError::Invalid {
                op: "gemm",
                message: "gemm_uniform runs 2-D matmuls through matmul()".into(),
            })
        }
        "gemm_direct" | "gemm_direct_ua" => {
            // The uniform binding always needs a full-size buffer; A is copied in when used.
            let au = dev.alloc(AU_FLOATS, DType::F32)?;
            if v.name == "gemm_direct_ua" {
                let copy = plan.specs[1].kernel(dev)?;
                let p = Params::new().u(a.len() as u32).f(0.0);
                crate::launch_1d(dev, &copy, &[&au, a], &p, a.len())?;
            }
            let p = params(splits, chunk, (0, 0), false);
            dev.launch(&main, &[a, b, bias_buf, dst, &au], &p, grid)?;
        }
        "gemm_sg" | "gemm_4x4" => {
            let p = params(splits, chunk, (0, 0), false);
            dev.launch(&main, &[a, b, bias_buf, dst], &p, grid)?;
        }
        _ => {
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

fn mat_dims(op: &'static str, s: &[usize], transposed: bool) -> Result<(usize, usize)> {
    if s.len() < 2 {
        return Err(OpError::Shape {
            op,
            expected: "at least 2 dimensions".into(),
            got: format!("{s:?}"),
        });
    }
    let (r, c) = (s[s.len() - 2], s[s.len() - 1]);
    Ok(if transposed { (c, r) } else { (r, c) })
}

/// `C = op(A) op(B) (+ bias[n])`, op = transpose when the flag is set.
///
/// A: [..., M, K] ([..., K, M] when `ta`), B: [..., K, N] ([..., N, K] when `tb`). The leading
/// (batch) dimensions must match, or one operand may be 2-D and is then shared by every batch.
/// A and B are both f32, or both f16 (mixed precision: C and the bias stay f32, products are
/// summed in f32).
pub fn matmul(
    dev: &Device,
    a: &Array,
    b: &Array,
    ta: bool,
    tb: bool,
    bias: Option<&Array>,
) -> Result<Array> {
    Ok(matmul_full(dev, a, b, ta, tb, bias, None, Activation::None, false)?.0)
}

/// What [`matmul_bias_act`] keeps for its backward: the output, and the value before the
/// activation where the activation's gradient needs it (GELU, tanh, sigmoid).
pub struct MatmulActSaved {
    /// act(op(A) op(B) + bias).
    pub out: Array,
    /// op(A) op(B) + bias, for activations other than ReLU (whose gradient the output gives).
    pub pre: Option<Array>,
    /// The activation.
    pub act: Activation,
}

/// `act(op(A) op(B) + bias)` in one pass where the kernel has an epilogue (the GPU tiles);
/// elsewhere the activation follows as its own pass. Shapes as [`matmul`]; f16 operands take the
/// activation as a separate pass. Returns the output and what the backward needs.
pub fn matmul_bias_act(
    dev: &Device,
    a: &Array,
    b: &Array,
    ta: bool,
    tb: bool,
    bias: Option<&Array>,
    act: Activation,
) -> Result<MatmulActSaved> {
    let keep = !matches!(act, Activation::None | Activation::Relu);
    let (out, pre) = matmul_full(dev, a, b, ta, tb, bias, None, act, keep)?;
    Ok(MatmulActSaved { out, pre, act })
}

/// Gradients of [`matmul_bias_act`] for dY: (dA, dB, dbias) as [`matmul_backward`] gives them.
#[allow(clippy::too_many_arguments)]
pub fn matmul_bias_act_backward(
    dev: &Device,
    a: &Array,
    b: &Array,
    ta: bool,
    tb: bool,
    saved: &MatmulActSaved,
    dy: &Array,
    need: [bool; 3],
) -> Result<(Option<Array>, Option<Array>, Option<Array>)> {
    let dz = match saved.act.unary() {
        None => dy.clone(),
        // ReLU's gradient is the same read off the output as off its input.
        Some(op) => {
            let x = saved.pre.as_ref().unwrap_or(&saved.out);
            crate::elementwise::unary_backward(dev, x, dy, op)?
        }
    };
    matmul_backward(dev, a, b, ta, tb, &dz, need)
}

/// [`matmul`] with C scaled by `alpha[0]` (f16 operands only; see [`matmul_backward`]).
fn matmul_scaled(
    dev: &Device,
    a: &Array,
    b: &Array,
    ta: bool,
    tb: bool,
    bias: Option<&Array>,
    alpha: Option<&Buffer>,
) -> Result<Array> {
    Ok(matmul_full(dev, a, b, ta, tb, bias, alpha, Activation::None, false)?.0)
}

/// Every matmul: shape checks, the variant choice, the launch. Returns C and, with `keep_pre`,
/// the value before the activation.
#[allow(clippy::too_many_arguments)]
fn matmul_full(
    dev: &Device,
    a: &Array,
    b: &Array,
    ta: bool,
    tb: bool,
    bias: Option<&Array>,
    alpha: Option<&Buffer>,
    act: Activation,
    keep_pre: bool,
) -> Result<(Array, Option<Array>)> {
    let f16 = a.dtype() == DType::F16;
    if f16 {
        expect_dtype("matmul", b, DType::F16)?;
    } else {
        expect_dtype("matmul", a, DType::F32)?;
        expect_dtype("matmul", b, DType::F32)?;
    }
    if let Some(bias) = bias {
        expect_dtype("matmul bias", bias, DType::F32)?;
    }
    let (m, k) = mat_dims("matmul", &a.shape, ta)?;
    let (k2, n) = mat_dims("matmul", &b.shape, tb)?;
    if k != k2 {
        return Err(OpError::Shape {
            op: "matmul",
            expected: format!(
                "B with {k} rows (inner dimension of A {:?}, ta={ta})",
                a.shape
            ),
            got: format!("B {:?} with {k2} rows (tb={tb})", b.shape),
        });
    }
    let (ab, bb) = (&a.shape[..a.shape.len() - 2], &b.shape[..b.shape.len() - 2]);
    let batch_shape = if ab == bb || bb.is_empty() {
        ab.to_vec()
    } else if ab.is_empty() {
        bb.to_vec()
    } else {
        return Err(OpError::Shape {
            op: "matmul",
            expected: format!("batch dimensions {ab:?} (or a 2-D operand)"),
            got: format!("{bb:?}"),
        });
    };
    if let Some(bias) = bias {
        if bias.shape != [n] {
            return Err(OpError::Shape {
                op: "matmul bias",
                expected: format!("[{n}]"),
                got: format!("{:?}", bias.shape),
            });
        }
    }
    let batch: usize = batch_shape.iter().product();
    let mut shape = batch_shape.clone();
    shape.extend([m, n]);
    let mut call = GemmCall::matmul(batch, m, n, k, ta, tb, !ab.is_empty(), !bb.is_empty(), f16)
        .with_activation(act, keep_pre);
    call.quads = [a.buf.quad_aligned(), b.buf.quad_aligned(), true];
    if f16 && alpha.is_none() && GEMM_F16.choose(dev, &call)?.name == "widen" {
        // No cooperative matrices: the same products in f32 (f16 widens exactly).
        let (a, b) = (cast(dev, a, DType::F32)?, cast(dev, b, DType::F32)?);
        let (c, pre) = matmul_full(dev, &a, &b, ta, tb, bias, None, act, keep_pre)?;
        return Ok((c, pre));
    }
    let act_after = f16 && act != Activation::None;
    if act_after {
        call = call.with_activation(Activation::None, false);
    }
    let c = if !f16 && GEMM.choose(dev, &call)?.name == "gemm_uniform" {
        matmul_uniform(dev, a, b, ta, tb, bias)?.reshape(&shape)?
    } else {
        let c = Array::empty(dev, &shape)?;
        let pre = if call.pre {
            Some(Array::empty(dev, &shape)?)
        } else {
            None
        };
        gemm(
            dev,
            &call,
            &a.buf,
            &b.buf,
            bias.map(|b| &b.buf),
            alpha,
            &c.buf,
            pre.as_ref().map(|p| &p.buf),
        )?;
        if !act_after && call.act == act {
            return Ok((c, pre));
        }
        c
    };
    // The activation as a pass of its own (gemm_uniform, f16): the product is the value before.
    match act.unary() {
        None => Ok((c, None)),
        Some(op) => {
            let y = crate::elementwise::unary(dev, &c, op)?;
            Ok((y, keep_pre.then_some(c)))
        }
    }
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

/// The most `gemm_uniform` dispatches one matmul may take; beyond it the other kernels run it:
/// many blocks mean small ones (large operands), a dispatch each with little work, where gemm_sg
/// or gemm_direct measured faster (512^3: 5.1 GFLOP/s against 3.2).
const MAX_UNIFORM_BLOCKS: usize = 8;

/// One dispatch of `gemm_uniform`: a block of C over a range of K, with the operand windows
/// that hold it.
struct UniformBlock {
    m: (usize, usize),
    n: (usize, usize),
    k: (usize, usize),
    a: (Buffer, usize, usize, usize),
    b: (Buffer, usize, usize, usize),
    part: usize,
}

/// Item lengths (floats per window item) of A and B in `gemm_uniform`'s split: A stored [M, K]
/// splits along M (items of K), stored [K, M] along K (items of M); B likewise.
fn uniform_item_lens(c: &GemmCall) -> (usize, usize) {
    let g = &c.g;
    let (ta, tb) = (g.a[1] == 1 && g.a[2] != 1, g.b[1] == 1 && g.b[2] != 1);
    (if ta { g.m } else { g.k }, if tb { g.k } else { g.n })
}

/// Windows of `items` items of `len` floats (as [`uniform_runs`] splits them, each window
/// starting at the aligned element at or before its first item).
fn uniform_run_count(len: usize, items: usize, align: usize) -> usize {
    let (mut first, mut runs) = (0, 0);
    while first < items {
        let skip = (first * len) % align;
        first += ((WINDOW_FLOATS - skip) / len).max(1);
        runs += 1;
    }
    runs
}

/// `gemm_uniform`'s dispatches for a call (an estimate from the shapes, as it splits them).
fn uniform_blocks(dev: &Device, c: &GemmCall) -> usize {
    let align = dev.limits().min_uniform_buffer_offset_alignment as usize / 4;
    let g = &c.g;
    let (ta, tb) = (g.a[1] == 1 && g.a[2] != 1, g.b[1] == 1 && g.b[2] != 1);
    let (la, lb) = uniform_item_lens(c);
    if la.max(lb) + align - 1 > WINDOW_FLOATS || la == 0 || lb == 0 {
        return usize::MAX;
    }
    if ta && !tb {
        uniform_run_count(la.max(lb), g.k, align)
    } else {
        uniform_run_count(la, if ta { g.k } else { g.m }, align)
            * uniform_run_count(lb, if tb { g.n } else { g.k }, align)
    }
}

/// Invocations along N of a `gemm_uniform` workgroup for N columns.
fn uniform_wx(n: usize) -> usize {
    n.div_ceil(4).next_multiple_of(8).min(64)
}

/// A 2-D f32 matmul by `gemm_uniform`, both operands read through 64 KiB uniform windows (the
/// variant's `supports` checks that an operand row fits one).
///
/// A stored [M, K] is split along M, stored [K, M] along K; B likewise along N or K. Blocks over
/// different K ranges write separate parts of C, summed at the end.
fn matmul_uniform(
    dev: &Device,
    a: &Array,
    b: &Array,
    ta: bool,
    tb: bool,
    bias: Option<&Array>,
) -> Result<Array> {
    let none = || OpError::Invalid {
        op: "matmul",
        message: "an operand row is longer than a 64 KiB uniform window".into(),
    };
    let (m, k) = if ta {
        (a.shape[1], a.shape[0])
    } else {
        (a.shape[0], a.shape[1])
    };
    let n = if tb { b.shape[0] } else { b.shape[1] };
    if m == 0 || n == 0 || k == 0 {
        let c = Array::full(dev, &[m, n], 0.0)?;
        return match bias {
            Some(bias) if m > 0 => {
                crate::elementwise::binary(dev, &c, bias, crate::elementwise::Binary::Add)
            }
            _ => Ok(c),
        };
    }
    // Window element strides (along M or N, along K) of each operand.
    let (a_ms, a_ks) = if ta { (1, m) } else { (k, 1) };
    let (b_ks, b_ns) = if tb { (1, k) } else { (n, 1) };
    let whole = |len: usize| (0, len);
    let mut blocks = Vec::new();
    let win = |r: &UniformRun, i: usize| (r.windows[i].0.clone(), r.windows[i].1);
    match (ta, tb) {
        // Both stored with K outermost: one split of K for both.
        (true, false) => {
            let runs = uniform_runs(dev, &[(&a.buf, m), (&b.buf, n)], k)?.ok_or_else(none)?;
            for (part, r) in runs.iter().enumerate() {
                let ((aw, askip), (bw, bskip)) = (win(r, 0), win(r, 1));
                blocks.push(UniformBlock {
                    m: whole(m),
                    n: whole(n),
                    k: (r.first, r.count),
                    a: (aw, askip, 0, r.first),
                    b: (bw, bskip, r.first, 0),
                    part,
                });
            }
        }
        _ => {
            // A split along M (stored [M, K]) or K; B along N (stored [N, K]) or K.
            let ra = uniform_runs(
                dev,
                &[(&a.buf, if ta { m } else { k })],
                if ta { k } else { m },
            )?
            .ok_or_else(none)?;
            let rb = uniform_runs(
                dev,
                &[(&b.buf, if tb { k } else { n })],
                if tb { n } else { k },
            )?
            .ok_or_else(none)?;
            for (i, r) in ra.iter().enumerate() {
                for (j, s) in rb.iter().enumerate() {
                    let ((aw, askip), (bw, bskip)) = (win(r, 0), win(s, 0));
                    let (mr, kr_a) = if ta {
                        (whole(m), Some((r.first, r.count)))
                    } else {
                        ((r.first, r.count), None)
                    };
                    let (nr, kr_b) = if tb {
                        ((s.first, s.count), None)
                    } else {
                        (whole(n), Some((s.first, s.count)))
                    };
                    let kr = kr_a.or(kr_b).unwrap_or(whole(k));
                    blocks.push(UniformBlock {
                        m: mr,
                        n: nr,
                        k: kr,
                        a: (aw, askip, mr.0 * (!ta) as usize, kr_a.map_or(0, |r| r.0)),
                        b: (bw, bskip, kr_b.map_or(0, |r| r.0), nr.0 * tb as usize),
                        part: if ta {
                            i
                        } else if tb {
                            0
                        } else {
                            j
                        },
                    });
                }
            }
        }
    }
    let parts = blocks.iter().map(|b| b.part + 1).max().unwrap_or(1);
    // The variant's `supports` checked that the parts' partial sums fit one binding.
    let out = Array::empty(dev, &[parts, m, n])?;
    let widest = blocks.iter().map(|b| b.n.1).max().unwrap_or(1);
    let wx = uniform_wx(widest);
    let kern = dev.kernel("gemm_uniform", "gemm_uniform", &[("WX", wx as f64)])?;
    let bias_buf = or_placeholder(dev, bias.map(|b| &b.buf))?;
    let u = |v: usize| v as u32;
    for blk in &blocks {
        let p = Params::new().us(&[
            u(m),
            u(n),
            u(blk.m.0),
            u(blk.m.1),
            u(blk.n.0),
            u(blk.n.1),
            u(blk.k.0),
            u(blk.k.1),
            u(blk.a.1),
            u(blk.a.2),
            u(blk.a.3),
            u(a_ms),
            u(a_ks),
            u(blk.b.1),
            u(blk.b.2),
            u(blk.b.3),
            u(b_ks),
            u(b_ns),
            u(blk.part),
            u(bias.is_some() as usize),
        ]);
        let groups = [
            u(blk.n.1.div_ceil(4).div_ceil(wx)),
            u(blk.m.1.div_ceil(8)),
            1,
        ];
        dev.launch(
            &kern,
            &[&blk.a.0, &blk.b.0, &bias_buf, &out.buf],
            &p,
            groups,
        )?;
    }
    let c = if parts == 1 {
        out
    } else {
        reduce(dev, &out, 0, Reduce::Sum, false)?
    };
    c.reshape(&[m, n])
}

/// Gradients of [`matmul`] for dC: (dA, dB, dbias), each in its operand's stored shape, in f32,
/// each only where `need` asks for it (an input or a frozen weight needs none, and dA and dB are
/// each a product as costly as the forward one). With f16 operands on cooperative matrices, dC
/// is rounded to f16 too, after scaling by a power of two chosen on the device from max |dC|
/// (and undone in the products), so small gradients keep f16's precision without a loss scale;
/// without cooperative matrices the gradients are computed in f32 from the widened operands.
pub fn matmul_backward(
    dev: &Device,
    a: &Array,
    b: &Array,
    ta: bool,
    tb: bool,
    dc: &Array,
    need: [bool; 3],
) -> Result<(Option<Array>, Option<Array>, Option<Array>)> {
    expect_dtype("matmul_backward", dc, DType::F32)?;
    if a.dtype() == DType::F16 && coop_size(dev)?.is_none() {
        let (a, b) = (cast(dev, a, DType::F32)?, cast(dev, b, DType::F32)?);
        return matmul_backward(dev, &a, &b, ta, tb, dc, need);
    }
    // The products' dC: f16 after scaling (undone by alpha) for f16 operands, else dC itself.
    let scaled;
    let (g, alpha) = if a.dtype() == DType::F16 {
        scaled = cast_f16_scaled(dev, dc)?;
        (&scaled.0, Some(&scaled.1))
    } else {
        (dc, None)
    };
    // A 2-D operand shared across batches collects the gradient of every batch (sum_to).
    let da = if need[0] {
        let d = if ta {
            matmul_scaled(dev, b, g, tb, true, None, alpha)?
        } else {
            matmul_scaled(dev, g, b, false, !tb, None, alpha)?
        };
        Some(sum_to(dev, &d, &a.shape)?)
    } else {
        None
    };
    let db = if need[1] {
        let d = if tb {
            matmul_scaled(dev, g, a, true, ta, None, alpha)?
        } else {
            matmul_scaled(dev, a, g, !ta, false, None, alpha)?
        };
        Some(sum_to(dev, &d, &b.shape)?)
    } else {
        None
    };
    let dbias = if need[2] {
        let n = *dc.shape.last().unwrap();
        Some(sum_to(dev, &dc.reshape(&[dc.numel() / n.max(1), n])?, &[1, n])?.reshape(&[n])?)
    } else {
        None
    };
    Ok((da, db, dbias))
}

/// CPU reference.
pub mod cpu {
    /// `C[b] = op(A[b]) op(B[b])` for `batch` matrices (a_batched/b_batched say whether the operand
    /// has a batch dimension or is shared).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        a: &[f64],
        b: &[f64],
        batch: usize,
        m: usize,
        n: usize,
        k: usize,
        ta: bool,
        tb: bool,
        a_batched: bool,
        b_batched: bool,
    ) -> Vec<f64> {
        let mut c = vec![0.0; batch * m * n];
        for z in 0..batch {
            let ao = if a_batched { z * m * k } else { 0 };
            let bo = if b_batched { z * k * n } else { 0 };
            for i in 0..m {
                for j in 0..n {
                    let mut s = 0.0;
                    for p in 0..k {
                        let av = if ta {
                            a[ao + p * m + i]
                        } else {
                            a[ao + i * k + p]
                        };
                        let bv = if tb {
                            b[bo + j * k + p]
                        } else {
                            b[bo + p * n + j]
                        };
                        s += av * bv;
                    }
                    c[z * m * n + i * n + j] = s;
                }
            }
        }
        c
    }
}

/// `op(a) op(b) (+ bias)` as an op: inputs a, b and optionally bias; each operand's product
/// is taken only where its gradient is wanted (a network's input or a frozen weight costs none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Matmul {
    /// Use a's transpose (its last two axes swapped).
    pub transpose_a: bool,
    /// Use b's transpose.
    pub transpose_b: bool,
}

impl Matmul {
    /// a @ b.
    pub fn new() -> Matmul {
        Matmul::default()
    }
    /// Use a's transpose.
    pub fn transpose_a(mut self, yes: bool) -> Matmul {
        self.transpose_a = yes;
        self
    }
    /// Use b's transpose (x @ w^T for PyTorch's Linear weights).
    pub fn transpose_b(mut self, yes: bool) -> Matmul {
        self.transpose_b = yes;
        self
    }
}

impl crate::op::Op for Matmul {
    fn name(&self) -> &str {
        "matmul"
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<crate::op::Forward> {
        let (ta, tb) = (self.transpose_a, self.transpose_b);
        Ok(matmul(dev, inputs[0], inputs[1], ta, tb, inputs.get(2).copied())?.into())
    }
    fn backward(
        &self,
        dev: &Device,
        ctx: &crate::op::Ctx,
        dy: &Array,
    ) -> Result<Vec<Option<Array>>> {
        let (a, b) = (ctx.inputs[0], ctx.inputs[1]);
        let need = [ctx.needs(0), ctx.needs(1), ctx.needs(2)];
        let (ta, tb) = (self.transpose_a, self.transpose_b);
        let (da, db, dbias) = matmul_backward(dev, a, b, ta, tb, dy, need)?;
        let mut grads = vec![da, db];
        if ctx.inputs.len() > 2 {
            grads.push(dbias);
        }
        Ok(grads)
    }
}

/// The workgroup-memory accesses of the GEMM kernels, for the bank audit ([`crate::banks`]), as
/// the kernels make them with the constants their launchers set (strides and pads read from the
/// specialised shaders): the f32 GPU tiles (`gemm_tile`, `gemm_tile4`: every tile variant, every
/// operand layout), the software adapters' `gemm` (4 x 4 per invocation), and the cooperative
/// f16 staging of every cooperative tile, operand layout and slab depth, with 32-lane subgroups.
pub fn bank_accesses() -> Result<Vec<crate::banks::Access>> {
    let mut out = Vec::new();
    for name in [
        "gemm_128x128",
        "gemm_128x64",
        "gemm_64x64",
        "gemm_16x64",
        "gemm_64x16",
    ] {
        let t = tile_of(name).expect("a GPU tile");
        for (entry, layouts) in [
            ("gemm_tile", &[(true, true)][..]),
            (
                "gemm_tile4",
                &[(true, true), (false, true), (true, false), (false, false)][..],
            ),
        ] {
            for &(a_kfast, b_nfast) in layouts {
                let mut consts: Vec<(&str, f64)> = vec![
                    ("MODE", 0.0),
                    ("TBM", t.bm as f64),
                    ("TBN", t.bn as f64),
                    ("TRM", t.rm as f64),
                    ("TRN", t.rn as f64),
                    ("TBK", TILE_BK as f64),
                ];
                if entry == "gemm_tile4" {
                    consts.extend([
                        ("A_KFAST", a_kfast as u8 as f64),
                        ("B_NFAST", b_nfast as u8 as f64),
                    ]);
                }
                let spec = KernelSpec::new("gemm", entry, &consts);
                let label = if entry == "gemm_tile" {
                    format!("{name} {entry}")
                } else {
                    format!(
                        "{name} {entry} {}{}",
                        kfast(a_kfast, "k"),
                        kfast(b_nfast, "n")
                    )
                };
                tile_accesses(&mut out, &spec, &label, entry == "gemm_tile4")?;
            }
        }
    }
    gemm4x4_accesses(&mut out)?;
    for (name, t) in [
        ("coop16", COOP16),
        ("coop16_small", COOP16_SMALL),
        ("coop8", COOP8),
        ("coop8_small", COOP8_SMALL),
    ] {
        for bk in [32, 16] {
            for (a_kfast, b_nfast) in [(true, true), (false, true), (true, false), (false, false)] {
                let l = CoopLayout {
                    sg: (32, 32),
                    bk,
                    alpha: false,
                    a_kfast,
                    b_nfast,
                };
                let label = format!(
                    "{name} BK{bk} {}{}",
                    kfast(a_kfast, "k"),
                    kfast(b_nfast, "n")
                );
                coop_accesses(&mut out, &coop_spec(t, &l, false), &label)?;
            }
        }
    }
    Ok(out)
}

/// "A:k" / "A:m"-style labels of an operand layout.
fn kfast(fast: bool, dim: &str) -> String {
    match (dim, fast) {
        ("k", true) => "A[m][k] ".into(),
        ("k", false) => "A[k][m] ".into(),
        (_, true) => "B[k][n]".into(),
        _ => "B[n][k]".into(),
    }
}

/// gemm_tile / gemm_tile4: the slab stores (A transposed into [k][m], B as [k][n], each row
/// padded by one vec4) and the register-blocked reads of `tile_compute`.
fn tile_accesses(
    out: &mut Vec<crate::banks::Access>,
    spec: &KernelSpec,
    label: &str,
    vec4: bool,
) -> Result<()> {
    use crate::banks::Access;
    let v = spec.override_values()?;
    let g = |n: &str| -> Result<u64> {
        v.get(n).map(|x| *x as u64).ok_or_else(|| OpError::Invalid {
            op: "bank model",
            message: format!("{} has no override `{n}`", spec.label()),
        })
    };
    let (tbm, tbn, tbk, tsa, tsb) = (g("TBM")?, g("TBN")?, g("TBK")?, g("TSA")?, g("TSB")?);
    let (twx, twy, trm, trn) = (g("TWX")?, g("TWY")?, g("TRM")?, g("TRN")?);
    let a_kfast = !vec4 || g("A_KFAST")? == 1;
    let b_nfast = vec4 && g("B_NFAST")? == 1;
    let tnt = twx * twy;
    let groups = (tnt / 32).max(1) as u32;
    let steps_a = (tbm * tbk / 4).div_ceil(tnt) as u32;
    let steps_b = (tbn * tbk / 4).div_ceil(tnt) as u32;
    let lanes = move |lane: u32, grp: u32| -> Option<u64> {
        let li = grp as u64 * 32 + lane as u64;
        (li < tnt).then_some(li)
    };
    // A: groups of 4 k along a row of A (scalar stores into [k][m]), or (A[k][m] operands)
    // one vec4 along m.
    if a_kfast {
        out.push(
            Access::new(
                label,
                "Ta",
                "slab store (A quads along k, transposed)",
                4,
                4 * steps_a,
                |_, _| None,
            )
            .grouped(groups, move |lane, grp, step| {
                let e = lanes(lane, grp)? + (step / 4) as u64 * tnt;
                (e < tbm * tbk / 4).then(|| {
                    let (m, k, i) = (e / (tbk / 4), (e % (tbk / 4)) * 4, (step % 4) as u64);
                    4 * ((k + i) * tsa * 4 + m)
                })
            }),
        );
    } else {
        out.push(
            Access::new(
                label,
                "Ta",
                "slab store (vec4 along m)",
                16,
                steps_a,
                |_, _| None,
            )
            .grouped(groups, move |lane, grp, step| {
                let e = lanes(lane, grp)? + step as u64 * tnt;
                (e < tbm * tbk / 4).then(|| 16 * ((e / (tbm / 4)) * tsa + e % (tbm / 4)))
            }),
        );
    }
    if b_nfast {
        out.push(
            Access::new(
                label,
                "Tb",
                "slab store (vec4 along n)",
                16,
                steps_b,
                |_, _| None,
            )
            .grouped(groups, move |lane, grp, step| {
                let e = lanes(lane, grp)? + step as u64 * tnt;
                (e < tbn * tbk / 4).then(|| 16 * ((e / (tbn / 4)) * tsb + e % (tbn / 4)))
            }),
        );
    } else {
        out.push(
            Access::new(
                label,
                "Tb",
                "slab store (B quads along k)",
                4,
                4 * steps_b,
                |_, _| None,
            )
            .grouped(groups, move |lane, grp, step| {
                let e = lanes(lane, grp)? + (step / 4) as u64 * tnt;
                (e < tbn * tbk / 4).then(|| {
                    let (n, k, i) = (e / (tbk / 4), (e % (tbk / 4)) * 4, (step % 4) as u64);
                    4 * ((k + i) * tsb * 4 + n)
                })
            }),
        );
    }
    // tile_compute: row quads TWY apart (A), column quads TWX apart (B), per k.
    let (fa, fb) = ((trm / 4) as u32, (trn / 4) as u32);
    out.push(
        Access::new(
            label,
            "Ta",
            "register-tile read",
            16,
            tbk as u32 * fa,
            |_, _| None,
        )
        .grouped(groups, move |lane, grp, step| {
            let li = lanes(lane, grp)?;
            let (kk, gq) = ((step / fa) as u64, (step % fa) as u64);
            Some(16 * (kk * tsa + li / twx + gq * twy))
        }),
    );
    out.push(
        Access::new(
            label,
            "Tb",
            "register-tile read",
            16,
            tbk as u32 * fb,
            |_, _| None,
        )
        .grouped(groups, move |lane, grp, step| {
            let li = lanes(lane, grp)?;
            let (kk, h) = ((step / fb) as u64, (step % fb) as u64);
            Some(16 * (kk * tsb + li % twx + h * twx))
        }),
    );
    Ok(())
}

/// The software adapters' `gemm` (16 x 16 invocations, 4 x 4 outputs each, BK = 16): its
/// slab stores and reads, as `gemm_4x4` launches it.
fn gemm4x4_accesses(out: &mut Vec<crate::banks::Access>) -> Result<()> {
    use crate::banks::Access;
    let spec = KernelSpec::new(
        "gemm",
        "gemm",
        &[("MODE", 0.0), ("TM", 16.0), ("TN", 16.0), ("BK", 16.0)],
    );
    let v = spec.override_values()?;
    let (tm, tn, bk) = (v["TM"] as u64, v["TN"] as u64, v["BK"] as u64);
    let (bm, bn, nt) = (4 * tm, 4 * tn, tm * tn);
    let label = "gemm_4x4 gemm";
    let steps_a = (bm * bk).div_ceil(nt) as u32;
    let steps_b = (bn * bk).div_ceil(nt) as u32;
    let groups = (nt / 32) as u32;
    out.push(
        Access::new(
            label,
            "As",
            "slab store (As[kk * TM + mm / 4][mm % 4])",
            4,
            steps_a,
            |_, _| None,
        )
        .grouped(groups, move |lane, grp, step| {
            let i = grp as u64 * 32 + lane as u64 + step as u64 * nt;
            let (mm, kk) = (i / bk, i % bk);
            Some(4 * ((kk * tm + mm / 4) * 4 + mm % 4))
        })
        .software(),
    );
    out.push(
        Access::new(label, "Bs", "slab store", 4, steps_b, |_, _| None)
            .grouped(groups, move |lane, grp, step| {
                let i = grp as u64 * 32 + lane as u64 + step as u64 * nt;
                let (nn, kk) = (i % bn, i / bn);
                Some(4 * ((kk * tn + nn / 4) * 4 + nn % 4))
            })
            .software(),
    );
    out.push(
        Access::new(
            label,
            "As",
            "read (As[kk * TM + lid.y])",
            16,
            bk as u32,
            |_, _| None,
        )
        .grouped(groups, move |lane, grp, kk| {
            let li = grp as u64 * 32 + lane as u64;
            Some(16 * (kk as u64 * tm + li / tn))
        })
        .software(),
    );
    out.push(
        Access::new(
            label,
            "Bs",
            "read (Bs[kk * TN + lid.x])",
            16,
            bk as u32,
            |_, _| None,
        )
        .grouped(groups, move |lane, grp, kk| {
            let li = grp as u64 * 32 + lane as u64;
            Some(16 * (kk as u64 * tn + li % tn))
        })
        .software(),
    );
    Ok(())
}

/// The accesses of one `gemm_coop` pipeline (as [`bank_accesses`] declares them), labelled
/// `label`: for tests that vary a constant.
pub fn coop_bank_accesses(spec: &KernelSpec, label: &str) -> Result<Vec<crate::banks::Access>> {
    let mut out = Vec::new();
    coop_accesses(&mut out, spec, label)?;
    Ok(out)
}

/// The store order's swizzle of `gemm_coop.wgsl`'s `swz` (mirrored here for the model).
fn coop_swizzle(row: u64, ch: u64, cpr: u64) -> u64 {
    if cpr >= 8 {
        (row * (cpr / 8) + ch / 8) % 4
    } else if cpr == 4 {
        row % 4
    } else {
        (row / 8 + 2 * ch) % 4
    }
}

/// gemm_coop: the slab stores (8 f16 per group, 16-bit stores in swizzled word order), the
/// fragment loads (modelled as NVIDIA's `ldmatrix`: a 16 x 16 fragment is 32 rows of 16 bytes,
/// lane l reading row l % 16, half l / 16; an 8 x 8 one 8 rows read by 8 lanes), and the output
/// scratch (accumulators stored as NVIDIA's m16n8 layout: lane l holds rows l / 4 and l / 4 + 8,
/// columns 2 (l % 4) and the next, per 8 columns; then read back consecutively).
fn coop_accesses(
    out: &mut Vec<crate::banks::Access>,
    spec: &KernelSpec,
    label: &str,
) -> Result<()> {
    use crate::banks::Access;
    let v = spec.override_values()?;
    let g = |n: &str| -> Result<u64> {
        v.get(n).map(|x| *x as u64).ok_or_else(|| OpError::Invalid {
            op: "bank model",
            message: format!("{} has no override `{n}`", spec.label()),
        })
    };
    let (bm, bn, bk, s, f) = (g("BM")?, g("BN")?, g("BK")?, g("S")?, g("F")?);
    let (wg, sgm, sgn) = (g("WG")?, g("SGM")?, g("SGN")?);
    let (a_kfast, b_nfast) = (g("A_KFAST")? == 1, g("B_NFAST")? == 1);
    for (op, slow_fast, stride, slab, groups_n, nfast) in [
        (
            "As",
            g("A_FAST")?,
            g("AS")?,
            g("A_SLAB")?,
            bm * bk / 8,
            a_kfast,
        ),
        (
            "Bs",
            g("B_FAST")?,
            g("BS")?,
            g("B_SLAB")?,
            bk * bn / 8,
            b_nfast,
        ),
    ] {
        let fast = slow_fast;
        let cpr = fast / 8;
        let per = groups_n.div_ceil(wg);
        let lane_groups = (wg / 32 * per) as u32;
        // The second buffer: the same pattern shifted by one slab.
        let what = format!(
            "slab store, rows of {fast} + pad ({})",
            if nfast { "fast" } else { "transposed operand" }
        );
        out.push(Access::new(label, op, what, 2, 8, |_, _| None).grouped(
            lane_groups,
            move |lane, grp, step| {
                let (sub, call) = (grp as u64 % (wg / 32), grp as u64 / (wg / 32));
                let gi = call * wg + sub * 32 + lane as u64;
                if gi >= groups_n {
                    return None;
                }
                let (row, ch) = (gi / cpr, gi % cpr);
                let w = (step as u64 / 2) ^ coop_swizzle(row, ch, cpr);
                Some(2 * (slab + row * stride + ch * 8 + 2 * w + step as u64 % 2))
            },
        ));
    }
    // Fragment loads: subgroup (i, j) of the SGM x SGN grid, fragment i (or j) at k-step kk.
    let frag =
        |op: &'static str, stride: u64, rows_are_k: bool, sgs: u64, out: &mut Vec<Access>| {
            let steps = (f * (bk / s)) as u32;
            out.push(
                Access::new(
                    label,
                    op,
                    "fragment load (ldmatrix model)",
                    16,
                    steps,
                    |_, _| None,
                )
                .grouped(sgs as u32, move |lane, sgi, step| {
                    let (fi, kk) = ((step as u64) % f, (step as u64 / f) * s);
                    let origin = sgi as u64 * f * s + fi * s;
                    let (row0, col0) = if rows_are_k {
                        (kk, origin)
                    } else {
                        (origin, kk)
                    };
                    let lane = lane as u64;
                    if s == 8 && lane >= 8 {
                        return None;
                    }
                    let (r, half) = (lane % s, lane / s);
                    Some(2 * ((row0 + r) * stride + col0 + half * 8))
                }),
            );
        };
    frag("As", g("AS")?, !a_kfast, sgm, out);
    frag("Bs", g("BS")?, b_nfast, sgn, out);
    out.push(
        Access::new(
            label,
            "Cs",
            "accumulator store (m16n8 model)",
            8,
            (s / 8 * s / 8) as u32,
            |_, _| None,
        )
        .grouped((sgm * sgn) as u32, move |lane, sgi, step| {
            let lane = lane as u64;
            let (r8, c8) = ((step as u64 / (s / 8)) * 8, (step as u64 % (s / 8)) * 8);
            if lane / 4 >= s {
                return None;
            }
            Some(4 * (sgi as u64 * s * s + (lane / 4 + r8) * s + c8 + 2 * (lane % 4)))
        }),
    );
    out.push(
        Access::new(
            label,
            "Cs",
            "scratch read by lanes",
            4,
            (s * s / 32).max(1) as u32,
            |_, _| None,
        )
        .grouped((sgm * sgn) as u32, move |lane, sgi, step| {
            let e = lane as u64 + 32 * step as u64;
            (e < s * s).then_some(4 * (sgi as u64 * s * s + e))
        }),
    );
    Ok(())
}
