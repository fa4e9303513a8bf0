// Attention masks in the additive form softmax takes: out[i] = value where m[i] != 0, else 0.
//   m: [n] i32 (PyTorch's boolean masks, True = not allowed), out: [n] f32
// A finite value (-1e30) rather than -inf keeps a fully masked row finite (a uniform average)
// and lets two masks add without overflow, while exp(-1e30 - max) is still exactly 0.

const WG: u32 = 256u;

struct Params {
    n: u32,
    value: f32,
}

@group(0) @binding(0) var<storage, read> m: array<i32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn additive_mask(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    // The last workgroup runs past n.
    if (i >= p.n) { return; }
    out[i] = select(0.0, p.value, m[i] != 0);
}
