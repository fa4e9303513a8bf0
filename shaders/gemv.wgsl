// Products with few rows (M <= 8: generation runs one token per sequence through every layer):
// C[z, m, n] = sum_k A[z, m, k] * B[z, k, n] (+ bias[n]), addressed as gemm.wgsl's MODE 0 (the
// same parameter block). A GEMM tile would leave most of its rows idle; these kernels spend every
// lane on loading B, which is what the product's time is.
//   gemv_kdot:  B's rows run along k (b_ks = 1: a Linear weight [N, K], or an embedding table
//               read as a tied output layer). LPR adjacent lanes share an output column, each
//               reading vec4s of its B row and of A's rows, then a workgroup-memory reduction;
//               WG / LPR columns per workgroup.
//   gemv_ncols: B's rows run along n (b_ns = 1: B [K, N], as GPT-2's Conv1D weights). A workgroup
//               is NC lanes along n, four adjacent columns each (one vec4 of B per k), times KG
//               lanes along k that take every KG-th k of the workgroup's K range, four loads in
//               flight at a time; the KG partial sums of a column meet in workgroup memory. K is
//               also split across workgroups (z = batch * k_split + split), whose partial sums,
//               at c_split * split, the caller adds.
// A's MR rows are held in named accumulators (no register array).
// kiln:include reduce_wg.wgsl

override MR: u32 = 1u;    // rows of A and C, 1 to 8
override LPR: u32 = 32u;  // gemv_kdot: lanes per output column (a power of two, 1 to WG)
const WG: u32 = 256u;

struct Params {
    m: u32, n: u32, k: u32, k_split: u32,
    k_chunk: u32, bias_mode: u32, c_split: u32, batch: u32,
    a_bs: u32, a_ms: u32, a_ks: u32,
    b_bs: u32, b_ks: u32, b_ns: u32,
    c_bs: u32, c_ms: u32, c_ns: u32,
}

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;
// gemv_kdot reads A's rows as vec4s too.
@group(0) @binding(0) var<storage, read> a4: array<vec4<f32>>;

fn store(z: u32, split: u32, m: u32, n: u32, v: f32) {
    var out = v;
    if (split == 0u && p.bias_mode == 1u) { out += bias[n]; }
    c[split * p.c_split + z * p.c_bs + m * p.c_ms + n * p.c_ns] = out;
}

// A's row r (r < MR), vec4 q along k, as a vec4 (zero past the rows).
fn a_quad(z: u32, r: u32, q: u32) -> vec4<f32> {
    if (r >= MR) { return vec4<f32>(0.0); }
    return a4[(z * p.a_bs + r * p.a_ms) / 4u + q];
}

@compute @workgroup_size(WG)
fn gemv_kdot(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let n = wid.x * (WG / LPR) + lid / LPR;
    let nn = min(n, p.n - 1u);
    let z = wid.z;
    let lane = lid % LPR;
    let k4 = p.k / 4u;
    let brow = (z * p.b_bs + nn * p.b_ns) / 4u;
    var acc0 = vec4<f32>(0.0); // rows 0-3: components
    var acc1 = vec4<f32>(0.0); // rows 4-7
    // The same trip count in every lane: the reduction below holds barriers.
    let steps = (k4 + LPR - 1u) / LPR;
    for (var i = 0u; i < steps; i++) {
        let q = i * LPR + lane;
        if (q < k4) {
            let bv = b4[brow + q];
            acc0.x += dot(a_quad(z, 0u, q), bv);
            if (MR > 1u) { acc0.y += dot(a_quad(z, 1u, q), bv); }
            if (MR > 2u) { acc0.z += dot(a_quad(z, 2u, q), bv); }
            if (MR > 3u) { acc0.w += dot(a_quad(z, 3u, q), bv); }
            if (MR > 4u) {
                acc1 += vec4<f32>(dot(a_quad(z, 4u, q), bv), dot(a_quad(z, 5u, q), bv),
                                  dot(a_quad(z, 6u, q), bv), dot(a_quad(z, 7u, q), bv));
            }
        }
    }
    let s01 = row_sum(acc0.xy, lid);
    var s23 = vec2<f32>(0.0);
    var s45 = vec2<f32>(0.0);
    var s67 = vec2<f32>(0.0);
    if (MR > 2u) { s23 = row_sum(acc0.zw, lid); }
    if (MR > 4u) {
        s45 = row_sum(acc1.xy, lid);
        s67 = row_sum(acc1.zw, lid);
    }
    if (lane != 0u || n >= p.n) { return; }
    store(z, 0u, 0u, n, s01.x);
    if (MR > 1u) { store(z, 0u, 1u, n, s01.y); }
    if (MR > 2u) { store(z, 0u, 2u, n, s23.x); }
    if (MR > 3u) { store(z, 0u, 3u, n, s23.y); }
    if (MR > 4u) { store(z, 0u, 4u, n, s45.x); }
    if (MR > 5u) { store(z, 0u, 5u, n, s45.y); }
    if (MR > 6u) { store(z, 0u, 6u, n, s67.x); }
    if (MR > 7u) { store(z, 0u, 7u, n, s67.y); }
}

