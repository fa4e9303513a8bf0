//! Fits y = 3x + 2 (with noise) by gradient descent on MSE: the first seed model. Each step is a
//! replay of one recorded plan. Ends with one JSON line with the learned w and b.
use anyhow::{ensure, Result};

#[path = "common/mod.rs"]
mod common;
use clap::Parser;
use kiln::device::Device;
use kiln::graph::{StepPlan, Tensor};
use kiln::nn::init::Rng;
use kiln::nn::{LinearConfig, Module, NnError, Sgd};

#[derive(Parser)]
#[command(about = "Fit y = 3x + 2 with noise by gradient descent on MSE")]
struct Args {
    /// Gradient-descent steps.
    #[arg(long, default_value_t = 300, value_parser = common::positive)]
    steps: usize,
    /// Learning rate (plain SGD; too large a rate diverges, which ends in an error).
    #[arg(long, default_value_t = 0.1, value_parser = common::positive_f32)]
    lr: f32,
    /// Seed for the data and the initial weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// What [`fit_line`] learned.
#[derive(Clone, Copy, Debug)]
struct LineFit {
    /// Learned slope.
    w: f32,
    /// Learned intercept.
    b: f32,
    /// MSE after the last step.
    loss: f32,
    /// Queue submissions the training loop made.
    submissions: u64,
}

/// Draws `n` points of y = 3x + 2 + N(0, 0.1^2), x ~ U(-1, 1), and fits a Linear(1, 1) with plain
/// SGD for `steps` full-batch steps, one recorded step replayed `steps - 1` times.
fn fit_line(dev: &Device, n: usize, steps: usize, lr: f32, seed: u64) -> Result<LineFit> {
    ensure!(
        n > 0 && steps > 0,
        "{n} points and {steps} steps: both must be at least 1"
    );
    let mut rng = Rng::new(seed);
    let x: Vec<f32> = (0..n).map(|_| rng.range(-1.0, 1.0) as f32).collect();
    let y: Vec<f32> = x
        .iter()
        .map(|&v| 3.0 * v + 2.0 + 0.1 * rng.normal() as f32)
        .collect();
    let model = LinearConfig::new(1, 1).init_with(dev, &mut rng)?;
    let mut opt = Sgd::new(lr).init(dev, model.parameters())?;
    let xt = Tensor::from_f32(dev, &x, &[n, 1])?;
    let yt = Tensor::from_f32(dev, &y, &[n, 1])?;
    let before = dev.counters().submissions;
    let (plan, loss) = StepPlan::record(dev, || {
        let loss = model.forward(&xt)?.mse_loss(&yt)?;
        loss.backward()?;
        opt.step()?;
        Ok::<_, NnError>(loss)
    })?;
    for _ in 1..steps {
        opt.replay(&plan)?;
    }
    let loss = loss.item()?;
    Ok(LineFit {
        w: model.weight.item()?,
        b: model
            .bias
            .as_ref()
            .map(|b| b.item())
            .transpose()?
            .unwrap_or(0.0),
        loss,
        submissions: dev.counters().submissions - before,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dev = Device::new()?;
    let fit = fit_line(&dev, 256, args.steps, args.lr, args.seed)?;
    common::JsonLine::new("linear_regression")
        .num("w", fit.w as f64, 4)
        .num("b", fit.b as f64, 4)
        .num("final_loss", fit.loss as f64, 5)
        .set("steps", args.steps)
        .set("submissions", fit.submissions)
        .print()
}
