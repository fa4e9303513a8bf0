//! Linear regression, the first seed model: y = w x + b fitted by gradient descent on MSE.

use crate::{Result, TrainError};
use kiln_graph::{Device, StepPlan, Tensor};
use kiln_nn::init::Rng;
use kiln_nn::{LinearConfig, Module, Sgd};

/// What [`fit_line`] learned.
#[derive(Clone, Copy, Debug)]
pub struct LineFit {
    /// Learned slope.
    pub w: f32,
    /// Learned intercept.
    pub b: f32,
    /// MSE after the last step.
    pub loss: f32,
    /// Queue submissions the training loop made.
    pub submissions: u64,
}

/// Draws `n` points of y = 3x + 2 + N(0, 0.1^2), x ~ U(-1, 1), and fits a Linear(1, 1) with plain
/// SGD for `steps` full-batch steps, one recorded step replayed `steps - 1` times.
pub fn fit_line(dev: &Device, n: usize, steps: usize, lr: f32, seed: u64) -> Result<LineFit> {
    if n == 0 || steps == 0 {
        return Err(TrainError::Training(format!(
            "{n} points and {steps} steps: both must be at least 1"
        )));
    }
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
        Ok::<_, TrainError>(loss)
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
