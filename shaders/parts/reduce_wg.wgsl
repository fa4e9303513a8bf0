// Reductions over the LPR adjacent lanes that share a row, through workgroup memory: a tree of
// log2(LPR) steps in which lane i adds lane i + s's value (32 lanes touch 32 consecutive
// vec2 words: no bank conflicts). Every lane of the workgroup calls them, in uniform control
// flow: they hold barriers. Needs `LPR` (a power of two, 1 to WG) and `WG` from the kernels.

var<workgroup> red: array<vec2<f32>, WG>;

// Sums v over the lanes of lid's row; every lane of the row gets the sum.
fn row_sum(v: vec2<f32>, lid: u32) -> vec2<f32> {
    red[lid] = v;
    workgroupBarrier();
    for (var s = LPR / 2u; s > 0u; s = s / 2u) {
        if (lid % LPR < s) { red[lid] = red[lid] + red[lid + s]; }
        workgroupBarrier();
    }
    let r = red[lid - lid % LPR];
    workgroupBarrier(); // `red` is reused by the next reduction
    return r;
}

// Two (max, sum of exp(v - max)) pairs as one.
fn combine_max_sum(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let m = max(a.x, b.x);
    return vec2<f32>(m, a.y * exp(a.x - m) + b.y * exp(b.x - m));
}

// Combines (max, sum of exp(v - max)) pairs over the lanes of lid's row.
fn row_max_sum(v: vec2<f32>, lid: u32) -> vec2<f32> {
    red[lid] = v;
    workgroupBarrier();
    for (var s = LPR / 2u; s > 0u; s = s / 2u) {
        if (lid % LPR < s) { red[lid] = combine_max_sum(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    let r = red[lid - lid % LPR];
    workgroupBarrier();
    return r;
}
