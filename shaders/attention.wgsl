// Fused scaled-dot-product attention, flash style: Q: [B, H, Tq, D], K, V: [B, H, Tk, D].
//   O[r] = sum_j softmax_j(q_r . k_j * scale) v_j, r = (b, h, i), with an online softmax over keys,
//   so the Tq x Tk score matrix is never stored. Keys are masked when `causal` and j > i, or when
//   pad[b, j] != 0 (PyTorch's key_padding_mask, True = ignore). A row with every key masked gives
//   zeros (never NaN). stats[r] = (logsumexp of the row's scores, or -inf when fully masked;
//   rowsum(dO * O), filled by attention_backward_prep).
// Backward, deterministic (no atomics): with P = exp(s - lse) and dP = dO . v,
//   dq_i = scale * sum_j P_ij (dP_ij - D_i) k_j      (one invocation per query row)
//   dk_j = scale * sum_i P_ij (dP_ij - D_i) q_i,  dv_j = sum_i P_ij dO_i   (one per key row)

const WG: u32 = 64u;
const MAXD: u32 = 128u;
const NEG_INF: f32 = -3.402823e38;

struct Params {
    b: u32, h: u32, tq: u32, tk: u32,
    d: u32, causal: u32, has_pad: u32, scale: f32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> pad: array<i32>;
@group(0) @binding(4) var<storage, read> dout: array<f32>;
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(7) var<storage, read_write> out2: array<f32>;
@group(0) @binding(8) var<uniform> p: Params;

fn row_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

fn masked(bh: u32, i: u32, j: u32) -> bool {
    if (p.causal == 1u && j > i) { return true; }
    if (p.has_pad == 1u && pad[(bh / p.h) * p.tk + j] != 0) { return true; }
    return false;
}

fn score(qrow: u32, krow: u32) -> f32 {
    var s = 0.0;
    for (var t = 0u; t < p.d; t++) { s += q[qrow * p.d + t] * k[krow * p.d + t]; }
    return s * p.scale;
}

@compute @workgroup_size(WG)
fn attention_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg, lid);
    if (r >= p.b * p.h * p.tq) { return; }
    let bh = r / p.tq;
    let i = r % p.tq;
    var acc: array<f32, MAXD>;
    for (var t = 0u; t < p.d; t++) { acc[t] = 0.0; }
    var m = NEG_INF;
    var l = 0.0;
    for (var j = 0u; j < p.tk; j++) {
        if (masked(bh, i, j)) { continue; }
        let krow = bh * p.tk + j;
        let s = score(r, krow);
        let m_new = max(m, s);
        let correction = exp(m - m_new);
        let w = exp(s - m_new);
        for (var t = 0u; t < p.d; t++) { acc[t] = acc[t] * correction + w * v[krow * p.d + t]; }
        l = l * correction + w;
        m = m_new;
    }
    let inv = select(0.0, 1.0 / l, l > 0.0);
    for (var t = 0u; t < p.d; t++) { out[r * p.d + t] = acc[t] * inv; }
    stats[2u * r] = select(NEG_INF, m + log(l), l > 0.0);
}

@compute @workgroup_size(WG)
fn attention_backward_prep(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    // out holds the forward's O here (read only in practice).
    let r = row_index(wid, nwg, lid);
    if (r >= p.b * p.h * p.tq) { return; }
    var s = 0.0;
    for (var t = 0u; t < p.d; t++) { s += dout[r * p.d + t] * out[r * p.d + t]; }
    stats[2u * r + 1u] = s;
}

fn prob(r: u32, krow: u32) -> f32 {
    let lse = stats[2u * r];
    if (lse <= NEG_INF) { return 0.0; }
    return exp(score(r, krow) - lse);
}

fn dprob(r: u32, krow: u32) -> f32 {
    var s = 0.0;
    for (var t = 0u; t < p.d; t++) { s += dout[r * p.d + t] * v[krow * p.d + t]; }
    return s;
}

@compute @workgroup_size(WG)
fn attention_backward_q(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                        @builtin(local_invocation_index) lid: u32) {
    let r = row_index(wid, nwg, lid);
    if (r >= p.b * p.h * p.tq) { return; }
    let bh = r / p.tq;
    let i = r % p.tq;
    var acc: array<f32, MAXD>;
    for (var t = 0u; t < p.d; t++) { acc[t] = 0.0; }
    let di = stats[2u * r + 1u];
    for (var j = 0u; j < p.tk; j++) {
        if (masked(bh, i, j)) { continue; }
        let krow = bh * p.tk + j;
        let g = prob(r, krow) * (dprob(r, krow) - di) * p.scale;
        for (var t = 0u; t < p.d; t++) { acc[t] += g * k[krow * p.d + t]; }
    }
    for (var t = 0u; t < p.d; t++) { out[r * p.d + t] = acc[t]; }
}

@compute @workgroup_size(WG)
fn attention_backward_kv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                         @builtin(local_invocation_index) lid: u32) {
    let krow = row_index(wid, nwg, lid);
    if (krow >= p.b * p.h * p.tk) { return; }
    let bh = krow / p.tk;
    let j = krow % p.tk;
    var dk: array<f32, MAXD>;
    var dv: array<f32, MAXD>;
    for (var t = 0u; t < p.d; t++) { dk[t] = 0.0; dv[t] = 0.0; }
    for (var i = 0u; i < p.tq; i++) {
        if (masked(bh, i, j)) { continue; }
        let r = bh * p.tq + i;
        let pr = prob(r, krow);
        let g = pr * (dprob(r, krow) - stats[2u * r + 1u]) * p.scale;
        for (var t = 0u; t < p.d; t++) {
            dk[t] += g * q[r * p.d + t];
            dv[t] += pr * dout[r * p.d + t];
        }
    }
    for (var t = 0u; t < p.d; t++) {
        out[krow * p.d + t] = dk[t];
        out2[krow * p.d + t] = dv[t];
    }
}
