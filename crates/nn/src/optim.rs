//! Optimizers over the fused update kernels. State lives on the device; hyper-parameters sit in a
//! small device buffer per parameter group, rewritten before each step, so a recorded step never
//! needs re-recording when the learning rate or the step count changes.

use crate::error::Result;
use crate::schedule::Schedule;
use kiln_graph::{Device, StepPlan, Tensor};
use kiln_ops::optim::{self, Rule};
use kiln_ops::{Buffer, DType};

struct Group {
    params: Vec<Tensor>,
    /// Flat state buffers, one per state kind, in chunks that each fit one storage binding
    /// (`state[c][k]`); parameter `i`'s state is in chunk `chunk_of[i]` at offset `state_at[i]`.
    state: Vec<Vec<Buffer>>,
    chunk_of: Vec<usize>,
    state_at: Vec<usize>,
    hp: Buffer,
    lr: f32,
    rule: Rule,
}

/// An optimizer over parameter groups (as PyTorch's `param_groups`), each with its own learning
/// rate and weight decay, sharing one update rule, one schedule and one step counter.
pub struct Optimizer {
    dev: Device,
    rule: Rule,
    groups: Vec<Group>,
    schedule: Schedule,
    step: u64,
    clip: Option<f32>,
    /// A zero: the guard of unguarded steps (always finite, so they always update).
    no_guard: Buffer,
    /// Pruning masks re-applied after every update.
    masks: Vec<crate::prune::Mask>,
    /// Where the latest clipping wrote the sum of squared gradients (see
    /// [`Optimizer::grad_norm_sq`]).
    norm_sq: std::sync::Mutex<Option<kiln_graph::Array>>,
}

impl Optimizer {
    fn new(dev: &Device, params: Vec<Tensor>, rule: Rule, lr: f32) -> Result<Optimizer> {
        let mut o = Optimizer {
            dev: dev.clone(),
            rule,
            groups: Vec::new(),
            schedule: Schedule::Constant,
            step: 0,
            clip: None,
            no_guard: {
                let z = dev.alloc(1, DType::F32)?;
                kiln_ops::fill(dev, &z, 0.0)?;
                z
            },
            masks: Vec::new(),
            norm_sq: std::sync::Mutex::new(None),
        };
        o.push_group(params, lr, rule)?;
        Ok(o)
    }

    fn push_group(&mut self, params: Vec<Tensor>, lr: f32, rule: Rule) -> Result<()> {
        // The group's state in flat buffers, so one dispatch can update many parameters; a new
        // chunk wherever the next parameter's state would not fit the binding limit (tables
        // kept in blocks under the limit keep their state under it too).
        let l = self.dev.limits();
        let limit = (l.max_storage_buffer_binding_size.min(l.max_buffer_size) / 4) as usize;
        let lens: Vec<usize> = params.iter().map(Tensor::numel).collect();
        let mut chunks: Vec<Vec<usize>> = vec![Vec::new()];
        let mut chunk_of = Vec::with_capacity(lens.len());
        let mut used = 0;
        for (i, &n) in lens.iter().enumerate() {
            // The parameter's slot in a flat buffer (its length, aligned as state_layout lays it).
            let slot = optim::state_layout(&[n]).1;
            if used + slot > limit && used > 0 {
                chunks.push(Vec::new());
                used = 0;
            }
            used += slot;
            chunks.last_mut().unwrap().push(i);
            chunk_of.push(chunks.len() - 1);
        }
        let mut state_at = vec![0; lens.len()];
        let mut state = Vec::new();
        for members in &chunks {
            let (at, len) =
                optim::state_layout(&members.iter().map(|&j| lens[j]).collect::<Vec<_>>());
            for (&j, a) in members.iter().zip(at) {
                state_at[j] = a;
            }
            let mut kinds = Vec::new();
            for _ in 0..rule.state_count() {
                let b = self.dev.alloc(len, DType::F32)?;
                kiln_ops::fill(&self.dev, &b, 0.0)?;
                kinds.push(b);
            }
            state.push(kinds);
        }
        let hp = self.dev.upload(&rule.hyper(lr, 1))?;
        self.groups.push(Group {
            params,
            state,
            chunk_of,
            state_at,
            hp,
            lr,
            rule,
        });
        Ok(())
    }

