//! GPT-2 small (124M parameters) training steps as gpt2_train takes them: AdamW with GPT-2's
//! groups, clipping, one recorded step replayed, the vocabulary padded to 50,304. For each of
//! without and with activation checkpointing, in a process of its own (so each measures its own
//! memory): ms per step, tokens per second, the device memory high-water mark from kiln's pool
//! (`Device::memory_stats`, over the steps: the model, its gradients and optimizer state, the
//! activations) and the process's peak resident memory during the steps above what it held
//! before the model was made (on a software adapter device memory is host memory). One JSON line
//! each.
//!
//! ```text
//! cargo bench --features hf --bench gpt2_step                                    # B 1, T 256, 3 timed steps
//! cargo bench --features hf --bench gpt2_step -- --batch 1 --context 256 --steps 3
//! python3 scripts/bench_gpt2_torch.py --threads 2                  # PyTorch CPU, the same steps
//! ```
use kiln::device::Device;
use kiln::graph::Tensor;
use kiln::hf::{Gpt2Config, Gpt2LMHeadModel};
use kiln::nn::Module;
use kiln::train::gpt::{gpt_flops_per_token, mfu, AccumulatedStep, GptAdamW};
use std::time::Instant;

mod common;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a whole number, got {v}"))
        })
}

/// Starts the process's peak resident size again from the current one (Linux: writing 5 to
/// /proc/self/clear_refs), so the peak is the training steps' and not the setup's.
fn reset_rss_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak and current resident set sizes of this process, bytes (Linux's /proc; 0 elsewhere).
fn rss() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| {
        s.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (kb("VmHWM:"), kb("VmRSS:"))
}

fn one(checkpointing: bool) -> anyhow::Result<()> {
    let (b, t, steps) = (arg("--batch", 1), arg("--context", 256), arg("--steps", 3));
    let n_layer = arg("--n-layer", 12);
    let dev = Device::new()?;
    let (_, before) = rss();
    // `before`: the driver loaded, no model yet; the peak below counts from here.
    let config = Gpt2Config::new(50257, 1024, 768, n_layer, 12).with_dropout(0.0);
    let mut model = Gpt2LMHeadModel::init_from_scratch(&dev, config, 0.02, 0)?;
    model.pad_vocab(128)?;
    model.set_gradient_checkpointing(checkpointing);
    let opt = GptAdamW::new(6e-4, 1, 100).init(&dev, &model)?;
    let params: usize = model.parameters().iter().map(Tensor::numel).sum();
    let ids: Vec<i32> = (0..b * (t + 1))
        .map(|i| (i * 7919 % 50257) as i32)
        .collect();
    let (xs, ys) = kiln::nn::shards::inputs_and_targets(&ids, t);
    let x = Tensor::from_i32(&dev, &xs, &[b, t])?;
    let y = Tensor::from_i32(&dev, &ys, &[b, t])?;
    let mut step = AccumulatedStep::new(1)?;
    let mut opt = opt;
    // The model and optimizer are made: what the steps add is measured from here (the padding's
    // leftovers go back to the driver).
    dev.wait()?;
    dev.trim_pool();
    dev.reset_peak_memory_stats();
    reset_rss_peak();
    let mut run = |opt: &mut kiln::nn::Optimizer| -> anyhow::Result<f32> {
        step.run(&dev, opt, &mut |_| Ok(()), &mut || {
            Ok(model.lm_loss_from(&x, &y)?)
        })?;
        Ok(step.loss().expect("a loss").to_f32(&dev)?[0])
    };
    // The first step records the plan and compiles the pipelines.
    let t0 = Instant::now();
    let first = run(&mut opt)?;
    let first_secs = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let mut last = first;
    for _ in 0..steps {
        last = run(&mut opt)?;
    }
    let secs = t0.elapsed().as_secs_f64() / steps as f64;
    let mem = dev.memory_stats();
    let (peak_rss, _) = rss();
    let tps = (b * t) as f64 / secs;
    let flops = gpt_flops_per_token(params, n_layer, 768, t);
    let line = common::JsonLine::bench("gpt2_step")
        .set("impl", "kiln")
        .set("model", format!("gpt2-{:.0}M", params as f64 / 1e6))
        .set("batch", b)
        .set("context", t)
        .set("checkpoint_activations", checkpointing)
        .num("ms_per_step", secs * 1e3, 1)
        .num("tokens_per_second", tps, 1)
        .num("first_step_seconds", first_secs, 1)
        .set("memory_peak_bytes", mem.peak_pool_bytes)
        .set("memory_peak_live_bytes", mem.peak_live_bytes)
        .set("rss_peak_delta_bytes", peak_rss.saturating_sub(before))
        .set("parameters", params)
        .num("loss_first", first as f64, 4)
        .num("loss_last", last as f64, 4);
    let line = match mfu(flops, tps, dev.adapter_profile().peak_f32_tflops) {
        Some(m) => line.num("mfu", m, 4),
        None => line.set("mfu", serde_json::Value::Null),
    };
    line.set("adapter", dev.adapter().name.clone()).print()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--one") {
        return one(args.get(i + 1).is_some_and(|v| v == "checkpoint"));
    }
    // Each configuration in a fresh process: its own pool and its own resident-memory peak.
    let exe = std::env::current_exe()?;
    let passed: Vec<String> = args[1..]
        .iter()
        .filter(|a| *a != "--bench")
        .cloned()
        .collect();
    for mode in ["plain", "checkpoint"] {
        let status = std::process::Command::new(&exe)
            .args(&passed)
            .args(["--one", mode])
            .status()?;
        anyhow::ensure!(status.success(), "the {mode} run failed: {status}");
    }
    Ok(())
}
