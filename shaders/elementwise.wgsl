// Element-wise ops. OP (an override constant) selects the function, so each op compiles to its own
// branch-free pipeline.
//   unary:          out[i] = f(x[i])                      x, out: [n]
//   unary_backward: dx[i]  = f'(x[i]) * dy[i]             x, dy, dx: [n]
//   binary:         out[i] = g(a[ia(i)], b[ib(i)])        NumPy broadcasting through strides
//   mask_in_place:  x[i] *= m[i]
// Each has a quad twin (unary4, ...; binary4 without broadcasting) that does four elements per
// invocation: see the end of the file.
// OP codes: the constants below, which kiln-device's build turns into Rust constants
// (kiln_device::shaders::consts::elementwise) for the launchers.

const UNARY_NEG: u32 = 0u;
const UNARY_EXP: u32 = 1u;
const UNARY_LOG: u32 = 2u;
const UNARY_SQRT: u32 = 3u;
const UNARY_ABS: u32 = 4u;
const UNARY_RELU: u32 = 5u;
const UNARY_SIGMOID: u32 = 6u;
const UNARY_TANH: u32 = 7u;
const UNARY_GELU: u32 = 8u;    // erf form
const UNARY_AFFINE: u32 = 9u;  // alpha * x + beta
const UNARY_POW: u32 = 10u;    // x^alpha
const UNARY_SQUARE: u32 = 11u;
const UNARY_GELU_TANH: u32 = 12u; // tanh form (GPT-2's gelu_new)

const BINARY_ADD: u32 = 0u;
const BINARY_SUB: u32 = 1u;
const BINARY_MUL: u32 = 2u;
const BINARY_DIV: u32 = 3u;
const BINARY_POW: u32 = 4u;
const BINARY_MAX: u32 = 5u;
const BINARY_MIN: u32 = 6u;
const BINARY_GT: u32 = 7u;
const BINARY_LT: u32 = 8u;
const BINARY_GE: u32 = 9u;
const BINARY_EQ: u32 = 10u;

override OP: u32 = 0u;
// Binary only: 1 when a, b and out have the same shape (no index arithmetic needed).
override SAME: u32 = 0u;
const WG: u32 = 256u;

struct UnaryParams {
    n: u32,
    alpha: f32,
    beta: f32,
}

struct BinaryParams {
    n: u32,
    ndim: u32,
    // out shape and the strides of a and b over it (0 along broadcast axes), 8 dims at most.
    shape: array<vec4<u32>, 2>,
    a_strides: array<vec4<u32>, 2>,
    b_strides: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> up: UnaryParams;
@group(0) @binding(4) var<uniform> bp: BinaryParams;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// The functions act on quads, so that the quad entry points and the one-element ones share them
// (those use lane x; the other lanes' work is dead code that compilers drop).

// erf with |error| < 1.5e-7 (Abramowitz and Stegun 7.1.26); WGSL has no erf.
fn erf_approx(v: vec4<f32>) -> vec4<f32> {
    let a = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return sign(v) * (1.0 - poly * exp(-a * a));
}

fn sigmoid(v: vec4<f32>) -> vec4<f32> {
    // exp of minus |v| only, so it never overflows: 1 / (1 + e^-v) for v >= 0, e^v / (1 + e^v)
    // below.
    let e = exp(-abs(v));
    return select(e, vec4<f32>(1.0), v >= vec4<f32>(0.0)) / (1.0 + e);
}

// tanh from exp(-2|u|) only, so it never overflows (inf / inf) for large |u|.
fn tanh_stable(u: vec4<f32>) -> vec4<f32> {
    let e = exp(-2.0 * abs(u));
    return sign(u) * (1.0 - e) / (1.0 + e);
}

// GELU's tanh form (GPT-2's gelu_new): the argument sqrt(2/pi) (v + 0.044715 v^3).
fn gelu_tanh_arg(v: vec4<f32>) -> vec4<f32> {
    return 0.7978845608028654 * (v + 0.044715 * v * v * v);
}

// NaN lanes (a bit test, which fast-math cannot fold away).
fn is_nan4(v: vec4<f32>) -> vec4<bool> {
    return (bitcast<vec4<u32>>(v) & vec4<u32>(0x7fffffffu)) > vec4<u32>(0x7f800000u);
}

fn unary_f(v: vec4<f32>) -> vec4<f32> {
    switch OP {
        case UNARY_NEG: { return -v; }
        case UNARY_EXP: { return exp(v); }
        case UNARY_LOG: { return log(v); }
        case UNARY_SQRT: { return sqrt(v); }
        case UNARY_ABS: { return abs(v); }
        // NaN in, NaN out, as PyTorch: max(NaN, 0) may be either operand (0 on lavapipe).
        case UNARY_RELU: { return select(vec4<f32>(0.0), v, (v > vec4<f32>(0.0)) | is_nan4(v)); }
        case UNARY_SIGMOID: { return sigmoid(v); }
        case UNARY_TANH: { return tanh(v); }
        case UNARY_GELU: { return 0.5 * v * (1.0 + erf_approx(v * 0.70710678118654752)); }
        case UNARY_AFFINE: { return up.alpha * v + up.beta; }
        case UNARY_POW: { return pow(v, vec4<f32>(up.alpha)); }
        case UNARY_GELU_TANH: { return 0.5 * v * (1.0 + tanh_stable(gelu_tanh_arg(v))); }
        case UNARY_SQUARE, default: { return v * v; }
    }
}

fn unary_df(v: vec4<f32>) -> vec4<f32> {
    switch OP {
        case UNARY_NEG: { return vec4<f32>(-1.0); }
        case UNARY_EXP: { return exp(v); }
        case UNARY_LOG: { return 1.0 / v; }
        case UNARY_SQRT: { return 0.5 / sqrt(v); }
        case UNARY_ABS: { return sign(v); }
        case UNARY_RELU: { return select(vec4<f32>(0.0), vec4<f32>(1.0), v > vec4<f32>(0.0)); }
        case UNARY_SIGMOID: { let s = sigmoid(v); return s * (1.0 - s); }
        case UNARY_TANH: { let t = tanh(v); return 1.0 - t * t; }
        case UNARY_GELU: {
            let cdf = 0.5 * (1.0 + erf_approx(v * 0.70710678118654752));
            let pdf = 0.3989422804014327 * exp(-0.5 * v * v);
            return cdf + v * pdf;
        }
        case UNARY_AFFINE: { return vec4<f32>(up.alpha); }
        case UNARY_POW: { return up.alpha * pow(v, vec4<f32>(up.alpha - 1.0)); }
        case UNARY_GELU_TANH: {
            let t = tanh_stable(gelu_tanh_arg(v));
            let du = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * v * v);
            return 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * du;
        }
        case UNARY_SQUARE, default: { return 2.0 * v; }
    }
}

