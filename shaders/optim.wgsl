// Fused per-parameter optimizer updates, with PyTorch's formulas. Hyper-parameters live in a
// buffer `hp` that the host rewrites between steps (learning rate, bias corrections), so a
// recorded step never needs re-recording when they change. `hp` and `guard` are bound as uniform
// buffers: every invocation reads the same few values, which a software adapter loads once for a
// whole SIMD group from a uniform buffer but once per invocation from a storage one.
//   sgd:     hp = [lr, momentum, dampening, weight_decay, nesterov, first_step]
//   adam:    hp = [lr, beta1, beta2, eps, weight_decay, decoupled (AdamW), 1-beta1^t, 1-beta2^t]
//   rmsprop: hp = [lr, alpha, eps, weight_decay, momentum, centered]
// Each update is skipped when guard.x (the step's loss) is not finite.

const WG: u32 = 256u;

struct Params {
    n: u32,
}

@group(0) @binding(0) var<storage, read> grad: array<f32>;
@group(0) @binding(1) var<uniform> hpu: array<vec4<f32>, 2>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> s1: array<f32>;
@group(0) @binding(4) var<storage, read_write> s2: array<f32>;
@group(0) @binding(5) var<storage, read_write> s3: array<f32>;
@group(0) @binding(6) var<uniform> p: Params;
// guard.x: this step's loss. A non-finite loss leaves parameters and state untouched (the step is
// skipped); callers that do not guard bind a zero.
@group(0) @binding(8) var<uniform> guard: vec4<f32>;

// Exponent bits all set: infinity or NaN (a bit test, which fast-math cannot fold away).
fn finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

// Hyper-parameter i.
fn hp(i: u32) -> f32 {
    return hpu[i >> 2u][i & 3u];
}

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn sgd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    if (!finite(guard.x)) { return; }
    let lr = hp(0u);
    let momentum = hp(1u);
    let w = param[i];
    var g = grad[i] + hp(3u) * w;
    if (momentum != 0.0) {
        var buf = g;
        if (hp(5u) == 0.0) { buf = momentum * s1[i] + (1.0 - hp(2u)) * g; }
        s1[i] = buf;
        if (hp(4u) != 0.0) { g = g + momentum * buf; } else { g = buf; }
    }
    param[i] = w - lr * g;
}

@compute @workgroup_size(WG)
fn adam(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    if (!finite(guard.x)) { return; }
    let lr = hp(0u);
    let b1 = hp(1u);
    let b2 = hp(2u);
    var w = param[i];
    var g = grad[i];
    if (hp(5u) != 0.0) { w = w * (1.0 - lr * hp(4u)); } else { g = g + hp(4u) * w; }
    let m = b1 * s1[i] + (1.0 - b1) * g;
    let v = b2 * s2[i] + (1.0 - b2) * g * g;
    s1[i] = m;
    s2[i] = v;
    let denom = sqrt(v) / sqrt(hp(7u)) + hp(3u);
    param[i] = w - (lr / hp(6u)) * m / denom;
}

@compute @workgroup_size(WG)
fn rmsprop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    if (!finite(guard.x)) { return; }
    let lr = hp(0u);
    let alpha = hp(1u);
    let w = param[i];
    let g = grad[i] + hp(3u) * w;
    let sq = alpha * s1[i] + (1.0 - alpha) * g * g;
    s1[i] = sq;
    var avg: f32;
    if (hp(5u) != 0.0) {
        let ga = alpha * s2[i] + (1.0 - alpha) * g;
        s2[i] = ga;
        avg = sqrt(sq - ga * ga) + hp(2u);
    } else {
        avg = sqrt(sq) + hp(2u);
    }
    if (hp(4u) > 0.0) {
        let buf = hp(4u) * s3[i] + g / avg;
        s3[i] = buf;
        param[i] = w - lr * buf;
    } else {
        param[i] = w - lr * g / avg;
    }
}

// Gradient clipping by global norm: grad *= min(1, max_norm / (sqrt(sum_sq) + 1e-6)), where
// sum_sq = hp(0u) is the squared norm over all parameters (summed on the device) and
// max_norm = hp(1u). As torch.nn.utils.clip_grad_norm_.
@group(0) @binding(7) var<storage, read_write> clip_grad: array<f32>;

@compute @workgroup_size(WG)
fn clip(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    let scale = min(1.0, hp(1u) / (sqrt(hp(0u)) + 1e-6));
    clip_grad[i] = clip_grad[i] * scale;
}
