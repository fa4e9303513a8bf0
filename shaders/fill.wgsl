// fill: out[i] = value for i < n; iota: out[i] = i (device tests, buffer clears);
// copy: out[i] = src[i] for i < n (into a longer buffer: staging a small operand).
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
