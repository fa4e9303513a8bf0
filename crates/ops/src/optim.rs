//! Fused optimizer updates (PyTorch's formulas) and the hyper-parameter blocks they read.
//! Hyper-parameters sit in a small device buffer that the host rewrites between steps, so changing
//! the learning rate or the step count never requires re-recording a plan.

use crate::kernels::{all_fit, KernelSpec};
use crate::{launch_1d, launch_quads, Buffer, Device, OpError, Params, Result};
use kiln_device::{Variant, VariantTable};

/// The update rule and its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// SGD with optional momentum, dampening, Nesterov and L2 weight decay.
    Sgd {
        /// Momentum factor (0 disables the buffer).
        momentum: f32,
        /// Dampening for momentum.
        dampening: f32,
        /// Nesterov momentum.
        nesterov: bool,
        /// L2 penalty.
        weight_decay: f32,
    },
    /// Adam, or AdamW when `decoupled`.
    Adam {
        /// First-moment decay.
        beta1: f32,
        /// Second-moment decay.
        beta2: f32,
        /// Denominator term.
        eps: f32,
        /// Weight decay (L2 for Adam, decoupled for AdamW).
        weight_decay: f32,
        /// AdamW's decoupled decay.
        decoupled: bool,
    },
    /// RMSprop with optional momentum and centering.
    RmsProp {
        /// Smoothing constant.
        alpha: f32,
        /// Denominator term.
        eps: f32,
        /// L2 penalty.
        weight_decay: f32,
        /// Momentum factor.
        momentum: f32,
        /// Normalise by the estimated variance.
        centered: bool,
    },
}

impl Rule {
    /// The same rule with another weight decay (for parameter groups).
    pub fn with_weight_decay(mut self, wd: f32) -> Rule {
        match &mut self {
            Rule::Sgd { weight_decay, .. }
            | Rule::Adam { weight_decay, .. }
            | Rule::RmsProp { weight_decay, .. } => *weight_decay = wd,
        }
        self
    }

    /// State buffers per parameter (each the parameter's size).
    pub fn state_count(&self) -> usize {
        match self {
            Rule::Sgd { momentum, .. } => usize::from(*momentum != 0.0),
            Rule::Adam { .. } => 2,
            Rule::RmsProp { .. } => 3,
        }
    }

    /// The hyper-parameter words for step `step` (1-based) at learning rate `lr`.
    pub fn hyper(&self, lr: f32, step: u64) -> Vec<f32> {
        let b = |v: bool| if v { 1.0 } else { 0.0 };
        match *self {
            Rule::Sgd {
                momentum,
                dampening,
                nesterov,
                weight_decay,
            } => {
                vec![
                    lr,
                    momentum,
                    dampening,
                    weight_decay,
                    b(nesterov),
                    b(step <= 1),
                ]
            }
            Rule::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                decoupled,
            } => {
                let t = step.max(1) as i32;
                vec![
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    b(decoupled),
                    (1.0 - (beta1 as f64).powi(t)) as f32,
                    (1.0 - (beta2 as f64).powi(t)) as f32,
                ]
            }
            Rule::RmsProp {
                alpha,
                eps,
                weight_decay,
                momentum,
                centered,
            } => {
                vec![lr, alpha, eps, weight_decay, momentum, b(centered)]
            }
        }
    }
}

/// Updates `param` in place from `grad`, with `state` buffers (see [`Rule::state_count`]) and the
/// hyper-parameter buffer `hp` (see [`Rule::hyper`]). When `guard` holds a non-finite value (the
/// step's loss) the update is skipped on the device; `None` always updates.
pub fn step(
    dev: &Device,
    rule: &Rule,
    param: &Buffer,
    grad: &Buffer,
    state: &[Buffer],
    hp: &Buffer,
    guard: Option<&Buffer>,
) -> Result<()> {
    let guard = guard_or_zero(dev, guard)?;
    let guard = &guard;
    let n = param.len();
    if grad.len() != n || state.iter().any(|s| s.len() != n) || state.len() != rule.state_count() {
        return Err(OpError::Invalid {
            op: "optimizer step",
            message: format!(
                "parameter of {n} elements, gradient of {}, {} state buffers (want {})",
                grad.len(),
                state.len(),
                rule.state_count()
            ),
        });
    }
    let p = Params::new().u(n as u32);
    match rule {
        Rule::Sgd { .. } => {
            // Without momentum the kernel never touches the state binding; a 1-element buffer fills it.
            let s1 = crate::or_placeholder(dev, state.first())?;
            let bufs = [grad, hp, param, &s1, guard];
            launch_quads(dev, "optim", "sgd", &[], &bufs, &p, n)
        }
        Rule::Adam { .. } => {
            let bufs = [grad, hp, param, &state[0], &state[1], guard];
            launch_quads(dev, "optim", "adam", &[], &bufs, &p, n)
        }
        Rule::RmsProp { .. } => {
            let bufs = [grad, hp, param, &state[0], &state[1], &state[2], guard];
            launch_quads(dev, "optim", "rmsprop", &[], &bufs, &p, n)
        }
    }
}

