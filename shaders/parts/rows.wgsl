// Row kernels over x: [rows, cols] (the last axis): softmax and log_softmax with their backward,
// layer norm's forward and input gradient, and cross-entropy from logits (a loss and a
// log-sum-exp per row, their mean in a second pass in a fixed order, and the logits' gradient
// recomputed from the logits and the log-sum-exp, so probabilities are never stored).
//
// LPR adjacent lanes share a row (a power of two from 1 to WG), so a workgroup holds WG / LPR
// rows: short rows several to a workgroup, long ones a subgroup or a workgroup each. Each lane
// strides over its row by LPR elements (vec4s in the entry points ending in 4, for rows of a
// multiple of 4), so neighbouring lanes read neighbouring words. Every lane runs the same number
// of loop steps (the row's tail is masked, rows past the end read the last row and store
// nothing), so the reductions (row_sum, row_max_sum: included after this part, through
// workgroup memory or subgroup shuffles) are reached in uniform control flow.
//
//   softmax:                   OP 0 y = softmax(x), OP 1 y = log_softmax(x)
//   softmax_backward:          OP 0 dx = y * (dy - sum(dy * y)), OP 1 dx = dy - exp(y) * sum(dy)
//                              (x holds y)
//   layer_norm_forward:        y = (x - mean) * rstd * gamma + beta, rstd = 1 / sqrt(var + eps)
//                              (biased variance, as PyTorch); stats[r] = (mean, rstd)
//   layer_norm_backward_input: dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma
//   xent_rows:                 logits x with rows `stride` apart, of which the first `cols`
//                              count; label l = labels[r]: stats[r] = (lse - x[l], lse),
//                              lse = log(sum(exp(x))); (0, lse) where l is ignore_index; NaN
//                              where l is outside [0, cols)
//   xent_mean:                 one workgroup, LPR = WG: loss = (mean of stats[r].x over the rows
//                              not ignored, their count), rows added in a fixed order
//   xent_backward:             dx = (exp(x - lse) - onehot(l)) * dloss / count, dloss = dy[0];
//                              zero on ignored rows and on the padding columns [cols, stride)

override LPR: u32 = 32u;
override OP: u32 = 0u;
const WG: u32 = 256u;
// The running maximum's start: finite, so that combining two empty lanes gives 0, not NaN.
const NEG: f32 = -3.402823e38;

struct Params {
    rows: u32,
    cols: u32,
    stride: u32,
    ignore_index: i32,
    eps: f32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read> labels: array<i32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
@group(0) @binding(6) var<storage, read_write> stats: array<vec2<f32>>;
@group(0) @binding(7) var<storage, read_write> loss: array<f32>;
@group(0) @binding(8) var<uniform> p: Params;

// The same buffers seen as vec4s, for the entry points ending in 4.
@group(0) @binding(0) var<storage, read> x4: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> dy4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> gamma4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> beta4: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> out4: array<vec4<f32>>;

// The row this lane works on (may be past the last row: callers mask their stores).
fn row_slot(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * (WG / LPR) + lid / LPR;
}

// Loop steps that cover n items with LPR lanes.
fn steps(n: u32) -> u32 {
    return (n + LPR - 1u) / LPR;
}

// Four of the row's elements LPR apart from column j (NEG past `cols`): a lane's next four
// loads, issued together so that four are in flight, then folded in with one push4.
fn gather4(base: u32, j: u32, cols: u32) -> vec4<f32> {
    let last = cols - 1u;
    return vec4<f32>(select(NEG, x[base + min(j, last)], j < cols),
                     select(NEG, x[base + min(j + LPR, last)], j + LPR < cols),
                     select(NEG, x[base + min(j + 2u * LPR, last)], j + 2u * LPR < cols),
                     select(NEG, x[base + min(j + 3u * LPR, last)], j + 3u * LPR < cols));
}

// ... with four more: one rescale of the running sum per four values.
fn push4(ms: vec2<f32>, v: vec4<f32>) -> vec2<f32> {
    let m = max(ms.x, max(max(v.x, v.y), max(v.z, v.w)));
    let e = exp(v - vec4<f32>(m));
    return vec2<f32>(m, ms.y * exp(ms.x - m) + ((e.x + e.y) + (e.z + e.w)));
}

@compute @workgroup_size(WG)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let r = row_slot(wid, nwg, lid);
    let base = min(r, p.rows - 1u) * p.cols;
    let lane = lid % LPR;
    let n = steps(p.cols);
    var ms = vec2<f32>(NEG, 0.0);
    for (var i = 0u; i < (n + 3u) / 4u; i++) {
        ms = push4(ms, gather4(base, i * 4u * LPR + lane, p.cols));
    }
    ms = row_max_sum(ms, lid);
    if (r >= p.rows) { return; } // no barrier follows
    let ls = log(ms.y);
    let inv = 1.0 / ms.y;
    for (var i = 0u; i < n; i++) {
        let j = i * LPR + lane;
        if (j < p.cols) {
            let z = x[base + j] - ms.x;
            if (OP == 0u) { out[base + j] = exp(z) * inv; } else { out[base + j] = z - ls; }
        }
    }
}

