// Convolution weight gradient for software adapters with subgroups, where an image is too large
// for conv.wgsl's uniform windows (see ops::conv):
//   dw[oc, ic, i, j] = sum over (img, oy, ox) of dy[img, oc, oy, ox] * x[img, ic, iy, ix],
//   iy = oy*SH + i*DH - ph, ix = ox*SW + j*DW - pw.
// Each invocation owns NQ quads of output channels by a quad of j for one (ic, i), and sums over
// the pixels of one chunk of images (workgroup z); the caller adds the chunks' partial sums.
// Every invocation of a workgroup walks the same pixels in the same order, so dy is loaded once
// per subgroup: each invocation loads a different column's channels (dy comes channels-last,
// padded to a multiple of 4, so a channel quad is one vec4) and subgroupShuffle passes them
// round. Along W at stride 1 and dilation 1 (WINDOW) the four input columns slide by one per
// pixel in registers, so a pixel costs one input load per invocation.
// On software adapters loads, not multiply-adds, set the speed.
// No invocation returns before the shuffles: every one takes part in each.

override KH: u32 = 1u;
override KW: u32 = 1u;
override SH: u32 = 1u;
override SW: u32 = 1u;
override DH: u32 = 1u;
override DW: u32 = 1u;
override NQ: u32 = 2u;         // channel quads per invocation: 1 or 2
override WINDOW: bool = false; // SW = DW = 1
override WX: u32 = 64u;

struct Params {
    n: u32, ic: u32, h: u32, w: u32,
    oc: u32, oh: u32, ow: u32, ph: u32,
    pw: u32, jquads: u32, ocp: u32, chunk: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dy4: array<vec4<f32>>; // [N, OH, OW, ocp / 4]
@group(0) @binding(2) var<storage, read_write> part: array<f32>; // [chunk][oc][ic][i][j]
@group(0) @binding(3) var<uniform> p: Params;

fn tap(row: u32, row_ok: bool, ix: i32) -> f32 {
    let ok = row_ok && ix >= 0 && ix < i32(p.w);
    return select(0.0, x[row + u32(clamp(ix, 0, i32(p.w) - 1))], ok);
}

fn outer(w: vec4<f32>, v: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(w * v.x, w * v.y, w * v.z, w * v.w);
}

@compute @workgroup_size(WX)
fn conv_wgrad_sg(@builtin(local_invocation_index) li: u32,
              @builtin(workgroup_id) wid: vec3<u32>,
              @builtin(subgroup_invocation_id) lane: u32,
              @builtin(subgroup_size) sg: u32) {
    let lanes = p.ic * KH * p.jquads;
    let l = wid.x * WX + li;
    let lc = min(l, lanes - 1u); // invocations past the end compute a copy and store nothing
    let jq = lc % p.jquads;
    let i = (lc / p.jquads) % KH;
    let ic = lc / (p.jquads * KH);
    let q0 = wid.y * NQ;
    let quads = p.ocp / 4u;
    let j0 = jq * 4u;
    let ix0 = i32(j0 * DW) - i32(p.pw);
    var a0 = mat4x4<f32>(); // column c: channel quad q0 for j = j0 + c
    var a1 = mat4x4<f32>();
    let img_end = min(p.n, (wid.z + 1u) * p.chunk);
    for (var img = wid.z * p.chunk; img < img_end; img++) {
        for (var oy = 0u; oy < p.oh; oy++) {
            let iy = i32(oy * SH + i * DH) - i32(p.ph);
            let row_ok = iy >= 0 && iy < i32(p.h);
            let row = ((img * p.ic + ic) * p.h + u32(clamp(iy, 0, i32(p.h) - 1))) * p.w;
            var win = vec4<f32>(0.0);
            if (WINDOW) {
                win = vec4<f32>(tap(row, row_ok, ix0), tap(row, row_ok, ix0 + 1),
                                tap(row, row_ok, ix0 + 2), tap(row, row_ok, ix0 + 3));
            }
            let pix = (img * p.oh + oy) * p.ow;
            for (var ox0 = 0u; ox0 < p.ow; ox0 += sg) {
                let mine = (pix + min(ox0 + lane, p.ow - 1u)) * quads + q0;
                let d0 = dy4[mine];
                var d1 = vec4<f32>(0.0);
                if (NQ > 1u) { d1 = dy4[mine + 1u]; }
                let steps = min(sg, p.ow - ox0);
                for (var s = 0u; s < steps; s++) {
                    var v = win;
                    let ix = ix0 + i32((ox0 + s) * SW);
                    if (WINDOW) {
                        win = vec4<f32>(win.yzw, tap(row, row_ok, ix + 4));
                    } else {
                        let d = i32(DW);
                        v = vec4<f32>(tap(row, row_ok, ix), tap(row, row_ok, ix + d),
                                      tap(row, row_ok, ix + 2 * d), tap(row, row_ok, ix + 3 * d));
                    }
                    a0 += outer(subgroupShuffle(d0, s), v);
                    if (NQ > 1u) { a1 += outer(subgroupShuffle(d1, s), v); }
                }
            }
        }
    }
    if (l >= lanes) { return; }
    store(wid.z, ic, i, j0, 4u * q0, a0);
    if (NQ > 1u) { store(wid.z, ic, i, j0, 4u * q0 + 4u, a1); }
}

// Writes one block of a chunk's partial sums inside the weight's shape.
fn store(chunk: u32, ic: u32, i: u32, j0: u32, oc0: u32, a: mat4x4<f32>) {
    for (var e = 0u; e < 4u; e++) {
        let oc = oc0 + e;
        if (oc >= p.oc) { return; }
        let base = (((chunk * p.oc + oc) * p.ic + ic) * KH + i) * KW;
        for (var c = 0u; c < 4u; c++) {
            if (j0 + c < KW) { part[base + j0 + c] = a[c][e]; }
        }
    }
}

// dy [N, OC, OH, OW] to channels-last [N, OH, OW, ocp], zeros past OC (dy4 above).
@group(0) @binding(0) var<storage, read> cl_src: array<f32>;
@group(0) @binding(1) var<storage, read_write> cl_dst: array<f32>;

@compute @workgroup_size(256)
fn to_channels_last(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = gid.x;
    if (e >= p.n * p.oh * p.ow * p.ocp) { return; }
    let oc = e % p.ocp;
    let pix = e / p.ocp;
    let s = pix % (p.oh * p.ow);
    let img = pix / (p.oh * p.ow);
    var v = 0.0;
    if (oc < p.oc) { v = cl_src[(img * p.oc + oc) * p.oh * p.ow + s]; }
    cl_dst[e] = v;
}
