//! Fused attention, every kernel variant forced through the KernelPolicy, against the CPU
//! reference (forward) and central finite differences of it (backward), plus kiln's gradcheck
//! through the op on the small cases: odd shapes (primes, 1, several query blocks and key tiles),
//! head dimensions 1 to 128, causal and key-padding masks, additive masks shared by every head or
//! one per batch item and head, -inf entries, fully masked rows.
//!
//! Each variant runs on this adapter's own profile (the software adapters' register budget: one
//! invocation per row of the forward up to 64 wide) and on a profile that plans as a GPU does
//! (the 128-float register budget: several invocations per row, so the exchanges run) within this
//! adapter's limits. The runner counts the cases each forced variant checked and the shapes it
//! refused (printed); a variant this adapter can run that checks no case fails the test. The
//! cooperative-matrix variants run where the adapter has them (Mesa 26's lavapipe:
//! `scripts/lavapipe-coop.sh`; `KILN_REQUIRE_COOP=1` makes their absence an error).

use crate::common::{arr, coop_profile, dev, Tally};
use kiln_device::AdapterProfile;
use kiln_ops::attention::{self, AttentionMasked, AttentionSpec, AttnCall, FlashKernel};
use kiln_ops::numeric::{assert_close, dot, finite_diff, to_f64};
use kiln_ops::random::Rng;
use kiln_ops::{Array, DType, Device, DeviceError, KernelPolicy, OpError};

/// This adapter's profile planned as a GPU (the GPU register budget), within its own limits.
fn gpu_like(d: &Device) -> AdapterProfile {
    let mut p = d.adapter_profile().clone();
    p.is_software = false;
    p.name = format!("{} planned as a GPU", p.name);
    p
}

/// One forced variant on one profile, and the indices of [`CASES`] it runs.
struct Forced {
    label: String,
    dev: Device,
    f16: bool,
    cases: &'static [usize],
}

/// The f32 variants: the subgroup and workgroup-memory exchanges on this adapter's profile and
/// planned as a GPU; the workgroup-memory one on WebGPU's default limits too (16 KiB). Each
/// pipeline costs lavapipe seconds to compile, so the cases are shared out: every case runs on
/// two of them at least, and each runs head dimensions split over several invocations.
fn f32_variants(d: &Device) -> Vec<Forced> {
    let mut v = Vec::new();
    let own: [&[usize]; 2] = [&[0, 2, 5, 7, 9], &[3, 4, 6, 9, 1]];
    let gpu_cases: [&[usize]; 2] = [&[1, 3, 6, 8, 0], &[2, 5, 7, 8, 6, 4]];
    for (n, variant) in ["flash", "flash_sg"].into_iter().enumerate() {
        let policy = KernelPolicy::default().force("attention", variant);
        v.push(Forced {
            label: format!("{variant} ({})", d.adapter_profile().name),
            dev: d.with_policy(policy.clone()),
            f16: false,
            cases: own[n],
        });
        let gpu = gpu_like(d);
        v.push(Forced {
            label: format!("{variant} ({})", gpu.name),
            dev: d.with_policy(policy.with_profile(gpu)),
            f16: false,
            cases: gpu_cases[n],
        });
    }
    v.push(Forced {
        label: "flash (WebGPU defaults)".into(),
        dev: d.with_policy(
            KernelPolicy::default()
                .force("attention", "flash")
                .with_profile(AdapterProfile::webgpu_default()),
        ),
        f16: false,
        cases: &[2, 5, 6],
    });
    v
}

/// The cooperative variants this adapter runs, and (checked here) a typed refusal by the others.
fn coop_variants(d: &Device) -> Vec<Forced> {
    let (sizes, prof) = coop_profile(d);
    let mut v = Vec::new();
    for (variant, size) in [("flash_coop16", 16), ("flash_coop8", 8)] {
        let policy = KernelPolicy::default().force("attention", variant);
        if sizes.contains(&size) {
            for (name, p) in [
                ("", prof.clone()),
                (" planned as a GPU", {
                    let mut g = prof.clone();
                    g.is_software = false;
                    g
                }),
            ] {
                v.push(Forced {
                    label: format!("{variant}{name}"),
                    dev: d.with_policy(policy.clone().with_profile(p)),
                    f16: true,
                    cases: &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
                });
            }
        } else {
            let fd = d.with_policy(policy);
            let x = Array::from_f16(d, &[half::f16::ONE; 4], &[1, 1, 2, 2]).unwrap();
            let e = attention::attention(&fd, &x, &x, &x, None, &AttentionSpec::default())
                .err()
                .expect("an error");
            assert!(
                matches!(&e, OpError::Device(DeviceError::VariantUnsupported { .. }))
                    && e.to_string().contains(variant),
                "{e}"
            );
        }
    }
    v
}

