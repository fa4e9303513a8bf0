//! Kernel choice under the limits of real adapters: every GEMM, convolution and attention shape
//! of kiln's benchmarks and examples (LeNet-5, the MNIST MLP, the character Transformer in both
//! presets, the character LSTM, the RNN example; batch 1 included), planned for an H100, an RTX
//! 4090, an RX 7900 XTX, an Apple M2 through Metal, an Arc A770, a DX12 adapter with 32 KiB of
//! group-shared memory, WebGPU's defaults, wgpu's downlevel defaults and this process's own
//! adapter. Each chosen kernel is specialised by naga and its workgroup memory, workgroup size,
//! storage buffers and subgroup needs are checked against the profile; the test fails on any
//! kernel over a limit, and on a shape no variant runs (except where a profile cannot run the
//! family at all, which must be the typed error). Nothing is launched: planning is pure naga.

use kiln_device::{AdapterProfile, DeviceError};
use kiln_ops::attention::{self, AttnCall};
use kiln_ops::conv::{self, Conv2dSpec, ConvPass};
use kiln_ops::kernels::{KernelSpec, Planned};
use kiln_ops::matmul::{self, GemmCall};
use kiln_ops::{Device, KernelPolicy, OpError};
use std::collections::BTreeMap;

fn dev() -> Device {
    Device::shared().expect("a GPU or software Vulkan adapter (run scripts/setup.sh)")
}

/// A Linear layer's three GEMMs at `rows` rows: y = x W^T, dx = dy W, dW = dy^T x (as
/// matmul_backward forms them), in f32 and, where `f16`, in f16 too.
fn linear(rows: usize, inp: usize, out: usize, f16: bool) -> Vec<GemmCall> {
    let mut v = Vec::new();
    for h in [false].into_iter().chain(f16.then_some(true)) {
        v.push(GemmCall::matmul(
            1, rows, out, inp, false, true, false, false, h,
        ));
        v.push(GemmCall::matmul(
            1, rows, inp, out, false, false, false, false, h,
        ));
        v.push(GemmCall::matmul(
            1, out, inp, rows, true, false, false, false, h,
        ));
    }
    v
}

/// Attention's batched products in the unfused reference path are not planned; the
/// Transformer's projections, feed-forward layers and head are.
fn transformer(
    batch: usize,
    context: usize,
    width: usize,
    vocab: usize,
    f16: bool,
) -> Vec<GemmCall> {
    let rows = batch * context;
    let mut v = linear(rows, width, width, f16); // q, k, v, out projections
    v.extend(linear(rows, width, 4 * width, f16));
    v.extend(linear(rows, 4 * width, width, f16));
    v.extend(linear(rows, width, vocab, f16));
    v
}

/// An LSTM layer: the input projection of every step at once, the recurrent product per step,
/// and their gradients (batch 1: generation).
fn lstm(batch: usize, steps: usize, inp: usize, hidden: usize) -> Vec<GemmCall> {
    let mut v = linear(batch * steps, inp, 4 * hidden, false);
    v.extend(linear(batch, hidden, 4 * hidden, false));
    v
}

