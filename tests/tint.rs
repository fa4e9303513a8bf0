//! Standard WGSL: every shader file compiles under Dawn's Tint (Chrome's WGSL compiler) as well
//! as under naga, and so does every pipeline kiln builds from it.
//!
//! The pipelines are the ones kiln's own launchers ask for, collected from the device
//! ([`Device::kernels_seen`]) after three kinds of work on this machine's adapter:
//! - every entry point of every file with its default override constants (so none is missed);
//! - the limit-profile planning of `crates/ops/tests/ops/limits.rs` (every benchmark and example
//!   GEMM, convolution, reduction, optimizer and attention shape) under every reference adapter
//!   profile, an H100's, an Apple GPU's and WebGPU's defaults among them: the tiles, split-K,
//!   window and subgroup constants the variant tables choose;
//! - short training runs (LeNet-5 with SGD and momentum, a character Transformer with AdamW, in
//!   f32 and under autocast, a character LSTM with Adam, generation) under the adapter's own
//!   policy and under WebGPU's default limits: the constants of the single-kernel families
//!   (element-wise op codes, layouts, pooling windows, optimizer rules).
//!
//! `scripts/tint/check.mjs` (Node.js and the `webgpu` package's Dawn, installed by
//! `scripts/setup.sh --tests`) then creates a module for every file, with
//! `shaders::standard_wgsl` applied as the browser backend applies it, and a compute pipeline for
//! every kernel; any Tint or validation error fails the test. A pipeline refused for one of the
//! device's limits counts apart, and only where kiln's own measure of it (naga's footprint) says
//! it is over that limit too. The files in `shaders::WGPU_ONLY` (cooperative matrices) are left
//! out. Without Node.js or the package the test fails, naming the set-up step.

use kiln::device::shaders;
use kiln::device::{AdapterProfile, Device, KernelPolicy};
use kiln::nn::lm::{generate, CharCorpus, CharLstm, CharTransformer, TransformerLmConfig};
use kiln::nn::{lenet::lenet5, Adam, AdamW, Module, Sgd};
use kiln::ops::random::Rng;
use kiln::train::lm_train::{train_lm, LmConfig};
use kiln::train::{fit, ArrayDataset, FitConfig};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

#[path = "../crates/ops/tests/ops/shapes.rs"]
#[allow(dead_code)]
mod shapes;

