// fill: out[i] = value for i < n (fill4: the same over quads); iota: out[i] = i (device tests,
// buffer clears); copy: out[i] = src[i] for i < n (into a longer buffer: staging a small operand).
// Bindings: outputs, then the parameter block.

struct Params {
    n: u32,
    value: f32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<storage, read_write> out: array<f32>;
@group(0) @binding(1) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> src: array<f32>;

@compute @workgroup_size(WG)
fn fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    // The last workgroup (and split dispatches) may overhang the buffer.
    if (i >= p.n) { return; }
    out[i] = p.value;
}

@compute @workgroup_size(WG)
fn iota(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= p.n) { return; }
    out[i] = f32(i);
}

@compute @workgroup_size(WG)
fn copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= p.n) { return; }
    out[i] = src[i];
}

// fill over quads (ops::fill takes it where the buffer is Buffer::quad_aligned): the last quad
// keeps its elements at n and past, which may belong to a view of something else.
@group(0) @binding(0) var<storage, read_write> out4: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn fill4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let q = (wid.x + wid.y * nwg.x) * WG + lid;
    if (q * 4u >= p.n) { return; }
    if (q * 4u + 4u <= p.n) {
        out4[q] = vec4<f32>(p.value);
    } else {
        let lanes = vec4<u32>(0u, 1u, 2u, 3u) + q * 4u;
        out4[q] = select(out4[q], vec4<f32>(p.value), lanes < vec4<u32>(p.n));
    }
}
