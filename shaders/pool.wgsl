// 2-D pooling over NCHW planes. OP: MAX or AVG (padding counted, as PyTorch's default).
//   pool_forward:  y[plane, oy, ox] = max/mean over the window; max also records the argmax
//                  (flat index iy*W+ix within the plane, -1 when the window sees only padding).
//   pool_backward: dx[plane, iy, ix] = sum over the windows that cover it: a gather, so the result
//                  is the same on every run (no atomics).
//   pool_scatter:  the same gradient where windows do not overlap (DISJOINT), one invocation per
//                  window writing its inputs: each dy and index is loaded once, not once per input.

const MAX: u32 = 0u;
const AVG: u32 = 1u;
override OP: u32 = MAX;
// The whole shape as constants (see pool.rs): divisions by a constant are multiplications, and
// loops over a constant window unroll, which software adapters run far faster.
override IH: u32 = 1u;
override IW: u32 = 1u;
override OH: u32 = 1u;
override OW: u32 = 1u;
override KH: u32 = 1u;
override KW: u32 = 1u;
override SH: u32 = 1u;
override SW: u32 = 1u;
override PADH: u32 = 0u;
override PADW: u32 = 0u;
override DH: u32 = 1u;
override DW: u32 = 1u;
// Dilation 1 and strides at least the window: each input lies in at most one window.
override DISJOINT: bool = false;
// The forward pass reads x through the 64 KiB uniform window `xu` (software adapters before
// Mesa 25, which gather a uniform array's elements in one vector load but load a storage buffer's
// one invocation at a time); a dispatch covers the planes p.plane0 .. that the window holds, from
// element p.skip.
override WINDOW: bool = false;
const WG: u32 = 256u;

struct Params {
    n: u32, plane0: u32, skip: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> idx: array<i32>;
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(6) var<uniform> xu: array<vec4<f32>, 4096>;

// Element `flat` of plane `plane` (counted from p.plane0 when WINDOW) of x.
fn x_at(plane: u32, flat: u32) -> f32 {
    if (WINDOW) {
        let e = p.skip + plane * (IH * IW) + flat;
        return xu[e >> 2u][e & 3u];
    }
    return x[plane * (IH * IW) + flat];
}

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// (plane, oy, ox) of window o.
fn window_of(o: u32) -> vec3<u32> {
    return vec3<u32>(o / (OH * OW), (o % (OH * OW)) / OW, o % OW);
}

// Plane element iy * IW + ix under tap (i, j) of window `win`, or -1 where the tap falls in the
// padding.
fn tap_flat(win: vec3<u32>, i: u32, j: u32) -> i32 {
    let iy = i32(win.y * SH + i * DH) - i32(PADH);
    let ix = i32(win.z * SW + j * DW) - i32(PADW);
    if (iy < 0 || iy >= i32(IH) || ix < 0 || ix >= i32(IW)) { return -1; }
    return iy * i32(IW) + ix;
}

// NaN (a bit test, which fast-math cannot fold away).
fn is_nan(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7fffffffu) > 0x7f800000u;
}

// Output o of this dispatch's planes: the max or mean, and the max's plane element (-1 when the
// window sees only padding).
struct Pooled {
    v: f32,
    at: i32,
}

fn pool_one(o: u32) -> Pooled {
    let win = window_of(o);
    var best = -3.402823e38;
    var at = -1;
    var sum = 0.0;
    for (var i = 0u; i < KH; i++) {
        for (var j = 0u; j < KW; j++) {
            let flat = tap_flat(win, i, j);
            if (flat < 0) { continue; }
            let v = x_at(win.x, u32(flat));
            sum += v;
            // A NaN wins and stays (no comparison beats it), as in PyTorch's max pooling.
            if (v > best || at < 0 || is_nan(v)) { best = v; at = flat; }
        }
    }
    if (OP == MAX) { return Pooled(best, at); }
    return Pooled(sum / f32(KH * KW), 0);
}

