// Embedding lookup from a table kept as one or more blocks of rows (a table larger than one
// storage binding is split across several), with PyTorch's padding_idx; launched once per block.
//   lookup_forward:  out[i, d] = block[ids[i] - start, d] where start <= ids[i] < start + rows;
//                    the first block (first = 1) also writes 0 for ids in no block
//                    ids: [n] i32, block: [rows, dim], out: [n, dim]
//   lookup_links:    links[2i] = the next position j > i with ids[j] == ids[i] (-1: none),
//                    links[2i + 1] = 1 where i is the first position of its id
//   lookup_backward: dblock[v - start, d] = sum of dy[j, d] over the positions j whose id is v,
//                    in increasing j, following the links from each id's first position; rows of
//                    ids that do not occur (and padding_idx's row) are left as the caller filled
//                    them (zeros)
// No atomics, so the gradient is the same on every run. Cost: n^2 comparisons for the links (once
// per backward pass, shared by every block) and n * dim additions, instead of vocab * dim * n for
// a scan of every id per table element.

const WG: u32 = 256u;

struct Params {
    n: u32,
    dim: u32,
    start: u32,
    rows: u32,
    first: u32,
    // -1: no padding row.
    padding: i32,
}

@group(0) @binding(0) var<storage, read> ids: array<i32>;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read> links_in: array<i32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> links: array<i32>;
@group(0) @binding(5) var<uniform> p: Params;

fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

// The id's row in this block, or -1 when the block does not hold it (ids out of every block's
// range read nothing: the kernel stays in bounds whatever the ids are).
fn block_row(id: i32) -> i32 {
    if (id < i32(p.start) || id >= i32(p.start + p.rows)) { return -1; }
    return id - i32(p.start);
}

@compute @workgroup_size(WG)
fn lookup_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let e = linear_index(wid, nwg, lid);
    // The last workgroup runs past n * dim.
    if (e >= p.n * p.dim) { return; }
    let r = block_row(ids[e / p.dim]);
    if (r >= 0) {
        out[e] = src[u32(r) * p.dim + e % p.dim];
    } else if (p.first == 1u) {
        out[e] = 0.0;
    }
}

@compute @workgroup_size(WG)
fn lookup_links(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid);
    if (i >= p.n) { return; }
    let id = ids[i];
    var first = 1;
    for (var j = 0u; j < i; j++) {
        if (ids[j] == id) { first = 0; break; }
    }
    var next = -1;
    for (var j = i + 1u; j < p.n; j++) {
        if (ids[j] == id) { next = i32(j); break; }
    }
    links[2u * i] = next;
    links[2u * i + 1u] = first;
}

@compute @workgroup_size(WG)
fn lookup_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let e = linear_index(wid, nwg, lid);
    if (e >= p.n * p.dim) { return; }
    let i = e / p.dim;
    let d = e % p.dim;
    // One invocation per id (at its first position) and column sums all its positions.
    if (links_in[2u * i + 1u] == 0) { return; }
    let id = ids[i];
    if (id == p.padding) { return; }
    let r = block_row(id);
    if (r < 0) { return; }
    var acc = 0.0;
    var j = i32(i);
    // Each link points to a later position, so the chain ends within n steps.
    for (var step = 0u; step < p.n; step++) {
        acc += src[u32(j) * p.dim + d];
        j = links_in[2u * u32(j)];
        if (j < 0) { break; }
    }
    out[u32(r) * p.dim + d] = acc;
}