    /// Adds a parameter group with its own learning rate and weight decay.
    pub fn add_param_group(
        &mut self,
        params: Vec<Tensor>,
        lr: f32,
        weight_decay: f32,
    ) -> Result<()> {
        let rule = self.rule.with_weight_decay(weight_decay);
        self.push_group(params, lr, rule)
    }

    /// An optimizer with any update rule (the configs below build the usual ones).
    pub fn with_rule(dev: &Device, params: Vec<Tensor>, rule: Rule, lr: f32) -> Result<Optimizer> {
        Self::new(dev, params, rule, lr)
    }

    /// Sets the learning-rate schedule (a factor of each group's rate, evaluated per step).
    pub fn set_schedule(&mut self, schedule: Schedule) {
        self.schedule = schedule;
    }

    /// Clips gradients to this global L2 norm before every update (None: no clipping).
    pub fn set_clip_grad_norm(&mut self, max_norm: Option<f32>) {
        self.clip = max_norm;
    }

    /// The learning rate the next step uses in the first group.
    pub fn lr(&self) -> f32 {
        self.schedule.lr(self.groups[0].lr, self.step)
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Begins the next step without recording its update: advances the step counter and writes
    /// the step's hyper-parameters (learning rate, bias corrections) to the device, where a
    /// recorded update reads them. [`Optimizer::step`] and [`Optimizer::replay`] do this
    /// themselves; call it only before replaying, by other means, a plan that holds this
    /// optimizer's update (a data-parallel step, several plans that make one step).
    pub fn prepare_replay(&mut self) -> Result<()> {
        let step = self.step;
        self.step += 1;
        for g in &self.groups {
            let lr = self.schedule.lr(g.lr, step);
            self.dev.write(&g.hp, &g.rule.hyper(lr, self.step))?;
        }
        Ok(())
    }

    /// Takes a step: advances the step counter (the schedule's position and Adam's bias
    /// corrections follow it), then updates every parameter that has a gradient (frozen ones are
    /// skipped), after clipping when it is set. Inside [`StepPlan::record`] the update is
    /// recorded; replay the plan with [`Optimizer::replay`], which begins each later step.
    pub fn step(&mut self) -> Result<()> {
        self.step_guarded(None)
    }

    /// Like [`Optimizer::step`], but the device skips the whole update (parameters and state)
    /// when `loss` (a one-element buffer, read when the step runs) is NaN or infinite.
    pub fn step_guarded(&mut self, loss: Option<&Buffer>) -> Result<()> {
        self.prepare_replay()?;
        self.record_update(loss)
    }

    /// Begins the next step ([`Optimizer::prepare_replay`]) and replays `plan`, a recorded step
    /// that holds this optimizer's update.
    pub fn replay(&mut self, plan: &StepPlan) -> Result<()> {
        self.prepare_replay()?;
        Ok(plan.replay()?)
    }

    /// Launches (or, while a plan records, records) the update with the hyper-parameters
    /// already written for this step.
    fn record_update(&self, loss: Option<&Buffer>) -> Result<()> {
        if let Some(max_norm) = self.clip {
            let grads: Vec<_> = self.params().filter_map(|p| p.grad()).collect();
            let bufs: Vec<&Buffer> = grads.iter().map(|g| &g.buf).collect();
            if !bufs.is_empty() {
                let total = optim::clip_grad_norm(&self.dev, &bufs, max_norm)?;
                *self.norm_sq.lock().unwrap() = Some(total);
            }
        }
        let guard = loss.unwrap_or(&self.no_guard);
        for g in &self.groups {
            // Every parameter with a gradient (frozen ones have none), in as few dispatches as
            // the adapter allows.
            let live: Vec<(&Tensor, kiln_graph::Array, usize, usize)> = g
                .params
                .iter()
                .zip(g.state_at.iter().zip(&g.chunk_of))
                .filter_map(|(p, (&at, &c))| p.grad().map(|grad| (p, grad, at, c)))
                .collect();
            for (c, chunk_state) in g.state.iter().enumerate() {
                let slots: Vec<optim::Slot> = live
                    .iter()
                    .filter(|l| l.3 == c)
                    .map(|(p, grad, at, _)| optim::Slot {
                        param: &p.array().buf,
                        grad: &grad.buf,
                        state_offset: *at,
                    })
                    .collect();
                optim::step_group(&self.dev, &g.rule, &slots, chunk_state, &g.hp, Some(guard))?;
            }
        }
        for m in &self.masks {
            kiln_ops::elementwise::mask_in_place(&self.dev, &m.param.array().buf, &m.mask)?;
        }
        Ok(())
    }

    /// The one-element buffer into which the latest step that clipped wrote the sum of the
    /// squared gradients before clipping (the global norm squared, as
    /// `torch.nn.utils.clip_grad_norm_` returns it before the square root). A step recorded in a
    /// plan rewrites the same buffer on every replay, so reading it after a replay
    /// (`Device::read_async`) gives that step's norm without waiting. None before any step
    /// clipped.
    pub fn grad_norm_sq(&self) -> Option<kiln_graph::Array> {
        self.norm_sq.lock().unwrap().clone()
    }

    /// Keeps these pruning masks applied after every update (see [`crate::prune`]).
    pub fn set_masks(&mut self, masks: Vec<crate::prune::Mask>) {
        self.masks = masks;
    }

    /// The optimizer's state buffers as named tensors sharing their memory (`optim.G.P.K`: group,
    /// parameter, buffer), for checkpoints; loading into them restores the state.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v = Vec::new();
        for (gi, g) in self.groups.iter().enumerate() {
            for (pi, (p, &at)) in g.params.iter().zip(&g.state_at).enumerate() {
                for (k, b) in g.state[g.chunk_of[pi]].iter().enumerate() {
                    // The parameter's part of the flat buffer (a window, on a 256-byte boundary).
                    let Some(buf) = b.window((at * 4) as u64, p.numel()) else {
                        continue; // an empty parameter has no state
                    };
                    let a = kiln_graph::Array {
                        buf,
                        shape: p.shape().to_vec(),
                    };
                    v.push((
                        format!("optim.{gi}.{pi}.{k}"),
                        Tensor::from_array(&self.dev, a),
                    ));
                }
            }
        }
        v
    }

