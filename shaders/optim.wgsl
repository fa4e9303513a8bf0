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

// The updates act on quads: the quad entry points (sgd4, ...) update four elements per
// invocation, loaded as vec4s, where ops::optim finds every buffer Buffer::quad_aligned (a
// software adapter runs them about three times as fast); the one-element entry points pass their
// element in lane x. State is loaded only where the rule uses it.
struct Updated {
    w: vec4<f32>,
    s1: vec4<f32>,
    s2: vec4<f32>,
    s3: vec4<f32>,
}

fn sgd_update(w: vec4<f32>, grad: vec4<f32>, s1: vec4<f32>) -> Updated {
    let momentum = hp(1u);
    var g = grad + hp(3u) * w;
    var buf = s1;
    if (momentum != 0.0) {
        buf = g;
        if (hp(5u) == 0.0) { buf = momentum * s1 + (1.0 - hp(2u)) * g; }
        if (hp(4u) != 0.0) { g = g + momentum * buf; } else { g = buf; }
    }
    return Updated(w - hp(0u) * g, buf, vec4<f32>(), vec4<f32>());
}

fn adam_update(w0: vec4<f32>, g0: vec4<f32>, s1: vec4<f32>, s2: vec4<f32>) -> Updated {
    let lr = hp(0u);
    let b1 = hp(1u);
    let b2 = hp(2u);
    var w = w0;
    var g = g0;
    if (hp(5u) != 0.0) { w = w * (1.0 - lr * hp(4u)); } else { g = g + hp(4u) * w; }
    let m = b1 * s1 + (1.0 - b1) * g;
    let v = b2 * s2 + (1.0 - b2) * g * g;
    let denom = sqrt(v) / sqrt(hp(7u)) + hp(3u);
    return Updated(w - (lr / hp(6u)) * m / denom, m, v, vec4<f32>());
}

fn rmsprop_update(w: vec4<f32>, grad: vec4<f32>, s1: vec4<f32>, s2: vec4<f32>,
                  s3: vec4<f32>) -> Updated {
    let lr = hp(0u);
    let alpha = hp(1u);
    let g = grad + hp(3u) * w;
    var u = Updated(w, alpha * s1 + (1.0 - alpha) * g * g, s2, s3);
    var avg: vec4<f32>;
    if (hp(5u) != 0.0) {
        u.s2 = alpha * s2 + (1.0 - alpha) * g;
        avg = sqrt(u.s1 - u.s2 * u.s2) + hp(2u);
    } else {
        avg = sqrt(u.s1) + hp(2u);
    }
    if (hp(4u) > 0.0) {
        u.s3 = hp(4u) * s3 + g / avg;
        u.w = w - lr * u.s3;
    } else {
        u.w = w - lr * g / avg;
    }
    return u;
}

@compute @workgroup_size(WG)
fn sgd(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
       @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    if (!finite(guard.x)) { return; }
    let momentum = hp(1u) != 0.0;
    var m = 0.0;
    if (momentum) { m = s1[i]; }
    let u = sgd_update(vec4<f32>(param[i]), vec4<f32>(grad[i]), vec4<f32>(m));
    if (momentum) { s1[i] = u.s1.x; }
    param[i] = u.w.x;
}

@compute @workgroup_size(WG)
fn adam(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    if (!finite(guard.x)) { return; }
    let u = adam_update(vec4<f32>(param[i]), vec4<f32>(grad[i]), vec4<f32>(s1[i]),
                        vec4<f32>(s2[i]));
    s1[i] = u.s1.x;
    s2[i] = u.s2.x;
    param[i] = u.w.x;
}

@compute @workgroup_size(WG)
fn rmsprop(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    if (!finite(guard.x)) { return; }
    let centered = hp(5u) != 0.0;
    let momentum = hp(4u) > 0.0;
    var ga = 0.0;
    var buf = 0.0;
    if (centered) { ga = s2[i]; }
    if (momentum) { buf = s3[i]; }
    let u = rmsprop_update(vec4<f32>(param[i]), vec4<f32>(grad[i]), vec4<f32>(s1[i]),
                           vec4<f32>(ga), vec4<f32>(buf));
    s1[i] = u.s1.x;
    if (centered) { s2[i] = u.s2.x; }
    if (momentum) { s3[i] = u.s3.x; }
    param[i] = u.w.x;
}

@group(0) @binding(0) var<storage, read> grad4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> param4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> s14: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> s24: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> s34: array<vec4<f32>>;

