//! The language-model training loop: one recorded step replayed on fresh random windows, with
//! periodic evaluation and checkpoints.

use crate::checkpoint::{save_training, CheckpointConfig};
use crate::error::{Result, TrainError};
use crate::finite::FiniteWatch;
use crate::history::EpochStats;
use crate::parallel::{DataParallel, Share};
use kiln_graph::{autocast_f16_when, no_grad, Device, StepPlan, Tensor};
use kiln_nn::init::Rng;
use kiln_nn::lm::{sample_windows, CharCorpus, LanguageModel};
use kiln_nn::Optimizer;

/// Language-model training options.
#[derive(Clone, Debug)]
pub struct LmConfig {
    /// Windows per step.
    pub batch: usize,
    /// Optimizer steps.
    pub steps: usize,
    /// Evaluate every this many steps (and at the end).
    pub eval_every: usize,
    /// Validation batches per evaluation.
    pub eval_batches: usize,
    /// Seed of the window sampling (each step's windows come from (seed, step), so a resumed
    /// run draws exactly what the uninterrupted one would have).
    pub seed: u64,
    /// Write a training checkpoint every this many evaluations (`every_epochs`) and at the end.
    pub checkpoint: Option<CheckpointConfig>,
    /// Evaluations before a resume (from `checkpoint::load_training`), kept in the history.
    pub history: Vec<EpochStats>,
    /// Run the training forward pass under `autocast_f16` (mixed precision: f16 matmuls with f32
    /// sums, f32 master weights and gradients).
    pub mixed_precision: bool,
    /// Check every parameter and optimizer state tensor for NaN and infinities on the device
    /// every this many steps, in the step's own submission; 0 (the default) checks at each
    /// evaluation only. An error names the tensor and the step after which it went bad: 1 finds
    /// the exact step. The state is also checked once before the first step.
    pub finite_check_every: usize,
}

impl Default for LmConfig {
    /// Batches of 32 windows, 1,000 steps, an evaluation of 10 batches every 100 steps, seed 0,
    /// no checkpoint, f32.
    fn default() -> Self {
        LmConfig {
            batch: 32,
            steps: 1000,
            eval_every: 100,
            eval_batches: 10,
            seed: 0,
            checkpoint: None,
            history: Vec::new(),
            mixed_precision: false,
            finite_check_every: 0,
        }
    }
}

impl LmConfig {
    /// Sets [`LmConfig::batch`].
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch;
        self
    }
    /// Sets [`LmConfig::steps`].
    pub fn with_steps(mut self, steps: usize) -> Self {
        self.steps = steps;
        self
    }
    /// Sets [`LmConfig::eval_every`].
    pub fn with_eval_every(mut self, steps: usize) -> Self {
        self.eval_every = steps;
        self
    }
    /// Sets [`LmConfig::eval_batches`].
    pub fn with_eval_batches(mut self, batches: usize) -> Self {
        self.eval_batches = batches;
        self
    }
    /// Sets [`LmConfig::seed`].
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Sets [`LmConfig::checkpoint`].
    pub fn with_checkpoint(mut self, checkpoint: CheckpointConfig) -> Self {
        self.checkpoint = Some(checkpoint);
        self
    }
    /// Sets [`LmConfig::mixed_precision`].
    pub fn with_mixed_precision(mut self, on: bool) -> Self {
        self.mixed_precision = on;
        self
    }
    /// Sets [`LmConfig::finite_check_every`].
    pub fn with_finite_check_every(mut self, steps: usize) -> Self {
        self.finite_check_every = steps;
        self
    }
}

fn as_row(s: &LmStats, secs: f64) -> EpochStats {
    EpochStats {
        epoch: s.step,
        train_loss: s.train_loss,
        val_loss: Some(s.val_loss),
        val_accuracy: None,
        train_seconds: secs,
        samples_per_second: s.chars_per_second,
        skipped_steps: 0,
    }
}

/// The loss of `step`, or an error naming the step where it is NaN or infinite (every step's loss
/// is read, so this is the exact step).
fn finite_loss(loss: f32, step: usize) -> Result<f32> {
    if loss.is_finite() {
        Ok(loss)
    } else {
        Err(TrainError::Training(format!(
            "loss became {loss} at step {step}"
        )))
    }
}

/// How a finite-check verdict names the state it saw.
fn after_step(step: usize) -> String {
    if step == 0 {
        "loading, before the first step".into()
    } else {
        format!("step {step}")
    }
}

/// One evaluation point.
#[derive(Clone, Debug)]
pub struct LmStats {
    /// Steps taken.
    pub step: usize,
    /// Mean training loss since the previous point (nats per character).
    pub train_loss: f32,
    /// Validation loss (nats per character).
    pub val_loss: f32,
    /// Training windows' characters per second since the previous point.
    pub chars_per_second: f64,
}

