//! The GPT training recipe as nanoGPT and llm.c run it, as library parts: AdamW with GPT-2's
//! parameter groups (weight decay on matrices and embeddings only), gradient clipping, linear
//! warm-up then cosine decay ([`GptAdamW`]); a training step of several micro-batches whose
//! gradients accumulate before one clipped update, recorded once and replayed
//! ([`AccumulatedStep`]); and the model FLOPs behind MFU ([`gpt_flops_per_token`]).

use crate::error::{Result, TrainError};
use kiln_graph::{Array, Device, StepPlan, Tensor};
use kiln_nn::schedule::Schedule;
use kiln_nn::{AdamW, Module, Optimizer};
use std::collections::HashSet;

/// A model's parameters as GPT-2 recipes group them for weight decay (nanoGPT's
/// `configure_optimizers`): tensors of two or more dimensions (the matmul weights and the
/// embeddings) decay, the rest (biases, LayerNorm gains and shifts) do not. Returns (decayed,
/// not decayed), each in `named_parameters`' order.
pub fn decay_groups(named: &[(String, Tensor)]) -> (Vec<Tensor>, Vec<Tensor>) {
    named
        .iter()
        .map(|(_, t)| t.clone())
        .partition(|t| t.shape().len() >= 2)
}

/// AdamW as GPT-2 is trained with it: betas 0.9 and 0.95, eps 1e-8, weight decay 0.1 on the
/// matrices and embeddings only ([`decay_groups`]), the gradients' global norm clipped at 1.0,
/// and the learning rate warmed up linearly over `warmup_steps` then decayed along a cosine to
/// `min_lr_ratio` of its peak at `total_steps` (nanoGPT's and llm.c's `get_lr`).
///
/// ```no_run
/// # fn main() -> Result<(), kiln_train::TrainError> {
/// use kiln_train::gpt::GptAdamW;
/// # let dev = kiln_graph::Device::shared()?;
/// # let model = kiln_nn::LinearConfig::new(4, 2).init(&dev)?;
/// let opt = GptAdamW::new(6e-4, 700, 19_073).init(&dev, &model)?;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptAdamW {
    /// Peak learning rate.
    pub lr: f32,
    /// Decay rates of the moment estimates.
    pub betas: (f32, f32),
    /// Added to the denominator.
    pub eps: f32,
    /// Decoupled weight decay of the decayed group.
    pub weight_decay: f32,
    /// Largest global gradient norm (None: no clipping).
    pub clip_grad_norm: Option<f32>,
    /// Steps of linear warm-up from 0.
    pub warmup_steps: u64,
    /// The step where the cosine reaches its floor.
    pub total_steps: u64,
    /// The floor as a fraction of `lr`.
    pub min_lr_ratio: f32,
}

impl GptAdamW {
    /// The recipe at peak rate `lr`, warming up over `warmup_steps` of `total_steps`, with
    /// GPT-2's settings (betas 0.9/0.95, weight decay 0.1, clipping at 1.0, a floor of 10% of the
    /// peak, as nanoGPT).
    pub fn new(lr: f32, warmup_steps: u64, total_steps: u64) -> Self {
        GptAdamW {
            lr,
            betas: (0.9, 0.95),
            eps: 1e-8,
            weight_decay: 0.1,
            clip_grad_norm: Some(1.0),
            warmup_steps,
            total_steps,
            min_lr_ratio: 0.1,
        }
    }
    /// Decay rates of the moment estimates.
    pub fn with_betas(mut self, beta1: f32, beta2: f32) -> Self {
        self.betas = (beta1, beta2);
        self
    }
    /// Added to the denominator.
    pub fn with_eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }
    /// Weight decay of the matrices and embeddings.
    pub fn with_weight_decay(mut self, weight_decay: f32) -> Self {
        self.weight_decay = weight_decay;
        self
    }
    /// Largest global gradient norm (None: no clipping).
    pub fn with_clip_grad_norm(mut self, max_norm: Option<f32>) -> Self {
        self.clip_grad_norm = max_norm;
        self
    }
    /// The cosine's floor as a fraction of the peak.
    pub fn with_min_lr_ratio(mut self, ratio: f32) -> Self {
        self.min_lr_ratio = ratio;
        self
    }

    /// The schedule: linear warm-up, then cosine decay to the floor.
    pub fn schedule(&self) -> Schedule {
        Schedule::Warmup {
            steps: self.warmup_steps,
            then: Box::new(Schedule::CosineDecay {
                from: self.warmup_steps,
                total: self.total_steps,
                min_lr: self.lr * self.min_lr_ratio,
            }),
        }
    }

    /// The optimizer over `model`'s trainable parameters: group 0 the decayed ones, group 1 the
    /// others (frozen parameters are left out).
    pub fn init(&self, dev: &Device, model: &dyn Module) -> Result<Optimizer> {
        let named: Vec<(String, Tensor)> = model
            .named_parameters()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        let (decay, no_decay) = decay_groups(&named);
        if decay.is_empty() {
            return Err(TrainError::Training(
                "the model has no trainable matrix to decay".into(),
            ));
        }
        let mut opt = AdamW::new(self.lr)
            .with_betas(self.betas.0, self.betas.1)
            .with_eps(self.eps)
            .with_weight_decay(self.weight_decay)
            .init(dev, decay)?;
        if !no_decay.is_empty() {
            opt.add_param_group(no_decay, self.lr, 0.0)?;
        }
        opt.set_schedule(self.schedule());
        opt.set_clip_grad_norm(self.clip_grad_norm);
        Ok(opt)
    }
}

