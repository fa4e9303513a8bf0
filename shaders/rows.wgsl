// The row kernels (parts/rows.wgsl) with reductions through workgroup memory: any adapter.
// kiln:include rows.wgsl
// kiln:include reduce_wg.wgsl
