// One tiled GEMM for matmul and convolutions:  C[z, m, n] = sum_k A[z, m, k] * B[z, k, n] (+ bias).
// MODE (override) says how A, B and C are addressed:
//   0 matmul:                A, B, C strided (batch, row, column strides; a transpose is a stride swap)
//   1 conv2d forward:        A = weight [Co, Ci*KH*KW], B = im2col(x) [Ci*KH*KW, N*OH*OW], C = y (NCHW)
//   2 conv2d input grad:     A = weight seen as [Ci, Co*KH*KW], B = dy gathered [Co*KH*KW, N*H*W], C = dx
//   3 conv2d weight grad:    A = dy seen as [Co, N*OH*OW], B = im2col(x)^T [N*OH*OW, Ci*KH*KW], C = dw
// im2col is never stored: the tile loaders compute each element's source (implicit GEMM).
// Each workgroup computes a BM x BN tile (BM = 4*TM, BN = 4*TN) with K staged through shared memory
// in BK-deep slabs; each invocation accumulates a 4 x 4 block in registers.
// K may be split across workgroups (z = batch * k_split); split s writes its partial sums at offset
// c_split * s (the caller then sums the partials).
// Three kernels share this addressing: `gemm` (4 x 4 per invocation, single-buffered), `gemm_tile`
// and `gemm_tile4` (GPU tiles up to 128 x 128, 8 x 8 per invocation, double-buffered; see below),
// and `gemm_direct` (no shared memory, for software adapters).

override MODE: u32 = 0u;
override TM: u32 = 8u;   // invocations along M
override TN: u32 = 8u;   // invocations along N
override BK: u32 = 16u;  // K slab depth
// Each invocation accumulates a 4 x 4 block of outputs in four vec4 registers (no arrays, so
// software adapters keep them in vector registers too).
const R: u32 = 4u;

// Convolution divisors as override constants (modes 1-3): integer division has no vector form on
// CPUs, so a divisor known when the pipeline is built (a multiply and shift) matters there.
override CKW: u32 = 1u;   // kw
override CKHW: u32 = 1u;  // kh * kw
override COW: u32 = 1u;   // ow
override COHW: u32 = 1u;  // oh * ow
override CW: u32 = 1u;    // w
override CHW: u32 = 1u;   // h * w
override CSH: u32 = 1u;   // stride along h
override CSW: u32 = 1u;   // stride along w

