// Matmul on cooperative matrices: f16 A and B, f32 accumulation and f32 C.
//   C[z, m, n] = alpha * sum_k A[z, m, k] * B[z, k, n] (+ bias[n])
// Operands are addressed as in gemm.wgsl's MODE 0 (batch, row and column strides; a transpose is a
// stride swap), and K may be split across workgroups the same way (z = batch * k_split; split s
// writes at offset c_split * s, and only split 0 adds the bias).
//
// A workgroup computes a BM x BN tile: SGM x SGN computing subgroups, each owning FM x FN
// fragments of S x S outputs (S: the adapter's cooperative-matrix size; 128 x 128 per workgroup
// and 64 x 64 per subgroup at FM = FN = 64 / S). The matrix types need a literal size, so each
// size has its entry points: gemm_coop16 / gemm_coop8 take any shape with bounds-checked loads,
// gemm_coop16v / gemm_coop8v interior tiles through 16-byte loads (eight f16 at a time).
// A and B pass through workgroup memory in BK-deep slabs, double-buffered: the next slab is read
// into registers while the current one is multiplied, then stored into the other buffer, so one
// barrier per slab suffices. Rows are padded by 8 f16 to spread them across banks.
// The workgroup is sized for the adapter's largest subgroup; where the driver picks smaller
// subgroups, the surplus ones help load slabs and repeat a computing subgroup's products without
// storing them (cooperative operations must stay in uniform control flow).
// Output: interior tiles without bias, alpha or K split store fragments straight to C; others
// pass each fragment through a per-subgroup S x S scratch (WGSL cannot alias the f16 slabs as
// f32), where bias, alpha and the bounds tests apply.

enable f16;
enable wgpu_cooperative_matrix;

override S: u32 = 16u;        // fragment size (8 or 16, as the entry point's matrix types)
override SGM: u32 = 2u;       // computing subgroups along M
override SGN: u32 = 2u;       // computing subgroups along N
override FM: u32 = 4u;        // fragments per subgroup along M
override FN: u32 = 4u;        // fragments per subgroup along N
override SG: u32 = 32u;       // the adapter's largest subgroup size
override BK: u32 = 32u;       // K slab depth, a multiple of S and of 8
override ALPHA: bool = false; // scale C by alpha[0] (a device-side factor: an f16 scale undone)
override A_KFAST: bool = true; // A's k stride is 1: 8-element groups run along k, else along m
override B_NFAST: bool = true; // B's n stride is 1: groups run along n, else along k
override MIN_SG: u32 = 32u;   // the adapter's smallest subgroup size

override BM: u32 = S * FM * SGM;
override BN: u32 = S * FN * SGN;
override AS: u32 = BK + 8u;   // shared A row stride ([m][k])
override BS: u32 = BN + 8u;   // shared B row stride ([k][n])
override WG: u32 = SG * SGM * SGN;
override MAX_SUBGROUPS: u32 = WG / MIN_SG;
// 8-element groups of a slab per invocation (registers), at least one.
override RA: u32 = (BM * BK / 8u + WG - 1u) / WG;
override RB: u32 = (BK * BN / 8u + WG - 1u) / WG;

