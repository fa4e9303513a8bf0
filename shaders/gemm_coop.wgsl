// Matmul on cooperative matrices: f16 A and B, f32 accumulation and f32 C.
//   C[z, m, n] = alpha * sum_k A[z, m, k] * B[z, k, n] (+ bias[n])
// Operands are addressed as in gemm.wgsl's MODE 0 (batch, row and column strides; a transpose is a
// stride swap), and K may be split across workgroups the same way (z = batch * k_split; split s
// writes at offset c_split * s, and only split 0 adds the bias).
//
// A workgroup computes a BM x BN tile: SGM x SGN computing subgroups, each owning F x F fragments
// of S x S outputs (S: the adapter's cooperative-matrix size; F = 4 or 2). The matrix types need a
// literal size, so each size has its entry points: gemm_coop16 / gemm_coop8 take any shape with
// bounds-checked loads, gemm_coop16v / gemm_coop8v interior tiles through 8-byte loads of four f16.
// Accumulators, fragments and the staged slab live in private arrays indexed by constants only
// (the F x F products are written out), so no driver needs to unroll a loop to keep them in
// registers. Each k-step loads every A and B fragment of the subgroup once.
//
// Staging. A and B pass through workgroup memory in BK-deep slabs, double-buffered: the next slab
// is read into registers while the current one is multiplied, then stored into the other buffer,
// so one barrier per slab suffices. Each operand is kept as [slow][fast] with its contiguous
// ("fast") dimension innermost (A: k where A_KFAST, else m; B: n where B_NFAST, else k), rows
// padded by 8 f16 (16 bytes), and fragments are read row-major (coopLoadT) or column-major
// (coopLoad) to match: an invocation's group of 8 elements is 16 contiguous bytes both in the
// operand and in the slab, and no transposition happens in the store. The f16 values go from
// the operand to the slab as f16 (typed 8-byte loads or element loads; no conversion).
// Cooperative loads need rows at a fixed stride, so the slab cannot be permuted inside a row; the
// 16-byte pad makes the 8 rows a fragment load reads at once fall in 8 distinct bank quads. The
// stores are 16-bit (WGSL cannot store vectors into an f16 array): lanes whose 16-byte groups
// share a bank quad would collide on every element, so each lane stores its four words in an
// order XOR-swizzled by its position (word t ^ swz), which puts the 32 lanes of a store on 32
// banks. crates/ops/src/matmul.rs declares these patterns for the bank audit.
//
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
override F: u32 = 4u;         // fragments per subgroup along M and along N: 4 or 2
override SG: u32 = 32u;       // the adapter's largest subgroup size
override BK: u32 = 32u;       // K slab depth, a multiple of S and of 16
override ALPHA: bool = false; // scale C by alpha[0] (a device-side factor: an f16 scale undone)
override A_KFAST: bool = true; // A's k stride is 1: A's slab is [m][k], else [k][m]
override B_NFAST: bool = true; // B's n stride is 1: B's slab is [k][n], else [n][k]
override MIN_SG: u32 = 32u;   // the adapter's smallest subgroup size

override BM: u32 = S * F * SGM;
override BN: u32 = S * F * SGN;
override A_FAST: u32 = select(BM, BK, A_KFAST); // slab row length (f16)
override B_FAST: u32 = select(BK, BN, B_NFAST);
override AS: u32 = A_FAST + 8u;   // slab row strides (f16): rows padded by 16 bytes
override BS: u32 = B_FAST + 8u;
override A_SLAB: u32 = BM * BK / A_FAST * AS; // one buffer of A's slab (f16)
override B_SLAB: u32 = BK * BN / B_FAST * BS;
override WG: u32 = SG * SGM * SGN;
override MAX_SUBGROUPS: u32 = WG / MIN_SG;
// 8-element groups of a slab per invocation (registers), 1 to 16 (4 or fewer on GPUs; software
// adapters run subgroups of 8).
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
// The same operands as 8-byte words of four f16 (gemm_coop16v / gemm_coop8v).
@group(0) @binding(0) var<storage, read> a4: array<vec4<f16>>;
@group(0) @binding(1) var<storage, read> b4: array<vec4<f16>>;

var<workgroup> As: array<f16, 2u * A_SLAB>;  // [buffer][slow][fast]
var<workgroup> Bs: array<f16, 2u * B_SLAB>;
var<workgroup> Cs: array<f32, S * S * MAX_SUBGROUPS>; // [subgroup][S][S] output scratch

