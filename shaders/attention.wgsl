// FlashAttention-2 in f32 (parts/attention.wgsl), a row's invocations exchanging partial sums
// through workgroup memory: any adapter.
// kiln:include attention.wgsl
// kiln:include attention_exchange_wg.wgsl
