// int8 matmul with packed 4 x 8-bit dot products and i32 accumulation:
//   acc[n, m] = sum_k x[n, k] * w[m, k]   (x: [N, K] activations, w: [M, K] weights, both int8)
// Operands are packed along K, four int8 per u32 (element 4j+i in bits 8i..8i+7), K padded to a
// multiple of 4 with zeros. matmul_i8 writes the exact i32 sums; matmul_i8_dequant writes
//   y[n, m] = acc * x_scale * w_scale[m] + bias[m]   (per-tensor activation scale, per-channel weights).

const WG: u32 = 64u;

struct Params {
    n: u32,
    m: u32,
    k4: u32,
    x_scale: f32,
}

@group(0) @binding(0) var<storage, read> x: array<u32>;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> w_scale: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> acc_out: array<i32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<uniform> p: Params;

fn dot_row(n: u32, m: u32) -> i32 {
    var acc = 0;
    for (var j = 0u; j < p.k4; j++) {
        acc += dot4I8Packed(x[n * p.k4 + j], w[m * p.k4 + j]);
    }
    return acc;
}

@compute @workgroup_size(WG)
fn matmul_i8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let e = (wid.x + wid.y * nwg.x) * WG + lid;
    if (e >= p.n * p.m) { return; }
    acc_out[e] = dot_row(e / p.m, e % p.m);
}

@compute @workgroup_size(WG)
fn matmul_i8_dequant(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let e = (wid.x + wid.y * nwg.x) * WG + lid;
    if (e >= p.n * p.m) { return; }
    let m = e % p.m;
    y[e] = f32(dot_row(e / p.m, m)) * p.x_scale * w_scale[m] + bias[m];
}