// The next slab between its load and its store: group s's eight f16 as two halves, at [2s] and
// [2s + 1] (constant indices only).
var<private> ra: array<vec4<f16>, 32>;
var<private> rb: array<vec4<f16>, 32>;
// Accumulator (i, j) at [4 * i + j], constant indices only.
var<private> acc16: array<coop_mat16x16<f32, C>, 16>;
var<private> acc8: array<coop_mat8x8<f32, C>, 16>;

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

// Group g of a slab with rows of `fast` elements: (slow row, first fast element).
fn group_at(g: u32, fast: u32) -> vec2<u32> { return vec2<u32>(g / (fast / 8u), (g % (fast / 8u)) * 8u); }

// A(m, k) of the tile's batch, zero outside the operand or the K range.
fn a_at(t: Tile, m: u32, k: u32) -> f16 {
    if (m < p.m && k < t.k_end) { return a[t.z * p.a_bs + m * p.a_ms + k * p.a_ks]; }
    return f16(0.0);
}
fn b_at(t: Tile, k: u32, n: u32) -> f16 {
    if (n < p.n && k < t.k_end) { return b[t.z * p.b_bs + k * p.b_ks + n * p.b_ns]; }
    return f16(0.0);
}

// Elements i .. i + 4 of A's group at (row, e0) of the slab at k0, bounds-tested.
fn a_quad(t: Tile, k0: u32, o: vec2<u32>, i: u32) -> vec4<f16> {
    if (A_KFAST) {
        let m = t.m0 + o.x;
        let k = k0 + o.y + i;
        return vec4<f16>(a_at(t, m, k), a_at(t, m, k + 1u), a_at(t, m, k + 2u), a_at(t, m, k + 3u));
    }
    let m = t.m0 + o.y + i;
    let k = k0 + o.x;
    return vec4<f16>(a_at(t, m, k), a_at(t, m + 1u, k), a_at(t, m + 2u, k), a_at(t, m + 3u, k));
}
fn b_quad(t: Tile, k0: u32, o: vec2<u32>, i: u32) -> vec4<f16> {
    if (B_NFAST) {
        let k = k0 + o.x;
        let n = t.n0 + o.y + i;
        return vec4<f16>(b_at(t, k, n), b_at(t, k, n + 1u), b_at(t, k, n + 2u), b_at(t, k, n + 3u));
    }
    let n = t.n0 + o.x;
    let k = k0 + o.y + i;
    return vec4<f16>(b_at(t, k, n), b_at(t, k + 1u, n), b_at(t, k + 2u, n), b_at(t, k + 3u, n));
}

// Element offset of A's group origin in the operand (the "v" kernels' 8-byte loads).
fn a_offset(t: Tile, k0: u32, o: vec2<u32>) -> u32 {
    if (A_KFAST) { return t.z * p.a_bs + (t.m0 + o.x) * p.a_ms + k0 + o.y; }
    return t.z * p.a_bs + (k0 + o.x) * p.a_ks + t.m0 + o.y;
}
fn b_offset(t: Tile, k0: u32, o: vec2<u32>) -> u32 {
    if (B_NFAST) { return t.z * p.b_bs + (k0 + o.x) * p.b_ks + t.n0 + o.y; }
    return t.z * p.b_bs + (t.n0 + o.x) * p.b_ns + k0 + o.y;
}

// Group s of this invocation's share of A's and B's slab at k0: bounds-tested elements, or (the
// "v" kernels) two 8-byte words. Zeros past the slab.
fn a_group_checked(t: Tile, k0: u32, lid: u32, s: u32) -> array<vec4<f16>, 2> {
    let g = lid + s * WG;
    let o = group_at(g, A_FAST);
    let ok = g < BM * BK / 8u;
    let z = vec4<f16>(0.0);
    return array<vec4<f16>, 2>(select(z, a_quad(t, k0, o, 0u), ok), select(z, a_quad(t, k0, o, 4u), ok));
}
fn b_group_checked(t: Tile, k0: u32, lid: u32, s: u32) -> array<vec4<f16>, 2> {
    let g = lid + s * WG;
    let o = group_at(g, B_FAST);
    let ok = g < BK * BN / 8u;
    let z = vec4<f16>(0.0);
    return array<vec4<f16>, 2>(select(z, b_quad(t, k0, o, 0u), ok), select(z, b_quad(t, k0, o, 4u), ok));
}
fn a_group_words(t: Tile, k0: u32, lid: u32, s: u32) -> array<vec4<f16>, 2> {
    let g = lid + s * WG;
    var h = array<vec4<f16>, 2>(vec4<f16>(0.0), vec4<f16>(0.0));
    if (g < BM * BK / 8u) {
        let w = a_offset(t, k0, group_at(g, A_FAST)) / 4u;
        h = array<vec4<f16>, 2>(a4[w], a4[w + 1u]);
    }
    return h;
}
fn b_group_words(t: Tile, k0: u32, lid: u32, s: u32) -> array<vec4<f16>, 2> {
    let g = lid + s * WG;
    var h = array<vec4<f16>, 2>(vec4<f16>(0.0), vec4<f16>(0.0));
    if (g < BK * BN / 8u) {
        let w = b_offset(t, k0, group_at(g, B_FAST)) / 4u;
        h = array<vec4<f16>, 2>(b4[w], b4[w + 1u]);
    }
    return h;
}