@compute @workgroup_size(WG)
fn pool_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    // Output index within this dispatch's planes (all of them without WINDOW).
    let o = index(wid, nwg, lid);
    if (o >= p.n) { return; }
    let r = pool_one(o);
    let g = p.plane0 * (OH * OW) + o;
    out[g] = r.v;
    if (OP == MAX) { idx[g] = r.at; }
}

@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read> saved: array<i32>;

@compute @workgroup_size(WG)
fn pool_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let e = index(wid, nwg, lid);
    if (e >= p.n) { return; }
    let plane = e / (IH * IW);
    let flat = e % (IH * IW);
    let iy = flat / IW;
    let ix = flat % IW;
    var acc = 0.0;
    for (var i = 0u; i < KH; i++) {
        let ty = i32(iy + PADH) - i32(i * DH);
        if (ty < 0 || u32(ty) % SH != 0u) { continue; }
        let oy = u32(ty) / SH;
        if (oy >= OH) { continue; }
        for (var j = 0u; j < KW; j++) {
            let tx = i32(ix + PADW) - i32(j * DW);
            if (tx < 0 || u32(tx) % SW != 0u) { continue; }
            let ox = u32(tx) / SW;
            if (ox >= OW) { continue; }
            let o = (plane * OH + oy) * OW + ox;
            if (OP == MAX) {
                if (saved[o] == i32(flat)) { acc += dy[o]; }
            } else {
                acc += dy[o] / f32(KH * KW);
            }
        }
    }
    out[e] = acc;
}

// The gradient of window o's in-bounds inputs (DISJOINT), from its dy `g` and argmax `at`.
fn scatter_one(o: u32, g: f32, at: i32) {
    let win = window_of(o);
    for (var i = 0u; i < KH; i++) {
        for (var j = 0u; j < KW; j++) {
            let flat = tap_flat(win, i, j);
            if (flat < 0) { continue; }
            var v = g / f32(KH * KW);
            if (OP == MAX) { v = select(0.0, g, at == flat); }
            out[win.x * (IH * IW) + u32(flat)] = v;
        }
    }
}

// One invocation per window o (DISJOINT): writes the gradient of the window's in-bounds inputs.
// Inputs outside every window are zeroed beforehand by the caller.
@compute @workgroup_size(WG)
fn pool_scatter(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let o = index(wid, nwg, lid);
    if (o >= p.n) { return; }
    var at = -1;
    if (OP == MAX) { at = saved[o]; }
    scatter_one(o, dy[o], at);
}

// Quad twins, four windows per invocation (outputs 4q .. 4q + 3, wherever they fall), for
// buffers that ops::pool finds Buffer::quad_aligned, without WINDOW: the per-invocation cost,
// which dominates on software adapters, is paid once for four, and the outputs (forward) or dy
// and the indices (scatter) move as vec4s. The forward's outputs are fresh allocations, so its
// last quad may overhang n.
@group(0) @binding(1) var<storage, read_write> out4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> idx4: array<vec4<i32>>;
@group(0) @binding(4) var<storage, read> dy4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> saved4: array<vec4<i32>>;

@compute @workgroup_size(WG)
fn pool_forward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let q = index(wid, nwg, lid);
    if (q * 4u >= p.n) { return; }
    var v = vec4<f32>();
    var at = vec4<i32>();
    for (var e = 0u; e < 4u; e++) {
        let r = pool_one(min(q * 4u + e, p.n - 1u));
        v[e] = r.v;
        at[e] = r.at;
    }
    out4[q] = v;
    if (OP == MAX) { idx4[q] = at; }
}

@compute @workgroup_size(WG)
fn pool_scatter4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let q = index(wid, nwg, lid);
    if (q * 4u >= p.n) { return; }
    let g = dy4[q];
    var at = vec4<i32>(-1);
    if (OP == MAX) { at = saved4[q]; }
    for (var e = 0u; e < 4u; e++) {
        if (q * 4u + e < p.n) { scatter_one(q * 4u + e, g[e], at[e]); }
    }
}
