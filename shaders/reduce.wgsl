// Reductions along one axis of x viewed as [outer, len, inner]: out[o, i] = R_j x[o, j, i].
// OP: SUM, MEAN, MAX or ABS_MAX (max of absolute values), below. argmax writes the index of the first
// maximum.
// `reduce` uses one invocation per output (good when outer*inner is large), `reduce4` four;
// `reduce_wide` uses one workgroup per output with a tree in shared memory (long rows, few outputs).
// `reduce_blocks` is the first pass of a two-pass reduction (many rows, few outputs: bias and
// abs-max gradients): each workgroup reduces a block of RB rows for TC columns into one partial
// per column, out[o, block, i]; `reduce` then combines the blocks' partials.
// All add in a fixed order, so results are the same on every run.

const SUM: u32 = 0u;
const MEAN: u32 = 1u;
const MAX: u32 = 2u;
const ABS_MAX: u32 = 3u;
override OP: u32 = SUM;
const WG: u32 = 256u;

struct Params {
    outer: u32,
    len: u32,
    inner: u32,
    blocks: u32, // reduce_blocks: blocks of RB rows
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<storage, read_write> idx: array<i32>;
@group(0) @binding(3) var<uniform> p: Params;

// On quads, so that reduce4 shares them; the one-output kernels use lane x.
fn combine(acc: vec4<f32>, v: vec4<f32>) -> vec4<f32> {
    if (OP == MAX) { return max(acc, v); }
    if (OP == ABS_MAX) { return max(acc, abs(v)); }
    return acc + v;
}

fn init() -> vec4<f32> {
    if (OP == MAX) { return vec4<f32>(-3.402823e38); }
    return vec4<f32>(0.0);
}

fn finish(acc: vec4<f32>) -> vec4<f32> {
    if (OP == MEAN) { return acc / f32(p.len); }
    return acc;
}

@compute @workgroup_size(WG)
fn reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let o = (wid.x + wid.y * nwg.x) * WG + lid;
    if (o >= p.outer * p.inner) { return; }
    let base = (o / p.inner) * p.len * p.inner + o % p.inner;
    var acc = init();
    for (var j = 0u; j < p.len; j++) {
        acc = combine(acc, vec4<f32>(x[base + j * p.inner]));
    }
    out[o] = finish(acc).x;
}

@compute @workgroup_size(WG)
fn argmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let o = (wid.x + wid.y * nwg.x) * WG + lid;
    if (o >= p.outer * p.inner) { return; }
    let base = (o / p.inner) * p.len * p.inner + o % p.inner;
    var best = x[base];
    var at = 0u;
    for (var j = 1u; j < p.len; j++) {
        let v = x[base + j * p.inner];
        if (v > best) { best = v; at = j; }
    }
    out[o] = best;
    idx[o] = i32(at);
}

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn reduce_wide(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    // Uniform across the workgroup, so the early return keeps barriers in uniform control flow.
    let o = wid.x + wid.y * nwg.x;
    if (o >= p.outer * p.inner) { return; }
    let base = (o / p.inner) * p.len * p.inner + o % p.inner;
    var acc = init();
    for (var j = lid; j < p.len; j += WG) {
        acc = combine(acc, vec4<f32>(x[base + j * p.inner]));
    }
    partial[lid] = acc.x;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            partial[lid] = combine(vec4<f32>(partial[lid]), vec4<f32>(partial[lid + s])).x;
        }
        workgroupBarrier();
    }
    if (lid == 0u) { out[o] = finish(vec4<f32>(partial[0])).x; }
}

// Four neighbouring outputs per invocation, loaded and stored as vec4s, where inner is a multiple
// of 4 (so the four share their outer index and no quad overhangs a row) and ops::reduce finds
// both buffers Buffer::quad_aligned: a software adapter runs it about three times as fast.
@group(0) @binding(0) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> out4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn reduce4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let q = (wid.x + wid.y * nwg.x) * WG + lid;
    let o = q * 4u;
    if (o >= p.outer * p.inner) { return; }
    let base = ((o / p.inner) * p.len * p.inner + o % p.inner) / 4u;
    let step = p.inner / 4u;
    var acc = init();
    for (var j = 0u; j < p.len; j++) {
        acc = combine(acc, x4[base + j * step]);
    }
    out4[q] = finish(acc);
}

// The gradient of a sum (OP SUM) or mean (OP MEAN): dx[o, j, i] = dy[o, i] (/ len for the
// mean), every element of x's [outer, len, inner] view in one pass. x is dy here; out is dx.
@compute @workgroup_size(WG)
fn reduce_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let e = (wid.x + wid.y * nwg.x) * WG + lid;
    if (e >= p.outer * p.len * p.inner) { return; }
    let o = e / (p.len * p.inner);
    let i = e % p.inner;
    out[e] = finish(vec4<f32>(x[o * p.inner + i])).x;
}

override TC: u32 = 256u; // reduce_blocks: columns per workgroup (a power of two up to WG)
override RB: u32 = 256u; // reduce_blocks: rows per block
override TR: u32 = WG / TC; // invocations per column

@compute @workgroup_size(WG)
fn reduce_blocks(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let col = wid.x * TC + lid % TC;
    let lane = lid / TC;
    let blk = wid.y;
    let o = wid.z;
    var acc = init();
    if (col < p.inner) {
        let end = min(p.len, (blk + 1u) * RB);
        for (var r = blk * RB + lane; r < end; r += TR) {
            acc = combine(acc, vec4<f32>(x[(o * p.len + r) * p.inner + col]));
        }
    }
    partial[lid] = acc.x;
    workgroupBarrier();
    for (var s = TR / 2u; s > 0u; s = s / 2u) {
        if (lane < s) {
            partial[lid] = combine(vec4<f32>(partial[lid]), vec4<f32>(partial[lid + s * TC])).x;
        }
        workgroupBarrier();
    }
    if (lane == 0u && col < p.inner) { out[(o * p.blocks + blk) * p.inner + col] = partial[lid]; }
}
