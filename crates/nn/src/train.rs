//! The training loop for classifiers: each step (forward, loss, backward, update) recorded once
//! per batch size and replayed with new data; evaluation without gradients.

use crate::data::{gather_rows, shuffled};
use crate::layers::Module;
use crate::optim::Optimizer;
use crate::{NnError, Result};
use kiln_graph::{no_grad, Device, StepPlan, Tensor};
use kiln_ops::{softmax, Array, DType};
use std::collections::HashMap;
use std::time::Instant;

/// What `fit_classifier` does.
#[derive(Clone, Debug)]
pub struct FitConfig {
    /// Examples per step; a final shorter batch gets its own recorded plan.
    pub batch_size: usize,
    /// Passes over the data.
    pub epochs: usize,
    /// Seed of the shuffling (epoch e uses seed + e).
    pub seed: u64,
    /// Read the loss back every this many steps (reading waits for the GPU).
    pub log_every: usize,
}

/// One epoch's figures.
#[derive(Clone, Debug)]
pub struct EpochStats {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean of the training losses read back during the epoch.
    pub train_loss: f32,
    /// Held-out loss, when validation data was given.
    pub val_loss: Option<f32>,
    /// Held-out accuracy, when validation data was given.
    pub val_accuracy: Option<f32>,
    /// Seconds spent training (evaluation excluded).
    pub train_seconds: f64,
    /// Training examples per second.
    pub samples_per_second: f64,
}

/// Examples as a row-major [n, features...] f32 array and their labels.
pub struct Dataset<'a> {
    /// [n * prod(shape)] values.
    pub x: &'a [f32],
    /// Shape of one example, e.g. [1, 28, 28].
    pub shape: &'a [usize],
    /// [n] labels.
    pub y: &'a [i32],
}

impl Dataset<'_> {
    fn width(&self) -> usize {
        self.shape.iter().product()
    }
    fn len(&self) -> usize {
        self.y.len()
    }
    fn batch_shape(&self, n: usize) -> Vec<usize> {
        std::iter::once(n)
            .chain(self.shape.iter().copied())
            .collect()
    }
}

struct Recorded {
    plan: StepPlan,
    x: Tensor,
    y: Array,
    loss: Tensor,
}

