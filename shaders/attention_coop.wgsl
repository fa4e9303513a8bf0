// Attention on cooperative matrices: f16 Q, K, V ([B, H, T, D]), f32 accumulation, f32 outputs
// and row statistics, with the masks of attention.wgsl (causal, key padding, additive [Tq, Tk] or
// per batch and head). flash_coop16 / flash_coop8 by fragment size S, each with its forward and
// its two backward kernels; flash_coop_absmax and flash_coop_prep prepare the backward.
//
// A workgroup has SGC computing subgroups, each owning S rows (one fragment row) of a block of
// BQ = SGC * S rows: queries (forward, dQ) or keys (dK, dV). The block's operands and then tiles
// of BKV streamed rows (keys, or queries for dK and dV) pass through workgroup memory as f16 rows
// of stride QS (DP + 8: the 16-byte pad puts the 8 rows a fragment load reads at once on distinct
// bank quads), zero past the sequence and D.
// Forward, one pass over the keys (QK^T computed once): per tile, S = Q K^T into the subgroup's
// f32 scratch Sc; the softmax bookkeeping runs on LR lanes per row (columns c = h + LR t, stride
// SCS = BKV + 4 floats: every lane of a read on its own bank); P = exp(s - m) goes to Ps as f16 and
// P V into the output fragments. WGSL gives no element access to a cooperative matrix, so the
// reference max m of a row is raised lazily, only when a score exceeds it by RESCALE (P then
// stays below e^RESCALE, well inside f16): then, and only then (a flag read uniformly by the
// workgroup), the output fragments pass through the scratch to be rescaled row by row.
// Backward (FlashAttention-2, deterministic): dO is scaled by a power of two sigma chosen on the
// device (flash_coop_absmax, flash_coop_prep) so that dO and every dS = P (dP - D) are normal f16
// numbers: |dS| <= 2 D max|dO| max|V|, so sigma = 2^floor(log2(2^14 / max(2 DP max|dO| max|V|,
// max|dO|))). flash_coop*_kv: per key block, S^T = K Q^T and dP^T = V dO^T per query tile, then
// dV += P^T dO and dK += dS^T Q; flash_coop*_q: per query block, S = Q K^T and dP = dO V^T per
// key tile, then dQ += dS K; sigma and the softmax scale undone at the store.
// Private arrays of fragments are indexed by constants only (NF = DP / S <= 8, written out).

enable f16;
enable wgpu_cooperative_matrix;

override S: u32 = 16u;      // fragment size
override SGC: u32 = 4u;     // computing subgroups (S rows each)
override SG: u32 = 32u;     // the adapter's largest subgroup size
override MIN_SG: u32 = 32u; // its smallest
override DP: u32 = 64u;     // head dimension padded to a multiple of S, at most 8 S
override BKV: u32 = 32u;    // streamed rows per tile (keys; queries for dK and dV), a multiple of S
override LR: u32 = 2u;      // lanes per row in the bookkeeping (a power of two)
override NF: u32 = DP / S;  // fragments along the head dimension
override BQ: u32 = SGC * S;
override WG: u32 = SG * SGC;
override MAX_SUBGROUPS: u32 = WG / MIN_SG;
override QS: u32 = DP + select(16u, 8u, (DP / 8u) % 2u == 0u); // f16 row stride of staged operands: an odd number of 16-byte units
override SCS: u32 = BKV + 4u;  // f32 row stride of the scratch
override PS: u32 = BKV + select(16u, 8u, (BKV / 8u) % 2u == 0u); // f16 row stride of P and dS, likewise
override RESCALE: f32 = 8.0;
override AM_WG: u32 = 64u;   // flash_coop_absmax / flash_coop_prep invocations

const NEG: f32 = -3.402823e38;
const MASKED_BELOW: f32 = -1e38;

struct Params {
    b: u32, h: u32, tq: u32, tk: u32,
    d: u32, causal: u32, has_pad: u32, scale: f32,
    has_mask: u32, dv_off: u32, parts: u32,
}

@group(0) @binding(0) var<storage, read> q: array<f16>;
@group(0) @binding(1) var<storage, read> k: array<f16>;
@group(0) @binding(2) var<storage, read> v: array<f16>;
@group(0) @binding(3) var<storage, read> pad: array<i32>;
@group(0) @binding(4) var<storage, read> do16: array<f16>;      // dO * sigma (backward)
@group(0) @binding(4) var<storage, read> dout: array<f32>;      // dO (absmax, prep)
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(7) var<storage, read_write> do16w: array<f16>; // prep's output
@group(0) @binding(8) var<uniform> p: Params;
@group(0) @binding(9) var<storage, read> amask: array<f32>;
@group(0) @binding(10) var<storage, read_write> partw: array<f32>; // absmax's partials
@group(0) @binding(10) var<storage, read> part: array<f32>;
@group(0) @binding(11) var<storage, read_write> sigmaw: array<f32>; // prep: sigma
@group(0) @binding(11) var<storage, read> sigma: array<f32>;

var<workgroup> B1: array<f16, BQ * QS>;   // block operand: Q (forward, dQ), K (dK, dV)
var<workgroup> B2: array<f16, BQ * QS>;   // dO (dQ), V (dK, dV)
var<workgroup> T1: array<f16, BKV * QS>;    // tile operand: K (forward, dQ), Q (dK, dV)
var<workgroup> T2: array<f16, BKV * QS>;    // V (forward, dQ), dO (dK, dV)
var<workgroup> Sc: array<f32, MAX_SUBGROUPS * S * SCS>; // [subgroup][row][column]: S (or S^T), output scratch
var<workgroup> Sd: array<f32, MAX_SUBGROUPS * S * SCS>; // dP (or dP^T)
var<workgroup> Ps: array<f16, MAX_SUBGROUPS * S * PS>;  // P (or P^T)
var<workgroup> Pd: array<f16, MAX_SUBGROUPS * S * PS>;  // dS (or dS^T)
var<workgroup> col_a: array<f32, BKV>;  // per tile row: key usable (forward, dQ) or lse (dK, dV)
var<workgroup> col_b: array<f32, BKV>;  // D * sigma (dK, dV)
var<workgroup> row_a: array<f32, MAX_SUBGROUPS * S>; // m (forward), lse (dQ), key usable (dK, dV)
var<workgroup> row_b: array<f32, MAX_SUBGROUPS * S>; // l (forward), D * sigma (dQ)
var<workgroup> row_c: array<f32, MAX_SUBGROUPS * S>; // the forward's rescale factor
var<workgroup> rescale_flag: u32;
var<workgroup> red: array<f32, 2u * AM_WG>;

// The mask's offset for head bh: per (batch, head) masks (has_mask 2) are [B * H, Tq, Tk].
fn mask_base(bh: u32) -> u32 { return select(0u, bh * p.tq * p.tk, p.has_mask == 2u); }

// Score (i, j) from a raw product: scaled, masked, or NEG.
fn score(raw: f32, mb: u32, i: u32, j: u32, usable: bool) -> f32 {
    var s = raw * p.scale;
    if (usable && p.has_mask != 0u) { s += amask[mb + i * p.tk + j]; }
    return select(NEG, s, usable && !(p.causal == 1u && j > i) && s > MASKED_BELOW);
}

fn kv_end(q0: u32) -> u32 {
    if (p.causal == 1u) { return min(p.tk, q0 + BQ); }
    return p.tk;
}

fn key_usable(b: u32, j: u32) -> bool {
    return j < p.tk && !(p.has_pad == 1u && pad[b * p.tk + j] != 0);
}