/// (b, h, tq, tk, dim, causal, padded, mask: 0 none, 1 [Tq, Tk], 2 [B, H, Tq, Tk])
type Case = (usize, usize, usize, usize, usize, bool, bool, u32);

const CASES: &[Case] = &[
    (1, 1, 1, 1, 1, false, false, 0),
    (2, 3, 5, 5, 4, true, false, 0),
    (2, 2, 3, 7, 8, false, true, 1),
    (1, 2, 6, 6, 16, true, true, 2),
    (1, 1, 9, 4, 1, false, false, 1),
    (1, 1, 71, 67, 5, true, false, 1),
    (2, 1, 5, 7, 128, true, true, 0),
    (1, 1, 3, 70, 33, false, true, 2),
    (1, 2, 37, 41, 64, true, false, 0),
    (1, 1, 20, 20, 96, false, false, 2),
];

/// One case on one forced variant: forward against the CPU, gradients against finite
/// differences of the CPU reference.
fn check_case(f: &Forced, r: &mut Rng, c: Case) -> Result<(), OpError> {
    let (b, h, tq, tk, dim, causal, padded, mask_kind) = c;
    let d = &f.dev;
    let round = |v: Vec<f32>| -> Vec<f32> {
        if f.f16 {
            v.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect()
        } else {
            v
        }
    };
    let q = round(r.vec(b * h * tq * dim, -1.0, 1.0));
    let k = round(r.vec(b * h * tk * dim, -1.0, 1.0));
    let v = round(r.vec(b * h * tk * dim, -1.0, 1.0));
    // Pad the last key of each batch item (never all of them).
    let pad: Vec<i32> = (0..b * tk)
        .map(|i| i32::from(padded && i % tk == tk - 1 && tk > 1))
        .collect();
    // Random offsets, -inf on every third key of odd rows.
    let heads = if mask_kind == 2 { b * h } else { 1 };
    let mask: Vec<f32> = (0..heads * tq * tk)
        .map(|e| {
            let (i, j) = ((e / tk) % tq, e % tk);
            if i % 2 == 1 && j % 3 == 0 && j > 0 {
                f32::NEG_INFINITY
            } else {
                r.range(-1.0, 1.0) as f32
            }
        })
        .collect();
    let mask_shape: Vec<usize> = if mask_kind == 2 {
        vec![b, h, tq, tk]
    } else {
        vec![tq, tk]
    };
    let put = |x: &[f32], s: &[usize]| -> Result<Array, OpError> {
        let a = arr(d, x, s);
        if f.f16 {
            kiln_ops::half::cast(d, &a, DType::F16)
        } else {
            Ok(a)
        }
    };
    let (qa, ka, va) = (
        put(&q, &[b, h, tq, dim])?,
        put(&k, &[b, h, tk, dim])?,
        put(&v, &[b, h, tk, dim])?,
    );
    let pa = Array::from_i32(d, &pad, &[b, tk])?;
    let ma = arr(d, &mask, &mask_shape);
    let spec = AttentionSpec {
        causal,
        scale: None,
    };
    let pad_opt = padded.then_some(&pa);
    let mask_opt = (mask_kind > 0).then_some(&ma);
    let (o, saved) = attention::attention_masked(d, &qa, &ka, &va, pad_opt, mask_opt, &spec)?;
    let mask64 = to_f64(&mask);
    let (q64, k64, v64) = (to_f64(&q), to_f64(&k), to_f64(&v));
    let cpu = |q: &[f64], k: &[f64], v: &[f64]| {
        attention::cpu::attention_masked(
            q,
            k,
            v,
            h,
            tq,
            tk,
            dim,
            causal,
            padded.then_some(&pad[..]),
            (mask_kind > 0).then_some(&mask64[..]),
            1.0 / (dim as f64).sqrt(),
        )
    };
    let what = format!(
        "{} b{b} h{h} tq{tq} tk{tk} d{dim} causal={causal} pad={padded} mask={mask_kind}",
        f.label
    );
    // f16: P rounded to f16 (11 significant bits) on cooperative matrices.
    let tol = if f.f16 { 2e-3 } else { 1e-5 };
    assert_close(
        &what,
        &o.to_f32(d)?,
        &cpu(&q64, &k64, &v64),
        tol,
        tol.max(1e-4),
    );
    if tq * tk * dim > 20000 {
        return Ok(()); // finite differences on the smaller cases
    }
    let dy = r.vec(o.numel(), -1.0, 1.0);
    let (dq, dk, dv) = attention::attention_backward(
        d,
        &qa,
        &ka,
        &va,
        pad_opt,
        &spec,
        &saved,
        &arr(d, &dy, &o.shape),
    )?;
    let fq = |x: &[f64]| dot(&cpu(x, &k64, &v64), &dy);
    let fk = |x: &[f64]| dot(&cpu(&q64, x, &v64), &dy);
    let fv = |x: &[f64]| dot(&cpu(&q64, &k64, x), &dy);
    // f16: dO, P and dS rounded to f16 in the products.
    let (atol, rtol) = if f.f16 { (4e-3, 2e-2) } else { (1e-4, 1e-3) };
    for (name, g, want) in [
        ("dq", dq, finite_diff(fq, &q64, 1e-4)),
        ("dk", dk, finite_diff(fk, &k64, 1e-4)),
        ("dv", dv, finite_diff(fv, &v64, 1e-4)),
    ] {
        assert_close(&format!("{what} {name}"), &g.to_f32(d)?, &want, atol, rtol);
    }
    Ok(())
}