/// Model FLOPs per trained token of a GPT as llm.c counts them for MFU (`gpt2_estimate_mfu`,
/// after the PaLM paper's appendix B): 6 per parameter (2 forward, 4 backward) plus
/// 6 x `n_layer` x `n_embd` x `context` for attention's score and weighted-value matmuls.
/// `params` counts every parameter held, the tied head once and a padded vocabulary's rows
/// included, as llm.c's `num_parameters` does. (nanoGPT's `estimate_mfu` counts attention twice
/// as much, 12 L C T.) Activation checkpointing's second forward pass is not model work and is
/// not counted.
pub fn gpt_flops_per_token(params: usize, n_layer: usize, n_embd: usize, context: usize) -> f64 {
    6.0 * params as f64 + 6.0 * (n_layer * n_embd * context) as f64
}

/// Model FLOP utilisation: model FLOPs per second over the adapter's peak (`peak_tflops`
/// TFLOP/s; None where the adapter's peak is unknown, as on software adapters).
pub fn mfu(flops_per_token: f64, tokens_per_second: f64, peak_tflops: Option<f64>) -> Option<f64> {
    peak_tflops
        .filter(|p| *p > 0.0)
        .map(|p| flops_per_token * tokens_per_second / (p * 1e12))
}

/// One optimizer step over `micro_batches` micro-batches, recorded once and replayed: each
/// micro-batch's forward and backward pass, its gradients added in place into one buffer per
/// parameter (the first micro-batch's own gradients; PyTorch's `.grad` accumulation), its loss
/// divided by the micro-batch count and added into one mean, then one clipped update. The caller
/// owns the input tensors, rewrites them before each micro-batch (and advances the dropout
/// generators, so each micro-batch draws its own masks), and reads [`AccumulatedStep::loss`] and
/// [`AccumulatedStep::grad_norm_sq`] after the step, typically with `Device::read_async`.
///
/// Three plans at most: the first micro-batch (with the update when there is only one), the
/// later ones, and the update. Each is recorded the first time it is needed, from the same
/// `forward`, and replayed ever after: a step costs `micro_batches` + 1 submissions (one with a
/// single micro-batch) and no recording.
pub struct AccumulatedStep {
    micro_batches: usize,
    first: Option<StepPlan>,
    more: Option<StepPlan>,
    update: Option<StepPlan>,
    /// The step's mean loss (the first plan writes it, later ones add to it).
    loss: Option<Array>,
}

impl AccumulatedStep {
    /// A step of `micro_batches` micro-batches (at least 1), nothing recorded yet.
    pub fn new(micro_batches: usize) -> Result<AccumulatedStep> {
        if micro_batches == 0 {
            return Err(TrainError::Training(
                "a step needs at least one micro-batch".into(),
            ));
        }
        Ok(AccumulatedStep {
            micro_batches,
            first: None,
            more: None,
            update: None,
            loss: None,
        })
    }