// Rows r0 .. r0 + n of a [.., len, d] f16 tensor into a staged array of stride QS, zero past len
// or d. One function per (tensor, array): WGSL passes no workgroup pointers portably.
fn stage_q_b1(bh: u32, r0: u32, lid: u32) {
    for (var e = lid; e < BQ * DP; e += WG) {
        let r = e / DP; let c = e % DP;
        var x = f16(0.0);
        if (r0 + r < p.tq && c < p.d) { x = q[(bh * p.tq + r0 + r) * p.d + c]; }
        B1[r * QS + c] = x;
    }
}
fn stage_do_b2(bh: u32, r0: u32, lid: u32) {
    for (var e = lid; e < BQ * DP; e += WG) {
        let r = e / DP; let c = e % DP;
        var x = f16(0.0);
        if (r0 + r < p.tq && c < p.d) { x = do16[(bh * p.tq + r0 + r) * p.d + c]; }
        B2[r * QS + c] = x;
    }
}
fn stage_kv_b(bh: u32, r0: u32, lid: u32) {
    for (var e = lid; e < BQ * DP; e += WG) {
        let r = e / DP; let c = e % DP;
        let ok = r0 + r < p.tk && c < p.d;
        let at = (bh * p.tk + r0 + r) * p.d + c;
        var x = f16(0.0);
        var y = f16(0.0);
        if (ok) { x = k[at]; y = v[at]; }
        B1[r * QS + c] = x;
        B2[r * QS + c] = y;
    }
}
// Key tile at j0 (K into T1, V into T2 where with_v) and each key's usability into col_a.
fn stage_kv_t(bh: u32, j0: u32, lid: u32, with_v: bool) {
    for (var e = lid; e < BKV * DP; e += WG) {
        let r = e / DP; let c = e % DP;
        let ok = j0 + r < p.tk && c < p.d;
        let at = (bh * p.tk + j0 + r) * p.d + c;
        var x = f16(0.0);
        if (ok) { x = k[at]; }
        T1[r * QS + c] = x;
        if (with_v) {
            var y = f16(0.0);
            if (ok) { y = v[at]; }
            T2[r * QS + c] = y;
        }
    }
    for (var e = lid; e < BKV; e += WG) { col_a[e] = select(0.0, 1.0, key_usable(bh / p.h, j0 + e)); }
}
// Query tile at i0 (Q into T1, dO into T2), their lse into col_a and D * sigma into col_b.
fn stage_qdo_t(bh: u32, i0: u32, lid: u32) {
    for (var e = lid; e < BKV * DP; e += WG) {
        let r = e / DP; let c = e % DP;
        let ok = i0 + r < p.tq && c < p.d;
        let at = (bh * p.tq + i0 + r) * p.d + c;
        var x = f16(0.0);
        var y = f16(0.0);
        if (ok) { x = q[at]; y = do16[at]; }
        T1[r * QS + c] = x;
        T2[r * QS + c] = y;
    }
    for (var e = lid; e < BKV; e += WG) {
        let i = i0 + e;
        let ok = i < p.tq;
        let r = bh * p.tq + min(i, p.tq - 1u);
        col_a[e] = select(NEG, stats[2u * r], ok);
        col_b[e] = select(0.0, stats[2u * r + 1u], ok);
    }
}

// The sum or max of a row's LR partial values (adjacent lanes), in every one of them.
fn row_sum(x: f32) -> f32 {
    var s = x;
    if (LR > 1u) { s += subgroupShuffleXor(s, 1u); }
    if (LR > 2u) { s += subgroupShuffleXor(s, 2u); }
    if (LR > 4u) { s += subgroupShuffleXor(s, 4u); }
    return s;
}
fn row_max(x: f32) -> f32 {
    var s = x;
    if (LR > 1u) { s = max(s, subgroupShuffleXor(s, 1u)); }
    if (LR > 2u) { s = max(s, subgroupShuffleXor(s, 2u)); }
    if (LR > 4u) { s = max(s, subgroupShuffleXor(s, 4u)); }
    return s;
}

// Bookkeeping passes: each covers lanes / LR rows of the subgroup's S (every lane runs every pass,
// so the shuffles stay in uniform control flow; lanes past S rows only compute).
fn passes(lanes: u32) -> u32 {
    let per = max(1u, lanes / LR);
    return (S + per - 1u) / per;
}
fn pass_row(ps_i: u32, lane: u32, lanes: u32) -> u32 { return ps_i * max(1u, lanes / LR) + lane / LR; }

// Forward bookkeeping for the tile at j0 (scores in Sc): each row's new reference max (raised
// only past RESCALE), P into Ps, the sum, and the factor its output must be scaled by.
fn forward_rows(sg: u32, lane: u32, lanes: u32, bh: u32, q0: u32, j0: u32) {
    let mb = mask_base(bh);
    for (var ps_i = 0u; ps_i < passes(lanes); ps_i++) {
        let r = pass_row(ps_i, lane, lanes);
        let live = r < S;
        let rr = min(r, S - 1u);
        let h = lane % LR;
        let i = q0 + (sg % SGC) * S + rr;
        let at = (sg * S + rr) * SCS;
        var mt = NEG;
        for (var t = 0u; t < BKV / LR; t++) {
            let c = h + LR * t;
            mt = max(mt, score(Sc[at + c], mb, i, j0 + c, i < p.tq && col_a[c] != 0.0));
        }
        mt = row_max(mt);
        let m = row_a[sg * S + rr];
        let l = row_b[sg * S + rr];
        var m_new = m;
        var corr = 1.0;
        if (mt > m + RESCALE) { m_new = mt; corr = exp(m - mt); }
        var sum = 0.0;
        for (var t = 0u; t < BKV / LR; t++) {
            let c = h + LR * t;
            let s = score(Sc[at + c], mb, i, j0 + c, i < p.tq && col_a[c] != 0.0);
            let pr = select(0.0, exp(s - m_new), s > MASKED_BELOW);
            sum += pr;
            if (live) { Ps[(sg * S + rr) * PS + c] = f16(pr); }
        }
        sum = row_sum(sum);
        if (live && h == 0u) {
            row_a[sg * S + rr] = m_new;
            row_b[sg * S + rr] = l * corr + sum;
            row_c[sg * S + rr] = corr;
            // Only a row that has output to rescale needs the pass through the scratch.
            if (corr != 1.0 && l > 0.0) { rescale_flag = 1u; }
        }
    }
}

// Scratch block (S x S at stride SCS) of subgroup sg: rows scaled by row_c.
fn scale_scratch(sg: u32, lane: u32, lanes: u32) {
    for (var e = lane; e < S * S; e += lanes) {
        let r = e / S;
        Sc[(sg * S + r) * SCS + e % S] *= row_c[sg * S + r];
    }
}

// A scratch block to out rows r0.. (of `rows` in the tensor) at column c0, times f (per row
// from `per_row` where given: the forward's 1 / l).
fn store_block(sg: u32, lane: u32, lanes: u32, row0: u32, len: u32, base: u32, c0: u32, f: f32, per_row: bool) {
    for (var e = lane; e < S * S; e += lanes) {
        let r = e / S;
        let c = c0 + e % S;
        let i = row0 + r;
        var g = f;
        if (per_row) {
            let l = row_b[sg * S + r];
            g = select(0.0, 1.0 / l, l > 0.0);
        }
        if (i < len && c < p.d) { out[base + i * p.d + c] = Sc[(sg * S + r) * SCS + e % S] * g; }
    }
}

// Backward bookkeeping of dK and dV (rows: keys, columns: the tile's queries at i0): P^T and
// dS^T = P^T (dP^T - D) into Ps and Pd.
fn kv_rows(sg: u32, lane: u32, lanes: u32, bh: u32, k0: u32, i0: u32) {
    let mb = mask_base(bh);
    for (var ps_i = 0u; ps_i < passes(lanes); ps_i++) {
        let r = pass_row(ps_i, lane, lanes);
        let live = r < S;
        let rr = min(r, S - 1u);
        let h = lane % LR;
        let j = k0 + (sg % SGC) * S + rr;
        let usable = row_a[sg * S + rr] != 0.0;
        let at = (sg * S + rr) * SCS;
        for (var t = 0u; t < BKV / LR; t++) {
            let c = h + LR * t;
            let i = i0 + c;
            let s = score(Sc[at + c], mb, i, j, usable && i < p.tq);
            let lse = col_a[c];
            let pr = select(0.0, exp(s - lse), s > MASKED_BELOW && lse > MASKED_BELOW);
            let ds = pr * (Sd[at + c] - col_b[c]);
            if (live) {
                Ps[(sg * S + rr) * PS + c] = f16(pr);
                Pd[(sg * S + rr) * PS + c] = f16(ds);
            }
        }
    }
}