// The slab at k0 into ra and rb (constant indices: group s at [2s], [2s + 1]).
fn load_checked(t: Tile, k0: u32, lid: u32) {
    var h = a_group_checked(t, k0, lid, 0u);
    ra[0] = h[0]; ra[1] = h[1];
    if (RA > 1u) { h = a_group_checked(t, k0, lid, 1u); ra[2] = h[0]; ra[3] = h[1]; }
    if (RA > 2u) { h = a_group_checked(t, k0, lid, 2u); ra[4] = h[0]; ra[5] = h[1]; }
    if (RA > 3u) { h = a_group_checked(t, k0, lid, 3u); ra[6] = h[0]; ra[7] = h[1]; }
    if (RA > 4u) { h = a_group_checked(t, k0, lid, 4u); ra[8] = h[0]; ra[9] = h[1]; }
    if (RA > 5u) { h = a_group_checked(t, k0, lid, 5u); ra[10] = h[0]; ra[11] = h[1]; }
    if (RA > 6u) { h = a_group_checked(t, k0, lid, 6u); ra[12] = h[0]; ra[13] = h[1]; }
    if (RA > 7u) { h = a_group_checked(t, k0, lid, 7u); ra[14] = h[0]; ra[15] = h[1]; }
    if (RA > 8u) { h = a_group_checked(t, k0, lid, 8u); ra[16] = h[0]; ra[17] = h[1]; }
    if (RA > 9u) { h = a_group_checked(t, k0, lid, 9u); ra[18] = h[0]; ra[19] = h[1]; }
    if (RA > 10u) { h = a_group_checked(t, k0, lid, 10u); ra[20] = h[0]; ra[21] = h[1]; }
    if (RA > 11u) { h = a_group_checked(t, k0, lid, 11u); ra[22] = h[0]; ra[23] = h[1]; }
    if (RA > 12u) { h = a_group_checked(t, k0, lid, 12u); ra[24] = h[0]; ra[25] = h[1]; }
    if (RA > 13u) { h = a_group_checked(t, k0, lid, 13u); ra[26] = h[0]; ra[27] = h[1]; }
    if (RA > 14u) { h = a_group_checked(t, k0, lid, 14u); ra[28] = h[0]; ra[29] = h[1]; }
    if (RA > 15u) { h = a_group_checked(t, k0, lid, 15u); ra[30] = h[0]; ra[31] = h[1]; }
    h = b_group_checked(t, k0, lid, 0u);
    rb[0] = h[0]; rb[1] = h[1];
    if (RB > 1u) { h = b_group_checked(t, k0, lid, 1u); rb[2] = h[0]; rb[3] = h[1]; }
    if (RB > 2u) { h = b_group_checked(t, k0, lid, 2u); rb[4] = h[0]; rb[5] = h[1]; }
    if (RB > 3u) { h = b_group_checked(t, k0, lid, 3u); rb[6] = h[0]; rb[7] = h[1]; }
    if (RB > 4u) { h = b_group_checked(t, k0, lid, 4u); rb[8] = h[0]; rb[9] = h[1]; }
    if (RB > 5u) { h = b_group_checked(t, k0, lid, 5u); rb[10] = h[0]; rb[11] = h[1]; }
    if (RB > 6u) { h = b_group_checked(t, k0, lid, 6u); rb[12] = h[0]; rb[13] = h[1]; }
    if (RB > 7u) { h = b_group_checked(t, k0, lid, 7u); rb[14] = h[0]; rb[15] = h[1]; }
    if (RB > 8u) { h = b_group_checked(t, k0, lid, 8u); rb[16] = h[0]; rb[17] = h[1]; }
    if (RB > 9u) { h = b_group_checked(t, k0, lid, 9u); rb[18] = h[0]; rb[19] = h[1]; }
    if (RB > 10u) { h = b_group_checked(t, k0, lid, 10u); rb[20] = h[0]; rb[21] = h[1]; }
    if (RB > 11u) { h = b_group_checked(t, k0, lid, 11u); rb[22] = h[0]; rb[23] = h[1]; }
    if (RB > 12u) { h = b_group_checked(t, k0, lid, 12u); rb[24] = h[0]; rb[25] = h[1]; }
    if (RB > 13u) { h = b_group_checked(t, k0, lid, 13u); rb[26] = h[0]; rb[27] = h[1]; }
    if (RB > 14u) { h = b_group_checked(t, k0, lid, 14u); rb[28] = h[0]; rb[29] = h[1]; }
    if (RB > 15u) { h = b_group_checked(t, k0, lid, 15u); rb[30] = h[0]; rb[31] = h[1]; }
}
fn load_words(t: Tile, k0: u32, lid: u32) {
    var h = a_group_words(t, k0, lid, 0u);
    ra[0] = h[0]; ra[1] = h[1];
    if (RA > 1u) { h = a_group_words(t, k0, lid, 1u); ra[2] = h[0]; ra[3] = h[1]; }
    if (RA > 2u) { h = a_group_words(t, k0, lid, 2u); ra[4] = h[0]; ra[5] = h[1]; }
    if (RA > 3u) { h = a_group_words(t, k0, lid, 3u); ra[6] = h[0]; ra[7] = h[1]; }
    if (RA > 4u) { h = a_group_words(t, k0, lid, 4u); ra[8] = h[0]; ra[9] = h[1]; }
    if (RA > 5u) { h = a_group_words(t, k0, lid, 5u); ra[10] = h[0]; ra[11] = h[1]; }
    if (RA > 6u) { h = a_group_words(t, k0, lid, 6u); ra[12] = h[0]; ra[13] = h[1]; }
    if (RA > 7u) { h = a_group_words(t, k0, lid, 7u); ra[14] = h[0]; ra[15] = h[1]; }
    if (RA > 8u) { h = a_group_words(t, k0, lid, 8u); ra[16] = h[0]; ra[17] = h[1]; }
    if (RA > 9u) { h = a_group_words(t, k0, lid, 9u); ra[18] = h[0]; ra[19] = h[1]; }
    if (RA > 10u) { h = a_group_words(t, k0, lid, 10u); ra[20] = h[0]; ra[21] = h[1]; }
    if (RA > 11u) { h = a_group_words(t, k0, lid, 11u); ra[22] = h[0]; ra[23] = h[1]; }
    if (RA > 12u) { h = a_group_words(t, k0, lid, 12u); ra[24] = h[0]; ra[25] = h[1]; }
    if (RA > 13u) { h = a_group_words(t, k0, lid, 13u); ra[26] = h[0]; ra[27] = h[1]; }
    if (RA > 14u) { h = a_group_words(t, k0, lid, 14u); ra[28] = h[0]; ra[29] = h[1]; }
    if (RA > 15u) { h = a_group_words(t, k0, lid, 15u); ra[30] = h[0]; ra[31] = h[1]; }
    h = b_group_words(t, k0, lid, 0u);
    rb[0] = h[0]; rb[1] = h[1];
    if (RB > 1u) { h = b_group_words(t, k0, lid, 1u); rb[2] = h[0]; rb[3] = h[1]; }
    if (RB > 2u) { h = b_group_words(t, k0, lid, 2u); rb[4] = h[0]; rb[5] = h[1]; }
    if (RB > 3u) { h = b_group_words(t, k0, lid, 3u); rb[6] = h[0]; rb[7] = h[1]; }
    if (RB > 4u) { h = b_group_words(t, k0, lid, 4u); rb[8] = h[0]; rb[9] = h[1]; }
    if (RB > 5u) { h = b_group_words(t, k0, lid, 5u); rb[10] = h[0]; rb[11] = h[1]; }
    if (RB > 6u) { h = b_group_words(t, k0, lid, 6u); rb[12] = h[0]; rb[13] = h[1]; }
    if (RB > 7u) { h = b_group_words(t, k0, lid, 7u); rb[14] = h[0]; rb[15] = h[1]; }
    if (RB > 8u) { h = b_group_words(t, k0, lid, 8u); rb[16] = h[0]; rb[17] = h[1]; }
    if (RB > 9u) { h = b_group_words(t, k0, lid, 9u); rb[18] = h[0]; rb[19] = h[1]; }
    if (RB > 10u) { h = b_group_words(t, k0, lid, 10u); rb[20] = h[0]; rb[21] = h[1]; }
    if (RB > 11u) { h = b_group_words(t, k0, lid, 11u); rb[22] = h[0]; rb[23] = h[1]; }
    if (RB > 12u) { h = b_group_words(t, k0, lid, 12u); rb[24] = h[0]; rb[25] = h[1]; }
    if (RB > 13u) { h = b_group_words(t, k0, lid, 13u); rb[26] = h[0]; rb[27] = h[1]; }
    if (RB > 14u) { h = b_group_words(t, k0, lid, 14u); rb[28] = h[0]; rb[29] = h[1]; }
    if (RB > 15u) { h = b_group_words(t, k0, lid, 15u); rb[30] = h[0]; rb[31] = h[1]; }
}