// `v` in the lanes of quad q below p.n, `old` past it: the last quad may overhang the
// parameter, and memory past it must not change.
fn below_n(q: u32, old: vec4<f32>, v: vec4<f32>) -> vec4<f32> {
    return select(old, v, vec4<u32>(0u, 1u, 2u, 3u) + q * 4u < vec4<u32>(p.n));
}

@compute @workgroup_size(WG)
fn sgd4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let q = index(wid, nwg, lid);
    if (q * 4u >= p.n) { return; }
    if (!finite(guard.x)) { return; }
    let momentum = hp(1u) != 0.0;
    var m = vec4<f32>();
    if (momentum) { m = s14[q]; }
    let w = param4[q];
    let u = sgd_update(w, grad4[q], m);
    if (momentum) { s14[q] = below_n(q, m, u.s1); }
    param4[q] = below_n(q, w, u.w);
}

@compute @workgroup_size(WG)
fn adam4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let q = index(wid, nwg, lid);
    if (q * 4u >= p.n) { return; }
    if (!finite(guard.x)) { return; }
    let w = param4[q];
    let m = s14[q];
    let v = s24[q];
    let u = adam_update(w, grad4[q], m, v);
    s14[q] = below_n(q, m, u.s1);
    s24[q] = below_n(q, v, u.s2);
    param4[q] = below_n(q, w, u.w);
}

@compute @workgroup_size(WG)
fn rmsprop4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let q = index(wid, nwg, lid);
    if (q * 4u >= p.n) { return; }
    if (!finite(guard.x)) { return; }
    let centered = hp(5u) != 0.0;
    let momentum = hp(4u) > 0.0;
    let w = param4[q];
    let sq = s14[q];
    var ga = vec4<f32>();
    var buf = vec4<f32>();
    if (centered) { ga = s24[q]; }
    if (momentum) { buf = s34[q]; }
    let u = rmsprop_update(w, grad4[q], sq, ga, buf);
    s14[q] = below_n(q, sq, u.s1);
    if (centered) { s24[q] = below_n(q, ga, u.s2); }
    if (momentum) { s34[q] = below_n(q, buf, u.s3); }
    param4[q] = below_n(q, w, u.w);
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

// multi: one dispatch updates up to eight parameters of a group (multi-tensor apply). The
// invocations run over the parameters' quads one after another: slot s owns quads
// starts[s] .. starts[s] + ceil(lens[s] / 4), of parameter w<s> and gradient g<s>, and its state
// at quad offs[s] of the group's flat state buffers m1, m2, m3 (each parameter's state starts on
// a 256-byte boundary). RULE: 0 sgd, 1 adam, 2 rmsprop (hyper-parameters in hp as above).
override RULE: u32 = 0u;

struct MultiParams {
    count: u32,
    total: u32, // quads over all slots
    starts: array<vec4<u32>, 2>,
    lens: array<vec4<u32>, 2>,
    offs: array<vec4<u32>, 2>,
}

@group(0) @binding(10) var<storage, read> g0: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read> g1: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read> g2: array<vec4<f32>>;
@group(0) @binding(13) var<storage, read> g3: array<vec4<f32>>;
@group(0) @binding(14) var<storage, read> g4: array<vec4<f32>>;
@group(0) @binding(15) var<storage, read> g5: array<vec4<f32>>;
@group(0) @binding(16) var<storage, read> g6: array<vec4<f32>>;
@group(0) @binding(17) var<storage, read> g7: array<vec4<f32>>;
@group(0) @binding(18) var<storage, read_write> w0: array<vec4<f32>>;
@group(0) @binding(19) var<storage, read_write> w1: array<vec4<f32>>;
@group(0) @binding(20) var<storage, read_write> w2: array<vec4<f32>>;
@group(0) @binding(21) var<storage, read_write> w3: array<vec4<f32>>;
@group(0) @binding(22) var<storage, read_write> w4: array<vec4<f32>>;
@group(0) @binding(23) var<storage, read_write> w5: array<vec4<f32>>;
@group(0) @binding(24) var<storage, read_write> w6: array<vec4<f32>>;
@group(0) @binding(25) var<storage, read_write> w7: array<vec4<f32>>;
@group(0) @binding(26) var<storage, read_write> m1: array<vec4<f32>>;
@group(0) @binding(27) var<storage, read_write> m2: array<vec4<f32>>;
@group(0) @binding(28) var<storage, read_write> m3: array<vec4<f32>>;
@group(0) @binding(29) var<uniform> mp: MultiParams;

fn at8(a: array<vec4<u32>, 2>, i: u32) -> u32 { return a[i / 4u][i % 4u]; }

