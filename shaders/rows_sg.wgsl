// The row kernels (parts/rows.wgsl) with reductions through subgroup shuffles: adapters with
// subgroups, rows of at most a subgroup's lanes.
// kiln:include rows.wgsl
// kiln:include reduce_sg.wgsl