    /// The state buffers as [`Optimizer::state_tensors`] gives them, each named for people: the
    /// rule's name for it (PyTorch's) and its parameter's name in `params` (a model's
    /// `named_parameters`), e.g. `conv1.weight (momentum_buffer)`; the `optim.G.P.K` name where
    /// the parameter is not in `params`.
    pub fn labelled_state(&self, params: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
        let by_buffer: std::collections::HashMap<u64, &str> = params
            .iter()
            .map(|(n, t)| (t.array().buf.id(), n.as_str()))
            .collect();
        let mut v = Vec::new();
        for (gi, g) in self.groups.iter().enumerate() {
            let kinds: &[&str] = match g.rule {
                Rule::Sgd { .. } => &["momentum_buffer"],
                Rule::Adam { .. } => &["exp_avg", "exp_avg_sq"],
                Rule::RmsProp { .. } => &["square_avg", "grad_avg", "momentum_buffer"],
            };
            for (pi, (p, &at)) in g.params.iter().zip(&g.state_at).enumerate() {
                for (k, b) in g.state[g.chunk_of[pi]].iter().enumerate() {
                    // The parameter's window of the flat buffer, as in `state_tensors`.
                    let Some(buf) = b.window((at * 4) as u64, p.numel()) else {
                        continue;
                    };
                    let name = match (by_buffer.get(&p.array().buf.id()), kinds.get(k)) {
                        (Some(n), Some(kind)) => format!("{n} ({kind})"),
                        _ => format!("optim.{gi}.{pi}.{k}"),
                    };
                    let a = kiln_graph::Array {
                        buf,
                        shape: p.shape().to_vec(),
                    };
                    v.push((name, Tensor::from_array(&self.dev, a)));
                }
            }
        }
        v
    }

