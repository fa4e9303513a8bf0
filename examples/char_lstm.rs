//! A 2-layer LSTM language model on data/tinyshakespeare: prints validation loss (nats per
//! character) and a generated sample, then one JSON line.
use anyhow::Result;

#[path = "common/mod.rs"]
mod common;

use clap::Parser;
use kiln::device::Device;
use kiln::nn::lm::{generate, CharCorpus, CharLstm};
use kiln::nn::{Adam, Module};
use kiln::train::lm::{train_lm, LmConfig};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Train a 2-layer character-level LSTM on tiny Shakespeare")]
struct Args {
    /// Optimizer steps.
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Hidden units per layer.
    #[arg(long, default_value_t = 128)]
    hidden: usize,
    /// Characters per training window (steps of back-propagation through time).
    #[arg(long, default_value_t = 32)]
    context: usize,
    /// Windows per step.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Learning rate (Adam).
    #[arg(long, default_value_t = 3e-3)]
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
    let mut cfg = LmConfig::new(a.batch, a.steps, (a.steps / 5).max(1), 4, a.seed);
    a.run.prepare_lm(&model, &mut opt, &mut cfg)?;
    let t0 = std::time::Instant::now();
    let hist = train_lm(&dev, &model, &mut opt, &corpus, &cfg, |s| {
        eprintln!(
            "step {:5}  train {:.3}  val {:.3} nats/char  {:.0} chars/s",
            s.step, s.train_loss, s.val_loss, s.chars_per_second
        )
    })?;
    let secs = t0.elapsed().as_secs_f64();
    a.run.finish_by(&hist, "step")?;
    let sample = generate(&dev, &model, &corpus, "ROMEO:", 200, 0.8, a.seed)?;
    eprintln!("--- sample ---\n{sample}\n---");
    let last = hist.last().expect("at least one evaluation");
    println!(
        "{{\"example\":\"char_lstm\",\"val_loss_nats_per_char\":{:.4},\"train_loss\":{:.4},\"steps\":{},\"hidden\":{},\"context\":{},\"batch\":{},\"train_seconds\":{secs:.1},\"chars_per_second\":{:.0},\"adapter\":{:?}}}",
        last.val_loss.unwrap_or(f32::NAN), last.train_loss, a.steps, a.hidden, a.context, a.batch, last.samples_per_second, dev.adapter().name
    );
    Ok(())
}