// Backward bookkeeping of dQ (rows: queries, columns: the tile's keys at j0): dS into Pd.
fn q_rows(sg: u32, lane: u32, lanes: u32, bh: u32, q0: u32, j0: u32) {
    let mb = mask_base(bh);
    for (var ps_i = 0u; ps_i < passes(lanes); ps_i++) {
        let r = pass_row(ps_i, lane, lanes);
        let live = r < S;
        let rr = min(r, S - 1u);
        let h = lane % LR;
        let i = q0 + (sg % SGC) * S + rr;
        let lse = row_a[sg * S + rr];
        let di = row_b[sg * S + rr];
        let at = (sg * S + rr) * SCS;
        for (var t = 0u; t < BKV / LR; t++) {
            let c = h + LR * t;
            let s = score(Sc[at + c], mb, i, j0 + c, i < p.tq && col_a[c] != 0.0);
            let pr = select(0.0, exp(s - lse), s > MASKED_BELOW && lse > MASKED_BELOW);
            if (live) { Pd[(sg * S + rr) * PS + c] = f16(pr * (Sd[at + c] - di)); }
        }
    }
}

// max |dO| and max |V| over this workgroup's share (grid-stride), into partials [2 g], [2 g + 1].
@compute @workgroup_size(AM_WG)
fn flash_coop_absmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let nq = p.b * p.h * p.tq * p.d;
    let nk = p.b * p.h * p.tk * p.d;
    let stride = nwg.x * AM_WG;
    var a = 0.0;
    var b = 0.0;
    let steps = (max(nq, nk) + stride - 1u) / stride;
    for (var it = 0u; it < steps; it++) {
        let e = wid.x * AM_WG + lid + it * stride;
        if (e < nq) { a = max(a, abs(dout[e])); }
        if (e < nk) { b = max(b, abs(f32(v[e]))); }
    }
    red[lid] = a;
    red[AM_WG + lid] = b;
    workgroupBarrier();
    for (var half = AM_WG / 2u; half > 0u; half = half / 2u) {
        if (lid < half) {
            red[lid] = max(red[lid], red[lid + half]);
            red[AM_WG + lid] = max(red[AM_WG + lid], red[AM_WG + lid + half]);
        }
        workgroupBarrier();
    }
    if (lid == 0u) { partw[2u * wid.x] = red[0]; partw[2u * wid.x + 1u] = red[AM_WG]; }
}

// sigma from the partials (p.parts of them, at most AM_WG): 2^floor(log2(2^14 / bound)), 1 where
// dO is zero or not finite.
fn sigma_of(lid: u32) -> f32 {
    var a = 0.0;
    var b = 0.0;
    if (lid < p.parts) { a = part[2u * lid]; b = part[2u * lid + 1u]; }
    red[lid] = a;
    red[AM_WG + lid] = b;
    workgroupBarrier();
    for (var half = AM_WG / 2u; half > 0u; half = half / 2u) {
        if (lid < half) {
            red[lid] = max(red[lid], red[lid + half]);
            red[AM_WG + lid] = max(red[AM_WG + lid], red[AM_WG + lid + half]);
        }
        workgroupBarrier();
    }
    let amax_do = red[0];
    let bound = max(2.0 * f32(DP) * amax_do * red[AM_WG], amax_do);
    if (!(bound > 0.0) || bound > 3.0e38) { return 1.0; }
    return exp2(f32(clamp(14 - i32(ceil(log2(bound))), -120, 120)));
}

// Per query row: D * sigma = sigma dO . O into stats[2 r + 1], and dO * sigma as f16; sigma
// into sigmaw[0].
@compute @workgroup_size(AM_WG)
fn flash_coop_prep(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let sgm = sigma_of(lid);
    let g = wid.x + wid.y * nwg.x;
    if (g == 0u && lid == 0u) { sigmaw[0] = sgm; }
    let r = g * AM_WG + lid;
    if (r >= p.b * p.h * p.tq) { return; } // no barriers follow
    var s = 0.0;
    for (var t = 0u; t < p.d; t++) {
        // D from the rounded dO the products see, so that sum_j P dP = D holds as they compute it.
        let x = f16(dout[r * p.d + t] * sgm);
        s += f32(x) * out[r * p.d + t];
        do16w[r * p.d + t] = x;
    }
    stats[2u * r + 1u] = s;
}

// ---- 16 x 16 fragments. naga needs every argument of a cooperative load or store bound to a
// `let` first (its SPIR-V writer otherwise panics).

var<private> o16: array<coop_mat16x16<f32, C>, 8>;  // forward O, dK, dQ (constant indices only)
var<private> v16: array<coop_mat16x16<f32, C>, 8>;  // dV
var<private> q16: array<coop_mat16x16<f16, A>, 8>;  // the forward's Q fragments

// Fragment (row r0, column c0) of a staged array, as A (row-major) or as B^T (a row-major
// [n][k] array read column-major) or B (row-major [k][n]).
fn a16_B1(r0: u32, c0: u32) -> coop_mat16x16<f16, A> { let i = r0 * QS + c0; let s = QS; return coopLoadT<coop_mat16x16<f16, A>>(&B1[i], s); }
fn a16_B2(r0: u32, c0: u32) -> coop_mat16x16<f16, A> { let i = r0 * QS + c0; let s = QS; return coopLoadT<coop_mat16x16<f16, A>>(&B2[i], s); }
fn a16_T1(r0: u32, c0: u32) -> coop_mat16x16<f16, A> { let i = r0 * QS + c0; let s = QS; return coopLoadT<coop_mat16x16<f16, A>>(&T1[i], s); }
fn a16_T2(r0: u32, c0: u32) -> coop_mat16x16<f16, A> { let i = r0 * QS + c0; let s = QS; return coopLoadT<coop_mat16x16<f16, A>>(&T2[i], s); }
fn bt16_T1(r0: u32, c0: u32) -> coop_mat16x16<f16, B> { let i = r0 * QS + c0; let s = QS; return coopLoad<coop_mat16x16<f16, B>>(&T1[i], s); }
fn b16_T1(r0: u32, c0: u32) -> coop_mat16x16<f16, B> { let i = r0 * QS + c0; let s = QS; return coopLoadT<coop_mat16x16<f16, B>>(&T1[i], s); }
fn bt16_T2(r0: u32, c0: u32) -> coop_mat16x16<f16, B> { let i = r0 * QS + c0; let s = QS; return coopLoad<coop_mat16x16<f16, B>>(&T2[i], s); }
fn b16_T2(r0: u32, c0: u32) -> coop_mat16x16<f16, B> { let i = r0 * QS + c0; let s = QS; return coopLoadT<coop_mat16x16<f16, B>>(&T2[i], s); }
fn a16_Ps(sg: u32, c0: u32) -> coop_mat16x16<f16, A> { let i = sg * S * PS + c0; let s = PS; return coopLoadT<coop_mat16x16<f16, A>>(&Ps[i], s); }
fn a16_Pd(sg: u32, c0: u32) -> coop_mat16x16<f16, A> { let i = sg * S * PS + c0; let s = PS; return coopLoadT<coop_mat16x16<f16, A>>(&Pd[i], s); }
fn to_sc16(sg: u32, c0: u32, x: coop_mat16x16<f32, C>) { let f = x; let i = sg * S * SCS + c0; let s = SCS; coopStoreT(f, &Sc[i], s); }
fn to_sd16(sg: u32, c0: u32, x: coop_mat16x16<f32, C>) { let f = x; let i = sg * S * SCS + c0; let s = SCS; coopStoreT(f, &Sd[i], s); }
fn from_sc16(sg: u32) -> coop_mat16x16<f32, C> { let i = sg * S * SCS; let s = SCS; return coopLoadT<coop_mat16x16<f32, C>>(&Sc[i], s); }

fn zero_o16() {
    o16[0] = coop_mat16x16<f32, C>();
    if (NF > 1u) { o16[1] = coop_mat16x16<f32, C>(); }
    if (NF > 2u) { o16[2] = coop_mat16x16<f32, C>(); }
    if (NF > 3u) { o16[3] = coop_mat16x16<f32, C>(); }
    if (NF > 4u) { o16[4] = coop_mat16x16<f32, C>(); }
    if (NF > 5u) { o16[5] = coop_mat16x16<f32, C>(); }
    if (NF > 6u) { o16[6] = coop_mat16x16<f32, C>(); }
    if (NF > 7u) { o16[7] = coop_mat16x16<f32, C>(); }
}
fn zero_v16() {
    v16[0] = coop_mat16x16<f32, C>();
    if (NF > 1u) { v16[1] = coop_mat16x16<f32, C>(); }
    if (NF > 2u) { v16[2] = coop_mat16x16<f32, C>(); }
    if (NF > 3u) { v16[3] = coop_mat16x16<f32, C>(); }
    if (NF > 4u) { v16[4] = coop_mat16x16<f32, C>(); }
    if (NF > 5u) { v16[5] = coop_mat16x16<f32, C>(); }
    if (NF > 6u) { v16[6] = coop_mat16x16<f32, C>(); }
    if (NF > 7u) { v16[7] = coop_mat16x16<f32, C>(); }
}

