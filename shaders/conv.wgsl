// Direct 2-D convolution for software adapters (see ops::conv): no GEMM, no im2col.
//   out[img, oc, oy, ox] = bias[oc] + sum over (ic, i, j) of
//                          x[img, ic, oy*SH + i*DH - ph, ox*SW + j*DW - pw] * wt(oc, ic, i, j)
// The forward pass is this with wt = w. The input gradient at stride 1 is this too, run on dy with
// wt(oc, ic, i, j) = w[ic, oc, KH-1-i, KW-1-j] and padding (K-1)*D - p (pack_weights, FLIP).
// On a CPU running WGSL, load instructions rather than multiply-adds set the speed, so each
// invocation computes 4 neighbouring columns of 4 * NQ channels: each loaded input value feeds
// 4 * NQ products per tap, and weights come four channels at a time from a uniform buffer.
// The input is read through a 64 KiB uniform window too (a software adapter gathers a uniform
// array's elements in one vector load, a storage buffer's one invocation at a time); a dispatch
// covers the images p.n0 .. p.n0 + p.n that its window holds, from element p.skip on. Layers too
// large for one window split: a dispatch then reads input channels p.ic0 .. p.ic0 + p.ic of one
// image and writes output channels p.oc0 .. p.oc0 + p.ocp, adding to y after the first part.

override KH: u32 = 1u;
override KW: u32 = 1u;
override SH: u32 = 1u;
override SW: u32 = 1u;
override DH: u32 = 1u;
override DW: u32 = 1u;
override NQ: u32 = 2u;      // quads of output channels per invocation: 1 or 2
override WINDOW: bool = false; // SW = DW = 1 (and KW <= 5 in conv_direct)
override FLIP: bool = false;
override ACCUMULATE: bool = false; // add to y (the parts after a split layer's first)
override WX: u32 = 64u;
// conv_wgrad with WINDOW: kernel columns past the first four that each invocation also owns
// (0 to 3; KW = 4 + TAIL where used), so that a 5-wide kernel needs no second, mostly empty quad.
override TAIL: u32 = 0u;

struct Params {
    n: u32, ic: u32, h: u32, w: u32,     // ic: the input channels this dispatch reads
    oc: u32, oh: u32, ow: u32, ph: u32,  // oc: all output channels
    pw: u32, xblocks: u32, ocp: u32, has_bias: u32, // ocp: this group's, padded to quads
    n0: u32, skip: u32, oc0: u32, ic0: u32,
    ic_all: u32,
}

@group(0) @binding(0) var<uniform> xu: array<vec4<f32>, 4096>; // window of x [N, IC, H, W]
@group(0) @binding(1) var<uniform> wu: array<vec4<f32>, 4096>; // packed [ic][i][j][ocp / 4]
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

// Window element `row` + ix of an input row `width` long, zero outside the image.
fn tap(row: u32, row_ok: bool, ix: i32, width: u32) -> f32 {
    let ok = row_ok && ix >= 0 && ix < i32(width);
    let e = row + u32(clamp(ix, 0, i32(width) - 1));
    return select(0.0, xu[e >> 2u][e & 3u], ok);
}

// The 4 x 4 block of products: column c is weight quad `w` times input column c.
fn outer(w: vec4<f32>, v: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(w * v.x, w * v.y, w * v.z, w * v.w);
}

