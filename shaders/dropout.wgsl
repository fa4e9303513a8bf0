// Dropout with a counter-based generator (Philox4x32-10): element i of a step keeps its value
// when philox((i, offset, 0, 0), seed).x >= threshold (threshold = p * 2^32), scaled by 1/(1-p).
// The seed and offset are read from a small buffer the host rewrites between steps, so a recorded
// step draws a new mask on every replay, and the backward pass (the same kernel applied to dy)
// reproduces the forward's mask from (seed, offset, i) without storing it.

const WG: u32 = 256u;

struct Params {
    n: u32,
    threshold: u32,
    scale: f32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
// [seed_lo, seed_hi, offset]: uniform, as every invocation reads the same three words (a software
// adapter loads a storage buffer's words once per invocation, a uniform buffer's once per group).
@group(0) @binding(1) var<uniform> rng: vec4<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

// High and low 32 bits of a 32 x 32-bit product (WGSL has no 64-bit integers).
fn mul_wide(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    let hi = p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
    return vec2<u32>(hi, a * b);
}

fn philox(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = counter;
    var k = key;
    for (var r = 0u; r < 10u; r++) {
        let m0 = mul_wide(0xD2511F53u, c.x);
        let m1 = mul_wide(0xCD9E8D57u, c.z);
        c = vec4<u32>(m1.x ^ c.y ^ k.x, m1.y, m0.x ^ c.w ^ k.y, m0.y);
        k = k + vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
    }
    return c;
}

@compute @workgroup_size(WG)
fn dropout(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= p.n) { return; }
    let bits = philox(vec4<u32>(i, rng.z, 0u, 0u), rng.xy).x;
    out[i] = select(0.0, x[i] * p.scale, bits >= p.threshold);
}
