//! The training loop: each step (forward, loss, backward, update) recorded once per batch size and
//! replayed with new data; evaluation and prediction without gradients; and a Keras-style
//! `compile` / `fit` / `evaluate` / `predict` face over them.

use crate::checkpoint::{save_training, CheckpointConfig};
use crate::data::{BatchTargets, DataLoader, Dataset, TargetKind};
use crate::error::{Result, TrainError};
use crate::finite::FiniteWatch;
use crate::history::EpochStats;
use crate::parallel::DataParallel;
use crate::progress::progress_bar;
use kiln_device::ReadTicket;
use kiln_graph::{no_grad, Device, StepPlan, Tensor};
use kiln_nn::data::gather_rows;
use kiln_nn::loss::{loss_of, Loss};
use kiln_nn::{Module, Optimizer};
use kiln_ops::softmax;
use std::collections::{HashMap, VecDeque};
use web_time::Instant;

/// Default examples per step of [`evaluate`] and [`predict`] (and of the validation pass in
/// [`fit`]).
pub const EVAL_BATCH_SIZE: usize = 500;

/// A function [`fit`] calls after every epoch with its figures.
pub type EpochCallback<'a> = Box<dyn FnMut(&EpochStats) + 'a>;

/// What [`fit`] does, built as `FitConfig::default().with_epochs(3).with_batch_size(64)`.
///
/// The defaults are Keras' `fit`: one epoch, batches of 32, shuffled every epoch. Besides the
/// settings it carries what a run is given besides its training data: held-out data
/// ([`FitConfig::with_validation`]), the data-parallel hook ([`FitConfig::with_distributed`]) and
/// the per-epoch callbacks ([`FitConfig::with_callback`]).
pub struct FitConfig<'a> {
    /// Examples per step (the global batch when distributed); a final shorter batch gets its own
    /// recorded plan. Default 32.
    pub batch_size: usize,
    /// Passes over the data. Default 1.
    pub epochs: usize,
    /// Seed of the shuffling (epoch e uses seed + e). Default 0.
    pub seed: u64,
    /// Read the loss back (asynchronously) every this many steps, and at each epoch's last step.
    /// Default 10.
    pub log_every: usize,
    /// Check every parameter and optimizer state tensor for NaN and infinities on the device
    /// every this many steps; 0 (the default) checks wherever the loss is read (`log_every`).
    /// The checks ride in the step's own submission and come back with its loss, and an error
    /// names the tensor and the step after which it went bad: 1 finds the exact step. The model
    /// and optimizer are also checked once before the first step (after a resume's load), and
    /// after each epoch's last step.
    pub finite_check_every: usize,
    /// Show a progress bar (loss, samples/s) when standard error is a terminal; plain per-epoch
    /// lines from the callbacks are the only output otherwise (CI logs). Default true.
    pub progress: bool,
    /// Epochs already done (from a resumed checkpoint); training runs epochs start_epoch+1..=epochs.
    pub start_epoch: usize,
    /// Write a training checkpoint (see [`save_training`]) every N epochs. Default none.
    pub checkpoint: Option<CheckpointConfig>,
    /// Statistics of the epochs before `start_epoch` (from a resumed checkpoint); the returned
    /// history and later checkpoints include them.
    pub history: Vec<EpochStats>,
    /// Skip (on the device, without updating anything) any step whose loss is NaN or infinite,
    /// instead of stopping the run with an error naming the step. Default false.
    pub skip_nonfinite: bool,
    /// Held-out data evaluated after every epoch (loss, and accuracy for classification losses).
    pub validation: Option<&'a dyn Dataset>,
    /// Examples per step of the validation pass. Default [`EVAL_BATCH_SIZE`].
    pub eval_batch_size: usize,
    /// Data-parallel training (see [`crate::parallel`]): this process trains on its share of
    /// every global batch; every epoch covers each example exactly once across the processes.
    /// Every process returns the same history; only rank 0 writes checkpoints and shows progress.
    pub distributed: Option<&'a mut dyn DataParallel>,
    /// Called after every epoch with its figures, in the order added.
    pub callbacks: Vec<EpochCallback<'a>>,
}

