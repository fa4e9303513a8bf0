//! GEMM: every variant forced (software kernels, GPU tiles, gemv), fused epilogues, f16
//! operands on every available path, f16 casts; forward against the CPU, gradients against
//! finite differences.

use crate::common::{arr, coop_profile, dev, expect_err, forced, round_f16, Tally};
use kiln_ops::elementwise;
use kiln_ops::matmul::{self, Activation};
use kiln_ops::numeric::{assert_close, dot, finite_diff, to_f64};
use kiln_ops::random::Rng;
use kiln_ops::{Array, Device, DeviceError, KernelPolicy, OpError};

/// The software adapters' GEMM kernels, each forced: gemm_uniform (2-D only), gemm_sg
/// (vec4-aligned matmuls only), the direct kernel with and without the uniform copy of A, and the
/// 4 x 4 tiles; shapes a forced variant refuses must be refused with the typed error.
#[test]
fn matmul_software_variants() {
    for v in [
        "gemm_uniform",
        "gemm_sg",
        "gemm_direct_ua",
        "gemm_4x4",
        "gemm_direct",
    ] {
        let (checked, _) = matmul_cases(&forced(&[("matmul", v)]), v);
        assert!(checked >= 16, "{v} checked {checked} products");
    }
}

/// The GPU tiles, each forced: interior tiles with 16-byte loads where the layout allows, edge
/// tiles with bounds tests, split K.
#[test]
fn matmul_gpu_tiles() {
    for v in [
        "gemm_128x128",
        "gemm_128x64",
        "gemm_64x64",
        "gemm_16x64",
        "gemm_64x16",
    ] {
        let (checked, refused) = matmul_cases(&forced(&[("matmul", v)]), v);
        assert_eq!((checked, refused), (56, 0), "{v} refused a shape");
    }
}

/// Interior tiles of the 128 x 128 and 16 x 64 kernels with every operand layout, batches and a
/// split K: the 16-byte-load kernel (gemm_tile4) and its edge tiles.
#[test]
fn matmul_gpu_tiles_interior() {
    let mut r = Rng::new(12);
    for v in ["gemm_128x128", "gemm_16x64"] {
        let d = forced(&[("matmul", v)]);
        for (batch, m, n, k) in [
            (1, 136, 132, 16),
            (2, 33, 72, 24),
            (1, 16, 64, 8),
            (1, 8, 8, 512),
        ] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let sa = if ta { [batch, k, m] } else { [batch, m, k] };
                let sb = if tb { [batch, n, k] } else { [batch, k, n] };
                let a = r.vec(batch * m * k, -1.0, 1.0);
                let b = r.vec(batch * n * k, -1.0, 1.0);
                let c =
                    matmul::matmul(&d, &arr(&d, &a, &sa), &arr(&d, &b, &sb), ta, tb, None).unwrap();
                let want = matmul::cpu::matmul(
                    &to_f64(&a),
                    &to_f64(&b),
                    batch,
                    m,
                    n,
                    k,
                    ta,
                    tb,
                    true,
                    true,
                );
                let what = format!("{v} {sa:?}x{sb:?} ta={ta} tb={tb}");
                assert_close(&what, &c.to_f32(&d).unwrap(), &want, 1e-4, 1e-4);
            }
        }
    }
}