// A(z, r, k), zero past the rows.
fn a_at(z: u32, r: u32, k: u32) -> f32 {
    if (r >= MR) { return 0.0; }
    return a[z * p.a_bs + r * p.a_ms + k * p.a_ks];
}

fn store4(z: u32, split: u32, r: u32, n: u32, v: vec4<f32>) {
    store(z, split, r, n, v.x);
    store(z, split, r, n + 1u, v.y);
    store(z, split, r, n + 2u, v.z);
    store(z, split, r, n + 3u, v.w);
}

// gemv_ncols' workgroup: NC lanes along n, KG along k.
const NC: u32 = 64u;
const KG: u32 = 4u;
var<workgroup> part: array<vec4<f32>, 256>; // [KG][NC]

// Adds this lane's row sums across the KG lanes of its columns (in order of k group) and
// stores them: group 0 writes. Every lane calls it (it holds barriers).
fn gemv_ncols_store(z: u32, split: u32, r: u32, n: u32, valid: bool, kg: u32, lx: u32,
                    acc: vec4<f32>) {
    part[kg * NC + lx] = acc;
    workgroupBarrier();
    if (kg == 0u && valid) {
        var t = part[lx];
        for (var g = 1u; g < KG; g++) { t += part[g * NC + lx]; }
        store4(z, split, r, n, t);
    }
    workgroupBarrier();
}

@compute @workgroup_size(NC, KG)
fn gemv_ncols(@builtin(workgroup_id) wid: vec3<u32>,
              @builtin(local_invocation_id) lid: vec3<u32>) {
    let n = (wid.x * NC + lid.x) * 4u;
    // Lanes past the columns compute on the last quad and store nothing: the sums below hold
    // barriers, so no lane returns early.
    let valid = n < p.n;
    let nq = min(n, p.n - 4u);
    let z = wid.z / p.k_split;
    let split = wid.z % p.k_split;
    let k0 = split * p.k_chunk;
    let k_end = min(p.k, k0 + p.k_chunk);
    let len = k_end - min(k0, k_end);
    // This lane's k: k0 + kg, k0 + kg + KG, ...; `mine` of them, four at a time.
    let kg = lid.y;
    let mine = (len + KG - 1u - min(kg, len)) / KG;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var acc4 = vec4<f32>(0.0);
    var acc5 = vec4<f32>(0.0);
    var acc6 = vec4<f32>(0.0);
    var acc7 = vec4<f32>(0.0);
    let b0 = (z * p.b_bs + nq) / 4u;
    let bs = p.b_ks / 4u;
    for (var i = 0u; i < mine; i++) {
        let k = k0 + kg + i * KG;
        let bv = b4[b0 + k * bs];
        // Every lane of a k group reads the same A element: one broadcast load per row.
        acc0 = fma(vec4<f32>(a_at(z, 0u, k)), bv, acc0);
        if (MR > 1u) { acc1 = fma(vec4<f32>(a_at(z, 1u, k)), bv, acc1); }
        if (MR > 2u) { acc2 = fma(vec4<f32>(a_at(z, 2u, k)), bv, acc2); }
        if (MR > 3u) { acc3 = fma(vec4<f32>(a_at(z, 3u, k)), bv, acc3); }
        if (MR > 4u) { acc4 = fma(vec4<f32>(a_at(z, 4u, k)), bv, acc4); }
        if (MR > 5u) { acc5 = fma(vec4<f32>(a_at(z, 5u, k)), bv, acc5); }
        if (MR > 6u) { acc6 = fma(vec4<f32>(a_at(z, 6u, k)), bv, acc6); }
        if (MR > 7u) { acc7 = fma(vec4<f32>(a_at(z, 7u, k)), bv, acc7); }
    }
    gemv_ncols_store(z, split, 0u, n, valid, kg, lid.x, acc0);
    if (MR > 1u) { gemv_ncols_store(z, split, 1u, n, valid, kg, lid.x, acc1); }
    if (MR > 2u) { gemv_ncols_store(z, split, 2u, n, valid, kg, lid.x, acc2); }
    if (MR > 3u) { gemv_ncols_store(z, split, 3u, n, valid, kg, lid.x, acc3); }
    if (MR > 4u) { gemv_ncols_store(z, split, 4u, n, valid, kg, lid.x, acc4); }
    if (MR > 5u) { gemv_ncols_store(z, split, 5u, n, valid, kg, lid.x, acc5); }
    if (MR > 6u) { gemv_ncols_store(z, split, 6u, n, valid, kg, lid.x, acc6); }
    if (MR > 7u) { gemv_ncols_store(z, split, 7u, n, valid, kg, lid.x, acc7); }
}
