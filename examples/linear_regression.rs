//! Fits y = 3x + 2 (with noise) by gradient descent on MSE: the first seed model. Each step is a
//! replay of one recorded plan. Ends with one JSON line with the learned w and b.
use anyhow::Result;
use clap::Parser;
use kiln::device::Device;
use kiln::train::regression::fit_line;

#[derive(Parser)]
#[command(about = "Fit y = 3x + 2 with noise by gradient descent on MSE")]
struct Args {
    /// Gradient-descent steps.
    #[arg(long, default_value_t = 300)]
    steps: usize,
    /// Learning rate (plain SGD).
    #[arg(long, default_value_t = 0.1)]
    lr: f32,
    /// Seed for the data and the initial weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dev = Device::new()?;
    let fit = fit_line(&dev, 256, args.steps, args.lr, args.seed)?;
    println!(
        "{{\"example\":\"linear_regression\",\"w\":{:.4},\"b\":{:.4},\"final_loss\":{:.5},\"steps\":{},\"submissions\":{}}}",
        fit.w, fit.b, fit.loss, args.steps, fit.submissions
    );
    Ok(())
}
