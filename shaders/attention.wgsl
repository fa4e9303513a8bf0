// Scaled-dot-product attention, FlashAttention-2 style, f32. Q: [B, H, Tq, D], K, V: [B, H, Tk, D]:
//   O_i = sum_j softmax_j(s_ij) v_j,  s_ij = scale * q_i . k_j + mask[i, j]
// with keys masked where `causal` and j > i, where pad[b, j] != 0 (PyTorch's key_padding_mask),
// and where the additive mask (PyTorch's float attn_mask: [Tq, Tk] shared by batches and heads,
// or [B * H, Tq, Tk]) makes the score -inf (or anything below -1e38). A row with every key masked
// gives zeros and stats lse = -3.4e38 (never NaN).
//
// Forward (flash_forward): a workgroup per block of BQ query rows of one (batch, head); R
// invocations per row, each owning DV vec4 columns of q_i and of the output accumulator (columns
// c * R + r, so partners read adjacent words of a staged row). K and V pass through workgroup
// memory in tiles of BKV keys, taken four keys at a time; the softmax is online (a reference max m
// and sum l per row in registers), so the Tq x Tk scores are never stored. Causal: key tiles past
// the block's last query are never loaded. stats[2r] = the row's logsumexp.
// Backward, as FlashAttention-2, deterministic (no atomics): P is recomputed from the saved
// logsumexp, P_ij = exp(s_ij - lse_i); with dP = dO . v and D_i = dO_i . O_i (flash_backward_prep,
// stats[2r + 1]), dS = P (dP - D_i):
//   flash_backward_kv: a workgroup per block of BKV keys, Q and dO tiles of BQ2 queries through
//     workgroup memory: dv_j = sum_i P_ij dO_i, dk_j = scale * sum_i dS_ij q_i (in registers);
//   flash_backward_q: a workgroup per block of BQ queries, K and V tiles as in the forward:
//     dq_i = scale * sum_j dS_ij k_j.
// Head dimensions up to DP = 64 * R; columns past p.d read as zero and are never written.
//
// Registers: the row operands and accumulators are private arrays indexed by constants only
// (helpers written out for up to 16 vec4s, guarded by DV), so they stay in registers without any
// loop unrolling by the driver; DV comes from the launcher's register budget
// (crates/ops/src/attention.rs).
// Where R > 1, the R invocations of a row add their partial dot products through workgroup
// memory, transposed: chunk ch's partials of invocation lid at [ch * WG + lid], so the stores of
// 32 lanes are consecutive vec4s and a row's R reads are adjacent (attention_sg.wgsl shuffles
// them within a subgroup instead).

override DP: u32 = 64u;    // head dimension handled: p.d rounded up to a multiple of 4 * R
override R: u32 = 1u;      // invocations per row (a power of two)
override DV: u32 = DP / 4u / R; // vec4s of a row per invocation: 1 to 16
override BQ: u32 = 64u;    // query rows per workgroup (forward, dQ)
override BKV: u32 = 32u;   // keys per tile (forward, dQ), keys per workgroup (dK, dV); a multiple of 4
override BQ2: u32 = 16u;   // queries per tile (dK, dV), a multiple of 4
override WG: u32 = 64u;    // invocations per workgroup: rows * R
override TILE: u32 = 512u; // vec4s per staged tile: tile rows * DP / 4
override ROWS: u32 = 32u;  // rows per staged tile
override RESCALE: f32 = 8.0; // the forward rescales its sums only when a row's max grows by more

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
override PART: u32 = 1u;   // partials exchanged (vec4s): tile rows / 4 * WG where R > 1, else 1
var<workgroup> part1: array<vec4<f32>, PART>;
var<workgroup> part2: array<vec4<f32>, PART>;

// The sum of the R partners' partials of chunk ch (row `row`) from part1 (or part2).
fn gather1(ch: u32, row: u32) -> vec4<f32> {
    var s = vec4<f32>(0.0);
    for (var t = 0u; t < R; t++) { s += part1[ch * WG + row * R + t]; }
    return s;
}
fn gather2(ch: u32, row: u32) -> vec4<f32> {
    var s = vec4<f32>(0.0);
    for (var t = 0u; t < R; t++) { s += part2[ch * WG + row * R + t]; }
    return s;
}
// Per invocation: two row operands (xa, xb) and two accumulators (ya, yb), DV vec4s each.
var<private> xa: array<vec4<f32>, 16>;
var<private> xb: array<vec4<f32>, 16>;
var<private> ya: array<vec4<f32>, 16>;
var<private> yb: array<vec4<f32>, 16>;
// The additive mask's offset for this workgroup's head: per (batch, head) masks (has_mask 2) are
// [B * H, Tq, Tk]; a shared one (has_mask 1) [Tq, Tk].
var<private> mask_off: u32;