/// Trains `model` on `train` with cross-entropy; returns one [`EpochStats`] per epoch and calls
/// `on_epoch` after each.
pub fn fit_classifier(
    dev: &Device,
    model: &dyn Module,
    opt: &mut Optimizer,
    train: &Dataset,
    val: Option<&Dataset>,
    cfg: &FitConfig,
    mut on_epoch: impl FnMut(&EpochStats),
) -> Result<Vec<EpochStats>> {
    if train.x.len() != train.len() * train.width() {
        return Err(NnError::Training(format!(
            "{} values for {} examples of shape {:?}",
            train.x.len(),
            train.len(),
            train.shape
        )));
    }
    if cfg.batch_size == 0 || train.len() == 0 {
        return Err(NnError::Training("empty data or zero batch size".into()));
    }
    let mut plans: HashMap<usize, Recorded> = HashMap::new();
    let mut history = Vec::new();
    let mut step = 0usize;
    let mut classes: Option<usize> = None;
    let mut reads = std::collections::VecDeque::new();
    for epoch in 1..=cfg.epochs {
        let t0 = Instant::now();
        let order = shuffled(train.len(), cfg.seed + epoch as u64);
        let (mut loss_sum, mut loss_n) = (0.0f64, 0usize);
        for idx in order.chunks(cfg.batch_size) {
            let n = idx.len();
            let xb = gather_rows(train.x, train.width(), idx);
            let yb: Vec<i32> = idx.iter().map(|&i| train.y[i]).collect();
            // Before the first plan exists the class count is unknown: check negatives now and
            // the upper bound once the logits' width is known (below).
            softmax::check_labels(&yb, classes.unwrap_or(i32::MAX as usize), None)?;
            opt.begin_step()?;
            if step > 0 {
                model.advance_rng()?;
            }
            step += 1;
            if let Some(r) = plans.get(&n) {
                dev.write(&r.x.array().buf, &xb)?;
                dev.write(&r.y.buf, &yb)?;
                if step.is_multiple_of(cfg.log_every.max(1)) {
                    // Rides in this step's submission, after the replayed dispatches.
                    reads.push_back((step, dev.read_async(&r.loss.array().buf)?));
                }
                r.plan.replay()?;
            } else {
                let x = Tensor::from_f32(dev, &xb, &train.batch_shape(n))?;
                let y = Array::from_i32(dev, &yb, &[n])?;
                // A fresh plan computes fresh gradients (no accumulation into another plan's).
                opt.zero_grad();
                let (plan, (loss, width)) = StepPlan::record(dev, || {
                    let logits = model.forward(&x)?;
                    let width = *logits.shape().last().unwrap_or(&0);
                    let loss = logits.cross_entropy(&y, None)?;
                    loss.backward()?;
                    opt.step()?;
                    Ok::<_, NnError>((loss, width))
                })?;
                classes = Some(width);
                softmax::check_labels(&yb, width, None)?;
                plans.insert(n, Recorded { plan, x, y, loss });
            }
            // Collect finished readbacks without waiting for the GPU.
            while let Some((at, t)) = reads.front() {
                let Some(v) = t.try_read::<f32>()? else { break };
                record_loss(*at, epoch, v[0], &mut loss_sum, &mut loss_n)?;
                reads.pop_front();
            }
        }
        for (at, t) in reads.drain(..) {
            record_loss(at, epoch, t.wait::<f32>()?[0], &mut loss_sum, &mut loss_n)?;
        }
        dev.wait()?;
        let secs = t0.elapsed().as_secs_f64();
        let (val_loss, val_accuracy) = match val {
            Some(v) => {
                let (l, a) = evaluate(dev, model, v, 500)?;
                (Some(l), Some(a))
            }
            None => (None, None),
        };
        let stats = EpochStats {
            epoch,
            train_loss: if loss_n > 0 {
                (loss_sum / loss_n as f64) as f32
            } else {
                f32::NAN
            },
            val_loss,
            val_accuracy,
            train_seconds: secs,
            samples_per_second: train.len() as f64 / secs,
        };
        on_epoch(&stats);
        history.push(stats);
    }
    Ok(history)
}

fn record_loss(step: usize, epoch: usize, loss: f32, sum: &mut f64, n: &mut usize) -> Result<()> {
    if !loss.is_finite() {
        return Err(NnError::Training(format!(
            "loss became {loss} at step {step} (epoch {epoch})"
        )));
    }
    *sum += loss as f64;
    *n += 1;
    Ok(())
}

/// Mean cross-entropy and accuracy of `model` on `data`, without gradients.
pub fn evaluate(
    dev: &Device,
    model: &dyn Module,
    data: &Dataset,
    batch: usize,
) -> Result<(f32, f32)> {
    no_grad(|| {
        let (mut correct, mut loss_sum) = (0usize, 0.0f64);
        let ids: Vec<usize> = (0..data.len()).collect();
        for idx in ids.chunks(batch.max(1)) {
            let n = idx.len();
            let x = Tensor::from_f32(
                dev,
                &gather_rows(data.x, data.width(), idx),
                &data.batch_shape(n),
            )?;
            let yb: Vec<i32> = idx.iter().map(|&i| data.y[i]).collect();
            let logits = model.forward(&x)?;
            let y = Array::from_i32(dev, &yb, &[n])?;
            let loss = logits.cross_entropy(&y, None)?;
            let pred = logits.argmax(1)?;
            debug_assert_eq!(pred.dtype(), DType::I32);
            correct += pred
                .to_i32(dev)?
                .iter()
                .zip(&yb)
                .filter(|(p, t)| p == t)
                .count();
            loss_sum += loss.item()? as f64 * n as f64;
        }
        Ok((
            loss_sum as f32 / data.len() as f32,
            correct as f32 / data.len() as f32,
        ))
    })
}