// The store order's swizzle for a group at slab row `row`, chunk `ch` of `cpr` 16-byte chunks per
// row: word t of the group is stored at step t ^ swz. With rows padded by 16 bytes (an odd number
// of bank quads per row), the 32 lanes of a store whose groups share a bank quad get distinct
// swizzles, so each step's 32 words land on 32 banks (matmul.rs mirrors this for the audit).
fn swz(row: u32, ch: u32, cpr: u32) -> u32 {
    if (cpr >= 8u) { return (row * (cpr / 8u) + ch / 8u) % 4u; }
    if (cpr == 4u) { return row % 4u; }
    return (row / 8u + 2u * ch) % 4u;
}

// Word w (two f16) of a group held as two halves.
fn word_of(lo: vec4<f16>, hi: vec4<f16>, w: u32) -> vec2<f16> {
    return select(select(lo.xy, lo.zw, w == 1u), select(hi.xy, hi.zw, w == 3u), w >= 2u);
}

fn store_a_group(buf: u32, lid: u32, s: u32, lo: vec4<f16>, hi: vec4<f16>) {
    let g = lid + s * WG;
    if (g >= BM * BK / 8u) { return; }
    let o = group_at(g, A_FAST);
    let base = buf * A_SLAB + o.x * AS + o.y;
    let sw = swz(o.x, o.y / 8u, A_FAST / 8u);
    for (var t = 0u; t < 4u; t++) {
        let w = t ^ sw;
        let v = word_of(lo, hi, w);
        As[base + 2u * w] = v.x;
        As[base + 2u * w + 1u] = v.y;
    }
}
fn store_b_group(buf: u32, lid: u32, s: u32, lo: vec4<f16>, hi: vec4<f16>) {
    let g = lid + s * WG;
    if (g >= BK * BN / 8u) { return; }
    let o = group_at(g, B_FAST);
    let base = buf * B_SLAB + o.x * BS + o.y;
    let sw = swz(o.x, o.y / 8u, B_FAST / 8u);
    for (var t = 0u; t < 4u; t++) {
        let w = t ^ sw;
        let v = word_of(lo, hi, w);
        Bs[base + 2u * w] = v.x;
        Bs[base + 2u * w + 1u] = v.y;
    }
}

