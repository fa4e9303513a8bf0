// Attention forward on cooperative matrices: f16 Q, K, V ([B, H, T, D]), f32 accumulation, f32
// output O and row statistics, with the masks of attention.wgsl (causal, key padding, additive).
// A workgroup takes a block of BQ = SGC * S query rows of one (batch, head): each of its SGC
// computing subgroups owns S rows (one fragment row). Q's block, then K and V in tiles of BKV
// keys, pass through workgroup memory as f16, zero-padded past T and D.
// WGSL gives no element access to a cooperative matrix, so an accumulator cannot be rescaled row
// by row as an online softmax needs. The kernel makes two passes over the keys instead: the first
// computes S = Q K^T tile by tile and keeps each row's running max and sum (the logsumexp, saved
// for the backward); the second computes P = exp(S - lse) exactly, as f16, and accumulates P V in
// the subgroups' matrix accumulators, which then hold the final O. Causal: key tiles past the
// block's last query are never loaded. flash_coop16 / flash_coop8 by fragment size.

enable f16;
enable wgpu_cooperative_matrix;

override S: u32 = 16u;      // fragment size
override SGC: u32 = 4u;     // computing subgroups (S query rows each)
override SG: u32 = 32u;     // the adapter's largest subgroup size
override MIN_SG: u32 = 32u; // its smallest
override DP: u32 = 64u;     // head dimension padded to a multiple of S
override BKV: u32 = 32u;    // keys per tile, a multiple of S
override BQ: u32 = SGC * S;
override WG: u32 = SG * SGC;
override MAX_SUBGROUPS: u32 = WG / MIN_SG;
override QS: u32 = DP + 8u;   // shared row stride of Q, K, V tiles (f16)
override PS: u32 = BKV + 8u;  // shared row stride of P (f16)

const NEG: f32 = -3.402823e38;
const MASKED_BELOW: f32 = -1e38;

struct Params {
    b: u32, h: u32, tq: u32, tk: u32,
    d: u32, causal: u32, has_pad: u32, scale: f32,
    has_mask: u32, dv_off: u32,
}

@group(0) @binding(0) var<storage, read> q: array<f16>;
@group(0) @binding(1) var<storage, read> k: array<f16>;
@group(0) @binding(2) var<storage, read> v: array<f16>;
@group(0) @binding(3) var<storage, read> pad: array<i32>;
@group(0) @binding(5) var<storage, read_write> stats: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(8) var<uniform> p: Params;
@group(0) @binding(9) var<storage, read> amask: array<f32>;

var<workgroup> Qs: array<f16, BQ * QS>;
var<workgroup> Ks: array<f16, BKV * QS>;
var<workgroup> Vs: array<f16, BKV * QS>;
var<workgroup> Ps: array<f16, MAX_SUBGROUPS * S * PS>;   // [subgroup][row][key]
var<workgroup> Sc: array<f32, MAX_SUBGROUPS * S * BKV>;  // [subgroup][row][key] scores, then O
var<workgroup> keyok: array<f32, BKV>;
var<workgroup> row_m: array<f32, MAX_SUBGROUPS * S>;
var<workgroup> row_l: array<f32, MAX_SUBGROUPS * S>;

var<private> o16: array<coop_mat16x16<f32, C>, 8>;
var<private> o8: array<coop_mat8x8<f32, C>, 16>;

// Rows r0 .. r0 + rows of a [.., T, d] tensor into a shared tile of stride QS, zero past T or d.
fn stage_q(bh: u32, i0: u32, lid: u32) {
    for (var e = lid; e < BQ * DP; e += WG) {
        let r = e / DP;
        let c = e % DP;
        var x = f16(0.0);
        if (i0 + r < p.tq && c < p.d) { x = q[(bh * p.tq + i0 + r) * p.d + c]; }
        Qs[r * QS + c] = x;
    }
}

fn stage_kv(bh: u32, j0: u32, lid: u32, with_v: bool) {
    for (var e = lid; e < BKV * DP; e += WG) {
        let r = e / DP;
        let c = e % DP;
        let ok = j0 + r < p.tk && c < p.d;
        let at = (bh * p.tk + j0 + r) * p.d + c;
        var x = f16(0.0);
        if (ok) { x = k[at]; }
        Ks[r * QS + c] = x;
        if (with_v) {
            var y = f16(0.0);
            if (ok) { y = v[at]; }
            Vs[r * QS + c] = y;
        }
    }
    for (var e = lid; e < BKV; e += WG) {
        let j = j0 + e;
        var ok = j < p.tk;
        if (ok && p.has_pad == 1u) { ok = pad[(bh / p.h) * p.tk + j] == 0; }
        keyok[e] = select(0.0, 1.0, ok);
    }
}