struct Params {
    m: u32, n: u32, k: u32, k_split: u32,
    k_chunk: u32, bias_mode: u32, c_split: u32, batch: u32,
    a_bs: u32, a_ms: u32, a_ks: u32,
    b_bs: u32, b_ks: u32, b_ns: u32,
    c_bs: u32, c_ms: u32, c_ns: u32,
    // Convolution geometry (modes 1-3).
    cin: u32, h: u32, w: u32, cout: u32, oh: u32, ow: u32, kh: u32, kw: u32,
    sh: u32, sw: u32, ph: u32, pw: u32, dh: u32, dw: u32,
    // gemm_tile: tile rows and columns wholly inside C (interior), and 1 when this dispatch runs
    // only the edge tiles (the last partial tile column, then the last partial tile row).
    full_m: u32, full_n: u32, edge: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;
// gemm_direct only: A again, as a uniform array, when it fits (A_UNIFORM). Every invocation of a
// gemm_direct workgroup reads the same A element at a time; software adapters load that from a
// uniform buffer about ten times faster than from a storage buffer.
@group(0) @binding(5) var<uniform> au: array<vec4<f32>, AU_VEC4>;
const AU_VEC4: u32 = 4096u; // 64 KiB, WebGPU's minimum uniform binding size limit

var<workgroup> As: array<vec4<f32>, BK * TM>; // [BK][BM / 4]
var<workgroup> Bs: array<vec4<f32>, BK * TN>; // [BK][BN / 4]

// Element (row, col) of x's im2col matrix, where row = (ci, i, j) and col = (img, oy, ox).
fn im2col(ci: u32, r: u32, img: u32, s: u32) -> f32 {
    let i = r / CKW;
    let j = r % CKW;
    let iy = i32((s / COW) * CSH + i * p.dh) - i32(p.ph);
    let ix = i32((s % COW) * CSW + j * p.dw) - i32(p.pw);
    if (iy < 0 || ix < 0 || iy >= i32(p.h) || ix >= i32(p.w)) { return 0.0; }
    return b[((img * p.cin + ci) * p.h + u32(iy)) * p.w + u32(ix)];
}

// Index of A's element (m, k) for the MODE's layout.
fn a_index(z: u32, m: u32, k: u32) -> u32 {
    switch MODE {
        case 0u: { return z * p.a_bs + m * p.a_ms + k * p.a_ks; }
        case 1u: { return m * p.k + k; }
        case 2u: { return ((k / CKHW) * p.cin + m) * CKHW + k % CKHW; }
        default: { return ((k / COHW) * p.cout + m) * COHW + k % COHW; }
    }
}

fn load_a(z: u32, m: u32, k: u32) -> f32 {
    return a[a_index(z, m, k)];
}

// A's element from the uniform copy.
fn load_au(z: u32, m: u32, k: u32) -> f32 {
    let i = a_index(z, m, k);
    return au[i / 4u][i % 4u];
}

fn load_b(z: u32, k: u32, n: u32) -> f32 {
    switch MODE {
        case 0u: { return b[z * p.b_bs + k * p.b_ks + n * p.b_ns]; }
        case 1u: { return im2col(k / CKHW, k % CKHW, n / COHW, n % COHW); }
        case 2u: {
            // dx[img, ci, iy, ix] gathers dy[img, co, oy, ox] where iy = oy*sh + i*dh - ph.
            let co = k / CKHW;
            let r = k % CKHW;
            let img = n / CHW;
            let s = n % CHW;
            let ty = i32(s / CW + p.ph) - i32((r / CKW) * p.dh);
            let tx = i32(s % CW + p.pw) - i32((r % CKW) * p.dw);
            if (ty < 0 || tx < 0) { return 0.0; }
            let uy = u32(ty);
            let ux = u32(tx);
            if (uy % CSH != 0u || ux % CSW != 0u) { return 0.0; }
            let oy = uy / CSH;
            let ox = ux / CSW;
            if (oy >= p.oh || ox >= p.ow) { return 0.0; }
            return b[((img * p.cout + co) * p.oh + oy) * p.ow + ox];
        }
        default: { return im2col(n / CKHW, n % CKHW, k / COHW, k % COHW); }
    }
}

// Index of C's element (m, n) in split `split`.
fn c_index(z: u32, split: u32, m: u32, n: u32) -> u32 {
    let base = split * p.c_split;
    switch MODE {
        case 0u: { return base + z * p.c_bs + m * p.c_ms + n * p.c_ns; }
        case 1u: { return base + ((n / COHW) * p.cout + m) * COHW + n % COHW; }
        case 2u: { return base + ((n / CHW) * p.cin + m) * CHW + n % CHW; }
        default: { return base + m * p.n + n; }
    }
}

// The bias of output (m, n), added by split 0 only.
fn bias_of(split: u32, m: u32, n: u32) -> f32 {
    if (split != 0u) { return 0.0; }
    if (p.bias_mode == 1u) { return bias[n]; }
    if (p.bias_mode == 2u) { return bias[m]; }
    return 0.0;
}

fn store_c(z: u32, split: u32, m: u32, n: u32, v: f32) {
    c[c_index(z, split, m, n)] = v + bias_of(split, m, n);
}

@compute @workgroup_size(TN, TM)
fn gemm(@builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32,
        @builtin(workgroup_id) wid: vec3<u32>) {
    let BM = TM * R;
    let BN = TN * R;
    let NT = TM * TN;
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let z = wid.z / p.k_split;
    let split = wid.z % p.k_split;
    let k_begin = split * p.k_chunk;
    let k_end = min(p.k, k_begin + p.k_chunk);

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);

