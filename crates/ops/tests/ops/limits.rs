//! Kernel choice under the limits of real adapters: every GEMM, convolution and attention shape
//! of kiln's benchmarks and examples (LeNet-5, the MNIST MLP, the character Transformer in both
//! presets, the character LSTM, the RNN example; batch 1 included), planned for an H100, an RTX
//! 4090, an RX 7900 XTX, an Apple M2 through Metal, an Arc A770, a DX12 adapter with 32 KiB of
//! group-shared memory, WebGPU's defaults, wgpu's downlevel defaults and this process's own
//! adapter. Each chosen kernel is specialised by naga and its workgroup memory, workgroup size,
//! storage buffers and subgroup needs are checked against the profile; the test fails on any
//! kernel over a limit, and on a shape no variant runs (except where a profile cannot run the
//! family at all, which must be the typed error). Nothing is launched: planning is pure naga.

use crate::common::dev;
use crate::shapes::plan_all;
use kiln_device::{AdapterProfile, DeviceError};
use kiln_ops::gemm::{self, GemmCall};
use kiln_ops::kernels::{KernelSpec, Planned};
use kiln_ops::{Device, KernelPolicy, OpError};
use std::collections::BTreeMap;

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

/// Every kernel plan of the shared shapes on `d` (planned as if on `prof`), those a profile
/// cannot run at all left out (the typed error checked): (what, plan).
fn plans_for(d: &Device, prof: &AdapterProfile) -> Vec<(String, Planned)> {
    plan_all(d)
        .into_iter()
        .filter_map(|(what, r)| planned(prof, &what, r).map(|p| (what, p)))
        .collect()
}

#[test]
fn every_benchmark_and_example_shape_fits_every_adapter_profile() {
    let mut profiles = AdapterProfile::reference_profiles();
    profiles.push(dev().adapter_profile().clone());
    let mut chosen: BTreeMap<(String, &str), BTreeMap<&str, usize>> = BTreeMap::new();
    for prof in &profiles {
        let d = dev().with_policy(KernelPolicy::default().with_profile(prof.clone()));
        for (what, p) in plans_for(&d, prof) {
            check_plan(&d, &what, &p);
            *chosen
                .entry((prof.name.clone(), p.family))
                .or_default()
                .entry(p.variant)
                .or_default() += 1;
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
    // WebGPU's default limits (8 storage buffers, 16 KiB, 256 invocations, no f16 or subgroups)
    // get a variant of every family, the two-slot grouped update among them.
    let web = "WebGPU defaults".to_string();
    for family in [
        "matmul",
        "matmul_f16",
        "conv",
        "conv_wgrad",
        "pool",
        "attention",
        "colsum",
        "optim",
    ] {
        assert!(
            chosen.contains_key(&(web.clone(), family)),
            "no {family} plan under WebGPU's defaults"
        );
    }
    assert_eq!(
        chosen[&(web.clone(), "optim")]
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        ["optim_multi2"]
    );
    let hopper_att = &chosen[&("NVIDIA H100 (Vulkan)".to_string(), "attention")];
    assert!(hopper_att.contains_key("flash_coop16") && hopper_att.contains_key("flash_sg"));
}

/// No kernel a GPU profile chooses for these shapes indexes a function-local or private array
/// (or matrix) by a non-constant inside a loop: accumulators and prefetch registers are
/// constant-indexed, so they stay in registers whether or not the driver unrolls. Prints every
/// pipeline audited; names the kernel and the array on a violation.
#[test]
fn no_gpu_kernel_indexes_a_register_array_by_a_variable_in_a_loop() {
    let mut specs: BTreeMap<String, KernelSpec> = BTreeMap::new();
    // wgpu's downlevel limits (4 storage buffers) leave only the portable fallbacks, which are
    // software adapters' kernels (gemm_direct's block is an array its loops index).
    let gpus = AdapterProfile::reference_profiles()
        .into_iter()
        .filter(|p| p.limits.max_storage_buffers_per_shader_stage >= 8);
    for prof in gpus {
        let d = dev().with_policy(KernelPolicy::default().with_profile(prof.clone()));
        for (_, p) in plans_for(&d, &prof) {
            for k in p.kernels {
                specs.insert(k.label(), k);
            }
        }
    }
    let mut bad = Vec::new();
    for (label, k) in &specs {
        let found = kiln_device::audit::dynamic_private_indexing(k.shader, &k.entry, &k.constants)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        eprintln!("{} {label}", if found.is_empty() { "ok " } else { "BAD" });
        bad.extend(found.into_iter().map(|f| format!("{label}: {f}")));
    }
    assert!(specs.len() > 50, "audited only {} pipelines", specs.len());
    assert!(
        bad.is_empty(),
        "{} findings:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// The audit finds what it is for: a private accumulator array indexed by a loop counter.
#[test]
fn the_register_array_audit_finds_a_dynamically_indexed_accumulator() {
    // gemm_direct (a software adapter's kernel) keeps its block in `acc: array<f32, 64>`.
    let found = kiln_device::audit::dynamic_private_indexing("gemm", "gemm_direct", &[]).unwrap();
    assert!(found.iter().any(|f| f.contains("`acc`")), "{found:?}");
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
            let p = gemm::plan(&pd, &call).unwrap();
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
