//! A 2-layer LSTM language model on data/tinyshakespeare: prints validation loss (nats per
//! character) and a generated sample, then one JSON line.
use anyhow::{Context, Result};

#[path = "common/mod.rs"]
mod common;

use clap::Parser;
use kiln::device::Device;
use kiln::nn::lm::{generate, CharCorpus, CharLstm};
use kiln::nn::{Adam, Module};
use kiln::train::checkpoint::RunSettings;
use kiln::train::lm_train::{train_lm, LmConfig};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Train a 2-layer character-level LSTM on tiny Shakespeare")]
struct Args {
    /// Optimizer steps.
    #[arg(long, default_value_t = 200, value_parser = common::positive)]
    steps: usize,
    /// Hidden units per layer.
    #[arg(long, default_value_t = 128, value_parser = common::positive)]
    hidden: usize,
    /// Characters per training window (steps of back-propagation through time).
    #[arg(long, default_value_t = 32, value_parser = common::positive)]
    context: usize,
    /// Windows per step.
    #[arg(long, default_value_t = 16, value_parser = common::positive)]
    batch: usize,
    /// Learning rate (Adam).
    #[arg(long, default_value_t = 3e-3, value_parser = common::positive_f32)]
    lr: f32,
    /// The text.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/tinyshakespeare/input.txt"))]
    data: PathBuf,
    /// Seed for initialisation, windows and sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    run: common::RunArgs,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let run = a.run.start(
        RunSettings::new()
            .with("model", "char_lstm")
            .with("steps", a.steps)
            .with("hidden", a.hidden)
            .with("context", a.context)
            .with("batch", a.batch)
            .with("lr", a.lr)
            .with("seed", a.seed),
    )?;
    let dev = Device::new()?;
    eprintln!(
        "adapter: {} ({})",
        dev.adapter().name,
        dev.adapter().backend
    );
    let corpus = CharCorpus::load(&a.data, 0.1)?;
    let model = CharLstm::new(&dev, a.seed, corpus.vocab(), a.context, 64, a.hidden, 2)?;
    let mut opt = Adam::new(a.lr).init(&dev, model.parameters())?;
    opt.set_clip_grad_norm(Some(5.0));
    let mut cfg = LmConfig::default()
        .with_batch(a.batch)
        .with_steps(a.steps)
        .with_eval_every((a.steps / 5).max(1))
        .with_eval_batches(4)
        .with_seed(a.seed);
    run.prepare_lm(&model, &mut opt, &mut cfg)?;
    let t0 = std::time::Instant::now();
    let hist = train_lm(&dev, &model, &mut opt, &corpus, &cfg, |s| {
        eprintln!(
            "step {:5}  train {:.3}  val {:.3} nats/char  {:.0} chars/s",
            s.step, s.train_loss, s.val_loss, s.chars_per_second
        )
    })?;
    let secs = t0.elapsed().as_secs_f64();
    run.finish_by(&hist, "step")?;
    let sample = generate(&dev, &model, &corpus, "ROMEO:", 200, 0.8, a.seed)?;
    eprintln!("--- sample ---\n{sample}\n---");
    let last = hist.last().context("no evaluation ran")?;
    common::JsonLine::new("char_lstm")
        .num(
            "val_loss_nats_per_char",
            last.val_loss.unwrap_or(f32::NAN) as f64,
            4,
        )
        .num("train_loss", last.train_loss as f64, 4)
        .set("steps", a.steps)
        .set("hidden", a.hidden)
        .set("context", a.context)
        .set("batch", a.batch)
        .num("train_seconds", secs, 1)
        .num("chars_per_second", last.samples_per_second, 0)
        .set("adapter", dev.adapter().name.clone())
        .print()
}