    // k_begin and k_end are uniform over the workgroup, so every barrier is reached by all.
    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        for (var i = li; i < BM * BK; i += NT) {
            let mm = i / BK;
            let kk = i % BK;
            var v = 0.0;
            if (m0 + mm < p.m && k0 + kk < k_end) { v = load_a(z, m0 + mm, k0 + kk); }
            As[kk * TM + mm / R][mm % R] = v;
        }
        for (var i = li; i < BN * BK; i += NT) {
            let nn = i % BN;
            let kk = i / BN;
            var v = 0.0;
            if (n0 + nn < p.n && k0 + kk < k_end) { v = load_b(z, k0 + kk, n0 + nn); }
            Bs[kk * TN + nn / R][nn % R] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a = As[kk * TM + lid.y];
            let b = Bs[kk * TN + lid.x];
            acc0 = fma(vec4<f32>(a.x), b, acc0);
            acc1 = fma(vec4<f32>(a.y), b, acc1);
            acc2 = fma(vec4<f32>(a.z), b, acc2);
            acc3 = fma(vec4<f32>(a.w), b, acc3);
        }
        workgroupBarrier();
    }

    let m = m0 + lid.y * R;
    let n = n0 + lid.x * R;
    store_row(z, split, m, n, acc0);
    store_row(z, split, m + 1u, n, acc1);
    store_row(z, split, m + 2u, n, acc2);
    store_row(z, split, m + 3u, n, acc3);
}

fn store_row(z: u32, split: u32, m: u32, n: u32, v: vec4<f32>) {
    if (m >= p.m) { return; }
    for (var j = 0u; j < R; j++) {
        if (n + j < p.n) { store_c(z, split, m, n + j, v[j]); }
    }
}

// gemm_direct: the same product without shared memory. Each invocation accumulates an RM x RN block
// (override constants, RM * RN <= 64, RN <= 8) straight from global memory, relying on caches.
// On lavapipe each load instruction costs far more than an FMA, so a block's products per load,
// RM * RN / (RM + RN), sets the speed.
// Software adapters (lavapipe) run it several times faster than the tiled kernel, since there
// every shared-memory access costs as much as a global one and barriers cost more.
override RM: u32 = 8u;
override RN: u32 = 8u;
override WX: u32 = 64u;  // invocations along N per workgroup
override WY: u32 = 1u;   // invocations along M per workgroup
override A_UNIFORM: bool = false; // read A from `au` (then WY must be 1: one A row block per workgroup)

@compute @workgroup_size(WX, WY)
fn gemm_direct(@builtin(global_invocation_id) gid: vec3<u32>,
               @builtin(workgroup_id) wid: vec3<u32>) {
    let n0 = gid.x * RN;
    let m0 = gid.y * RM;
    // Invocations past the edge return early: no barriers follow.
    if (n0 >= p.n || m0 >= p.m) { return; }
    let z = wid.z / p.k_split;
    let split = wid.z % p.k_split;
    let k_begin = split * p.k_chunk;
    let k_end = min(p.k, k_begin + p.k_chunk);
    let rows = min(RM, p.m - m0);
    let cols = min(RN, p.n - n0);
    if (A_UNIFORM) {
        direct_uniform_a(z, split, m0, n0, rows, cols, k_begin, k_end);
        return;
    }
    var acc: array<f32, 64>;
    for (var t = 0u; t < 64u; t++) { acc[t] = 0.0; }
    var av: array<f32, 64>;
    var bv: array<f32, 8>;
    for (var k = k_begin; k < k_end; k++) {
        for (var i = 0u; i < RM; i++) { av[i] = select(0.0, load_a(z, m0 + i, k), i < rows); }
        for (var j = 0u; j < RN; j++) { bv[j] = select(0.0, load_b(z, k, n0 + j), j < cols); }
        for (var i = 0u; i < RM; i++) {
            for (var j = 0u; j < RN; j++) {
                acc[i * RN + j] = fma(av[i], bv[j], acc[i * RN + j]);
            }
        }
    }
    for (var i = 0u; i < rows; i++) {
        for (var j = 0u; j < cols; j++) { store_c(z, split, m0 + i, n0 + j, acc[i * RN + j]); }
    }
}

