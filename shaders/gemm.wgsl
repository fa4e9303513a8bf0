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

fn store_c(z: u32, split: u32, m: u32, n: u32, v: f32) {
    var out = v;
    if (split == 0u) {
        if (p.bias_mode == 1u) { out += bias[n]; }
        if (p.bias_mode == 2u) { out += bias[m]; }
    }
    let base = split * p.c_split;
    switch MODE {
        case 0u: { c[base + z * p.c_bs + m * p.c_ms + n * p.c_ns] = out; }
        case 1u: { c[base + ((n / COHW) * p.cout + m) * COHW + n % COHW] = out; }
        case 2u: { c[base + ((n / CHW) * p.cin + m) * CHW + n % CHW] = out; }
        default: { c[base + m * p.n + n] = out; }
    }
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
