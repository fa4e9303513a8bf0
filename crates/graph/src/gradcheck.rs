//! Gradient checks against central finite differences, as PyTorch's
//! `torch.autograd.gradcheck`, for ops (built-in or a user's) and whole models.
//!
//! The scalar checked is `sum(f(inputs) * r)` for fixed random weights `r`, so every output
//! element takes part. Its derivatives come from the backward pass (analytic) and from central
//! differences `(L(x + eps e_j) - L(x - eps e_j)) / 2 eps` of every element of every input that
//! requires a gradient (numeric): of `f` itself, run again on the device in f32 (hence the
//! looser defaults than PyTorch's double-precision ones), or of an f64 CPU reference of `f`
//! where one is given ([`GradCheck::with_reference`]), which is exact up to the differences' own
//! truncation error and also checks the forward values.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kiln_graph::{gradcheck, Device, Tensor};
//! let dev = Device::shared()?;
//! let x = Tensor::from_f32(&dev, &[0.5, -1.0, 2.0], &[3])?.requires_grad_(true)?;
//! gradcheck(|t| t[0].tanh()?.mul(&t[0]), &[x])?;
//! # Ok(()) }
//! ```

use crate::{no_grad, Result, Tensor};
use kiln_ops::numeric::check_close;
use kiln_ops::random::Rng;
use kiln_ops::{DType, OpError};

/// A CPU reference of the checked function: one f64 vector per input, in order, to the output's
/// values.
type Reference<'a> = Box<dyn Fn(&[Vec<f64>]) -> Vec<f64> + 'a>;

/// Why a gradient check failed.
#[derive(Debug, thiserror::Error)]
pub enum GradCheckError {
    /// The function, its backward pass or a readback failed.
    #[error(transparent)]
    Op(#[from] OpError),
    /// The analytic gradient of an input differs from the numeric one (or the forward values
    /// from the reference's).
    #[error("gradcheck: {what}: {message}")]
    Mismatch {
        /// "input 2", "forward".
        what: String,
        /// The worst difference and the first mismatches.
        message: String,
    },
}

/// Options of a gradient check; [`gradcheck`] uses the defaults.
pub struct GradCheck<'a> {
    eps: f64,
    atol: f64,
    rtol: f64,
    seed: u64,
    reference: Option<Reference<'a>>,
}

impl Default for GradCheck<'_> {
    /// eps 1e-3, atol 1e-3, rtol 1e-2: central differences of an f32 function at eps 1e-3 carry
    /// about 1e-4 of rounding error per unit of output; the truncation error is O(eps^2).
    fn default() -> Self {
        GradCheck {
            eps: 1e-3,
            atol: 1e-3,
            rtol: 1e-2,
            seed: 0,
            reference: None,
        }
    }
}

impl<'a> GradCheck<'a> {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// The finite-difference step.
    pub fn with_eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
    /// Absolute tolerance.
    pub fn with_atol(mut self, atol: f64) -> Self {
        self.atol = atol;
        self
    }
    /// Relative tolerance.
    pub fn with_rtol(mut self, rtol: f64) -> Self {
        self.rtol = rtol;
        self
    }
    /// Seed of the output weights.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Takes the numeric derivatives from an f64 CPU version of the checked function (inputs in
    /// order, as f64; returns the output's values) instead of the device's f32 one, and checks
    /// the forward values against it too.
    pub fn with_reference(mut self, f: impl Fn(&[Vec<f64>]) -> Vec<f64> + 'a) -> Self {
        self.reference = Some(Box::new(f));
        self
    }

