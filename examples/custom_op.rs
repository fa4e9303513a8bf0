//! A user-written WGSL op with its backward: swish (examples/common/swish.rs) checked against
//! finite differences with kiln's `gradcheck`, then used as the activation of a small MLP that
//! `fit` trains on MNIST with recorded steps (each step one submission, replayed). Ends with one
//! JSON line.
use anyhow::{Context, Result};

#[path = "common/mod.rs"]
mod common;
#[path = "common/swish.rs"]
mod swish;

use clap::Parser;
use kiln::graph::{GradCheck, Tensor};
use kiln::nn::data::Mnist;
use kiln::nn::init::Rng;
use kiln::nn::{Adam, Lambda, LinearConfig, Module, Sequential};
use kiln::train::{fit, ArrayDataset, FitConfig, Loss};
use std::path::PathBuf;
use std::time::Instant;
use swish::{swish_cpu, Swish};

#[derive(Parser)]
#[command(about = "A user-written WGSL op with a backward, gradient-checked and trained")]
struct Args {
    /// Directory with the MNIST IDX files.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist"))]
    data: PathBuf,
    /// Passes over the 4,000 training images.
    #[arg(long, default_value_t = 3, value_parser = common::positive)]
    epochs: usize,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let dev = kiln::device::Device::new()?;

    // 1. The backward against finite differences: of the op itself on the device, and of its
    //    f64 CPU reference (which also checks the forward values).
    let mut rng = Rng::new(1);
    let x = Tensor::from_f32(&dev, &rng.vec(64, -4.0, 4.0), &[8, 8])?.requires_grad_(true)?;
    let apply = |t: &[Tensor]| Tensor::apply(Swish, &[&t[0]]);
    GradCheck::new().check(apply, std::slice::from_ref(&x))?;
    GradCheck::new()
        .with_eps(1e-4)
        .with_atol(1e-5)
        .with_rtol(1e-4)
        .with_reference(|v| swish_cpu(&v[0]))
        .check(apply, &[x])?;
    eprintln!("gradcheck: swish's backward matches finite differences");

    // 2. Training with it: 784-128-10 with swish, Adam, recorded steps.
    let mnist = Mnist::load(&a.data).context("loading MNIST (see data/README.md)")?;
    let (x, y) = mnist.split(0..4000)?;
    let (tx, ty) = mnist.split(8000..10_000)?;
    let model = Sequential::new()
        .push_named(
            "fc1",
            LinearConfig::new(784, 128).init_with(&dev, &mut rng)?,
        )
        .push_named("swish", Lambda::op(Swish))
        .push_named("fc2", LinearConfig::new(128, 10).init_with(&dev, &mut rng)?);
    let mut opt = Adam::new(1e-3).init(&dev, model.parameters())?;
    let shape = [784];
    let (train, test) = (
        ArrayDataset::classes(&x, &shape, &y),
        ArrayDataset::classes(&tx, &shape, &ty),
    );
    let start = Instant::now();
    let cfg = FitConfig::default()
        .with_epochs(a.epochs)
        .with_batch_size(64)
        .with_validation(&test)
        .with_callback(|s| {
            eprintln!(
                "epoch {}  train loss {:.4}  held-out accuracy {:.4}",
                s.epoch,
                s.train_loss,
                s.val_accuracy.unwrap_or(f32::NAN)
            )
        });
    let history = fit(&dev, &model, &mut opt, Loss::CrossEntropy, &train, cfg)?;
    let last = history.last().context("no epoch ran")?;
    common::JsonLine::new("custom_op")
        .set("gradcheck", "passed")
        .num(
            "test_accuracy",
            last.val_accuracy.unwrap_or(f32::NAN) as f64,
            4,
        )
        .num("train_loss", last.train_loss as f64, 4)
        .set("epochs", a.epochs)
        .num("seconds", start.elapsed().as_secs_f64(), 2)
        .print()
}