// The subgroup's Q fragments from the staged block (rows r0 ..).
fn load_q16(r0: u32) {
    q16[0] = a16_B1(r0, 0u * S);
    if (NF > 1u) { q16[1] = a16_B1(r0, 1u * S); }
    if (NF > 2u) { q16[2] = a16_B1(r0, 2u * S); }
    if (NF > 3u) { q16[3] = a16_B1(r0, 3u * S); }
    if (NF > 4u) { q16[4] = a16_B1(r0, 4u * S); }
    if (NF > 5u) { q16[5] = a16_B1(r0, 5u * S); }
    if (NF > 6u) { q16[6] = a16_B1(r0, 6u * S); }
    if (NF > 7u) { q16[7] = a16_B1(r0, 7u * S); }
}

// Q K^T for the tile's keys kf .. kf + S (K^T read column-major from T1).
fn qk16(kf: u32) -> coop_mat16x16<f32, C> {
    var acc = coop_mat16x16<f32, C>();
    acc = coopMultiplyAdd(q16[0], bt16_T1(kf, 0u * S), acc);
    if (NF > 1u) { acc = coopMultiplyAdd(q16[1], bt16_T1(kf, 1u * S), acc); }
    if (NF > 2u) { acc = coopMultiplyAdd(q16[2], bt16_T1(kf, 2u * S), acc); }
    if (NF > 3u) { acc = coopMultiplyAdd(q16[3], bt16_T1(kf, 3u * S), acc); }
    if (NF > 4u) { acc = coopMultiplyAdd(q16[4], bt16_T1(kf, 4u * S), acc); }
    if (NF > 5u) { acc = coopMultiplyAdd(q16[5], bt16_T1(kf, 5u * S), acc); }
    if (NF > 6u) { acc = coopMultiplyAdd(q16[6], bt16_T1(kf, 6u * S), acc); }
    if (NF > 7u) { acc = coopMultiplyAdd(q16[7], bt16_T1(kf, 7u * S), acc); }
    return acc;
}

// Rows r0 .. of B1 times columns cf .. of T1^T.
fn b1t1_16(r0: u32, cf: u32) -> coop_mat16x16<f32, C> {
    var acc = coop_mat16x16<f32, C>();
    acc = coopMultiplyAdd(a16_B1(r0, 0u * S), bt16_T1(cf, 0u * S), acc);
    if (NF > 1u) { acc = coopMultiplyAdd(a16_B1(r0, 1u * S), bt16_T1(cf, 1u * S), acc); }
    if (NF > 2u) { acc = coopMultiplyAdd(a16_B1(r0, 2u * S), bt16_T1(cf, 2u * S), acc); }
    if (NF > 3u) { acc = coopMultiplyAdd(a16_B1(r0, 3u * S), bt16_T1(cf, 3u * S), acc); }
    if (NF > 4u) { acc = coopMultiplyAdd(a16_B1(r0, 4u * S), bt16_T1(cf, 4u * S), acc); }
    if (NF > 5u) { acc = coopMultiplyAdd(a16_B1(r0, 5u * S), bt16_T1(cf, 5u * S), acc); }
    if (NF > 6u) { acc = coopMultiplyAdd(a16_B1(r0, 6u * S), bt16_T1(cf, 6u * S), acc); }
    if (NF > 7u) { acc = coopMultiplyAdd(a16_B1(r0, 7u * S), bt16_T1(cf, 7u * S), acc); }
    return acc;
}

// Rows r0 .. of B2 times columns cf .. of T2^T.
fn b2t2_16(r0: u32, cf: u32) -> coop_mat16x16<f32, C> {
    var acc = coop_mat16x16<f32, C>();
    acc = coopMultiplyAdd(a16_B2(r0, 0u * S), bt16_T2(cf, 0u * S), acc);
    if (NF > 1u) { acc = coopMultiplyAdd(a16_B2(r0, 1u * S), bt16_T2(cf, 1u * S), acc); }
    if (NF > 2u) { acc = coopMultiplyAdd(a16_B2(r0, 2u * S), bt16_T2(cf, 2u * S), acc); }
    if (NF > 3u) { acc = coopMultiplyAdd(a16_B2(r0, 3u * S), bt16_T2(cf, 3u * S), acc); }
    if (NF > 4u) { acc = coopMultiplyAdd(a16_B2(r0, 4u * S), bt16_T2(cf, 4u * S), acc); }
    if (NF > 5u) { acc = coopMultiplyAdd(a16_B2(r0, 5u * S), bt16_T2(cf, 5u * S), acc); }
    if (NF > 6u) { acc = coopMultiplyAdd(a16_B2(r0, 6u * S), bt16_T2(cf, 6u * S), acc); }
    if (NF > 7u) { acc = coopMultiplyAdd(a16_B2(r0, 7u * S), bt16_T2(cf, 7u * S), acc); }
    return acc;
}

// o16 += a times rows kf .. kf + S of T2.
fn acc_o16_T2(a: coop_mat16x16<f16, A>, kf: u32) {
    o16[0] = coopMultiplyAdd(a, b16_T2(kf, 0u * S), o16[0]);
    if (NF > 1u) { o16[1] = coopMultiplyAdd(a, b16_T2(kf, 1u * S), o16[1]); }
    if (NF > 2u) { o16[2] = coopMultiplyAdd(a, b16_T2(kf, 2u * S), o16[2]); }
    if (NF > 3u) { o16[3] = coopMultiplyAdd(a, b16_T2(kf, 3u * S), o16[3]); }
    if (NF > 4u) { o16[4] = coopMultiplyAdd(a, b16_T2(kf, 4u * S), o16[4]); }
    if (NF > 5u) { o16[5] = coopMultiplyAdd(a, b16_T2(kf, 5u * S), o16[5]); }
    if (NF > 6u) { o16[6] = coopMultiplyAdd(a, b16_T2(kf, 6u * S), o16[6]); }
    if (NF > 7u) { o16[7] = coopMultiplyAdd(a, b16_T2(kf, 7u * S), o16[7]); }
}

// o16 += a times rows kf .. kf + S of T1.
fn acc_o16_T1(a: coop_mat16x16<f16, A>, kf: u32) {
    o16[0] = coopMultiplyAdd(a, b16_T1(kf, 0u * S), o16[0]);
    if (NF > 1u) { o16[1] = coopMultiplyAdd(a, b16_T1(kf, 1u * S), o16[1]); }
    if (NF > 2u) { o16[2] = coopMultiplyAdd(a, b16_T1(kf, 2u * S), o16[2]); }
    if (NF > 3u) { o16[3] = coopMultiplyAdd(a, b16_T1(kf, 3u * S), o16[3]); }
    if (NF > 4u) { o16[4] = coopMultiplyAdd(a, b16_T1(kf, 4u * S), o16[4]); }
    if (NF > 5u) { o16[5] = coopMultiplyAdd(a, b16_T1(kf, 5u * S), o16[5]); }
    if (NF > 6u) { o16[6] = coopMultiplyAdd(a, b16_T1(kf, 6u * S), o16[6]); }
    if (NF > 7u) { o16[7] = coopMultiplyAdd(a, b16_T1(kf, 7u * S), o16[7]); }
}

