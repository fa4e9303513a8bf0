// attention's partial-sum exchange through workgroup memory, transposed: chunk ch's partials of
// invocation lid at [ch * WG + lid], so the stores of 32 lanes are consecutive vec4s and a row's
// R reads are adjacent.

override PART: u32 = 1u;   // partials exchanged (vec4s): tile rows / 4 * WG where R > 1, else 1
var<workgroup> part1: array<vec4<f32>, PART>;
var<workgroup> part2: array<vec4<f32>, PART>;

// The sum of the R partners' partials of chunk ch (row `row`) from part1 (or part2).
fn gather1(ch: u32, row: u32) -> vec4<f32> {
    var s = vec4<f32>(0.0);
    for (var t = 0u; t < R; t++) { s += part1[ch * WG + row * R + t]; }
    return s;
}
fn gather2(ch: u32, row: u32) -> vec4<f32> {
    var s = vec4<f32>(0.0);
    for (var t = 0u; t < R; t++) { s += part2[ch * WG + row * R + t]; }
    return s;
}

// Where a row has several invocations, stores this invocation's partials of n chunks and waits
// for its partners' (R is an override: the branch is uniform).
fn publish_a1(n: u32, lid: u32, r: u32) {
    if (R > 1u) {
        for (var ch = 0u; ch < n; ch++) { part1[ch * WG + lid] = dots_a1(ch, r); }
        workgroupBarrier();
    }
}
fn publish_a1b2(n: u32, lid: u32, r: u32) {
    if (R > 1u) {
        for (var ch = 0u; ch < n; ch++) {
            part1[ch * WG + lid] = dots_a1(ch, r);
            part2[ch * WG + lid] = dots_b2(ch, r);
        }
        workgroupBarrier();
    }
}

// Row `row`'s sum for chunk ch: the partners' partials, or this invocation's own where R is 1.
fn sum_a1(ch: u32, row: u32, r: u32) -> vec4<f32> {
    if (R > 1u) { return gather1(ch, row); }
    return dots_a1(ch, r);
}
fn sum_b2(ch: u32, row: u32, r: u32) -> vec4<f32> {
    if (R > 1u) { return gather2(ch, row); }
    return dots_b2(ch, r);
}
