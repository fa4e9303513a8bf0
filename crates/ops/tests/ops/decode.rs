//! Generation's attention: the KV cache, decode attention against full attention and the CPU,
//! and split-KV decode attention (every split count) against the single pass and the CPU.

use crate::common::{arr, dev, expect_err, forced, Tally};
use kiln_ops::decode::{self, KvCache};
use kiln_ops::numeric::assert_close;
use kiln_ops::random::Rng;
use kiln_ops::KernelPolicy;

#[test]
fn decode_attention_matches_reference_and_full_attention() {
    let d = dev();
    let mut r = Rng::new(12);
    let (b, h, hd, t) = (2, 3, 8, 9);
    let e = h * hd;
    // Fused q|k|v rows [B, T, 3E], as GPT-2's c_attn gives them.
    let qkv = r.vec(b * t * 3 * e, -1.0, 1.0);
    let mut cache = KvCache::new(&d, b, h, 16, hd).unwrap();
    // The first t - 1 positions at once (a prompt), then the last one (a generation step).
    let head: Vec<f32> = (0..b)
        .flat_map(|bi| qkv[bi * t * 3 * e..(bi * t + t - 1) * 3 * e].to_vec())
        .collect();
    decode::kv_append(
        &d,
        &mut cache,
        &arr(&d, &head, &[b, t - 1, 3 * e]),
        e,
        2 * e,
    )
    .unwrap();
    let last: Vec<f32> = (0..b)
        .flat_map(|bi| qkv[(bi * t + t - 1) * 3 * e..(bi * t + t) * 3 * e].to_vec())
        .collect();
    let last = arr(&d, &last, &[b, 1, 3 * e]);
    decode::kv_append(&d, &mut cache, &last, e, 2 * e).unwrap();
    assert_eq!(cache.len, t);
    let out = decode::decode_attention(&d, &last, 0, &cache, None).unwrap();
    assert_eq!(out.shape, [b, e]);
    // Reference: the last row of causal attention over all t positions.
    let col = |bi: usize, ti: usize, c0: usize, hi: usize, k: usize| {
        qkv[(bi * t + ti) * 3 * e + c0 + hi * hd + k] as f64
    };
    let mut q = vec![0.0; b * e];
    let (mut kc, mut vc) = (vec![0.0; b * h * t * hd], vec![0.0; b * h * t * hd]);
    for bi in 0..b {
        for hi in 0..h {
            for k in 0..hd {
                q[bi * e + hi * hd + k] = col(bi, t - 1, 0, hi, k);
                for ti in 0..t {
                    kc[((bi * h + hi) * t + ti) * hd + k] = col(bi, ti, e, hi, k);
                    vc[((bi * h + hi) * t + ti) * hd + k] = col(bi, ti, 2 * e, hi, k);
                }
            }
        }
    }
    let want = decode::cpu::decode_attention(&q, &kc, &vc, b, h, t, hd, 1.0 / (hd as f64).sqrt());
    assert_close(
        "decode_attention",
        &out.to_f32(&d).unwrap(),
        &want,
        1e-5,
        1e-5,
    );
    // A cache that is full refuses more positions.
    let mut small = KvCache::new(&d, b, h, 2, hd).unwrap();
    let three = arr(&d, &qkv[..b * 3 * 3 * e], &[b, 3, 3 * e]);
    expect_err(
        decode::kv_append(&d, &mut small, &three, e, 2 * e),
        "exceed the cache",
    );
    expect_err(
        decode::decode_attention(&d, &last, 0, &small, None),
        "non-empty cache",
    );
}

/// Split-KV decode attention against the CPU and the single-pass kernel: caches of 1 to 1,100
/// positions, heads of 1 to 256 columns, batches; split counts from one to dozens (planned for
/// an H100's 132 compute units, so a batch of one splits its cache widely).
#[test]
fn split_decode_attention_matches_the_cpu_and_the_single_pass() {
    let mut r = Rng::new(8);
    let h100 = kiln_device::AdapterProfile::nvidia_hopper();
    let split = dev().with_policy(
        KernelPolicy::default()
            .with_profile(h100)
            .force("decode", "decode_split"),
    );
    let single = forced(&[("decode", "decode_single")]);
    let mut t = Tally::new("decode_split");
    for (b, h, len, d) in [
        (1, 1, 1, 1),
        (1, 2, 5, 64),
        (1, 12, 1024, 64),
        (2, 3, 300, 16),
        (1, 1, 1100, 256),
        (3, 1, 33, 7),
    ] {
        let (splits, chunk) = decode::splits(
            &split,
            &decode::DecodeCall {
                bh: b * h,
                len,
                head_dim: d,
            },
        );
        let e = h * d;
        // The fused projection's rows: q | k | v side by side.
        let c = 3 * e;
        let src = r.vec(b * len * c, -1.0, 1.0);
        let q = r.vec(b * c, -1.0, 1.0);
        t.case(
            &format!("b{b} h{h} len{len} d{d} ({splits} splits of {chunk})"),
            || {
                let mut cache = KvCache::new(&split, b, h, len + 3, d)?;
                decode::kv_append(
                    &split,
                    &mut cache,
                    &arr(&split, &src, &[b, len, c]),
                    e,
                    2 * e,
                )?;
                let qa = arr(&split, &q, &[b, c]);
                let got = decode::decode_attention(&split, &qa, 0, &cache, None)?.to_f32(&split)?;
                let one =
                    decode::decode_attention(&single, &qa, 0, &cache, None)?.to_f32(&single)?;
                // The CPU reference: q [B, H*D], caches [B, H, len, D].
                let qv: Vec<f64> = (0..b)
                    .flat_map(|bi| q[bi * c..bi * c + e].to_vec())
                    .map(|v| v as f64)
                    .collect();
                let mut k = Vec::new();
                let mut v = Vec::new();
                for bi in 0..b {
                    for hi in 0..h {
                        for j in 0..len {
                            let row = &src[(bi * len + j) * c..];
                            k.extend(row[e + hi * d..e + (hi + 1) * d].iter().map(|&x| x as f64));
                            v.extend(
                                row[2 * e + hi * d..2 * e + (hi + 1) * d]
                                    .iter()
                                    .map(|&x| x as f64),
                            );
                        }
                    }
                }
                let want = decode::cpu::decode_attention(
                    &qv,
                    &k,
                    &v,
                    b,
                    h,
                    len,
                    d,
                    1.0 / (d as f64).sqrt(),
                );
                assert_close("decode_split", &got, &want, 1e-5, 1e-4);
                assert_close("decode_single", &one, &want, 1e-5, 1e-4);
                Ok(())
            },
        );
    }
    assert_eq!(t.finish(), 6, "decode_split refused a shape");
}