// gemm_direct's block when A is read from the uniform copy: 16 rows x 4 columns held in vec4
// registers (constant trip counts, so software adapters keep them out of memory). RM <= 16, RN = 4.
fn direct_uniform_a(z: u32, split: u32, m0: u32, n0: u32, rows: u32, cols: u32, k_begin: u32,
                    k_end: u32) {
    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 16u; i++) { acc[i] = vec4<f32>(0.0); }
    for (var k = k_begin; k < k_end; k++) {
        let bv = vec4<f32>(select(0.0, load_b(z, k, n0), 0u < cols),
                           select(0.0, load_b(z, k, n0 + 1u), 1u < cols),
                           select(0.0, load_b(z, k, n0 + 2u), 2u < cols),
                           select(0.0, load_b(z, k, n0 + 3u), 3u < cols));
        for (var i = 0u; i < RM; i++) {
            acc[i] = fma(vec4<f32>(load_au(z, m0 + min(i, rows - 1u), k)), bv, acc[i]);
        }
    }
    for (var i = 0u; i < rows; i++) {
        for (var j = 0u; j < cols; j++) { store_c(z, split, m0 + i, n0 + j, acc[i][j]); }
    }
}

// gemm_tile / gemm_tile4: register-blocked tiles for GPUs. A workgroup computes a TBM x TBN tile of
// C over BK-deep K slabs; each of its (TBM / TRM) x (TBN / TRN) invocations owns TRM x TRN outputs
// (8 x 8, 8 x 4 or 4 x 4) in registers, as row quads TBM / (TRM / 4) apart and column quads
// TBN / (TRN / 4) apart, so a subgroup's shared-memory reads are broadcasts (A) or consecutive
// 16-byte words (B). A is stored transposed ([k][m]) and B as [k][n], each row padded by 4 floats:
// the transposing stores of a subgroup then hit distinct banks. Shared memory is double-buffered:
// the next slab is loaded into registers before the current one is consumed and stored into the
// other buffer after, so one barrier per slab suffices.
// Registers are named, never arrays indexed by a loop counter: the accumulators are up to four
// 4 x 4 blocks (tacc_gh: row group g, column quad h; column i of the matrix is row 4g + i), the
// next slab's values up to two vec4s per operand (ra0, ra1, rb0, rb1). Whether the driver
// unrolls a loop or not, they stay in registers.
// gemm_tile4 runs interior tiles of matmuls (MODE 0) whose operands allow 16-byte loads and C
// 16-byte stores (strides, offsets and K multiples of 4, K of TBK), with no bounds tests; gemm_tile runs everything else:
// CHECK = true tests every row, column and k (edge tiles, any layout), CHECK = false only the
// convolutions' image borders (interior tiles of implicit GEMMs, scalar gathers).
// Epilogue: bias (bias_mode), then ACT (0 none, 1 relu, 2 gelu, 3 tanh, 4 sigmoid); with PRE the
// value before the activation also goes to `pre` (what the activation's gradient needs).
override TBM: u32 = 128u;
override TBN: u32 = 128u;
override TRM: u32 = 8u;   // 4 or 8
override TRN: u32 = 8u;   // 4 or 8
override TBK: u32 = 8u;   // a multiple of 4
override CHECK: bool = true;
override A_KFAST: bool = true;  // gemm_tile4: A's quads run along k (a_ks = 1), else along m
override B_NFAST: bool = true;  // gemm_tile4: B's quads run along n (b_ns = 1), else along k
override ACT: u32 = 0u;
override PRE: bool = false;
override TWX: u32 = TBN / TRN; // invocations along N
override TWY: u32 = TBM / TRM; // invocations along M
override TNT: u32 = TWX * TWY;
override TSA: u32 = TBM / 4u + 1u; // vec4s per shared A row (4 floats of padding)
override TSB: u32 = TBN / 4u + 1u;

var<workgroup> Ta: array<vec4<f32>, 2u * TBK * TSA>; // [buffer][k][m]
var<workgroup> Tb: array<vec4<f32>, 2u * TBK * TSB>; // [buffer][k][n]
// Per invocation: the accumulators and the next slab's values (see above).
var<private> tacc00: mat4x4<f32>;
var<private> tacc01: mat4x4<f32>;
var<private> tacc10: mat4x4<f32>;
var<private> tacc11: mat4x4<f32>;
var<private> ra0: vec4<f32>;
var<private> ra1: vec4<f32>;
var<private> rb0: vec4<f32>;
var<private> rb1: vec4<f32>;

@group(0) @binding(0) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> pre: array<f32>;