#[test]
fn every_f32_variant_matches_the_cpu_and_finite_differences() {
    let d = dev();
    let mut r = Rng::new(41);
    let mut covered = [0; CASES.len()];
    for f in f32_variants(&d) {
        let mut tally = Tally::new(&f.label);
        for &n in f.cases {
            let c = CASES[n];
            covered[n] += 1;
            tally.case(&format!("{c:?}"), || check_case(&f, &mut r, c));
        }
        tally.finish();
    }
    assert!(
        covered.iter().all(|&n| n >= 2),
        "cases per variant: {covered:?}"
    );
}

#[test]
fn every_cooperative_variant_matches_the_cpu_and_finite_differences() {
    let d = dev();
    let variants = coop_variants(&d);
    if variants.is_empty() {
        eprintln!(
            "{}: no f16 cooperative matrices; each variant's refusal checked",
            d.adapter().name
        );
        return;
    }
    let mut r = Rng::new(51);
    for f in variants {
        let mut tally = Tally::new(&f.label);
        for &n in f.cases {
            let c = CASES[n];
            tally.case(&format!("{c:?}"), || check_case(&f, &mut r, c));
        }
        tally.finish();
    }
}

/// kiln's gradcheck through the op (graph level), with the CPU reference's differences, for
/// each f32 variant planned as a GPU and each cooperative one.
#[test]
fn gradcheck_through_the_attention_op() {
    use kiln_graph::{GradCheck, Tensor};
    let d = dev();
    let mut forced = f32_variants(&d);
    forced.retain(|f| f.label.contains("planned as a GPU"));
    forced.extend(coop_variants(&d));
    let (b, h, tq, tk, dim) = (1, 2, 5, 6, 24);
    let mut r = Rng::new(7);
    for f in forced {
        let dev = &f.dev;
        let f16 = f.f16;
        // f16 calls: inputs already f16 values, so the reference needs no rounding (which
        // would make its finite differences steps).
        let round = |v: Vec<f32>| -> Vec<f32> {
            if f16 {
                v.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect()
            } else {
                v
            }
        };
        let q = round(r.vec(b * h * tq * dim, -1.0, 1.0));
        let k = round(r.vec(b * h * tk * dim, -1.0, 1.0));
        let v = round(r.vec(b * h * tk * dim, -1.0, 1.0));
        let mask: Vec<f32> = r.vec(tq * tk, -0.5, 0.5);
        let pad: Vec<i32> = vec![0, 0, 1, 0, 0, 0];
        let t = |x: &[f32], s: &[usize]| {
            Tensor::from_f32(dev, x, s)
                .unwrap()
                .requires_grad_(true)
                .unwrap()
        };
        let inputs = [
            t(&q, &[b, h, tq, dim]),
            t(&k, &[b, h, tk, dim]),
            t(&v, &[b, h, tk, dim]),
        ];
        let pad_t = Tensor::from_i32(dev, &pad, &[b, tk]).unwrap();
        let mask_t = Tensor::from_f32(dev, &mask, &[tq, tk]).unwrap();
        let op = AttentionMasked {
            spec: AttentionSpec {
                causal: true,
                scale: None,
            },
            key_padding: true,
        };
        let run = |x: &[Tensor]| {
            let cast = |t: &Tensor| {
                if f16 {
                    t.cast(DType::F16)
                } else {
                    Ok(t.clone())
                }
            };
            let (q, k, v) = (cast(&x[0])?, cast(&x[1])?, cast(&x[2])?);
            Tensor::apply(op, &[&q, &k, &v, &pad_t, &mask_t])
        };
        let mask64 = to_f64(&mask);
        let reference = |x: &[Vec<f64>]| {
            attention::cpu::attention_masked(
                &x[0],
                &x[1],
                &x[2],
                h,
                tq,
                tk,
                dim,
                true,
                Some(&pad),
                Some(&mask64),
                1.0 / (dim as f64).sqrt(),
            )
        };
        // f16: dO, P and dS rounded to f16 in the products (the forward's values within 2e-3).
        let (atol, rtol) = if f16 { (1e-2, 3e-2) } else { (1e-3, 1e-2) };
        let mut tally = Tally::new(&f.label);
        tally.case("gradcheck", || {
            GradCheck::new()
                .with_atol(atol)
                .with_rtol(rtol)
                .with_reference(reference)
                .check(run, &inputs)
                .map_err(|e| match e {
                    kiln_graph::GradCheckError::Op(e) => e,
                    e => panic!("{}: {e}", f.label),
                })
        });
        tally.finish();
    }
}

