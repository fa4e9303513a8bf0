//! Whole training steps, each recorded once and replayed: LeNet-5 (batch 64 and 256, SGD with
//! momentum), a character Transformer (AdamW; also in mixed precision where the adapter has
//! f16 cooperative matrices) and a 2-layer LSTM (forward and backward). Reports
//! ms per step, samples or tokens per second, dispatches and submissions per step; one JSON line
//! per workload. Sizes shrink on software adapters (named in each line) so a run ends in minutes.
//! With `-- --profile`, each workload also prints where one step's GPU time goes: a line per
//! kernel (label with its constants, calls and ms per step), from per-dispatch timestamps.
//! `KILN_CASE=lenet5` (or `char_transformer`, `lstm`) runs one workload.
use kiln::device::Device;
use kiln::graph::{autocast_f16_when, StepPlan, Tensor};
use kiln::nn::init::Rng;
use kiln::nn::lenet::lenet5;
use kiln::nn::lm::{CharLstm, CharTransformer, LanguageModel, TransformerLmConfig};
use kiln::nn::{Adam, AdamW, Module, NnError, Optimizer, Sgd};
use std::time::Instant;

mod common;

struct Result {
    name: String,
    batch: usize,
    items_per_step: usize,
    unit: &'static str,
}

fn time_steps(
    dev: &Device,
    plan: &StepPlan,
    opt: &mut Optimizer,
    steps: usize,
    r: Result,
) -> anyhow::Result<()> {
    dev.wait()?;
    let c0 = dev.counters();
    let t0 = Instant::now();
    for _ in 0..steps {
        opt.replay(plan)?;
    }
    dev.wait()?;
    let secs = t0.elapsed().as_secs_f64();
    let c1 = dev.counters();
    if std::env::args().any(|a| a == "--profile") {
        opt.prepare_replay()?;
        let prof = dev.profile(|| plan.replay())?;
        let total: f64 = prof.iter().map(|k| k.seconds).sum();
        for k in prof {
            common::JsonLine::bench("train_step_profile")
                .set("model", r.name.clone())
                .set("batch", r.batch)
                .set("kernel", k.kernel.clone())
                .set("calls_per_step", k.calls)
                .num("ms_per_step", k.seconds * 1e3, 3)
                .num("share", k.seconds / total, 3)
                .print()?;
        }
    }
    common::JsonLine::bench("train_step")
        .set("model", r.name.clone())
        .set("batch", r.batch)
        .num("ms_per_step", secs * 1e3 / steps as f64, 3)
        .num(
            &format!("{}_per_s", r.unit),
            (r.items_per_step * steps) as f64 / secs,
            0,
        )
        .num(
            "dispatches_per_step",
            (c1.dispatches - c0.dispatches) as f64 / steps as f64,
            1,
        )
        // Counted over the loop: the optimizer's hyper-parameter write rides in the replay submission.
        .num(
            "submissions_per_step",
            (c1.submissions - c0.submissions) as f64 / steps as f64,
            2,
        )
        .set("adapter", dev.adapter().name.clone())
        .print()
}

fn lm_step(
    dev: &Device,
    model: &dyn LanguageModel,
    opt: &mut Optimizer,
    batch: usize,
    vocab: usize,
    mixed_precision: bool,
) -> anyhow::Result<StepPlan> {
    let t = model.context();
    let mut rng = Rng::new(0);
    let ids: Vec<i32> = (0..batch * t).map(|_| rng.below(vocab) as i32).collect();
    let x = Tensor::from_i32(dev, &ids, &[batch, t])?;
    let y = Tensor::from_i32(dev, &ids, &[batch * t])?;
    let (plan, _) = StepPlan::record(dev, || {
        let logits = autocast_f16_when(mixed_precision, || model.logits(&x))?;
        let loss = logits.cross_entropy(&y, None)?;
        loss.backward()?;
        opt.step()?;
        Ok::<_, NnError>(loss)
    })?;
    Ok(plan)
}

fn main() -> anyhow::Result<()> {
    let dev = Device::new()?;
    let soft = dev.adapter().is_software;
    let steps = if soft { 3 } else { 50 };
    // KILN_CASE=lenet5|char_transformer|lstm runs one workload.
    let case = std::env::var("KILN_CASE").ok();
    let want = |name: &str| case.as_deref().is_none_or(|c| c == name);
    if want("lenet5") {
        for batch in [64, 256] {
            let model = lenet5(&dev, 0)?;
            let mut opt = Sgd::new(0.01)
                .with_momentum(0.9)
                .init(&dev, model.parameters())?;
            let mut rng = Rng::new(1);
            let x = Tensor::from_f32(&dev, &rng.vec(batch * 784, -1.0, 1.0), &[batch, 1, 28, 28])?;
            let y = Tensor::from_i32(
                &dev,
                &(0..batch).map(|i| (i % 10) as i32).collect::<Vec<_>>(),
                &[batch],
            )?;
            let (plan, _) = StepPlan::record(&dev, || {
                let loss = model.forward(&x)?.cross_entropy(&y, None)?;
                loss.backward()?;
                opt.step()?;
                Ok::<_, NnError>(loss)
            })?;
            time_steps(
                &dev,
                &plan,
                &mut opt,
                steps,
                Result {
                    name: "lenet5".into(),
                    batch,
                    items_per_step: batch,
                    unit: "samples",
                },
            )?;
        }
    }
    if want("char_transformer") {
        // Character Transformer: the GPU preset, or a small one on software adapters.
        let (layers, heads, width, context, batch) = if soft {
            (2, 4, 64, 64, 16)
        } else {
            (6, 6, 384, 256, 64)
        };
        let cfg = TransformerLmConfig {
            vocab: 65,
            context,
            d_model: width,
            heads,
            layers,
            dropout: 0.0,
        };
        // Mixed precision too where the f16 matmuls run on cooperative matrices (elsewhere they
        // are widened to f32, which only adds casts).
        let coop = kiln::ops::gemm::coop_size(&dev)?.is_some();
        for mixed in [false].into_iter().chain(coop.then_some(true)) {
            let model = CharTransformer::new(&dev, 0, &cfg)?;
            let mut opt = AdamW::new(3e-4)
                .with_weight_decay(0.01)
                .init(&dev, model.parameters())?;
            let plan = lm_step(&dev, &model, &mut opt, batch, 65, mixed)?;
            let f16 = if mixed { "_f16" } else { "" };
            let name = format!("char_transformer_{layers}x{width}_ctx{context}{f16}");
            time_steps(
                &dev,
                &plan,
                &mut opt,
                steps,
                Result {
                    name,
                    batch,
                    items_per_step: batch * context,
                    unit: "tokens",
                },
            )?;
        }
    }
    if want("lstm") {
        // LSTM 2 x 256 over 100 steps at batch 64 (on software adapters: 2 x 128, 25 steps, batch 16).
        let (hidden, seq, batch) = if soft { (128, 25, 16) } else { (256, 100, 64) };
        let model = CharLstm::new(&dev, 0, 65, seq, 64, hidden, 2)?;
        let mut opt = Adam::new(1e-3).init(&dev, model.parameters())?;
        let plan = lm_step(&dev, &model, &mut opt, batch, 65, false)?;
        let name = format!("lstm_2x{hidden}_seq{seq}");
        time_steps(
            &dev,
            &plan,
            &mut opt,
            steps.min(3),
            Result {
                name,
                batch,
                items_per_step: batch * seq,
                unit: "tokens",
            },
        )?;
    }
    Ok(())
}
