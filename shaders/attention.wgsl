// Scaled-dot-product attention, FlashAttention-2 style. Q: [B, H, Tq, D], K, V: [B, H, Tk, D]:
//   O_i = sum_j softmax_j(s_ij) v_j,  s_ij = scale * q_i . k_j + mask[i, j]
// with keys masked where `causal` and j > i, where pad[b, j] != 0 (PyTorch's key_padding_mask),
// and where the additive mask (PyTorch's float attn_mask, [Tq, Tk], shared by batches and heads)
// makes the score -inf (or anything below -1e38). A row with every key masked gives zeros and
// stats lse = -3.4e38 (never NaN).
//
// Forward (flash_forward): a workgroup per block of BQ query rows of one (batch, head); R
// invocations per row, each owning DP / R of the (padded) head dimension of q_i and of the
// output accumulator in registers. K and V pass through workgroup memory in tiles of BKV keys;
// the softmax is online (running max m and sum l per row, in registers), so the Tq x Tk scores are
// never stored. Causal: key tiles past the block's last query are never loaded. stats[2r] = the
// row's logsumexp.
// Backward, as FlashAttention-2, deterministic (no atomics): P is recomputed from the saved
// logsumexp, P_ij = exp(s_ij - lse_i); with dP = dO . v and D_i = dO_i . O_i (flash_backward_prep,
// stats[2r + 1]), dS = P (dP - D_i):
//   flash_backward_kv: a workgroup per block of BKV keys, Q and dO tiles of BQ2 queries through
//     workgroup memory: dv_j = sum_i P_ij dO_i, dk_j = scale * sum_i dS_ij q_i (in registers);
//   flash_backward_q: a workgroup per block of BQ queries, K and V tiles as in the forward:
//     dq_i = scale * sum_j dS_ij k_j.
// Where R > 1, the R invocations of a row add their partial dot products through `part`.
// Head dimensions up to DP = 64 * R; columns past p.d read as zero and are never written.

override DP: u32 = 64u;    // head dimension handled: p.d rounded up to a multiple of 4 * R
override R: u32 = 1u;      // invocations per row (query row, or key row in flash_backward_kv)
override BQ: u32 = 64u;    // query rows per workgroup (forward, dQ)
override BKV: u32 = 32u;   // keys per tile (forward, dQ), keys per workgroup (dK, dV)
override BQ2: u32 = 16u;   // queries per tile (dK, dV)
override WG: u32 = 64u;    // invocations per workgroup: rows * R
override TILE: u32 = 512u; // vec4s per staged tile: tile rows * DP / 4
override ROWS: u32 = 32u;  // rows per staged tile
override PART: u32 = 1u;   // partial sums exchanged: rows * R * tile rows where R > 1, else 1
override DV: u32 = DP / 4u / R; // vec4s of a row per invocation (at most 16)

const NEG: f32 = -3.402823e38;
const MASKED_BELOW: f32 = -1e38;

