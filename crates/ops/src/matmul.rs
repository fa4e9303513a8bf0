//! Batched matmul with either operand transposed (a stride swap, no copy) and an optional fused
//! bias, on the shared tiled GEMM kernel (`shaders/gemm.wgsl`), which also runs the convolutions.
//!
//! f16 operands (mixed precision: f16 inputs, f32 accumulation and output) run on cooperative
//! matrices (`shaders/gemm_coop.wgsl`) where the adapter has them, and otherwise are widened to
//! f32 and take the f32 path; [`force_coop`] pins either path for tests.
//!
//! On software adapters, 2-D f32 matmuls read both operands through 64 KiB uniform windows
//! (`shaders/gemm_uniform.wgsl`), which lavapipe gathers four to five times faster than it loads
//! storage buffers; batched ones take `gemm_sg` or `gemm_direct`.

use crate::half::{cast, cast_f16_scaled};
use crate::reduce::{reduce, reduce_raw, sum_to, Reduce};
use std::sync::atomic::Ordering::Relaxed;

use crate::Switch;
use crate::{
    expect_dtype, or_placeholder, uniform_runs, Array, Buffer, DType, Device, OpError, Params,
    Result, UniformRun,
};

/// Which operands the GEMM kernel reads, and how (the shader's MODE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Matmul = 0,
    ConvForward = 1,
    ConvInputGrad = 2,
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

/// How the GEMM kernel is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmPath {
    /// `gemm`: workgroup tiles staged through shared memory, a 4 x 4 register block per
    /// invocation (tm x tn invocations, bk-deep K slabs). For GPUs.
    Tiled {
        /// Invocations along M.
        tm: u32,
        /// Invocations along N.
        tn: u32,
        /// K slab depth.
        bk: u32,
    },
    /// `gemm_direct`: an rm x rn register block per invocation read straight from memory.
    /// For software adapters, where shared memory saves nothing.
    Direct {
        /// Outputs per invocation along M (at most 8).
        rm: u32,
        /// Outputs per invocation along N (at most 8).
        rn: u32,
    },
    /// `gemm_sg` (shaders/gemm_sg.wgsl): matmul only, vec4-aligned operands, on software
    /// adapters with subgroups. A workgroup shares 32 rows of A, which the invocations of a
    /// subgroup load once between them and pass round by subgroup shuffles.
    Subgroup {
        /// A's vec4s run along M (A transposed) rather than K.
        a_mv: bool,
        /// B's vec4s run along K (B transposed) rather than N.
        b_kv: bool,
        /// Invocations per workgroup, each owning four columns of C: no more than N needs
        /// (down to the subgroup size), so that narrow outputs leave no lanes idle.
        wx: u32,
    },
    /// `gemm_coop8` / `gemm_coop16` (shaders/gemm_coop.wgsl): f16 A and B, f32 accumulation, on
    /// the adapter's cooperative matrices of `size` x `size`.
    Coop {
        /// Fragment size: 8 or 16.
        size: u32,
    },
}

/// Computing subgroups of a `gemm_coop` workgroup along M and along N; each owns 2 x 2 fragments.
const COOP_SGM: u32 = 2;
const COOP_SGN: u32 = 2;
/// K slab depth of `gemm_coop` (a multiple of both fragment sizes).
const COOP_BK: u32 = 32;

/// Forces the f16 matmul path (tests and benchmarks): `Some(true)` cooperative matrices (an error
/// where the adapter has none), `Some(false)` widen to f32; `None` restores the automatic choice.
pub fn force_coop(path: Option<bool>) {
    FORCE_COOP.set(path);
}
static FORCE_COOP: Switch = Switch::new();

/// The cooperative-matrix size f16 matmuls use on this adapter: `Ok(None)` means they widen to
/// f32 instead; forcing cooperative matrices where there are none is an error.
pub fn coop_size(dev: &Device) -> Result<Option<u32>> {
    let size = dev.cooperative_f16_f32_sizes().first().copied();
    match FORCE_COOP.get() {
        Some(false) => Ok(None),
        Some(true) if size.is_none() => Err(OpError::Device(
            kiln_device::DeviceError::MissingFeature("cooperative-matrix (f16 x f16 + f32)"),
        )),
        _ => Ok(size),
    }
}

/// Whether `gemm_sg` can read both operands as aligned vec4s, and along which dimensions:
/// `Some((a_mv, b_kv))` as in [`GemmPath::Subgroup`].
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

/// Forces a GEMM path (tests and benchmarks); `None` restores the automatic choice.
pub fn force_path(path: Option<bool>) {
    FORCE.set(path);
}
static FORCE: Switch = Switch::new();

