// layer_norm's parameter gradients over x: [rows, cols], from the (mean, rstd) per row that the
// forward (a row kernel, parts/rows.wgsl) kept in `stats`, xhat = (x - mean) * rstd:
//   dgamma = sum over rows of dy * xhat, dbeta = sum over rows of dy (one invocation per column,
//   rows added in order: the same result on every run); or in two passes where there are many
//   rows: layer_norm_backward_params_blocks sums blocks of RB rows into partials [blocks, cols],
//   which a reduction then adds, again in a fixed order.

const WG: u32 = 256u;

struct Params {
    rows: u32,
    cols: u32,
    eps: f32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> stats: array<f32>; // [rows, 2]: mean, rstd
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> out2: array<f32>;
@group(0) @binding(7) var<uniform> p: Params;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn layer_norm_backward_params(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                              @builtin(local_invocation_index) lid: u32) {
    let j = index(wid, nwg, lid);
    if (j >= p.cols) { return; }
    var dg = 0.0;
    var db = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        let v = dy[r * p.cols + j];
        dg += v * (x[r * p.cols + j] - stats[2u * r]) * stats[2u * r + 1u];
        db += v;
    }
    out[j] = dg;
    out2[j] = db;
}

override RB: u32 = 256u; // rows per block of layer_norm_backward_params_blocks

@compute @workgroup_size(WG)
fn layer_norm_backward_params_blocks(@builtin(workgroup_id) wid: vec3<u32>,
                                     @builtin(local_invocation_index) lid: u32) {
    let j = wid.x * WG + lid;
    if (j >= p.cols) { return; } // no barriers follow
    let blk = wid.y;
    var dg = 0.0;
    var db = 0.0;
    for (var r = blk * RB; r < min(p.rows, (blk + 1u) * RB); r++) {
        let v = dy[r * p.cols + j];
        dg += v * (x[r * p.cols + j] - stats[2u * r]) * stats[2u * r + 1u];
        db += v;
    }
    out[blk * p.cols + j] = dg;
    out2[blk * p.cols + j] = db;
}