// Vec4 column c4 of row `row` of q, k, v or dO ([rows, d]), zero past d or where !ok (four
// scalar loads: d need not be a multiple of 4); and the store of one into `out` from `base`.
fn quad_ok(ok: bool, c4: u32) -> vec4<bool> {
    let c = 4u * c4;
    return vec4<bool>(ok && c < p.d, ok && c + 1u < p.d, ok && c + 2u < p.d, ok && c + 3u < p.d);
}
fn ld_q(row: u32, ok: bool, c4: u32) -> vec4<f32> {
    let i = row * p.d + 4u * c4;
    return select(vec4<f32>(0.0), vec4<f32>(q[i], q[i + 1u], q[i + 2u], q[i + 3u]), quad_ok(ok, c4));
}
fn ld_k(row: u32, ok: bool, c4: u32) -> vec4<f32> {
    let i = row * p.d + 4u * c4;
    return select(vec4<f32>(0.0), vec4<f32>(k[i], k[i + 1u], k[i + 2u], k[i + 3u]), quad_ok(ok, c4));
}
fn ld_v(row: u32, ok: bool, c4: u32) -> vec4<f32> {
    let i = row * p.d + 4u * c4;
    return select(vec4<f32>(0.0), vec4<f32>(v[i], v[i + 1u], v[i + 2u], v[i + 3u]), quad_ok(ok, c4));
}
fn ld_dout(row: u32, ok: bool, c4: u32) -> vec4<f32> {
    let i = row * p.d + 4u * c4;
    return select(vec4<f32>(0.0), vec4<f32>(dout[i], dout[i + 1u], dout[i + 2u], dout[i + 3u]), quad_ok(ok, c4));
}
fn st(base: u32, row: u32, c4: u32, x: vec4<f32>) {
    let c = 4u * c4;
    let i = base + row * p.d + c;
    if (c < p.d) { out[i] = x.x; }
    if (c + 1u < p.d) { out[i + 1u] = x.y; }
    if (c + 2u < p.d) { out[i + 2u] = x.z; }
    if (c + 3u < p.d) { out[i + 3u] = x.w; }
}

// Whether key j of batch item b exists and is not padding.
fn key_usable(b: u32, j: u32) -> bool {
    return j < p.tk && !(p.has_pad == 1u && pad[b * p.tk + j] != 0);
}

// The masked, scaled score of (i, j) from the raw dot product, or NEG where (i, j) is masked.
fn score(dot_ij: f32, i: u32, j: u32, usable: bool) -> f32 {
    var s = dot_ij * p.scale;
    if (usable && p.has_mask != 0u) { s += amask[mask_off + i * p.tk + j]; }
    let ok = usable && !(p.causal == 1u && j > i) && s > MASKED_BELOW;
    return select(NEG, s, ok);
}

// The keys a block of queries from q0 sees: all, or under the causal mask those up to its last.
fn kv_end(q0: u32) -> u32 {
    if (p.causal == 1u) { return min(p.tk, q0 + BQ); }
    return p.tk;
}

// Stages the K and V tiles of keys j0 .. j0 + BKV of head bh ([key][vec4 column]), and which
// keys are usable.
fn stage_kv(bh: u32, j0: u32, lid: u32) {
    for (var e = lid; e < BKV * DP / 4u; e += WG) {
        let j = j0 + e / (DP / 4u);
        let c4 = e % (DP / 4u);
        t1[e] = ld_k(bh * p.tk + j, j < p.tk, c4);
        t2[e] = ld_v(bh * p.tk + j, j < p.tk, c4);
    }
    for (var e = lid; e < BKV; e += WG) { r1[e] = select(0.0, 1.0, key_usable(bh / p.h, j0 + e)); }
}

// Stages the Q and dO tiles of queries i0 .. i0 + BQ2, and their lse and D_i.
fn stage_qdo(bh: u32, i0: u32, lid: u32) {
    for (var e = lid; e < BQ2 * DP / 4u; e += WG) {
        let i = i0 + e / (DP / 4u);
        let c4 = e % (DP / 4u);
        t1[e] = ld_q(bh * p.tq + i, i < p.tq, c4);
        t2[e] = ld_dout(bh * p.tq + i, i < p.tq, c4);
    }
    for (var e = lid; e < BQ2; e += WG) {
        let i = i0 + e;
        let ok = i < p.tq;
        let r = bh * p.tq + min(i, p.tq - 1u);
        r1[e] = select(NEG, stats[2u * r], ok);
        r2[e] = select(0.0, stats[2u * r + 1u], ok);
    }
}

// Four tile rows' partial dot products with xa (rows 4 ch .. 4 ch + 3 of t1) and with xb (of t2).
fn dots_a1(ch: u32, r: u32) -> vec4<f32> {
    let b = 4u * ch * (DP / 4u);
    return vec4<f32>(dot_a1(b, r), dot_a1(b + DP / 4u, r), dot_a1(b + 2u * (DP / 4u), r), dot_a1(b + 3u * (DP / 4u), r));
}
fn dots_b2(ch: u32, r: u32) -> vec4<f32> {
    let b = 4u * ch * (DP / 4u);
    return vec4<f32>(dot_b2(b, r), dot_b2(b + DP / 4u, r), dot_b2(b + 2u * (DP / 4u), r), dot_b2(b + 3u * (DP / 4u), r));
}