    /// Micro-batches per step.
    pub fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    /// Runs one step: for each micro-batch `m`, `prepare(m)` (which writes that micro-batch into
    /// the input buffers `forward` reads), then its forward and backward pass; then the clipped
    /// update. `forward` returns the micro-batch's mean loss; it is called only while a plan is
    /// recorded (the first step, and the second micro-batch of the first step), so it must build
    /// the same graph every time. The optimizer's step begins here (in its `step` while the
    /// update records, before the replays after that).
    pub fn run(
        &mut self,
        dev: &Device,
        opt: &mut Optimizer,
        prepare: &mut dyn FnMut(usize) -> Result<()>,
        forward: &mut dyn FnMut() -> Result<Tensor>,
    ) -> Result<()> {
        let n = self.micro_batches;
        // The plan that holds the update exists: this step replays it.
        if (n == 1 && self.first.is_some()) || self.update.is_some() {
            opt.prepare_replay()?;
        }
        for m in 0..n {
            prepare(m)?;
            if m == 0 {
                match &self.first {
                    Some(p) => p.replay()?,
                    None => self.record_first(dev, opt, forward)?,
                }
            } else {
                match &self.more {
                    Some(p) => p.replay()?,
                    None => self.record_more(dev, opt, forward)?,
                }
            }
        }
        if n > 1 {
            match &self.update {
                Some(p) => p.replay()?,
                None => {
                    let (plan, ()) = StepPlan::record(dev, || opt.step())?;
                    self.update = Some(plan);
                }
            }
        }
        Ok(())
    }

    /// The first micro-batch: gradients into fresh buffers (kept as the accumulators), the loss
    /// (divided by the micro-batch count) as the step's loss buffer.
    fn record_first(
        &mut self,
        dev: &Device,
        opt: &mut Optimizer,
        forward: &mut dyn FnMut() -> Result<Tensor>,
    ) -> Result<()> {
        let n = self.micro_batches;
        opt.zero_grad();
        let (plan, loss) = StepPlan::record(dev, || -> Result<Tensor> {
            let loss = {
                let loss = forward()?;
                let scaled = if n > 1 {
                    loss.affine(1.0 / n as f32, 0.0)?
                } else {
                    loss
                };
                scaled.backward()?;
                // Detached: the graph and the activations it saved go here, before the update
                // allocates anything.
                scaled.detach()
            };
            if n == 1 {
                opt.step()?;
            }
            Ok(loss)
        })?;
        if opt.params().all(|p| p.grad().is_none()) {
            return Err(TrainError::Training(
                "no parameter received a gradient: nothing to train".into(),
            ));
        }
        self.loss = Some(loss.array().clone());
        self.first = Some(plan);
        Ok(())
    }

    /// A later micro-batch: each gradient, once final, added into the first micro-batch's buffer
    /// and dropped (its memory serves the rest of the backward pass); the loss added likewise.
    fn record_more(
        &mut self,
        dev: &Device,
        opt: &Optimizer,
        forward: &mut dyn FnMut() -> Result<Tensor>,
    ) -> Result<()> {
        let n = self.micro_batches;
        let params: Vec<Tensor> = opt.params().cloned().collect();
        let acc: Vec<Option<Array>> = params.iter().map(Tensor::grad).collect();
        opt.zero_grad();
        let loss_acc = self.loss.clone().expect("the first micro-batch ran");
        let recorded = StepPlan::record(dev, || -> Result<()> {
            let loss = forward()?.affine(1.0 / n as f32, 0.0)?;
            kiln_ops::layout::slice_add(dev, &loss_acc, loss.array(), 0, 0)?;
            // Parameters whose gradients shared one buffer in the first micro-batch share it
            // here too: add once.
            let mut added = HashSet::new();
            let mut missing: Option<usize> = None;
            loss.backward_with(&mut |leaf| {
                let Some(i) = params.iter().position(|p| p.same(leaf)) else {
                    return Ok(());
                };
                match (&acc[i], leaf.grad()) {
                    (Some(a), Some(g)) if added.insert(a.buf.id()) => {
                        kiln_ops::layout::slice_add(dev, a, &g, 0, 0)?;
                    }
                    (None, Some(_)) => missing = Some(i),
                    _ => {}
                }
                leaf.zero_grad();
                Ok(())
            })?;
            if let Some(i) = missing {
                return Err(TrainError::Training(format!(
                    "parameter {i} got a gradient in a later micro-batch but none in the first"
                )));
            }
            Ok(())
        });
        // The accumulators go back in place whatever happened: the update reads them.
        for (p, a) in params.iter().zip(acc) {
            p.set_grad(a)?;
        }
        let (plan, ()) = recorded?;
        self.more = Some(plan);
        Ok(())
    }

    /// The one-element buffer holding the last step's loss, the mean over its micro-batches (None
    /// before the first step).
    pub fn loss(&self) -> Option<&Array> {
        self.loss.as_ref()
    }

    /// The one-element buffer holding the last step's squared global gradient norm before
    /// clipping (None without clipping or before the first step).
    pub fn grad_norm_sq(&self, opt: &Optimizer) -> Option<Array> {
        opt.grad_norm_sq()
    }
}