/// One parameter of a group, for [`step_group`].
#[derive(Clone, Copy, Debug)]
pub struct Slot<'a> {
    /// The parameter, updated in place.
    pub param: &'a Buffer,
    /// Its gradient.
    pub grad: &'a Buffer,
    /// Where its state starts in the group's flat state buffers (elements; see
    /// [`state_layout`]).
    pub state_offset: usize,
}

/// Elements between consecutive parameters' state in a group's flat state buffers: 256 bytes,
/// so each parameter's state can be bound on its own (a [`Buffer::window`]) and read in quads.
pub const STATE_ALIGN: usize = 64;

/// Where each parameter of `lens` elements starts in a group's flat state buffers, and the
/// buffers' length.
pub fn state_layout(lens: &[usize]) -> (Vec<usize>, usize) {
    let mut at = 0;
    let offsets = lens
        .iter()
        .map(|&n| {
            let o = at;
            at += n.next_multiple_of(STATE_ALIGN).max(STATE_ALIGN);
            o
        })
        .collect();
    (offsets, at)
}

/// A group's update as the kernel choice sees it.
#[derive(Clone, Copy, Debug)]
pub struct OptimCall {
    /// Parameters updated.
    pub params: usize,
    /// Every parameter and gradient can be bound as 16-byte quads.
    pub quads: bool,
}

/// How a group's update runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimPlan {
    /// Entry point `entry`, `per_dispatch` parameters a dispatch, from flat state.
    Multi {
        /// The entry point (`multi` or `multi2`).
        entry: &'static str,
        /// Parameters per dispatch.
        per_dispatch: usize,
    },
    /// A dispatch per parameter.
    Single,
}

/// Where every parameter and gradient can be bound as quads, `Ok` if `entry` fits the device.
fn multi_plan(
    d: &Device,
    c: &OptimCall,
    entry: &'static str,
    per_dispatch: usize,
) -> std::result::Result<OptimPlan, String> {
    if !c.quads {
        return Err("a parameter or gradient cannot be bound as quads".into());
    }
    all_fit(d, &[KernelSpec::new("optim", entry, &[("RULE", 1.0)])])?;
    Ok(OptimPlan::Multi {
        entry,
        per_dispatch,
    })
}

/// The optimizer update's variants: every parameter of a group in dispatches of up to eight
/// (multi-tensor apply), of two where the adapter allows only WebGPU's default 8 storage buffers
/// per stage, or a dispatch per parameter.
pub static OPTIM: VariantTable<OptimCall, OptimPlan> = VariantTable {
    family: "optim",
    variants: &[
        Variant {
            name: "optim_multi",
            plan: |d, c| multi_plan(d, c, "multi", 8),
            prefers: |_, c| c.params > 1,
        },
        Variant {
            name: "optim_multi2",
            plan: |d, c| multi_plan(d, c, "multi2", 2),
            prefers: |_, c| c.params > 1,
        },
        Variant {
            name: "optim_single",
            plan: |_, _| Ok(OptimPlan::Single),
            prefers: |_, _| true,
        },
    ],
};

/// The variant the device's policy chooses for a group's update, and its pipeline.
pub fn plan(dev: &Device, c: &OptimCall) -> Result<crate::kernels::Planned> {
    let v = OPTIM.choose(dev, c)?;
    let kernels = match v.plan {
        OptimPlan::Multi { entry, .. } => vec![KernelSpec::new("optim", entry, &[("RULE", 1.0)])],
        OptimPlan::Single => vec![KernelSpec::new("optim", "adam4", &[])],
    };
    Ok(crate::kernels::Planned {
        family: OPTIM.family,
        variant: v.variant,
        kernels,
        largest_binding: 0,
    })
}

