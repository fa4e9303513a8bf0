//! The seed's Keras model on MNIST: Dense 256 Relu, Dense 10 (softmax in the loss), Adam 1e-3,
//! through compile / fit / evaluate / predict. Trains on the first 8,000 images, tests on the last
//! 2,000. Ends with one JSON line.
use anyhow::{Context, Result};

#[path = "common/mod.rs"]
mod common;

use clap::Parser;
use kiln::device::Device;
use kiln::nn::data::Mnist;
use kiln::nn::init::Rng;
use kiln::nn::Module;
use kiln::nn::{Adam, LinearConfig, Relu, Sequential};
use kiln::train::checkpoint::RunSettings;
use kiln::train::{ArrayDataset, Compiled, FitConfig, Loss};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Keras-style MLP on MNIST: compile, fit, evaluate, predict")]
struct Args {
    /// Directory with the MNIST IDX files.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist"))]
    data: PathBuf,
    /// Passes over the training images.
    #[arg(long, default_value_t = 10, value_parser = common::positive)]
    epochs: usize,
    /// Examples per step.
    #[arg(long, default_value_t = 128, value_parser = common::positive)]
    batch_size: usize,
    #[command(flatten)]
    run: common::RunArgs,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let run = a.run.start(
        RunSettings::new()
            .with("model", "mlp_784_256_10")
            .with("epochs", a.epochs)
            .with("batch_size", a.batch_size),
    )?;
    let dev = Device::new()?;
    let mnist = Mnist::load(&a.data).context("loading MNIST")?;
    let (x, y) = mnist.split(0..8000)?;
    let (tx, ty) = mnist.split(8000..10_000)?;
    let shape = [784];
    let mut rng = Rng::new(0);
    let model = Sequential::new()
        .push_named(
            "dense",
            LinearConfig::new(784, 256).init_with(&dev, &mut rng)?,
        )
        .push(Relu)
        .push_named(
            "dense_1",
            LinearConfig::new(256, 10).init_with(&dev, &mut rng)?,
        );
    let opt = Adam::new(1e-3).init(&dev, model.parameters())?;
    let mut net = Compiled::compile(&dev, model, opt, Loss::CrossEntropy);
    let (train, test) = (
        ArrayDataset::classes(&x, &shape, &y),
        ArrayDataset::classes(&tx, &shape, &ty),
    );
    let mut cfg = FitConfig::default()
        .with_epochs(a.epochs)
        .with_batch_size(a.batch_size)
        .with_validation(&test)
        .with_callback(|s| {
            eprintln!(
                "epoch {}/{}  loss {:.4}  val_loss {:.4}  val_accuracy {:.4}  {:.0} samples/s",
                s.epoch,
                a.epochs,
                s.train_loss,
                s.val_loss.unwrap_or(f32::NAN),
                s.val_accuracy.unwrap_or(f32::NAN),
                s.samples_per_second
            )
        });
    run.prepare(&net.model, &mut net.optimizer, &mut cfg)?;
    let history = net.fit(&train, cfg)?;
    run.finish(&history)?;
    let (loss, acc) = net.evaluate(&test)?;
    let logits = net.predict(&tx[..5 * 784], &shape)?;
    let first: Vec<usize> = logits
        .chunks(10)
        .map(|r| {
            r.iter()
                .enumerate()
                .fold(0, |b, (i, v)| if *v > r[b] { i } else { b })
        })
        .collect();
    eprintln!(
        "predict: first five held-out digits {first:?}, labels {:?}",
        &ty[..5]
    );
    let secs: f64 = history.iter().map(|s| s.train_seconds).sum();
    common::JsonLine::new("mnist_mlp")
        .num("test_accuracy", acc.unwrap_or(f32::NAN) as f64, 4)
        .num("test_loss", loss as f64, 4)
        .set("epochs", a.epochs)
        .set("batch_size", a.batch_size)
        .num("train_seconds", secs, 1)
        .set("adapter", dev.adapter().name.clone())
        .print()
}