// The scores of row i against tile rows 4 ch .. 4 ch + 3 (keys j0 + 4 ch ..), keys' usability
// from r1.
fn scores_of_keys(raw: vec4<f32>, i: u32, j0: u32, ch: u32, row_ok: bool) -> vec4<f32> {
    let j = j0 + 4u * ch;
    let u = 4u * ch;
    return vec4<f32>(score(raw.x, i, j, row_ok && r1[u] != 0.0),
                     score(raw.y, i, j + 1u, row_ok && r1[u + 1u] != 0.0),
                     score(raw.z, i, j + 2u, row_ok && r1[u + 2u] != 0.0),
                     score(raw.w, i, j + 3u, row_ok && r1[u + 3u] != 0.0));
}

// The scores of queries i0 + 4 ch .. against key j.
fn scores_of_queries(raw: vec4<f32>, i0: u32, ch: u32, j: u32, usable: bool) -> vec4<f32> {
    let i = i0 + 4u * ch;
    return vec4<f32>(score(raw.x, i, j, usable && i < p.tq),
                     score(raw.y, i + 1u, j, usable && i + 1u < p.tq),
                     score(raw.z, i + 2u, j, usable && i + 2u < p.tq),
                     score(raw.w, i + 3u, j, usable && i + 3u < p.tq));
}

fn r1_at(ch: u32) -> vec4<f32> { return vec4<f32>(r1[4u * ch], r1[4u * ch + 1u], r1[4u * ch + 2u], r1[4u * ch + 3u]); }
fn r2_at(ch: u32) -> vec4<f32> { return vec4<f32>(r2[4u * ch], r2[4u * ch + 1u], r2[4u * ch + 2u], r2[4u * ch + 3u]); }