@compute @workgroup_size(WG)
fn softmax4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let r = row_slot(wid, nwg, lid);
    let c4 = p.cols / 4u;
    let base = min(r, p.rows - 1u) * c4;
    let lane = lid % LPR;
    let n = steps(c4);
    var ms = vec2<f32>(NEG, 0.0);
    for (var i = 0u; i < n; i++) {
        let j = i * LPR + lane;
        if (j < c4) { ms = push4(ms, x4[base + j]); }
    }
    ms = row_max_sum(ms, lid);
    if (r >= p.rows) { return; } // no barrier follows
    let ls = log(ms.y);
    let inv = 1.0 / ms.y;
    for (var i = 0u; i < n; i++) {
        let j = i * LPR + lane;
        if (j < c4) {
            let z = x4[base + j] - vec4<f32>(ms.x);
            if (OP == 0u) { out4[base + j] = exp(z) * inv; } else { out4[base + j] = z - vec4<f32>(ls); }
        }
    }
}

@compute @workgroup_size(WG)
fn softmax_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let r = row_slot(wid, nwg, lid);
    let base = min(r, p.rows - 1u) * p.cols;
    let lane = lid % LPR;
    let n = steps(p.cols);
    var s = vec2<f32>(0.0);
    for (var i = 0u; i < n; i++) {
        let j = i * LPR + lane;
        if (j < p.cols) {
            if (OP == 0u) { s.x += dy[base + j] * x[base + j]; } else { s.x += dy[base + j]; }
        }
    }
    let t = row_sum(s, lid).x;
    if (r >= p.rows) { return; } // no barrier follows
    for (var i = 0u; i < n; i++) {
        let j = i * LPR + lane;
        if (j < p.cols) {
            let y = x[base + j];
            if (OP == 0u) { out[base + j] = y * (dy[base + j] - t); }
            else { out[base + j] = dy[base + j] - exp(y) * t; }
        }
    }
}

@compute @workgroup_size(WG)
fn softmax_backward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let r = row_slot(wid, nwg, lid);
    let c4 = p.cols / 4u;
    let base = min(r, p.rows - 1u) * c4;
    let lane = lid % LPR;
    let n = steps(c4);
    var s = vec2<f32>(0.0);
    for (var i = 0u; i < n; i++) {
        let j = i * LPR + lane;
        if (j < c4) {
            let g = dy4[base + j];
            if (OP == 0u) { s.x += dot(g, x4[base + j]); } else { s.x += (g.x + g.y) + (g.z + g.w); }
        }
    }
    let t = row_sum(s, lid).x;
    if (r >= p.rows) { return; } // no barrier follows
    for (var i = 0u; i < n; i++) {
        let j = i * LPR + lane;
        if (j < c4) {
            let y = x4[base + j];
            if (OP == 0u) { out4[base + j] = y * (dy4[base + j] - vec4<f32>(t)); }
            else { out4[base + j] = dy4[base + j] - exp(y) * t; }
        }
    }
}

@compute @workgroup_size(WG)
fn layer_norm_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let r = row_slot(wid, nwg, lid);
    let base = min(r, p.rows - 1u) * p.cols;
    let lane = lid % LPR;
    let n = steps(p.cols);
    var s = vec2<f32>(0.0);
    for (var i = 0u; i < n; i++) {
        let j = i * LPR + lane;
        if (j < p.cols) { s.x += x[base + j]; }
    }
    let mean = row_sum(s, lid).x / f32(p.cols);
    // The variance from the deviations (a second read of the row, from cache), not from the
    // sum of squares, which cancels badly when the mean is large.
    var v = vec2<f32>(0.0);
    for (var i = 0u; i < n; i++) {
        let j = i * LPR + lane;
        if (j < p.cols) { let d = x[base + j] - mean; v.x += d * d; }
    }
    let rstd = inverseSqrt(row_sum(v, lid).x / f32(p.cols) + p.eps);
    if (r >= p.rows) { return; } // no barrier follows
    for (var i = 0u; i < n; i++) {
        let j = i * LPR + lane;
        if (j < p.cols) { out[base + j] = (x[base + j] - mean) * rstd * gamma[j] + beta[j]; }
    }
    if (lane == 0u) { stats[r] = vec2<f32>(mean, rstd); }
}

