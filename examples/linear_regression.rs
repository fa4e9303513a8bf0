//! Fits y = 3x + 2 (with noise) by gradient descent on MSE: the first seed model. Each step is a
//! replay of one recorded plan. Ends with one JSON line with the learned w and b.
use anyhow::Result;

#[path = "common/mod.rs"]
mod common;
use clap::Parser;
use kiln::device::Device;
use kiln::train::regression::fit_line;

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