/// The register budget shapes the tiles: planned for an H100, every f32 kernel holds at most
/// 128 live floats per invocation (several invocations per row of 64), the subgroup exchange is
/// chosen, and the cooperative forward and backward run f16 calls; on the software adapters the
/// forward keeps a row of up to 64 in one invocation, as before.
#[test]
fn the_register_budget_chooses_the_row_split() {
    let d = dev();
    let hopper =
        d.with_policy(KernelPolicy::default().with_profile(AdapterProfile::nvidia_hopper()));
    let budget = attention::register_budget(hopper.adapter_profile());
    assert_eq!(budget, 128);
    for dim in [32, 64, 128] {
        let call = AttnCall::new(8, 12, 1024, 1024, dim);
        let p = attention::plan(&hopper, &call).unwrap();
        assert_eq!(p.variant, "flash_sg", "d {dim}");
        let tiles = attention::flash_tiles(&hopper, &call).unwrap();
        for (t, k) in tiles.iter().zip([
            FlashKernel::Forward,
            FlashKernel::KeyValue,
            FlashKernel::Query,
        ]) {
            assert!(t.live_floats <= budget, "{k:?} d {dim}: {t:?}");
            assert_eq!(t.live_floats, k.live_floats(t.dv));
            assert_eq!(t.r * t.dv * 4, dim.next_multiple_of(4 * t.r));
        }
        let p16 = attention::plan(&hopper, &call.with_f16(true)).unwrap();
        let want = if dim <= 64 {
            "flash_coop16"
        } else {
            "flash_sg"
        };
        assert_eq!(p16.variant, want, "f16 d {dim}");
    }
    // d = 64: the forward splits a row over two invocations, dK/dV over four, dQ over two.
    let t = attention::flash_tiles(&hopper, &AttnCall::new(8, 12, 1024, 1024, 64)).unwrap();
    assert_eq!([t[0].r, t[1].r, t[2].r], [2, 4, 2]);
    if d.adapter_profile().is_software {
        let t = attention::flash_tiles(&d, &AttnCall::new(8, 12, 256, 256, 64)).unwrap();
        assert_eq!([t[0].r, t[1].r, t[2].r], [1, 2, 2]);
        assert_eq!(
            attention::plan(&d, &AttnCall::new(8, 12, 256, 256, 64))
                .unwrap()
                .variant,
            "flash"
        );
    }
}