fn binary_f(a: vec4<f32>, b: vec4<f32>) -> vec4<f32> {
    let one = vec4<f32>(1.0);
    let zero = vec4<f32>(0.0);
    switch OP {
        case BINARY_ADD: { return a + b; }
        case BINARY_SUB: { return a - b; }
        case BINARY_MUL: { return a * b; }
        case BINARY_DIV: { return a / b; }
        case BINARY_POW: { return pow(a, b); }
        case BINARY_MAX: { return max(a, b); }
        case BINARY_MIN: { return min(a, b); }
        case BINARY_GT: { return select(zero, one, a > b); }
        case BINARY_LT: { return select(zero, one, a < b); }
        case BINARY_GE: { return select(zero, one, a >= b); }
        case BINARY_EQ, default: { return select(zero, one, a == b); }
    }
}

@compute @workgroup_size(WG)
fn unary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    // Split dispatches overhang the data.
    if (i >= up.n) { return; }
    out[i] = unary_f(vec4<f32>(x[i])).x;
}

@compute @workgroup_size(WG)
fn unary_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= up.n) { return; }
    out[i] = unary_df(vec4<f32>(x[i])).x * y[i];
}

@compute @workgroup_size(WG)
fn binary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= bp.n) { return; }
    if (SAME == 1u) {
        out[i] = binary_f(vec4<f32>(x[i]), vec4<f32>(y[i])).x;
        return;
    }
    var rem = i;
    var ia = 0u;
    var ib = 0u;
    for (var d = i32(bp.ndim) - 1; d >= 0; d--) {
        let du = u32(d);
        let extent = bp.shape[du / 4u][du % 4u];
        let c = rem % extent;
        rem = rem / extent;
        ia += c * bp.a_strides[du / 4u][du % 4u];
        ib += c * bp.b_strides[du / 4u][du % 4u];
    }
    out[i] = binary_f(vec4<f32>(x[ia]), vec4<f32>(y[ib])).x;
}

// mask_in_place: x[i] *= m[i] (keeps pruned weights at zero after each optimizer update).
@group(0) @binding(5) var<storage, read_write> inout: array<f32>;

@compute @workgroup_size(WG)
fn mask_in_place(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= up.n) { return; }
    inout[i] = inout[i] * y[i];
}

// Quad entry points: invocation q handles elements 4q .. 4q + 3, loading and storing each operand
// as one vec4. A software adapter pays per invocation and per load, so this runs about three times
// as fast there; GPUs load 16 bytes as cheaply as 4. ops::elementwise takes these where every
// buffer is Buffer::quad_aligned. The last quad may overhang n: lanes past n read whatever the
// allocation holds there.
@group(0) @binding(0) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> y4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> inout4: array<vec4<f32>>;

// `v` in the lanes of quad q below n, `old` past it, for kernels that write in place: the
// memory past n may belong to a view of something else and must not change. (The others write
// fresh outputs, whose last quad's overhang is their own padding.)
fn below_n(q: u32, n: u32, old: vec4<f32>, v: vec4<f32>) -> vec4<f32> {
    return select(old, v, vec4<u32>(0u, 1u, 2u, 3u) + q * 4u < vec4<u32>(n));
}

@compute @workgroup_size(WG)
fn unary4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let q = linear_index(wid, nwg, lid);
    if (q * 4u >= up.n) { return; }
    out4[q] = unary_f(x4[q]);
}

@compute @workgroup_size(WG)
fn unary_backward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let q = linear_index(wid, nwg, lid);
    if (q * 4u >= up.n) { return; }
    out4[q] = unary_df(x4[q]) * y4[q];
}

// binary with SAME only: no broadcasting.
@compute @workgroup_size(WG)
fn binary4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let q = linear_index(wid, nwg, lid);
    if (q * 4u >= bp.n) { return; }
    out4[q] = binary_f(x4[q], y4[q]);
}

@compute @workgroup_size(WG)
fn mask_in_place4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let q = linear_index(wid, nwg, lid);
    if (q * 4u >= up.n) { return; }
    let v = inout4[q];
    inout4[q] = below_n(q, up.n, v, v * y4[q]);
}
