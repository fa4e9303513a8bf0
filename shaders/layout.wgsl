// Strided copy: out[off_out + sum c_d * so_d] = x[off_in + sum c_d * si_d] over every coordinate c
// of `shape` (8 dims at most). Transpose, permute, slice, concat (copy into a slice of out),
// broadcast (stride 0) and contiguous copies are all this one kernel.

const WG: u32 = 256u;

struct Params {
    n: u32,
    ndim: u32,
    off_in: u32,
    off_out: u32,
    shape: array<vec4<u32>, 2>,
    in_strides: array<vec4<u32>, 2>,
    out_strides: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

// ACCUMULATE: add into out instead (a slice's gradient into the whole's, in place).
override ACCUMULATE: bool = false;

// The offsets in x and in out of element i of `shape` (row-major).
fn offsets(i: u32) -> vec2<u32> {
    var rem = i;
    var si = p.off_in;
    var so = p.off_out;
    for (var d = i32(p.ndim) - 1; d >= 0; d--) {
        let du = u32(d);
        let extent = p.shape[du / 4u][du % 4u];
        let c = rem % extent;
        rem = rem / extent;
        si += c * p.in_strides[du / 4u][du % 4u];
        so += c * p.out_strides[du / 4u][du % 4u];
    }
    return vec2<u32>(si, so);
}

@compute @workgroup_size(WG)
fn strided_copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= p.n) { return; }
    let o = offsets(i);
    var v = x[o.x];
    if (ACCUMULATE) { v += out[o.y]; }
    out[o.y] = v;
}

// Four elements along the innermost axis per invocation, as vec4s, where ops::layout finds that
// axis contiguous in both and a multiple of 4 long, every other stride and both offsets
// multiples of 4, and both buffers Buffer::quad_aligned: one index computation and one load and
// store serve four elements.
@group(0) @binding(0) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> out4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn strided_copy4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let q = (wid.x + wid.y * nwg.x) * WG + lid;
    if (q * 4u >= p.n) { return; }
    let o = offsets(q * 4u) / 4u;
    var v = x4[o.x];
    if (ACCUMULATE) { v += out4[o.y]; }
    out4[o.y] = v;
}