// P = exp(s - lse) where neither is masked.
fn probs(s: vec4<f32>, lse: vec4<f32>) -> vec4<f32> {
    let keep = (s > vec4<f32>(MASKED_BELOW)) & (lse > vec4<f32>(MASKED_BELOW));
    return select(vec4<f32>(0.0), exp(s - lse), keep);
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

// ---- Row operands and accumulators, constant indices only (DV guards fold once DV is known).
// An invocation owns vec4 columns c * R + r (c < DV) of its row: partners read adjacent vec4s.

// xa . row `base` of t1 (the invocation's columns), summed.
fn dot_a1(base: u32, r: u32) -> f32 {
    var a = xa[0] * t1[base + r];
    if (DV > 1u) { a = fma(xa[1], t1[base + 1u * R + r], a); }
    if (DV > 2u) { a = fma(xa[2], t1[base + 2u * R + r], a); }
    if (DV > 3u) { a = fma(xa[3], t1[base + 3u * R + r], a); }
    if (DV > 4u) { a = fma(xa[4], t1[base + 4u * R + r], a); }
    if (DV > 5u) { a = fma(xa[5], t1[base + 5u * R + r], a); }
    if (DV > 6u) { a = fma(xa[6], t1[base + 6u * R + r], a); }
    if (DV > 7u) { a = fma(xa[7], t1[base + 7u * R + r], a); }
    if (DV > 8u) { a = fma(xa[8], t1[base + 8u * R + r], a); }
    if (DV > 9u) { a = fma(xa[9], t1[base + 9u * R + r], a); }
    if (DV > 10u) { a = fma(xa[10], t1[base + 10u * R + r], a); }
    if (DV > 11u) { a = fma(xa[11], t1[base + 11u * R + r], a); }
    if (DV > 12u) { a = fma(xa[12], t1[base + 12u * R + r], a); }
    if (DV > 13u) { a = fma(xa[13], t1[base + 13u * R + r], a); }
    if (DV > 14u) { a = fma(xa[14], t1[base + 14u * R + r], a); }
    if (DV > 15u) { a = fma(xa[15], t1[base + 15u * R + r], a); }
    return a.x + a.y + a.z + a.w;
}

// xb . row `base` of t2 (the invocation's columns), summed.
fn dot_b2(base: u32, r: u32) -> f32 {
    var a = xb[0] * t2[base + r];
    if (DV > 1u) { a = fma(xb[1], t2[base + 1u * R + r], a); }
    if (DV > 2u) { a = fma(xb[2], t2[base + 2u * R + r], a); }
    if (DV > 3u) { a = fma(xb[3], t2[base + 3u * R + r], a); }
    if (DV > 4u) { a = fma(xb[4], t2[base + 4u * R + r], a); }
    if (DV > 5u) { a = fma(xb[5], t2[base + 5u * R + r], a); }
    if (DV > 6u) { a = fma(xb[6], t2[base + 6u * R + r], a); }
    if (DV > 7u) { a = fma(xb[7], t2[base + 7u * R + r], a); }
    if (DV > 8u) { a = fma(xb[8], t2[base + 8u * R + r], a); }
    if (DV > 9u) { a = fma(xb[9], t2[base + 9u * R + r], a); }
    if (DV > 10u) { a = fma(xb[10], t2[base + 10u * R + r], a); }
    if (DV > 11u) { a = fma(xb[11], t2[base + 11u * R + r], a); }
    if (DV > 12u) { a = fma(xb[12], t2[base + 12u * R + r], a); }
    if (DV > 13u) { a = fma(xb[13], t2[base + 13u * R + r], a); }
    if (DV > 14u) { a = fma(xb[14], t2[base + 14u * R + r], a); }
    if (DV > 15u) { a = fma(xb[15], t2[base + 15u * R + r], a); }
    return a.x + a.y + a.z + a.w;
}

// ya += s * row `base` of t1.
fn axpy_ya_t1(s: f32, base: u32, r: u32) {
    let v = vec4<f32>(s);
    ya[0] = fma(v, t1[base + r], ya[0]);
    if (DV > 1u) { ya[1] = fma(v, t1[base + 1u * R + r], ya[1]); }
    if (DV > 2u) { ya[2] = fma(v, t1[base + 2u * R + r], ya[2]); }
    if (DV > 3u) { ya[3] = fma(v, t1[base + 3u * R + r], ya[3]); }
    if (DV > 4u) { ya[4] = fma(v, t1[base + 4u * R + r], ya[4]); }
    if (DV > 5u) { ya[5] = fma(v, t1[base + 5u * R + r], ya[5]); }
    if (DV > 6u) { ya[6] = fma(v, t1[base + 6u * R + r], ya[6]); }
    if (DV > 7u) { ya[7] = fma(v, t1[base + 7u * R + r], ya[7]); }
    if (DV > 8u) { ya[8] = fma(v, t1[base + 8u * R + r], ya[8]); }
    if (DV > 9u) { ya[9] = fma(v, t1[base + 9u * R + r], ya[9]); }
    if (DV > 10u) { ya[10] = fma(v, t1[base + 10u * R + r], ya[10]); }
    if (DV > 11u) { ya[11] = fma(v, t1[base + 11u * R + r], ya[11]); }
    if (DV > 12u) { ya[12] = fma(v, t1[base + 12u * R + r], ya[12]); }
    if (DV > 13u) { ya[13] = fma(v, t1[base + 13u * R + r], ya[13]); }
    if (DV > 14u) { ya[14] = fma(v, t1[base + 14u * R + r], ya[14]); }
    if (DV > 15u) { ya[15] = fma(v, t1[base + 15u * R + r], ya[15]); }
}

// ya += s * row `base` of t2.
fn axpy_ya_t2(s: f32, base: u32, r: u32) {
    let v = vec4<f32>(s);
    ya[0] = fma(v, t2[base + r], ya[0]);
    if (DV > 1u) { ya[1] = fma(v, t2[base + 1u * R + r], ya[1]); }
    if (DV > 2u) { ya[2] = fma(v, t2[base + 2u * R + r], ya[2]); }
    if (DV > 3u) { ya[3] = fma(v, t2[base + 3u * R + r], ya[3]); }
    if (DV > 4u) { ya[4] = fma(v, t2[base + 4u * R + r], ya[4]); }
    if (DV > 5u) { ya[5] = fma(v, t2[base + 5u * R + r], ya[5]); }
    if (DV > 6u) { ya[6] = fma(v, t2[base + 6u * R + r], ya[6]); }
    if (DV > 7u) { ya[7] = fma(v, t2[base + 7u * R + r], ya[7]); }
    if (DV > 8u) { ya[8] = fma(v, t2[base + 8u * R + r], ya[8]); }
    if (DV > 9u) { ya[9] = fma(v, t2[base + 9u * R + r], ya[9]); }
    if (DV > 10u) { ya[10] = fma(v, t2[base + 10u * R + r], ya[10]); }
    if (DV > 11u) { ya[11] = fma(v, t2[base + 11u * R + r], ya[11]); }
    if (DV > 12u) { ya[12] = fma(v, t2[base + 12u * R + r], ya[12]); }
    if (DV > 13u) { ya[13] = fma(v, t2[base + 13u * R + r], ya[13]); }
    if (DV > 14u) { ya[14] = fma(v, t2[base + 14u * R + r], ya[14]); }
    if (DV > 15u) { ya[15] = fma(v, t2[base + 15u * R + r], ya[15]); }
}

// yb += s * row `base` of t2.
fn axpy_yb_t2(s: f32, base: u32, r: u32) {
    let v = vec4<f32>(s);
    yb[0] = fma(v, t2[base + r], yb[0]);
    if (DV > 1u) { yb[1] = fma(v, t2[base + 1u * R + r], yb[1]); }
    if (DV > 2u) { yb[2] = fma(v, t2[base + 2u * R + r], yb[2]); }
    if (DV > 3u) { yb[3] = fma(v, t2[base + 3u * R + r], yb[3]); }
    if (DV > 4u) { yb[4] = fma(v, t2[base + 4u * R + r], yb[4]); }
    if (DV > 5u) { yb[5] = fma(v, t2[base + 5u * R + r], yb[5]); }
    if (DV > 6u) { yb[6] = fma(v, t2[base + 6u * R + r], yb[6]); }
    if (DV > 7u) { yb[7] = fma(v, t2[base + 7u * R + r], yb[7]); }
    if (DV > 8u) { yb[8] = fma(v, t2[base + 8u * R + r], yb[8]); }
    if (DV > 9u) { yb[9] = fma(v, t2[base + 9u * R + r], yb[9]); }
    if (DV > 10u) { yb[10] = fma(v, t2[base + 10u * R + r], yb[10]); }
    if (DV > 11u) { yb[11] = fma(v, t2[base + 11u * R + r], yb[11]); }
    if (DV > 12u) { yb[12] = fma(v, t2[base + 12u * R + r], yb[12]); }
    if (DV > 13u) { yb[13] = fma(v, t2[base + 13u * R + r], yb[13]); }
    if (DV > 14u) { yb[14] = fma(v, t2[base + 14u * R + r], yb[14]); }
    if (DV > 15u) { yb[15] = fma(v, t2[base + 15u * R + r], yb[15]); }
}

fn scale_ya(f: f32) {
    ya[0] *= f;
    if (DV > 1u) { ya[1] *= f; }
    if (DV > 2u) { ya[2] *= f; }
    if (DV > 3u) { ya[3] *= f; }
    if (DV > 4u) { ya[4] *= f; }
    if (DV > 5u) { ya[5] *= f; }
    if (DV > 6u) { ya[6] *= f; }
    if (DV > 7u) { ya[7] *= f; }
    if (DV > 8u) { ya[8] *= f; }
    if (DV > 9u) { ya[9] *= f; }
    if (DV > 10u) { ya[10] *= f; }
    if (DV > 11u) { ya[11] *= f; }
    if (DV > 12u) { ya[12] *= f; }
    if (DV > 13u) { ya[13] *= f; }
    if (DV > 14u) { ya[14] *= f; }
    if (DV > 15u) { ya[15] *= f; }
}

fn zero_ya() {
    ya[0] = vec4<f32>(0.0);
    if (DV > 1u) { ya[1] = vec4<f32>(0.0); }
    if (DV > 2u) { ya[2] = vec4<f32>(0.0); }
    if (DV > 3u) { ya[3] = vec4<f32>(0.0); }
    if (DV > 4u) { ya[4] = vec4<f32>(0.0); }
    if (DV > 5u) { ya[5] = vec4<f32>(0.0); }
    if (DV > 6u) { ya[6] = vec4<f32>(0.0); }
    if (DV > 7u) { ya[7] = vec4<f32>(0.0); }
    if (DV > 8u) { ya[8] = vec4<f32>(0.0); }
    if (DV > 9u) { ya[9] = vec4<f32>(0.0); }
    if (DV > 10u) { ya[10] = vec4<f32>(0.0); }
    if (DV > 11u) { ya[11] = vec4<f32>(0.0); }
    if (DV > 12u) { ya[12] = vec4<f32>(0.0); }
    if (DV > 13u) { ya[13] = vec4<f32>(0.0); }
    if (DV > 14u) { ya[14] = vec4<f32>(0.0); }
    if (DV > 15u) { ya[15] = vec4<f32>(0.0); }
}

fn zero_yb() {
    yb[0] = vec4<f32>(0.0);
    if (DV > 1u) { yb[1] = vec4<f32>(0.0); }
    if (DV > 2u) { yb[2] = vec4<f32>(0.0); }
    if (DV > 3u) { yb[3] = vec4<f32>(0.0); }
    if (DV > 4u) { yb[4] = vec4<f32>(0.0); }
    if (DV > 5u) { yb[5] = vec4<f32>(0.0); }
    if (DV > 6u) { yb[6] = vec4<f32>(0.0); }
    if (DV > 7u) { yb[7] = vec4<f32>(0.0); }
    if (DV > 8u) { yb[8] = vec4<f32>(0.0); }
    if (DV > 9u) { yb[9] = vec4<f32>(0.0); }
    if (DV > 10u) { yb[10] = vec4<f32>(0.0); }
    if (DV > 11u) { yb[11] = vec4<f32>(0.0); }
    if (DV > 12u) { yb[12] = vec4<f32>(0.0); }
    if (DV > 13u) { yb[13] = vec4<f32>(0.0); }
    if (DV > 14u) { yb[14] = vec4<f32>(0.0); }
    if (DV > 15u) { yb[15] = vec4<f32>(0.0); }
}

// The invocation's columns of row `row` of q into xa (zeros where !ok).
fn load_xa_q(row: u32, ok: bool, r: u32) {
    xa[0] = ld_q(row, ok, r);
    if (DV > 1u) { xa[1] = ld_q(row, ok, 1u * R + r); }
    if (DV > 2u) { xa[2] = ld_q(row, ok, 2u * R + r); }
    if (DV > 3u) { xa[3] = ld_q(row, ok, 3u * R + r); }
    if (DV > 4u) { xa[4] = ld_q(row, ok, 4u * R + r); }
    if (DV > 5u) { xa[5] = ld_q(row, ok, 5u * R + r); }
    if (DV > 6u) { xa[6] = ld_q(row, ok, 6u * R + r); }
    if (DV > 7u) { xa[7] = ld_q(row, ok, 7u * R + r); }
    if (DV > 8u) { xa[8] = ld_q(row, ok, 8u * R + r); }
    if (DV > 9u) { xa[9] = ld_q(row, ok, 9u * R + r); }
    if (DV > 10u) { xa[10] = ld_q(row, ok, 10u * R + r); }
    if (DV > 11u) { xa[11] = ld_q(row, ok, 11u * R + r); }
    if (DV > 12u) { xa[12] = ld_q(row, ok, 12u * R + r); }
    if (DV > 13u) { xa[13] = ld_q(row, ok, 13u * R + r); }
    if (DV > 14u) { xa[14] = ld_q(row, ok, 14u * R + r); }
    if (DV > 15u) { xa[15] = ld_q(row, ok, 15u * R + r); }
}

// The invocation's columns of row `row` of k into xa (zeros where !ok).
fn load_xa_k(row: u32, ok: bool, r: u32) {
    xa[0] = ld_k(row, ok, r);
    if (DV > 1u) { xa[1] = ld_k(row, ok, 1u * R + r); }
    if (DV > 2u) { xa[2] = ld_k(row, ok, 2u * R + r); }
    if (DV > 3u) { xa[3] = ld_k(row, ok, 3u * R + r); }
    if (DV > 4u) { xa[4] = ld_k(row, ok, 4u * R + r); }
    if (DV > 5u) { xa[5] = ld_k(row, ok, 5u * R + r); }
    if (DV > 6u) { xa[6] = ld_k(row, ok, 6u * R + r); }
    if (DV > 7u) { xa[7] = ld_k(row, ok, 7u * R + r); }
    if (DV > 8u) { xa[8] = ld_k(row, ok, 8u * R + r); }
    if (DV > 9u) { xa[9] = ld_k(row, ok, 9u * R + r); }
    if (DV > 10u) { xa[10] = ld_k(row, ok, 10u * R + r); }
    if (DV > 11u) { xa[11] = ld_k(row, ok, 11u * R + r); }
    if (DV > 12u) { xa[12] = ld_k(row, ok, 12u * R + r); }
    if (DV > 13u) { xa[13] = ld_k(row, ok, 13u * R + r); }
    if (DV > 14u) { xa[14] = ld_k(row, ok, 14u * R + r); }
    if (DV > 15u) { xa[15] = ld_k(row, ok, 15u * R + r); }
}

// The invocation's columns of row `row` of v into xb (zeros where !ok).
fn load_xb_v(row: u32, ok: bool, r: u32) {
    xb[0] = ld_v(row, ok, r);
    if (DV > 1u) { xb[1] = ld_v(row, ok, 1u * R + r); }
    if (DV > 2u) { xb[2] = ld_v(row, ok, 2u * R + r); }
    if (DV > 3u) { xb[3] = ld_v(row, ok, 3u * R + r); }
    if (DV > 4u) { xb[4] = ld_v(row, ok, 4u * R + r); }
    if (DV > 5u) { xb[5] = ld_v(row, ok, 5u * R + r); }
    if (DV > 6u) { xb[6] = ld_v(row, ok, 6u * R + r); }
    if (DV > 7u) { xb[7] = ld_v(row, ok, 7u * R + r); }
    if (DV > 8u) { xb[8] = ld_v(row, ok, 8u * R + r); }
    if (DV > 9u) { xb[9] = ld_v(row, ok, 9u * R + r); }
    if (DV > 10u) { xb[10] = ld_v(row, ok, 10u * R + r); }
    if (DV > 11u) { xb[11] = ld_v(row, ok, 11u * R + r); }
    if (DV > 12u) { xb[12] = ld_v(row, ok, 12u * R + r); }
    if (DV > 13u) { xb[13] = ld_v(row, ok, 13u * R + r); }
    if (DV > 14u) { xb[14] = ld_v(row, ok, 14u * R + r); }
    if (DV > 15u) { xb[15] = ld_v(row, ok, 15u * R + r); }
}

// The invocation's columns of row `row` of dout into xb (zeros where !ok).
fn load_xb_do(row: u32, ok: bool, r: u32) {
    xb[0] = ld_dout(row, ok, r);
    if (DV > 1u) { xb[1] = ld_dout(row, ok, 1u * R + r); }
    if (DV > 2u) { xb[2] = ld_dout(row, ok, 2u * R + r); }
    if (DV > 3u) { xb[3] = ld_dout(row, ok, 3u * R + r); }
    if (DV > 4u) { xb[4] = ld_dout(row, ok, 4u * R + r); }
    if (DV > 5u) { xb[5] = ld_dout(row, ok, 5u * R + r); }
    if (DV > 6u) { xb[6] = ld_dout(row, ok, 6u * R + r); }
    if (DV > 7u) { xb[7] = ld_dout(row, ok, 7u * R + r); }
    if (DV > 8u) { xb[8] = ld_dout(row, ok, 8u * R + r); }
    if (DV > 9u) { xb[9] = ld_dout(row, ok, 9u * R + r); }
    if (DV > 10u) { xb[10] = ld_dout(row, ok, 10u * R + r); }
    if (DV > 11u) { xb[11] = ld_dout(row, ok, 11u * R + r); }
    if (DV > 12u) { xb[12] = ld_dout(row, ok, 12u * R + r); }
    if (DV > 13u) { xb[13] = ld_dout(row, ok, 13u * R + r); }
    if (DV > 14u) { xb[14] = ld_dout(row, ok, 14u * R + r); }
    if (DV > 15u) { xb[15] = ld_dout(row, ok, 15u * R + r); }
}

// ya * f into row `row` of `out` from element `base`.
fn store_ya(base: u32, row: u32, r: u32, f: f32) {
    st(base, row, r, ya[0] * f);
    if (DV > 1u) { st(base, row, 1u * R + r, ya[1] * f); }
    if (DV > 2u) { st(base, row, 2u * R + r, ya[2] * f); }
    if (DV > 3u) { st(base, row, 3u * R + r, ya[3] * f); }
    if (DV > 4u) { st(base, row, 4u * R + r, ya[4] * f); }
    if (DV > 5u) { st(base, row, 5u * R + r, ya[5] * f); }
    if (DV > 6u) { st(base, row, 6u * R + r, ya[6] * f); }
    if (DV > 7u) { st(base, row, 7u * R + r, ya[7] * f); }
    if (DV > 8u) { st(base, row, 8u * R + r, ya[8] * f); }
    if (DV > 9u) { st(base, row, 9u * R + r, ya[9] * f); }
    if (DV > 10u) { st(base, row, 10u * R + r, ya[10] * f); }
    if (DV > 11u) { st(base, row, 11u * R + r, ya[11] * f); }
    if (DV > 12u) { st(base, row, 12u * R + r, ya[12] * f); }
    if (DV > 13u) { st(base, row, 13u * R + r, ya[13] * f); }
    if (DV > 14u) { st(base, row, 14u * R + r, ya[14] * f); }
    if (DV > 15u) { st(base, row, 15u * R + r, ya[15] * f); }
}

// yb * f into row `row` of `out` from element `base`.
fn store_yb(base: u32, row: u32, r: u32, f: f32) {
    st(base, row, r, yb[0] * f);
    if (DV > 1u) { st(base, row, 1u * R + r, yb[1] * f); }
    if (DV > 2u) { st(base, row, 2u * R + r, yb[2] * f); }
    if (DV > 3u) { st(base, row, 3u * R + r, yb[3] * f); }
    if (DV > 4u) { st(base, row, 4u * R + r, yb[4] * f); }
    if (DV > 5u) { st(base, row, 5u * R + r, yb[5] * f); }
    if (DV > 6u) { st(base, row, 6u * R + r, yb[6] * f); }
    if (DV > 7u) { st(base, row, 7u * R + r, yb[7] * f); }
    if (DV > 8u) { st(base, row, 8u * R + r, yb[8] * f); }
    if (DV > 9u) { st(base, row, 9u * R + r, yb[9] * f); }
    if (DV > 10u) { st(base, row, 10u * R + r, yb[10] * f); }
    if (DV > 11u) { st(base, row, 11u * R + r, yb[11] * f); }
    if (DV > 12u) { st(base, row, 12u * R + r, yb[12] * f); }
    if (DV > 13u) { st(base, row, 13u * R + r, yb[13] * f); }
    if (DV > 14u) { st(base, row, 14u * R + r, yb[14] * f); }
    if (DV > 15u) { st(base, row, 15u * R + r, yb[15] * f); }
}


// The forward: row i's query slice in xa, its output in ya; per chunk of four keys the scores,
// then the online softmax with a lazily raised reference max m (rescaled only when a score
// exceeds it by RESCALE, so P = exp(s - m) stays below e^RESCALE), and P V.
@compute @workgroup_size(WG)
fn flash_forward(@builtin(workgroup_id) wid: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let bh = wid.z * p.h + wid.y;
    mask_off = select(0u, bh * p.tq * p.tk, p.has_mask == 2u);
    let row = lid / R;
    let r = lid % R;
    let q0 = wid.x * BQ;
    let i = q0 + row;
    let row_ok = i < p.tq;
    load_xa_q(bh * p.tq + i, row_ok, r);
    zero_ya();
    var m = NEG;
    var l = 0.0;
    // The tile count is uniform across the workgroup: every barrier is reached by all.
    for (var j0 = 0u; j0 < kv_end(q0); j0 += BKV) {
        stage_kv(bh, j0, lid);
        workgroupBarrier();
        if (R > 1u) {
            for (var ch = 0u; ch < BKV / 4u; ch++) { part1[ch * WG + lid] = dots_a1(ch, r); }
            workgroupBarrier();
        }
        for (var ch = 0u; ch < BKV / 4u; ch++) {
            var raw = vec4<f32>(0.0);
            if (R > 1u) { raw = gather1(ch, row); } else { raw = dots_a1(ch, r); }
            let s = scores_of_keys(raw, i, j0, ch, row_ok);
            let mt = max(max(s.x, s.y), max(s.z, s.w));
            if (mt > m + RESCALE) {
                // exp(NEG - mt) is 0: the first usable keys start the sums.
                let corr = exp(m - mt);
                l *= corr;
                scale_ya(corr);
                m = mt;
            }
            let pr = probs(s, vec4<f32>(m));
            l += pr.x + pr.y + pr.z + pr.w;
            let b = 4u * ch * (DP / 4u);
            axpy_ya_t2(pr.x, b, r);
            axpy_ya_t2(pr.y, b + DP / 4u, r);
            axpy_ya_t2(pr.z, b + 2u * (DP / 4u), r);
            axpy_ya_t2(pr.w, b + 3u * (DP / 4u), r);
        }
        workgroupBarrier();
    }
    if (row_ok) {
        store_ya(0u, bh * p.tq + i, r, select(0.0, 1.0 / l, l > 0.0));
        if (r == 0u) { stats[2u * (bh * p.tq + i)] = select(NEG, m + log(l), l > 0.0); }
    }
}

// dK and dV of a block of keys: key j's k and v slices in xa and xb, dK and dV in ya and yb;
// per chunk of four queries, P and dS, then dV += P dO and dK += dS q.
@compute @workgroup_size(WG)
fn flash_backward_kv(@builtin(workgroup_id) wid: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let bh = wid.z * p.h + wid.y;
    mask_off = select(0u, bh * p.tq * p.tk, p.has_mask == 2u);
    let row = lid / R;
    let r = lid % R;
    let j = wid.x * BKV + row;
    let usable = key_usable(bh / p.h, j);
    load_xa_k(bh * p.tk + j, j < p.tk, r);
    load_xb_v(bh * p.tk + j, j < p.tk, r);
    zero_ya();
    zero_yb();
    // Under the causal mask, queries before the block's first key see none of its keys.
    var i_begin = 0u;
    if (p.causal == 1u) { i_begin = wid.x * BKV; }
    for (var i0 = i_begin; i0 < p.tq; i0 += BQ2) {
        stage_qdo(bh, i0, lid);
        workgroupBarrier();
        if (R > 1u) {
            for (var ch = 0u; ch < BQ2 / 4u; ch++) {
                part1[ch * WG + lid] = dots_a1(ch, r);
                part2[ch * WG + lid] = dots_b2(ch, r);
            }
            workgroupBarrier();
        }
        for (var ch = 0u; ch < BQ2 / 4u; ch++) {
            var raw_s = vec4<f32>(0.0);
            var raw_dp = vec4<f32>(0.0);
            if (R > 1u) {
                raw_s = gather1(ch, row);
                raw_dp = gather2(ch, row);
            } else {
                raw_s = dots_a1(ch, r);
                raw_dp = dots_b2(ch, r);
            }
            let s = scores_of_queries(raw_s, i0, ch, j, usable);
            let pr = probs(s, r1_at(ch));
            let ds = pr * (raw_dp - r2_at(ch)) * p.scale;
            let b = 4u * ch * (DP / 4u);
            axpy_yb_t2(pr.x, b, r);
            axpy_yb_t2(pr.y, b + DP / 4u, r);
            axpy_yb_t2(pr.z, b + 2u * (DP / 4u), r);
            axpy_yb_t2(pr.w, b + 3u * (DP / 4u), r);
            axpy_ya_t1(ds.x, b, r);
            axpy_ya_t1(ds.y, b + DP / 4u, r);
            axpy_ya_t1(ds.z, b + 2u * (DP / 4u), r);
            axpy_ya_t1(ds.w, b + 3u * (DP / 4u), r);
        }
        workgroupBarrier();
    }
    if (j < p.tk) {
        store_ya(0u, bh * p.tk + j, r, 1.0);
        store_yb(p.dv_off, bh * p.tk + j, r, 1.0);
    }
}

// dQ of a block of queries: q and dO slices in xa and xb, dQ in ya; per chunk of four keys,
// dS, then dQ += dS k.
@compute @workgroup_size(WG)
fn flash_backward_q(@builtin(workgroup_id) wid: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let bh = wid.z * p.h + wid.y;
    mask_off = select(0u, bh * p.tq * p.tk, p.has_mask == 2u);
    let row = lid / R;
    let r = lid % R;
    let q0 = wid.x * BQ;
    let i = q0 + row;
    let row_ok = i < p.tq;
    let ri = bh * p.tq + min(i, p.tq - 1u);
    let lse = vec4<f32>(select(NEG, stats[2u * ri], row_ok));
    let di = vec4<f32>(stats[2u * ri + 1u]);
    load_xa_q(bh * p.tq + i, row_ok, r);
    load_xb_do(bh * p.tq + i, row_ok, r);
    zero_ya();
    for (var j0 = 0u; j0 < kv_end(q0); j0 += BKV) {
        stage_kv(bh, j0, lid);
        workgroupBarrier();
        if (R > 1u) {
            for (var ch = 0u; ch < BKV / 4u; ch++) {
                part1[ch * WG + lid] = dots_a1(ch, r);
                part2[ch * WG + lid] = dots_b2(ch, r);
            }
            workgroupBarrier();
        }
        for (var ch = 0u; ch < BKV / 4u; ch++) {
            var raw_s = vec4<f32>(0.0);
            var raw_dp = vec4<f32>(0.0);
            if (R > 1u) {
                raw_s = gather1(ch, row);
                raw_dp = gather2(ch, row);
            } else {
                raw_s = dots_a1(ch, r);
                raw_dp = dots_b2(ch, r);
            }
            let s = scores_of_keys(raw_s, i, j0, ch, row_ok);
            let ds = probs(s, lse) * (raw_dp - di) * p.scale;
            let b = 4u * ch * (DP / 4u);
            axpy_ya_t1(ds.x, b, r);
            axpy_ya_t1(ds.y, b + DP / 4u, r);
            axpy_ya_t1(ds.z, b + 2u * (DP / 4u), r);
            axpy_ya_t1(ds.w, b + 3u * (DP / 4u), r);
        }
        workgroupBarrier();
    }
    if (row_ok) { store_ya(0u, bh * p.tq + i, r, 1.0); }
}
