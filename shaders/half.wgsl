// Inference with f16 weights: f32 activations, f16 weights widened on load, f32 accumulation.
// Needs the adapter's SHADER_F16; kiln falls back to f32 weights without it. Also the f32 <-> f16
// casts (to_f16, to_f32, to_f16_scaled) that mixed-precision matmuls use.
//
// Same layer geometry as int8.wgsl: a convolution (a Linear layer is the 1x1 convolution of 1x1
// images) as a GEMM over rows = (image, output pixel) and k = (input channel, kernel row, column):
//   conv_f16w: y[image, m, pixel] = sum_k x[window(row, k)] * w[m, k] + bias[m]
// Each thread owns one row and 4 output channels, so every input tap it gathers feeds 4 products.

enable f16;

const WG: u32 = 64u;
const T: u32 = 4u;

struct Params {
    rows: u32,
    m: u32,
    k: u32,
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
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> wt: array<f16>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn conv_f16w(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let e = (wid.x + wid.y * nwg.x) * WG + lid;
    let mb = (p.m + T - 1u) / T;
    if (e >= p.rows * mb) { return; }
    let row = e / mb;
    let m0 = (e % mb) * T;
    let img = row / p.ohw;
    let pix = row % p.ohw;
    let oy = (pix / p.ow) * p.sh;
    let ox = (pix % p.ow) * p.sw;
    var wr: array<u32, 4>;
    for (var l = 0u; l < T; l++) {
        wr[l] = min(m0 + l, p.m - 1u) * p.k;
    }
    var acc = vec4<f32>(0.0);
    // Nested loops over (channel, kernel row, kernel column): no divisions per tap, and rows of
    // the window that fall in the padding are skipped whole.
    var col = 0u;
    for (var ci = 0u; ci < p.c; ci++) {
        let plane = (img * p.c + ci) * p.h;
        for (var a = 0u; a < p.kh; a++) {
            let iy = i32(oy + a * p.dh) - i32(p.ph);
            if (iy < 0 || iy >= i32(p.h)) {
                col += p.kw;
                continue;
            }
            let line = (plane + u32(iy)) * p.w;
            for (var b = 0u; b < p.kw; b++) {
                let ix = i32(ox + b * p.dw) - i32(p.pw);
                if (ix >= 0 && ix < i32(p.w)) {
                    let v = x[line + u32(ix)];
                    let wv = vec4<f32>(f32(wt[wr[0] + col]), f32(wt[wr[1] + col]),
                                       f32(wt[wr[2] + col]), f32(wt[wr[3] + col]));
                    acc += v * wv;
                }
                col++;
            }
        }
    }
    for (var l = 0u; l < T; l++) {
        let m = m0 + l;
        if (m < p.m) {
            y[((img * p.m + m) * p.ohw) + pix] = acc[l] + bias[m];
        }
    }
}

// Casts between f32 and f16 arrays (round to nearest even), one element per invocation. f16
// holds magnitudes up to 65504; larger values are not representable.
const CAST_WG: u32 = 256u;
struct CastParams { n: u32 }
@group(0) @binding(5) var<storage, read> in32: array<f32>;
@group(0) @binding(6) var<storage, read_write> out16: array<f16>;
@group(0) @binding(7) var<storage, read> in16: array<f16>;
@group(0) @binding(8) var<storage, read_write> out32: array<f32>;
@group(0) @binding(9) var<uniform> cp: CastParams;

fn cast_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * CAST_WG + lid;
}

@compute @workgroup_size(CAST_WG)
fn to_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = cast_index(wid, nwg, lid);
    if (i < cp.n) { out16[i] = f16(in32[i]); }
}

@compute @workgroup_size(CAST_WG)
fn to_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = cast_index(wid, nwg, lid);
    if (i < cp.n) { out32[i] = f32(in16[i]); }
}

// to_f16_scaled: out16 = f16(in32 * s), s a power of two chosen from amax[0] = max |in32| so the
// largest magnitude lands in (2^13, 2^14]: small values (gradients) keep f16's 11 significant bits
// instead of underflowing, and nothing overflows. Writes 1 / s to inv_scale[0] for the consumer.
@group(0) @binding(10) var<storage, read> amax: array<f32>;
@group(0) @binding(11) var<storage, read_write> inv_scale: array<f32>;

fn pow2_scale(m: f32) -> f32 {
    // Zero, infinite or NaN: leave the values as they are.
    if (!(m > 0.0) || m > 3.0e38) { return 1.0; }
    return exp2(f32(clamp(14 - i32(ceil(log2(m))), -120, 120)));
}

@compute @workgroup_size(CAST_WG)
fn to_f16_scaled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = cast_index(wid, nwg, lid);
    let s = pow2_scale(amax[0]);
    if (i == 0u) { inv_scale[0] = 1.0 / s; }
    if (i < cp.n) { out16[i] = f16(in32[i] * s); }
}
