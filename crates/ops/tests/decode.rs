//! The generation kernels, forced through the kernel policy, against f64 CPU references: the
//! GEMV for at most 8 rows (both B layouts, batches, bias, split K, a fused activation) and the
//! split-KV decode attention (every split count, against the single-pass kernel and the CPU).
//! Each runner counts the cases it checked and fails when a forced variant checked none.

use kiln_ops::decode::{self, KvCache};
use kiln_ops::matmul::{self, Activation};
use kiln_ops::testing::{assert_close, to_f64, Rng};
use kiln_ops::{Array, Device, DeviceError, KernelPolicy, OpError};

fn dev() -> Device {
    Device::shared().expect("a GPU or software Vulkan adapter (run scripts/setup.sh)")
}

fn forced(family: &str, variant: &str) -> Device {
    dev().with_policy(KernelPolicy::default().force(family, variant))
}

fn arr(d: &Device, v: &[f32], s: &[usize]) -> Array {
    Array::from_f32(d, v, s).unwrap()
}

/// Counts the cases a forced variant checked and refused; fails when it checked none.
struct Tally {
    what: String,
    checked: usize,
    refused: Vec<String>,
}

impl Tally {
    fn new(what: &str) -> Tally {
        Tally {
            what: what.into(),
            checked: 0,
            refused: Vec::new(),
        }
    }

    fn case(&mut self, what: &str, f: impl FnOnce() -> Result<(), OpError>) {
        match f() {
            Ok(()) => self.checked += 1,
            Err(OpError::Device(DeviceError::VariantUnsupported { reason, .. })) => {
                self.refused.push(format!("{what}: {reason}"))
            }
            Err(e) => panic!("{} {what}: {e}", self.what),
        }
    }

    fn finish(self, at_least: usize) {
        println!(
            "{}: {} cases checked, {} refused {:?}",
            self.what,
            self.checked,
            self.refused.len(),
            self.refused
        );
        assert!(
            self.checked >= at_least,
            "{}: checked {} cases, expected at least {at_least}",
            self.what,
            self.checked
        );
    }
}

/// gemv against the CPU: M from 1 to 8; B stored [N, K] (a Linear weight: gemv_kdot) and
/// [K, N] (gemv_ncols, K split across workgroups for long K); batches; a bias; an activation.
#[test]
fn gemv_matches_the_cpu_for_up_to_eight_rows() {
    let d = forced("matmul", "gemv");
    let mut t = Tally::new("gemv");
    let mut r = Rng::new(21);
    for (batch, m, n, k) in [
        (1, 1, 4, 4),
        (1, 1, 768, 768),
        (1, 2, 2304, 768),
        (1, 3, 36, 100),
        (1, 5, 64, 3072),
        (2, 8, 40, 64),
        (1, 8, 1028, 260),
        (1, 1, 50264, 64),
    ] {
        for tb in [false, true] {
            let sa = if batch > 1 {
                vec![batch, m, k]
            } else {
                vec![m, k]
            };
            let sb = if tb { [n, k] } else { [k, n] };
            let a = r.vec(batch * m * k, -1.0, 1.0);
            let b = r.vec(n * k, -1.0, 1.0);
            let bias = r.vec(n, -1.0, 1.0);
            t.case(&format!("{sa:?} x {sb:?} tb={tb}"), || {
                let aa = arr(&d, &a, &sa);
                let ba = arr(&d, &b, &sb);
                let bb = arr(&d, &bias, &[n]);
                let c = matmul::matmul(&d, &aa, &ba, false, tb, Some(&bb))?;
                let mut want = matmul::cpu::matmul(
                    &to_f64(&a),
                    &to_f64(&b),
                    batch,
                    m,
                    n,
                    k,
                    false,
                    tb,
                    true,
                    false,
                );
                for (i, w) in want.iter_mut().enumerate() {
                    *w += bias[i % n] as f64;
                }
                assert_close("gemv", &c.to_f32(&d)?, &want, 1e-4, 1e-4);
                // The activation runs as a pass of its own after the product.
                let y =
                    matmul::matmul_bias_act(&d, &aa, &ba, false, tb, Some(&bb), Activation::Gelu)?;
                let gelu: Vec<f64> = want
                    .iter()
                    .map(|&v| 0.5 * v * (1.0 + erf(v / std::f64::consts::SQRT_2)))
                    .collect();
                assert_close("gemv + gelu", &y.out.to_f32(&d)?, &gelu, 1e-4, 1e-4);
                Ok(())
            });
        }
    }
    t.finish(16);
    // More than eight rows, or B with neither layout in vec4s: refused, naming why.
    let e = matmul::matmul(
        &d,
        &arr(&d, &[0.0; 9 * 4], &[9, 4]),
        &arr(&d, &[0.0; 16], &[4, 4]),
        false,
        false,
        None,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("at most 8 rows"), "{e}");
}

/// The automatic choice on a GPU's profile takes gemv for generation's rows and the tiles for
/// a training batch.
#[test]
fn gemv_is_chosen_for_few_rows_on_gpus() {
    let h100 = dev().with_policy(
        KernelPolicy::default().with_profile(kiln_device::AdapterProfile::nvidia_hopper()),
    );
    for (m, want) in [
        (1, "gemv"),
        (8, "gemv"),
        (9, "gemm_16x64"),
        (512, "gemm_128x128"),
    ] {
        let call =
            kiln_ops::gemm::GemmCall::matmul(1, m, 768, 768, false, true, false, false, false);
        assert_eq!(
            kiln_ops::gemm::plan(&h100, &call).unwrap().variant,
            want,
            "m = {m}"
        );
    }
}

/// erf to 1e-7 (Abramowitz and Stegun 7.1.26 is only good to 1.5e-7; a series is plenty here).
fn erf(x: f64) -> f64 {
    // Taylor series for |x| < 3, the complement's continued fraction beyond.
    if x.abs() >= 3.0 {
        return x.signum() * (1.0 - (-x * x).exp() / (x.abs() * std::f64::consts::PI.sqrt()));
    }
    let (mut sum, mut term, mut n) = (x, x, 0.0);
    while term.abs() > 1e-17 {
        n += 1.0;
        term *= -x * x / n;
        sum += term / (2.0 * n + 1.0);
    }
    2.0 / std::f64::consts::PI.sqrt() * sum
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
    let single = forced("decode", "decode_single");
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
    t.finish(6);
}
