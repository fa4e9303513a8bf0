// Embedding: out[i, d] = weight[ids[i], d] for ids: [n] (i32), weight: [vocab, dim].
// Backward without atomics, so it is the same on every run: dweight[v, d] sums dy[i, d] over the
// positions i whose id is v, in order (one invocation per weight element; cost vocab*dim*n, fine
// for character and small word vocabularies).

const WG: u32 = 256u;

struct Params {
    n: u32,
    vocab: u32,
    dim: u32,
}

@group(0) @binding(0) var<storage, read> ids: array<i32>;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(WG)
fn embedding_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                     @builtin(local_invocation_index) lid: u32) {
    let e = (wid.x + wid.y * nwg.x) * WG + lid;
    if (e >= p.n * p.dim) { return; }
    let id = ids[e / p.dim];
    // Out-of-range ids read nothing (the host checks them; this keeps the kernel in bounds).
    if (id < 0 || u32(id) >= p.vocab) { out[e] = 0.0; return; }
    out[e] = src[u32(id) * p.dim + e % p.dim];
}

@compute @workgroup_size(WG)
fn embedding_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                      @builtin(local_invocation_index) lid: u32) {
    let e = (wid.x + wid.y * nwg.x) * WG + lid;
    if (e >= p.vocab * p.dim) { return; }
    let v = i32(e / p.dim);
    let d = e % p.dim;
    var acc = 0.0;
    for (var i = 0u; i < p.n; i++) {
        if (ids[i] == v) { acc += src[i * p.dim + d]; }
    }
    out[e] = acc;
}