/// Updates every parameter of a group: `slots` with their gradients, the group's flat `state`
/// buffers (one per [`Rule::state_count`], laid out by [`state_layout`]), the hyper-parameter
/// buffer `hp`, and `guard` as in [`step`]. Up to eight parameters per dispatch where the
/// adapter's storage-buffer limit allows it (`optim_multi`), else a dispatch each.
pub fn step_group(
    dev: &Device,
    rule: &Rule,
    slots: &[Slot],
    state: &[Buffer],
    hp: &Buffer,
    guard: Option<&Buffer>,
) -> Result<()> {
    if state.len() != rule.state_count() {
        return Err(OpError::Invalid {
            op: "optimizer step",
            message: format!(
                "{} state buffers (want {})",
                state.len(),
                rule.state_count()
            ),
        });
    }
    for sl in slots {
        let n = sl.param.len();
        if sl.grad.len() != n || state.iter().any(|b| b.len() < sl.state_offset + n) {
            return Err(OpError::Invalid {
                op: "optimizer step",
                message: format!(
                    "parameter of {n} elements, gradient of {}, state from {} in buffers of {:?}",
                    sl.grad.len(),
                    sl.state_offset,
                    state.iter().map(|b| b.len()).collect::<Vec<_>>()
                ),
            });
        }
    }
    let call = OptimCall {
        params: slots.len(),
        quads: slots
            .iter()
            .all(|s| s.param.quad_aligned() && s.grad.quad_aligned() && s.state_offset % 4 == 0)
            && state.iter().all(Buffer::quad_aligned),
    };
    if slots.is_empty() {
        return Ok(());
    }
    let OptimPlan::Multi {
        entry,
        per_dispatch,
    } = OPTIM.choose(dev, &call)?.plan
    else {
        for sl in slots {
            let n = sl.param.len();
            let windows: Vec<Buffer> = state
                .iter()
                .map(|b| {
                    b.window((sl.state_offset * 4) as u64, n.max(1))
                        .expect("state inside its buffer (checked above)")
                })
                .collect();
            step(dev, rule, sl.param, sl.grad, &windows, hp, guard)?;
        }
        return Ok(());
    };
    let guard = guard_or_zero(dev, guard)?;
    let guard = &guard;
    let code = match rule {
        Rule::Sgd { .. } => 0.0,
        Rule::Adam { .. } => 1.0,
        Rule::RmsProp { .. } => 2.0,
    };
    let k = dev.kernel("optim", entry, &[("RULE", code)])?;
    // Writable bindings the dispatch does not use (state the rule has none of, parameter slots
    // past a short chunk) still need a buffer each, and distinct ones: WebGPU refuses a buffer
    // bound twice where either binding is writable.
    let spare = |n: usize| -> Result<Vec<Buffer>> {
        Ok((0..n)
            .map(|_| dev.alloc(4, crate::DType::F32))
            .collect::<std::result::Result<_, _>>()?)
    };
    let unused_state = spare(3 - state.len().min(3))?;
    let unused_params = spare(per_dispatch - 1)?;
    // The parameter block holds eight slots whatever the entry point reads.
    for chunk in slots.chunks(per_dispatch) {
        let mut starts = [0u32; 8];
        let mut lens = [0u32; 8];
        let mut offs = [0u32; 8];
        let mut total = 0usize;
        for (i, sl) in chunk.iter().enumerate() {
            starts[i] = total as u32;
            lens[i] = sl.param.len() as u32;
            offs[i] = (sl.state_offset / 4) as u32;
            total += sl.param.len().div_ceil(4);
        }
        let mut bufs: Vec<&Buffer> = vec![hp, guard];
        // Slots past the chunk read its first gradient and write a spare buffer; no invocation
        // reaches them.
        let pick = |i: usize| chunk.get(i).unwrap_or(&chunk[0]);
        bufs.extend((0..per_dispatch).map(|i| pick(i).grad));
        bufs.extend((0..per_dispatch).map(|i| match chunk.get(i) {
            Some(sl) => sl.param,
            None => &unused_params[i - chunk.len()],
        }));
        bufs.extend(state.iter().take(3).chain(&unused_state));
        let p = Params::new()
            .us(&[chunk.len() as u32, total as u32, 0, 0])
            .us(&starts)
            .us(&lens)
            .us(&offs);
        launch_1d(dev, &k, &bufs, &p, total)?;
    }
    Ok(())
}