@compute @workgroup_size(WX)
fn conv_direct(@builtin(global_invocation_id) gid: vec3<u32>,
               @builtin(workgroup_id) wid: vec3<u32>) {
    let xb = gid.x % p.xblocks;
    let t = gid.x / p.xblocks;
    let oy = t % p.oh;
    let img = t / p.oh;
    if (img >= p.n) { return; } // no barriers follow
    let ox0 = xb * 4u;
    let q0 = wid.y * NQ; // first channel quad
    let quads = p.ocp / 4u;
    let ix0 = i32(ox0 * SW) - i32(p.pw);
    // Accumulators as matrices, not arrays: software adapters keep arrays indexed in loops in
    // memory, matrices in registers. Column c of a_q holds channel quad q of output column
    // ox0 + c.
    var a0 = mat4x4<f32>();
    var a1 = mat4x4<f32>();
    // Only the kernel rows that land inside the input: padding rows add nothing. (A SIMD group
    // of invocations spans one or two output rows, so it runs the longer of their ranges.)
    let top = i32(oy * SH) - i32(p.ph); // input row of kernel row 0
    let i_lo = u32(max(0, -top) + i32(DH) - 1) / DH;
    let i_hi = min(KH, u32(max(0, i32(p.h) - top) + i32(DH) - 1) / DH);
    for (var ic = 0u; ic < p.ic; ic++) {
        for (var i = i_lo; i < i_hi; i++) {
            let iy = top + i32(i * DH);
            let row_ok = true;
            let row = p.skip + ((img * p.ic + ic) * p.h + u32(iy)) * p.w;
            // Stride 1, dilation 1, KW <= 5: the row's eight input columns are loaded once and
            // shifted along by one per tap, in registers.
            var lo = vec4<f32>(0.0);
            var hi = vec4<f32>(0.0);
            if (WINDOW) {
                lo = vec4<f32>(tap(row, row_ok, ix0, p.w), tap(row, row_ok, ix0 + 1, p.w),
                               tap(row, row_ok, ix0 + 2, p.w), tap(row, row_ok, ix0 + 3, p.w));
                hi = vec4<f32>(tap(row, row_ok, ix0 + 4, p.w), tap(row, row_ok, ix0 + 5, p.w),
                               tap(row, row_ok, ix0 + 6, p.w), tap(row, row_ok, ix0 + 7, p.w));
            }
            for (var j = 0u; j < KW; j++) {
                var v = lo;
                if (WINDOW) {
                    lo = vec4<f32>(lo.yzw, hi.x);
                    hi = vec4<f32>(hi.yzw, 0.0);
                } else {
                    let ix = ix0 + i32(j * DW);
                    let s = i32(SW);
                    v = vec4<f32>(tap(row, row_ok, ix, p.w), tap(row, row_ok, ix + s, p.w),
                                  tap(row, row_ok, ix + 2 * s, p.w), tap(row, row_ok, ix + 3 * s, p.w));
                }
                let wb = ((ic * KH + i) * KW + j) * quads + q0;
                a0 += outer(wu[wb], v);
                if (NQ > 1u) { a1 += outer(wu[wb + 1u], v); }
            }
        }
    }
    store(p.n0 + img, oy, ox0, p.oc0 + 4u * q0, a0);
    if (NQ > 1u) { store(p.n0 + img, oy, ox0, p.oc0 + 4u * q0 + 4u, a1); }
}

// Writes one accumulator block: channels oc0..oc0+4 by columns ox0..ox0+4, inside the output;
// the bias is added by the first part, later parts add to what it wrote.
fn store(img: u32, oy: u32, ox0: u32, oc0: u32, a: mat4x4<f32>) {
    for (var e = 0u; e < 4u; e++) {
        let oc = oc0 + e;
        if (oc >= p.oc) { return; }
        var b = 0.0;
        if (p.has_bias != 0u) { b = bias[oc]; }
        let base = ((img * p.oc + oc) * p.oh + oy) * p.ow;
        for (var c = 0u; c < 4u; c++) {
            let o = base + ox0 + c;
            if (ox0 + c < p.ow) {
                var add = b;
                if (ACCUMULATE) { add = y[o]; }
                y[o] = a[c][e] + add;
            }
        }
    }
}

// Packs input channels ic0 .. ic0 + ic and output channels oc0 .. oc0 + ocp of w [OC, IC_ALL, KH, KW]
// (or, with FLIP, w [IC_ALL, OC, KH, KW] flipped in space) into [ic][KH][KW][ocp] with zeros past
// OC, for conv_direct's uniform buffer.
@group(0) @binding(0) var<storage, read> w_src: array<f32>;
@group(0) @binding(1) var<storage, read_write> w_packed: array<f32>;
@group(0) @binding(2) var<uniform> pp: Params;