// Score (i, j) from a raw product in the scratch: scaled, masked, or NEG.
fn score(raw: f32, i: u32, j: u32, usable: bool) -> f32 {
    var s = raw * p.scale;
    if (usable && p.has_mask == 1u) { s += amask[i * p.tk + j]; }
    return select(NEG, s, usable && !(p.causal == 1u && j > i) && s > MASKED_BELOW);
}

fn kv_end(q0: u32) -> u32 {
    if (p.causal == 1u) { return min(p.tk, q0 + BQ); }
    return p.tk;
}

// The two fragment sizes' S = Q K^T into the scratch and P V into the accumulators. naga needs
// every argument of a cooperative load or store bound to a `let` first.
fn scores16(sg: u32) {
    let r0 = (sg % SGC) * S;
    for (var kf = 0u; kf < BKV; kf += S) {
        var acc = coop_mat16x16<f32, C>();
        for (var df = 0u; df < DP; df += S) {
            let ia = r0 * QS + df;
            let sa = QS;
            let a = coopLoadT<coop_mat16x16<f16, A>>(&Qs[ia], sa);
            // K^T's fragment: column-major from K's rows.
            let ib = kf * QS + df;
            let b = coopLoad<coop_mat16x16<f16, B>>(&Ks[ib], sa);
            acc = coopMultiplyAdd(a, b, acc);
        }
        let ic = sg * S * BKV + kf;
        let sc = BKV;
        coopStoreT(acc, &Sc[ic], sc);
    }
}

fn pv16(sg: u32) {
    for (var df = 0u; df < DP; df += S) {
        for (var kf = 0u; kf < BKV; kf += S) {
            let ia = sg * S * PS + kf;
            let sa = PS;
            let a = coopLoadT<coop_mat16x16<f16, A>>(&Ps[ia], sa);
            let ib = kf * QS + df;
            let sb = QS;
            let b = coopLoadT<coop_mat16x16<f16, B>>(&Vs[ib], sb);
            o16[df / S] = coopMultiplyAdd(a, b, o16[df / S]);
        }
    }
}

fn scores8(sg: u32) {
    let r0 = (sg % SGC) * S;
    for (var kf = 0u; kf < BKV; kf += S) {
        var acc = coop_mat8x8<f32, C>();
        for (var df = 0u; df < DP; df += S) {
            let ia = r0 * QS + df;
            let sa = QS;
            let a = coopLoadT<coop_mat8x8<f16, A>>(&Qs[ia], sa);
            let ib = kf * QS + df;
            let b = coopLoad<coop_mat8x8<f16, B>>(&Ks[ib], sa);
            acc = coopMultiplyAdd(a, b, acc);
        }
        let ic = sg * S * BKV + kf;
        let sc = BKV;
        coopStoreT(acc, &Sc[ic], sc);
    }
}

fn pv8(sg: u32) {
    for (var df = 0u; df < DP; df += S) {
        for (var kf = 0u; kf < BKV; kf += S) {
            let ia = sg * S * PS + kf;
            let sa = PS;
            let a = coopLoadT<coop_mat8x8<f16, A>>(&Ps[ia], sa);
            let ib = kf * QS + df;
            let sb = QS;
            let b = coopLoadT<coop_mat8x8<f16, B>>(&Vs[ib], sb);
            o8[df / S] = coopMultiplyAdd(a, b, o8[df / S]);
        }
    }
}

// Pass 1's bookkeeping for the tile at j0: each row's running max and sum over its scores.
fn update_stats(sg: u32, lane: u32, lanes: u32, q0: u32, j0: u32) {
    for (var r = lane; r < S; r += lanes) {
        let i = q0 + (sg % SGC) * S + r;
        var m = row_m[sg * S + r];
        var l = row_l[sg * S + r];
        var mt = NEG;
        for (var c = 0u; c < BKV; c++) {
            mt = max(mt, score(Sc[(sg * S + r) * BKV + c], i, j0 + c, i < p.tq && keyok[c] != 0.0));
        }
        let m_new = max(m, mt);
        l = l * exp(m - m_new);
        for (var c = 0u; c < BKV; c++) {
            let s = score(Sc[(sg * S + r) * BKV + c], i, j0 + c, i < p.tq && keyok[c] != 0.0);
            l += select(0.0, exp(s - m_new), s > MASKED_BELOW);
        }
        row_m[sg * S + r] = m_new;
        row_l[sg * S + r] = l;
    }
}

// Pass 2: P = exp(s - lse) as f16 for the tile at j0 (row_m holds lse by then).
fn probabilities(sg: u32, lane: u32, lanes: u32, q0: u32, j0: u32) {
    for (var r = lane; r < S; r += lanes) {
        let i = q0 + (sg % SGC) * S + r;
        let lse = row_m[sg * S + r];
        for (var c = 0u; c < BKV; c++) {
            let s = score(Sc[(sg * S + r) * BKV + c], i, j0 + c, i < p.tq && keyok[c] != 0.0);
            let pr = select(0.0, exp(s - lse), s > MASKED_BELOW && lse > MASKED_BELOW);
            Ps[(sg * S + r) * PS + c] = f16(pr);
        }
    }
}

