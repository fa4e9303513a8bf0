// int8 inference with packed 4 x 8-bit dot products and i32 accumulation.
//
// A layer is a convolution (a Linear layer is the 1x1 convolution of 1x1 images), computed as a
// GEMM over rows = (image, output pixel) and columns k = (input channel, kernel row, kernel column):
//   pack_i8:           xq[row, k] = clamp(round(x[window(row, k)] / x_scale), -127, 127), packed
//                      four int8 per u32 along k (element 4j+i in bits 8i..8i+7), k padded to a
//                      multiple of 4 with zeros. Taps in the padding are zeros.
//   matmul_i8:         acc[row, m] = sum_k xq[row, k] * wq[m, k], the exact i32 sums (rows x M).
//   matmul_i8_dequant: y = acc * x_scale * w_scale[m] + bias[m], written in NCHW order
//                      y[image, m, pixel] (for a Linear layer: y[row, m]).
// Each thread of the matmuls owns a 4 x 4 block of outputs, so every packed word it loads feeds
// four dot products.

const WG: u32 = 64u;
const T: u32 = 4u;

struct Params {
    rows: u32,
    m: u32,
    k: u32,
    k4: u32,
    c: u32,
    h: u32,
    w: u32,
    ohw: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    sh: u32,
    sw: u32,
    ph: u32,
    pw: u32,
    dh: u32,
    dw: u32,
    x_scale: f32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> xq: array<u32>;
@group(0) @binding(2) var<storage, read> wq: array<u32>;
@group(0) @binding(3) var<storage, read> w_scale: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> xq_out: array<u32>;
@group(0) @binding(6) var<storage, read_write> acc_out: array<i32>;
@group(0) @binding(7) var<storage, read_write> y: array<f32>;
@group(0) @binding(8) var<uniform> p: Params;

fn flat_id(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// The input value under column `col` of GEMM row `row` (zero in the padding).
fn tap(row: u32, col: u32) -> f32 {
    let img = row / p.ohw;
    let pix = row % p.ohw;
    let ci = col / (p.kh * p.kw);
    let t = col % (p.kh * p.kw);
    let iy = i32((pix / p.ow) * p.sh + (t / p.kw) * p.dh) - i32(p.ph);
    let ix = i32((pix % p.ow) * p.sw + (t % p.kw) * p.dw) - i32(p.pw);
    if (iy < 0 || ix < 0 || iy >= i32(p.h) || ix >= i32(p.w)) {
        return 0.0;
    }
    return x[((img * p.c + ci) * p.h + u32(iy)) * p.w + u32(ix)];
}

@compute @workgroup_size(WG)
fn pack_i8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let e = flat_id(wid, nwg, lid);
    if (e >= p.rows * p.k4) { return; }
    let row = e / p.k4;
    let j = e % p.k4;
    var word = 0u;
    for (var i = 0u; i < 4u; i++) {
        let col = 4u * j + i;
        if (col < p.k) {
            // round() ties to even, as the CPU reference does.
            let q = i32(clamp(round(tap(row, col) / p.x_scale), -127.0, 127.0));
            word |= (u32(q) & 0xffu) << (8u * i);
        }
    }
    xq_out[e] = word;
}

// The 4 x 4 block of exact sums whose corner is (r0, m0); rows and channels past the edge repeat
// the last one (their results are not written).
fn block(r0: u32, m0: u32) -> array<array<i32, 4>, 4> {
    var acc: array<array<i32, 4>, 4>;
    var xr: array<u32, 4>;
    var wr: array<u32, 4>;
    for (var i = 0u; i < T; i++) {
        xr[i] = min(r0 + i, p.rows - 1u) * p.k4;
        wr[i] = min(m0 + i, p.m - 1u) * p.k4;
    }
    for (var j = 0u; j < p.k4; j++) {
        let a = array<u32, 4>(xq[xr[0] + j], xq[xr[1] + j], xq[xr[2] + j], xq[xr[3] + j]);
        let b = array<u32, 4>(wq[wr[0] + j], wq[wr[1] + j], wq[wr[2] + j], wq[wr[3] + j]);
        for (var i = 0u; i < T; i++) {
            for (var l = 0u; l < T; l++) {
                acc[i][l] += dot4I8Packed(a[i], b[l]);
            }
        }
    }
    return acc;
}

// Index of output (row, channel) in NCHW order.
fn out_index(row: u32, m: u32) -> u32 {
    return ((row / p.ohw) * p.m + m) * p.ohw + row % p.ohw;
}

@compute @workgroup_size(WG)
fn matmul_i8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let e = flat_id(wid, nwg, lid);
    let mb = (p.m + T - 1u) / T;
    if (e >= ((p.rows + T - 1u) / T) * mb) { return; }
    let r0 = (e / mb) * T;
    let m0 = (e % mb) * T;
    let acc = block(r0, m0);
    for (var i = 0u; i < T; i++) {
        for (var l = 0u; l < T; l++) {
            if (r0 + i < p.rows && m0 + l < p.m) {
                acc_out[(r0 + i) * p.m + m0 + l] = acc[i][l];
            }
        }
    }
}

@compute @workgroup_size(WG)
fn matmul_i8_dequant(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let e = flat_id(wid, nwg, lid);
    let mb = (p.m + T - 1u) / T;
    if (e >= ((p.rows + T - 1u) / T) * mb) { return; }
    let r0 = (e / mb) * T;
    let m0 = (e % mb) * T;
    let acc = block(r0, m0);
    for (var l = 0u; l < T; l++) {
        let m = m0 + l;
        if (m < p.m) {
            let s = p.x_scale * w_scale[m];
            let b = bias[m];
            for (var i = 0u; i < T; i++) {
                if (r0 + i < p.rows) {
                    y[out_index(r0 + i, m)] = f32(acc[i][l]) * s + b;
                }
            }
        }
    }
}