// The registers into shared buffer `buf`.
fn store_slab(buf: u32, lid: u32) {
    store_a_group(buf, lid, 0u, ra[0], ra[1]);
    if (RA > 1u) { store_a_group(buf, lid, 1u, ra[2], ra[3]); }
    if (RA > 2u) { store_a_group(buf, lid, 2u, ra[4], ra[5]); }
    if (RA > 3u) { store_a_group(buf, lid, 3u, ra[6], ra[7]); }
    if (RA > 4u) { store_a_group(buf, lid, 4u, ra[8], ra[9]); }
    if (RA > 5u) { store_a_group(buf, lid, 5u, ra[10], ra[11]); }
    if (RA > 6u) { store_a_group(buf, lid, 6u, ra[12], ra[13]); }
    if (RA > 7u) { store_a_group(buf, lid, 7u, ra[14], ra[15]); }
    if (RA > 8u) { store_a_group(buf, lid, 8u, ra[16], ra[17]); }
    if (RA > 9u) { store_a_group(buf, lid, 9u, ra[18], ra[19]); }
    if (RA > 10u) { store_a_group(buf, lid, 10u, ra[20], ra[21]); }
    if (RA > 11u) { store_a_group(buf, lid, 11u, ra[22], ra[23]); }
    if (RA > 12u) { store_a_group(buf, lid, 12u, ra[24], ra[25]); }
    if (RA > 13u) { store_a_group(buf, lid, 13u, ra[26], ra[27]); }
    if (RA > 14u) { store_a_group(buf, lid, 14u, ra[28], ra[29]); }
    if (RA > 15u) { store_a_group(buf, lid, 15u, ra[30], ra[31]); }
    store_b_group(buf, lid, 0u, rb[0], rb[1]);
    if (RB > 1u) { store_b_group(buf, lid, 1u, rb[2], rb[3]); }
    if (RB > 2u) { store_b_group(buf, lid, 2u, rb[4], rb[5]); }
    if (RB > 3u) { store_b_group(buf, lid, 3u, rb[6], rb[7]); }
    if (RB > 4u) { store_b_group(buf, lid, 4u, rb[8], rb[9]); }
    if (RB > 5u) { store_b_group(buf, lid, 5u, rb[10], rb[11]); }
    if (RB > 6u) { store_b_group(buf, lid, 6u, rb[12], rb[13]); }
    if (RB > 7u) { store_b_group(buf, lid, 7u, rb[14], rb[15]); }
    if (RB > 8u) { store_b_group(buf, lid, 8u, rb[16], rb[17]); }
    if (RB > 9u) { store_b_group(buf, lid, 9u, rb[18], rb[19]); }
    if (RB > 10u) { store_b_group(buf, lid, 10u, rb[20], rb[21]); }
    if (RB > 11u) { store_b_group(buf, lid, 11u, rb[22], rb[23]); }
    if (RB > 12u) { store_b_group(buf, lid, 12u, rb[24], rb[25]); }
    if (RB > 13u) { store_b_group(buf, lid, 13u, rb[26], rb[27]); }
    if (RB > 14u) { store_b_group(buf, lid, 14u, rb[28], rb[29]); }
    if (RB > 15u) { store_b_group(buf, lid, 15u, rb[30], rb[31]); }
}