fn gemm_shapes() -> Vec<(String, GemmCall)> {
    let mut all: Vec<(String, Vec<GemmCall>)> = Vec::new();
    // benches/matmul.rs: square f32 and f16.
    for n in [256, 512, 1024, 2048, 4096] {
        all.push((
            format!("bench matmul {n}"),
            vec![
                GemmCall::matmul(1, n, n, n, false, false, false, false, false),
                GemmCall::matmul(1, n, n, n, false, false, false, false, true),
            ],
        ));
    }
    for batch in [1, 64, 128, 256] {
        // LeNet-5's classifier, the MNIST MLP.
        let mut lenet = linear(batch, 400, 120, false);
        lenet.extend(linear(batch, 120, 84, false));
        lenet.extend(linear(batch, 84, 10, false));
        all.push((format!("lenet fc batch {batch}"), lenet));
        let mut mlp = linear(batch, 784, 256, false);
        mlp.extend(linear(batch, 256, 10, false));
        all.push((format!("mlp batch {batch}"), mlp));
    }
    // The character Transformer: small preset (2 x 64, context 64, batch 16), GPU preset (6 x
    // 384, context 256, batch 64, f16 under autocast), and batch 1 generation.
    all.push((
        "transformer small".into(),
        transformer(16, 64, 64, 65, false),
    ));
    all.push((
        "transformer gpu".into(),
        transformer(64, 256, 384, 65, true),
    ));
    all.push((
        "transformer gpu batch 1".into(),
        transformer(1, 1, 384, 65, true),
    ));
    // The character LSTM (2 x 128, embedding 64, context 32, batch 16), train_step's (2 x 256,
    // 100 steps, batch 64), generation at batch 1, the RNN example (2 x 32, 11 steps).
    let mut l = lstm(16, 32, 64, 128);
    l.extend(lstm(16, 32, 128, 128));
    l.extend(linear(16 * 32, 128, 65, false));
    all.push(("char lstm".into(), l));
    all.push(("lstm 2x256 batch 64".into(), lstm(64, 100, 256, 256)));
    all.push(("lstm batch 1".into(), lstm(1, 1, 256, 256)));
    all.push(("lstm 1024 batch 1".into(), lstm(1, 1, 1024, 1024)));
    all.push(("rnn example".into(), lstm(32, 11, 32, 32)));
    all.into_iter()
        .flat_map(|(name, calls)| calls.into_iter().map(move |c| (name.clone(), c)))
        .collect()
}

fn conv_shapes() -> Vec<(String, [usize; 4], [usize; 4], Conv2dSpec)> {
    let pad = |p| Conv2dSpec {
        padding: (p, p),
        ..Default::default()
    };
    let mut v = Vec::new();
    for batch in [1, 64, 256] {
        v.push((
            format!("lenet conv1 b{batch}"),
            [batch, 1, 28, 28],
            [6, 1, 5, 5],
            pad(2),
        ));
        v.push((
            format!("lenet conv2 b{batch}"),
            [batch, 6, 14, 14],
            [16, 6, 5, 5],
            pad(0),
        ));
    }
    for batch in [1, 2, 32] {
        v.push((
            format!("conv3x3_128 b{batch}"),
            [batch, 128, 56, 56],
            [128, 128, 3, 3],
            pad(1),
        ));
    }
    v
}

fn attention_shapes() -> Vec<(String, AttnCall)> {
    vec![
        (
            "bench attention gpu".into(),
            AttnCall::new(8, 12, 1024, 1024, 64),
        ),
        (
            "bench attention soft".into(),
            AttnCall::new(1, 2, 256, 256, 64),
        ),
        ("transformer small".into(), AttnCall::new(16, 4, 64, 64, 16)),
        ("transformer gpu".into(), AttnCall::new(64, 6, 256, 256, 64)),
        (
            "transformer gpu batch 1".into(),
            AttnCall::new(1, 6, 1, 256, 64),
        ),
        ("head_dim 128".into(), AttnCall::new(2, 4, 512, 512, 128)),
        ("head_dim 1".into(), AttnCall::new(1, 1, 7, 7, 1)),
        // Under autocast: f16 operands.
        (
            "bench attention gpu f16".into(),
            AttnCall::new(8, 12, 1024, 1024, 64).with_f16(true),
        ),
        (
            "transformer gpu f16".into(),
            AttnCall::new(64, 6, 256, 256, 64).with_f16(true),
        ),
        (
            "head_dim 128 f16".into(),
            AttnCall::new(2, 4, 512, 512, 128).with_f16(true),
        ),
    ]
}

/// Every kernel of a plan within the profile's limits, and its largest binding too.
fn check_plan(d: &Device, what: &str, plan: &Planned) {
    let prof = d.adapter_profile();
    for spec in &plan.kernels {
        let f = d
            .footprint(spec.shader, &spec.entry, &spec.constants)
            .unwrap_or_else(|e| panic!("{what}: {}: {e}", spec.label()));
        if let Err(e) = f.check(&spec.label(), prof) {
            panic!(
                "{what} on {}: {}/{} exceeds a limit: {e}",
                prof.name, plan.family, plan.variant
            );
        }
    }
    assert!(
        prof.fits_binding(plan.largest_binding),
        "{what} on {}: a binding of {} bytes",
        prof.name,
        plan.largest_binding
    );
}

