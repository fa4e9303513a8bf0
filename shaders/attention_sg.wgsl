// FlashAttention-2 in f32 (parts/attention.wgsl), a row's invocations exchanging partial sums by
// subgroup shuffles: adapters with subgroups.
// kiln:include attention.wgsl
// kiln:include attention_exchange_sg.wgsl
