// 2-D pooling over NCHW planes. OP: 0 max, 1 average (padding counted, as PyTorch's default).
//   pool_forward:  y[plane, oy, ox] = max/mean over the window; max also records the argmax
//                  (flat index iy*W+ix within the plane, -1 when the window sees only padding).
//   pool_backward: dx[plane, iy, ix] = sum over the windows that cover it: a gather, so the result
//                  is the same on every run (no atomics).

override OP: u32 = 0u;
// The shape's divisors as constants (see pool.rs): w, h*w, ow, oh*ow and the strides.
override PW: u32 = 1u;
override PHW: u32 = 1u;
override POW: u32 = 1u;
override POHW: u32 = 1u;
override PSH: u32 = 1u;
override PSW: u32 = 1u;
// Dilation 1 and strides at least the window: each input lies in at most one window.
override DISJOINT: bool = false;
const WG: u32 = 256u;

struct Params {
    n: u32, h: u32, w: u32, oh: u32, ow: u32, kh: u32, kw: u32,
    sh: u32, sw: u32, ph: u32, pw: u32, dh: u32, dw: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> idx: array<i32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn pool_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let o = (wid.x + wid.y * nwg.x) * WG + lid;
    if (o >= p.n) { return; }
    let plane = o / POHW;
    let oy = (o % POHW) / POW;
    let ox = o % POW;
    var best = -3.402823e38;
    var at = -1;
    var sum = 0.0;
    for (var i = 0u; i < p.kh; i++) {
        let iy = i32(oy * p.sh + i * p.dh) - i32(p.ph);
        if (iy < 0 || iy >= i32(p.h)) { continue; }
        for (var j = 0u; j < p.kw; j++) {
            let ix = i32(ox * p.sw + j * p.dw) - i32(p.pw);
            if (ix < 0 || ix >= i32(p.w)) { continue; }
            let flat = u32(iy) * p.w + u32(ix);
            let v = x[plane * p.h * p.w + flat];
            sum += v;
            if (v > best || at < 0) { best = v; at = i32(flat); }
        }
    }
    if (OP == 0u) {
        out[o] = best;
        idx[o] = at;
    } else {
        out[o] = sum / f32(p.kh * p.kw);
    }
}

@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read> saved: array<i32>;

@compute @workgroup_size(WG)
fn pool_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let e = (wid.x + wid.y * nwg.x) * WG + lid;
    if (e >= p.n) { return; }
    let plane = e / PHW;
    let flat = e % PHW;
    let iy = flat / PW;
    let ix = flat % PW;
    if (DISJOINT) {
        // Windows do not overlap: at most one covers (iy, ix), found without a search.
        let oy = (iy + p.ph) / PSH;
        let ox = (ix + p.pw) / PSW;
        var v = 0.0;
        if ((iy + p.ph) % PSH < p.kh && (ix + p.pw) % PSW < p.kw && oy < p.oh && ox < p.ow) {
            let o = (plane * p.oh + oy) * p.ow + ox;
            if (OP == 0u) {
                if (saved[o] == i32(flat)) { v = dy[o]; }
            } else {
                v = dy[o] / f32(p.kh * p.kw);
            }
        }
        out[e] = v;
        return;
    }
    var acc = 0.0;
    for (var i = 0u; i < p.kh; i++) {
        let ty = i32(iy + p.ph) - i32(i * p.dh);
        if (ty < 0 || u32(ty) % PSH != 0u) { continue; }
        let oy = u32(ty) / PSH;
        if (oy >= p.oh) { continue; }
        for (var j = 0u; j < p.kw; j++) {
            let tx = i32(ix + p.pw) - i32(j * p.dw);
            if (tx < 0 || u32(tx) % PSW != 0u) { continue; }
            let ox = u32(tx) / PSW;
            if (ox >= p.ow) { continue; }
            let o = (plane * p.oh + oy) * p.ow + ox;
            if (OP == 0u) {
                if (saved[o] == i32(flat)) { acc += dy[o]; }
            } else {
                acc += dy[o] / f32(p.kh * p.kw);
            }
        }
    }
    out[e] = acc;
}