/// Mean cross-entropy (nats per character) on `batches` seeded validation windows, without grads.
pub fn evaluate_lm(
    dev: &Device,
    model: &dyn LanguageModel,
    data: &[i32],
    batch: usize,
    batches: usize,
    seed: u64,
) -> Result<f32> {
    let t = model.context();
    let mut rng = Rng::new(seed);
    no_grad(|| {
        let mut sum = 0.0;
        for _ in 0..batches {
            let (x, y) = sample_windows(data, batch, t, &mut rng);
            let logits = model.logits(&Tensor::from_i32(dev, &x, &[batch, t])?)?;
            sum += logits
                .cross_entropy(&Tensor::from_i32(dev, &y, &[batch * t])?, None)?
                .item()? as f64;
        }
        Ok((sum / batches.max(1) as f64) as f32)
    })
}

/// Trains from the optimizer's current step to `cfg.steps`: one recorded step, replayed on fresh
/// random windows. Returns the history of evaluations (rows as `fit`'s, `epoch` = step), earlier
/// ones from `cfg.history` included; `on_eval` sees each new one.
pub fn train_lm(
    dev: &Device,
    model: &dyn LanguageModel,
    opt: &mut Optimizer,
    corpus: &CharCorpus,
    cfg: &LmConfig,
    on_eval: impl FnMut(&LmStats),
) -> Result<Vec<EpochStats>> {
    train_lm_inner(dev, model, opt, corpus, cfg, None, on_eval)
}

/// [`train_lm`] in one of several processes that train one model together (see
/// [`crate::parallel`]): each step's `cfg.batch` windows are the ones a single process would
/// draw, and this process trains on its share of them. Every process returns the same history;
/// only rank 0 writes checkpoints.
pub fn train_lm_parallel(
    dev: &Device,
    model: &dyn LanguageModel,
    opt: &mut Optimizer,
    corpus: &CharCorpus,
    cfg: &LmConfig,
    parallel: &mut dyn DataParallel,
    on_eval: impl FnMut(&LmStats),
) -> Result<Vec<EpochStats>> {
    train_lm_inner(dev, model, opt, corpus, cfg, Some(parallel), on_eval)
}