fn grad_of(slot: u32, q: u32) -> vec4<f32> {
    switch slot {
        case 0u: { return g0[q]; }
        case 1u: { return g1[q]; }
        case 2u: { return g2[q]; }
        case 3u: { return g3[q]; }
        case 4u: { return g4[q]; }
        case 5u: { return g5[q]; }
        case 6u: { return g6[q]; }
        default: { return g7[q]; }
    }
}

fn param_of(slot: u32, q: u32) -> vec4<f32> {
    switch slot {
        case 0u: { return w0[q]; }
        case 1u: { return w1[q]; }
        case 2u: { return w2[q]; }
        case 3u: { return w3[q]; }
        case 4u: { return w4[q]; }
        case 5u: { return w5[q]; }
        case 6u: { return w6[q]; }
        default: { return w7[q]; }
    }
}

fn set_param(slot: u32, q: u32, v: vec4<f32>) {
    switch slot {
        case 0u: { w0[q] = v; }
        case 1u: { w1[q] = v; }
        case 2u: { w2[q] = v; }
        case 3u: { w3[q] = v; }
        case 4u: { w4[q] = v; }
        case 5u: { w5[q] = v; }
        case 6u: { w6[q] = v; }
        default: { w7[q] = v; }
    }
}

// The slot that owns quad gq of a dispatch (starts are ascending).
fn slot_of(gq: u32) -> u32 {
    var slot = 0u;
    for (var s = 1u; s < mp.count; s++) {
        if (gq >= at8(mp.starts, s)) { slot = s; }
    }
    return slot;
}

// The updated quad of a parameter from its value w and gradient g; its state, at quad so of the
// flat state buffers m1, m2, m3, is updated in place. Lanes where keep is false keep their values.
fn multi_update(w: vec4<f32>, g: vec4<f32>, so: u32, keep: vec4<bool>) -> vec4<f32> {
    switch RULE {
        case 0u: {
            if (hp(1u) != 0.0) {
                let m = m1[so];
                let u = sgd_update(w, g, m);
                m1[so] = select(m, u.s1, keep);
                return select(w, u.w, keep);
            }
            return select(w, sgd_update(w, g, vec4<f32>()).w, keep);
        }
        case 1u: {
            let m = m1[so];
            let v = m2[so];
            let u = adam_update(w, g, m, v);
            m1[so] = select(m, u.s1, keep);
            m2[so] = select(v, u.s2, keep);
            return select(w, u.w, keep);
        }
        default: {
            let sq = m1[so];
            let ga = m2[so];
            let buf = m3[so];
            let u = rmsprop_update(w, g, sq, ga, buf);
            m1[so] = select(sq, u.s1, keep);
            m2[so] = select(ga, u.s2, keep);
            m3[so] = select(buf, u.s3, keep);
            return select(w, u.w, keep);
        }
    }
}

// Lanes of quad q of a slot's parameter that lie inside it (the last quad may overhang it).
fn inside(slot: u32, q: u32) -> vec4<bool> {
    return vec4<u32>(0u, 1u, 2u, 3u) + q * 4u < vec4<u32>(at8(mp.lens, slot));
}

@compute @workgroup_size(WG)
fn multi(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let gq = index(wid, nwg, lid);
    if (gq >= mp.total) { return; }
    if (!finite(guard.x)) { return; }
    let slot = slot_of(gq);
    let q = gq - at8(mp.starts, slot);
    let so = at8(mp.offs, slot) + q;
    let w = multi_update(param_of(slot, q), grad_of(slot, q), so, inside(slot, q));
    set_param(slot, q, w);
}

// multi2: multi with two slots, for adapters with WebGPU's default limit of 8 storage buffers per
// stage (g0, g1, w0, w1, m1, m2, m3: 7), where multi's 19 do not fit.
fn grad2_of(slot: u32, q: u32) -> vec4<f32> {
    if (slot == 0u) { return g0[q]; }
    return g1[q];
}

fn param2_of(slot: u32, q: u32) -> vec4<f32> {
    if (slot == 0u) { return w0[q]; }
    return w1[q];
}

@compute @workgroup_size(WG)
fn multi2(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let gq = index(wid, nwg, lid);
    if (gq >= mp.total) { return; }
    if (!finite(guard.x)) { return; }
    let slot = slot_of(gq);
    let q = gq - at8(mp.starts, slot);
    let so = at8(mp.offs, slot) + q;
    let w = multi_update(param2_of(slot, q), grad2_of(slot, q), so, inside(slot, q));
    if (slot == 0u) { w0[q] = w; } else { w1[q] = w; }
}
