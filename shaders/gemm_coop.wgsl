// Matmul on cooperative matrices: f16 A and B, f32 accumulation and f32 C.
//   C[z, m, n] = alpha * sum_k A[z, m, k] * B[z, k, n] (+ bias[n])
// Operands are addressed as in gemm.wgsl's MODE 0 (batch, row and column strides; a transpose is a
// stride swap), and K may be split across workgroups the same way (z = batch * k_split; split s
// writes at offset c_split * s, and only split 0 adds the bias).
//
// A workgroup computes a BM x BN tile. Its first SGM x SGN subgroups each own 2 x 2 fragments of
// S x S outputs, S being the adapter's cooperative-matrix size: entry point gemm_coop8 for 8 x 8,
// gemm_coop16 for 16 x 16 (the matrix types need a literal size; S must match the entry point).
// The workgroup is sized for the adapter's largest subgroup; where the driver picks smaller
// subgroups, the surplus ones help stage tiles, and repeat a computing subgroup's products
// without storing them (cooperative operations must stay in uniform control flow).
// A and B reach shared memory through bounds-checked scalar loads (zeros past every edge), so any
// M, N, K, layout and alignment works. Results go out through a shared scratch block per
// subgroup, so the edge stores are bounds-checked as well.

enable f16;
enable wgpu_cooperative_matrix;

override S: u32 = 16u;        // fragment size (8 or 16, as the entry point's matrix types)
override SGM: u32 = 2u;       // computing subgroups along M
override SGN: u32 = 2u;       // computing subgroups along N
override SG: u32 = 32u;       // the adapter's largest subgroup size
override BK: u32 = 32u;       // K slab depth, a multiple of S
override APAD: u32 = 8u;      // f16 padding per shared A row (spreads rows across banks)
override BPAD: u32 = 8u;      // f16 padding per shared B row
override ALPHA: bool = false; // scale C by alpha[0] (a device-side factor: an f16 scale undone)
override A_KFAST: bool = true; // A's k stride is 1: staging threads walk along k, else along m
override B_NFAST: bool = true; // B's n stride is 1: staging threads walk along n, else along k

override BM: u32 = 2u * S * SGM;
override BN: u32 = 2u * S * SGN;
override AS: u32 = BK + APAD;  // shared A row stride
override BS: u32 = BN + BPAD;  // shared B row stride
override WG: u32 = SG * SGM * SGN;
override MIN_SG: u32 = 32u;   // the adapter's smallest subgroup size
override MAX_SUBGROUPS: u32 = WG / MIN_SG;