/// Causal: changing future keys and values leaves earlier outputs unchanged; a fully masked row
/// gives zeros and finite (zero) gradients; bad shapes are errors naming what was expected.
#[test]
fn causality_fully_masked_rows_and_bad_shapes() {
    let d = dev();
    let mut r = Rng::new(3);
    for f in f32_variants(&d).into_iter().step_by(3).take(2) {
        let d = &f.dev;
        let (tq, dim) = (6, 4);
        let q = r.vec(tq * dim, -1.0, 1.0);
        let mut k = r.vec(tq * dim, -1.0, 1.0);
        let mut v = r.vec(tq * dim, -1.0, 1.0);
        let spec = AttentionSpec {
            causal: true,
            scale: None,
        };
        let s = [1, 1, tq, dim];
        let run = |k: &[f32], v: &[f32]| {
            attention::attention(
                d,
                &arr(d, &q, &s),
                &arr(d, k, &s),
                &arr(d, v, &s),
                None,
                &spec,
            )
            .unwrap()
            .0
            .to_f32(d)
            .unwrap()
        };
        let before = run(&k, &v);
        for t in 4 * dim..tq * dim {
            k[t] += 3.0;
            v[t] -= 2.0;
        }
        let after = run(&k, &v);
        assert_eq!(before[..4 * dim], after[..4 * dim], "{}", f.label);
        assert_ne!(before[4 * dim..], after[4 * dim..]);
        let s2 = [1, 1, 2, dim];
        let (qa, ka, va) = (
            arr(d, &q[..2 * dim], &s2),
            arr(d, &k[..2 * dim], &s2),
            arr(d, &v[..2 * dim], &s2),
        );
        let pa = Array::from_i32(d, &[1, 1], &[1, 2]).unwrap();
        let none = AttentionSpec::default();
        let (o, saved) = attention::attention(d, &qa, &ka, &va, Some(&pa), &none).unwrap();
        assert_eq!(o.to_f32(d).unwrap(), vec![0.0; 2 * dim]);
        let ones = arr(d, &[1.0; 8], &s2);
        let (dq, dk, dv) =
            attention::attention_backward(d, &qa, &ka, &va, Some(&pa), &none, &saved, &ones)
                .unwrap();
        for g in [dq, dk, dv] {
            assert!(g.to_f32(d).unwrap().iter().all(|x| *x == 0.0));
        }
        let e = attention::attention(d, &qa, &arr(d, &[0.0; 6], &[1, 1, 2, 3]), &va, None, &spec)
            .err()
            .expect("an error");
        assert!(matches!(e, OpError::Shape { .. }), "{e}");
        let e = attention::attention_masked(
            d,
            &qa,
            &ka,
            &va,
            None,
            Some(&arr(d, &[0.0; 6], &[2, 3])),
            &spec,
        )
        .err()
        .expect("an error");
        assert!(e.to_string().contains("attn_mask [2, 2]"), "{e}");
    }
}

/// The fused kernels agree with the unfused path (matmul, softmax, matmul) where both apply.
#[test]
fn fused_matches_unfused() {
    let d = dev();
    let mut r = Rng::new(9);
    for f in f32_variants(&d).into_iter().step_by(3).take(2) {
        let d = &f.dev;
        for (b, h, tq, tk, dim, causal) in [(2, 3, 5, 5, 4, true), (1, 2, 9, 13, 64, false)] {
            let q = r.vec(b * h * tq * dim, -1.0, 1.0);
            let k = r.vec(b * h * tk * dim, -1.0, 1.0);
            let v = r.vec(b * h * tk * dim, -1.0, 1.0);
            let pad: Vec<i32> = (0..b * tk).map(|i| i32::from(i % tk == 1)).collect();
            let (qa, ka, va) = (
                arr(d, &q, &[b, h, tq, dim]),
                arr(d, &k, &[b, h, tk, dim]),
                arr(d, &v, &[b, h, tk, dim]),
            );
            let pa = Array::from_i32(d, &pad, &[b, tk]).unwrap();
            let spec = AttentionSpec {
                causal,
                scale: None,
            };
            let o = attention::attention(d, &qa, &ka, &va, Some(&pa), &spec)
                .unwrap()
                .0;
            let un = attention::attention_unfused(d, &qa, &ka, &va, Some(&pad), &spec).unwrap();
            assert_close(
                &format!("{} vs unfused", f.label),
                &o.to_f32(d).unwrap(),
                &to_f64(&un.to_f32(d).unwrap()),
                1e-5,
                1e-4,
            );
        }
    }
}