// Where a workgroup works: batch z, K split, tile origin, K range.
struct TileAt { z: u32, split: u32, m0: u32, n0: u32, k_begin: u32, k_end: u32 }

fn tile_at(wid: vec3<u32>) -> TileAt {
    var tm = wid.y;
    var tn = wid.x;
    if (p.edge == 1u) {
        // The partial tile column (every tile row), then the partial tile row.
        let col_tiles = select(0u, (p.m + TBM - 1u) / TBM, p.full_n * TBN < p.n);
        if (wid.x < col_tiles) { tm = wid.x; tn = p.full_n; } else { tm = p.full_m; tn = wid.x - col_tiles; }
    }
    let split = wid.z % p.k_split;
    let k_begin = split * p.k_chunk;
    return TileAt(wid.z / p.k_split, split, tm * TBM, tn * TBN, k_begin, min(p.k, k_begin + p.k_chunk));
}

fn act(v: f32) -> f32 {
    switch ACT {
        case 1u: { return max(v, 0.0); }
        case 2u: {
            // x * Phi(x) with erf from Abramowitz and Stegun 7.1.26, as elementwise.wgsl.
            let x = v * 0.70710678118654752;
            let t = 1.0 / (1.0 + 0.3275911 * abs(x));
            let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
            return 0.5 * v * (1.0 + sign(x) * (1.0 - poly * exp(-x * x)));
        }
        case 3u: { return tanh(v); }
        case 4u: {
            let e = exp(-abs(v));
            return select(e, 1.0, v >= 0.0) / (1.0 + e);
        }
        default: { return v; }
    }
}

// Slab values per invocation, in 4-float steps: A's and B's slabs hold TBM * TBK and TBN * TBK
// (one or two steps for every tile kiln plans; the launcher checks it).
fn tile_steps_a() -> u32 { return (TBM * TBK / 4u + TNT - 1u) / TNT; }
fn tile_steps_b() -> u32 { return (TBN * TBK / 4u + TNT - 1u) / TNT; }

// The scalar loaders' quad for element e of A's slab: A(m, k .. k + 4). Nothing is read for
// elements past the slab or, where CHECK, past C's rows or the K range.
fn scalar_quad_a(t: TileAt, k0: u32, e: u32) -> vec4<f32> {
    let m = t.m0 + e / (TBK / 4u);
    let k = k0 + (e % (TBK / 4u)) * 4u;
    var v = vec4<f32>(0.0);
    if (e >= TBM * TBK / 4u || (CHECK && m >= p.m)) { return v; }
    let kl = select(0xffffffffu, t.k_end, CHECK);
    if (k < kl) { v.x = load_a(t.z, m, k); }
    if (k + 1u < kl) { v.y = load_a(t.z, m, k + 1u); }
    if (k + 2u < kl) { v.z = load_a(t.z, m, k + 2u); }
    if (k + 3u < kl) { v.w = load_a(t.z, m, k + 3u); }
    return v;
}

// ... for B: B(k .. k + 4, n).
fn scalar_quad_b(t: TileAt, k0: u32, e: u32) -> vec4<f32> {
    let n = t.n0 + e / (TBK / 4u);
    let k = k0 + (e % (TBK / 4u)) * 4u;
    var v = vec4<f32>(0.0);
    if (e >= TBN * TBK / 4u || (CHECK && n >= p.n)) { return v; }
    let kl = select(0xffffffffu, t.k_end, CHECK);
    if (k < kl) { v.x = load_b(t.z, k, n); }
    if (k + 1u < kl) { v.y = load_b(t.z, k + 1u, n); }
    if (k + 2u < kl) { v.z = load_b(t.z, k + 2u, n); }
    if (k + 3u < kl) { v.w = load_b(t.z, k + 3u, n); }
    return v;
}

// Loads the slab at k0 into ra0/ra1 and rb0/rb1 through the MODE's addressing: step s holds A(m,
// k0 + kq*4 .. +4) and B(k0 + kq*4 .. +4, n) for the step's element (m|n, kq).
fn tile_load_scalar(t: TileAt, k0: u32, li: u32) {
    ra0 = scalar_quad_a(t, k0, li);
    rb0 = scalar_quad_b(t, k0, li);
    if (tile_steps_a() > 1u) { ra1 = scalar_quad_a(t, k0, li + TNT); }
    if (tile_steps_b() > 1u) { rb1 = scalar_quad_b(t, k0, li + TNT); }
}