/// A plan, or None where the profile cannot run the family at all: then the error must be the
/// typed one naming the family (never a kernel over a limit).
fn planned(prof: &AdapterProfile, what: &str, r: Result<Planned, OpError>) -> Option<Planned> {
    match r {
        Ok(p) => Some(p),
        // wgpu's downlevel limits allow 4 storage buffers per stage: kernels with more have no
        // variant there, which must be said as such.
        Err(OpError::Device(DeviceError::NoVariant { reasons, .. }))
            if prof.limits.max_storage_buffers_per_shader_stage < 8
                && reasons.contains("max_storage_buffers_per_shader_stage") =>
        {
            None
        }
        Err(e) => panic!("{what} on {}: {e}", prof.name),
    }
}

#[test]
fn every_benchmark_and_example_shape_fits_every_adapter_profile() {
    let mut profiles = AdapterProfile::reference_profiles();
    profiles.push(dev().adapter_profile().clone());
    let mut chosen: BTreeMap<(String, &str), BTreeMap<&str, usize>> = BTreeMap::new();
    for prof in &profiles {
        let d = dev().with_policy(KernelPolicy::default().with_profile(prof.clone()));
        let mut tally = |family: &'static str, p: &Planned| {
            *chosen
                .entry((prof.name.clone(), family))
                .or_default()
                .entry(p.variant)
                .or_default() += 1;
        };
        for (what, call) in gemm_shapes() {
            let what = format!("{what} {call:?}");
            if let Some(p) = planned(prof, &what, matmul::plan(&d, &call)) {
                check_plan(&d, &what, &p);
                tally(p.family, &p);
            }
        }
        for (what, xs, ws, spec) in conv_shapes() {
            for pass in [ConvPass::Forward, ConvPass::InputGrad, ConvPass::WeightGrad] {
                let what = format!("{what} {pass:?}");
                if let Some(p) = planned(prof, &what, conv::plan(&d, pass, xs, ws, &spec)) {
                    check_plan(&d, &what, &p);
                    tally(p.family, &p);
                }
            }
        }
        // Bias, LayerNorm and abs-max gradients: the Transformer's [B * T, width] columns,
        // LeNet's and the MLP's biases, a whole tensor's abs-max.
        for (outer, len, inner) in [
            (1, 64 * 256, 384),
            (1, 64 * 256, 1536),
            (1, 16 * 64, 64),
            (1, 64, 120),
            (1, 128, 256),
            (1, 1 << 20, 1),
            (1, 1, 384),
        ] {
            let call = kiln_ops::reduce::ColsumCall {
                outer,
                len,
                inner,
                mean: false,
            };
            let what = format!("reduction {outer}x{len}x{inner}");
            if let Some(p) = planned(prof, &what, kiln_ops::reduce::plan(&d, &call)) {
                check_plan(&d, &what, &p);
                tally(p.family, &p);
            }
        }
        // The optimizers' update of a group: LeNet's ten parameters, a Transformer's.
        for params in [10, 76] {
            let call = kiln_ops::optim::OptimCall {
                params,
                quads: true,
            };
            let what = format!("optimizer group of {params}");
            if let Some(p) = planned(prof, &what, kiln_ops::optim::plan(&d, &call)) {
                check_plan(&d, &what, &p);
                tally(p.family, &p);
            }
        }
        for (what, call) in attention_shapes() {
            if let Some(p) = planned(prof, &what, attention::plan(&d, &call)) {
                check_plan(&d, &what, &p);
                tally(p.family, &p);
            }
        }
    }
    for ((prof, family), variants) in &chosen {
        eprintln!("{prof:>32} {family:>12}: {variants:?}");
    }
    // The GPUs get GPU kernels: tiles for f32, cooperative matrices for f16 where they have them.
    let hopper = &chosen[&("NVIDIA H100 (Vulkan)".to_string(), "matmul")];
    assert!(hopper.contains_key("gemm_128x128") && !hopper.contains_key("gemm_uniform"));
    let hopper16 = &chosen[&("NVIDIA H100 (Vulkan)".to_string(), "matmul_f16")];
    assert!(hopper16.contains_key("coop16"), "{hopper16:?}");
    let apple16 = &chosen[&("Apple M2 (Metal)".to_string(), "matmul_f16")];
    assert!(apple16.contains_key("coop8"), "{apple16:?}");
    let hopper_att = &chosen[&("NVIDIA H100 (Vulkan)".to_string(), "attention")];
    assert!(hopper_att.contains_key("flash_coop16") && hopper_att.contains_key("flash_sg"));
}

