//! Fine-tuning: loads a LeNet trained by `lenet_mnist --save PATH` non-strictly with a new 5-class
//! head, freezes every other layer, and trains the head on the digits 0-4 only. Reports held-out
//! accuracy on those digits before and after, then one JSON line.
use anyhow::{Context, Result};

#[path = "common/mod.rs"]
mod common;
use clap::Parser;
use kiln::device::Device;
use kiln::nn::data::Mnist;
use kiln::nn::lenet::lenet5_with_classes;
use kiln::nn::serialize;
use kiln::nn::{Module, Sgd};
use kiln::train::{evaluate, fit, ArrayDataset, FitConfig, Loss};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Fine-tune a trained LeNet's last layer on the digits 0-4")]
struct Args {
    /// A checkpoint written by lenet_mnist --save.
    #[arg(long)]
    model: PathBuf,
    /// Directory with the MNIST IDX files.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist"))]
    data: PathBuf,
    /// Passes over the training digits.
    #[arg(long, default_value_t = 3, value_parser = common::positive)]
    epochs: usize,
}

fn digits_below(m: &Mnist, range: std::ops::Range<usize>, k: i32) -> Result<(Vec<f32>, Vec<i32>)> {
    let (x, y) = m.split(range)?;
    let keep: Vec<usize> = (0..y.len()).filter(|&i| y[i] < k).collect();
    Ok((
        keep.iter()
            .flat_map(|&i| x[i * 784..(i + 1) * 784].to_vec())
            .collect(),
        keep.iter().map(|&i| y[i]).collect(),
    ))
}

fn main() -> Result<()> {
    let a = Args::parse();
    let dev = Device::new()?;
    let model = lenet5_with_classes(&dev, 7, 5)?;
    let report = serialize::load(&a.model, &model.named_parameters(), false).context("loading")?;
    eprintln!("loaded {} non-strictly: {report}", a.model.display());
    anyhow::ensure!(report.missing.is_empty(), "missing {:?}", report.missing);
    for (name, p) in model.named_parameters() {
        p.requires_grad_(name.starts_with("fc3"))?;
    }
    let mnist = Mnist::load(&a.data)?;
    let (x, y) = digits_below(&mnist, 0..8000, 5)?;
    let (tx, ty) = digits_below(&mnist, 8000..10_000, 5)?;
    let shape = [1, 28, 28];
    let (train, test) = (
        ArrayDataset::classes(&x, &shape, &y),
        ArrayDataset::classes(&tx, &shape, &ty),
    );
    let (_, before) = evaluate(&dev, &model, &test, Loss::CrossEntropy, 500)?;
    let frozen: Vec<Vec<f32>> = model
        .parameters()
        .iter()
        .map(|p| p.to_vec())
        .collect::<Result<_, _>>()?;
    let mut opt = Sgd::new(0.05)
        .with_momentum(0.9)
        .init(&dev, model.parameters())?;
    fit(
        &dev,
        &model,
        &mut opt,
        Loss::CrossEntropy,
        &train,
        FitConfig::default()
            .with_epochs(a.epochs)
            .with_batch_size(64)
            .with_validation(&test)
            .with_callback(|s| {
                eprintln!(
                    "epoch {}  loss {:.4}  held-out accuracy (digits 0-4) {:.4}",
                    s.epoch,
                    s.train_loss,
                    s.val_accuracy.unwrap_or(0.0)
                )
            }),
    )?;
    let (_, after) = evaluate(&dev, &model, &test, Loss::CrossEntropy, 500)?;
    let unchanged = model
        .named_parameters()
        .iter()
        .zip(&frozen)
        .filter(|((n, _), _)| !n.starts_with("fc3"))
        .all(|((_, p), v)| p.to_vec().map(|now| &now == v).unwrap_or(false));
    common::JsonLine::new("finetune")
        .set("digits", "0-4")
        .num("accuracy_before", before.unwrap_or(f32::NAN) as f64, 4)
        .num("accuracy_after", after.unwrap_or(f32::NAN) as f64, 4)
        .set("frozen_layers_unchanged", unchanged)
        .set("train_images", y.len())
        .print()
}
