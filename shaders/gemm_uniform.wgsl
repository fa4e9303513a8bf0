// Matmul for software adapters, both operands read through 64 KiB uniform windows (see
// ops::matmul): C[part, m, n] = sum over this dispatch's K range of A[m, k] * B[k, n] (+ bias[n]
// in part 0). A software adapter gathers a uniform array's elements in one vector operation, but
// loads a storage buffer's one invocation at a time. Each invocation owns 4 columns by 8 rows of C;
// the invocations of a workgroup share the rows, so each A value is one address for all of them.
// The caller splits M, N and K so that every operand block fits its window, and adds the parts
// of a split K.

override WX: u32 = 64u;

struct Params {
    m: u32, n: u32, m0: u32, m_len: u32,
    n0: u32, n_len: u32, k0: u32, k_len: u32,
    // Window element of A[m, k]: a_skip + (m - a_m0) * a_ms + (k - a_k0) * a_ks; B likewise.
    a_skip: u32, a_m0: u32, a_k0: u32, a_ms: u32,
    a_ks: u32, b_skip: u32, b_k0: u32, b_n0: u32,
    b_ks: u32, b_ns: u32, part: u32, has_bias: u32,
}

@group(0) @binding(0) var<uniform> au: array<vec4<f32>, 4096>;
@group(0) @binding(1) var<uniform> bu: array<vec4<f32>, 4096>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>; // [parts, M, N]
@group(0) @binding(4) var<uniform> p: Params;

fn a_at(row: u32, k: u32) -> f32 {
    let e = row + (k - p.a_k0) * p.a_ks;
    return au[e >> 2u][e & 3u];
}

fn b_at(k: u32, col: u32) -> f32 {
    let e = col + (k - p.b_k0) * p.b_ks;
    return bu[e >> 2u][e & 3u];
}

// The 4 x 4 block of products: column j is `rows` times col.j.
fn outer(rows: vec4<f32>, col: vec4<f32>) -> mat4x4<f32> {
    return mat4x4<f32>(rows * col.x, rows * col.y, rows * col.z, rows * col.w);
}

@compute @workgroup_size(WX)
fn gemm_uniform(@builtin(global_invocation_id) gid: vec3<u32>,
                @builtin(workgroup_id) wid: vec3<u32>) {
    let nl = gid.x * 4u;
    let ml = wid.y * 8u;
    if (nl >= p.n_len || ml >= p.m_len) { return; } // no barriers follow
    // Window offsets of this block's rows of A and columns of B, clamped to the last ones (their
    // products are computed and not stored).
    var ar: array<u32, 8>;
    for (var r = 0u; r < 8u; r++) {
        ar[r] = p.a_skip + (p.m0 + min(ml + r, p.m_len - 1u) - p.a_m0) * p.a_ms;
    }
    let a0 = vec4<u32>(ar[0], ar[1], ar[2], ar[3]);
    let a1 = vec4<u32>(ar[4], ar[5], ar[6], ar[7]);
    let bc = vec4<u32>(p.b_skip) + (vec4<u32>(p.n0 - p.b_n0) +
                                    min(vec4<u32>(nl) + vec4<u32>(0u, 1u, 2u, 3u),
                                        vec4<u32>(p.n_len - 1u))) * p.b_ns;
    // Column j of acc_q holds rows ml + 4q .. + 4 of column nl + j.
    var acc0 = mat4x4<f32>();
    var acc1 = mat4x4<f32>();
    for (var k = p.k0; k < p.k0 + p.k_len; k++) {
        let bv = vec4<f32>(b_at(k, bc.x), b_at(k, bc.y), b_at(k, bc.z), b_at(k, bc.w));
        acc0 += outer(vec4<f32>(a_at(a0.x, k), a_at(a0.y, k), a_at(a0.z, k), a_at(a0.w, k)), bv);
        acc1 += outer(vec4<f32>(a_at(a1.x, k), a_at(a1.y, k), a_at(a1.z, k), a_at(a1.w, k)), bv);
    }
    for (var j = 0u; j < 4u; j++) {
        if (nl + j >= p.n_len) { break; }
        let n = p.n0 + nl + j;
        var b = 0.0;
        if (p.has_bias != 0u && p.part == 0u) { b = bias[n]; }
        for (var r = 0u; r < 8u; r++) {
            if (ml + r >= p.m_len) { break; }
            let v = select(acc1[j][r & 3u], acc0[j][r & 3u], r < 4u);
            c[(p.part * p.m + p.m0 + ml + r) * p.n + n] = v + b;
        }
    }
}