    /// Sets the number of steps taken (restoring a checkpoint: the schedule and the bias
    /// corrections continue from there).
    pub fn set_steps(&mut self, steps: u64) {
        self.step = steps;
    }

    /// Clears every parameter's gradient.
    pub fn zero_grad(&self) {
        self.params().for_each(Tensor::zero_grad);
    }

    /// Every parameter of every group.
    pub fn params(&self) -> impl Iterator<Item = &Tensor> {
        self.groups.iter().flat_map(|g| g.params.iter())
    }
}

/// SGD's settings, with PyTorch's defaults (no momentum, dampening or weight decay).
///
/// ```no_run
/// # fn main() -> Result<(), kiln_nn::NnError> {
/// use kiln_nn::{optim::Sgd, LinearConfig, Module};
/// let dev = kiln_graph::Device::shared()?;
/// let model = LinearConfig::new(4, 2).init(&dev)?;
/// let opt = Sgd::new(0.05).with_momentum(0.9).init(&dev, model.parameters())?;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f32,
    /// Momentum factor.
    pub momentum: f32,
    /// Dampening of the momentum.
    pub dampening: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 penalty added to the gradient.
    pub weight_decay: f32,
}

impl Default for Sgd {
    /// `torch.optim.SGD`'s defaults: learning rate 1e-3, no momentum.
    fn default() -> Self {
        Sgd::new(1e-3)
    }
}

impl Sgd {
    /// Plain SGD at learning rate `lr`.
    pub fn new(lr: f32) -> Self {
        Sgd {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        }
    }
    /// Momentum factor.
    pub fn with_momentum(mut self, momentum: f32) -> Self {
        self.momentum = momentum;
        self
    }
    /// Dampening of the momentum.
    pub fn with_dampening(mut self, dampening: f32) -> Self {
        self.dampening = dampening;
        self
    }
    /// Nesterov momentum.
    pub fn with_nesterov(mut self, nesterov: bool) -> Self {
        self.nesterov = nesterov;
        self
    }
    /// L2 penalty added to the gradient.
    pub fn with_weight_decay(mut self, weight_decay: f32) -> Self {
        self.weight_decay = weight_decay;
        self
    }
    /// The optimizer over `params`.
    pub fn init(&self, dev: &Device, params: Vec<Tensor>) -> Result<Optimizer> {
        let rule = Rule::Sgd {
            momentum: self.momentum,
            dampening: self.dampening,
            nesterov: self.nesterov,
            weight_decay: self.weight_decay,
        };
        Optimizer::new(dev, params, rule, self.lr)
    }
}

/// Adam's settings, with PyTorch's defaults (betas 0.9, 0.999; eps 1e-8; no weight decay).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adam {
    /// Learning rate.
    pub lr: f32,
    /// Decay rates of the first and second moment estimates.
    pub betas: (f32, f32),
    /// Added to the denominator.
    pub eps: f32,
    /// L2 penalty added to the gradient.
    pub weight_decay: f32,
}

impl Default for Adam {
    /// `torch.optim.Adam`'s defaults: learning rate 1e-3, betas (0.9, 0.999), eps 1e-8.
    fn default() -> Self {
        Adam::new(1e-3)
    }
}

