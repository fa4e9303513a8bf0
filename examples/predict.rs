//! Classifies MNIST images with a LeNet saved by `lenet_mnist --save PATH`, without recording
//! any training graph. Prints each image's class and probability, then one JSON line.
use anyhow::{Context, Result};

#[path = "common/mod.rs"]
mod common;
use clap::Parser;
use kiln::device::Device;
use kiln::graph::{no_grad, Tensor};
use kiln::nn::data::Mnist;
use kiln::nn::lenet::lenet5;
use kiln::nn::serialize;
use kiln::nn::Module;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Classify MNIST images with a saved LeNet")]
struct Args {
    /// The checkpoint written by lenet_mnist --save.
    #[arg(long)]
    model: PathBuf,
    /// Directory with the MNIST IDX files.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist"))]
    data: PathBuf,
    /// Indices of the images to classify (default: the first five held-out ones).
    #[arg(long, value_delimiter = ',', default_values_t = vec![8000usize, 8001, 8002, 8003, 8004])]
    index: Vec<usize>,
    /// Classify these binary PGM images (white digit on black) instead of IDX images.
    #[arg(long)]
    pgm: Vec<PathBuf>,
}

fn main() -> Result<()> {
    let a = Args::parse();
    // The images first: a bad file fails before the device starts.
    let mut images = Vec::new();
    for path in &a.pgm {
        let (w, h, px) = kiln::nn::data::read_pgm(path)?;
        images.push(kiln::nn::data::to_mnist_input(w, h, &px)?);
    }
    let dev = Device::new()?;
    let model = lenet5(&dev, 0)?;
    // A training checkpoint also holds optimizer state: extra tensors are fine, missing or
    // mis-shaped parameters are not.
    let report =
        serialize::load(&a.model, &model.named_parameters(), false).context("loading the model")?;
    anyhow::ensure!(
        report.missing.is_empty() && report.mismatched.is_empty(),
        "{} is not a LeNet-5 checkpoint: missing {:?}, mismatched {:?}",
        a.model.display(),
        report.missing,
        report.mismatched
    );
    if !report.ignored().is_empty() {
        eprintln!("loaded {}: {report}", a.model.display());
    }
    let classify = |x: &[f32]| -> Result<(usize, f32)> {
        let probs = no_grad(|| -> Result<Vec<f32>> {
            let logits = model.forward(&Tensor::from_f32(&dev, x, &[1, 1, 28, 28])?)?;
            Ok(logits.softmax()?.to_vec()?)
        })?;
        anyhow::ensure!(
            probs.iter().all(|p| p.is_finite()),
            "the model's output is not finite: {probs:?}"
        );
        Ok(probs
            .iter()
            .enumerate()
            .fold((0, 0.0f32), |b, (c, &p)| if p > b.1 { (c, p) } else { b }))
    };
    if !a.pgm.is_empty() {
        for (path, x) in a.pgm.iter().zip(&images) {
            let (class, p) = classify(x)?;
            println!("{}: class {class} (probability {p:.3})", path.display());
        }
        return common::JsonLine::new("predict")
            .set("images", a.pgm.len())
            .print();
    }
    let mnist = Mnist::load(&a.data)?;
    let mut correct = 0;
    for &i in &a.index {
        anyhow::ensure!(
            i < mnist.len(),
            "index {i} outside the {} images",
            mnist.len()
        );
        let (x, y) = mnist.split(i..i + 1)?;
        let (class, p) = classify(&x)?;
        correct += usize::from(class as i32 == y[0]);
        println!(
            "image {i}: class {class} (probability {p:.3}), label {}",
            y[0]
        );
    }
    common::JsonLine::new("predict")
        .set("images", a.index.len())
        .set("correct", correct)
        .print()
}