// v16 += a times rows kf .. kf + S of T2.
fn acc_v16_T2(a: coop_mat16x16<f16, A>, kf: u32) {
    v16[0] = coopMultiplyAdd(a, b16_T2(kf, 0u * S), v16[0]);
    if (NF > 1u) { v16[1] = coopMultiplyAdd(a, b16_T2(kf, 1u * S), v16[1]); }
    if (NF > 2u) { v16[2] = coopMultiplyAdd(a, b16_T2(kf, 2u * S), v16[2]); }
    if (NF > 3u) { v16[3] = coopMultiplyAdd(a, b16_T2(kf, 3u * S), v16[3]); }
    if (NF > 4u) { v16[4] = coopMultiplyAdd(a, b16_T2(kf, 4u * S), v16[4]); }
    if (NF > 5u) { v16[5] = coopMultiplyAdd(a, b16_T2(kf, 5u * S), v16[5]); }
    if (NF > 6u) { v16[6] = coopMultiplyAdd(a, b16_T2(kf, 6u * S), v16[6]); }
    if (NF > 7u) { v16[7] = coopMultiplyAdd(a, b16_T2(kf, 7u * S), v16[7]); }
}

// A fragment's rows scaled by row_c through the scratch.
fn rescaled16(sg: u32, lane: u32, lanes: u32, x: coop_mat16x16<f32, C>) -> coop_mat16x16<f32, C> {
    to_sc16(sg, 0u, x);
    workgroupBarrier();
    scale_scratch(sg, lane, lanes);
    workgroupBarrier();
    return from_sc16(sg);
}
fn rescale16(sg: u32, lane: u32, lanes: u32) {
    o16[0] = rescaled16(sg, lane, lanes, o16[0]);
    if (NF > 1u) { o16[1] = rescaled16(sg, lane, lanes, o16[1]); }
    if (NF > 2u) { o16[2] = rescaled16(sg, lane, lanes, o16[2]); }
    if (NF > 3u) { o16[3] = rescaled16(sg, lane, lanes, o16[3]); }
    if (NF > 4u) { o16[4] = rescaled16(sg, lane, lanes, o16[4]); }
    if (NF > 5u) { o16[5] = rescaled16(sg, lane, lanes, o16[5]); }
    if (NF > 6u) { o16[6] = rescaled16(sg, lane, lanes, o16[6]); }
    if (NF > 7u) { o16[7] = rescaled16(sg, lane, lanes, o16[7]); }
}

// Fragment x (head columns c0 ..) of the rows from row0 to `out` from `base`, times f.
fn out16(sg: u32, lane: u32, lanes: u32, x: coop_mat16x16<f32, C>, row0: u32, len: u32, base: u32, c0: u32, f: f32, per_row: bool, computes: bool) {
    workgroupBarrier();
    to_sc16(sg, 0u, x);
    workgroupBarrier();
    if (computes) { store_block(sg, lane, lanes, row0, len, base, c0, f, per_row); }
}
fn store_o16(sg: u32, lane: u32, lanes: u32, row0: u32, len: u32, base: u32, f: f32, per_row: bool, computes: bool) {
    out16(sg, lane, lanes, o16[0], row0, len, base, 0u * S, f, per_row, computes);
    if (NF > 1u) { out16(sg, lane, lanes, o16[1], row0, len, base, 1u * S, f, per_row, computes); }
    if (NF > 2u) { out16(sg, lane, lanes, o16[2], row0, len, base, 2u * S, f, per_row, computes); }
    if (NF > 3u) { out16(sg, lane, lanes, o16[3], row0, len, base, 3u * S, f, per_row, computes); }
    if (NF > 4u) { out16(sg, lane, lanes, o16[4], row0, len, base, 4u * S, f, per_row, computes); }
    if (NF > 5u) { out16(sg, lane, lanes, o16[5], row0, len, base, 5u * S, f, per_row, computes); }
    if (NF > 6u) { out16(sg, lane, lanes, o16[6], row0, len, base, 6u * S, f, per_row, computes); }
    if (NF > 7u) { out16(sg, lane, lanes, o16[7], row0, len, base, 7u * S, f, per_row, computes); }
}
fn store_v16(sg: u32, lane: u32, lanes: u32, row0: u32, len: u32, base: u32, f: f32, per_row: bool, computes: bool) {
    out16(sg, lane, lanes, v16[0], row0, len, base, 0u * S, f, per_row, computes);
    if (NF > 1u) { out16(sg, lane, lanes, v16[1], row0, len, base, 1u * S, f, per_row, computes); }
    if (NF > 2u) { out16(sg, lane, lanes, v16[2], row0, len, base, 2u * S, f, per_row, computes); }
    if (NF > 3u) { out16(sg, lane, lanes, v16[3], row0, len, base, 3u * S, f, per_row, computes); }
    if (NF > 4u) { out16(sg, lane, lanes, v16[4], row0, len, base, 4u * S, f, per_row, computes); }
    if (NF > 5u) { out16(sg, lane, lanes, v16[5], row0, len, base, 5u * S, f, per_row, computes); }
    if (NF > 6u) { out16(sg, lane, lanes, v16[6], row0, len, base, 6u * S, f, per_row, computes); }
    if (NF > 7u) { out16(sg, lane, lanes, v16[7], row0, len, base, 7u * S, f, per_row, computes); }
}

@compute @workgroup_size(WG)
fn flash_coop16(@builtin(workgroup_id) wid: vec3<u32>,
                @builtin(local_invocation_index) lid: u32,
                @builtin(subgroup_id) sg: u32,
                @builtin(subgroup_invocation_id) lane: u32,
                @builtin(subgroup_size) lanes: u32) {
    let bh = wid.z * p.h + wid.y;
    let q0 = wid.x * BQ;
    let r0 = (sg % SGC) * S;
    // Surplus subgroups (smaller subgroups than SG) repeat a computing one's work unseen.
    let computes = sg < SGC;
    stage_q_b1(bh, q0, lid);
    for (var r = lane; r < S; r += lanes) { row_a[sg * S + r] = NEG; row_b[sg * S + r] = 0.0; }
    workgroupBarrier();
    load_q16(r0);
    zero_o16();
    for (var j0 = 0u; j0 < kv_end(q0); j0 += BKV) {
        workgroupBarrier();
        stage_kv_t(bh, j0, lid, true);
        if (lid == 0u) { rescale_flag = 0u; }
        workgroupBarrier();
        for (var kf = 0u; kf < BKV; kf += S) { to_sc16(sg, kf, qk16(kf)); }
        workgroupBarrier();
        forward_rows(sg, lane, lanes, bh, q0, j0);
        if (workgroupUniformLoad(&rescale_flag) != 0u) { rescale16(sg, lane, lanes); }
        for (var kf = 0u; kf < BKV; kf += S) { acc_o16_T2(a16_Ps(sg, kf), kf); }
    }
    store_o16(sg, lane, lanes, q0 + r0, p.tq, bh * p.tq * p.d, 1.0, true, computes);
    for (var r = lane; r < S; r += lanes) {
        let i = q0 + r0 + r;
        let l = row_b[sg * S + r];
        if (computes && i < p.tq) { stats[2u * (bh * p.tq + i)] = select(NEG, row_a[sg * S + r] + log(l), l > 0.0); }
    }
}

@compute @workgroup_size(WG)
fn flash_coop16_kv(@builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32,
                   @builtin(subgroup_id) sg: u32,
                   @builtin(subgroup_invocation_id) lane: u32,
                   @builtin(subgroup_size) lanes: u32) {
    let bh = wid.z * p.h + wid.y;
    let k0 = wid.x * BQ;
    let r0 = (sg % SGC) * S;
    let computes = sg < SGC;
    stage_kv_b(bh, k0, lid);
    for (var r = lane; r < S; r += lanes) { row_a[sg * S + r] = select(0.0, 1.0, key_usable(bh / p.h, k0 + r0 + r)); }
    zero_o16();
    zero_v16();
    // Under the causal mask, queries before the block's first key see none of its keys.
    var i_begin = 0u;
    if (p.causal == 1u) { i_begin = k0; }
    for (var i0 = i_begin; i0 < p.tq; i0 += BKV) {
        workgroupBarrier();
        stage_qdo_t(bh, i0, lid);
        workgroupBarrier();
        for (var qf = 0u; qf < BKV; qf += S) {
            to_sc16(sg, qf, b1t1_16(r0, qf));
            to_sd16(sg, qf, b2t2_16(r0, qf));
        }
        workgroupBarrier();
        kv_rows(sg, lane, lanes, bh, k0, i0);
        workgroupBarrier();
        for (var qf = 0u; qf < BKV; qf += S) {
            acc_v16_T2(a16_Ps(sg, qf), qf);
            acc_o16_T1(a16_Pd(sg, qf), qf);
        }
    }
    let undo = 1.0 / sigma[0];
    store_o16(sg, lane, lanes, k0 + r0, p.tk, bh * p.tk * p.d, p.scale * undo, false, computes);
    store_v16(sg, lane, lanes, k0 + r0, p.tk, p.dv_off + bh * p.tk * p.d, undo, false, computes);
}