// Between the passes: each row's logsumexp into row_m and the stats.
fn finish_stats(sg: u32, lane: u32, lanes: u32, bh: u32, q0: u32, computes: bool) {
    for (var r = lane; r < S; r += lanes) {
        let i = q0 + (sg % SGC) * S + r;
        let l = row_l[sg * S + r];
        let lse = select(NEG, row_m[sg * S + r] + log(l), l > 0.0);
        row_m[sg * S + r] = lse;
        if (computes && i < p.tq) { stats[2u * (bh * p.tq + i)] = lse; }
    }
}

// Writes O's fragment (from the scratch) at head column df, inside T and d.
fn store_o(sg: u32, lane: u32, lanes: u32, bh: u32, q0: u32, df: u32) {
    for (var e = lane; e < S * S; e += lanes) {
        let i = q0 + (sg % SGC) * S + e / S;
        let c = df + e % S;
        if (i < p.tq && c < p.d) { out[(bh * p.tq + i) * p.d + c] = Sc[sg * S * BKV + e]; }
    }
}

@compute @workgroup_size(WG)
fn flash_coop16(@builtin(workgroup_id) wid: vec3<u32>,
                @builtin(local_invocation_index) lid: u32,
                @builtin(subgroup_id) sg: u32,
                @builtin(subgroup_invocation_id) lane: u32,
                @builtin(subgroup_size) lanes: u32) {
    let bh = wid.z * p.h + wid.y;
    let q0 = wid.x * BQ;
    // Surplus subgroups (smaller subgroups than SG) repeat a computing one's work unseen.
    let computes = sg < SGC;
    stage_q(bh, q0, lid);
    for (var r = lane; r < S; r += lanes) { row_m[sg * S + r] = NEG; row_l[sg * S + r] = 0.0; }
    for (var j0 = 0u; j0 < kv_end(q0); j0 += BKV) {
        workgroupBarrier();
        stage_kv(bh, j0, lid, false);
        workgroupBarrier();
        scores16(sg);
        workgroupBarrier();
        update_stats(sg, lane, lanes, q0, j0);
    }
    workgroupBarrier();
    finish_stats(sg, lane, lanes, bh, q0, computes);
    for (var f = 0u; f < DP / S; f++) { o16[f] = coop_mat16x16<f32, C>(); }
    for (var j0 = 0u; j0 < kv_end(q0); j0 += BKV) {
        workgroupBarrier();
        stage_kv(bh, j0, lid, true);
        workgroupBarrier();
        scores16(sg);
        workgroupBarrier();
        probabilities(sg, lane, lanes, q0, j0);
        workgroupBarrier();
        pv16(sg);
    }
    for (var df = 0u; df < DP; df += S) {
        workgroupBarrier();
        let f = o16[df / S];
        let is = sg * S * BKV;
        let ss = S;
        coopStoreT(f, &Sc[is], ss);
        workgroupBarrier();
        if (computes) { store_o(sg, lane, lanes, bh, q0, df); }
    }
}

@compute @workgroup_size(WG)
fn flash_coop8(@builtin(workgroup_id) wid: vec3<u32>,
               @builtin(local_invocation_index) lid: u32,
               @builtin(subgroup_id) sg: u32,
               @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) lanes: u32) {
    let bh = wid.z * p.h + wid.y;
    let q0 = wid.x * BQ;
    let computes = sg < SGC;
    stage_q(bh, q0, lid);
    for (var r = lane; r < S; r += lanes) { row_m[sg * S + r] = NEG; row_l[sg * S + r] = 0.0; }
    for (var j0 = 0u; j0 < kv_end(q0); j0 += BKV) {
        workgroupBarrier();
        stage_kv(bh, j0, lid, false);
        workgroupBarrier();
        scores8(sg);
        workgroupBarrier();
        update_stats(sg, lane, lanes, q0, j0);
    }
    workgroupBarrier();
    finish_stats(sg, lane, lanes, bh, q0, computes);
    for (var f = 0u; f < DP / S; f++) { o8[f] = coop_mat8x8<f32, C>(); }
    for (var j0 = 0u; j0 < kv_end(q0); j0 += BKV) {
        workgroupBarrier();
        stage_kv(bh, j0, lid, true);
        workgroupBarrier();
        scores8(sg);
        workgroupBarrier();
        probabilities(sg, lane, lanes, q0, j0);
        workgroupBarrier();
        pv8(sg);
    }
    for (var df = 0u; df < DP; df += S) {
        workgroupBarrier();
        let f = o8[df / S];
        let is = sg * S * BKV;
        let ss = S;
        coopStoreT(f, &Sc[is], ss);
        workgroupBarrier();
        if (computes) { store_o(sg, lane, lanes, bh, q0, df); }
    }
}