/// Each fused activation after the bias, in the tiles' epilogue (GPU tiles, with and without a K
/// split) and as a pass of its own (software kernels), with its backward against finite
/// differences.
#[test]
fn matmul_bias_act_fuses_the_epilogue() {
    let mut r = Rng::new(13);
    for v in ["gemm_64x64", "gemm_16x64", "gemm_direct"] {
        let d = forced(&[("matmul", v)]);
        for act in [
            Activation::None,
            Activation::Relu,
            Activation::Gelu,
            Activation::Tanh,
            Activation::Sigmoid,
        ] {
            for (m, n, k) in [(5, 7, 9), (3, 6, 700)] {
                let a = r.vec(m * k, -1.0, 1.0);
                let b = r.vec(k * n, -1.0, 1.0);
                let bias = r.vec(n, -1.0, 1.0);
                let (aa, ba, bb) = (
                    arr(&d, &a, &[m, k]),
                    arr(&d, &b, &[k, n]),
                    arr(&d, &bias, &[n]),
                );
                let saved =
                    matmul::matmul_bias_act(&d, &aa, &ba, false, false, Some(&bb), act).unwrap();
                let f = |x: f64| match act.unary() {
                    Some(op) => elementwise::cpu::unary(x, op),
                    None => x,
                };
                let cpu = |a: &[f64], b: &[f64]| {
                    let c = matmul::cpu::matmul(a, b, 1, m, n, k, false, false, false, false);
                    c.iter()
                        .enumerate()
                        .map(|(i, v)| f(v + bias[i % n] as f64))
                        .collect::<Vec<_>>()
                };
                let (a64, b64) = (to_f64(&a), to_f64(&b));
                let what = format!("{v} {act:?} {m}x{n}x{k}");
                assert_close(
                    &what,
                    &saved.out.to_f32(&d).unwrap(),
                    &cpu(&a64, &b64),
                    1e-4,
                    1e-4,
                );
                let dy = r.vec(m * n, -1.0, 1.0);
                let (da, db, _) = matmul::matmul_bias_act_backward(
                    &d,
                    &aa,
                    &ba,
                    false,
                    false,
                    &saved,
                    &arr(&d, &dy, &[m, n]),
                    [true, true, false],
                )
                .unwrap();
                if k < 100 {
                    let fa = |x: &[f64]| dot(&cpu(x, &b64), &dy);
                    let fb = |x: &[f64]| dot(&cpu(&a64, x), &dy);
                    let (ga, gb) = (finite_diff(fa, &a64, 1e-4), finite_diff(fb, &b64, 1e-4));
                    assert_close(
                        &format!("{what} dA"),
                        &da.unwrap().to_f32(&d).unwrap(),
                        &ga,
                        1e-3,
                        1e-3,
                    );
                    assert_close(
                        &format!("{what} dB"),
                        &db.unwrap().to_f32(&d).unwrap(),
                        &gb,
                        1e-3,
                        1e-3,
                    );
                }
            }
        }
    }
}

/// A forced variant that cannot run a shape is a typed error naming the family, the variant and
/// why; an unknown variant name lists the family's variants.
#[test]
fn forced_variants_refuse_what_they_cannot_run() {
    let d = forced(&[("matmul", "gemm_sg")]);
    let a = arr(&d, &[1.0; 15], &[3, 5]);
    let b = arr(&d, &[1.0; 35], &[5, 7]);
    let e = matmul::matmul(&d, &a, &b, false, false, None).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, OpError::Device(DeviceError::VariantUnsupported { .. }))
            && msg.contains("matmul")
            && msg.contains("gemm_sg")
            && msg.contains("vec4"),
        "{msg}"
    );
    let d = forced(&[("matmul", "gemm_9x9")]);
    let e = matmul::matmul(&d, &a, &b, false, false, None).unwrap_err();
    assert!(e.to_string().contains("gemm_128x128"), "{e}");
}

