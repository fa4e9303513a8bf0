//! Prunes a LeNet trained by `lenet_mnist --save PATH` to a target sparsity by weight magnitude,
//! fine-tunes with the masks kept, and reports held-out accuracy before, right after pruning, and
//! after fine-tuning, then one JSON line.
use anyhow::{Context, Result};

#[path = "common/mod.rs"]
mod common;
use clap::Parser;
use kiln::device::Device;
use kiln::graph::Tensor;
use kiln::nn::data::Mnist;
use kiln::nn::lenet::lenet5;
use kiln::nn::prune::{magnitude_masks, sparsity};
use kiln::nn::serialize;
use kiln::nn::{Module, Sgd};
use kiln::train::{evaluate, fit, ArrayDataset, FitConfig, Loss};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Magnitude-prune a trained LeNet and fine-tune it")]
struct Args {
    /// A checkpoint written by lenet_mnist --save.
    #[arg(long)]
    model: PathBuf,
    /// Fraction of weights to remove, in [0, 1).
    #[arg(long, default_value_t = 0.8, value_parser = common::fraction)]
    sparsity: f32,
    /// Prune each weight tensor separately instead of by one global threshold.
    #[arg(long)]
    per_layer: bool,
    /// Fine-tuning epochs.
    #[arg(long, default_value_t = 2, value_parser = common::positive)]
    epochs: usize,
    /// Directory with the MNIST IDX files.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist"))]
    data: PathBuf,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let dev = Device::new()?;
    let model = lenet5(&dev, 0)?;
    let r = serialize::load(&a.model, &model.named_parameters(), false).context("loading")?;
    anyhow::ensure!(
        r.missing.is_empty() && r.mismatched.is_empty(),
        "not a LeNet-5 checkpoint: {r:?}"
    );
    let mnist = Mnist::load(&a.data)?;
    let (x, y) = mnist.split(0..8000)?;
    let (tx, ty) = mnist.split(8000..10_000)?;
    let shape = [1, 28, 28];
    let (train, test) = (
        ArrayDataset::classes(&x, &shape, &y),
        ArrayDataset::classes(&tx, &shape, &ty),
    );
    let acc = |m: &dyn Module| -> Result<f32> {
        Ok(evaluate(&dev, m, &test, Loss::CrossEntropy, 500)?
            .1
            .unwrap_or(f32::NAN))
    };
    let before = acc(&model)?;
    let weights: Vec<Tensor> = model
        .named_parameters()
        .into_iter()
        .filter(|(n, _)| n.ends_with("weight"))
        .map(|(_, t)| t)
        .collect();
    let masks = magnitude_masks(&weights, a.sparsity, !a.per_layer)?;
    let pruned = acc(&model)?;
    let mut opt = Sgd::new(0.01)
        .with_momentum(0.9)
        .init(&dev, model.parameters())?;
    opt.set_masks(masks);
    fit(
        &dev,
        &model,
        &mut opt,
        Loss::CrossEntropy,
        &train,
        FitConfig::default()
            .with_epochs(a.epochs)
            .with_batch_size(64)
            .with_seed(1)
            .with_callback(|s| eprintln!("fine-tune epoch {}  loss {:.4}", s.epoch, s.train_loss)),
    )?;
    let after = acc(&model)?;
    common::JsonLine::new("prune")
        .num("sparsity", sparsity(&weights)? as f64, 4)
        .num("accuracy_before", before as f64, 4)
        .num("accuracy_pruned", pruned as f64, 4)
        .num("accuracy_finetuned", after as f64, 4)
        .set("global", !a.per_layer)
        .print()
}