@compute @workgroup_size(WG)
fn flash_coop16_q(@builtin(workgroup_id) wid: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32,
                  @builtin(subgroup_id) sg: u32,
                  @builtin(subgroup_invocation_id) lane: u32,
                  @builtin(subgroup_size) lanes: u32) {
    let bh = wid.z * p.h + wid.y;
    let q0 = wid.x * BQ;
    let r0 = (sg % SGC) * S;
    let computes = sg < SGC;
    stage_q_b1(bh, q0, lid);
    stage_do_b2(bh, q0, lid);
    for (var r = lane; r < S; r += lanes) {
        let i = q0 + r0 + r;
        let ri = bh * p.tq + min(i, p.tq - 1u);
        row_a[sg * S + r] = select(NEG, stats[2u * ri], i < p.tq);
        row_b[sg * S + r] = stats[2u * ri + 1u];
    }
    zero_o16();
    for (var j0 = 0u; j0 < kv_end(q0); j0 += BKV) {
        workgroupBarrier();
        stage_kv_t(bh, j0, lid, true);
        workgroupBarrier();
        for (var kf = 0u; kf < BKV; kf += S) {
            to_sc16(sg, kf, b1t1_16(r0, kf));
            to_sd16(sg, kf, b2t2_16(r0, kf));
        }
        workgroupBarrier();
        q_rows(sg, lane, lanes, bh, q0, j0);
        workgroupBarrier();
        for (var kf = 0u; kf < BKV; kf += S) { acc_o16_T1(a16_Pd(sg, kf), kf); }
    }
    store_o16(sg, lane, lanes, q0 + r0, p.tq, bh * p.tq * p.d, p.scale / sigma[0], false, computes);
}

// ---- 8 x 8 fragments: the same with the 8 x 8 types.

var<private> o8: array<coop_mat8x8<f32, C>, 8>;  // forward O, dK, dQ (constant indices only)
var<private> v8: array<coop_mat8x8<f32, C>, 8>;  // dV
var<private> q8: array<coop_mat8x8<f16, A>, 8>;  // the forward's Q fragments

// Fragment (row r0, column c0) of a staged array, as A (row-major) or as B^T (a row-major
// [n][k] array read column-major) or B (row-major [k][n]).
fn a8_B1(r0: u32, c0: u32) -> coop_mat8x8<f16, A> { let i = r0 * QS + c0; let s = QS; return coopLoadT<coop_mat8x8<f16, A>>(&B1[i], s); }
fn a8_B2(r0: u32, c0: u32) -> coop_mat8x8<f16, A> { let i = r0 * QS + c0; let s = QS; return coopLoadT<coop_mat8x8<f16, A>>(&B2[i], s); }
fn a8_T1(r0: u32, c0: u32) -> coop_mat8x8<f16, A> { let i = r0 * QS + c0; let s = QS; return coopLoadT<coop_mat8x8<f16, A>>(&T1[i], s); }
fn a8_T2(r0: u32, c0: u32) -> coop_mat8x8<f16, A> { let i = r0 * QS + c0; let s = QS; return coopLoadT<coop_mat8x8<f16, A>>(&T2[i], s); }
fn bt8_T1(r0: u32, c0: u32) -> coop_mat8x8<f16, B> { let i = r0 * QS + c0; let s = QS; return coopLoad<coop_mat8x8<f16, B>>(&T1[i], s); }
fn b8_T1(r0: u32, c0: u32) -> coop_mat8x8<f16, B> { let i = r0 * QS + c0; let s = QS; return coopLoadT<coop_mat8x8<f16, B>>(&T1[i], s); }
fn bt8_T2(r0: u32, c0: u32) -> coop_mat8x8<f16, B> { let i = r0 * QS + c0; let s = QS; return coopLoad<coop_mat8x8<f16, B>>(&T2[i], s); }
fn b8_T2(r0: u32, c0: u32) -> coop_mat8x8<f16, B> { let i = r0 * QS + c0; let s = QS; return coopLoadT<coop_mat8x8<f16, B>>(&T2[i], s); }
fn a8_Ps(sg: u32, c0: u32) -> coop_mat8x8<f16, A> { let i = sg * S * PS + c0; let s = PS; return coopLoadT<coop_mat8x8<f16, A>>(&Ps[i], s); }
fn a8_Pd(sg: u32, c0: u32) -> coop_mat8x8<f16, A> { let i = sg * S * PS + c0; let s = PS; return coopLoadT<coop_mat8x8<f16, A>>(&Pd[i], s); }
fn to_sc8(sg: u32, c0: u32, x: coop_mat8x8<f32, C>) { let f = x; let i = sg * S * SCS + c0; let s = SCS; coopStoreT(f, &Sc[i], s); }
fn to_sd8(sg: u32, c0: u32, x: coop_mat8x8<f32, C>) { let f = x; let i = sg * S * SCS + c0; let s = SCS; coopStoreT(f, &Sd[i], s); }
fn from_sc8(sg: u32) -> coop_mat8x8<f32, C> { let i = sg * S * SCS; let s = SCS; return coopLoadT<coop_mat8x8<f32, C>>(&Sc[i], s); }

fn zero_o8() {
    o8[0] = coop_mat8x8<f32, C>();
    if (NF > 1u) { o8[1] = coop_mat8x8<f32, C>(); }
    if (NF > 2u) { o8[2] = coop_mat8x8<f32, C>(); }
    if (NF > 3u) { o8[3] = coop_mat8x8<f32, C>(); }
    if (NF > 4u) { o8[4] = coop_mat8x8<f32, C>(); }
    if (NF > 5u) { o8[5] = coop_mat8x8<f32, C>(); }
    if (NF > 6u) { o8[6] = coop_mat8x8<f32, C>(); }
    if (NF > 7u) { o8[7] = coop_mat8x8<f32, C>(); }
}
fn zero_v8() {
    v8[0] = coop_mat8x8<f32, C>();
    if (NF > 1u) { v8[1] = coop_mat8x8<f32, C>(); }
    if (NF > 2u) { v8[2] = coop_mat8x8<f32, C>(); }
    if (NF > 3u) { v8[3] = coop_mat8x8<f32, C>(); }
    if (NF > 4u) { v8[4] = coop_mat8x8<f32, C>(); }
    if (NF > 5u) { v8[5] = coop_mat8x8<f32, C>(); }
    if (NF > 6u) { v8[6] = coop_mat8x8<f32, C>(); }
    if (NF > 7u) { v8[7] = coop_mat8x8<f32, C>(); }
}

// The subgroup's Q fragments from the staged block (rows r0 ..).
fn load_q8(r0: u32) {
    q8[0] = a8_B1(r0, 0u * S);
    if (NF > 1u) { q8[1] = a8_B1(r0, 1u * S); }
    if (NF > 2u) { q8[2] = a8_B1(r0, 2u * S); }
    if (NF > 3u) { q8[3] = a8_B1(r0, 3u * S); }
    if (NF > 4u) { q8[4] = a8_B1(r0, 4u * S); }
    if (NF > 5u) { q8[5] = a8_B1(r0, 5u * S); }
    if (NF > 6u) { q8[6] = a8_B1(r0, 6u * S); }
    if (NF > 7u) { q8[7] = a8_B1(r0, 7u * S); }
}

// Q K^T for the tile's keys kf .. kf + S (K^T read column-major from T1).
fn qk8(kf: u32) -> coop_mat8x8<f32, C> {
    var acc = coop_mat8x8<f32, C>();
    acc = coopMultiplyAdd(q8[0], bt8_T1(kf, 0u * S), acc);
    if (NF > 1u) { acc = coopMultiplyAdd(q8[1], bt8_T1(kf, 1u * S), acc); }
    if (NF > 2u) { acc = coopMultiplyAdd(q8[2], bt8_T1(kf, 2u * S), acc); }
    if (NF > 3u) { acc = coopMultiplyAdd(q8[3], bt8_T1(kf, 3u * S), acc); }
    if (NF > 4u) { acc = coopMultiplyAdd(q8[4], bt8_T1(kf, 4u * S), acc); }
    if (NF > 5u) { acc = coopMultiplyAdd(q8[5], bt8_T1(kf, 5u * S), acc); }
    if (NF > 6u) { acc = coopMultiplyAdd(q8[6], bt8_T1(kf, 6u * S), acc); }
    if (NF > 7u) { acc = coopMultiplyAdd(q8[7], bt8_T1(kf, 7u * S), acc); }
    return acc;
}