/// Every case on `d` (whose policy may force a variant), counted under `label` by pass (forward,
/// gradients); returns the forward cases checked and the cases of both passes refused.
pub fn matmul_cases(d: &Device, label: &str) -> (usize, usize) {
    let d = d.clone();
    let mut t = Tally::new(label);
    let mut r = Rng::new(4);
    // (batch_a, batch_b, m, n, k): primes, 1s, non-multiples of every tile, a shared 2-D operand.
    let cases = [
        (0, 0, 1, 1, 1),
        (0, 0, 13, 17, 19),
        (0, 0, 67, 5, 131),
        (3, 3, 7, 11, 5),
        (2, 0, 9, 4, 6),
        (0, 2, 5, 3, 8),
        (0, 0, 6, 25, 3000),
        // vec4-aligned (gemm_sg on software adapters): edges inside its 32-row block, batches,
        // a shared operand, split K.
        (0, 0, 12, 20, 16),
        (2, 2, 4, 8, 12),
        (0, 3, 8, 4, 4),
        (0, 0, 20, 12, 2400),
        // gemm_sg's workgroup narrows to N: 16 invocations for 36 columns; two workgroups of 64
        // for 264.
        (0, 0, 36, 36, 20),
        (0, 0, 8, 264, 8),
        // Operands larger than a 64 KiB uniform window: gemm_uniform splits M, N and K.
        (0, 0, 150, 300, 130),
    ];
    for (ba, bb, m, n, k) in cases {
        // Fresh (zeroed) buffers: a tile a kernel forgets to write cannot pass on values a
        // recycled buffer kept from an earlier product.
        d.trim_pool();
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let batch = ba.max(bb).max(1);
            let sa: Vec<usize> = (ba > 0)
                .then_some(ba)
                .into_iter()
                .chain(if ta { [k, m] } else { [m, k] })
                .collect();
            let sb: Vec<usize> = (bb > 0)
                .then_some(bb)
                .into_iter()
                .chain(if tb { [n, k] } else { [k, n] })
                .collect();
            let a = r.vec(sa.iter().product(), -1.0, 1.0);
            let b = r.vec(sb.iter().product(), -1.0, 1.0);
            let bias = r.vec(n, -1.0, 1.0);
            let (aa, ba_) = (arr(&d, &a, &sa), arr(&d, &b, &sb));
            let what = format!("matmul {sa:?}x{sb:?} ta={ta} tb={tb}");
            t.case_of("forward", &what, || {
                let c = matmul::matmul(&d, &aa, &ba_, ta, tb, Some(&arr(&d, &bias, &[n])))?;
                let mut want = matmul::cpu::matmul(
                    &to_f64(&a),
                    &to_f64(&b),
                    batch,
                    m,
                    n,
                    k,
                    ta,
                    tb,
                    ba > 0,
                    bb > 0,
                );
                want.iter_mut()
                    .enumerate()
                    .for_each(|(i, v)| *v += bias[i % n] as f64);
                assert_close(&what, &c.to_f32(&d)?, &want, 1e-4, 1e-4);
                Ok(())
            });
            if k > 100 {
                continue; // finite differences on the small cases only
            }
            let dc = r.vec(batch * m * n, -1.0, 1.0);
            let dca = arr(&d, &dc, &[batch, m, n][usize::from(ba == 0 && bb == 0)..]);
            // The gradients' products have other shapes, which a forced variant may refuse: a
            // case of their own, so a refused gradient still leaves the forward checked.
            t.case_of("gradients", &what, || {
                let (da, db, dbias) =
                    matmul::matmul_backward(&d, &aa, &ba_, ta, tb, &dca, [true; 3])?;
                let (da, db) = (da.unwrap(), db.unwrap());
                // Asked for one operand's gradient, it computes that one, the same, and not
                // the other.
                let (no_a, only_b, _) =
                    matmul::matmul_backward(&d, &aa, &ba_, ta, tb, &dca, [false, true, false])?;
                let (only_a, no_b, _) =
                    matmul::matmul_backward(&d, &aa, &ba_, ta, tb, &dca, [true, false, false])?;
                assert!(no_a.is_none() && no_b.is_none(), "{sa:?}x{sb:?}");
                assert_eq!(only_a.unwrap().to_f32(&d)?, da.to_f32(&d)?);
                assert_eq!(only_b.unwrap().to_f32(&d)?, db.to_f32(&d)?);
                let (a64, b64) = (to_f64(&a), to_f64(&b));
                let f_a = |x: &[f64]| {
                    dot(
                        &matmul::cpu::matmul(x, &b64, batch, m, n, k, ta, tb, ba > 0, bb > 0),
                        &dc,
                    )
                };
                let f_b = |x: &[f64]| {
                    dot(
                        &matmul::cpu::matmul(&a64, x, batch, m, n, k, ta, tb, ba > 0, bb > 0),
                        &dc,
                    )
                };
                let want_a = finite_diff(f_a, &a64, 1e-3);
                assert_close(&format!("{what} dA"), &da.to_f32(&d)?, &want_a, 1e-3, 1e-3);
                let want_b = finite_diff(f_b, &b64, 1e-3);
                assert_close(&format!("{what} dB"), &db.to_f32(&d)?, &want_b, 1e-3, 1e-3);
                let want_bias: Vec<f64> = (0..n)
                    .map(|j| dc.iter().skip(j).step_by(n).map(|&v| v as f64).sum())
                    .collect();
                let dbias = dbias.unwrap().to_f32(&d)?;
                assert_close(&format!("{what} dbias"), &dbias, &want_bias, 1e-4, 1e-4);
                Ok(())
            });
        }
    }
    let e = matmul::matmul(
        &d,
        &arr(&d, &[0.0; 6], &[2, 3]),
        &arr(&d, &[0.0; 8], &[4, 2]),
        false,
        false,
        None,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("[2, 3]") && e.to_string().contains("[4, 2]"),
        "{e}"
    );
    let counts = (t.checked("forward"), t.refused());
    t.finish();
    counts
}

/// What `half::cast_f16_scaled` keeps of `v`: f16 after scaling max |v| into (2^13, 2^14].
fn round_f16_scaled(v: &[f32]) -> Vec<f32> {
    let amax = v.iter().fold(0.0f32, |a, x| a.max(x.abs()));
    let s = 2f32.powi(14 - amax.log2().ceil() as i32);
    v.iter()
        .map(|x| half::f16::from_f32(x * s).to_f32() / s)
        .collect()
}

