//! The training loop as a future: [`fit`](crate::fit())'s recorded steps, with every readback
//! awaited instead of waited for, so that it runs in a browser page (whose GPU work completes
//! between turns of the JavaScript event loop, where nothing may block) as well as under any
//! native executor (`pollster::block_on(fit_async(...))`).
//!
//! It keeps what a page needs (a plan per batch size replayed with new data, the seeded shuffle
//! of [`fit`](crate::fit()), losses read back a few steps behind the GPU, evaluation) and leaves
//! out what needs a file system or several processes (checkpoints, data-parallel training).

use crate::data::{BatchTargets, DataLoader, Dataset};
use crate::error::{Result, TrainError};
use crate::fit::{FitConfig, LossTally};
use crate::history::EpochStats;
use kiln_device::ReadTicket;
use kiln_graph::{no_grad, Device, StepPlan, Tensor};
use kiln_nn::loss::{loss_of, Loss};
use kiln_nn::{Module, Optimizer};
use kiln_ops::softmax;
use std::collections::{HashMap, VecDeque};
use web_time::Instant;

/// A training loss read back by [`fit_async`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepLoss {
    /// The epoch, from 1.
    pub epoch: usize,
    /// The optimizer step, from 1 over the whole run.
    pub step: usize,
    /// The step's loss.
    pub loss: f32,
}

/// Loss readbacks allowed in flight before the loop awaits the oldest: enough to keep the GPU
/// busy, few enough that the reported losses trail the steps by little.
const IN_FLIGHT: usize = 2;

/// One batch size's recorded step and the tensors it reads and writes.
struct Recorded {
    step: StepPlan,
    x: Tensor,
    y: Tensor,
    loss: Tensor,
}

/// [`fit`](crate::fit()) without blocking: trains `model` on `train` with `loss` for `cfg.epochs`
/// epochs (the same seeded shuffle, batches, recorded steps and loss readbacks every
/// `cfg.log_every` steps and at each epoch's last), calling `on_loss` with each loss read back
/// and `cfg`'s callbacks with each epoch's figures (held-out loss and accuracy where
/// `cfg.validation` is given).
///
/// `cfg.checkpoint`, `cfg.progress`, `cfg.distributed` and `cfg.finite_check_every` are not
/// used here (a distributed config is refused); a
/// non-finite loss ends the run with an error naming its step, or, with `cfg.skip_nonfinite`,
/// leaves the parameters untouched for that step.
pub async fn fit_async(
    dev: &Device,
    model: &dyn Module,
    opt: &mut Optimizer,
    loss: Loss,
    train: &dyn Dataset,
    mut cfg: FitConfig<'_>,
    mut on_loss: impl FnMut(&StepLoss),
) -> Result<Vec<EpochStats>> {
    crate::fit::check_run(train, cfg.validation, loss, &cfg)?;
    if cfg.distributed.is_some() {
        return Err(TrainError::Training(
            "fit_async trains in one process: use fit for data-parallel training".into(),
        ));
    }
    let mut callbacks = std::mem::take(&mut cfg.callbacks);
    let cfg = &cfg;
    let val = cfg.validation;
    // Read on this thread: a page has no other.
    let loader = DataLoader::new(train)
        .with_batch_size(cfg.batch_size)
        .with_shuffle(true)
        .with_seed(cfg.seed)
        .with_prefetch(0);
    let mut plans: HashMap<usize, Recorded> = HashMap::new();
    let mut history = cfg.history.clone();
    let mut step = opt.steps() as usize;
    let mut classes: Option<usize> = None;
    let log_every = cfg.log_every.max(1);
    for epoch in cfg.start_epoch + 1..=cfg.epochs {
        let t0 = Instant::now();
        let mut tally = LossTally::default();
        let mut reads: VecDeque<(usize, ReadTicket)> = VecDeque::new();
        let last = loader.len();
        for batch in loader.batches(epoch as u64)? {
            let batch = batch?;
            let (b, xb, yb) = (batch.index, batch.x, batch.y);
            let n = batch.indices.len();
            if let BatchTargets::Classes(y) = &yb {
                softmax::check_labels(y, classes.unwrap_or(i32::MAX as usize), None)?;
            }
            // A replayed step begins the optimizer's step now; a recorded one in its `step`.
            if plans.contains_key(&n) {
                opt.prepare_replay()?;
            }
            if step > 0 {
                model.advance_rng()?;
            }
            step += 1;
            let read = step.is_multiple_of(log_every) || b + 1 == last;
            if let Some(r) = plans.get(&n) {
                xb.write(&r.x)?;
                yb.write(&r.y)?;
                if read {
                    // Rides in this step's submission, after the replayed dispatches.
                    reads.push_back((step, dev.read_async(&r.loss.array().buf)?));
                }
                r.step.replay()?;
            } else {
                let x = xb.upload(dev, &train.batch_shape(n))?;
                let y = yb.upload(dev)?;
                let (plan, loss, width) = crate::fit::record_step(
                    dev,
                    model,
                    opt,
                    loss,
                    (&x, &y, &yb),
                    cfg.skip_nonfinite,
                )?;
                classes = width.or(classes);
                if read {
                    reads.push_back((step, dev.read_async(&loss.array().buf)?));
                }
                dev.flush()?;
                plans.insert(
                    n,
                    Recorded {
                        step: plan,
                        x,
                        y,
                        loss,
                    },
                );
            }
            // Losses that have come back, and the oldest once too many are in flight: awaiting
            // it lets the page draw while the GPU works.
            while let Some((at, t)) = reads.front() {
                let v = if reads.len() > IN_FLIGHT {
                    t.read::<f32>().await?
                } else {
                    match t.try_read::<f32>()? {
                        Some(v) => v,
                        None => break,
                    }
                };
                let at = *at;
                crate::fit::record_loss(at, epoch, v[0], &mut tally, cfg.skip_nonfinite)?;
                on_loss(&StepLoss {
                    epoch,
                    step: at,
                    loss: v[0],
                });
                reads.pop_front();
            }
        }
        for (at, t) in reads.drain(..) {
            let v = t.read::<f32>().await?;
            crate::fit::record_loss(at, epoch, v[0], &mut tally, cfg.skip_nonfinite)?;
            on_loss(&StepLoss {
                epoch,
                step: at,
                loss: v[0],
            });
        }
        dev.wait_async().await?;
        let secs = t0.elapsed().as_secs_f64();
        let (val_loss, val_accuracy) = match val {
            Some(v) => {
                let (l, a) = evaluate_async(dev, model, v, loss, cfg.eval_batch_size).await?;
                (Some(l), a)
            }
            None => (None, None),
        };
        let stats = EpochStats {
            epoch,
            train_loss: tally.mean(),
            val_loss,
            val_accuracy,
            train_seconds: secs,
            samples_per_second: train.len() as f64 / secs,
            skipped_steps: tally.skipped,
        };
        for c in &mut callbacks {
            c(&stats);
        }
        history.push(stats);
    }
    Ok(history)
}

