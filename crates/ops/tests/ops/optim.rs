//! Optimizer updates (single and grouped, every rule), gradient clipping, dropout, and the
//! variants WebGPU's default limits choose.

use crate::common::{arr, dev, expect_err, forced};
use crate::matmul::matmul_cases;
use kiln_ops::conv::{self, Conv2dSpec};
use kiln_ops::numeric::{assert_close, to_f64};
use kiln_ops::optim::{self, Rule};
use kiln_ops::random::Rng;
use kiln_ops::{DType, Device, KernelPolicy};

/// Every update rule, with and without their options.
fn all_rules() -> [Rule; 8] {
    [
        Rule::Sgd {
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        },
        Rule::Sgd {
            momentum: 0.9,
            dampening: 0.1,
            nesterov: false,
            weight_decay: 1e-2,
        },
        Rule::Sgd {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: true,
            weight_decay: 0.0,
        },
        Rule::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
        },
        Rule::Adam {
            beta1: 0.8,
            beta2: 0.99,
            eps: 1e-6,
            weight_decay: 1e-2,
            decoupled: false,
        },
        Rule::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
            decoupled: true,
        },
        Rule::RmsProp {
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
        },
        Rule::RmsProp {
            alpha: 0.9,
            eps: 1e-6,
            weight_decay: 1e-3,
            momentum: 0.5,
            centered: true,
        },
    ]
}

/// A group's update in few dispatches (eight parameters per `multi` dispatch, two per `multi2`: 11 parameters of
/// odd lengths, 1 to 1031, some frozen) and one per parameter, each forced, against the CPU over
/// three steps; the flat state of each parameter starts on its 256-byte boundary.
#[test]
fn grouped_optimizer_updates_match_the_cpu() {
    for variant in ["optim_multi", "optim_multi2", "optim_single"] {
        grouped_optimizer_cases(&forced(&[("optim", variant)]), variant);
    }
}

fn grouped_optimizer_cases(d: &Device, variant: &str) {
    let mut r = Rng::new(81);
    let lens = [1, 7, 1031, 64, 5, 333, 2, 17, 250, 3, 9];
    {
        for rule in all_rules() {
            let (offsets, total) = optim::state_layout(&lens);
            assert!(offsets.iter().all(|o| o % optim::STATE_ALIGN == 0));
            let state: Vec<_> = (0..rule.state_count())
                .map(|_| d.upload(&vec![0.0f32; total]).unwrap())
                .collect();
            let p0: Vec<Vec<f32>> = lens.iter().map(|&n| r.vec(n, -1.0, 1.0)).collect();
            let params: Vec<_> = p0.iter().map(|p| d.upload(p).unwrap()).collect();
            let mut p64: Vec<Vec<f64>> = p0.iter().map(|p| to_f64(p)).collect();
            let mut s64: Vec<Vec<Vec<f64>>> = lens.iter().map(|&n| vec![vec![0.0; n]; 3]).collect();
            let hp = d.upload(&rule.hyper(0.01, 1)).unwrap();
            // Parameter 4 is frozen: never in a slot, never changed.
            let live: Vec<usize> = (0..lens.len()).filter(|&i| i != 4).collect();
            for step in 1..=3u64 {
                let lr = 0.01 / step as f64;
                d.write(&hp, &rule.hyper(lr as f32, step)).unwrap();
                let grads: Vec<Vec<f32>> = lens.iter().map(|&n| r.vec(n, -1.0, 1.0)).collect();
                let gbufs: Vec<_> = grads.iter().map(|g| d.upload(g).unwrap()).collect();
                let slots: Vec<optim::Slot> = live
                    .iter()
                    .map(|&i| optim::Slot {
                        param: &params[i],
                        grad: &gbufs[i],
                        state_offset: offsets[i],
                    })
                    .collect();
                optim::step_group(d, &rule, &slots, &state, &hp, None).unwrap();
                for &i in &live {
                    optim::cpu_step(
                        &rule,
                        lr,
                        step,
                        &mut p64[i],
                        &to_f64(&grads[i]),
                        &mut s64[i],
                    );
                }
            }
            for (i, p) in params.iter().enumerate() {
                assert_close(
                    &format!("{variant} {rule:?} parameter {i}"),
                    &d.download::<f32>(p).unwrap(),
                    &p64[i],
                    1e-5,
                    1e-4,
                );
            }
        }
    }
}

/// WebGPU's default limits as the profile on this adapter: each family's automatic choice fits
/// them (GPU tiles for matmuls, the implicit GEMM for convolutions, FlashAttention-2, the
/// two-slot grouped update), and those kernels compute what the CPU does.
#[test]
fn webgpu_default_limits_choose_fitting_variants_that_match_the_cpu() {
    use kiln_device::AdapterProfile;
    use kiln_ops::gemm::{self, GemmCall};
    let web = AdapterProfile::webgpu_default();
    let d = dev().with_policy(KernelPolicy::default().with_profile(web.clone()));
    let call = optim::OptimCall {
        params: 10,
        quads: true,
    };
    let plans = [
        optim::plan(&d, &call).unwrap(),
        gemm::plan(
            &d,
            &GemmCall::matmul(1, 64, 120, 400, false, true, false, false, false),
        )
        .unwrap(),
        conv::plan(
            &d,
            conv::ConvPass::Forward,
            [8, 6, 14, 14],
            [16, 6, 5, 5],
            &Conv2dSpec::default(),
        )
        .unwrap(),
    ];
    let variants: Vec<&str> = plans.iter().map(|p| p.variant).collect();
    assert_eq!(variants[0], "optim_multi2");
    assert!(
        variants[1].starts_with("gemm_") && variants[1].contains('x'),
        "{variants:?}"
    );
    assert_eq!(variants[2], "conv_gemm");
    for p in &plans {
        for k in &p.kernels {
            let f = d.footprint(k.shader, &k.entry, &k.constants).unwrap();
            f.check(&k.label(), &web).unwrap();
        }
    }
    // The convolution's implicit GEMM runs on the same tiles (conv2d_on_the_implicit_gemm).
    assert_eq!(matmul_cases(&d, "WebGPU defaults").1, 0);
    grouped_optimizer_cases(&d, "WebGPU defaults");
}