@compute @workgroup_size(256)
fn pack_weights(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = gid.x;
    if (e >= pp.ic * KH * KW * pp.ocp) { return; }
    let oc = pp.oc0 + e % pp.ocp;
    let r = e / pp.ocp;
    let j = r % KW;
    let i = (r / KW) % KH;
    let ic = pp.ic0 + r / (KW * KH);
    var v = 0.0;
    if (oc < pp.oc) {
        if (FLIP) {
            v = w_src[((ic * pp.oc + oc) * KH + (KH - 1u - i)) * KW + (KW - 1u - j)];
        } else {
            v = w_src[((oc * pp.ic_all + ic) * KH + i) * KW + j];
        }
    }
    w_packed[e] = v;
}

// Weight gradient, the same correlation read the other way round:
//   dw[oc, ic, i, j] = sum over (img, oy, ox) of dy[img, oc, oy, ox] * x[img, ic, iy, ix],
//   iy = oy*SH + i*DH - ph, ix = ox*SW + j*DW - pw.
// Each invocation owns NQ quads of output channels by a quad of j (and TAIL more) for one (ic, i),
// and sums over the pixels of one chunk of the images its dispatch's windows hold, or of a part
// of their rows where a layer has too few invocations to share out otherwise (workgroup z); the
// caller adds the chunks' partial sums. Every invocation walks the same pixels in the same order,
// so each dy value is one gather of a single address; the more columns an invocation owns, the
// more products each such load serves. Along W at stride 1 and dilation 1 (WINDOW) the input
// columns slide by one per pixel in registers: a pixel costs one input load.
// With q.bias, each chunk's row of partial sums ends with the bias gradient's: the sum of dy over
// the chunk's pixels, which invocation 0 of each channel block adds up from the dy it loads anyway.
struct WgradParams {
    n: u32, ic: u32, h: u32, w: u32,
    oc: u32, oh: u32, ow: u32, ph: u32,
    pw: u32, jquads: u32, chunk: u32, chunk0: u32,
    skip: u32, dskip: u32, bias: u32, rparts: u32,
}

@group(0) @binding(1) var<uniform> dyu: array<vec4<f32>, 4096>; // window of dy [N, OC, OH, OW]
// [chunk][oc][ic][i][j], then (with q.bias) [oc] of the chunk's bias partial sums.
@group(0) @binding(2) var<storage, read_write> part: array<f32>;
@group(0) @binding(3) var<uniform> q: WgradParams;

// dy element e of the window for channel oc (zero past OC).
fn dy_at(e: u32, oc: u32) -> f32 {
    return select(0.0, dyu[e >> 2u][e & 3u], oc < q.oc);
}

// Channels oc0 .. oc0 + 4 of dy at window element e of channel oc0 (planes `plane` apart).
fn dy_quad(e: u32, plane: u32, oc0: u32) -> vec4<f32> {
    return vec4<f32>(dy_at(e, oc0), dy_at(e + plane, oc0 + 1u),
                     dy_at(e + 2u * plane, oc0 + 2u), dy_at(e + 3u * plane, oc0 + 3u));
}