impl Adam {
    /// Adam at learning rate `lr` (PyTorch's default is 1e-3).
    pub fn new(lr: f32) -> Self {
        Adam {
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
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
    /// L2 penalty added to the gradient.
    pub fn with_weight_decay(mut self, weight_decay: f32) -> Self {
        self.weight_decay = weight_decay;
        self
    }
    fn rule(&self, decoupled: bool) -> Rule {
        Rule::Adam {
            beta1: self.betas.0,
            beta2: self.betas.1,
            eps: self.eps,
            weight_decay: self.weight_decay,
            decoupled,
        }
    }
    /// The optimizer over `params`.
    pub fn init(&self, dev: &Device, params: Vec<Tensor>) -> Result<Optimizer> {
        Optimizer::new(dev, params, self.rule(false), self.lr)
    }
}

/// AdamW's settings: Adam with decoupled weight decay, PyTorch's defaults (betas 0.9, 0.999;
/// eps 1e-8; weight decay 0.01).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW(Adam);

impl Default for AdamW {
    /// `torch.optim.AdamW`'s defaults: learning rate 1e-3, weight decay 0.01.
    fn default() -> Self {
        AdamW::new(1e-3)
    }
}

impl AdamW {
    /// AdamW at learning rate `lr`.
    pub fn new(lr: f32) -> Self {
        AdamW(Adam::new(lr).with_weight_decay(0.01))
    }
    /// Decay rates of the moment estimates.
    pub fn with_betas(self, beta1: f32, beta2: f32) -> Self {
        AdamW(self.0.with_betas(beta1, beta2))
    }
    /// Added to the denominator.
    pub fn with_eps(self, eps: f32) -> Self {
        AdamW(self.0.with_eps(eps))
    }
    /// Decoupled weight decay (applied to the weights, not through the gradient).
    pub fn with_weight_decay(self, weight_decay: f32) -> Self {
        AdamW(self.0.with_weight_decay(weight_decay))
    }
    /// The optimizer over `params`.
    pub fn init(&self, dev: &Device, params: Vec<Tensor>) -> Result<Optimizer> {
        Optimizer::new(dev, params, self.0.rule(true), self.0.lr)
    }
}

/// RMSprop's settings, with PyTorch's defaults (alpha 0.99, eps 1e-8, no weight decay, no
/// momentum, not centered).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmsProp {
    /// Learning rate.
    pub lr: f32,
    /// Smoothing constant of the squared-gradient average.
    pub alpha: f32,
    /// Added to the denominator.
    pub eps: f32,
    /// L2 penalty added to the gradient.
    pub weight_decay: f32,
    /// Momentum factor.
    pub momentum: f32,
    /// Normalise by the gradient's estimated variance instead of its second moment.
    pub centered: bool,
}

impl Default for RmsProp {
    /// `torch.optim.RMSprop`'s defaults: learning rate 1e-2, alpha 0.99, eps 1e-8.
    fn default() -> Self {
        RmsProp::new(1e-2)
    }
}

impl RmsProp {
    /// RMSprop at learning rate `lr` (PyTorch's default is 1e-2).
    pub fn new(lr: f32) -> Self {
        RmsProp {
            lr,
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
        }
    }
    /// Smoothing constant.
    pub fn with_alpha(mut self, alpha: f32) -> Self {
        self.alpha = alpha;
        self
    }
    /// Added to the denominator.
    pub fn with_eps(mut self, eps: f32) -> Self {
        self.eps = eps;
        self
    }
    /// L2 penalty added to the gradient.
    pub fn with_weight_decay(mut self, weight_decay: f32) -> Self {
        self.weight_decay = weight_decay;
        self
    }
    /// Momentum factor.
    pub fn with_momentum(mut self, momentum: f32) -> Self {
        self.momentum = momentum;
        self
    }
    /// Centered RMSprop.
    pub fn with_centered(mut self, centered: bool) -> Self {
        self.centered = centered;
        self
    }
    /// The optimizer over `params`.
    pub fn init(&self, dev: &Device, params: Vec<Tensor>) -> Result<Optimizer> {
        let rule = Rule::RmsProp {
            alpha: self.alpha,
            eps: self.eps,
            weight_decay: self.weight_decay,
            momentum: self.momentum,
            centered: self.centered,
        };
        Optimizer::new(dev, params, rule, self.lr)
    }
}
