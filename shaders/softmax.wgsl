// Row-wise softmax family over x: [rows, cols] (last axis), numerically stable (max subtracted).
//   softmax:          OP 0 y = softmax(x), OP 1 y = log_softmax(x)
//   softmax_backward: OP 0 dx = y * (dy - sum(dy * y)), OP 1 dx = dy - exp(y) * sum(dy)
//   xent_forward:     cross-entropy from logits and i32 labels, one workgroup: loss[0] = mean over the
//                     rows whose label is not ignore_index, loss[1] = that count; grad = softmax - onehot
//                     (unscaled; zero rows for ignored labels). A label outside [0, cols) gives NaN.
//   xent_backward:    dx = grad * dloss / count

override OP: u32 = 0u;
const WG: u32 = 256u;

struct Params {
    rows: u32,
    cols: u32,
    ignore_index: i32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> labels: array<i32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> loss: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

fn row_max(base: u32) -> f32 {
    var m = -3.402823e38;
    for (var j = 0u; j < p.cols; j++) { m = max(m, x[base + j]); }
    return m;
}

fn row_sum_exp(base: u32, m: f32) -> f32 {
    var s = 0.0;
    for (var j = 0u; j < p.cols; j++) { s += exp(x[base + j] - m); }
    return s;
}

@compute @workgroup_size(WG)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let r = (wid.x + wid.y * nwg.x) * WG + lid;
    if (r >= p.rows) { return; }
    let base = r * p.cols;
    let m = row_max(base);
    let s = row_sum_exp(base, m);
    let ls = log(s);
    for (var j = 0u; j < p.cols; j++) {
        let z = x[base + j] - m;
        if (OP == 0u) { out[base + j] = exp(z) / s; } else { out[base + j] = z - ls; }
    }
}

@compute @workgroup_size(WG)
fn softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let r = (wid.x + wid.y * nwg.x) * WG + lid;
    if (r >= p.rows) { return; }
    let base = r * p.cols;
    var s = 0.0;
    for (var j = 0u; j < p.cols; j++) {
        if (OP == 0u) { s += dy[base + j] * x[base + j]; } else { s += dy[base + j]; }
    }
    for (var j = 0u; j < p.cols; j++) {
        let yj = x[base + j];
        if (OP == 0u) { out[base + j] = yj * (dy[base + j] - s); }
        else { out[base + j] = dy[base + j] - exp(yj) * s; }
    }
}

var<workgroup> part_loss: array<f32, WG>;
var<workgroup> part_count: array<f32, WG>;

@compute @workgroup_size(WG)
fn xent_forward(@builtin(local_invocation_index) lid: u32) {
    var l = 0.0;
    var cnt = 0.0;
    for (var r = lid; r < p.rows; r += WG) {
        let base = r * p.cols;
        let label = labels[r];
        if (label == p.ignore_index) {
            for (var j = 0u; j < p.cols; j++) { out[base + j] = 0.0; }
            continue;
        }
        let m = row_max(base);
        let s = row_sum_exp(base, m);
        if (label < 0 || u32(label) >= p.cols) {
            // Out-of-range labels poison the loss instead of reading out of bounds. The NaN is
            // made from a run-time value: as a const-expression it would be a creation error.
            l += bitcast<f32>(0x7fc00000u | (p.rows & 0u));
            cnt += 1.0;
            continue;
        }
        for (var j = 0u; j < p.cols; j++) {
            out[base + j] = exp(x[base + j] - m) / s - select(0.0, 1.0, j == u32(label));
        }
        l += log(s) - (x[base + u32(label)] - m);
        cnt += 1.0;
    }
    part_loss[lid] = l;
    part_count[lid] = cnt;
    workgroupBarrier();
    for (var h = WG / 2u; h > 0u; h = h / 2u) {
        if (lid < h) {
            part_loss[lid] += part_loss[lid + h];
            part_count[lid] += part_count[lid + h];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let c = part_count[0];
        loss[0] = select(0.0, part_loss[0] / c, c > 0.0);
        loss[1] = c;
    }
}

@compute @workgroup_size(WG)
fn xent_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    if (i >= p.rows * p.cols) { return; }
    // x holds the unscaled gradient; dy[0] is the upstream gradient of the mean loss.
    let c = max(loss[1], 1.0);
    out[i] = x[i] * dy[0] / c;
}
