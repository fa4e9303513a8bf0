// Matmul for software adapters with subgroups: C[z, m, n] = sum_k A[z, m, k] * B[z, k, n] (+ bias[n]),
// both operands read as vec4s (the caller checks the alignment).
// All invocations of a workgroup share the same RM rows of A, and each owns four columns of C.
// Rather than each loading the same A elements, the invocations of a subgroup load different
// vec4s of those rows and pass them round with subgroupShuffle: one load then serves the whole
// subgroup. On software adapters load instructions, not multiply-adds, set the speed.
// No invocation returns before the shuffles: every one takes part in each.

override RM: u32 = 32u;       // rows of C per workgroup: a multiple of 4, at most 32
override WX: u32 = 64u;       // invocations per workgroup
override A_MV: bool = false;  // A's vec4s run along M (A transposed), else along K
override B_KV: bool = false;  // B's vec4s run along K (B transposed), else along N

// The first fields of gemm.wgsl's parameter block (the same buffer is bound).
struct Params {
    m: u32, n: u32, k: u32, k_split: u32,
    k_chunk: u32, bias_mode: u32, c_split: u32, batch: u32,
    a_bs: u32, a_ms: u32, a_ks: u32,
    b_bs: u32, b_ks: u32, b_ns: u32,
    c_bs: u32, c_ms: u32, c_ns: u32,
}

@group(0) @binding(0) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

// B[k..k+4, n..n+4] as a matrix whose column kk is B[k + kk, n..n+4].
fn b_block(z: u32, k: u32, n: u32) -> mat4x4<f32> {
    let base = z * p.b_bs;
    if (B_KV) {
        let r = p.n - 1u;
        return transpose(mat4x4<f32>(b4[(base + min(n, r) * p.b_ns + k) / 4u],
                                     b4[(base + min(n + 1u, r) * p.b_ns + k) / 4u],
                                     b4[(base + min(n + 2u, r) * p.b_ns + k) / 4u],
                                     b4[(base + min(n + 3u, r) * p.b_ns + k) / 4u]));
    }
    let i0 = (base + k * p.b_ks + min(n, p.n - 4u)) / 4u;
    let s = p.b_ks / 4u;
    return mat4x4<f32>(b4[i0], b4[i0 + s], b4[i0 + 2u * s], b4[i0 + 3u * s]);
}

@compute @workgroup_size(WX, 1)
fn gemm_sg(@builtin(global_invocation_id) gid: vec3<u32>,
           @builtin(workgroup_id) wid: vec3<u32>,
           @builtin(subgroup_invocation_id) lane: u32,
           @builtin(subgroup_size) sg: u32) {
    let n0 = gid.x * 4u;
    let m0 = wid.y * RM;
    let z = wid.z / p.k_split;
    let split = wid.z % p.k_split;
    let k_begin = split * p.k_chunk;
    let k_end = min(p.k, k_begin + p.k_chunk);
    var acc: array<vec4<f32>, 32>;
    for (var i = 0u; i < 32u; i++) { acc[i] = vec4<f32>(0.0); }
    // This invocation's share of A for one pass: K quad `lane` of the pass's sg quads.
    //   along K: av[i] = A[m0 + i, kq..kq+4];
    //   along M: av[4r + kk] = A[m0 + 4r..+4, kq + kk].
    var av: array<vec4<f32>, 32>;
    for (var k0 = k_begin; k0 < k_end; k0 += 4u * sg) {
        let kq = k0 + 4u * lane;
        let live = kq < k_end; // K quads lie wholly inside or outside [k_begin, k_end)
        let a_base = z * p.a_bs;
        for (var i = 0u; i < RM; i++) {
            var idx: u32;
            if (A_MV) {
                idx = a_base + (kq + i % 4u) * p.a_ks + min(m0 + (i / 4u) * 4u, p.m - 4u);
            } else {
                idx = a_base + min(m0 + i, p.m - 1u) * p.a_ms + kq;
            }
            av[i] = select(vec4<f32>(0.0), a4[idx / 4u], live);
        }
        for (var s = 0u; s < sg; s++) {
            let k = k0 + 4u * s;
            if (k >= k_end) { break; } // the same for the whole workgroup
            let bt = b_block(z, k, n0);
            if (A_MV) {
                for (var r = 0u; r < RM / 4u; r++) {
                    // Rows m0+4r..+4 by K quad k, transposed so that column q is row 4r+q.
                    let x = transpose(mat4x4<f32>(subgroupShuffle(av[4u * r], s),
                                                  subgroupShuffle(av[4u * r + 1u], s),
                                                  subgroupShuffle(av[4u * r + 2u], s),
                                                  subgroupShuffle(av[4u * r + 3u], s)));
                    for (var q = 0u; q < 4u; q++) { acc[4u * r + q] += bt * x[q]; }
                }
            } else {
                for (var i = 0u; i < RM; i++) { acc[i] += bt * subgroupShuffle(av[i], s); }
            }
        }
    }
    if (n0 >= p.n) { return; }
    let base = split * p.c_split + z * p.c_bs;
    for (var i = 0u; i < RM; i++) {
        let m = m0 + i;
        if (m >= p.m) { break; }
        var v = acc[i];
        if (split == 0u && p.bias_mode == 1u) {
            let r = p.n - 1u;
            v += vec4<f32>(bias[n0], bias[min(n0 + 1u, r)], bias[min(n0 + 2u, r)],
                           bias[min(n0 + 3u, r)]);
        }
        for (var j = 0u; j < min(4u, p.n - n0); j++) { c[base + m * p.c_ms + (n0 + j) * p.c_ns] = v[j]; }
    }
}