@compute @workgroup_size(WX)
fn conv_wgrad(@builtin(global_invocation_id) gid: vec3<u32>,
              @builtin(workgroup_id) wid: vec3<u32>) {
    let l = gid.x;
    if (l >= q.ic * KH * q.jquads) { return; } // no barriers follow
    let jq = l % q.jquads;
    let i = (l / q.jquads) % KH;
    let ic = l / (q.jquads * KH);
    let oc0 = 4u * NQ * wid.y;
    let j0 = jq * 4u;
    let ix0 = i32(j0 * DW) - i32(q.pw);
    let plane = q.oh * q.ow;
    var a0 = mat4x4<f32>(); // column c: channels oc0 .. oc0 + 4 for j = j0 + c
    var a1 = mat4x4<f32>();
    var s0 = vec4<f32>(); // sums of dy for channels oc0 .. oc0 + 4 (the bias gradient)
    var s1 = vec4<f32>();
    var t0 = mat4x4<f32>(); // column c: channels oc0 .. oc0 + 4 for j = j0 + 4 + c, c < TAIL
    var t1 = mat4x4<f32>();
    // Workgroup z: a chunk of images by a part of their output rows.
    let rp = wid.z % q.rparts;
    let cz = wid.z / q.rparts;
    let img_end = min(q.n, (cz + 1u) * q.chunk);
    let oy_end = (rp + 1u) * q.oh / q.rparts;
    for (var img = cz * q.chunk; img < img_end; img++) {
        let dimg = q.dskip + (img * q.oc + oc0) * plane;
        for (var oy = rp * q.oh / q.rparts; oy < oy_end; oy++) {
            let iy = i32(oy * SH + i * DH) - i32(q.ph);
            let row_ok = iy >= 0 && iy < i32(q.h);
            let row = q.skip + ((img * q.ic + ic) * q.h + u32(clamp(iy, 0, i32(q.h) - 1))) * q.w;
            var win = vec4<f32>(0.0);
            var tl = vec4<f32>(0.0); // the TAIL columns after win, then zeros
            if (WINDOW) {
                win = vec4<f32>(tap(row, row_ok, ix0, q.w), tap(row, row_ok, ix0 + 1, q.w),
                                tap(row, row_ok, ix0 + 2, q.w), tap(row, row_ok, ix0 + 3, q.w));
                for (var c = 0u; c < TAIL; c++) {
                    tl[c] = tap(row, row_ok, ix0 + 4 + i32(c), q.w);
                }
            }
            for (var ox = 0u; ox < q.ow; ox++) {
                var v = win;
                let t = tl;
                let ix = ix0 + i32(ox * SW);
                if (WINDOW) {
                    // The next column goes in after the tail, and all of it slides by one.
                    tl[TAIL] = tap(row, row_ok, ix + 4 + i32(TAIL), q.w);
                    win = vec4<f32>(win.yzw, tl.x);
                    tl = vec4<f32>(tl.yzw, 0.0);
                } else {
                    let d = i32(DW);
                    v = vec4<f32>(tap(row, row_ok, ix, q.w), tap(row, row_ok, ix + d, q.w),
                                  tap(row, row_ok, ix + 2 * d, q.w),
                                  tap(row, row_ok, ix + 3 * d, q.w));
                }
                let e = dimg + oy * q.ow + ox;
                let d0 = dy_quad(e, plane, oc0);
                a0 += outer(d0, v);
                s0 += d0;
                for (var c = 0u; c < TAIL; c++) { t0[c] += d0 * t[c]; }
                if (NQ > 1u) {
                    let d1 = dy_quad(e + 4u * plane, plane, oc0 + 4u);
                    a1 += outer(d1, v);
                    s1 += d1;
                    for (var c = 0u; c < TAIL; c++) { t1[c] += d1 * t[c]; }
                }
            }
        }
    }
    let chunk = q.chunk0 + wid.z;
    store_wgrad(chunk, ic, i, j0, oc0, a0);
    if (NQ > 1u) { store_wgrad(chunk, ic, i, j0, oc0 + 4u, a1); }
    if (TAIL > 0u) {
        store_wgrad(chunk, ic, i, j0 + 4u, oc0, t0);
        if (NQ > 1u) { store_wgrad(chunk, ic, i, j0 + 4u, oc0 + 4u, t1); }
    }
    // Every invocation walks all of the chunk's dy pixels; the first stores their sums.
    if (q.bias != 0u && l == 0u) {
        store_bias(chunk, oc0, s0);
        if (NQ > 1u) { store_bias(chunk, oc0 + 4u, s1); }
    }
}

// Elements in a chunk's row of partial sums.
fn wgrad_row() -> u32 {
    return q.oc * (q.ic * KH * KW + q.bias);
}

fn store_bias(chunk: u32, oc0: u32, s: vec4<f32>) {
    for (var e = 0u; e < 4u; e++) {
        let oc = oc0 + e;
        if (oc >= q.oc) { return; }
        part[chunk * wgrad_row() + q.oc * q.ic * KH * KW + oc] = s[e];
    }
}

// Writes one block of a chunk's partial sums inside the weight's shape.
fn store_wgrad(chunk: u32, ic: u32, i: u32, j0: u32, oc0: u32, a: mat4x4<f32>) {
    for (var e = 0u; e < 4u; e++) {
        let oc = oc0 + e;
        if (oc >= q.oc) { return; }
        let base = chunk * wgrad_row() + ((oc * q.ic + ic) * KH + i) * KW;
        for (var c = 0u; c < 4u; c++) {
            if (j0 + c < KW) { part[base + j0 + c] = a[c][e]; }
        }
    }
}