// Shared-memory origin of subgroup sg's first fragment row (in A) and column (in B).
fn frag_row(sg: u32) -> u32 { return ((sg % (SGM * SGN)) / SGN) * F * S; }
fn frag_col(sg: u32) -> u32 { return ((sg % (SGM * SGN)) % SGN) * F * S; }

// Slab offsets of A's element (m, k) and B's (k, n) in buffer `buf`, as each is laid out.
fn a_slab(buf: u32, m: u32, k: u32) -> u32 { return buf * A_SLAB + select(k * AS + m, m * AS + k, A_KFAST); }
fn b_slab(buf: u32, k: u32, n: u32) -> u32 { return buf * B_SLAB + select(n * BS + k, k * BS + n, B_NFAST); }

// Writes a fragment's scratch block (subgroup sg) to C at tile offset (r, col): alpha, bias, bounds.
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

// ---- 16 x 16 fragments. naga needs every argument of a cooperative load or store bound to a
// `let` first (its SPIR-V writer otherwise panics).

fn frag_a16(buf: u32, m: u32, k: u32) -> coop_mat16x16<f16, A> {
    let i = a_slab(buf, m, k);
    let s = AS;
    if (A_KFAST) { return coopLoadT<coop_mat16x16<f16, A>>(&As[i], s); }
    return coopLoad<coop_mat16x16<f16, A>>(&As[i], s);
}
fn frag_b16(buf: u32, k: u32, n: u32) -> coop_mat16x16<f16, B> {
    let i = b_slab(buf, k, n);
    let s = BS;
    if (B_NFAST) { return coopLoadT<coop_mat16x16<f16, B>>(&Bs[i], s); }
    return coopLoad<coop_mat16x16<f16, B>>(&Bs[i], s);
}

// One slab: per k-step, the subgroup's F A fragments and F B fragments, each loaded once, into
// the F x F accumulators.
fn compute16(buf: u32, sg: u32) {
    let r = frag_row(sg);
    let q = frag_col(sg);
    for (var kk = 0u; kk < BK; kk += S) {
        let x0 = frag_a16(buf, r, kk);
        let x1 = frag_a16(buf, r + S, kk);
        var x2 = x0;
        var x3 = x0;
        if (F > 2u) { x2 = frag_a16(buf, r + 2u * S, kk); x3 = frag_a16(buf, r + 3u * S, kk); }
        var y = frag_b16(buf, kk, q);
        acc16[0] = coopMultiplyAdd(x0, y, acc16[0]);
        acc16[4] = coopMultiplyAdd(x1, y, acc16[4]);
        if (F > 2u) { acc16[8] = coopMultiplyAdd(x2, y, acc16[8]); acc16[12] = coopMultiplyAdd(x3, y, acc16[12]); }
        y = frag_b16(buf, kk, q + S);
        acc16[1] = coopMultiplyAdd(x0, y, acc16[1]);
        acc16[5] = coopMultiplyAdd(x1, y, acc16[5]);
        if (F > 2u) { acc16[9] = coopMultiplyAdd(x2, y, acc16[9]); acc16[13] = coopMultiplyAdd(x3, y, acc16[13]); }
        if (F > 2u) {
            y = frag_b16(buf, kk, q + 2u * S);
            acc16[2] = coopMultiplyAdd(x0, y, acc16[2]);
            acc16[6] = coopMultiplyAdd(x1, y, acc16[6]);
            acc16[10] = coopMultiplyAdd(x2, y, acc16[10]);
            acc16[14] = coopMultiplyAdd(x3, y, acc16[14]);
            y = frag_b16(buf, kk, q + 3u * S);
            acc16[3] = coopMultiplyAdd(x0, y, acc16[3]);
            acc16[7] = coopMultiplyAdd(x1, y, acc16[7]);
            acc16[11] = coopMultiplyAdd(x2, y, acc16[11]);
            acc16[15] = coopMultiplyAdd(x3, y, acc16[15]);
        }
    }
}

