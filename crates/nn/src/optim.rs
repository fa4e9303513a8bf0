//! Optimizers over the fused update kernels. State lives on the device; hyper-parameters sit in a
//! small device buffer rewritten before each step, so a recorded step never needs re-recording.

use crate::schedule::Schedule;
use crate::Result;
use kiln_graph::{Device, Tensor};
use kiln_ops::optim::{self, Rule};
use kiln_ops::{Buffer, DType};

/// An optimizer for a set of parameters.
pub struct Optimizer {
    dev: Device,
    rule: Rule,
    params: Vec<Tensor>,
    state: Vec<Vec<Buffer>>,
    hp: Buffer,
    base_lr: f32,
    schedule: Schedule,
    step: u64,
}

impl Optimizer {
    fn new(dev: &Device, params: Vec<Tensor>, rule: Rule, lr: f32) -> Result<Optimizer> {
        let mut state = Vec::new();
        for p in &params {
            let n = p.numel();
            let mut s = Vec::new();
            for _ in 0..rule.state_count() {
                let b = dev.alloc(n, DType::F32)?;
                kiln_ops::fill(dev, &b, 0.0)?;
                s.push(b);
            }
            state.push(s);
        }
        let hp = dev.upload(&rule.hyper(lr, 1))?;
        Ok(Optimizer {
            dev: dev.clone(),
            rule,
            params,
            state,
            hp,
            base_lr: lr,
            schedule: Schedule::Constant,
            step: 0,
        })
    }

    /// SGD (PyTorch defaults: no momentum, no dampening, no weight decay).
    pub fn sgd(
        dev: &Device,
        params: Vec<Tensor>,
        lr: f32,
        momentum: f32,
        nesterov: bool,
        weight_decay: f32,
    ) -> Result<Optimizer> {
        Self::new(
            dev,
            params,
            Rule::Sgd {
                momentum,
                dampening: 0.0,
                nesterov,
                weight_decay,
            },
            lr,
        )
    }
    /// Adam with PyTorch's defaults (betas 0.9, 0.999; eps 1e-8).
    pub fn adam(
        dev: &Device,
        params: Vec<Tensor>,
        lr: f32,
        weight_decay: f32,
    ) -> Result<Optimizer> {
        Self::new(
            dev,
            params,
            Rule::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay,
                decoupled: false,
            },
            lr,
        )
    }
    /// AdamW (decoupled weight decay; PyTorch's default decay 0.01).
    pub fn adamw(
        dev: &Device,
        params: Vec<Tensor>,
        lr: f32,
        weight_decay: f32,
    ) -> Result<Optimizer> {
        Self::new(
            dev,
            params,
            Rule::Adam {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay,
                decoupled: true,
            },
            lr,
        )
    }
    /// RMSprop with PyTorch's defaults (alpha 0.99, eps 1e-8).
    pub fn rmsprop(
        dev: &Device,
        params: Vec<Tensor>,
        lr: f32,
        momentum: f32,
        centered: bool,
    ) -> Result<Optimizer> {
        Self::new(
            dev,
            params,
            Rule::RmsProp {
                alpha: 0.99,
                eps: 1e-8,
                weight_decay: 0.0,
                momentum,
                centered,
            },
            lr,
        )
    }
    /// Any rule.
    pub fn with_rule(dev: &Device, params: Vec<Tensor>, rule: Rule, lr: f32) -> Result<Optimizer> {
        Self::new(dev, params, rule, lr)
    }

    /// Sets the learning-rate schedule (evaluated per step).
    pub fn set_schedule(&mut self, schedule: Schedule) {
        self.schedule = schedule;
    }

    /// The learning rate the next step uses.
    pub fn lr(&self) -> f32 {
        self.schedule.lr(self.base_lr, self.step)
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Advances the step counter and writes this step's hyper-parameters (learning rate, bias
    /// corrections) to the device. Call once before each step, eager or replayed.
    pub fn begin_step(&mut self) -> Result<()> {
        let lr = self.lr();
        self.step += 1;
        self.dev.write(&self.hp, &self.rule.hyper(lr, self.step))?;
        Ok(())
    }

    /// Records the update of every parameter that has a gradient (frozen ones are skipped).
    pub fn step(&self) -> Result<()> {
        for (p, s) in self.params.iter().zip(&self.state) {
            if let Some(g) = p.grad() {
                optim::step(&self.dev, &self.rule, &p.array().buf, &g.buf, s, &self.hp)?;
            }
        }
        Ok(())
    }

    /// Clears every parameter's gradient.
    pub fn zero_grad(&self) {
        self.params.iter().for_each(Tensor::zero_grad);
    }

    /// The parameters.
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }
}