    /// Checks every input that requires a gradient; leaves inputs' values and gradients as they
    /// were before (gradients cleared).
    pub fn check(
        &self,
        f: impl Fn(&[Tensor]) -> Result<Tensor>,
        inputs: &[Tensor],
    ) -> std::result::Result<(), GradCheckError> {
        inputs.iter().for_each(Tensor::zero_grad);
        let y = f(inputs)?;
        if y.dtype() != DType::F32 {
            return Err(OpError::DType {
                op: "gradcheck",
                expected: DType::F32,
                got: y.dtype(),
            }
            .into());
        }
        let mut rng = Rng::new(self.seed);
        let r = rng.vec(y.numel(), -1.0, 1.0);
        let weights = Tensor::from_f32(y.device(), &r, y.shape())?;
        y.mul(&weights)?.sum_all()?.backward()?;
        let scalar = |out: &[f64]| -> f64 { out.iter().zip(&r).map(|(a, &b)| a * b as f64).sum() };
        let values: Vec<Vec<f64>> = inputs
            .iter()
            .map(|t| match t.dtype() {
                DType::F32 => t.to_vec().map(|v| v.iter().map(|&x| x as f64).collect()),
                DType::I32 => t
                    .to_vec_i32()
                    .map(|v| v.iter().map(|&x| x as f64).collect()),
                _ => Ok(Vec::new()),
            })
            .collect::<Result<_>>()?;
        if let Some(cpu) = &self.reference {
            let want = cpu(&values);
            let got = y.to_vec()?;
            check_close("forward", &got, &want, self.atol, self.rtol).map_err(|m| {
                GradCheckError::Mismatch {
                    what: "forward".into(),
                    message: m,
                }
            })?;
        }
        let result = (|| {
            for (i, t) in inputs.iter().enumerate() {
                if !t.requires_grad() {
                    continue;
                }
                let analytic = match t.grad() {
                    Some(g) => g.to_f32(t.device())?,
                    None => vec![0.0; t.numel()],
                };
                let numeric = self.numeric(&f, inputs, &values, i, &scalar)?;
                check_close(
                    &format!("input {i}"),
                    &analytic,
                    &numeric,
                    self.atol,
                    self.rtol,
                )
                .map_err(|m| GradCheckError::Mismatch {
                    what: format!("input {i} {:?}", t.shape()),
                    message: m,
                })?;
            }
            Ok(())
        })();
        inputs.iter().for_each(Tensor::zero_grad);
        result
    }

    /// Central differences of the weighted sum with respect to every element of input `i`.
    fn numeric(
        &self,
        f: &impl Fn(&[Tensor]) -> Result<Tensor>,
        inputs: &[Tensor],
        values: &[Vec<f64>],
        i: usize,
        scalar: &impl Fn(&[f64]) -> f64,
    ) -> std::result::Result<Vec<f64>, GradCheckError> {
        if let Some(cpu) = &self.reference {
            let mut v = values.to_vec();
            return Ok((0..v[i].len())
                .map(|j| {
                    let x = v[i][j];
                    v[i][j] = x + self.eps;
                    let up = scalar(&cpu(&v));
                    v[i][j] = x - self.eps;
                    let down = scalar(&cpu(&v));
                    v[i][j] = x;
                    (up - down) / (2.0 * self.eps)
                })
                .collect());
        }
        let t = &inputs[i];
        let mut v: Vec<f32> = values[i].iter().map(|&x| x as f32).collect();
        let run = |v: &[f32]| -> Result<f64> {
            t.copy_from_slice(v)?;
            let out = no_grad(|| f(inputs))?.to_vec()?;
            Ok(scalar(&out.iter().map(|&x| x as f64).collect::<Vec<_>>()))
        };
        let mut d = Vec::with_capacity(v.len());
        for j in 0..v.len() {
            let x = v[j];
            // The step actually taken, after rounding to f32.
            let (hi, lo) = ((x as f64 + self.eps) as f32, (x as f64 - self.eps) as f32);
            v[j] = hi;
            let up = run(&v)?;
            v[j] = lo;
            let down = run(&v)?;
            v[j] = x;
            d.push((up - down) / (hi as f64 - lo as f64));
        }
        t.copy_from_slice(&v)?;
        Ok(d)
    }
}

/// [`GradCheck::check`] with the default options: checks the gradients the backward pass gives
/// every input of `f` that requires a gradient against central finite differences of `f`.
pub fn gradcheck(
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
) -> std::result::Result<(), GradCheckError> {
    GradCheck::default().check(f, inputs)
}