#[test]
fn f16_casts_round_to_nearest_even() {
    let d = dev();
    let mut r = Rng::new(9);
    // Odd length (the last f16 shares a word with padding), ties and subnormals included.
    let mut x = r.vec(1001, -70.0, 70.0);
    x.extend([
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        3.0e-6,
        -1.0e-7,
        0.0,
        65504.0,
    ]);
    let xa = arr(&d, &x, &[x.len()]);
    let h = kiln_ops::half::cast(&d, &xa, kiln_ops::DType::F16).unwrap();
    let want: Vec<half::f16> = x.iter().map(|v| half::f16::from_f32(*v)).collect();
    let got = h.to_f16(&d).unwrap();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "element {i}: {} -> {g} (want {w})",
            x[i]
        );
    }
    let back = kiln_ops::half::cast(&d, &h, kiln_ops::DType::F32).unwrap();
    assert_eq!(back.to_f32(&d).unwrap(), round_f16(&x));
    let i = Array::from_i32(&d, &[1, 2], &[2]).unwrap();
    expect_err(
        kiln_ops::half::cast(&d, &i, kiln_ops::DType::F16),
        "asked for i32 to f16",
    );
    // Scaled: tiny values (subnormal or zero in plain f16) keep 11 significant bits.
    for scale in [1e-9f32, 1.0, 3e4] {
        let v: Vec<f32> = r.vec(777, -1.0, 1.0).iter().map(|x| x * scale).collect();
        let (h, inv) = kiln_ops::half::cast_f16_scaled(&d, &arr(&d, &v, &[7, 111])).unwrap();
        let inv = d.download::<f32>(&inv).unwrap()[0];
        let got: Vec<f32> = h
            .to_f16(&d)
            .unwrap()
            .iter()
            .map(|x| x.to_f32() * inv)
            .collect();
        assert_eq!(got, round_f16_scaled(&v), "scale {scale}");
    }
}

#[test]
fn matmul_f16_on_every_available_path() {
    let d = dev();
    // Mesa's lavapipe reports 8 x 8 fragments only, but lowers cooperative matrices of any size
    // in software: there the 16 x 16 entry points run too, through a profile that lists them.
    let (sizes, prof) = coop_profile(&d);
    // Every fragment size the adapter offers, each forced; a size it lacks is refused.
    for (v, size) in [
        ("coop16", 16),
        ("coop16_small", 16),
        ("coop8", 8),
        ("coop8_small", 8),
    ] {
        let policy = KernelPolicy::default().force("matmul_f16", v);
        let fd = dev().with_policy(policy.clone().with_profile(prof.clone()));
        if sizes.contains(&size) {
            matmul_f16_cases(&fd, true);
        } else {
            let fd = dev().with_policy(policy);
            let a = Array::from_f16(&d, &[half::f16::ONE; 4], &[2, 2]).unwrap();
            let e = matmul::matmul(&fd, &a, &a, false, false, None).unwrap_err();
            assert!(e.to_string().contains(v), "{e}");
        }
    }
    // Widening to f32 always.
    matmul_f16_cases(&forced(&[("matmul_f16", "widen")]), false);
}

