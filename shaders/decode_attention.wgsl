// Attention for generation with a key/value cache.
//   kv_append:        cache_k[b, h, start + t, :] = src[b, t, k_col + h*D .. + D]
//                     cache_v[b, h, start + t, :] = src[b, t, v_col + h*D .. + D]
//                     src: [B, T, C] rows (C columns: a fused q|k|v projection), caches:
//                     [B, H, Tmax, D]; one invocation per (b, t, h, d)
//   decode_attention: out[b, h*D + d] = sum_j softmax_j(q . k_j * scale) v[b, h, j, d] over the
//                     cached keys j < len, for ONE query row per (b, h): q = src[b, q_col + h*D ..]
//                     (src: [B, C]); out: [B, H*D], heads side by side as the output projection
//                     takes them. One workgroup per (b, h): its invocations share the keys for the
//                     scores, reduce max and sum in workgroup memory, then share the output
//                     columns. The scores go through `scores` ([B*H, len]), so no length limit
//                     comes from workgroup memory.
//   decode_split:     the same, split along the cache (flash-decoding): workgroup (b, h, s) takes
//                     keys [s * chunk, (s + 1) * chunk) and writes its partial output (weights
//                     relative to its own maximum m_s) and (m_s, l_s = sum of its weights) to
//                     `scores` as part[(bh * splits + s) * (D + 2) + ..] = (o_s[0..D], m_s, l_s);
//                     B * H * splits workgroups keep a large GPU busy where B * H alone would not.
//   decode_combine:   one workgroup per (b, h): M = max m_s, out = sum_s o_s e^(m_s - M) /
//                     sum_s l_s e^(m_s - M), the splits added in order (the same result every run).

const WG: u32 = 64u;
const NEG_INF: f32 = -3.402823e38;

struct Params {
    b: u32,
    h: u32,
    d: u32,
    tmax: u32,
    // kv_append: rows T; decode_attention: cached keys len.
    t: u32,
    // Columns of a src row.
    c: u32,
    // kv_append: k_col, v_col; decode_attention: q_col (a).
    col_a: u32,
    col_b: u32,
    // kv_append: first position written.
    start: u32,
    scale: f32,
    // decode_split / decode_combine: keys per split, and splits.
    chunk: u32,
    splits: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read> kc_in: array<f32>;
@group(0) @binding(2) var<storage, read> vc_in: array<f32>;
@group(0) @binding(3) var<storage, read_write> kc: array<f32>;
@group(0) @binding(4) var<storage, read_write> vc: array<f32>;
@group(0) @binding(5) var<storage, read_write> scores: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(7) var<uniform> p: Params;

var<workgroup> red: array<f32, WG>;
// decode_split: the query (scaled) and the chunk's scores; D and chunk at most MAXC.
const MAXC: u32 = 256u;
var<workgroup> qs: array<f32, MAXC>;
var<workgroup> sc: array<f32, MAXC>;

@compute @workgroup_size(WG)
fn kv_append(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) lid: u32) {
    let idx = (wid.x + wid.y * nwg.x) * WG + lid;
    let e = p.h * p.d;
    // The last workgroup runs past B * T * E.
    if (idx >= p.b * p.t * e) { return; }
    let col = idx % e;
    let bt = idx / e;
    let t = bt % p.t;
    let b = bt / p.t;
    let dst = ((b * p.h + col / p.d) * p.tmax + p.start + t) * p.d + col % p.d;
    kc[dst] = src[bt * p.c + p.col_a + col];
    vc[dst] = src[bt * p.c + p.col_b + col];
}