// Accumulator (i, j) to C: straight to C in interior tiles, else through the scratch.
fn out16(t: Tile, sg: u32, lane: u32, lanes: u32, i: u32, j: u32, f: coop_mat16x16<f32, C>) {
    let r = frag_row(sg) + i * S;
    let col = frag_col(sg) + j * S;
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
        if (sg < SGM * SGN) { flush(t, sg, lane, lanes, r, col); }
        workgroupBarrier();
    }
}

fn output16(t: Tile, sg: u32, lane: u32, lanes: u32) {
    out16(t, sg, lane, lanes, 0u, 0u, acc16[0]);
    out16(t, sg, lane, lanes, 0u, 1u, acc16[1]);
    out16(t, sg, lane, lanes, 1u, 0u, acc16[4]);
    out16(t, sg, lane, lanes, 1u, 1u, acc16[5]);
    if (F > 2u) {
        out16(t, sg, lane, lanes, 0u, 2u, acc16[2]);
        out16(t, sg, lane, lanes, 0u, 3u, acc16[3]);
        out16(t, sg, lane, lanes, 1u, 2u, acc16[6]);
        out16(t, sg, lane, lanes, 1u, 3u, acc16[7]);
        out16(t, sg, lane, lanes, 2u, 0u, acc16[8]);
        out16(t, sg, lane, lanes, 2u, 1u, acc16[9]);
        out16(t, sg, lane, lanes, 2u, 2u, acc16[10]);
        out16(t, sg, lane, lanes, 2u, 3u, acc16[11]);
        out16(t, sg, lane, lanes, 3u, 0u, acc16[12]);
        out16(t, sg, lane, lanes, 3u, 1u, acc16[13]);
        out16(t, sg, lane, lanes, 3u, 2u, acc16[14]);
        out16(t, sg, lane, lanes, 3u, 3u, acc16[15]);
    }
}

fn zero16() {
    acc16[0] = coop_mat16x16<f32, C>(); acc16[1] = coop_mat16x16<f32, C>();
    acc16[4] = coop_mat16x16<f32, C>(); acc16[5] = coop_mat16x16<f32, C>();
    if (F > 2u) {
        acc16[2] = coop_mat16x16<f32, C>(); acc16[3] = coop_mat16x16<f32, C>();
        acc16[6] = coop_mat16x16<f32, C>(); acc16[7] = coop_mat16x16<f32, C>();
        acc16[8] = coop_mat16x16<f32, C>(); acc16[9] = coop_mat16x16<f32, C>();
        acc16[10] = coop_mat16x16<f32, C>(); acc16[11] = coop_mat16x16<f32, C>();
        acc16[12] = coop_mat16x16<f32, C>(); acc16[13] = coop_mat16x16<f32, C>();
        acc16[14] = coop_mat16x16<f32, C>(); acc16[15] = coop_mat16x16<f32, C>();
    }
}

// ---- 8 x 8 fragments: the same steps with the 8 x 8 types.

fn frag_a8(buf: u32, m: u32, k: u32) -> coop_mat8x8<f16, A> {
    let i = a_slab(buf, m, k);
    let s = AS;
    if (A_KFAST) { return coopLoadT<coop_mat8x8<f16, A>>(&As[i], s); }
    return coopLoad<coop_mat8x8<f16, A>>(&As[i], s);
}
fn frag_b8(buf: u32, k: u32, n: u32) -> coop_mat8x8<f16, B> {
    let i = b_slab(buf, k, n);
    let s = BS;
    if (B_NFAST) { return coopLoadT<coop_mat8x8<f16, B>>(&Bs[i], s); }
    return coopLoad<coop_mat8x8<f16, B>>(&Bs[i], s);
}

