// Fused LSTM cell, PyTorch's equations and gate order (i, f, g, o). For B rows of H units:
//   pre = xg + hg                                  xg, hg: [B, 4H] (input and recurrent terms)
//   i = sigmoid(pre_i), f = sigmoid(pre_f), g = tanh(pre_g), o = sigmoid(pre_o)
//   c = f * c_prev + i * g,  h = o * tanh(c)       hc: [B, 2H] = (h, c) side by side
// lstm_cell_backward takes d(hc) = (dh, dc) and gives d(pre) [B, 4H] (the gradient of xg and of
// hg alike) and d(c_prev) [B, H], recomputing the gates from xg and hg rather than keeping them.
// One invocation per (row, unit): an RNN step is one dispatch each way instead of a dozen.

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
