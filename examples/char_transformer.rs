//! A small causal Transformer language model on data/tinyshakespeare: prints validation loss
//! (nats per character) and a generated sample, then one JSON line.
//!
//! `mpirun -np N char_transformer --distributed` trains it in N processes, each on its share of
//! every step's windows, to the same result.
use anyhow::{Context, Result};

#[path = "common/mod.rs"]
mod common;
#[path = "common/dist.rs"]
mod dist_args;

use clap::{Parser, ValueEnum};
use dist_args::Dist;
#[cfg(feature = "dist")]
use kiln::dist::DistributedDataParallel;
use kiln::nn::lm::{generate, CharCorpus, CharTransformer, TransformerLmConfig};
use kiln::nn::schedule::Schedule;
use kiln::nn::{AdamW, Module};
use kiln::train::checkpoint::RunSettings;
use kiln::train::lm_train::{train_lm, LmConfig};
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum)]
enum Preset {
    /// Trains in minutes on a software adapter: 2 layers, width 64, context 64, batch 16.
    Small,
    /// For a real GPU: 6 layers, 6 heads, width 384, context 256, batch 64.
    Gpu,
}

#[derive(Parser)]
#[command(about = "Train a character-level Transformer on tiny Shakespeare")]
struct Args {
    /// Model and batch size.
    #[arg(long, value_enum, default_value_t = Preset::Small)]
    preset: Preset,
    /// Optimizer steps (default: 300 small, 3000 gpu).
    #[arg(long, value_parser = common::positive)]
    steps: Option<usize>,
    /// Peak learning rate (AdamW, linear warm-up then cosine decay).
    #[arg(long, default_value_t = 3e-3, value_parser = common::positive_f32)]
    lr: f32,
    /// The text.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/tinyshakespeare/input.txt"))]
    data: PathBuf,
    /// Seed for initialisation, windows and sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Mixed precision: f16 matmuls (cooperative matrices where the adapter has them) with f32
    /// sums, master weights and gradients.
    #[arg(long)]
    f16: bool,
    #[command(flatten)]
    run: common::RunArgs,
    #[command(flatten)]
    dist: dist_args::DistArgs,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let dist = a.dist.init()?;
    dist_args::run(dist.as_ref(), || train(&a, dist.as_ref()))
}

fn train(a: &Args, dist: Option<&Dist>) -> Result<()> {
    let root = dist_args::is_root(dist);
    let (layers, heads, width, context, batch, steps, dropout) = match a.preset {
        Preset::Small => (2, 4, 64, 64, 16, 300, 0.0),
        Preset::Gpu => (6, 6, 384, 256, 64, 3000, 0.2),
    };
    let steps = a.steps.unwrap_or(steps);
    let run = dist_args::run_args(&a.run, dist).start(
        RunSettings::new()
            .with("model", "char_transformer")
            .with("layers", layers)
            .with("heads", heads)
            .with("width", width)
            .with("context", context)
            .with("batch", batch)
            .with("dropout", dropout)
            .with("steps", steps)
            .with("lr", a.lr)
            .with("seed", a.seed)
            .with("f16", a.f16),
    )?;
    let dev = a.dist.device(dist)?;
    if root {
        eprintln!(
            "adapter: {} ({}){}",
            dev.adapter().name,
            dev.adapter().backend,
            dist.map_or(String::new(), |d| format!(", {} processes", d.size()))
        );
    }
    let corpus = CharCorpus::load(&a.data, 0.1)?;
    let cfg = TransformerLmConfig {
        vocab: corpus.vocab(),
        context,
        d_model: width,
        heads,
        layers,
        dropout,
    };
    let model = CharTransformer::new(&dev, a.seed, &cfg)?;
    let mut opt = AdamW::new(a.lr)
        .with_weight_decay(0.01)
        .init(&dev, model.parameters())?;
    opt.set_schedule(Schedule::Warmup {
        steps: (steps / 10).max(1) as u64,
        then: Box::new(Schedule::Cosine {
            t_max: steps as u64,
            min_lr: a.lr / 10.0,
        }),
    });
    let mut train_cfg = LmConfig::default()
        .with_batch(batch)
        .with_steps(steps)
        .with_eval_every((steps / 5).max(1))
        .with_eval_batches(4)
        .with_seed(a.seed);
    train_cfg.mixed_precision = a.f16;
    run.prepare_lm(&model, &mut opt, &mut train_cfg)?;
    let t0 = std::time::Instant::now();
    let report = |s: &kiln::train::lm_train::LmStats| {
        if root {
            eprintln!(
                "step {:5}  train {:.3}  val {:.3} nats/char  {:.0} chars/s",
                s.step, s.train_loss, s.val_loss, s.chars_per_second
            )
        }
    };
    #[cfg_attr(not(feature = "dist"), allow(unused_mut))]
    let mut times = Default::default();
    let hist = match dist {
        None => train_lm(&dev, &model, &mut opt, &corpus, &train_cfg, report)?,
        #[cfg(feature = "dist")]
        Some(d) => {
            let mut ddp = DistributedDataParallel::new(d, &dev, a.dist.ddp());
            let h = kiln::train::lm_train::train_lm_parallel(
                &dev, &model, &mut opt, &corpus, &train_cfg, &mut ddp, report,
            )?;
            times = ddp.times();
            h
        }
        #[cfg(not(feature = "dist"))]
        Some(d) => match *d {},
    };
    let secs = t0.elapsed().as_secs_f64();
    if !root {
        return Ok(());
    }
    run.finish_by(&hist, "step")?;
    let sample = generate(&dev, &model, &corpus, "ROMEO:", 200, 0.8, a.seed)?;
    eprintln!("--- sample ---\n{sample}\n---");
    let last = hist.last().context("no evaluation ran")?;
    let line = common::JsonLine::new("char_transformer")
        .num(
            "val_loss_nats_per_char",
            last.val_loss.unwrap_or(f32::NAN) as f64,
            4,
        )
        .num("train_loss", last.train_loss as f64, 4)
        .set("steps", steps)
        .set("layers", layers)
        .set("width", width)
        .set("context", context)
        .set("batch", batch)
        .set("f16", a.f16)
        .num("train_seconds", secs, 1)
        .num("chars_per_second", last.samples_per_second, 0);
    dist_args::json_fields(line, dist, &times)
        .set("adapter", dev.adapter().name.clone())
        .print()
}