// A quad along k into the transposed A slab: four scalar stores, rows m of buffer `buf`.
fn store_a_kquad(buf: u32, e: u32, v: vec4<f32>) {
    if (e >= TBM * TBK / 4u) { return; }
    let m = e / (TBK / 4u);
    let k = (e % (TBK / 4u)) * 4u;
    let row = (buf * TBK + k) * TSA + m / 4u;
    Ta[row][m % 4u] = v.x;
    Ta[row + TSA][m % 4u] = v.y;
    Ta[row + 2u * TSA][m % 4u] = v.z;
    Ta[row + 3u * TSA][m % 4u] = v.w;
}

// A quad along k into the B slab ([k][n]).
fn store_b_kquad(buf: u32, e: u32, v: vec4<f32>) {
    if (e >= TBN * TBK / 4u) { return; }
    let n = e / (TBK / 4u);
    let k = (e % (TBK / 4u)) * 4u;
    let row = (buf * TBK + k) * TSB + n / 4u;
    Tb[row][n % 4u] = v.x;
    Tb[row + TSB][n % 4u] = v.y;
    Tb[row + 2u * TSB][n % 4u] = v.z;
    Tb[row + 3u * TSB][n % 4u] = v.w;
}

// Stores ra and rb (as tile_load_scalar laid them out) into shared buffer `buf`.
fn tile_store_scalar(buf: u32, li: u32) {
    store_a_kquad(buf, li, ra0);
    store_b_kquad(buf, li, rb0);
    if (tile_steps_a() > 1u) { store_a_kquad(buf, li + TNT, ra1); }
    if (tile_steps_b() > 1u) { store_b_kquad(buf, li + TNT, rb1); }
}

// gemm_tile4's quad of A for element e: 16 bytes along A's contiguous dimension.
fn vec4_quad_a(t: TileAt, k0: u32, e: u32) -> vec4<f32> {
    if (e >= TBM * TBK / 4u) { return vec4<f32>(0.0); }
    if (A_KFAST) {
        let m = t.m0 + e / (TBK / 4u);
        let k = k0 + (e % (TBK / 4u)) * 4u;
        return a4[(t.z * p.a_bs + m * p.a_ms + k) / 4u];
    }
    let k = k0 + e / (TBM / 4u);
    let m = t.m0 + (e % (TBM / 4u)) * 4u;
    return a4[(t.z * p.a_bs + k * p.a_ks + m) / 4u];
}

fn vec4_quad_b(t: TileAt, k0: u32, e: u32) -> vec4<f32> {
    if (e >= TBN * TBK / 4u) { return vec4<f32>(0.0); }
    if (B_NFAST) {
        let k = k0 + e / (TBN / 4u);
        let n = t.n0 + (e % (TBN / 4u)) * 4u;
        return b4[(t.z * p.b_bs + k * p.b_ks + n) / 4u];
    }
    let n = t.n0 + e / (TBK / 4u);
    let k = k0 + (e % (TBK / 4u)) * 4u;
    return b4[(t.z * p.b_bs + n * p.b_ns + k) / 4u];
}

// gemm_tile4's slab loads: 16-byte words along A's and B's contiguous dimension.
fn tile_load_vec4(t: TileAt, k0: u32, li: u32) {
    ra0 = vec4_quad_a(t, k0, li);
    rb0 = vec4_quad_b(t, k0, li);
    if (tile_steps_a() > 1u) { ra1 = vec4_quad_a(t, k0, li + TNT); }
    if (tile_steps_b() > 1u) { rb1 = vec4_quad_b(t, k0, li + TNT); }
}

// A quad of gemm_tile4's A: along m it is one 16-byte store, along k four scalar ones.
fn store_a_vec4(buf: u32, e: u32, v: vec4<f32>) {
    if (A_KFAST) { store_a_kquad(buf, e, v); return; }
    if (e < TBM * TBK / 4u) { Ta[(buf * TBK + e / (TBM / 4u)) * TSA + e % (TBM / 4u)] = v; }
}

