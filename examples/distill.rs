//! Knowledge distillation: a LeNet trained by `lenet_mnist --save PATH` teaches a small MLP
//! (784-64-10). The same student (same seed, same steps) also trains on hard labels alone; both
//! held-out accuracies are reported, then one JSON line.
use anyhow::{Context, Result};
use clap::Parser;
use kiln::device::Device;
use kiln::graph::{no_grad, StepPlan, Tensor};
use kiln::nn::data::{gather_rows, shuffled, Mnist};
use kiln::nn::init::Rng;
use kiln::nn::loss::distillation_loss;
use kiln::nn::models::lenet5;
use kiln::nn::serialize;
use kiln::nn::{Adam, LinearConfig, Relu, Sequential};
use kiln::nn::{Module, NnError};
use kiln::train::{evaluate, Dataset, Loss};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Distil a trained LeNet into a small MLP")]
struct Args {
    /// The teacher: a checkpoint written by lenet_mnist --save.
    #[arg(long)]
    teacher: PathBuf,
    /// Softening temperature.
    #[arg(long, default_value_t = 2.0)]
    temperature: f32,
    /// Weight of the teacher's term (the rest goes to the hard labels).
    #[arg(long, default_value_t = 0.5)]
    alpha: f32,
    /// Passes over the training images.
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    /// Training images (the first N of data/mnist).
    #[arg(long, default_value_t = 2000)]
    train_size: usize,
    /// Directory with the MNIST IDX files.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist"))]
    data: PathBuf,
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
    let batch = 64;
    let n = y.len() / batch * batch; // whole batches: one plan
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
            opt.begin_step()?;
            match &plan {
                Some(p) => p.replay()?,
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
    Ok(())
}

fn main() -> Result<()> {
    let a = Args::parse();
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
    let mnist = Mnist::load(&a.data)?;
    let (x, y) = mnist.split(0..a.train_size);
    let (tx, ty) = mnist.split(8000..10_000);
    let test = Dataset::classes(&tx, &[784], &ty);
    let teacher_test = Dataset::classes(&tx, &[1, 28, 28], &ty);
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
    println!(
        "{{\"example\":\"distill\",\"teacher_accuracy\":{teacher_acc:.4},\"student_accuracy\":{plain_acc:.4},\"distilled_student_accuracy\":{taught_acc:.4},\"temperature\":{},\"alpha\":{},\"epochs\":{},\"train_images\":{}}}",
        a.temperature, a.alpha, a.epochs, a.train_size
    );
    Ok(())
}