impl Default for FitConfig<'_> {
    fn default() -> Self {
        FitConfig {
            batch_size: 32,
            epochs: 1,
            seed: 0,
            log_every: 10,
            finite_check_every: 0,
            progress: true,
            start_epoch: 0,
            checkpoint: None,
            history: Vec::new(),
            skip_nonfinite: false,
            validation: None,
            eval_batch_size: EVAL_BATCH_SIZE,
            distributed: None,
            callbacks: Vec::new(),
        }
    }
}

impl std::fmt::Debug for FitConfig<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FitConfig")
            .field("batch_size", &self.batch_size)
            .field("epochs", &self.epochs)
            .field("seed", &self.seed)
            .field("log_every", &self.log_every)
            .field("finite_check_every", &self.finite_check_every)
            .field("progress", &self.progress)
            .field("start_epoch", &self.start_epoch)
            .field("checkpoint", &self.checkpoint)
            .field("skip_nonfinite", &self.skip_nonfinite)
            .field("validation", &self.validation.map(|v| v.len()))
            .field("eval_batch_size", &self.eval_batch_size)
            .field("distributed", &self.distributed.is_some())
            .field("callbacks", &self.callbacks.len())
            .finish()
    }
}

impl<'a> FitConfig<'a> {
    /// Sets [`FitConfig::epochs`].
    pub fn with_epochs(mut self, epochs: usize) -> Self {
        self.epochs = epochs;
        self
    }
    /// Sets [`FitConfig::batch_size`].
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }
    /// Sets [`FitConfig::seed`].
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Sets [`FitConfig::log_every`].
    pub fn with_log_every(mut self, steps: usize) -> Self {
        self.log_every = steps;
        self
    }
    /// Sets [`FitConfig::finite_check_every`].
    pub fn with_finite_check_every(mut self, steps: usize) -> Self {
        self.finite_check_every = steps;
        self
    }
    /// Sets [`FitConfig::progress`].
    pub fn with_progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }
    /// Continues a resumed run: `epochs_done` epochs are done, with these statistics.
    pub fn with_resume(mut self, epochs_done: usize, history: Vec<EpochStats>) -> Self {
        self.start_epoch = epochs_done;
        self.history = history;
        self
    }
    /// Sets [`FitConfig::checkpoint`].
    pub fn with_checkpoint(mut self, checkpoint: CheckpointConfig) -> Self {
        self.checkpoint = Some(checkpoint);
        self
    }
    /// Sets [`FitConfig::skip_nonfinite`].
    pub fn with_skip_nonfinite(mut self, skip: bool) -> Self {
        self.skip_nonfinite = skip;
        self
    }
    /// Evaluates on `data` after every epoch.
    pub fn with_validation(mut self, data: &'a dyn Dataset) -> Self {
        self.validation = Some(data);
        self
    }
    /// Sets [`FitConfig::eval_batch_size`].
    pub fn with_eval_batch_size(mut self, batch_size: usize) -> Self {
        self.eval_batch_size = batch_size;
        self
    }
    /// Trains as one of several processes through `parallel` (kiln-dist's
    /// `DistributedDataParallel` implements it).
    pub fn with_distributed(mut self, parallel: &'a mut dyn DataParallel) -> Self {
        self.distributed = Some(parallel);
        self
    }
    /// Adds a callback run after every epoch with its figures.
    pub fn with_callback(mut self, on_epoch: impl FnMut(&EpochStats) + 'a) -> Self {
        self.callbacks.push(Box::new(on_epoch));
        self
    }
}

struct Recorded {
    /// The whole step as one plan, or the id of a step a [`DataParallel`] recorded.
    step: Result<StepPlan, usize>,
    x: Tensor,
    y: Tensor,
    loss: Tensor,
}