/// Whether f32 GEMMs take the GPU kernels (tiles) rather than the software ones: on GPUs, unless
/// [`force_path`] says otherwise.
fn tiled(dev: &Device) -> bool {
    FORCE.get().unwrap_or(!dev.adapter().is_software)
}

/// Turns uniform-buffer reads in software matmuls on (the default) or off (tests): `gemm_uniform`
/// and `gemm_direct`'s copy of a small A.
pub fn use_uniform_a(on: bool) {
    UNIFORM_A.store(on, Relaxed);
}
static UNIFORM_A: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Lets matmuls on software adapters with subgroups use `gemm_sg` (the default), or not (tests).
pub fn use_subgroups(on: bool) {
    SUBGROUPS.store(on, Relaxed);
}
static SUBGROUPS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Floats in gemm.wgsl's uniform array `au` (64 KiB).
const AU_FLOATS: usize = 16384;

impl GemmPath {
    /// The path for an M x N output: the direct kernel on software adapters, tiles on GPUs; either
    /// way narrow along a small M or N, so small layers (LeNet's six channels) do not compute
    /// mostly padding. [`force_path`] overrides the choice (`Some(true)`: tiled).
    pub fn choose(dev: &Device, m: usize, n: usize) -> GemmPath {
        if tiled(dev) {
            GemmPath::tiled(m, n)
        } else {
            // 8 x 8 measured best on lavapipe: speed follows products per load instruction.
            GemmPath::Direct {
                rm: m.min(8) as u32,
                rn: n.min(8) as u32,
            }
        }
    }

    /// The tiled kernel, narrowed along a small M or N.
    fn tiled(m: usize, n: usize) -> GemmPath {
        let tm = (m.div_ceil(4).next_power_of_two() as u32).clamp(1, 16);
        let tn = (256 / tm)
            .min(n.div_ceil(4).next_power_of_two() as u32)
            .max(1);
        GemmPath::Tiled { tm, tn, bk: 16 }
    }

    /// Output rows and columns one workgroup covers.
    fn block(&self) -> (usize, usize) {
        match *self {
            GemmPath::Tiled { tm, tn, .. } => (4 * tm as usize, 4 * tn as usize),
            GemmPath::Direct { rm, rn } => (rm as usize, DIRECT_WX * rn as usize),
            GemmPath::Subgroup { wx, .. } => (SG_RM, wx as usize * 4),
            GemmPath::Coop { size } => (
                (2 * size * COOP_SGM) as usize,
                (2 * size * COOP_SGN) as usize,
            ),
        }
    }
}

const DIRECT_WX: usize = 64;
/// Rows of C per `gemm_sg` workgroup (32 measured best on lavapipe).
const SG_RM: usize = 32;