struct Params {
    b: u32, h: u32, tq: u32, tk: u32,
    d: u32, causal: u32, has_pad: u32, scale: f32,
    has_mask: u32, dv_off: u32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> pad: array<i32>;
@group(0) @binding(4) var<storage, read> dout: array<f32>;
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(8) var<uniform> p: Params;
@group(0) @binding(9) var<storage, read> amask: array<f32>;

var<workgroup> t1: array<vec4<f32>, TILE>;  // K tile, or Q tile (flash_backward_kv)
var<workgroup> t2: array<vec4<f32>, TILE>;  // V tile, or dO tile
var<workgroup> r1: array<f32, ROWS>;        // per key: 1 where usable; or per query: lse
var<workgroup> r2: array<f32, ROWS>;        // per query: D_i (flash_backward_kv)
var<workgroup> part1: array<f32, PART>;
var<workgroup> part2: array<f32, PART>;

// Vec4 column c4 of row `row` of q, k, v or dO ([rows, d]), zero past d or where !ok; and
// the store of one into `out` (from element `base`), inside d.
fn ldq(row: u32, ok: bool, c4: u32) -> vec4<f32> {
    var r = vec4<f32>(0.0);
    for (var e = 0u; e < 4u; e++) { let c = 4u * c4 + e; if (ok && c < p.d) { r[e] = q[row * p.d + c]; } }
    return r;
}
fn ldk(row: u32, ok: bool, c4: u32) -> vec4<f32> {
    var r = vec4<f32>(0.0);
    for (var e = 0u; e < 4u; e++) { let c = 4u * c4 + e; if (ok && c < p.d) { r[e] = k[row * p.d + c]; } }
    return r;
}
fn ldv(row: u32, ok: bool, c4: u32) -> vec4<f32> {
    var r = vec4<f32>(0.0);
    for (var e = 0u; e < 4u; e++) { let c = 4u * c4 + e; if (ok && c < p.d) { r[e] = v[row * p.d + c]; } }
    return r;
}
fn lddo(row: u32, ok: bool, c4: u32) -> vec4<f32> {
    var r = vec4<f32>(0.0);
    for (var e = 0u; e < 4u; e++) { let c = 4u * c4 + e; if (ok && c < p.d) { r[e] = dout[row * p.d + c]; } }
    return r;
}
fn st(base: u32, row: u32, c4: u32, x: vec4<f32>) {
    for (var e = 0u; e < 4u; e++) { let c = 4u * c4 + e; if (c < p.d) { out[base + row * p.d + c] = x[e]; } }
}

// Whether key j of batch item b exists and is not padding.
fn key_usable(b: u32, j: u32) -> bool {
    return j < p.tk && !(p.has_pad == 1u && pad[b * p.tk + j] != 0);
}

// The masked, scaled score of (i, j) from the raw dot product, or NEG where (i, j) is masked.
fn score(dot_ij: f32, i: u32, j: u32, usable: bool) -> f32 {
    var s = dot_ij * p.scale;
    if (usable && p.has_mask == 1u) { s += amask[i * p.tk + j]; }
    let ok = usable && !(p.causal == 1u && j > i) && s > MASKED_BELOW;
    return select(NEG, s, ok);
}

fn hsum(x: vec4<f32>) -> f32 { return x.x + x.y + x.z + x.w; }

// The keys a block of queries from q0 sees: all, or under the causal mask those up to its last.
fn kv_end(q0: u32) -> u32 {
    if (p.causal == 1u) { return min(p.tk, q0 + BQ); }
    return p.tk;
}

// Stages the K and V tiles of keys j0 .. j0 + BKV of head bh, and which keys are usable.
fn stage_kv(bh: u32, j0: u32, lid: u32) {
    for (var e = lid; e < BKV * DP / 4u; e += WG) {
        let j = j0 + e / (DP / 4u);
        let c4 = e % (DP / 4u);
        t1[e] = ldk(bh * p.tk + j, j < p.tk, c4);
        t2[e] = ldv(bh * p.tk + j, j < p.tk, c4);
    }
    for (var e = lid; e < BKV; e += WG) { r1[e] = select(0.0, 1.0, key_usable(bh / p.h, j0 + e)); }
}

@compute @workgroup_size(WG)
fn flash_forward(@builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let bh = wid.z * p.h + wid.y;
    let row = lid / R;
    let c0 = (lid % R) * DV;
    let q0 = wid.x * BQ;
    let i = q0 + row;
    let row_ok = i < p.tq;
    var qr: array<vec4<f32>, 16>;
    var o: array<vec4<f32>, 16>;
    for (var c = 0u; c < DV; c++) {
        qr[c] = ldq(bh * p.tq + i, row_ok, c0 + c);
        o[c] = vec4<f32>(0.0);
    }
    var m = NEG;
    var l = 0.0;
    var s: array<f32, 64>;
    // The tile count is uniform across the workgroup: every barrier is reached by all.
    for (var j0 = 0u; j0 < kv_end(q0); j0 += BKV) {
        stage_kv(bh, j0, lid);
        workgroupBarrier();
        for (var jj = 0u; jj < BKV; jj++) {
            var acc = vec4<f32>(0.0);
            for (var c = 0u; c < DV; c++) { acc = fma(qr[c], t1[jj * (DP / 4u) + c0 + c], acc); }
            s[jj] = hsum(acc);
        }
        if (R > 1u) {
            for (var jj = 0u; jj < BKV; jj++) { part1[lid * BKV + jj] = s[jj]; }
            workgroupBarrier();
            for (var jj = 0u; jj < BKV; jj++) {
                var t = 0.0;
                for (var r = 0u; r < R; r++) { t += part1[(row * R + r) * BKV + jj]; }
                s[jj] = t;
            }
        }
        var mt = NEG;
        for (var jj = 0u; jj < BKV; jj++) {
            s[jj] = score(s[jj], i, j0 + jj, row_ok && r1[jj] != 0.0);
            mt = max(mt, s[jj]);
        }
        let m_new = max(m, mt);
        let corr = exp(m - m_new);
        l = l * corr;
        for (var c = 0u; c < DV; c++) { o[c] = o[c] * corr; }
        for (var jj = 0u; jj < BKV; jj++) {
            let pj = select(0.0, exp(s[jj] - m_new), s[jj] > MASKED_BELOW);
            l += pj;
            for (var c = 0u; c < DV; c++) { o[c] = fma(vec4<f32>(pj), t2[jj * (DP / 4u) + c0 + c], o[c]); }
        }
        m = m_new;
        workgroupBarrier();
    }
    if (row_ok) {
        let inv = select(0.0, 1.0 / l, l > 0.0);
        for (var c = 0u; c < DV; c++) { st(0u, bh * p.tq + i, c0 + c, o[c] * inv); }
        if (lid % R == 0u) { stats[2u * (bh * p.tq + i)] = select(NEG, m + log(l), l > 0.0); }
    }
}

// D_i = dO_i . O_i, one invocation per row (`out` holds the forward's O here; read only).
@compute @workgroup_size(WG)
fn flash_backward_prep(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                       @builtin(local_invocation_index) lid: u32) {
    let r = (wid.x + wid.y * nwg.x) * WG + lid;
    if (r >= p.b * p.h * p.tq) { return; } // no barriers follow
    var s = 0.0;
    for (var t = 0u; t < p.d; t++) { s += dout[r * p.d + t] * out[r * p.d + t]; }
    stats[2u * r + 1u] = s;
}

@compute @workgroup_size(WG)
fn flash_backward_kv(@builtin(workgroup_id) wid: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let bh = wid.z * p.h + wid.y;
    let row = lid / R;
    let c0 = (lid % R) * DV;
    let j = wid.x * BKV + row;
    let usable = key_usable(bh / p.h, j);
    var kr: array<vec4<f32>, 16>;
    var vr: array<vec4<f32>, 16>;
    var dk: array<vec4<f32>, 16>;
    var dv: array<vec4<f32>, 16>;
    for (var c = 0u; c < DV; c++) {
        kr[c] = ldk(bh * p.tk + j, j < p.tk, c0 + c);
        vr[c] = ldv(bh * p.tk + j, j < p.tk, c0 + c);
        dk[c] = vec4<f32>(0.0);
        dv[c] = vec4<f32>(0.0);
    }
    // Under the causal mask, queries before the block's first key see none of its keys.
    var i_begin = 0u;
    if (p.causal == 1u) { i_begin = wid.x * BKV; }
    var sp: array<f32, 64>;
    var dp: array<f32, 64>;
    for (var i0 = i_begin; i0 < p.tq; i0 += BQ2) {
        for (var e = lid; e < BQ2 * DP / 4u; e += WG) {
            let i = i0 + e / (DP / 4u);
            let c4 = e % (DP / 4u);
            t1[e] = ldq(bh * p.tq + i, i < p.tq, c4);
            t2[e] = lddo(bh * p.tq + i, i < p.tq, c4);
        }
        for (var e = lid; e < BQ2; e += WG) {
            let i = i0 + e;
            let ok = i < p.tq;
            let r = bh * p.tq + min(i, p.tq - 1u);
            r1[e] = select(NEG, stats[2u * r], ok);
            r2[e] = select(0.0, stats[2u * r + 1u], ok);
        }
        workgroupBarrier();
        for (var ii = 0u; ii < BQ2; ii++) {
            var a = vec4<f32>(0.0);
            var b = vec4<f32>(0.0);
            for (var c = 0u; c < DV; c++) {
                a = fma(kr[c], t1[ii * (DP / 4u) + c0 + c], a);
                b = fma(vr[c], t2[ii * (DP / 4u) + c0 + c], b);
            }
            sp[ii] = hsum(a);
            dp[ii] = hsum(b);
        }
        if (R > 1u) {
            for (var ii = 0u; ii < BQ2; ii++) {
                part1[lid * BQ2 + ii] = sp[ii];
                part2[lid * BQ2 + ii] = dp[ii];
            }
            workgroupBarrier();
            for (var ii = 0u; ii < BQ2; ii++) {
                var a = 0.0;
                var b = 0.0;
                for (var r = 0u; r < R; r++) {
                    a += part1[(row * R + r) * BQ2 + ii];
                    b += part2[(row * R + r) * BQ2 + ii];
                }
                sp[ii] = a;
                dp[ii] = b;
            }
        }
        for (var ii = 0u; ii < BQ2; ii++) {
            let i = i0 + ii;
            let s = score(sp[ii], i, j, usable && i < p.tq);
            let lse = r1[ii];
            let pr = select(0.0, exp(s - lse), s > MASKED_BELOW && lse > MASKED_BELOW);
            let ds = pr * (dp[ii] - r2[ii]) * p.scale;
            for (var c = 0u; c < DV; c++) {
                dv[c] = fma(vec4<f32>(pr), t2[ii * (DP / 4u) + c0 + c], dv[c]);
                dk[c] = fma(vec4<f32>(ds), t1[ii * (DP / 4u) + c0 + c], dk[c]);
            }
        }
        workgroupBarrier();
    }
    if (j < p.tk) {
        for (var c = 0u; c < DV; c++) {
            st(0u, bh * p.tk + j, c0 + c, dk[c]);
            st(p.dv_off, bh * p.tk + j, c0 + c, dv[c]);
        }
    }
}

@compute @workgroup_size(WG)
fn flash_backward_q(@builtin(workgroup_id) wid: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let bh = wid.z * p.h + wid.y;
    let row = lid / R;
    let c0 = (lid % R) * DV;
    let q0 = wid.x * BQ;
    let i = q0 + row;
    let row_ok = i < p.tq;
    let r = bh * p.tq + min(i, p.tq - 1u);
    let lse = select(NEG, stats[2u * r], row_ok);
    let di = stats[2u * r + 1u];
    var qr: array<vec4<f32>, 16>;
    var dor: array<vec4<f32>, 16>;
    var dq: array<vec4<f32>, 16>;
    for (var c = 0u; c < DV; c++) {
        qr[c] = ldq(bh * p.tq + i, row_ok, c0 + c);
        dor[c] = lddo(bh * p.tq + i, row_ok, c0 + c);
        dq[c] = vec4<f32>(0.0);
    }
    var sp: array<f32, 64>;
    var dp: array<f32, 64>;
    for (var j0 = 0u; j0 < kv_end(q0); j0 += BKV) {
        stage_kv(bh, j0, lid);
        workgroupBarrier();
        for (var jj = 0u; jj < BKV; jj++) {
            var a = vec4<f32>(0.0);
            var b = vec4<f32>(0.0);
            for (var c = 0u; c < DV; c++) {
                a = fma(qr[c], t1[jj * (DP / 4u) + c0 + c], a);
                b = fma(dor[c], t2[jj * (DP / 4u) + c0 + c], b);
            }
            sp[jj] = hsum(a);
            dp[jj] = hsum(b);
        }
        if (R > 1u) {
            for (var jj = 0u; jj < BKV; jj++) {
                part1[lid * BKV + jj] = sp[jj];
                part2[lid * BKV + jj] = dp[jj];
            }
            workgroupBarrier();
            for (var jj = 0u; jj < BKV; jj++) {
                var a = 0.0;
                var b = 0.0;
                for (var t = 0u; t < R; t++) {
                    a += part1[(row * R + t) * BKV + jj];
                    b += part2[(row * R + t) * BKV + jj];
                }
                sp[jj] = a;
                dp[jj] = b;
            }
        }
        for (var jj = 0u; jj < BKV; jj++) {
            let s = score(sp[jj], i, j0 + jj, row_ok && r1[jj] != 0.0);
            let pr = select(0.0, exp(s - lse), s > MASKED_BELOW && lse > MASKED_BELOW);
            let ds = pr * (dp[jj] - di) * p.scale;
            for (var c = 0u; c < DV; c++) { dq[c] = fma(vec4<f32>(ds), t1[jj * (DP / 4u) + c0 + c], dq[c]); }
        }
        workgroupBarrier();
    }
    if (row_ok) {
        for (var c = 0u; c < DV; c++) { st(0u, bh * p.tq + i, c0 + c, dq[c]); }
    }
}