// Rows r0 .. of B1 times columns cf .. of T1^T.
fn b1t1_8(r0: u32, cf: u32) -> coop_mat8x8<f32, C> {
    var acc = coop_mat8x8<f32, C>();
    acc = coopMultiplyAdd(a8_B1(r0, 0u * S), bt8_T1(cf, 0u * S), acc);
    if (NF > 1u) { acc = coopMultiplyAdd(a8_B1(r0, 1u * S), bt8_T1(cf, 1u * S), acc); }
    if (NF > 2u) { acc = coopMultiplyAdd(a8_B1(r0, 2u * S), bt8_T1(cf, 2u * S), acc); }
    if (NF > 3u) { acc = coopMultiplyAdd(a8_B1(r0, 3u * S), bt8_T1(cf, 3u * S), acc); }
    if (NF > 4u) { acc = coopMultiplyAdd(a8_B1(r0, 4u * S), bt8_T1(cf, 4u * S), acc); }
    if (NF > 5u) { acc = coopMultiplyAdd(a8_B1(r0, 5u * S), bt8_T1(cf, 5u * S), acc); }
    if (NF > 6u) { acc = coopMultiplyAdd(a8_B1(r0, 6u * S), bt8_T1(cf, 6u * S), acc); }
    if (NF > 7u) { acc = coopMultiplyAdd(a8_B1(r0, 7u * S), bt8_T1(cf, 7u * S), acc); }
    return acc;
}

// Rows r0 .. of B2 times columns cf .. of T2^T.
fn b2t2_8(r0: u32, cf: u32) -> coop_mat8x8<f32, C> {
    var acc = coop_mat8x8<f32, C>();
    acc = coopMultiplyAdd(a8_B2(r0, 0u * S), bt8_T2(cf, 0u * S), acc);
    if (NF > 1u) { acc = coopMultiplyAdd(a8_B2(r0, 1u * S), bt8_T2(cf, 1u * S), acc); }
    if (NF > 2u) { acc = coopMultiplyAdd(a8_B2(r0, 2u * S), bt8_T2(cf, 2u * S), acc); }
    if (NF > 3u) { acc = coopMultiplyAdd(a8_B2(r0, 3u * S), bt8_T2(cf, 3u * S), acc); }
    if (NF > 4u) { acc = coopMultiplyAdd(a8_B2(r0, 4u * S), bt8_T2(cf, 4u * S), acc); }
    if (NF > 5u) { acc = coopMultiplyAdd(a8_B2(r0, 5u * S), bt8_T2(cf, 5u * S), acc); }
    if (NF > 6u) { acc = coopMultiplyAdd(a8_B2(r0, 6u * S), bt8_T2(cf, 6u * S), acc); }
    if (NF > 7u) { acc = coopMultiplyAdd(a8_B2(r0, 7u * S), bt8_T2(cf, 7u * S), acc); }
    return acc;
}

// o8 += a times rows kf .. kf + S of T2.
fn acc_o8_T2(a: coop_mat8x8<f16, A>, kf: u32) {
    o8[0] = coopMultiplyAdd(a, b8_T2(kf, 0u * S), o8[0]);
    if (NF > 1u) { o8[1] = coopMultiplyAdd(a, b8_T2(kf, 1u * S), o8[1]); }
    if (NF > 2u) { o8[2] = coopMultiplyAdd(a, b8_T2(kf, 2u * S), o8[2]); }
    if (NF > 3u) { o8[3] = coopMultiplyAdd(a, b8_T2(kf, 3u * S), o8[3]); }
    if (NF > 4u) { o8[4] = coopMultiplyAdd(a, b8_T2(kf, 4u * S), o8[4]); }
    if (NF > 5u) { o8[5] = coopMultiplyAdd(a, b8_T2(kf, 5u * S), o8[5]); }
    if (NF > 6u) { o8[6] = coopMultiplyAdd(a, b8_T2(kf, 6u * S), o8[6]); }
    if (NF > 7u) { o8[7] = coopMultiplyAdd(a, b8_T2(kf, 7u * S), o8[7]); }
}

// o8 += a times rows kf .. kf + S of T1.
fn acc_o8_T1(a: coop_mat8x8<f16, A>, kf: u32) {
    o8[0] = coopMultiplyAdd(a, b8_T1(kf, 0u * S), o8[0]);
    if (NF > 1u) { o8[1] = coopMultiplyAdd(a, b8_T1(kf, 1u * S), o8[1]); }
    if (NF > 2u) { o8[2] = coopMultiplyAdd(a, b8_T1(kf, 2u * S), o8[2]); }
    if (NF > 3u) { o8[3] = coopMultiplyAdd(a, b8_T1(kf, 3u * S), o8[3]); }
    if (NF > 4u) { o8[4] = coopMultiplyAdd(a, b8_T1(kf, 4u * S), o8[4]); }
    if (NF > 5u) { o8[5] = coopMultiplyAdd(a, b8_T1(kf, 5u * S), o8[5]); }
    if (NF > 6u) { o8[6] = coopMultiplyAdd(a, b8_T1(kf, 6u * S), o8[6]); }
    if (NF > 7u) { o8[7] = coopMultiplyAdd(a, b8_T1(kf, 7u * S), o8[7]); }
}

// v8 += a times rows kf .. kf + S of T2.
fn acc_v8_T2(a: coop_mat8x8<f16, A>, kf: u32) {
    v8[0] = coopMultiplyAdd(a, b8_T2(kf, 0u * S), v8[0]);
    if (NF > 1u) { v8[1] = coopMultiplyAdd(a, b8_T2(kf, 1u * S), v8[1]); }
    if (NF > 2u) { v8[2] = coopMultiplyAdd(a, b8_T2(kf, 2u * S), v8[2]); }
    if (NF > 3u) { v8[3] = coopMultiplyAdd(a, b8_T2(kf, 3u * S), v8[3]); }
    if (NF > 4u) { v8[4] = coopMultiplyAdd(a, b8_T2(kf, 4u * S), v8[4]); }
    if (NF > 5u) { v8[5] = coopMultiplyAdd(a, b8_T2(kf, 5u * S), v8[5]); }
    if (NF > 6u) { v8[6] = coopMultiplyAdd(a, b8_T2(kf, 6u * S), v8[6]); }
    if (NF > 7u) { v8[7] = coopMultiplyAdd(a, b8_T2(kf, 7u * S), v8[7]); }
}

// A fragment's rows scaled by row_c through the scratch.
fn rescaled8(sg: u32, lane: u32, lanes: u32, x: coop_mat8x8<f32, C>) -> coop_mat8x8<f32, C> {
    to_sc8(sg, 0u, x);
    workgroupBarrier();
    scale_scratch(sg, lane, lanes);
    workgroupBarrier();
    return from_sc8(sg);
}
fn rescale8(sg: u32, lane: u32, lanes: u32) {
    o8[0] = rescaled8(sg, lane, lanes, o8[0]);
    if (NF > 1u) { o8[1] = rescaled8(sg, lane, lanes, o8[1]); }
    if (NF > 2u) { o8[2] = rescaled8(sg, lane, lanes, o8[2]); }
    if (NF > 3u) { o8[3] = rescaled8(sg, lane, lanes, o8[3]); }
    if (NF > 4u) { o8[4] = rescaled8(sg, lane, lanes, o8[4]); }
    if (NF > 5u) { o8[5] = rescaled8(sg, lane, lanes, o8[5]); }
    if (NF > 6u) { o8[6] = rescaled8(sg, lane, lanes, o8[6]); }
    if (NF > 7u) { o8[7] = rescaled8(sg, lane, lanes, o8[7]); }
}