struct Params {
    m: u32, n: u32, k: u32, k_split: u32,
    k_chunk: u32, bias_mode: u32, c_split: u32, batch: u32,
    a_bs: u32, a_ms: u32, a_ks: u32,
    b_bs: u32, b_ks: u32, b_ns: u32,
    c_bs: u32, c_ms: u32, c_ns: u32,
    // gemm.wgsl's convolution words (unused here), so that the words after them line up.
    cin: u32, h: u32, w: u32, cout: u32, oh: u32, ow: u32, kh: u32, kw: u32,
    sh: u32, sw: u32, ph: u32, pw: u32, dh: u32, dw: u32,
    full_m: u32, full_n: u32, edge: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f16>;
@group(0) @binding(1) var<storage, read> b: array<f16>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;
@group(0) @binding(5) var<storage, read> alpha: array<f32>;
// The same operands as 16-byte words (gemm_coop16v / gemm_coop8v).
@group(0) @binding(0) var<storage, read> a16: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> b16: array<vec4<u32>>;

var<workgroup> As: array<f16, 2u * BM * AS>;  // [buffer][m][k]
var<workgroup> Bs: array<f16, 2u * BK * BS>;  // [buffer][k][n]
var<workgroup> Cs: array<f32, S * S * MAX_SUBGROUPS>; // [subgroup][S][S] output scratch

// The next slab, eight f16 per word group, between its load and its store.
var<private> ra: array<vec4<u32>, 16>;
var<private> rb: array<vec4<u32>, 16>;
var<private> acc16: array<coop_mat16x16<f32, C>, 16>;
var<private> acc8: array<coop_mat8x8<f32, C>, 64>;

// Where a workgroup works: batch z, K split, tile origin, K range, and whether the output can
// go straight to C (an interior tile, no bias, alpha or split).
struct Tile { z: u32, split: u32, m0: u32, n0: u32, k_begin: u32, k_end: u32, direct: bool }

fn tile_of(wid: vec3<u32>) -> Tile {
    var tm = wid.y;
    var tn = wid.x;
    if (p.edge == 1u) {
        // The partial tile column (every tile row), then the partial tile row.
        let col_tiles = select(0u, (p.m + BM - 1u) / BM, p.full_n * BN < p.n);
        if (wid.x < col_tiles) { tm = wid.x; tn = p.full_n; } else { tm = p.full_m; tn = wid.x - col_tiles; }
    }
    let split = wid.z % p.k_split;
    let k_begin = split * p.k_chunk;
    let m0 = tm * BM;
    let n0 = tn * BN;
    // Cooperative stores need a 16-byte aligned pointer and stride: rows of C a multiple of 4.
    let aligned = p.c_ms % 4u == 0u && p.c_bs % 4u == 0u;
    let inside = m0 + BM <= p.m && n0 + BN <= p.n && p.c_ns == 1u && aligned;
    let direct = inside && !ALPHA && p.bias_mode == 0u && p.k_split == 1u;
    return Tile(wid.z / p.k_split, split, m0, n0, k_begin, min(p.k, k_begin + p.k_chunk), direct);
}

// Group g of A's slab at k0: its (row, k) origin in the tile; 8 elements run along k (A_KFAST)
// or along m.
fn a_group(g: u32) -> vec2<u32> {
    if (A_KFAST) { return vec2<u32>(g / (BK / 8u), (g % (BK / 8u)) * 8u); }
    return vec2<u32>((g % (BM / 8u)) * 8u, g / (BM / 8u));
}
fn b_group(g: u32) -> vec2<u32> { // (k, n)
    if (B_NFAST) { return vec2<u32>(g / (BN / 8u), (g % (BN / 8u)) * 8u); }
    return vec2<u32>((g % (BK / 8u)) * 8u, g / (BK / 8u));
}

// Element i of a group from its origin: along the contiguous dimension.
fn a_at(o: vec2<u32>, i: u32) -> vec2<u32> { return select(o + vec2<u32>(i, 0u), o + vec2<u32>(0u, i), A_KFAST); }
fn b_at(o: vec2<u32>, i: u32) -> vec2<u32> { return select(o + vec2<u32>(i, 0u), o + vec2<u32>(0u, i), B_NFAST); }

fn pack8(v: array<f16, 8>) -> vec4<u32> {
    var w = vec4<u32>(0u);
    for (var e = 0u; e < 4u; e++) { w[e] = pack2x16float(vec2<f32>(f32(v[2u * e]), f32(v[2u * e + 1u]))); }
    return w;
}

// The slab at k0 into registers, element by element with bounds tests (zeros outside).
fn load_checked(t: Tile, k0: u32, lid: u32) {
    for (var s = 0u; s < RA; s++) {
        let g = lid + s * WG;
        let o = a_group(g);
        var v: array<f16, 8>;
        for (var i = 0u; i < 8u; i++) {
            let at = a_at(o, i);
            let m = t.m0 + at.x;
            let k = k0 + at.y;
            v[i] = f16(0.0);
            if (g < BM * BK / 8u && m < p.m && k < t.k_end) { v[i] = a[t.z * p.a_bs + m * p.a_ms + k * p.a_ks]; }
        }
        ra[s] = pack8(v);
    }
    for (var s = 0u; s < RB; s++) {
        let g = lid + s * WG;
        let o = b_group(g);
        var v: array<f16, 8>;
        for (var i = 0u; i < 8u; i++) {
            let at = b_at(o, i);
            let k = k0 + at.x;
            let n = t.n0 + at.y;
            v[i] = f16(0.0);
            if (g < BK * BN / 8u && n < p.n && k < t.k_end) { v[i] = b[t.z * p.b_bs + k * p.b_ks + n * p.b_ns]; }
        }
        rb[s] = pack8(v);
    }
}

// The slab at k0 into registers, a 16-byte word per group (interior tiles, aligned operands).
fn load_words(t: Tile, k0: u32, lid: u32) {
    for (var s = 0u; s < RA; s++) {
        let g = lid + s * WG;
        if (g < BM * BK / 8u) {
            let o = a_group(g);
            ra[s] = a16[(t.z * p.a_bs + (t.m0 + o.x) * p.a_ms + (k0 + o.y) * p.a_ks) / 8u];
        }
    }
    for (var s = 0u; s < RB; s++) {
        let g = lid + s * WG;
        if (g < BK * BN / 8u) {
            let o = b_group(g);
            rb[s] = b16[(t.z * p.b_bs + (k0 + o.x) * p.b_ks + (t.n0 + o.y) * p.b_ns) / 8u];
        }
    }
}

// The registers into shared buffer `buf`.
fn store_slab(buf: u32, lid: u32) {
    for (var s = 0u; s < RA; s++) {
        let g = lid + s * WG;
        if (g < BM * BK / 8u) {
            let o = a_group(g);
            for (var e = 0u; e < 4u; e++) {
                let h = unpack2x16float(ra[s][e]);
                let a0 = a_at(o, 2u * e);
                let a1 = a_at(o, 2u * e + 1u);
                As[(buf * BM + a0.x) * AS + a0.y] = f16(h.x);
                As[(buf * BM + a1.x) * AS + a1.y] = f16(h.y);
            }
        }
    }
    for (var s = 0u; s < RB; s++) {
        let g = lid + s * WG;
        if (g < BK * BN / 8u) {
            let o = b_group(g);
            for (var e = 0u; e < 4u; e++) {
                let h = unpack2x16float(rb[s][e]);
                let b0 = b_at(o, 2u * e);
                let b1 = b_at(o, 2u * e + 1u);
                Bs[(buf * BK + b0.x) * BS + b0.y] = f16(h.x);
                Bs[(buf * BK + b1.x) * BS + b1.y] = f16(h.y);
            }
        }
    }
}

// Shared-memory origin of subgroup sg's first fragment row (in A) and column (in B).
fn frag_row(sg: u32) -> u32 { return ((sg % (SGM * SGN)) / SGN) * FM * S; }
fn frag_col(sg: u32) -> u32 { return ((sg % (SGM * SGN)) % SGN) * FN * S; }

// Writes fragment (fm, fn) of the scratch block of subgroup sg to C: alpha, bias, bounds.
fn flush(t: Tile, sg: u32, lane: u32, lanes: u32, r: u32, col: u32) {
    var scale = 1.0;
    if (ALPHA) { scale = alpha[0]; }
    for (var e = lane; e < S * S; e += lanes) {
        let m = t.m0 + r + e / S;
        let n = t.n0 + col + e % S;
        if (m < p.m && n < p.n) {
            var v = Cs[sg * S * S + e] * scale;
            if (t.split == 0u && p.bias_mode == 1u) { v += bias[n]; }
            c[t.split * p.c_split + t.z * p.c_bs + m * p.c_ms + n * p.c_ns] = v;
        }
    }
}

// The two fragment sizes' multiply and output steps (the matrix types need literal sizes).
// naga needs every argument of a cooperative load or store bound to a `let` first (its SPIR-V
// writer otherwise panics).
fn compute16(buf: u32, sg: u32) {
    for (var kk = 0u; kk < BK; kk += S) {
        for (var i = 0u; i < FM; i++) {
            let ia = (buf * BM + frag_row(sg) + i * S) * AS + kk;
            let sa = AS;
            let x = coopLoadT<coop_mat16x16<f16, A>>(&As[ia], sa);
            for (var j = 0u; j < FN; j++) {
                let ib = (buf * BK + kk) * BS + frag_col(sg) + j * S;
                let sb = BS;
                let y = coopLoadT<coop_mat16x16<f16, B>>(&Bs[ib], sb);
                acc16[i * FN + j] = coopMultiplyAdd(x, y, acc16[i * FN + j]);
            }
        }
    }
}

fn output16(t: Tile, sg: u32, lane: u32, lanes: u32) {
    let computes = sg < SGM * SGN;
    for (var i = 0u; i < FM; i++) {
        for (var j = 0u; j < FN; j++) {
            let r = frag_row(sg) + i * S;
            let col = frag_col(sg) + j * S;
            let f = acc16[i * FN + j];
            if (t.direct) {
                // Surplus subgroups hold copies of the same products: storing them twice is harmless.
                let ic = t.z * p.c_bs + (t.m0 + r) * p.c_ms + t.n0 + col;
                let sc = p.c_ms;
                coopStoreT(f, &c[ic], sc);
            } else {
                let is = sg * S * S;
                let ss = S;
                coopStoreT(f, &Cs[is], ss);
                workgroupBarrier();
                if (computes) { flush(t, sg, lane, lanes, r, col); }
                workgroupBarrier();
            }
        }
    }
}

fn compute8(buf: u32, sg: u32) {
    for (var kk = 0u; kk < BK; kk += S) {
        for (var i = 0u; i < FM; i++) {
            let ia = (buf * BM + frag_row(sg) + i * S) * AS + kk;
            let sa = AS;
            let x = coopLoadT<coop_mat8x8<f16, A>>(&As[ia], sa);
            for (var j = 0u; j < FN; j++) {
                let ib = (buf * BK + kk) * BS + frag_col(sg) + j * S;
                let sb = BS;
                let y = coopLoadT<coop_mat8x8<f16, B>>(&Bs[ib], sb);
                acc8[i * FN + j] = coopMultiplyAdd(x, y, acc8[i * FN + j]);
            }
        }
    }
}

fn output8(t: Tile, sg: u32, lane: u32, lanes: u32) {
    let computes = sg < SGM * SGN;
    for (var i = 0u; i < FM; i++) {
        for (var j = 0u; j < FN; j++) {
            let r = frag_row(sg) + i * S;
            let col = frag_col(sg) + j * S;
            let f = acc8[i * FN + j];
            if (t.direct) {
                let ic = t.z * p.c_bs + (t.m0 + r) * p.c_ms + t.n0 + col;
                let sc = p.c_ms;
                coopStoreT(f, &c[ic], sc);
            } else {
                let is = sg * S * S;
                let ss = S;
                coopStoreT(f, &Cs[is], ss);
                workgroupBarrier();
                if (computes) { flush(t, sg, lane, lanes, r, col); }
                workgroupBarrier();
            }
        }
    }
}

// Slabs are uniform across the workgroup, so every barrier is reached by all.
fn slabs(t: Tile) -> u32 { return (t.k_end - min(t.k_begin, t.k_end) + BK - 1u) / BK; }

@compute @workgroup_size(WG)
fn gemm_coop16(@builtin(workgroup_id) wid: vec3<u32>,
               @builtin(local_invocation_index) lid: u32,
               @builtin(subgroup_id) sg: u32,
               @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) lanes: u32) {
    let t = tile_of(wid);
    for (var f = 0u; f < FM * FN; f++) { acc16[f] = coop_mat16x16<f32, C>(); }
    load_checked(t, t.k_begin, lid);
    store_slab(0u, lid);
    workgroupBarrier();
    for (var s = 0u; s < slabs(t); s++) {
        let more = s + 1u < slabs(t);
        if (more) { load_checked(t, t.k_begin + (s + 1u) * BK, lid); }
        compute16(s % 2u, sg);
        if (more) { store_slab((s + 1u) % 2u, lid); }
        workgroupBarrier();
    }
    output16(t, sg, lane, lanes);
}