/// The data and settings of a run, checked before its first step.
pub(crate) fn check_run(
    train: &dyn Dataset,
    val: Option<&dyn Dataset>,
    loss: Loss,
    cfg: &FitConfig,
) -> Result<()> {
    train.check()?;
    if let Some(v) = val {
        v.check()?;
    }
    if cfg.batch_size == 0 || train.is_empty() {
        return Err(TrainError::Training(format!(
            "batch size {} over {} training examples: both must be at least 1",
            cfg.batch_size,
            train.len()
        )));
    }
    if cfg.epochs == 0 {
        return Err(TrainError::Training("epochs must be at least 1".into()));
    }
    if cfg.start_epoch > cfg.epochs {
        return Err(TrainError::Training(format!(
            "the run has {} epochs done already, more than the {} asked for: nothing to train (ask for at least {} epochs to continue it)",
            cfg.start_epoch, cfg.epochs, cfg.start_epoch
        )));
    }
    let classes = matches!(train.targets(), TargetKind::Classes | TargetKind::Tokens);
    if classes != (loss == Loss::CrossEntropy) {
        return Err(TrainError::Training(format!(
            "loss {loss:?} does not fit targets {:?}",
            train.targets()
        )));
    }
    Ok(())
}

/// Trains `model` on `train` with `loss`; returns one [`EpochStats`] per epoch (after those of
/// `cfg.history`) and calls `cfg`'s callbacks after each.
///
/// Each training step (forward, loss, backward, update) is recorded once per batch size and
/// replayed with the next batch.
pub fn fit(
    dev: &Device,
    model: &dyn Module,
    opt: &mut Optimizer,
    loss: Loss,
    train: &dyn Dataset,
    mut cfg: FitConfig<'_>,
) -> Result<Vec<EpochStats>> {
    check_run(train, cfg.validation, loss, &cfg)?;
    let mut parallel = cfg.distributed.take();
    let mut callbacks = std::mem::take(&mut cfg.callbacks);
    let cfg = &cfg;
    let val = cfg.validation;
    let (rank, world) = parallel
        .as_ref()
        .map_or((0, 1), |p| (p.rank(), p.world_size()));
    if let Some(p) = parallel.as_deref_mut() {
        if cfg.batch_size < world || train.len() < world {
            return Err(TrainError::Training(format!(
                "{world} processes need a batch size and a data set of at least {world} \
                 examples each (batch size {}, {} examples)",
                cfg.batch_size,
                train.len()
            )));
        }
        p.broadcast(model, opt)?;
    }
    let loader = DataLoader::new(train)
        .with_batch_size(cfg.batch_size)
        .with_shuffle(true)
        .with_seed(cfg.seed)
        .with_shard(rank, world);
    let mut plans: HashMap<usize, Recorded> = HashMap::new();
    let mut history = cfg.history.clone();
    // Continues a resumed run's step count (dropout offsets advance from it).
    let mut step = opt.steps() as usize;
    let mut classes: Option<usize> = None;
    let mut reads: VecDeque<(usize, ReadTicket, Option<ReadTicket>)> = VecDeque::new();
    let log_every = cfg.log_every.max(1);
    let check_every = match cfg.finite_check_every {
        0 => log_every,
        k => k,
    };
    let watch = FiniteWatch::new(dev, model, opt)?;
    watch.check_now(dev, "loading, before the first step")?;
    for epoch in cfg.start_epoch + 1..=cfg.epochs {
        let t0 = Instant::now();
        let mut tally = LossTally::default();
        let bar = progress_bar(
            cfg.progress && rank == 0,
            train.len().div_ceil(cfg.batch_size),
            epoch,
            cfg.epochs,
        );
        let last = loader.len();
        loader.for_each(epoch as u64, |batch| {
            let (b, share, xb, yb) = (batch.index, batch.share, batch.x, batch.y);
            let n = batch.indices.len();
            if let BatchTargets::Classes(y) = &yb {
                // Until the first plan exists the class count is unknown: negatives are caught
                // now, the upper bound once the logits' width is known.
                softmax::check_labels(y, classes.unwrap_or(i32::MAX as usize), None)?;
            }
            // A replayed step (or one without examples here) begins the optimizer's step now;
            // a recorded one begins it in `Optimizer::step`.
            if plans.contains_key(&n) || (n == 0 && parallel.is_some()) {
                opt.prepare_replay()?;
            }
            if step > 0 {
                model.advance_rng()?;
            }
            step += 1;
            // Every log_every steps, and the epoch's last step so every epoch reports a loss.
            let read = step.is_multiple_of(log_every) || b + 1 == last;
            // The state this step starts from (the previous step's update) is checked in this
            // step's submission, ahead of its dispatches, and read back with its loss. Launched
            // after the step's host writes, which would otherwise submit the checks on their own.
            let check = || -> Result<Option<ReadTicket>> {
                if !step.is_multiple_of(check_every) {
                    return Ok(None);
                }
                watch.launch(dev)?;
                Ok(Some(watch.read(dev)?))
            };
            if let Some(p) = parallel.as_deref_mut() {
                // Data-parallel: the step is synchronous (its update needs every process's
                // gradients), and the combined loss comes back with them.
                let flags = check()?;
                let loss = if n == 0 {
                    // A last batch with fewer examples than processes left none to this one.
                    p.empty_step(share)?
                } else if let Some(Recorded {
                    step: Err(id),
                    x,
                    y,
                    ..
                }) = plans.get(&n)
                {
                    xb.write(x)?;
                    yb.write(y)?;
                    p.replay_step(*id, share)?
                } else {
                    let x = xb.upload(dev, &train.batch_shape(n))?;
                    let y = yb.upload(dev)?;
                    let mut width = 0;
                    let (id, loss, mean) =
                        p.record_step(opt, cfg.skip_nonfinite, share, &mut || {
                            let out = model.forward(&x)?;
                            width = *out.shape().last().unwrap_or(&0);
                            Ok(loss_of(&out, &y, loss)?)
                        })?;
                    if let BatchTargets::Classes(yv) = &yb {
                        classes = Some(width);
                        softmax::check_labels(yv, width, None)?;
                    }
                    let step = Err(id);
                    plans.insert(n, Recorded { step, x, y, loss });
                    mean
                };
                if let Some(f) = flags {
                    watch.verdict(&f.wait::<u32>()?, &after_step(step - 1))?;
                }
                if read || step.is_multiple_of(check_every) {
                    record_loss(step, epoch, loss, &mut tally, cfg.skip_nonfinite)?;
                }
            } else if let Some(r) = plans.get(&n) {
                xb.write(&r.x)?;
                yb.write(&r.y)?;
                let flags = check()?;
                if read || flags.is_some() {
                    // Rides in this step's submission, after the replayed dispatches.
                    reads.push_back((step, dev.read_async(&r.loss.array().buf)?, flags));
                }
                if let Ok(plan) = &r.step {
                    plan.replay()?;
                }
            } else {
                let flags = check()?;
                let x = xb.upload(dev, &train.batch_shape(n))?;
                let y = yb.upload(dev)?;
                let (plan, loss, width) =
                    record_step(dev, model, opt, loss, (&x, &y, &yb), cfg.skip_nonfinite)?;
                classes = width.or(classes);
                // Recording happens once per batch size: a synchronous read costs nothing there.
                if let Some(f) = flags {
                    watch.verdict(&f.wait::<u32>()?, &after_step(step - 1))?;
                }
                if read || step.is_multiple_of(check_every) {
                    record_loss(step, epoch, loss.item()?, &mut tally, cfg.skip_nonfinite)?;
                }
                let step = Ok(plan);
                plans.insert(n, Recorded { step, x, y, loss });
            }
            // Collect finished readbacks without waiting for the GPU.
            while let Some((at, t, f)) = reads.front() {
                let Some(v) = t.try_read::<f32>()? else { break };
                if let Some(f) = f {
                    // Same submission as the loss, but its mapping may land a moment later:
                    // polled like the loss, never waited for (a wait would drain the queue).
                    let Some(flags) = f.try_read::<u32>()? else {
                        break;
                    };
                    watch.verdict(&flags, &after_step(*at - 1))?;
                }
                record_loss(*at, epoch, v[0], &mut tally, cfg.skip_nonfinite)?;
                reads.pop_front();
            }
            if let Some(b) = &bar {
                b.inc(1);
                let rate =
                    (b.position() as usize * cfg.batch_size) as f64 / t0.elapsed().as_secs_f64();
                // No loss has come back yet at the start of an epoch.
                let loss = if tally.n > 0 {
                    format!("{:.4}", tally.sum / tally.n as f64)
                } else {
                    "-".into()
                };
                b.set_message(format!("loss {loss}  {rate:.0} samples/s"));
            }
            Ok(())
        })?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        // The epoch's last update, checked before its statistics and checkpoint.
        watch.launch(dev)?;
        let last = watch.read(dev)?;
        for (at, t, f) in reads.drain(..) {
            if let Some(f) = f {
                watch.verdict(&f.wait::<u32>()?, &after_step(at - 1))?;
            }
            record_loss(
                at,
                epoch,
                t.wait::<f32>()?[0],
                &mut tally,
                cfg.skip_nonfinite,
            )?;
        }
        watch.verdict(&last.wait::<u32>()?, &after_step(step))?;
        dev.wait()?;
        let secs = t0.elapsed().as_secs_f64();
        let (val_loss, val_accuracy) = match val {
            Some(v) => {
                let (l, a) = evaluate(dev, model, v, loss, cfg.eval_batch_size)?;
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
        if let (Some(c), 0) = (&cfg.checkpoint, rank) {
            if epoch % c.every_epochs.max(1) == 0 || epoch == cfg.epochs {
                save_training(&c.path, model, opt, &history, &c.settings)?;
            }
        }
    }
    Ok(history)
}

/// Records the training step of a new batch size (fit's and fit_async's): a fresh plan (the
/// gradients zeroed, so none accumulate into another plan's), forward, loss, backward and the
/// update, guarded where non-finite losses are skipped. Class labels are checked against the
/// logits' width, which it returns for the later batches' checks (None for value targets).
pub(crate) fn record_step(
    dev: &Device,
    model: &dyn Module,
    opt: &mut Optimizer,
    loss: Loss,
    (x, y, targets): (&Tensor, &Tensor, &BatchTargets),
    skip_nonfinite: bool,
) -> Result<(StepPlan, Tensor, Option<usize>)> {
    opt.zero_grad();
    let (plan, (loss, width)) = StepPlan::record(dev, || {
        let out = model.forward(x)?;
        let width = *out.shape().last().unwrap_or(&0);
        let loss = loss_of(&out, y, loss)?;
        loss.backward()?;
        if skip_nonfinite {
            opt.step_guarded(Some(&loss.array().buf))?;
        } else {
            opt.step()?;
        }
        Ok::<_, TrainError>((loss, width))
    })?;
    let classes = match targets {
        BatchTargets::Classes(labels) => {
            softmax::check_labels(labels, width, None)?;
            Some(width)
        }
        BatchTargets::Values(..) => None,
    };
    Ok((plan, loss, classes))
}

/// How a finite-check verdict names the state it saw.
fn after_step(step: usize) -> String {
    if step == 0 {
        "loading, before the first step".into()
    } else {
        format!("step {step}")
    }
}

/// Running loss of an epoch: its sum and count, and the non-finite steps skipped.
#[derive(Default)]
pub(crate) struct LossTally {
    sum: f64,
    n: usize,
    pub(crate) skipped: usize,
}

impl LossTally {
    /// The mean of the finite losses counted (NaN where none was).
    pub(crate) fn mean(&self) -> f32 {
        if self.n > 0 {
            (self.sum / self.n as f64) as f32
        } else {
            f32::NAN
        }
    }
}

pub(crate) fn record_loss(
    step: usize,
    epoch: usize,
    loss: f32,
    tally: &mut LossTally,
    skip: bool,
) -> Result<()> {
    if !loss.is_finite() && skip {
        tally.skipped += 1;
        return Ok(());
    }
    let (sum, n) = (&mut tally.sum, &mut tally.n);
    if !loss.is_finite() {
        return Err(TrainError::Training(format!(
            "loss became {loss} at step {step} (epoch {epoch})"
        )));
    }
    *sum += loss as f64;
    *n += 1;
    Ok(())
}

/// Mean loss and, for classification losses, accuracy of `model` on `data`, without gradients.
pub fn evaluate(
    dev: &Device,
    model: &dyn Module,
    data: &dyn Dataset,
    loss: Loss,
    batch: usize,
) -> Result<(f32, Option<f32>)> {
    data.check()?;
    no_grad(|| {
        // Accuracy counts examples (cross-entropy) or output elements (binary cross-entropy).
        let (mut correct, mut counted, mut loss_sum) = (0usize, 0usize, 0.0f64);
        let ids: Vec<usize> = (0..data.len()).collect();
        for idx in ids.chunks(batch.max(1)) {
            let n = idx.len();
            let (xb, yb) = data.get_batch(idx)?;
            let out = model.forward(&xb.upload(dev, &data.batch_shape(n))?)?;
            let y = yb.upload(dev)?;
            loss_sum += loss_of(&out, &y, loss)?.item()? as f64 * n as f64;
            match (&yb, loss) {
                (BatchTargets::Classes(t), Loss::CrossEntropy) => {
                    let pred = out.argmax(1)?.to_vec_i32()?;
                    correct += pred.iter().zip(t).filter(|(p, t)| p == t).count();
                    counted += t.len();
                }
                (BatchTargets::Values(t, _), Loss::BinaryCrossEntropy) => {
                    let o = out.to_vec()?;
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
        Ok((loss_sum as f32 / data.len() as f32, acc))
    })
}

/// The model's outputs for every example, [n * out] row-major, without gradients.
pub fn predict(
    dev: &Device,
    model: &dyn Module,
    x: &[f32],
    shape: &[usize],
    batch: usize,
) -> Result<Vec<f32>> {
    let width: usize = shape.iter().product();
    if width == 0 || !x.len().is_multiple_of(width) {
        return Err(TrainError::Training(format!(
            "{} values are not whole examples of shape {shape:?}",
            x.len()
        )));
    }
    let n = x.len() / width;
    no_grad(|| {
        let mut out = Vec::new();
        let ids: Vec<usize> = (0..n).collect();
        for idx in ids.chunks(batch.max(1)) {
            let bs: Vec<usize> = std::iter::once(idx.len())
                .chain(shape.iter().copied())
                .collect();
            out.extend(
                model
                    .forward(&Tensor::from_f32(dev, &gather_rows(x, width, idx), &bs)?)?
                    .to_vec()?,
            );
        }
        Ok(out)
    })
}

/// A model compiled with an optimizer and a loss, as in Keras: `fit`, `evaluate`, `predict`.
pub struct Compiled<M: Module> {
    /// The model.
    pub model: M,
    /// Its optimizer.
    pub optimizer: Optimizer,
    /// The objective (accuracy is reported for the classification losses).
    pub loss: Loss,
    /// Examples per step of [`Compiled::evaluate`] and [`Compiled::predict`]; default
    /// [`EVAL_BATCH_SIZE`].
    pub eval_batch_size: usize,
    dev: Device,
}

impl<M: Module> Compiled<M> {
    /// `model.compile(optimizer, loss)`.
    pub fn compile(dev: &Device, model: M, optimizer: Optimizer, loss: Loss) -> Self {
        Compiled {
            model,
            optimizer,
            loss,
            eval_batch_size: EVAL_BATCH_SIZE,
            dev: dev.clone(),
        }
    }

    /// Sets [`Compiled::eval_batch_size`].
    pub fn with_eval_batch_size(mut self, batch_size: usize) -> Self {
        self.eval_batch_size = batch_size;
        self
    }

    /// [`fit`] with the compiled model, optimizer and loss; the model is in training mode
    /// during the run and in evaluation mode after it.
    pub fn fit(&mut self, train: &dyn Dataset, cfg: FitConfig<'_>) -> Result<Vec<EpochStats>> {
        self.model.set_training(true);
        let h = fit(
            &self.dev,
            &self.model,
            &mut self.optimizer,
            self.loss,
            train,
            cfg,
        );
        self.model.set_training(false);
        h
    }

    /// (loss, accuracy for classification losses), in batches of `eval_batch_size`.
    pub fn evaluate(&self, data: &dyn Dataset) -> Result<(f32, Option<f32>)> {
        evaluate(
            &self.dev,
            &self.model,
            data,
            self.loss,
            self.eval_batch_size,
        )
    }

    /// Raw outputs (logits) for every example, in batches of `eval_batch_size`.
    pub fn predict(&self, x: &[f32], shape: &[usize]) -> Result<Vec<f32>> {
        predict(&self.dev, &self.model, x, shape, self.eval_batch_size)
    }
}