fn matmul_f16_cases(d: &Device, coop: bool) {
    let d = d.clone();
    let mut r = Rng::new(8);
    // (batch_a, batch_b, m, n, k): edges inside a fragment and a workgroup tile, several tiles,
    // batches, a shared operand, and a K long enough to be split across workgroups.
    let cases = [
        (0, 0, 1, 1, 1),
        (0, 0, 13, 17, 19),
        (0, 0, 70, 37, 45),
        (2, 2, 9, 20, 33),
        (0, 3, 16, 16, 16),
        (0, 0, 8, 12, 1500),
        // Interior tiles (16-byte loads) of the 64 and 128 tiles beside edge tiles.
        (0, 0, 136, 130, 64),
        (2, 2, 72, 66, 32),
    ];
    for (ba, bb, m, n, k) in cases {
        // Fresh (zeroed) buffers: a tile a kernel forgets to write cannot pass on values a
        // recycled buffer kept from an earlier product.
        d.trim_pool();
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let batch = ba.max(bb).max(1);
            let shape = |b: usize, r: usize, c: usize, t: bool| -> Vec<usize> {
                let mut s: Vec<usize> = (b > 0).then_some(b).into_iter().collect();
                s.extend(if t { [c, r] } else { [r, c] });
                s
            };
            let (sa, sb) = (shape(ba, m, k, ta), shape(bb, k, n, tb));
            let a = round_f16(&r.vec(sa.iter().product(), -1.0, 1.0));
            let b = round_f16(&r.vec(sb.iter().product(), -1.0, 1.0));
            let bias = r.vec(n, -1.0, 1.0);
            // Upload as f32 and cast on the device, as a mixed-precision model does.
            let to16 = |v: &[f32], s: &[usize]| {
                kiln_ops::half::cast(&d, &arr(&d, v, s), kiln_ops::DType::F16).unwrap()
            };
            let (aa, bh) = (to16(&a, &sa), to16(&b, &sb));
            let c = matmul::matmul(&d, &aa, &bh, ta, tb, Some(&arr(&d, &bias, &[n]))).unwrap();
            assert_eq!(c.dtype(), kiln_ops::DType::F32);
            let (a64, b64) = (to_f64(&a), to_f64(&b));
            let cpu = |x: &[f64], y: &[f64]| {
                matmul::cpu::matmul(x, y, batch, m, n, k, ta, tb, ba > 0, bb > 0)
            };
            let mut want = cpu(&a64, &b64);
            want.iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v += bias[i % n] as f64);
            // Products of f16 values are exact in f32; only the f32 sums round.
            let what = format!("f16 matmul coop={coop} {sa:?}x{sb:?} ta={ta} tb={tb}");
            assert_close(&what, &c.to_f32(&d).unwrap(), &want, 1e-4, 1e-4);
            if k > 100 || m * n > 2000 {
                continue; // finite differences on the small cases only
            }
            // Backward, once with gradients far below f16's normal range (1e-7), which only the
            // power-of-two scaling of dC keeps accurate. On cooperative matrices dC is rounded to
            // f16's 11 significant bits; widened, it stays f32.
            let dscale = if (m, n, k) == (13, 17, 19) { 1e-7 } else { 1.0 };
            let dc: Vec<f32> = r
                .vec(c.numel(), -1.0, 1.0)
                .iter()
                .map(|v| v * dscale)
                .collect();
            let dc16 = if coop {
                round_f16_scaled(&dc)
            } else {
                dc.clone()
            };
            let (da, db, dbias) =
                matmul::matmul_backward(&d, &aa, &bh, ta, tb, &arr(&d, &dc, &c.shape), [true; 3])
                    .unwrap();
            let (da, db) = (da.unwrap(), db.unwrap());
            let f_a = |x: &[f64]| dot(&cpu(x, &b64), &dc16);
            let f_b = |x: &[f64]| dot(&cpu(&a64, x), &dc16);
            let tol = 1e-4 * (k as f64).sqrt().max(1.0) * dscale as f64;
            assert_close(
                &format!("{what} dA"),
                &da.to_f32(&d).unwrap(),
                &finite_diff(f_a, &a64, 0.5),
                tol,
                1e-3,
            );
            assert_close(
                &format!("{what} dB"),
                &db.to_f32(&d).unwrap(),
                &finite_diff(f_b, &b64, 0.5),
                tol,
                1e-3,
            );
            let want_bias: Vec<f64> = (0..n)
                .map(|j| dc.iter().skip(j).step_by(n).map(|&v| v as f64).sum())
                .collect();
            assert_close(
                &format!("{what} dbias"),
                &dbias.unwrap().to_f32(&d).unwrap(),
                &want_bias,
                1e-4 * dscale as f64,
                1e-4,
            );
        }
    }
    // Mixed operand types are refused.
    let a16 = kiln_ops::half::cast(&d, &arr(&d, &[1.0; 4], &[2, 2]), kiln_ops::DType::F16).unwrap();
    let e = matmul::matmul(&d, &a16, &arr(&d, &[1.0; 4], &[2, 2]), false, false, None).unwrap_err();
    assert!(matches!(e, OpError::DType { .. }), "{e}");
}

/// gemv against the CPU: M from 1 to 8; B stored [N, K] (a Linear weight: gemv_kdot) and
/// [K, N] (gemv_ncols, K split across workgroups for long K); batches; a bias; an activation.
#[test]
fn gemv_matches_the_cpu_for_up_to_eight_rows() {
    let d = forced(&[("matmul", "gemv")]);
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
    assert_eq!(t.finish(), 16, "gemv refused a shape");
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