@compute @workgroup_size(WG)
fn layer_norm_forward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let r = row_slot(wid, nwg, lid);
    let c4 = p.cols / 4u;
    let base = min(r, p.rows - 1u) * c4;
    let lane = lid % LPR;
    let n = steps(c4);
    var s = vec2<f32>(0.0);
    for (var i = 0u; i < n; i++) {
        let j = i * LPR + lane;
        if (j < c4) { let v = x4[base + j]; s.x += (v.x + v.y) + (v.z + v.w); }
    }
    let mean = row_sum(s, lid).x / f32(p.cols);
    var q = vec2<f32>(0.0);
    for (var i = 0u; i < n; i++) {
        let j = i * LPR + lane;
        if (j < c4) { let d = x4[base + j] - vec4<f32>(mean); q.x += dot(d, d); }
    }
    let rstd = inverseSqrt(row_sum(q, lid).x / f32(p.cols) + p.eps);
    if (r >= p.rows) { return; } // no barrier follows
    for (var i = 0u; i < n; i++) {
        let j = i * LPR + lane;
        if (j < c4) {
            out4[base + j] = (x4[base + j] - vec4<f32>(mean)) * rstd * gamma4[j] + beta4[j];
        }
    }
    if (lane == 0u) { stats[r] = vec2<f32>(mean, rstd); }
}

@compute @workgroup_size(WG)
fn layer_norm_backward_input(@builtin(workgroup_id) wid: vec3<u32>,
                             @builtin(num_workgroups) nwg: vec3<u32>,
                             @builtin(local_invocation_index) lid: u32) {
    let r = row_slot(wid, nwg, lid);
    let rr = min(r, p.rows - 1u);
    let base = rr * p.cols;
    let lane = lid % LPR;
    let n = steps(p.cols);
    let st = stats[rr];
    var s = vec2<f32>(0.0);
    for (var i = 0u; i < n; i++) {
        let j = i * LPR + lane;
        if (j < p.cols) {
            let g = dy[base + j] * gamma[j];
            s += vec2<f32>(g, g * (x[base + j] - st.x) * st.y);
        }
    }
    let m = row_sum(s, lid) / f32(p.cols);
    if (r >= p.rows) { return; } // no barrier follows
    for (var i = 0u; i < n; i++) {
        let j = i * LPR + lane;
        if (j < p.cols) {
            let xhat = (x[base + j] - st.x) * st.y;
            out[base + j] = st.y * (dy[base + j] * gamma[j] - m.x - xhat * m.y);
        }
    }
}

@compute @workgroup_size(WG)
fn layer_norm_backward_input4(@builtin(workgroup_id) wid: vec3<u32>,
                              @builtin(num_workgroups) nwg: vec3<u32>,
                              @builtin(local_invocation_index) lid: u32) {
    let r = row_slot(wid, nwg, lid);
    let rr = min(r, p.rows - 1u);
    let c4 = p.cols / 4u;
    let base = rr * c4;
    let lane = lid % LPR;
    let n = steps(c4);
    let st = stats[rr];
    var s = vec2<f32>(0.0);
    for (var i = 0u; i < n; i++) {
        let j = i * LPR + lane;
        if (j < c4) {
            let g = dy4[base + j] * gamma4[j];
            let xhat = (x4[base + j] - vec4<f32>(st.x)) * st.y;
            s += vec2<f32>((g.x + g.y) + (g.z + g.w), dot(g, xhat));
        }
    }
    let m = row_sum(s, lid) / f32(p.cols);
    if (r >= p.rows) { return; } // no barrier follows
    for (var i = 0u; i < n; i++) {
        let j = i * LPR + lane;
        if (j < c4) {
            let xhat = (x4[base + j] - vec4<f32>(st.x)) * st.y;
            out4[base + j] = st.y * (dy4[base + j] * gamma4[j] - vec4<f32>(m.x) - xhat * m.y);
        }
    }
}

// Row r's label as a column index inside the row (clamped: `xent_store` checks the label).
fn label_col(r: u32) -> u32 {
    return u32(clamp(labels[r], 0, i32(p.cols) - 1));
}

