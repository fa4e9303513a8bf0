// Fused LSTM cell, PyTorch's equations and gate order (i, f, g, o). For B rows of H units:
//   pre = xg + hg                                  xg, hg: [B, 4H] (input and recurrent terms)
//   i = sigmoid(pre_i), f = sigmoid(pre_f), g = tanh(pre_g), o = sigmoid(pre_o)
//   c = f * c_prev + i * g,  h = o * tanh(c)       hc: [B, 2H] = (h, c) side by side
// lstm_cell_backward takes d(hc) = (dh, dc) and gives d(pre) [B, 4H] (the gradient of xg and of
// hg alike) and d(c_prev) [B, H], recomputing the gates from xg and hg rather than keeping them.
// One invocation per (row, unit): an RNN step is one dispatch each way instead of a dozen. The
// GRU cell (below) shares the bindings.

const WG: u32 = 256u;

struct Params {
    rows: u32,
    units: u32,
}

@group(0) @binding(0) var<storage, read> xg: array<f32>;
@group(0) @binding(1) var<storage, read> hg: array<f32>;
@group(0) @binding(2) var<storage, read> c_prev: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read_write> hc: array<f32>;

fn sigmoid(v: f32) -> f32 {
    // exp of minus |v| only, so it never overflows.
    let e = exp(-abs(v));
    return select(e, 1.0, v >= 0.0) / (1.0 + e);
}

struct Gates {
    i: f32,
    f: f32,
    g: f32,
    o: f32,
}

// Where unit e (row e / H, unit e % H) sits in a [B, 4H] array (its i gate) and in [B, 2H] (h).
fn in_gates(e: u32) -> u32 {
    return (e / p.units) * 4u * p.units + e % p.units;
}

fn in_hc(e: u32) -> u32 {
    return (e / p.units) * 2u * p.units + e % p.units;
}

// The gates of unit e.
fn gates(e: u32) -> Gates {
    let at = in_gates(e);
    let h = p.units;
    return Gates(sigmoid(xg[at] + hg[at]), sigmoid(xg[at + h] + hg[at + h]),
                 tanh(xg[at + 2u * h] + hg[at + 2u * h]), sigmoid(xg[at + 3u * h] + hg[at + 3u * h]));
}

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn lstm_cell(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let e = index(wid, nwg, lid);
    if (e >= p.rows * p.units) { return; }
    let q = gates(e);
    let c = q.f * c_prev[e] + q.i * q.g;
    hc[in_hc(e)] = q.o * tanh(c);
    hc[in_hc(e) + p.units] = c;
}

@group(0) @binding(5) var<storage, read> dhc: array<f32>;
@group(0) @binding(6) var<storage, read_write> dpre: array<f32>;
@group(0) @binding(7) var<storage, read_write> dc_prev: array<f32>;

@compute @workgroup_size(WG)
fn lstm_cell_backward(@builtin(workgroup_id) wid: vec3<u32>,
                      @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let e = index(wid, nwg, lid);
    if (e >= p.rows * p.units) { return; }
    let q = gates(e);
    let cp = c_prev[e];
    let tc = tanh(q.f * cp + q.i * q.g);
    let dh = dhc[in_hc(e)];
    // The cell state's gradient: what came from later steps plus the path through h.
    let dc = dhc[in_hc(e) + p.units] + dh * q.o * (1.0 - tc * tc);
    let at = in_gates(e);
    dpre[at] = dc * q.g * q.i * (1.0 - q.i);
    dpre[at + p.units] = dc * cp * q.f * (1.0 - q.f);
    dpre[at + 2u * p.units] = dc * q.i * (1.0 - q.g * q.g);
    dpre[at + 3u * p.units] = dh * tc * q.o * (1.0 - q.o);
    dc_prev[e] = dc * q.f;
}

// Fused GRU cell, PyTorch's equations and gate order (r, z, n), for B rows of H units:
//   r = sigmoid(xg_r + hg_r), z = sigmoid(xg_z + hg_z), n = tanh(xg_n + r * hg_n)
//   h = (1 - z) * n + z * h_prev                   xg, hg: [B, 3H], h_prev and h: [B, H]
// (hg holds the recurrent term with its bias, as r multiplies it.) gru_cell_backward takes dh and
// gives d(xg), d(hg) [B, 3H] and the direct part of d(h_prev) [B, H]. The same bindings as the
// LSTM's: c_prev holds h_prev, hc the new h; dhc dh, dpre d(xg), dc_prev d(h_prev).
@group(0) @binding(8) var<storage, read_write> dhg: array<f32>;

struct GruGates {
    r: f32,
    z: f32,
    n: f32,
    hn: f32, // hg's n term, which r scales
}

fn gru_gates(e: u32) -> GruGates {
    let at = (e / p.units) * 3u * p.units + e % p.units;
    let h = p.units;
    let r = sigmoid(xg[at] + hg[at]);
    let hn = hg[at + 2u * h];
    return GruGates(r, sigmoid(xg[at + h] + hg[at + h]), tanh(xg[at + 2u * h] + r * hn), hn);
}

@compute @workgroup_size(WG)
fn gru_cell(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let e = index(wid, nwg, lid);
    if (e >= p.rows * p.units) { return; }
    let q = gru_gates(e);
    hc[e] = q.n + q.z * (c_prev[e] - q.n);
}

@compute @workgroup_size(WG)
fn gru_cell_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let e = index(wid, nwg, lid);
    if (e >= p.rows * p.units) { return; }
    let q = gru_gates(e);
    let dh = dhc[e];
    let dn = dh * (1.0 - q.z) * (1.0 - q.n * q.n);
    let dz = dh * (c_prev[e] - q.n) * q.z * (1.0 - q.z);
    let dr = dn * q.hn * q.r * (1.0 - q.r);
    let at = (e / p.units) * 3u * p.units + e % p.units;
    let h = p.units;
    dpre[at] = dr;
    dpre[at + h] = dz;
    dpre[at + 2u * h] = dn;
    dhg[at] = dr;
    dhg[at + h] = dz;
    dhg[at + 2u * h] = dn * q.r;
    dc_prev[e] = dh * q.z;
}
