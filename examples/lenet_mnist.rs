//! Trains the seed's LeNet-5 on the first 8,000 images of data/mnist with SGD (momentum 0.9) and
//! reports accuracy on the last 2,000, which it never trains on. Ends with one JSON line.
//!
//! `mpirun -np N lenet_mnist --distributed` trains it in N processes, each on its share of every
//! batch of 64, to the same result.
use anyhow::{Context, Result};

#[path = "common/mod.rs"]
mod common;
#[path = "common/dist.rs"]
mod dist_args;

use clap::Parser;
use dist_args::Dist;
#[cfg(feature = "dist")]
use kiln::dist::DistributedDataParallel;
use kiln::nn::data::Mnist;
use kiln::nn::lenet::lenet5;
use kiln::nn::schedule::Schedule;
use kiln::nn::{Module, Sgd};
use kiln::train::checkpoint::RunSettings;
use kiln::train::{fit, ArrayDataset, FitConfig};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Train LeNet-5 on MNIST and report held-out accuracy")]
struct Args {
    /// Directory with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist"))]
    data: PathBuf,
    /// Training examples (the first N); the last 2,000 are held out.
    #[arg(long, default_value_t = 8000, value_parser = common::positive)]
    train_size: usize,
    /// Passes over the training examples.
    #[arg(long, default_value_t = 10, value_parser = common::positive)]
    epochs: usize,
    /// Examples per step.
    #[arg(long, default_value_t = 64, value_parser = common::positive)]
    batch_size: usize,
    /// Peak learning rate (cosine-annealed to zero over the run).
    #[arg(long, default_value_t = 0.05, value_parser = common::positive_f32)]
    lr: f32,
    /// Seed for initialisation and shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    run: common::RunArgs,
    #[command(flatten)]
    dist: dist_args::DistArgs,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dist = args.dist.init()?;
    dist_args::run(dist.as_ref(), || train(&args, dist.as_ref()))
}

fn train(args: &Args, dist: Option<&Dist>) -> Result<()> {
    let start = Instant::now();
    let root = dist_args::is_root(dist);
    let run = dist_args::run_args(&args.run, dist).start(
        RunSettings::new()
            .with("model", "lenet5")
            .with("train_size", args.train_size)
            .with("epochs", args.epochs)
            .with("batch_size", args.batch_size)
            .with("lr", args.lr)
            .with("seed", args.seed),
    )?;
    let dev = args.dist.device(dist)?;
    if root {
        eprintln!(
            "adapter: {} ({}){}",
            dev.adapter().name,
            dev.adapter().backend,
            dist.map_or(String::new(), |d| format!(", {} processes", d.size()))
        );
    }
    let mnist = Mnist::load(&args.data).context("loading MNIST (see data/README.md)")?;
    let held_out = 2000;
    anyhow::ensure!(
        args.train_size + held_out <= mnist.len(),
        "--train-size {} leaves fewer than {held_out} of {} images held out",
        args.train_size,
        mnist.len()
    );
    let (train_x, train_y) = mnist.split(0..args.train_size)?;
    let (test_x, test_y) = mnist.split(mnist.len() - held_out..mnist.len())?;
    let shape = [1, 28, 28];
    let train = ArrayDataset::classes(&train_x, &shape, &train_y);
    let test = ArrayDataset::classes(&test_x, &shape, &test_y);

    let model = lenet5(&dev, args.seed)?;
    let mut opt = Sgd::new(args.lr)
        .with_momentum(0.9)
        .init(&dev, model.parameters())?;
    let steps = args.epochs * args.train_size.div_ceil(args.batch_size);
    opt.set_schedule(Schedule::Cosine {
        t_max: steps as u64,
        min_lr: 0.0,
    });
    let mut cfg = FitConfig::default()
        .with_epochs(args.epochs)
        .with_batch_size(args.batch_size)
        .with_seed(args.seed)
        .with_log_every(25)
        .with_validation(&test);
    run.prepare(&model, &mut opt, &mut cfg)?;
    let before = dev.counters();
    let report = |s: &kiln::train::EpochStats| {
        if !root {
            return;
        }
        eprintln!(
            "epoch {:2}  train loss {:.4}  held-out loss {:.4}  accuracy {:.4}  {:.1}s  {:.0} samples/s",
            s.epoch,
            s.train_loss,
            s.val_loss.unwrap_or(f32::NAN),
            s.val_accuracy.unwrap_or(f32::NAN),
            s.train_seconds,
            s.samples_per_second
        );
    };
    #[cfg(feature = "dist")]
    let mut ddp = dist.map(|d| DistributedDataParallel::new(d, &dev, args.dist.ddp()));
    #[cfg_attr(not(feature = "dist"), allow(unused_mut))]
    let mut cfg = cfg.with_callback(report);
    #[cfg(feature = "dist")]
    if let Some(ddp) = &mut ddp {
        cfg = cfg.with_distributed(ddp);
    }
    let loss = kiln::nn::loss::Loss::CrossEntropy;
    let history = fit(&dev, &model, &mut opt, loss, &train, cfg)?;
    #[cfg(feature = "dist")]
    let times = ddp.map(|d| d.times()).unwrap_or_default();
    #[cfg(not(feature = "dist"))]
    let times = dist_args::StepTimes;
    let after = dev.counters();
    if !root {
        return Ok(());
    }
    run.finish(&history)?;
    let last = history.last().context("no epoch ran")?;
    let train_seconds: f64 = history.iter().map(|s| s.train_seconds).sum();
    let line = common::JsonLine::new("lenet_mnist")
        .num(
            "test_accuracy",
            last.val_accuracy.unwrap_or(f32::NAN) as f64,
            4,
        )
        .num("test_loss", last.val_loss.unwrap_or(f32::NAN) as f64, 4)
        .set("train_images", args.train_size)
        .set("test_images", held_out)
        .set("epochs", args.epochs)
        .set("batch_size", args.batch_size)
        .num("train_seconds", train_seconds, 2)
        .num("total_seconds", start.elapsed().as_secs_f64(), 2)
        .set("steps", steps)
        .set("submissions", after.submissions - before.submissions);
    dist_args::json_fields(line, dist, &times)
        .set("adapter", dev.adapter().name.clone())
        .print()
}