/// The small-M tiles of the former GEMM choice (4 x 4 per invocation, as many invocations
/// along N as 256 / TM allowed) asked for 64.25 KiB of workgroup memory for M <= 4 with N > 512
/// (TM = 1, TN = 256) and 32.5 KiB for M 5-8 with N > 256 (TM = 2, TN = 128): the checks refuse
/// both on the adapters they exceed, naming the limit.
#[test]
fn the_former_small_m_tiles_are_refused_where_they_exceed_the_limit() {
    let d = dev();
    let tile = |tm: f64, tn: f64| {
        KernelSpec::new(
            "gemm",
            "gemm",
            &[("MODE", 0.0), ("TM", tm), ("TN", tn), ("BK", 16.0)],
        )
    };
    let m1 = tile(1.0, 256.0);
    let f = d.footprint(m1.shader, &m1.entry, &m1.constants).unwrap();
    assert_eq!(f.workgroup_bytes, 65792); // 64.25 KiB
    let e = f
        .check(&m1.label(), &AdapterProfile::nvidia_hopper())
        .unwrap_err();
    assert!(
        e.to_string().contains("max_compute_workgroup_storage_size")
            && e.to_string().contains("65792"),
        "{e}"
    );
    let m8 = tile(2.0, 128.0);
    let f = d.footprint(m8.shader, &m8.entry, &m8.constants).unwrap();
    assert_eq!(f.workgroup_bytes, 33280); // 32.5 KiB
    assert!(f
        .check(&m8.label(), &AdapterProfile::nvidia_hopper())
        .is_ok());
    for p in [AdapterProfile::apple_m(), AdapterProfile::dx12_32k()] {
        assert!(matches!(
            f.check(&m8.label(), &p),
            Err(DeviceError::OverLimit {
                needed: 33280,
                allowed: 32768,
                ..
            })
        ));
    }
    // Today's choice for those shapes (LSTM generation at batch 1, LeNet's input gradient at
    // batch 1) fits every profile.
    for prof in AdapterProfile::reference_profiles() {
        let pd = d.with_policy(KernelPolicy::default().with_profile(prof.clone()));
        for (m, n, k) in [(1, 1024, 256), (4, 4096, 1024), (8, 512, 300)] {
            let call = GemmCall::matmul(1, m, n, k, false, true, false, false, false);
            let p = matmul::plan(&pd, &call).unwrap();
            check_plan(&pd, &format!("{m}x{n}x{k}"), &p);
        }
    }
}

/// Over-limit requests at launch are typed errors: a kernel whose workgroup memory exceeds the
/// adapter's is refused before a pipeline is built.
#[test]
fn an_over_limit_kernel_is_a_typed_error_not_an_empty_kernel() {
    let d = dev();
    let limit = d.limits().max_compute_workgroup_storage_size;
    // TM = TN = 64 asks for 16 * (64 + 64) * 16 bytes = 256 KiB, over any adapter's limit.
    let e = d
        .kernel("gemm", "gemm", &[("TM", 16.0), ("TN", 64.0), ("BK", 64.0)])
        .err()
        .expect("refused");
    assert!(
        matches!(e, DeviceError::OverLimit { allowed, .. } if allowed == limit as u64),
        "{e}"
    );
}