// Fragment x (head columns c0 ..) of the rows from row0 to `out` from `base`, times f.
fn out8(sg: u32, lane: u32, lanes: u32, x: coop_mat8x8<f32, C>, row0: u32, len: u32, base: u32, c0: u32, f: f32, per_row: bool, computes: bool) {
    workgroupBarrier();
    to_sc8(sg, 0u, x);
    workgroupBarrier();
    if (computes) { store_block(sg, lane, lanes, row0, len, base, c0, f, per_row); }
}
fn store_o8(sg: u32, lane: u32, lanes: u32, row0: u32, len: u32, base: u32, f: f32, per_row: bool, computes: bool) {
    out8(sg, lane, lanes, o8[0], row0, len, base, 0u * S, f, per_row, computes);
    if (NF > 1u) { out8(sg, lane, lanes, o8[1], row0, len, base, 1u * S, f, per_row, computes); }
    if (NF > 2u) { out8(sg, lane, lanes, o8[2], row0, len, base, 2u * S, f, per_row, computes); }
    if (NF > 3u) { out8(sg, lane, lanes, o8[3], row0, len, base, 3u * S, f, per_row, computes); }
    if (NF > 4u) { out8(sg, lane, lanes, o8[4], row0, len, base, 4u * S, f, per_row, computes); }
    if (NF > 5u) { out8(sg, lane, lanes, o8[5], row0, len, base, 5u * S, f, per_row, computes); }
    if (NF > 6u) { out8(sg, lane, lanes, o8[6], row0, len, base, 6u * S, f, per_row, computes); }
    if (NF > 7u) { out8(sg, lane, lanes, o8[7], row0, len, base, 7u * S, f, per_row, computes); }
}
fn store_v8(sg: u32, lane: u32, lanes: u32, row0: u32, len: u32, base: u32, f: f32, per_row: bool, computes: bool) {
    out8(sg, lane, lanes, v8[0], row0, len, base, 0u * S, f, per_row, computes);
    if (NF > 1u) { out8(sg, lane, lanes, v8[1], row0, len, base, 1u * S, f, per_row, computes); }
    if (NF > 2u) { out8(sg, lane, lanes, v8[2], row0, len, base, 2u * S, f, per_row, computes); }
    if (NF > 3u) { out8(sg, lane, lanes, v8[3], row0, len, base, 3u * S, f, per_row, computes); }
    if (NF > 4u) { out8(sg, lane, lanes, v8[4], row0, len, base, 4u * S, f, per_row, computes); }
    if (NF > 5u) { out8(sg, lane, lanes, v8[5], row0, len, base, 5u * S, f, per_row, computes); }
    if (NF > 6u) { out8(sg, lane, lanes, v8[6], row0, len, base, 6u * S, f, per_row, computes); }
    if (NF > 7u) { out8(sg, lane, lanes, v8[7], row0, len, base, 7u * S, f, per_row, computes); }
}

@compute @workgroup_size(WG)
fn flash_coop8(@builtin(workgroup_id) wid: vec3<u32>,
                @builtin(local_invocation_index) lid: u32,
                @builtin(subgroup_id) sg: u32,
                @builtin(subgroup_invocation_id) lane: u32,
                @builtin(subgroup_size) lanes: u32) {
    let bh = wid.z * p.h + wid.y;
    let q0 = wid.x * BQ;
    let r0 = (sg % SGC) * S;
    // Surplus subgroups (smaller subgroups than SG) repeat a computing one's work unseen.
    let computes = sg < SGC;
    stage_q_b1(bh, q0, lid);
    for (var r = lane; r < S; r += lanes) { row_a[sg * S + r] = NEG; row_b[sg * S + r] = 0.0; }
    workgroupBarrier();
    load_q8(r0);
    zero_o8();
    for (var j0 = 0u; j0 < kv_end(q0); j0 += BKV) {
        workgroupBarrier();
        stage_kv_t(bh, j0, lid, true);
        if (lid == 0u) { rescale_flag = 0u; }
        workgroupBarrier();
        for (var kf = 0u; kf < BKV; kf += S) { to_sc8(sg, kf, qk8(kf)); }
        workgroupBarrier();
        forward_rows(sg, lane, lanes, bh, q0, j0);
        if (workgroupUniformLoad(&rescale_flag) != 0u) { rescale8(sg, lane, lanes); }
        for (var kf = 0u; kf < BKV; kf += S) { acc_o8_T2(a8_Ps(sg, kf), kf); }
    }
    store_o8(sg, lane, lanes, q0 + r0, p.tq, bh * p.tq * p.d, 1.0, true, computes);
    for (var r = lane; r < S; r += lanes) {
        let i = q0 + r0 + r;
        let l = row_b[sg * S + r];
        if (computes && i < p.tq) { stats[2u * (bh * p.tq + i)] = select(NEG, row_a[sg * S + r] + log(l), l > 0.0); }
    }
}

@compute @workgroup_size(WG)
fn flash_coop8_kv(@builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32,
                   @builtin(subgroup_id) sg: u32,
                   @builtin(subgroup_invocation_id) lane: u32,
                   @builtin(subgroup_size) lanes: u32) {
    let bh = wid.z * p.h + wid.y;
    let k0 = wid.x * BQ;
    let r0 = (sg % SGC) * S;
    let computes = sg < SGC;
    stage_kv_b(bh, k0, lid);
    for (var r = lane; r < S; r += lanes) { row_a[sg * S + r] = select(0.0, 1.0, key_usable(bh / p.h, k0 + r0 + r)); }
    zero_o8();
    zero_v8();
    // Under the causal mask, queries before the block's first key see none of its keys.
    var i_begin = 0u;
    if (p.causal == 1u) { i_begin = k0; }
    for (var i0 = i_begin; i0 < p.tq; i0 += BKV) {
        workgroupBarrier();
        stage_qdo_t(bh, i0, lid);
        workgroupBarrier();
        for (var qf = 0u; qf < BKV; qf += S) {
            to_sc8(sg, qf, b1t1_8(r0, qf));
            to_sd8(sg, qf, b2t2_8(r0, qf));
        }
        workgroupBarrier();
        kv_rows(sg, lane, lanes, bh, k0, i0);
        workgroupBarrier();
        for (var qf = 0u; qf < BKV; qf += S) {
            acc_v8_T2(a8_Ps(sg, qf), qf);
            acc_o8_T1(a8_Pd(sg, qf), qf);
        }
    }
    let undo = 1.0 / sigma[0];
    store_o8(sg, lane, lanes, k0 + r0, p.tk, bh * p.tk * p.d, p.scale * undo, false, computes);
    store_v8(sg, lane, lanes, k0 + r0, p.tk, p.dv_off + bh * p.tk * p.d, undo, false, computes);
}

@compute @workgroup_size(WG)
fn flash_coop8_q(@builtin(workgroup_id) wid: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32,
                  @builtin(subgroup_id) sg: u32,
                  @builtin(subgroup_invocation_id) lane: u32,
                  @builtin(subgroup_size) lanes: u32) {
    let bh = wid.z * p.h + wid.y;
    let q0 = wid.x * BQ;
    let r0 = (sg % SGC) * S;
    let computes = sg < SGC;
    stage_q_b1(bh, q0, lid);
    stage_do_b2(bh, q0, lid);
    for (var r = lane; r < S; r += lanes) {
        let i = q0 + r0 + r;
        let ri = bh * p.tq + min(i, p.tq - 1u);
        row_a[sg * S + r] = select(NEG, stats[2u * ri], i < p.tq);
        row_b[sg * S + r] = stats[2u * ri + 1u];
    }
    zero_o8();
    for (var j0 = 0u; j0 < kv_end(q0); j0 += BKV) {
        workgroupBarrier();
        stage_kv_t(bh, j0, lid, true);
        workgroupBarrier();
        for (var kf = 0u; kf < BKV; kf += S) {
            to_sc8(sg, kf, b1t1_8(r0, kf));
            to_sd8(sg, kf, b2t2_8(r0, kf));
        }
        workgroupBarrier();
        q_rows(sg, lane, lanes, bh, q0, j0);
        workgroupBarrier();
        for (var kf = 0u; kf < BKV; kf += S) { acc_o8_T1(a8_Pd(sg, kf), kf); }
    }
    store_o8(sg, lane, lanes, q0 + r0, p.tq, bh * p.tq * p.d, p.scale / sigma[0], false, computes);
}
