//! Learning-rate schedules as functions of the step, composable with a linear warm-up.

/// A learning-rate schedule: multiplies the base rate by a factor of the step (0-based).
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// Always the base rate.
    Constant,
    /// x gamma every `step_size` steps (PyTorch's StepLR).
    Step {
        /// Steps between decays.
        step_size: u64,
        /// Decay factor.
        gamma: f32,
    },
    /// x gamma^step (ExponentialLR).
    Exponential {
        /// Decay per step.
        gamma: f32,
    },
    /// Cosine from the base rate to `min_lr` over `t_max` steps (CosineAnnealingLR).
    Cosine {
        /// Steps to the minimum.
        t_max: u64,
        /// The minimum rate.
        min_lr: f32,
    },
    /// One-cycle: cosine up from base/25 to the base rate over `pct` of `total`, then down to
    /// base/1e4 (PyTorch's OneCycleLR defaults with max_lr = base).
    OneCycle {
        /// Total steps.
        total: u64,
        /// Fraction spent rising.
        pct: f32,
    },
    /// Linear decay from the base rate at step `from` to 0 at step `total` (the base rate
    /// before `from`): with [`Schedule::Warmup`] over the same `from` steps, `transformers`'
    /// `get_linear_schedule_with_warmup`.
    LinearDecay {
        /// Step where the decay starts (the warm-up's length).
        from: u64,
        /// Step where the rate reaches 0.
        total: u64,
    },
    /// Cosine decay from the base rate at step `from` to `min_lr` at step `total` (the base rate
    /// before `from`, `min_lr` after `total`): with [`Schedule::Warmup`] over the same `from`
    /// steps, the GPT-2 recipe of nanoGPT and llm.c (linear warm-up, then cosine to a floor).
    CosineDecay {
        /// Step where the decay starts (the warm-up's length).
        from: u64,
        /// Step where the rate reaches `min_lr`.
        total: u64,
        /// The floor.
        min_lr: f32,
    },
    /// Linear warm-up from 0 over `steps`, then `then`.
    Warmup {
        /// Warm-up steps.
        steps: u64,
        /// The schedule after (and scaled during) warm-up.
        then: Box<Schedule>,
    },
}

impl Schedule {
    /// The rate at `step` for base rate `base`.
    pub fn lr(&self, base: f32, step: u64) -> f32 {
        let cos = |from: f64, to: f64, t: f64| {
            to + (from - to) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
        };
        match self {
            Schedule::Constant => base,
            Schedule::Step { step_size, gamma } => {
                base * gamma.powi((step / step_size.max(&1)) as i32)
            }
            Schedule::Exponential { gamma } => base * gamma.powi(step as i32),
            Schedule::Cosine { t_max, min_lr } => {
                let t = (step.min(*t_max) as f64) / (*t_max).max(1) as f64;
                cos(base as f64, *min_lr as f64, t) as f32
            }
            Schedule::OneCycle { total, pct } => {
                let up = ((*total as f64) * *pct as f64).max(1.0);
                let s = step as f64;
                let (lo, hi, end) = (base as f64 / 25.0, base as f64, base as f64 / 25.0 / 1e4);
                if s < up {
                    cos(lo, hi, s / up) as f32
                } else {
                    cos(
                        hi,
                        end,
                        ((s - up) / ((*total as f64) - up).max(1.0)).min(1.0),
                    ) as f32
                }
            }
            Schedule::LinearDecay { from, total } => {
                let left = total.saturating_sub(step.max(*from)) as f64;
                (base as f64 * left / total.saturating_sub(*from).max(1) as f64) as f32
            }
            Schedule::CosineDecay {
                from,
                total,
                min_lr,
            } => {
                let span = total.saturating_sub(*from).max(1) as f64;
                let t = (step.max(*from).min((*total).max(*from)) - from) as f64 / span;
                cos(base as f64, *min_lr as f64, t.min(1.0)) as f32
            }
            Schedule::Warmup { steps, then } => {
                let inner = then.lr(base, step);
                if step < *steps {
                    inner * (step + 1) as f32 / *steps as f32
                } else {
                    inner
                }
            }
        }
    }
}
