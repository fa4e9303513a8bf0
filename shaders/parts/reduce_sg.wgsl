// Reductions over the LPR adjacent lanes that share a row, inside one subgroup: a butterfly of
// log2(LPR) subgroup shuffles (lane i with lane i ^ m), no workgroup memory and no barrier. LPR is
// at most the adapter's smallest subgroup size (the launcher checks it), and a workgroup's lanes
// fill its subgroups in order of local index, as on every driver kiln runs on (a test checks the
// sums on the adapter at hand). Called by every lane, in uniform control flow.

// Sums v over the lanes of lid's row; every lane of the row gets the sum.
fn row_sum(v: vec2<f32>, lid: u32) -> vec2<f32> {
    var r = v;
    for (var m = 1u; m < LPR; m = m * 2u) { r = r + subgroupShuffleXor(r, m); }
    return r;
}

// Two (max, sum of exp(v - max)) pairs as one.
fn combine_max_sum(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let m = max(a.x, b.x);
    return vec2<f32>(m, a.y * exp(a.x - m) + b.y * exp(b.x - m));
}

// Combines (max, sum of exp(v - max)) pairs over the lanes of lid's row.
fn row_max_sum(v: vec2<f32>, lid: u32) -> vec2<f32> {
    var r = v;
    for (var m = 1u; m < LPR; m = m * 2u) { r = combine_max_sum(r, subgroupShuffleXor(r, m)); }
    return r;
}
