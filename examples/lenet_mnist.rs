//! Trains the seed's LeNet-5 on the first 8,000 images of data/mnist with SGD (momentum 0.9) and
//! reports accuracy on the last 2,000, which it never trains on. Ends with one JSON line.
use anyhow::{Context, Result};

#[path = "common/mod.rs"]
mod common;

use clap::Parser;
use kiln::device::Device;
use kiln::nn::data::Mnist;
use kiln::nn::models::lenet5;
use kiln::nn::schedule::Schedule;
use kiln::nn::{Module, Sgd};
use kiln::train::{fit_classifier, Dataset, FitConfig};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Train LeNet-5 on MNIST and report held-out accuracy")]
struct Args {
    /// Directory with t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist"))]
    data: PathBuf,
    /// Training examples (the first N); the last 2,000 are held out.
    #[arg(long, default_value_t = 8000)]
    train_size: usize,
    /// Passes over the training examples.
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    /// Examples per step.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Peak learning rate (cosine-annealed to zero over the run).
    #[arg(long, default_value_t = 0.05)]
    lr: f32,
    /// Seed for initialisation and shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    run: common::RunArgs,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let start = Instant::now();
    let dev = Device::new()?;
    eprintln!(
        "adapter: {} ({})",
        dev.adapter().name,
        dev.adapter().backend
    );
    let mnist = Mnist::load(&args.data).context("loading MNIST (see data/README.md)")?;
    let held_out = 2000;
    anyhow::ensure!(
        args.train_size + held_out <= mnist.len(),
        "--train-size {} leaves fewer than {held_out} of {} images held out",
        args.train_size,
        mnist.len()
    );
    let (train_x, train_y) = mnist.split(0..args.train_size);
    let (test_x, test_y) = mnist.split(mnist.len() - held_out..mnist.len());
    let shape = [1, 28, 28];
    let train = Dataset::classes(&train_x, &shape, &train_y);
    let test = Dataset::classes(&test_x, &shape, &test_y);

    let model = lenet5(&dev, args.seed)?;
    let mut opt = Sgd::new(args.lr)
        .momentum(0.9)
        .init(&dev, model.parameters())?;
    let steps = args.epochs * args.train_size.div_ceil(args.batch_size);
    opt.set_schedule(Schedule::Cosine {
        t_max: steps as u64,
        min_lr: 0.0,
    });
    let mut cfg = FitConfig {
        log_every: 25,
        ..FitConfig::new(
            kiln::nn::loss::Loss::CrossEntropy,
            args.epochs,
            args.batch_size,
            args.seed,
        )
    };
    args.run.prepare(&model, &mut opt, &mut cfg)?;
    let before = dev.counters();
    let history = fit_classifier(&dev, &model, &mut opt, &train, Some(&test), &cfg, |s| {
        eprintln!(
            "epoch {:2}  train loss {:.4}  held-out loss {:.4}  accuracy {:.4}  {:.1}s  {:.0} samples/s",
            s.epoch,
            s.train_loss,
            s.val_loss.unwrap_or(f32::NAN),
            s.val_accuracy.unwrap_or(f32::NAN),
            s.train_seconds,
            s.samples_per_second
        );
    })?;
    let after = dev.counters();
    args.run.finish(&history)?;
    let last = history.last().context("no epoch ran")?;
    let train_seconds: f64 = history.iter().map(|s| s.train_seconds).sum();
    println!(
        "{{\"example\":\"lenet_mnist\",\"test_accuracy\":{:.4},\"test_loss\":{:.4},\"train_images\":{},\"test_images\":{held_out},\
         \"epochs\":{},\"batch_size\":{},\"train_seconds\":{train_seconds:.2},\"total_seconds\":{:.2},\
         \"steps\":{steps},\"submissions\":{},\"adapter\":{:?}}}",
        last.val_accuracy.unwrap_or(0.0),
        last.val_loss.unwrap_or(f32::NAN),
        args.train_size,
        args.epochs,
        args.batch_size,
        start.elapsed().as_secs_f64(),
        after.submissions - before.submissions,
        dev.adapter().name
    );
    Ok(())
}