/// [`evaluate`](crate::evaluate) without blocking: mean loss and, for classification losses,
/// accuracy of `model` on `data`, in batches of `batch`, without gradients.
pub async fn evaluate_async(
    dev: &Device,
    model: &dyn Module,
    data: &dyn Dataset,
    loss: Loss,
    batch: usize,
) -> Result<(f32, Option<f32>)> {
    data.check()?;
    let (mut correct, mut counted, mut loss_sum) = (0usize, 0usize, 0.0f64);
    let ids: Vec<usize> = (0..data.len()).collect();
    for idx in ids.chunks(batch.max(1)) {
        let n = idx.len();
        let (xb, yb) = data.get_batch(idx)?;
        // The graph is built without gradients; the reads are awaited outside it.
        let (l, pred, out) = no_grad(|| {
            let out = model.forward(&xb.upload(dev, &data.batch_shape(n))?)?;
            let l = loss_of(&out, &yb.upload(dev)?, loss)?;
            let pred = match loss {
                Loss::CrossEntropy => Some(out.argmax(1)?),
                _ => None,
            };
            Ok::<_, TrainError>((l, pred, out))
        })?;
        loss_sum += l.item_async().await? as f64 * n as f64;
        match (&yb, loss) {
            (BatchTargets::Classes(t), Loss::CrossEntropy) => {
                if let Some(p) = pred {
                    let p = p.to_vec_i32_async().await?;
                    correct += p.iter().zip(t).filter(|(p, t)| p == t).count();
                    counted += t.len();
                }
            }
            (BatchTargets::Values(t, _), Loss::BinaryCrossEntropy) => {
                let o = out.to_vec_async().await?;
                correct += o
                    .iter()
                    .zip(t)
                    .filter(|(z, t)| (**z > 0.0) == (**t > 0.5))
                    .count();
                counted += t.len();
            }
            _ => {}
        }
    }
    let acc = (loss != Loss::Mse).then(|| correct as f32 / counted.max(1) as f32);
    Ok((loss_sum as f32 / data.len().max(1) as f32, acc))
}
