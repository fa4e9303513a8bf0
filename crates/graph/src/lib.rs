//! kiln-graph: tensors with reverse-mode autograd, and training steps recorded once and replayed.
//!
//! Every op runs eagerly in the sense that its dispatch is recorded at once (so values can be read
//! back mid-graph); the dispatches reach the GPU together at the next readback or flush. Ops
//! reach the tape through [`Tensor::apply`], which takes any [`kiln_ops::op::Op`] (kiln's own or
//! a user's). A [`StepPlan`] records one whole step (forward, backward, optimizer update) and
//! replays it with one submission per step. [`gradcheck()`] checks an op's or a model's gradients
//! against finite differences.

mod checkpoint;
mod function;
pub mod gradcheck;
mod methods;
mod mode;
mod plan;
mod recurrence;
mod tensor;

pub use checkpoint::checkpoint;
pub use function::{Function, FunctionCtx};
pub use gradcheck::{gradcheck, GradCheck, GradCheckError};
pub use kiln_ops::{Array, DType, Device, OpError};
pub use mode::{
    autocast_f16, autocast_f16_when, enable_grad, is_autocast_f16, is_grad_enabled, no_grad,
};
pub use plan::StepPlan;
pub use recurrence::Recurrence;
pub use tensor::Tensor;

/// The graph's result type (op errors pass through unchanged).
pub type Result<T, E = OpError> = std::result::Result<T, E>;
