// Reductions over the LPR adjacent lanes that share a row, through subgroups: a butterfly of
// subgroup shuffles (lane i with lane i ^ m) within each group of SGS lanes, no workgroup memory
// and no barrier for rows of at most SGS lanes; wider rows (up to WG lanes) then add their
// subgroups' sums through workgroup memory, one barrier pair instead of a tree's log2(LPR).
// SGS is the adapter's smallest subgroup size (a power of two; the launcher sets it), and a
// workgroup's lanes fill its subgroups in order of local index, as on every driver kiln runs on
// (a test checks the sums on the adapter at hand). Called by every lane, in uniform control flow.

override SGS: u32 = 32u;
var<workgroup> red_sg: array<vec2<f32>, WG / SGS>;

// Two (max, sum of exp(v - max)) pairs as one.
fn combine_max_sum(a: vec2<f32>, b: vec2<f32>) -> vec2<f32> {
    let m = max(a.x, b.x);
    return vec2<f32>(m, a.y * exp(a.x - m) + b.y * exp(b.x - m));
}

// Sums v over the lanes of lid's row; every lane of the row gets the sum.
fn row_sum(v: vec2<f32>, lid: u32) -> vec2<f32> {
    var r = v;
    for (var m = 1u; m < min(LPR, SGS); m = m * 2u) { r = r + subgroupShuffleXor(r, m); }
    if (LPR > SGS) {
        if (lid % SGS == 0u) { red_sg[lid / SGS] = r; }
        workgroupBarrier();
        let first = (lid / LPR) * (LPR / SGS);
        var t = red_sg[first];
        for (var s = 1u; s < LPR / SGS; s++) { t = t + red_sg[first + s]; }
        workgroupBarrier(); // `red_sg` is reused by the next reduction
        r = t;
    }
    return r;
}

// Combines (max, sum of exp(v - max)) pairs over the lanes of lid's row.
fn row_max_sum(v: vec2<f32>, lid: u32) -> vec2<f32> {
    var r = v;
    for (var m = 1u; m < min(LPR, SGS); m = m * 2u) {
        r = combine_max_sum(r, subgroupShuffleXor(r, m));
    }
    if (LPR > SGS) {
        if (lid % SGS == 0u) { red_sg[lid / SGS] = r; }
        workgroupBarrier();
        let first = (lid / LPR) * (LPR / SGS);
        var t = red_sg[first];
        for (var s = 1u; s < LPR / SGS; s++) { t = combine_max_sum(t, red_sg[first + s]); }
        workgroupBarrier();
        r = t;
    }
    return r;
}