// One slab: per k-step, the subgroup's F A fragments and F B fragments, each loaded once, into
// the F x F accumulators.
fn compute8(buf: u32, sg: u32) {
    let r = frag_row(sg);
    let q = frag_col(sg);
    for (var kk = 0u; kk < BK; kk += S) {
        let x0 = frag_a8(buf, r, kk);
        let x1 = frag_a8(buf, r + S, kk);
        var x2 = x0;
        var x3 = x0;
        if (F > 2u) { x2 = frag_a8(buf, r + 2u * S, kk); x3 = frag_a8(buf, r + 3u * S, kk); }
        var y = frag_b8(buf, kk, q);
        acc8[0] = coopMultiplyAdd(x0, y, acc8[0]);
        acc8[4] = coopMultiplyAdd(x1, y, acc8[4]);
        if (F > 2u) { acc8[8] = coopMultiplyAdd(x2, y, acc8[8]); acc8[12] = coopMultiplyAdd(x3, y, acc8[12]); }
        y = frag_b8(buf, kk, q + S);
        acc8[1] = coopMultiplyAdd(x0, y, acc8[1]);
        acc8[5] = coopMultiplyAdd(x1, y, acc8[5]);
        if (F > 2u) { acc8[9] = coopMultiplyAdd(x2, y, acc8[9]); acc8[13] = coopMultiplyAdd(x3, y, acc8[13]); }
        if (F > 2u) {
            y = frag_b8(buf, kk, q + 2u * S);
            acc8[2] = coopMultiplyAdd(x0, y, acc8[2]);
            acc8[6] = coopMultiplyAdd(x1, y, acc8[6]);
            acc8[10] = coopMultiplyAdd(x2, y, acc8[10]);
            acc8[14] = coopMultiplyAdd(x3, y, acc8[14]);
            y = frag_b8(buf, kk, q + 3u * S);
            acc8[3] = coopMultiplyAdd(x0, y, acc8[3]);
            acc8[7] = coopMultiplyAdd(x1, y, acc8[7]);
            acc8[11] = coopMultiplyAdd(x2, y, acc8[11]);
            acc8[15] = coopMultiplyAdd(x3, y, acc8[15]);
        }
    }
}

// Accumulator (i, j) to C: straight to C in interior tiles, else through the scratch.
fn out8(t: Tile, sg: u32, lane: u32, lanes: u32, i: u32, j: u32, f: coop_mat8x8<f32, C>) {
    let r = frag_row(sg) + i * S;
    let col = frag_col(sg) + j * S;
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
        if (sg < SGM * SGN) { flush(t, sg, lane, lanes, r, col); }
        workgroupBarrier();
    }
}

fn output8(t: Tile, sg: u32, lane: u32, lanes: u32) {
    out8(t, sg, lane, lanes, 0u, 0u, acc8[0]);
    out8(t, sg, lane, lanes, 0u, 1u, acc8[1]);
    out8(t, sg, lane, lanes, 1u, 0u, acc8[4]);
    out8(t, sg, lane, lanes, 1u, 1u, acc8[5]);
    if (F > 2u) {
        out8(t, sg, lane, lanes, 0u, 2u, acc8[2]);
        out8(t, sg, lane, lanes, 0u, 3u, acc8[3]);
        out8(t, sg, lane, lanes, 1u, 2u, acc8[6]);
        out8(t, sg, lane, lanes, 1u, 3u, acc8[7]);
        out8(t, sg, lane, lanes, 2u, 0u, acc8[8]);
        out8(t, sg, lane, lanes, 2u, 1u, acc8[9]);
        out8(t, sg, lane, lanes, 2u, 2u, acc8[10]);
        out8(t, sg, lane, lanes, 2u, 3u, acc8[11]);
        out8(t, sg, lane, lanes, 3u, 0u, acc8[12]);
        out8(t, sg, lane, lanes, 3u, 1u, acc8[13]);
        out8(t, sg, lane, lanes, 3u, 2u, acc8[14]);
        out8(t, sg, lane, lanes, 3u, 3u, acc8[15]);
    }
}

fn zero8() {
    acc8[0] = coop_mat8x8<f32, C>(); acc8[1] = coop_mat8x8<f32, C>();
    acc8[4] = coop_mat8x8<f32, C>(); acc8[5] = coop_mat8x8<f32, C>();
    if (F > 2u) {
        acc8[2] = coop_mat8x8<f32, C>(); acc8[3] = coop_mat8x8<f32, C>();
        acc8[6] = coop_mat8x8<f32, C>(); acc8[7] = coop_mat8x8<f32, C>();
        acc8[8] = coop_mat8x8<f32, C>(); acc8[9] = coop_mat8x8<f32, C>();
        acc8[10] = coop_mat8x8<f32, C>(); acc8[11] = coop_mat8x8<f32, C>();
        acc8[12] = coop_mat8x8<f32, C>(); acc8[13] = coop_mat8x8<f32, C>();
        acc8[14] = coop_mat8x8<f32, C>(); acc8[15] = coop_mat8x8<f32, C>();
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
    zero16();
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
    zero16();
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
    zero8();
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
    zero8();
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
