//! Knowledge distillation: a LeNet trained by `lenet_mnist --save PATH` teaches a small MLP
//! (784-64-10). The same student (same seed, same steps) also trains on hard labels alone; both
//! held-out accuracies are reported, then one JSON line.
use anyhow::{Context, Result};

#[path = "common/mod.rs"]
mod common;
use clap::Parser;
use kiln::device::Device;
use kiln::graph::{no_grad, StepPlan, Tensor};
use kiln::nn::data::{gather_rows, shuffled, Mnist};
use kiln::nn::init::Rng;
use kiln::nn::lenet::lenet5;
use kiln::nn::loss::distillation_loss;
use kiln::nn::serialize;
use kiln::nn::{Adam, LinearConfig, Relu, Sequential};
use kiln::nn::{Module, NnError};
use kiln::train::{evaluate, ArrayDataset, Loss};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Distil a trained LeNet into a small MLP")]
struct Args {
    /// The teacher: a checkpoint written by lenet_mnist --save.
    #[arg(long)]
    teacher: PathBuf,
    /// Softening temperature (above 0).
    #[arg(long, default_value_t = 2.0, value_parser = common::positive_f32)]
    temperature: f32,
    /// Weight of the teacher's term, in [0, 1] (the rest goes to the hard labels).
    #[arg(long, default_value_t = 0.5, value_parser = common::unit)]
    alpha: f32,
    /// Passes over the training images.
    #[arg(long, default_value_t = 8, value_parser = common::positive)]
    epochs: usize,
    /// Training images: the first N of data/mnist, at least one batch (64), and never the last
    /// 2,000, which are held out.
    #[arg(long, default_value_t = 2000, value_parser = train_size)]
    train_size: usize,
    /// Directory with the MNIST IDX files.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist"))]
    data: PathBuf,
}

/// Images per training step.
const BATCH: usize = 64;
/// The held-out images: the last this many.
const HELD_OUT: usize = 2000;

fn train_size(s: &str) -> Result<usize, String> {
    let n = common::positive(s)?;
    if n < BATCH {
        return Err(format!(
            "must be at least one batch of {BATCH} images, got {n}"
        ));
    }
    Ok(n)
}

fn student(dev: &Device) -> Result<Sequential> {
    let mut rng = Rng::new(11);
    Ok(Sequential::new()
        .push(LinearConfig::new(784, 64).init_with(dev, &mut rng)?)
        .push(Relu)
        .push(LinearConfig::new(64, 10).init_with(dev, &mut rng)?))
}

/// Trains `s` with one recorded plan per step; `teacher` adds the distillation term.
fn train(
    dev: &Device,
    s: &Sequential,
    teacher: Option<&dyn Module>,
    a: &Args,
    x: &[f32],
    y: &[i32],
) -> Result<()> {
    let mut opt = Adam::new(1e-3).init(dev, s.parameters())?;
    let batch = BATCH;
    let n = y.len() / batch * batch; // whole batches: one plan
    anyhow::ensure!(
        n > 0,
        "{} training images: not one batch of {batch}",
        y.len()
    );
    let xt = Tensor::from_f32(dev, &x[..batch * 784], &[batch, 784])?;
    let img = Tensor::from_f32(dev, &x[..batch * 784], &[batch, 1, 28, 28])?;
    let yt = Tensor::from_i32(dev, &y[..batch], &[batch])?;
    let mut plan: Option<StepPlan> = None;
    for epoch in 0..a.epochs {
        let order = shuffled(n, 100 + epoch as u64);
        for idx in order.chunks(batch) {
            let xb = gather_rows(x, 784, idx);
            let yb: Vec<i32> = idx.iter().map(|&i| y[i]).collect();
            xt.copy_from_slice(&xb)?;
            img.copy_from_slice(&xb)?;
            yt.copy_from_slice(&yb)?;
            match &plan {
                Some(p) => opt.replay(p)?,
                None => {
                    let (p, _) = StepPlan::record(dev, || {
                        let logits = s.forward(&xt)?;
                        let loss = match teacher {
                            Some(t) => {
                                let tl = no_grad(|| t.forward(&img))?;
                                distillation_loss(&logits, &tl, &yt, a.temperature, a.alpha)?
                            }
                            None => logits.cross_entropy(&yt, None)?,
                        };
                        loss.backward()?;
                        opt.step()?;
                        Ok::<_, NnError>(loss)
                    })?;
                    plan = Some(p);
                }
            }
        }
    }
    dev.wait()?;
    // This loop reads no loss back: check once at the end that training stayed finite.
    for (name, p) in s.named_parameters() {
        anyhow::ensure!(
            p.to_vec()?.iter().all(|v| v.is_finite()),
            "training diverged: {name} holds NaN or infinite values"
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let a = Args::parse();
    // The data first: a bad --train-size fails before the device starts.
    let mnist = Mnist::load(&a.data)?;
    let held_out = mnist.len().saturating_sub(HELD_OUT);
    anyhow::ensure!(
        a.train_size <= held_out,
        "--train-size {} would train on held-out images: the last {HELD_OUT} of {} are held out, so at most {held_out}",
        a.train_size,
        mnist.len()
    );
    let (x, y) = mnist.split(0..a.train_size)?;
    let (tx, ty) = mnist.split(held_out..mnist.len())?;
    let dev = Device::new()?;
    let teacher = lenet5(&dev, 0)?;
    let r = serialize::load(&a.teacher, &teacher.named_parameters(), false)
        .context("loading the teacher")?;
    anyhow::ensure!(
        r.missing.is_empty() && r.mismatched.is_empty(),
        "not a LeNet-5 checkpoint: {r:?}"
    );
    for p in teacher.parameters() {
        p.requires_grad_(false)?;
    }
    let test = ArrayDataset::classes(&tx, &[784], &ty);
    let teacher_test = ArrayDataset::classes(&tx, &[1, 28, 28], &ty);
    let teacher_acc = evaluate(&dev, &teacher, &teacher_test, Loss::CrossEntropy, 500)?
        .1
        .unwrap_or(0.0);
    let plain = student(&dev)?;
    train(&dev, &plain, None, &a, &x, &y)?;
    let plain_acc = evaluate(&dev, &plain, &test, Loss::CrossEntropy, 500)?
        .1
        .unwrap_or(0.0);
    let taught = student(&dev)?;
    train(&dev, &taught, Some(&teacher), &a, &x, &y)?;
    let taught_acc = evaluate(&dev, &taught, &test, Loss::CrossEntropy, 500)?
        .1
        .unwrap_or(0.0);
    eprintln!("teacher {teacher_acc:.4}  student alone {plain_acc:.4}  student with teacher {taught_acc:.4}");
    common::JsonLine::new("distill")
        .num("teacher_accuracy", teacher_acc as f64, 4)
        .num("student_accuracy", plain_acc as f64, 4)
        .num("distilled_student_accuracy", taught_acc as f64, 4)
        .num("temperature", a.temperature as f64, 4)
        .num("alpha", a.alpha as f64, 4)
        .set("epochs", a.epochs)
        .set("train_images", a.train_size)
        .set("test_images", ty.len())
        .print()
}
