//! kiln-graph: tensors with reverse-mode autograd, and training steps recorded once and replayed.
//!
//! Every op runs eagerly in the sense that its dispatch is recorded at once (so values can be read
//! back mid-graph); the dispatches reach the GPU together at the next readback or flush. A
//! [`StepPlan`] records one whole step (forward, backward, optimizer update) and replays it with
//! one submission per step.

mod plan;
mod tensor;

pub use kiln_ops::{Array, DType, Device, OpError};
pub use plan::StepPlan;
pub use tensor::{
    autocast_f16, autocast_f16_when, is_autocast_f16, is_grad_enabled, no_grad, Recurrence, Tensor,
};

/// The graph's result type (op errors pass through unchanged).
pub type Result<T, E = OpError> = std::result::Result<T, E>;
