// One tiled GEMM for matmul and convolutions:  C[z, m, n] = sum_k A[z, m, k] * B[z, k, n] (+ bias).
// MODE (override) says how A, B and C are addressed:
//   0 matmul:                A, B, C strided (batch, row, column strides; a transpose is a stride swap)
//   1 conv2d forward:        A = weight [Co, Ci*KH*KW], B = im2col(x) [Ci*KH*KW, N*OH*OW], C = y (NCHW)
//   2 conv2d input grad:     A = weight seen as [Ci, Co*KH*KW], B = dy gathered [Co*KH*KW, N*H*W], C = dx
//   3 conv2d weight grad:    A = dy seen as [Co, N*OH*OW], B = im2col(x)^T [N*OH*OW, Ci*KH*KW], C = dw
// im2col is never stored: the tile loaders compute each element's source (implicit GEMM).
// Each workgroup computes a BM x BN tile (BM = TM*RM, BN = TN*RN) with K staged through shared memory
// in BK-deep slabs; each invocation accumulates an RM x RN block in registers.
// K may be split across workgroups (z = batch * k_split); split s writes its partial sums at offset
// c_split * s (the caller then sums the partials).

override MODE: u32 = 0u;
override TM: u32 = 8u;   // invocations along M
override TN: u32 = 8u;   // invocations along N
override RM: u32 = 4u;   // outputs per invocation along M, at most 8
override RN: u32 = 4u;   // outputs per invocation along N, at most 8
override BK: u32 = 16u;  // K slab depth

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

var<workgroup> As: array<f32, BK * TM * RM>; // [BK][BM]
var<workgroup> Bs: array<f32, BK * TN * RN>; // [BK][BN]

// Element (row, col) of x's im2col matrix, where row = (ci, i, j) and col = (img, oy, ox).
fn im2col(ci: u32, r: u32, img: u32, s: u32) -> f32 {
    let i = r / p.kw;
    let j = r % p.kw;
    let iy = i32((s / p.ow) * p.sh + i * p.dh) - i32(p.ph);
    let ix = i32((s % p.ow) * p.sw + j * p.dw) - i32(p.pw);
    if (iy < 0 || ix < 0 || iy >= i32(p.h) || ix >= i32(p.w)) { return 0.0; }
    return b[((img * p.cin + ci) * p.h + u32(iy)) * p.w + u32(ix)];
}

fn load_a(z: u32, m: u32, k: u32) -> f32 {
    switch MODE {
        case 0u: { return a[z * p.a_bs + m * p.a_ms + k * p.a_ks]; }
        case 1u: { return a[m * p.k + k]; }
        case 2u: {
            let khw = p.kh * p.kw;
            return a[((k / khw) * p.cin + m) * khw + k % khw];
        }
        default: {
            let ohw = p.oh * p.ow;
            return a[((k / ohw) * p.cout + m) * ohw + k % ohw];
        }
    }
}

fn load_b(z: u32, k: u32, n: u32) -> f32 {
    switch MODE {
        case 0u: { return b[z * p.b_bs + k * p.b_ks + n * p.b_ns]; }
        case 1u: {
            let khw = p.kh * p.kw;
            let ohw = p.oh * p.ow;
            return im2col(k / khw, k % khw, n / ohw, n % ohw);
        }
        case 2u: {
            // dx[img, ci, iy, ix] gathers dy[img, co, oy, ox] where iy = oy*sh + i*dh - ph.
            let khw = p.kh * p.kw;
            let hw = p.h * p.w;
            let co = k / khw;
            let r = k % khw;
            let img = n / hw;
            let s = n % hw;
            let ty = i32(s / p.w + p.ph) - i32((r / p.kw) * p.dh);
            let tx = i32(s % p.w + p.pw) - i32((r % p.kw) * p.dw);
            if (ty < 0 || tx < 0) { return 0.0; }
            let uy = u32(ty);
            let ux = u32(tx);
            if (uy % p.sh != 0u || ux % p.sw != 0u) { return 0.0; }
            let oy = uy / p.sh;
            let ox = ux / p.sw;
            if (oy >= p.oh || ox >= p.ow) { return 0.0; }
            return b[((img * p.cout + co) * p.oh + oy) * p.ow + ox];
        }
        default: {
            let khw = p.kh * p.kw;
            let ohw = p.oh * p.ow;
            return im2col(n / khw, n % khw, k / ohw, k % ohw);
        }
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
        case 1u: {
            let ohw = p.oh * p.ow;
            c[base + ((n / ohw) * p.cout + m) * ohw + n % ohw] = out;
        }
        case 2u: {
            let hw = p.h * p.w;
            c[base + ((n / hw) * p.cin + m) * hw + n % hw] = out;
        }
        default: { c[base + m * p.n + n] = out; }
    }
}

@compute @workgroup_size(TN, TM)
fn gemm(@builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32,
        @builtin(workgroup_id) wid: vec3<u32>) {
    let BM = TM * RM;
    let BN = TN * RN;
    let NT = TM * TN;
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let z = wid.z / p.k_split;
    let split = wid.z % p.k_split;
    let k_begin = split * p.k_chunk;
    let k_end = min(p.k, k_begin + p.k_chunk);

    var acc: array<f32, 64>;
    for (var t = 0u; t < 64u; t++) { acc[t] = 0.0; }

    // k_begin and k_end are uniform over the workgroup, so every barrier is reached by all.
    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        for (var i = li; i < BM * BK; i += NT) {
            let mm = i / BK;
            let kk = i % BK;
            var v = 0.0;
            if (m0 + mm < p.m && k0 + kk < k_end) { v = load_a(z, m0 + mm, k0 + kk); }
            As[kk * BM + mm] = v;
        }
        for (var i = li; i < BN * BK; i += NT) {
            let nn = i % BN;
            let kk = i / BN;
            var v = 0.0;
            if (n0 + nn < p.n && k0 + kk < k_end) { v = load_b(z, k0 + kk, n0 + nn); }
            Bs[kk * BN + nn] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            var ar: array<f32, 8>;
            var br: array<f32, 8>;
            for (var i = 0u; i < RM; i++) { ar[i] = As[kk * BM + lid.y + i * TM]; }
            for (var j = 0u; j < RN; j++) { br[j] = Bs[kk * BN + lid.x + j * TN]; }
            for (var i = 0u; i < RM; i++) {
                for (var j = 0u; j < RN; j++) {
                    acc[i * 8u + j] = fma(ar[i], br[j], acc[i * 8u + j]);
                }
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < RM; i++) {
        let m = m0 + lid.y + i * TM;
        if (m >= p.m) { continue; }
        for (var j = 0u; j < RN; j++) {
            let n = n0 + lid.x + j * TN;
            if (n < p.n) { store_c(z, split, m, n, acc[i * 8u + j]); }
        }
    }
}
