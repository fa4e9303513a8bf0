// layer_norm over the last axis of x: [rows, cols], with gamma and beta: [cols]:
//   y = (x - mean) * rstd * gamma + beta, rstd = 1 / sqrt(var + eps) (biased variance, as PyTorch)
// The forward keeps (mean, rstd) per row in `stats` for the backward:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma, xhat = (x - mean) * rstd
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
@group(0) @binding(1) var<storage, read> gamma: array<f32>;
@group(0) @binding(2) var<storage, read> beta: array<f32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> stats: array<f32>; // [rows, 2]: mean, rstd
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> out2: array<f32>;
@group(0) @binding(7) var<uniform> p: Params;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn layer_norm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let r = index(wid, nwg, lid);
    if (r >= p.rows) { return; }
    let base = r * p.cols;
    var mean = 0.0;
    for (var j = 0u; j < p.cols; j++) { mean += x[base + j]; }
    mean = mean / f32(p.cols);
    var var_ = 0.0;
    for (var j = 0u; j < p.cols; j++) { let d = x[base + j] - mean; var_ += d * d; }
    let rstd = inverseSqrt(var_ / f32(p.cols) + p.eps);
    for (var j = 0u; j < p.cols; j++) {
        out[base + j] = (x[base + j] - mean) * rstd * gamma[j] + beta[j];
    }
    stats[2u * r] = mean;
    stats[2u * r + 1u] = rstd;
}

@compute @workgroup_size(WG)
fn layer_norm_backward_input(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let r = index(wid, nwg, lid);
    if (r >= p.rows) { return; }
    let base = r * p.cols;
    let mean = stats[2u * r];
    let rstd = stats[2u * r + 1u];
    var mg = 0.0;
    var mgx = 0.0;
    for (var j = 0u; j < p.cols; j++) {
        let g = dy[base + j] * gamma[j];
        mg += g;
        mgx += g * (x[base + j] - mean) * rstd;
    }
    mg = mg / f32(p.cols);
    mgx = mgx / f32(p.cols);
    for (var j = 0u; j < p.cols; j++) {
        let xhat = (x[base + j] - mean) * rstd;
        out[base + j] = rstd * (dy[base + j] * gamma[j] - mg - xhat * mgx);
    }
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
