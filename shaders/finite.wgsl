// Non-finite detection for training runs: one dispatch per tensor counts its NaN and infinite
// elements and keeps the lowest such index, in slot `p.slot` of a shared u32 flag buffer, so one
// small readback tells which of many tensors went bad and where.
//   finite_check: x: [n] f32; flags: [2 * slots] u32 = (count, first index) per slot. Counts
//                 accumulate across dispatches; the host starts them at (0, 0xffffffff).

struct Params {
    n: u32,
    slot: u32,
}

const WG: u32 = 256u;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> flags: array<atomic<u32>>;
@group(0) @binding(2) var<uniform> p: Params;

// Exponent bits all set: infinity or NaN (a bit test, which fast-math cannot fold away).
fn non_finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u;
}

@compute @workgroup_size(WG)
fn finite_check(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    // The last workgroup (and split dispatches) may overhang the tensor.
    if (i >= p.n) { return; }
    // Finite elements, nearly all of them, only read: the atomics run for the bad ones alone.
    if (non_finite(x[i])) {
        atomicAdd(&flags[2u * p.slot], 1u);
        atomicMin(&flags[2u * p.slot + 1u], i);
    }
}
