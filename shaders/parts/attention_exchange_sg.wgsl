// attention's partial-sum exchange by subgroup shuffles: a row's R invocations are adjacent lanes
// of one subgroup (the workgroup is formed of whole subgroups, invocations numbered subgroup by
// subgroup), so their partials meet in registers, without workgroup memory or a barrier.
// Adapters with subgroups only.

// The sum over a row's R invocations by butterfly shuffles; every partner gets the same bits
// (floating-point addition is commutative).
fn xsum(x: vec4<f32>) -> vec4<f32> {
    var s = x;
    if (R > 1u) { s += subgroupShuffleXor(s, 1u); }
    if (R > 2u) { s += subgroupShuffleXor(s, 2u); }
    if (R > 4u) { s += subgroupShuffleXor(s, 4u); }
    if (R > 8u) { s += subgroupShuffleXor(s, 8u); }
    return s;
}

// Nothing to publish: the shuffles read the partners' registers.
fn publish_a1(n: u32, lid: u32, r: u32) {}
fn publish_a1b2(n: u32, lid: u32, r: u32) {}

// Row `row`'s sum for chunk ch.
fn sum_a1(ch: u32, row: u32, r: u32) -> vec4<f32> {
    return xsum(dots_a1(ch, r));
}
fn sum_b2(ch: u32, row: u32, r: u32) -> vec4<f32> {
    return xsum(dots_b2(ch, r));
}
