// Element-wise ops. OP (an override constant) selects the function, so each op compiles to its own
// branch-free pipeline.
//   unary:          out[i] = f(x[i])                      x, out: [n]
//   unary_backward: dx[i]  = f'(x[i]) * dy[i]             x, dy, dx: [n]
//   binary:         out[i] = g(a[ia(i)], b[ib(i)])        NumPy broadcasting through strides
// Unary OP codes: 0 neg, 1 exp, 2 log, 3 sqrt, 4 abs, 5 relu, 6 sigmoid, 7 tanh, 8 gelu (erf form),
//                 9 affine alpha*x+beta, 10 pow x^alpha, 11 square.
// Binary OP codes: 0 add, 1 sub, 2 mul, 3 div, 4 pow, 5 max, 6 min, 7 gt, 8 lt, 9 ge, 10 eq.

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

// erf with |error| < 1.5e-7 (Abramowitz and Stegun 7.1.26); WGSL has no erf.
fn erf_approx(v: f32) -> f32 {
    let s = sign(v);
    let a = abs(v);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return s * (1.0 - poly * exp(-a * a));
}

fn sigmoid(v: f32) -> f32 {
    // Split by sign so exp never overflows.
    if (v >= 0.0) { return 1.0 / (1.0 + exp(-v)); }
    let e = exp(v);
    return e / (1.0 + e);
}

fn unary_f(v: f32) -> f32 {
    switch OP {
        case 0u: { return -v; }
        case 1u: { return exp(v); }
        case 2u: { return log(v); }
        case 3u: { return sqrt(v); }
        case 4u: { return abs(v); }
        case 5u: { return max(v, 0.0); }
        case 6u: { return sigmoid(v); }
        case 7u: { return tanh(v); }
        case 8u: { return 0.5 * v * (1.0 + erf_approx(v * 0.70710678118654752)); }
        case 9u: { return up.alpha * v + up.beta; }
        case 10u: { return pow(v, up.alpha); }
        default: { return v * v; }
    }
}

fn unary_df(v: f32) -> f32 {
    switch OP {
        case 0u: { return -1.0; }
        case 1u: { return exp(v); }
        case 2u: { return 1.0 / v; }
        case 3u: { return 0.5 / sqrt(v); }
        case 4u: { return sign(v); }
        case 5u: { return select(0.0, 1.0, v > 0.0); }
        case 6u: { let s = sigmoid(v); return s * (1.0 - s); }
        case 7u: { let t = tanh(v); return 1.0 - t * t; }
        case 8u: {
            let cdf = 0.5 * (1.0 + erf_approx(v * 0.70710678118654752));
            let pdf = 0.3989422804014327 * exp(-0.5 * v * v);
            return cdf + v * pdf;
        }
        case 9u: { return up.alpha; }
        case 10u: { return up.alpha * pow(v, up.alpha - 1.0); }
        default: { return 2.0 * v; }
    }
}

fn binary_f(a: f32, b: f32) -> f32 {
    switch OP {
        case 0u: { return a + b; }
        case 1u: { return a - b; }
        case 2u: { return a * b; }
        case 3u: { return a / b; }
        case 4u: { return pow(a, b); }
        case 5u: { return max(a, b); }
        case 6u: { return min(a, b); }
        case 7u: { return select(0.0, 1.0, a > b); }
        case 8u: { return select(0.0, 1.0, a < b); }
        case 9u: { return select(0.0, 1.0, a >= b); }
        default: { return select(0.0, 1.0, a == b); }
    }
}

@compute @workgroup_size(WG)
fn unary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    // Split dispatches overhang the data.
    if (i >= up.n) { return; }
    out[i] = unary_f(x[i]);
}

@compute @workgroup_size(WG)
fn unary_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= up.n) { return; }
    out[i] = unary_df(x[i]) * y[i];
}

@compute @workgroup_size(WG)
fn binary(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= bp.n) { return; }
    if (SAME == 1u) {
        out[i] = binary_f(x[i], y[i]);
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
    out[i] = binary_f(x[ia], y[ib]);
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