fn store_b_vec4(buf: u32, e: u32, v: vec4<f32>) {
    if (!B_NFAST) { store_b_kquad(buf, e, v); return; }
    if (e < TBN * TBK / 4u) { Tb[(buf * TBK + e / (TBN / 4u)) * TSB + e % (TBN / 4u)] = v; }
}

// Stores gemm_tile4's registers into shared buffer `buf`.
fn tile_store_vec4(buf: u32, li: u32) {
    store_a_vec4(buf, li, ra0);
    store_b_vec4(buf, li, rb0);
    if (tile_steps_a() > 1u) { store_a_vec4(buf, li + TNT, ra1); }
    if (tile_steps_b() > 1u) { store_b_vec4(buf, li + TNT, rb1); }
}

// acc + a b^T as four column updates: column i gains a[i] * b (row 4g + i of the block).
fn outer_fma(acc: mat4x4<f32>, a: vec4<f32>, b: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(fma(vec4<f32>(a.x), b, acc[0]), fma(vec4<f32>(a.y), b, acc[1]),
                       fma(vec4<f32>(a.z), b, acc[2]), fma(vec4<f32>(a.w), b, acc[3]));
}

// Multiplies shared buffer `buf` into the accumulators: per k, one A quad per row group and one
// B quad per column quad (TRM, TRN are 4 or 8: the branches are fixed when the pipeline is built).
fn tile_compute(buf: u32, tx: u32, ty: u32) {
    for (var kk = 0u; kk < TBK; kk++) {
        let ar = (buf * TBK + kk) * TSA + ty;
        let br = (buf * TBK + kk) * TSB + tx;
        let a0 = Ta[ar];
        let b0 = Tb[br];
        // The second row group and column quad (the same words again where there is none).
        let a1 = Ta[ar + select(0u, TWY, TRM == 8u)];
        let b1 = Tb[br + select(0u, TWX, TRN == 8u)];
        tacc00 = outer_fma(tacc00, a0, b0);
        if (TRN == 8u) { tacc01 = outer_fma(tacc01, a0, b1); }
        if (TRM == 8u) {
            tacc10 = outer_fma(tacc10, a1, b0);
            if (TRN == 8u) { tacc11 = outer_fma(tacc11, a1, b1); }
        }
    }
}

// Output quad at C's (m, n .. n + 4) from accumulator row v: bias, then the activation (the
// value before it goes to `pre` with PRE, inside C where CHECK).
fn tile_out(t: TileAt, v0: vec4<f32>, m: u32, n: u32) -> vec4<f32> {
    var v = v0;
    for (var j = 0u; j < 4u; j++) {
        v[j] += bias_of(t.split, m, n + j);
        if (PRE && (!CHECK || (m < p.m && n + j < p.n))) { pre[c_index(t.z, t.split, m, n + j)] = v[j]; }
        v[j] = act(v[j]);
    }
    return v;
}

// Row m of an invocation's row group g, row i; column n of its column quad h.
fn tile_m(t: TileAt, ty: u32, g: u32, i: u32) -> u32 { return t.m0 + g * 4u * TWY + ty * 4u + i; }
fn tile_n(t: TileAt, tx: u32, h: u32) -> u32 { return t.n0 + h * 4u * TWX + tx * 4u; }

// gemm_tile's store of one output quad (tested against C's edges where CHECK).
fn tile_store_quad(t: TileAt, m: u32, n: u32, acc: vec4<f32>) {
    let v = tile_out(t, acc, m, n);
    for (var j = 0u; j < 4u; j++) {
        if (!CHECK || (m < p.m && n + j < p.n)) { c[c_index(t.z, t.split, m, n + j)] = v[j]; }
    }
}

// gemm_tile4's: one 16-byte store (interior tiles, C's quads along n, aligned).
fn tile_store_quad4(t: TileAt, m: u32, n: u32, acc: vec4<f32>) {
    c4[c_index(t.z, t.split, m, n) / 4u] = tile_out(t, acc, m, n);
}

fn tile_zero() {
    tacc00 = mat4x4<f32>();
    tacc01 = mat4x4<f32>();
    tacc10 = mat4x4<f32>();
    tacc11 = mat4x4<f32>();
}

