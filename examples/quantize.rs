//! Post-training quantization of LeNet-5: int8 (per-channel weights, calibrated per-tensor
//! activations, packed dot products) and f16 weights, against the f32 model. Loads a model written
//! by `lenet_mnist --save PATH`, or trains one first. Reports held-out accuracy, file size and
//! inference throughput of each, then one JSON line.
use anyhow::{Context, Result};

#[path = "common/mod.rs"]
mod common;
use clap::Parser;
use kiln::device::Device;
use kiln::nn::data::Mnist;
use kiln::nn::lenet::lenet5;
use kiln::nn::quant::{quantize, Calibration, QuantConfig, QuantizedModel};
use kiln::nn::schedule::Schedule;
use kiln::nn::serialize;
use kiln::nn::{Module, Sgd};
use kiln::train::{evaluate, fit, ArrayDataset, FitConfig, Loss};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Quantize a trained LeNet to int8 and f16 and compare with f32")]
struct Args {
    /// A checkpoint written by lenet_mnist --save (without it, a LeNet is trained first).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Training epochs when no --model is given.
    #[arg(long, default_value_t = 4, value_parser = common::positive)]
    epochs: usize,
    /// Calibration examples (the first N training images, at most 8,000).
    #[arg(long, default_value_t = 256, value_parser = calibration)]
    calibration: usize,
    /// Calibrate on this percentile of |x|, in (0, 100], instead of the maximum.
    #[arg(long, value_parser = common::percentile)]
    percentile: Option<f32>,
    /// Where the three model files are written (created if missing).
    #[arg(long, default_value = "target/quantize")]
    out: PathBuf,
    /// Directory with the MNIST IDX files.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist"))]
    data: PathBuf,
}

/// Training images: the first 8,000 (the last 2,000 are held out).
const TRAIN: usize = 8000;

fn calibration(s: &str) -> Result<usize, String> {
    let n = common::positive(s)?;
    if n > TRAIN {
        return Err(format!(
            "must be at most the {TRAIN} training images, got {n}"
        ));
    }
    Ok(n)
}

/// Accuracy and images per second (best of 3 passes over the held-out set).
fn measure(dev: &Device, m: &dyn Module, test: &ArrayDataset) -> Result<(f32, f64)> {
    let mut best = f64::MAX;
    let mut acc = 0.0;
    for _ in 0..3 {
        let t = Instant::now();
        acc = evaluate(dev, m, test, Loss::CrossEntropy, 500)?
            .1
            .unwrap_or(0.0);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok((acc, test.len() as f64 / best))
}

fn size(p: &Path) -> Result<u64> {
    Ok(std::fs::metadata(p)?.len())
}

fn main() -> Result<()> {
    let a = Args::parse();
    // Before any training: the three files must be writable.
    common::writable_dir(&a.out).with_context(|| format!("--out {}", a.out.display()))?;
    let dev = Device::new()?;
    eprintln!("adapter: {}", dev.adapter().name);
    let mnist = Mnist::load(&a.data).context("loading MNIST (see data/README.md)")?;
    let (x, y) = mnist.split(0..TRAIN)?;
    let (tx, ty) = mnist.split(TRAIN..10_000)?;
    let shape = [1, 28, 28];
    let test = ArrayDataset::classes(&tx, &shape, &ty);

    let model = lenet5(&dev, 0)?;
    match &a.model {
        Some(p) => {
            let r = serialize::load(p, &model.named_parameters(), false).context("loading")?;
            anyhow::ensure!(
                r.missing.is_empty() && r.mismatched.is_empty(),
                "not a LeNet-5 checkpoint: {r:?}"
            );
        }
        None => {
            eprintln!("no --model: training LeNet-5 for {} epochs", a.epochs);
            let mut opt = Sgd::new(0.05)
                .with_momentum(0.9)
                .init(&dev, model.parameters())?;
            opt.set_schedule(Schedule::Cosine {
                t_max: (a.epochs * TRAIN.div_ceil(64)) as u64,
                min_lr: 0.0,
            });
            let cfg = FitConfig::default()
                .with_epochs(a.epochs)
                .with_batch_size(64)
                .with_callback(|s| eprintln!("epoch {}  loss {:.4}", s.epoch, s.train_loss));
            let train = ArrayDataset::classes(&x, &shape, &y);
            fit(&dev, &model, &mut opt, Loss::CrossEntropy, &train, cfg)?;
        }
    }
    let f32_path = a.out.join("lenet_f32.safetensors");
    serialize::save(&f32_path, &model.named_parameters(), &[])?;
    let (f32_acc, f32_ips) = measure(&dev, &model, &test)?;

    let calib = &x[..a.calibration * 784];
    let mut int8_cfg = QuantConfig::int8();
    if let Some(p) = a.percentile {
        int8_cfg.calibration = Calibration::Percentile(p);
    }
    let mut results = Vec::new();
    for (name, cfg) in [("int8", int8_cfg), ("f16", QuantConfig::f16())] {
        // Quantization consumes the f32 model: start each from the saved weights.
        let f = lenet5(&dev, 0)?;
        serialize::load(&f32_path, &f.named_parameters(), true)?;
        let q = quantize(&dev, f, calib, &shape, &cfg)?;
        let path = a.out.join(format!("lenet_{name}.safetensors"));
        q.save(&path)?;
        // Measure the model as loaded from its file, as a deployment would.
        let q = QuantizedModel::load(&dev, &path, lenet5(&dev, 0)?)?;
        let (acc, ips) = measure(&dev, &q, &test)?;
        eprintln!(
            "{name}: accuracy {acc:.4} (f32 {f32_acc:.4}), {} bytes (f32 {}), {ips:.0} images/s (f32 {f32_ips:.0}){}",
            size(&path)?,
            size(&f32_path)?,
            if q.uses_quantized_kernels() { "" } else { ", f32 fallback kernels" }
        );
        results.push((name, acc, size(&path)?, ips, q.uses_quantized_kernels()));
    }
    let mut line = common::JsonLine::new("quantize")
        .num("f32_accuracy", f32_acc as f64, 4)
        .set("f32_bytes", size(&f32_path)?)
        .num("f32_images_per_second", f32_ips, 0);
    for (n, acc, bytes, ips, native) in &results {
        line = line
            .num(&format!("{n}_accuracy"), *acc as f64, 4)
            .set(&format!("{n}_bytes"), *bytes)
            .num(&format!("{n}_images_per_second"), *ips, 0)
            .set(&format!("{n}_kernels"), *native);
    }
    line.num(
        "int8_drop_points",
        ((f32_acc - results[0].1) * 100.0) as f64,
        2,
    )
    .set(
        "calibration",
        a.percentile
            .map_or("minmax".to_string(), |p| format!("percentile {p}")),
    )
    .set("test_images", test.len())
    .set("adapter", dev.adapter().name.clone())
    .print()
}