/// The guard buffer, or a zero (a finite loss: the update always runs) where none is given.
fn guard_or_zero(dev: &Device, guard: Option<&Buffer>) -> Result<Buffer> {
    match guard {
        Some(g) => Ok(g.clone()),
        None => {
            let zero = dev.alloc(1, crate::DType::F32)?;
            crate::fill(dev, &zero, 0.0)?;
            Ok(zero)
        }
    }
}

/// CPU reference of one step, PyTorch's formulas in f64. Returns nothing; updates in place.
pub fn cpu_step(
    rule: &Rule,
    lr: f64,
    step: u64,
    param: &mut [f64],
    grad: &[f64],
    state: &mut [Vec<f64>],
) {
    for i in 0..param.len() {
        match *rule {
            Rule::Sgd {
                momentum,
                dampening,
                nesterov,
                weight_decay,
            } => {
                let mut g = grad[i] + weight_decay as f64 * param[i];
                if momentum != 0.0 {
                    let m = momentum as f64;
                    let buf = if step <= 1 {
                        g
                    } else {
                        m * state[0][i] + (1.0 - dampening as f64) * g
                    };
                    state[0][i] = buf;
                    g = if nesterov { g + m * buf } else { buf };
                }
                param[i] -= lr * g;
            }
            Rule::Adam {
                beta1,
                beta2,
                eps,
                weight_decay,
                decoupled,
            } => {
                let (b1, b2) = (beta1 as f64, beta2 as f64);
                let mut g = grad[i];
                if decoupled {
                    param[i] *= 1.0 - lr * weight_decay as f64;
                } else {
                    g += weight_decay as f64 * param[i];
                }
                state[0][i] = b1 * state[0][i] + (1.0 - b1) * g;
                state[1][i] = b2 * state[1][i] + (1.0 - b2) * g * g;
                let bc1 = 1.0 - b1.powi(step as i32);
                let bc2 = 1.0 - b2.powi(step as i32);
                param[i] -=
                    lr / bc1 * state[0][i] / ((state[1][i]).sqrt() / bc2.sqrt() + eps as f64);
            }
            Rule::RmsProp {
                alpha,
                eps,
                weight_decay,
                momentum,
                centered,
            } => {
                let a = alpha as f64;
                let g = grad[i] + weight_decay as f64 * param[i];
                state[0][i] = a * state[0][i] + (1.0 - a) * g * g;
                let avg = if centered {
                    state[1][i] = a * state[1][i] + (1.0 - a) * g;
                    (state[0][i] - state[1][i] * state[1][i]).sqrt() + eps as f64
                } else {
                    state[0][i].sqrt() + eps as f64
                };
                if momentum > 0.0 {
                    state[2][i] = momentum as f64 * state[2][i] + g / avg;
                    param[i] -= lr * state[2][i];
                } else {
                    param[i] -= lr * g / avg;
                }
            }
        }
    }
}

/// Scales gradients in place so their global L2 norm is at most `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`). The norm is summed on the device; nothing is read back.
/// Returns the squared global norm (a device scalar), for logging.
pub fn clip_grad_norm(dev: &Device, grads: &[&Buffer], max_norm: f32) -> Result<crate::Array> {
    use crate::elementwise::{binary, unary, Binary, Unary};
    let mut total: Option<crate::Array> = None;
    for g in grads {
        let a = crate::Array {
            buf: (*g).clone(),
            shape: vec![g.len()],
        };
        let sq = crate::reduce::sum_all(dev, &unary(dev, &a, Unary::Square)?)?.reshape(&[1])?;
        total = Some(match total {
            Some(t) => binary(dev, &t, &sq, Binary::Add)?,
            None => sq,
        });
    }
    let total = total.ok_or(OpError::Invalid {
        op: "clip_grad_norm",
        message: "no gradients".into(),
    })?;
    // hp = [sum_sq, max_norm]: the sum is copied in by a strided copy, the bound written once.
    let hp = crate::Array::full(dev, &[2], max_norm)?;
    crate::layout::strided_copy(dev, &total.buf, &hp.buf, &[1], 0, &[1], 0, &[1])?;
    let k = dev.kernel("optim", "clip", &[])?;
    for g in grads {
        launch_1d(
            dev,
            &k,
            &[&hp.buf, g],
            &Params::new().u(g.len() as u32),
            g.len(),
        )?;
    }
    Ok(total)
}