/// Short runs of the examples' models at toy sizes: every op they use builds its pipelines.
fn train_representative(d: &Device) -> anyhow::Result<()> {
    let mut rng = Rng::new(7);
    let n: i32 = 40;
    let x: Vec<f32> = (0..n * 28 * 28).map(|_| rng.uniform() as f32).collect();
    let y: Vec<i32> = (0..n).map(|i| i % 10).collect();
    let shape = [1, 28, 28];
    let data = ArrayDataset::classes(&x, &shape, &y);
    let model = lenet5(d, 0)?;
    let mut opt = Sgd::new(0.05)
        .with_momentum(0.9)
        .init(d, model.parameters())?;
    let cfg = FitConfig::default()
        .with_batch_size(16)
        .with_log_every(1)
        .with_progress(false)
        .with_validation(&data);
    let loss = kiln::nn::loss::Loss::CrossEntropy;
    fit(d, &model, &mut opt, loss, &data, cfg)?;

    let corpus = CharCorpus::from_text(&"the cat sat on the mat. ".repeat(40), 0.2)
        .map_err(anyhow::Error::msg)?;
    for mixed_precision in [false, true] {
        let lm = CharTransformer::new(
            d,
            1,
            &TransformerLmConfig {
                vocab: corpus.vocab(),
                context: 16,
                d_model: 32,
                heads: 2,
                layers: 1,
                dropout: 0.1,
            },
        )?;
        let mut opt = AdamW::new(1e-3).init(d, lm.parameters())?;
        let cfg = LmConfig {
            mixed_precision,
            finite_check_every: 1,
            ..LmConfig::default()
                .with_batch(4)
                .with_steps(2)
                .with_eval_every(2)
                .with_eval_batches(1)
                .with_seed(0)
        };
        train_lm(d, &lm, &mut opt, &corpus, &cfg, |_| {})?;
        generate(d, &lm, &corpus, "the ", 2, 0.8, 1)?;
    }
    let lstm = CharLstm::new(d, 2, corpus.vocab(), 12, 16, 32, 2)?;
    let mut opt = Adam::new(1e-3).init(d, lstm.parameters())?;
    train_lm(
        d,
        &lstm,
        &mut opt,
        &corpus,
        &LmConfig::default()
            .with_batch(4)
            .with_steps(2)
            .with_eval_every(2)
            .with_eval_batches(1)
            .with_seed(0),
        |_| {},
    )?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let dev = Device::shared()?;
    let standard: Vec<&str> = shaders::names()
        .filter(|n| !shaders::WGPU_ONLY.contains(n))
        .collect();

    // Every entry point at its default constants.
    for name in &standard {
        let v = shaders::validate(name, shaders::source(name)?)?;
        for ep in &v.module.entry_points {
            dev.footprint(name, &ep.name, &[])?;
        }
    }
    // The variant tables' choices under every reference profile (planning only).
    let mut profiles = AdapterProfile::reference_profiles();
    profiles.push(dev.adapter_profile().clone());
    for prof in profiles {
        let d = dev.with_policy(KernelPolicy::default().with_profile(prof));
        // Refusals (a profile that cannot run a shape) are the limit test's concern.
        let _ = shapes::plan_all(&d);
    }
    // Training, as the adapter's own policy and as WebGPU's default limits choose kernels.
    train_representative(&dev)?;
    let web =
        dev.with_policy(KernelPolicy::default().with_profile(AdapterProfile::webgpu_default()));
    train_representative(&web)?;

    let seen = dev.kernels_seen();
    let manifest = json!({
        "shaders": shaders::names().map(|name| json!({
            "name": name,
            "wgpu_only": shaders::WGPU_ONLY.contains(&name),
            "wgsl": shaders::standard_wgsl(shaders::source(name).unwrap()),
        })).collect::<Vec<_>>(),
        "pipelines": seen.iter().filter(|k| standard.contains(&k.shader.as_str())).map(|k| json!({
            "shader": k.shader,
            "entry": k.entry,
            "constants": k.constants,
            "footprint": {
                "workgroup_bytes": k.footprint.workgroup_bytes,
                "workgroup_size": k.footprint.workgroup_size,
                "storage_buffers": k.footprint.storage_buffers,
                "f16": k.footprint.f16,
                "subgroups": k.footprint.subgroups,
            },
        })).collect::<Vec<_>>(),
    });
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("scripts/tint/check.mjs");
    let package = root.join("scripts/tint/node_modules/webgpu/package.json");
    anyhow::ensure!(
        package.exists(),
        "Dawn's `webgpu` package is missing ({}): run ./scripts/setup.sh --tests",
        package.display()
    );
    let path = std::env::temp_dir().join(format!("kiln-tint-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_vec(&manifest)?)?;
    let out = Command::new("node").arg(&script).arg(&path).output();
    let out = out.map_err(|e| {
        anyhow::anyhow!("running node failed ({e}): run ./scripts/setup.sh --tests")
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for l in &lines {
        if l["kind"] != "summary" {
            println!("tint: {l}");
        }
    }
    let summary = lines
        .iter()
        .find(|l| l["kind"] == "summary")
        .ok_or_else(|| {
            anyhow::anyhow!(
                "check.mjs printed no summary (status {}; its input: {}):\n{stdout}\n{}",
                out.status,
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let _ = std::fs::remove_file(&path);
    let count = |k: &str| summary[k].as_u64().unwrap_or(0);
    println!(
        "tint: {} of {} files and {} of {} pipelines accepted by Dawn's Tint on {} \
         ({} refused for a device limit that kiln measures them to exceed; wgpu-only, not checked: {})",
        count("files_accepted"),
        count("files"),
        count("pipelines_accepted"),
        count("pipelines"),
        summary["adapter"],
        count("limit_refusals"),
        summary["wgpu_only"]
    );
    let ok = out.status.success()
        && count("errors") == 0
        && count("files") == standard.len() as u64
        && count("files_accepted") == count("files")
        && count("pipelines") >= standard.len() as u64
        && count("pipelines_accepted") + count("limit_refusals") == count("pipelines");
    println!("{} passed, {} failed", ok as u32, !ok as u32);
    anyhow::ensure!(ok, "Tint rejected kiln's WGSL (lines above)");
    Ok(())
}