// The block (g, h) of outputs: its four rows, through `tile_store_quad` (gemm_tile; gemm_tile4's
// 16-byte stores below: an entry point may not use both views of C).
fn tile_store_block(t: TileAt, tx: u32, ty: u32, g: u32, h: u32, acc: mat4x4<f32>) {
    let n = tile_n(t, tx, h);
    tile_store_quad(t, tile_m(t, ty, g, 0u), n, acc[0]);
    tile_store_quad(t, tile_m(t, ty, g, 1u), n, acc[1]);
    tile_store_quad(t, tile_m(t, ty, g, 2u), n, acc[2]);
    tile_store_quad(t, tile_m(t, ty, g, 3u), n, acc[3]);
}

fn tile_store_block4(t: TileAt, tx: u32, ty: u32, g: u32, h: u32, acc: mat4x4<f32>) {
    let n = tile_n(t, tx, h);
    tile_store_quad4(t, tile_m(t, ty, g, 0u), n, acc[0]);
    tile_store_quad4(t, tile_m(t, ty, g, 1u), n, acc[1]);
    tile_store_quad4(t, tile_m(t, ty, g, 2u), n, acc[2]);
    tile_store_quad4(t, tile_m(t, ty, g, 3u), n, acc[3]);
}

@compute @workgroup_size(TWX, TWY)
fn gemm_tile(@builtin(local_invocation_id) lid: vec3<u32>,
             @builtin(local_invocation_index) li: u32,
             @builtin(workgroup_id) wid: vec3<u32>) {
    let t = tile_at(wid);
    tile_zero();
    let slabs = (t.k_end - min(t.k_begin, t.k_end) + TBK - 1u) / TBK;
    // Slabs are uniform across the workgroup, so every barrier is reached by all.
    tile_load_scalar(t, t.k_begin, li);
    tile_store_scalar(0u, li);
    workgroupBarrier();
    for (var s = 0u; s < slabs; s++) {
        let more = s + 1u < slabs;
        if (more) { tile_load_scalar(t, t.k_begin + (s + 1u) * TBK, li); }
        tile_compute(s % 2u, lid.x, lid.y);
        if (more) { tile_store_scalar((s + 1u) % 2u, li); }
        workgroupBarrier();
    }
    tile_store_block(t, lid.x, lid.y, 0u, 0u, tacc00);
    if (TRN == 8u) { tile_store_block(t, lid.x, lid.y, 0u, 1u, tacc01); }
    if (TRM == 8u) { tile_store_block(t, lid.x, lid.y, 1u, 0u, tacc10); }
    if (TRM == 8u && TRN == 8u) { tile_store_block(t, lid.x, lid.y, 1u, 1u, tacc11); }
}

@compute @workgroup_size(TWX, TWY)
fn gemm_tile4(@builtin(local_invocation_id) lid: vec3<u32>,
              @builtin(local_invocation_index) li: u32,
              @builtin(workgroup_id) wid: vec3<u32>) {
    let t = tile_at(wid);
    tile_zero();
    let slabs = (t.k_end - min(t.k_begin, t.k_end)) / TBK;
    tile_load_vec4(t, t.k_begin, li);
    tile_store_vec4(0u, li);
    workgroupBarrier();
    for (var s = 0u; s < slabs; s++) {
        let more = s + 1u < slabs;
        if (more) { tile_load_vec4(t, t.k_begin + (s + 1u) * TBK, li); }
        tile_compute(s % 2u, lid.x, lid.y);
        if (more) { tile_store_vec4((s + 1u) % 2u, li); }
        workgroupBarrier();
    }
    // C's quads run along n, 16-byte aligned (checked by the caller).
    tile_store_block4(t, lid.x, lid.y, 0u, 0u, tacc00);
    if (TRN == 8u) { tile_store_block4(t, lid.x, lid.y, 0u, 1u, tacc01); }
    if (TRM == 8u) { tile_store_block4(t, lid.x, lid.y, 1u, 0u, tacc10); }
    if (TRM == 8u && TRN == 8u) { tile_store_block4(t, lid.x, lid.y, 1u, 1u, tacc11); }
}