// Per-row cross-entropy from the row's (max, sum of exp) pair and the logit at its label column.
fn xent_store(r: u32, ms: vec2<f32>, x_label: f32) {
    let label = labels[r];
    let lse = ms.x + log(ms.y);
    if (label == p.ignore_index) {
        stats[r] = vec2<f32>(0.0, lse);
    } else if (label < 0 || u32(label) >= p.cols) {
        // A label outside the classes poisons the loss instead of reading out of bounds. The
        // NaN is made at run time: a NaN constant is not valid WGSL.
        stats[r] = vec2<f32>(bitcast<f32>(0x7fc00000u | (p.rows & 0u)), lse);
    } else {
        stats[r] = vec2<f32>(lse - x_label, lse);
    }
}

@compute @workgroup_size(WG)
fn xent_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let r = row_slot(wid, nwg, lid);
    let base = min(r, p.rows - 1u) * p.stride;
    let lane = lid % LPR;
    let n = steps(p.cols);
    var ms = vec2<f32>(NEG, 0.0);
    for (var i = 0u; i < (n + 3u) / 4u; i++) {
        ms = push4(ms, gather4(base, i * 4u * LPR + lane, p.cols));
    }
    ms = row_max_sum(ms, lid);
    if (r < p.rows && lane == 0u) { xent_store(r, ms, x[base + label_col(r)]); }
}

@compute @workgroup_size(WG)
fn xent_rows4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
              @builtin(local_invocation_index) lid: u32) {
    let r = row_slot(wid, nwg, lid);
    let base = min(r, p.rows - 1u) * p.stride;
    let lane = lid % LPR;
    // Whole vec4s of counted columns, then the partial one (padding masked to NEG).
    let n = steps((p.cols + 3u) / 4u);
    var ms = vec2<f32>(NEG, 0.0);
    for (var i = 0u; i < n; i++) {
        let j = i * LPR + lane;
        if (4u * j < p.cols) {
            let e = vec4<u32>(4u * j) + vec4<u32>(0u, 1u, 2u, 3u);
            ms = push4(ms, select(vec4<f32>(NEG), x4[base / 4u + j], e < vec4<u32>(p.cols)));
        }
    }
    ms = row_max_sum(ms, lid);
    if (r < p.rows && lane == 0u) {
        let e = base + label_col(r);
        xent_store(r, ms, x4[e / 4u][e % 4u]);
    }
}

@compute @workgroup_size(WG)
fn xent_mean(@builtin(local_invocation_index) lid: u32) {
    var s = vec2<f32>(0.0);
    let n = (p.rows + WG - 1u) / WG;
    for (var i = 0u; i < n; i++) {
        let r = i * WG + lid;
        if (r < p.rows) {
            if (labels[r] != p.ignore_index) { s += vec2<f32>(stats[r].x, 1.0); }
        }
    }
    s = row_sum(s, lid);
    if (lid == 0u) {
        loss[0] = select(0.0, s.x / max(s.y, 1.0), s.y > 0.0);
        loss[1] = s.y;
    }
}

@compute @workgroup_size(WG)
fn xent_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let r = row_slot(wid, nwg, lid);
    if (r >= p.rows) { return; } // no barrier in this kernel
    let base = r * p.stride;
    let lane = lid % LPR;
    let label = labels[r];
    let keep = select(1.0, 0.0, label == p.ignore_index);
    let scale = keep * dy[0] / max(loss[1], 1.0);
    let lse = stats[r].y;
    let n = steps(p.stride);
    for (var i = 0u; i < n; i++) {
        let j = i * LPR + lane;
        if (j < p.stride) {
            let hot = select(0.0, 1.0, i32(j) == label);
            out[base + j] = select(0.0, (exp(x[base + j] - lse) - hot) * scale, j < p.cols);
        }
    }
}

@compute @workgroup_size(WG)
fn xent_backward4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let r = row_slot(wid, nwg, lid);
    if (r >= p.rows) { return; } // no barrier in this kernel
    let s4 = p.stride / 4u;
    let base = r * s4;
    let lane = lid % LPR;
    let label = labels[r];
    let keep = select(1.0, 0.0, label == p.ignore_index);
    let scale = keep * dy[0] / max(loss[1], 1.0);
    let lse = stats[r].y;
    let n = steps(s4);
    for (var i = 0u; i < n; i++) {
        let j = i * LPR + lane;
        if (j < s4) {
            let e = vec4<u32>(4u * j) + vec4<u32>(0u, 1u, 2u, 3u);
            let hot = select(vec4<f32>(0.0), vec4<f32>(1.0), vec4<i32>(e) == vec4<i32>(label));
            let g = (exp(x4[base + j] - vec4<f32>(lse)) - hot) * scale;
            out4[base + j] = select(vec4<f32>(0.0), g, e < vec4<u32>(p.cols));
        }
    }
}