// Reduces red[0..WG] into red[0] with max (is_max) or sum; every invocation must call it.
fn reduce(lid: u32, is_max: bool) {
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            if (is_max) {
                red[lid] = max(red[lid], red[lid + s]);
            } else {
                red[lid] = red[lid] + red[lid + s];
            }
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(WG)
fn decode_attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    // bh is the same for the whole workgroup, so this return keeps the barriers uniform.
    let bh = wid.x + wid.y * nwg.x;
    if (bh >= p.b * p.h) { return; }
    let b = bh / p.h;
    let hh = bh % p.h;
    let q0 = b * p.c + p.col_a + hh * p.d;
    let k0 = bh * p.tmax * p.d;
    let s0 = bh * p.t;
    var m = NEG_INF;
    for (var j = lid; j < p.t; j += WG) {
        var s = 0.0;
        for (var t = 0u; t < p.d; t++) { s += src[q0 + t] * kc_in[k0 + j * p.d + t]; }
        s = s * p.scale;
        scores[s0 + j] = s;
        m = max(m, s);
    }
    red[lid] = m;
    workgroupBarrier();
    reduce(lid, true);
    let mx = red[0];
    workgroupBarrier();
    var l = 0.0;
    for (var j = lid; j < p.t; j += WG) {
        let w = exp(scores[s0 + j] - mx);
        scores[s0 + j] = w;
        l += w;
    }
    red[lid] = l;
    workgroupBarrier();
    reduce(lid, false);
    let inv = 1.0 / red[0];
    // Every invocation reads every weight next: make the others' writes visible.
    storageBarrier();
    for (var t = lid; t < p.d; t += WG) {
        var acc = 0.0;
        for (var j = 0u; j < p.t; j++) { acc += scores[s0 + j] * vc_in[k0 + j * p.d + t]; }
        out[b * p.h * p.d + hh * p.d + t] = acc * inv;
    }
}

@compute @workgroup_size(WG)
fn decode_split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    // The workgroup's (bh, split) is uniform, so this return keeps the barriers uniform.
    let g = wid.x + wid.y * nwg.x;
    if (g >= p.b * p.h * p.splits) { return; }
    let bh = g / p.splits;
    let split = g % p.splits;
    let b = bh / p.h;
    let hh = bh % p.h;
    let j0 = split * p.chunk;
    let n = min(p.t, j0 + p.chunk) - min(j0, p.t); // keys of this split (may be 0)
    let q0 = b * p.c + p.col_a + hh * p.d;
    let k0 = bh * p.tmax * p.d + j0 * p.d;
    for (var t = lid; t < p.d; t += WG) { qs[t] = src[q0 + t] * p.scale; }
    workgroupBarrier();
    // Scores: a lane per key, the query shared through workgroup memory.
    var m = NEG_INF;
    for (var j = lid; j < n; j += WG) {
        var s = 0.0;
        for (var t = 0u; t < p.d; t++) { s += qs[t] * kc_in[k0 + j * p.d + t]; }
        sc[j] = s;
        m = max(m, s);
    }
    red[lid] = m;
    workgroupBarrier();
    reduce(lid, true);
    let mx = red[0];
    workgroupBarrier();
    var l = 0.0;
    for (var j = lid; j < n; j += WG) {
        let w = exp(sc[j] - mx);
        sc[j] = w;
        l += w;
    }
    red[lid] = l;
    workgroupBarrier();
    reduce(lid, false);
    let sum = red[0];
    // The output columns: a lane per column, the weights from workgroup memory, values read
    // along a row of the cache (neighbouring lanes, neighbouring words).
    let o = (bh * p.splits + split) * (p.d + 2u);
    for (var t = lid; t < p.d; t += WG) {
        var acc = 0.0;
        for (var j = 0u; j < n; j++) { acc += sc[j] * vc_in[k0 + j * p.d + t]; }
        scores[o + t] = acc;
    }
    if (lid == 0u) {
        scores[o + p.d] = mx;
        scores[o + p.d + 1u] = sum;
    }
}

@compute @workgroup_size(WG)
fn decode_combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let bh = wid.x + wid.y * nwg.x;
    if (bh >= p.b * p.h) { return; } // no barrier in this kernel
    let b = bh / p.h;
    let hh = bh % p.h;
    let w = p.d + 2u;
    let base = bh * p.splits * w;
    // Every split holds at least one key (the launcher sizes them so), so l_s >= 1 and a NaN
    // score anywhere reaches the output.
    var mx = NEG_INF;
    for (var s = 0u; s < p.splits; s++) { mx = max(mx, scores[base + s * w + p.d]); }
    var total = 0.0;
    for (var s = 0u; s < p.splits; s++) {
        total += scores[base + s * w + p.d + 1u] * exp(scores[base + s * w + p.d] - mx);
    }
    let inv = 1.0 / total;
    for (var t = lid; t < p.d; t += WG) {
        var acc = 0.0;
        for (var s = 0u; s < p.splits; s++) {
            acc += scores[base + s * w + t] * exp(scores[base + s * w + p.d] - mx);
        }
        out[b * p.h * p.d + hh * p.d + t] = acc * inv;
    }
}