/// Runs the GEMM kernel, splitting K across workgroups when the output alone would leave the
/// adapter idle (long K, few output tiles: weight gradients), then summing the partials.
///
/// `alpha`, a one-element device buffer, scales C (before the bias); only f16 operands take it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    dev: &Device,
    mode: Mode,
    a: &Buffer,
    b: &Buffer,
    bias: Option<&Buffer>,
    alpha: Option<&Buffer>,
    c: &Buffer,
    g: &Geom,
) -> Result<()> {
    if g.m == 0 || g.n == 0 || g.batch == 0 {
        return Ok(());
    }
    let mut path = GemmPath::choose(dev, g.m, g.n);
    if a.dtype() == DType::F16 {
        let size = coop_size(dev)?.ok_or(OpError::Invalid {
            op: "gemm",
            message: "f16 operands need cooperative matrices (matmul widens them otherwise)".into(),
        })?;
        path = GemmPath::Coop { size };
    } else if alpha.is_some() {
        return Err(OpError::Invalid {
            op: "gemm",
            message: "an alpha buffer is only taken with f16 operands".into(),
        });
    }
    // A small A is read through a uniform copy (see gemm.wgsl); loads of A then cost little, so
    // the register block grows along M, where each loaded B element is reused.
    let a_uniform =
        matches!(path, GemmPath::Direct { .. }) && a.len() <= AU_FLOATS && UNIFORM_A.load(Relaxed);
    let sg = matches!(path, GemmPath::Direct { .. })
        && mode == Mode::Matmul
        && dev.capabilities().subgroups
        && SUBGROUPS.load(Relaxed);
    if let Some((a_mv, b_kv)) = vec4_layout(g).filter(|_| sg) {
        // Four columns per invocation: N = 64 needs 16 invocations, not 64 with 48 idle.
        let sg = (dev.adapter().subgroup_max_size as usize).max(8);
        let wx =
            g.n.div_ceil(4)
                .next_power_of_two()
                .clamp(sg.min(DIRECT_WX), DIRECT_WX) as u32;
        path = GemmPath::Subgroup { a_mv, b_kv, wx };
    } else if a_uniform {
        // The kernel's block: up to 16 rows by 4 columns.
        path = GemmPath::Direct {
            rm: g.m.min(16) as u32,
            rn: 4,
        };
    } else if matches!(path, GemmPath::Direct { .. })
        && FORCE.get().is_none()
        && g.m >= 64
        && g.n >= 64
        && dev.adapter().mesa_version >= Some((25, 0))
    {
        // Mesa 25's llvmpipe gathers storage loads where 22.3 loaded one lane at a time, and the
        // shared-memory tiles then pay off on large outputs (conv3x3_128's forward: 5.2 GFLOP/s
        // against 1.8); small ones (LSTM gates) stay direct.
        path = GemmPath::tiled(g.m, g.n);
    }
    let (bm, bn) = path.block();
    let tiles = g.m.div_ceil(bm) * g.n.div_ceil(bn) * g.batch;
    let target = if dev.adapter().is_software { 16 } else { 128 };
    let bk = 16;
    let mut splits = 1;
    if tiles < target && g.k >= 8 * bk {
        splits = (target / tiles).min(g.k / (4 * bk)).clamp(1, 64);
    }
    let chunk = g.k.div_ceil(splits).next_multiple_of(bk).max(bk);
    let splits = g.k.div_ceil(chunk).max(1);
    let c_size = c.len();
    let partial;
    let target_buf = if splits > 1 {
        partial = dev.alloc(c_size * splits, DType::F32)?;
        &partial
    } else {
        c
    };
    let cg = &g.conv; // cin, h, w, cout, oh, ow, kh, kw, sh, sw, ...
    let mut consts: Vec<(&str, f64)> = vec![("MODE", mode as u32 as f64)];
    if mode != Mode::Matmul {
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
    let k = match path {
        GemmPath::Tiled { tm, tn, bk } => {
            consts.extend([("TM", tm as f64), ("TN", tn as f64), ("BK", bk as f64)]);
            dev.kernel("gemm", "gemm", &consts)?
        }
        GemmPath::Direct { rm, rn } => {
            consts.extend([
                ("RM", rm as f64),
                ("RN", rn as f64),
                ("WX", DIRECT_WX as f64),
                ("WY", 1.0),
                ("A_UNIFORM", if a_uniform { 1.0 } else { 0.0 }),
            ]);
            dev.kernel("gemm", "gemm_direct", &consts)?
        }
        GemmPath::Coop { size } => {
            let info = dev.adapter();
            // Unknown subgroup sizes (0): assume 32, the common GPU size.
            let max_sg = match info.subgroup_max_size {
                0 => 32,
                s => s,
            };
            let min_sg = match info.subgroup_min_size {
                0 => max_sg,
                s => s.min(max_sg),
            };
            consts = vec![
                ("S", size as f64),
                ("SGM", COOP_SGM as f64),
                ("SGN", COOP_SGN as f64),
                ("SG", max_sg as f64),
                ("MIN_SG", min_sg as f64),
                ("BK", COOP_BK as f64),
                ("ALPHA", alpha.is_some() as u8 as f64),
                ("A_KFAST", (g.a[2] == 1) as u8 as f64),
                ("B_NFAST", (g.b[2] == 1) as u8 as f64),
            ];
            dev.kernel("gemm_coop", &format!("gemm_coop{size}"), &consts)?
        }
        GemmPath::Subgroup { a_mv, b_kv, wx } => dev.kernel(
            "gemm_sg",
            "gemm_sg",
            &[
                ("RM", SG_RM as f64),
                ("WX", wx as f64),
                ("A_MV", a_mv as u8 as f64),
                ("B_KV", b_kv as u8 as f64),
            ],
        )?,
    };
    let bias_buf = &or_placeholder(dev, bias)?;
    let u = |v: usize| v as u32;
    let p = Params::new()
        .us(&[
            u(g.m),
            u(g.n),
            u(g.k),
            u(splits),
            u(chunk),
            if bias.is_some() { g.bias_mode } else { 0 },
        ])
        .us(&[u(c_size), u(g.batch)])
        .us(&g.a.map(u))
        .us(&g.b.map(u))
        .us(&g.c.map(u))
        .us(&g.conv.map(u));
    let groups = [
        u(g.n.div_ceil(bn)),
        u(g.m.div_ceil(bm)),
        u(g.batch * splits),
    ];
    if matches!(path, GemmPath::Direct { .. }) {
        // The uniform binding always needs a full-size buffer; A is copied in when it is used.
        let au = dev.alloc(AU_FLOATS, DType::F32)?;
        if a_uniform {
            let copy = dev.kernel("fill", "copy", &[])?;
            crate::launch_1d(
                dev,
                &copy,
                &[&au, a],
                &Params::new().u(a.len() as u32).f(0.0),
                a.len(),
            )?;
        }
        dev.launch(&k, &[a, b, bias_buf, target_buf, &au], &p, groups)?;
    } else if matches!(path, GemmPath::Coop { .. }) {
        // Without ALPHA the kernel never reads its alpha binding; any buffer fills it.
        let alpha = alpha.unwrap_or(bias_buf);
        dev.launch(&k, &[a, b, bias_buf, target_buf, alpha], &p, groups)?;
    } else {
        dev.launch(&k, &[a, b, bias_buf, target_buf], &p, groups)?;
    }
    if splits > 1 {
        reduce_raw(dev, target_buf, c, 1, splits, c_size, Reduce::Sum)?;
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
    matmul_scaled(dev, a, b, ta, tb, bias, None)
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
    if a.dtype() == DType::F16 {
        expect_dtype("matmul", b, DType::F16)?;
        if coop_size(dev)?.is_none() && alpha.is_none() {
            // No cooperative matrices: the same products in f32 (f16 widens exactly).
            let (a, b) = (cast(dev, a, DType::F32)?, cast(dev, b, DType::F32)?);
            return matmul(dev, &a, &b, ta, tb, bias);
        }
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
    if batch_shape.is_empty() && a.dtype() == DType::F32 {
        if let Some(c) = matmul_uniform(dev, a, b, ta, tb, bias)? {
            return Ok(c);
        }
    }
    let c = Array::empty(dev, &shape)?;
    // Row-major strides of the stored matrices; a transpose swaps them.
    let a_strides = if ta { [1, m] } else { [k, 1] };
    let b_strides = if tb { [1, k] } else { [n, 1] };
    let geom = Geom {
        m,
        n,
        k,
        batch,
        a: [
            if ab.is_empty() { 0 } else { m * k },
            a_strides[0],
            a_strides[1],
        ],
        b: [
            if bb.is_empty() { 0 } else { k * n },
            b_strides[0],
            b_strides[1],
        ],
        c: [m * n, n, 1],
        bias_mode: 1,
        conv: [0; 14],
    };
    gemm(
        dev,
        Mode::Matmul,
        &a.buf,
        &b.buf,
        bias.map(|b| &b.buf),
        alpha,
        &c.buf,
        &geom,
    )?;
    Ok(c)
}

/// The most `gemm_uniform` dispatches one matmul may take; beyond it the other kernels run it.
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

/// A 2-D f32 matmul on a software adapter by `gemm_uniform`, both operands read through 64 KiB
/// uniform windows; None where it does not apply (a GPU, [`use_uniform_a`] off, a forced path, or
/// an operand row too long for a window).
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
) -> Result<Option<Array>> {
    if tiled(dev) || !UNIFORM_A.load(Relaxed) {
        return Ok(None);
    }
    let (m, k) = if ta {
        (a.shape[1], a.shape[0])
    } else {
        (a.shape[0], a.shape[1])
    };
    let n = if tb { b.shape[0] } else { b.shape[1] };
    if m == 0 || n == 0 || k == 0 {
        return Ok(None);
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
            let Some(runs) = uniform_runs(dev, &[(&a.buf, m), (&b.buf, n)], k)? else {
                return Ok(None);
            };
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
            let (Some(ra), Some(rb)) = (
                uniform_runs(
                    dev,
                    &[(&a.buf, if ta { m } else { k })],
                    if ta { k } else { m },
                )?,
                uniform_runs(
                    dev,
                    &[(&b.buf, if tb { k } else { n })],
                    if tb { n } else { k },
                )?,
            ) else {
                return Ok(None);
            };
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
    // Many blocks mean small ones (large operands): a dispatch each, little work per dispatch.
    // There gemm_sg or gemm_direct measured faster (512^3: 5.1 GFLOP/s against 3.2 here).
    if blocks.len() > MAX_UNIFORM_BLOCKS {
        return Ok(None);
    }
    let parts = blocks.iter().map(|b| b.part + 1).max().unwrap_or(1);
    let out = Array::empty(dev, &[parts, m, n])?;
    let widest = blocks.iter().map(|b| b.n.1).max().unwrap_or(1);
    let wx = widest.div_ceil(4).next_multiple_of(8).min(64);
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
    Ok(Some(c.reshape(&[m, n])?))
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