struct Params {
    m: u32, n: u32, k: u32, k_split: u32,
    k_chunk: u32, bias_mode: u32, c_split: u32, batch: u32,
    a_bs: u32, a_ms: u32, a_ks: u32,
    b_bs: u32, b_ks: u32, b_ns: u32,
    c_bs: u32, c_ms: u32, c_ns: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f16>;
@group(0) @binding(1) var<storage, read> b: array<f16>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;
@group(0) @binding(5) var<storage, read> alpha: array<f32>;

var<workgroup> As: array<f16, BM * AS>;       // [BM][AS]
var<workgroup> Bs: array<f16, BK * BS>;       // [BK][BS]
var<workgroup> Cs: array<f32, 4u * S * S * MAX_SUBGROUPS>; // [subgroup][2S][2S] results

// Where a workgroup works: batch z, K split, tile origin, K range.
struct Tile { z: u32, split: u32, m0: u32, n0: u32, k_begin: u32, k_end: u32 }

fn tile_of(wid: vec3<u32>) -> Tile {
    let split = wid.z % p.k_split;
    let k_begin = split * p.k_chunk;
    return Tile(wid.z / p.k_split, split, wid.y * BM, wid.x * BN, k_begin,
                min(p.k, k_begin + p.k_chunk));
}

// Copies the BK-deep slab at k0 of A's and B's tiles into shared memory.
fn stage(t: Tile, k0: u32, lid: u32) {
    for (var e = lid; e < BM * BK; e += WG) {
        var r = e / BK;
        var kk = e % BK;
        if (!A_KFAST) { r = e % BM; kk = e / BM; }
        let m = t.m0 + r;
        let k = k0 + kk;
        var v = f16(0.0);
        if (m < p.m && k < t.k_end) { v = a[t.z * p.a_bs + m * p.a_ms + k * p.a_ks]; }
        As[r * AS + kk] = v;
    }
    for (var e = lid; e < BK * BN; e += WG) {
        var kk = e / BN;
        var col = e % BN;
        if (!B_NFAST) { kk = e % BK; col = e / BK; }
        let n = t.n0 + col;
        let k = k0 + kk;
        var v = f16(0.0);
        if (n < p.n && k < t.k_end) { v = b[t.z * p.b_bs + k * p.b_ks + n * p.b_ns]; }
        Bs[kk * BS + col] = v;
    }
}

// Writes subgroup sg's scratch block, the 2S x 2S outputs at (r, col) of the tile, to C.
fn flush(t: Tile, sg: u32, lane: u32, lanes: u32, r: u32, col: u32) {
    var scale = 1.0;
    if (ALPHA) { scale = alpha[0]; }
    for (var e = lane; e < 4u * S * S; e += lanes) {
        let m = t.m0 + r + e / (2u * S);
        let n = t.n0 + col + e % (2u * S);
        if (m < p.m && n < p.n) {
            var v = Cs[sg * 4u * S * S + e] * scale;
            if (t.split == 0u && p.bias_mode == 1u) { v += bias[n]; }
            c[t.split * p.c_split + t.z * p.c_bs + m * p.c_ms + n * p.c_ns] = v;
        }
    }
}

// Shared-memory offsets of subgroup sg's first fragment row (in As) and column (in Bs).
fn frag_row(sg: u32) -> u32 { return (sg / SGN) * 2u * S; }
fn frag_col(sg: u32) -> u32 { return (sg % SGN) * 2u * S; }

// The two entry points differ only in the matrix types. naga needs every argument of a
// cooperative load or store bound to a `let` first (its SPIR-V writer otherwise panics).
@compute @workgroup_size(WG)
fn gemm_coop16(@builtin(workgroup_id) wid: vec3<u32>,
               @builtin(local_invocation_index) lid: u32,
               @builtin(subgroup_id) sg: u32,
               @builtin(subgroup_invocation_id) lane: u32,
               @builtin(subgroup_size) lanes: u32) {
    let t = tile_of(wid);
    let computes = sg < SGM * SGN;
    let r0 = frag_row(sg % (SGM * SGN));
    let c0 = frag_col(sg % (SGM * SGN));
    var acc00 = coop_mat16x16<f32, C>();
    var acc01 = coop_mat16x16<f32, C>();
    var acc10 = coop_mat16x16<f32, C>();
    var acc11 = coop_mat16x16<f32, C>();
    for (var k0 = t.k_begin; k0 < t.k_end; k0 += BK) {
        stage(t, k0, lid);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk += S) {
            let ia0 = r0 * AS + kk;
            let ia1 = ia0 + S * AS;
            let ib0 = kk * BS + c0;
            let ib1 = ib0 + S;
            let sa = AS;
            let sb = BS;
            let a0 = coopLoadT<coop_mat16x16<f16, A>>(&As[ia0], sa);
            let a1 = coopLoadT<coop_mat16x16<f16, A>>(&As[ia1], sa);
            let b0 = coopLoadT<coop_mat16x16<f16, B>>(&Bs[ib0], sb);
            let b1 = coopLoadT<coop_mat16x16<f16, B>>(&Bs[ib1], sb);
            acc00 = coopMultiplyAdd(a0, b0, acc00);
            acc01 = coopMultiplyAdd(a0, b1, acc01);
            acc10 = coopMultiplyAdd(a1, b0, acc10);
            acc11 = coopMultiplyAdd(a1, b1, acc11);
        }
        workgroupBarrier();
    }
    let i00 = sg * 4u * S * S;
    let i01 = i00 + S;
    let i10 = i00 + 2u * S * S;
    let i11 = i10 + S;
    let sc = 2u * S;
    coopStoreT(acc00, &Cs[i00], sc);
    coopStoreT(acc01, &Cs[i01], sc);
    coopStoreT(acc10, &Cs[i10], sc);
    coopStoreT(acc11, &Cs[i11], sc);
    workgroupBarrier();
    if (computes) { flush(t, sg, lane, lanes, r0, c0); }
}

@compute @workgroup_size(WG)
fn gemm_coop8(@builtin(workgroup_id) wid: vec3<u32>,
              @builtin(local_invocation_index) lid: u32,
              @builtin(subgroup_id) sg: u32,
              @builtin(subgroup_invocation_id) lane: u32,
              @builtin(subgroup_size) lanes: u32) {
    let t = tile_of(wid);
    let computes = sg < SGM * SGN;
    let r0 = frag_row(sg % (SGM * SGN));
    let c0 = frag_col(sg % (SGM * SGN));
    var acc00 = coop_mat8x8<f32, C>();
    var acc01 = coop_mat8x8<f32, C>();
    var acc10 = coop_mat8x8<f32, C>();
    var acc11 = coop_mat8x8<f32, C>();
    for (var k0 = t.k_begin; k0 < t.k_end; k0 += BK) {
        stage(t, k0, lid);
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk += S) {
            let ia0 = r0 * AS + kk;
            let ia1 = ia0 + S * AS;
            let ib0 = kk * BS + c0;
            let ib1 = ib0 + S;
            let sa = AS;
            let sb = BS;
            let a0 = coopLoadT<coop_mat8x8<f16, A>>(&As[ia0], sa);
            let a1 = coopLoadT<coop_mat8x8<f16, A>>(&As[ia1], sa);
            let b0 = coopLoadT<coop_mat8x8<f16, B>>(&Bs[ib0], sb);
            let b1 = coopLoadT<coop_mat8x8<f16, B>>(&Bs[ib1], sb);
            acc00 = coopMultiplyAdd(a0, b0, acc00);
            acc01 = coopMultiplyAdd(a0, b1, acc01);
            acc10 = coopMultiplyAdd(a1, b0, acc10);
            acc11 = coopMultiplyAdd(a1, b1, acc11);
        }
        workgroupBarrier();
    }
    let i00 = sg * 4u * S * S;
    let i01 = i00 + S;
    let i10 = i00 + 2u * S * S;
    let i11 = i10 + S;
    let sc = 2u * S;
    coopStoreT(acc00, &Cs[i00], sc);
    coopStoreT(acc01, &Cs[i01], sc);
    coopStoreT(acc10, &Cs[i10], sc);
    coopStoreT(acc11, &Cs[i11], sc);
    workgroupBarrier();
    if (computes) { flush(t, sg, lane, lanes, r0, c0); }
}
