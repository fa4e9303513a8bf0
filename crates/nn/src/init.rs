//! Parameter initialisation from a seeded generator, with PyTorch's rules.
//!
//! Module configs draw from this thread's default generator (`LinearConfig::init`), which
//! [`manual_seed`] resets as `torch.manual_seed` does, or from one they are given
//! (`LinearConfig::init_with`), so models built the same way from the same seed are identical.

use crate::error::Result;
use kiln_graph::{Device, Tensor};
pub use kiln_ops::random::Rng;
use std::cell::RefCell;

thread_local! {
    static DEFAULT: RefCell<Rng> = RefCell::new(Rng::new(0));
}

/// Resets this thread's default generator (PyTorch's `torch.manual_seed`).
pub fn manual_seed(seed: u64) {
    DEFAULT.with(|r| *r.borrow_mut() = Rng::new(seed));
}

/// Runs `f` with this thread's default generator.
pub fn with_default_rng<T>(f: impl FnOnce(&mut Rng) -> T) -> T {
    DEFAULT.with(|r| f(&mut r.borrow_mut()))
}

/// How a parameter's values start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Every value the same.
    Constant(f32),
    /// U(low, high).
    Uniform {
        /// Lower bound.
        low: f64,
        /// Upper bound (excluded).
        high: f64,
    },
    /// N(mean, std^2).
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation.
        std: f64,
    },
    /// U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default for Linear and Conv weights
    /// (`kaiming_uniform_` with a = sqrt(5) reduces to it) and their biases (with the weight's
    /// fan-in).
    FanInUniform,
    /// Glorot's U(-b, b) with b = gain * sqrt(6 / (fan_in + fan_out)) (`xavier_uniform_`).
    XavierUniform {
        /// Scale (1 for linear layers).
        gain: f64,
    },
}

/// PyTorch's fan-in and fan-out of a weight shape [out, in, kernel...]; a 1-D shape counts as
/// `[len]` with fan-in = fan-out = len.
pub fn fans(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [n] => (*n, *n),
        [out, inp, rest @ ..] => {
            let field: usize = rest.iter().product();
            (inp * field, out * field)
        }
    }
}

impl Init {
    /// `n` values drawn from `rng` by this rule, for a parameter with the given fans.
    pub fn values(&self, rng: &mut Rng, n: usize, fan_in: usize, fan_out: usize) -> Vec<f32> {
        match *self {
            Init::Constant(v) => vec![v; n],
            Init::Uniform { low, high } => rng.vec(n, low, high),
            Init::Normal { mean, std } => {
                (0..n).map(|_| (mean + std * rng.normal()) as f32).collect()
            }
            Init::FanInUniform => {
                let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
                rng.vec(n, -bound, bound)
            }
            Init::XavierUniform { gain } => {
                let bound = gain * (6.0 / (fan_in + fan_out).max(1) as f64).sqrt();
                rng.vec(n, -bound, bound)
            }
        }
    }

    /// A parameter (a leaf that requires a gradient) of `shape`, its fans taken from `fans_of`
    /// (the weight's shape, for a bias).
    pub fn param(
        &self,
        dev: &Device,
        rng: &mut Rng,
        shape: &[usize],
        fans_of: &[usize],
    ) -> Result<Tensor> {
        let (fan_in, fan_out) = fans(fans_of);
        let v = self.values(rng, shape.iter().product(), fan_in, fan_out);
        Ok(Tensor::from_f32(dev, &v, shape)?.requires_grad_(true)?)
    }
}