@compute @workgroup_size(WG)
fn gemm_coop16v(@builtin(workgroup_id) wid: vec3<u32>,
                @builtin(local_invocation_index) lid: u32,
                @builtin(subgroup_id) sg: u32,
                @builtin(subgroup_invocation_id) lane: u32,
                @builtin(subgroup_size) lanes: u32) {
    let t = tile_of(wid);
    for (var f = 0u; f < FM * FN; f++) { acc16[f] = coop_mat16x16<f32, C>(); }
    load_words(t, t.k_begin, lid);
    store_slab(0u, lid);
    workgroupBarrier();
    for (var s = 0u; s < slabs(t); s++) {
        let more = s + 1u < slabs(t);
        if (more) { load_words(t, t.k_begin + (s + 1u) * BK, lid); }
        compute16(s % 2u, sg);
        if (more) { store_slab((s + 1u) % 2u, lid); }
        workgroupBarrier();
    }
    output16(t, sg, lane, lanes);
}

@compute @workgroup_size(WG)
fn gemm_coop8(@builtin(workgroup_id) wid: vec3<u32>,
              @builtin(local_invocation_index) lid: u32,
              @builtin(subgroup_id) sg: u32,
              @builtin(subgroup_invocation_id) lane: u32,
              @builtin(subgroup_size) lanes: u32) {
    let t = tile_of(wid);
    for (var f = 0u; f < FM * FN; f++) { acc8[f] = coop_mat8x8<f32, C>(); }
    load_checked(t, t.k_begin, lid);
    store_slab(0u, lid);
    workgroupBarrier();
    for (var s = 0u; s < slabs(t); s++) {
        let more = s + 1u < slabs(t);
        if (more) { load_checked(t, t.k_begin + (s + 1u) * BK, lid); }
        compute8(s % 2u, sg);
        if (more) { store_slab((s + 1u) % 2u, lid); }
        workgroupBarrier();
    }
    output8(t, sg, lane, lanes);
}

@compute @workgroup_size(WG)
fn gemm_coop8v(@builtin(workgroup_id) wid: vec3<u32>,
               @builtin(local_invocation_index) lid: u32,
               @builtin(subgroup_id) sg: u32,
               @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) lanes: u32) {
    let t = tile_of(wid);
    for (var f = 0u; f < FM * FN; f++) { acc8[f] = coop_mat8x8<f32, C>(); }
    load_words(t, t.k_begin, lid);
    store_slab(0u, lid);
    workgroupBarrier();
    for (var s = 0u; s < slabs(t); s++) {
        let more = s + 1u < slabs(t);
        if (more) { load_words(t, t.k_begin + (s + 1u) * BK, lid); }
        compute8(s % 2u, sg);
        if (more) { store_slab((s + 1u) % 2u, lid); }
        workgroupBarrier();
    }
    output8(t, sg, lane, lanes);
}