#[test]
fn optimizers_match_pytorch_formulas_over_ten_steps() {
    let d = dev();
    let mut r = Rng::new(8);
    let rules = all_rules();
    // Each rule twice: on a view of 333 of 336 floats, whose last quad overhangs it (the quad
    // kernels, which must leave the 3 floats past it alone), and on a window of 333 floats,
    // which ends inside a quad (the one-element kernels).
    for (rule, window) in rules.iter().flat_map(|r| [(*r, false), (*r, true)]) {
        let n = 333;
        let p0 = r.vec(n, -1.0, 1.0);
        let mut stored = p0.clone();
        stored.extend([7.0, 8.0, 9.0]);
        let whole = d.upload(&stored).unwrap();
        let param = if window {
            whole.window(0, n).unwrap()
        } else {
            whole.view(n, DType::F32).unwrap()
        };
        assert_eq!(param.quad_aligned(), !window);
        let state: Vec<_> = (0..rule.state_count())
            .map(|_| d.upload(&vec![0.0f32; n]).unwrap())
            .collect();
        let hp = d.upload(&rule.hyper(0.01, 1)).unwrap();
        let mut p64 = to_f64(&p0);
        let mut s64 = vec![vec![0.0; n]; 3];
        for step in 1..=10u64 {
            let lr = 0.01 * (1.0 - 0.05 * step as f64); // a changing learning rate
            let g = r.vec(n, -1.0, 1.0);
            d.write(&hp, &rule.hyper(lr as f32, step)).unwrap();
            optim::step(&d, &rule, &param, &d.upload(&g).unwrap(), &state, &hp, None).unwrap();
            optim::cpu_step(&rule, lr, step, &mut p64, &to_f64(&g), &mut s64);
        }
        assert_close(
            &format!("{rule:?}, window {window}"),
            &d.download::<f32>(&param).unwrap(),
            &p64,
            1e-5,
            1e-4,
        );
        assert_eq!(d.download::<f32>(&whole).unwrap()[n..], [7.0, 8.0, 9.0]);
    }
}

#[test]
fn clip_grad_norm_scales_to_the_global_bound() {
    let d = dev();
    let mut r = Rng::new(9);
    let (a, b) = (r.vec(100, -1.0, 1.0), r.vec(37, -2.0, 2.0));
    let norm: f64 = a
        .iter()
        .chain(&b)
        .map(|&v| (v as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    for max_norm in [0.5f32, 1e6] {
        let (ga, gb) = (d.upload(&a).unwrap(), d.upload(&b).unwrap());
        let sq = optim::clip_grad_norm(&d, &[&ga, &gb], max_norm).unwrap();
        assert_close(
            "squared norm",
            &sq.to_f32(&d).unwrap(),
            &[norm * norm],
            1e-3,
            1e-5,
        );
        let scale = (max_norm as f64 / (norm + 1e-6)).min(1.0);
        let want: Vec<f64> = a.iter().map(|&v| v as f64 * scale).collect();
        assert_close(
            "clipped a",
            &d.download::<f32>(&ga).unwrap(),
            &want,
            1e-6,
            1e-5,
        );
        let want: Vec<f64> = b.iter().map(|&v| v as f64 * scale).collect();
        assert_close(
            "clipped b",
            &d.download::<f32>(&gb).unwrap(),
            &want,
            1e-6,
            1e-5,
        );
    }
}

#[test]
fn dropout_mask_matches_philox_and_replays() {
    use kiln_ops::dropout::{self, DropoutRng};
    let d = dev();
    let n = 10_007;
    let x: Vec<f32> = (0..n).map(|i| 1.0 + (i % 13) as f32).collect();
    let xa = arr(&d, &x, &[n]);
    let mut rng = DropoutRng::new(&d, 0x1234_5678_9abc).unwrap();
    let p = 0.3;
    let y = dropout::dropout(&d, &xa, p, rng.buffer())
        .unwrap()
        .to_f32(&d)
        .unwrap();
    let want: Vec<f64> = (0..n)
        .map(|i| {
            if dropout::cpu::keep(0x1234_5678_9abc, 0, i as u32, p) {
                x[i] as f64 / (1.0 - p as f64)
            } else {
                0.0
            }
        })
        .collect();
    assert_close("dropout vs Philox reference", &y, &want, 1e-6, 1e-6);
    let dropped = y.iter().filter(|v| **v == 0.0).count() as f64 / n as f64;
    assert!((dropped - 0.3).abs() < 0.02, "dropped fraction {dropped}");
    // Same state: same mask (the backward pass relies on this); next offset: another mask.
    let again = dropout::dropout(&d, &xa, p, rng.buffer())
        .unwrap()
        .to_f32(&d)
        .unwrap();
    assert_eq!(again, y);
    rng.advance(&d).unwrap();
    let next = dropout::dropout(&d, &xa, p, rng.buffer())
        .unwrap()
        .to_f32(&d)
        .unwrap();
    assert_ne!(next, y);
    expect_err(
        dropout::dropout(&d, &xa, 1.0, rng.buffer()),
        "drop probability 1 outside [0, 1)",
    );
    expect_err(
        dropout::dropout(&d, &xa, -0.1, rng.buffer()),
        "drop probability -0.1 outside [0, 1)",
    );
}