fn train_lm_inner(
    dev: &Device,
    model: &dyn LanguageModel,
    opt: &mut Optimizer,
    corpus: &CharCorpus,
    cfg: &LmConfig,
    mut parallel: Option<&mut dyn DataParallel>,
    mut on_eval: impl FnMut(&LmStats),
) -> Result<Vec<EpochStats>> {
    let t = model.context();
    if corpus.train.len() <= t + 1 || corpus.val.len() <= t + 1 {
        return Err(TrainError::Training(format!(
            "text too short for a context of {t}"
        )));
    }
    if cfg.batch == 0 || cfg.steps == 0 || t == 0 {
        return Err(TrainError::Training(format!(
            "batch {}, steps {} and context {t} must all be at least 1",
            cfg.batch, cfg.steps
        )));
    }
    if opt.steps() as usize > cfg.steps {
        return Err(TrainError::Training(format!(
            "the run has {} steps done already, more than the {} asked for: nothing to train (ask for at least {} steps to continue it)",
            opt.steps(),
            cfg.steps,
            opt.steps()
        )));
    }
    let (rank, world) = parallel
        .as_ref()
        .map_or((0, 1), |p| (p.rank(), p.world_size()));
    let share = Share::of(cfg.batch, rank, world);
    if let Some(p) = parallel.as_deref_mut() {
        if cfg.batch < world {
            return Err(TrainError::Training(format!(
                "{world} processes need a batch of at least {world} windows (batch {})",
                cfg.batch
            )));
        }
        p.broadcast(model, opt)?;
    }
    let watch = FiniteWatch::new(dev, model, opt)?;
    watch.check_now(dev, "loading, before the first step")?;
    // The windows a single process would draw at this step, of which this one takes its share.
    let windows = |step: usize| {
        let mut rng = Rng::new(cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step as u64);
        let (x, y) = sample_windows(&corpus.train, cfg.batch, t, &mut rng);
        if world == 1 {
            return (x, y);
        }
        let rows = share.start * t..(share.start + share.len) * t;
        (x[rows.clone()].to_vec(), y[rows].to_vec())
    };
    let mut history = cfg.history.clone();
    let mut recorded: Option<(StepPlan, Tensor, Tensor, Tensor)> = None;
    // A data-parallel step: its id, inputs and loss.
    let mut parallel_step: Option<(usize, Tensor, Tensor)> = None;
    let mut reads = std::collections::VecDeque::new();
    let (mut sum, mut n, mut since, mut evals) = (0.0f64, 0usize, 0usize, 0usize);
    let mut t0 = web_time::Instant::now();
    for step in opt.steps() as usize + 1..=cfg.steps {
        let (xb, yb) = windows(step);
        // A replayed step begins the optimizer's step now; a recorded one in its `step`.
        if recorded.is_some() || parallel_step.is_some() {
            opt.prepare_replay()?;
        }
        if step > 1 {
            model.advance_rng()?;
        }
        // The state this step starts from, checked in its submission (after its host writes,
        // which would otherwise submit the checks on their own).
        let check = || -> Result<Option<kiln_device::ReadTicket>> {
            if cfg.finite_check_every == 0 || !step.is_multiple_of(cfg.finite_check_every) {
                return Ok(None);
            }
            watch.launch(dev)?;
            Ok(Some(watch.read(dev)?))
        };
        if let Some(p) = parallel.as_deref_mut() {
            // Data-parallel: synchronous (the update needs every process's gradients), the
            // combined loss coming back with them.
            let flags = check()?;
            let loss = match &parallel_step {
                Some((id, x, y)) => {
                    x.copy_from_slice(&xb)?;
                    y.copy_from_slice(&yb)?;
                    p.replay_step(*id, share)?
                }
                None => {
                    let x = Tensor::from_i32(dev, &xb, &[share.len, t])?;
                    let y = Tensor::from_i32(dev, &yb, &[share.len * t])?;
                    let (id, _, mean) = p.record_step(opt, false, share, &mut || {
                        let logits = autocast_f16_when(cfg.mixed_precision, || model.logits(&x))?;
                        Ok(logits.cross_entropy(&y, None)?)
                    })?;
                    parallel_step = Some((id, x, y));
                    mean
                }
            };
            if let Some(f) = flags {
                watch.verdict(&f.wait::<u32>()?, &after_step(step - 1))?;
            }
            sum += finite_loss(loss, step)? as f64;
            n += 1;
        } else if let Some((plan, x, y, loss)) = &recorded {
            x.copy_from_slice(&xb)?;
            y.copy_from_slice(&yb)?;
            let flags = check()?;
            reads.push_back((step, dev.read_async(&loss.array().buf)?, flags));
            plan.replay()?;
        } else {
            if let Some(f) = check()? {
                watch.verdict(&f.wait::<u32>()?, &after_step(step - 1))?;
            }
            let x = Tensor::from_i32(dev, &xb, &[cfg.batch, t])?;
            let y = Tensor::from_i32(dev, &yb, &[cfg.batch * t])?;
            opt.zero_grad();
            let (plan, loss) = StepPlan::record(dev, || {
                let logits = autocast_f16_when(cfg.mixed_precision, || model.logits(&x))?;
                let loss = logits.cross_entropy(&y, None)?;
                loss.backward()?;
                opt.step()?;
                Ok::<_, TrainError>(loss)
            })?;
            // Recording happens once per run: a synchronous read costs nothing here.
            sum += finite_loss(loss.item()?, step)? as f64;
            n += 1;
            recorded = Some((plan, x, y, loss));
        }
        since += 1;
        while let Some((at, r, f)) = reads.front() {
            let Some(v) = r.try_read::<f32>()? else { break };
            if let Some(f) = f {
                // Polled like the loss, never waited for (a wait would drain the queue).
                let Some(flags) = f.try_read::<u32>()? else {
                    break;
                };
                watch.verdict(&flags, &after_step(*at - 1))?;
            }
            sum += finite_loss(v[0], *at)? as f64;
            n += 1;
            reads.pop_front();
        }
        if step % cfg.eval_every.max(1) == 0 || step == cfg.steps {
            watch.launch(dev)?;
            let last = watch.read(dev)?;
            for (at, r, f) in reads.drain(..) {
                if let Some(f) = f {
                    watch.verdict(&f.wait::<u32>()?, &after_step(at - 1))?;
                }
                sum += finite_loss(r.wait::<f32>()?[0], at)? as f64;
                n += 1;
            }
            watch.verdict(&last.wait::<u32>()?, &after_step(step))?;
            dev.wait()?;
            let secs = t0.elapsed().as_secs_f64();
            let train_loss = (sum / n.max(1) as f64) as f32;
            if !train_loss.is_finite() {
                return Err(TrainError::Training(format!(
                    "loss became {train_loss} by step {step}"
                )));
            }
            let val_loss = evaluate_lm(dev, model, &corpus.val, cfg.batch, cfg.eval_batches, 1234)?;
            let s = LmStats {
                step,
                train_loss,
                val_loss,
                chars_per_second: (since * cfg.batch * t) as f64 / secs,
            };
            on_eval(&s);
            history.push(as_row(&s, secs));
            evals += 1;
            if let (Some(c), 0) = (&cfg.checkpoint, rank) {
                if evals % c.every_epochs.max(1) == 0 || step == cfg.steps {
                    save_training(&c.path, model, opt, &history, &c.settings)?;
                }
            }
            (sum, n, since) = (0.0, 0, 0);
            t0 = web_time::Instant::now();
        }
    }
    Ok(history)
}
