//! Record a training step once, replay it every step.

use crate::Result;
use kiln_ops::{Device, Plan};

/// One recorded step: the dispatches of forward, backward and optimizer update, with every
/// intermediate buffer allocated once. Buffers freed while recording are reused by later ops of the
/// same step (the pool hands them out again), so the plan holds what one step needs at once and
/// nothing more; replaying allocates nothing.
///
/// Values that change between steps (the batch, the learning rate, the step count) live in
/// buffers the host rewrites with [`Device::write`] before [`StepPlan::replay`]; the plan itself
/// never changes, so changing them never re-records.
pub struct StepPlan {
    plan: Plan,
    dev: Device,
}

impl StepPlan {
    /// Runs `step` once while recording every dispatch it makes. The recorded work also executes,
    /// as the first step, at the next flush. Returns the plan and what `step` returned (typically
    /// the loss tensor, whose buffer every replay rewrites).
    pub fn record<T, E: From<kiln_ops::OpError>>(
        dev: &Device,
        step: impl FnOnce() -> std::result::Result<T, E>,
    ) -> std::result::Result<(StepPlan, T), E> {
        dev.begin_capture().map_err(kiln_ops::OpError::from)?;
        let out = step();
        // End the capture whatever happened, so the device is left recording nothing.
        let plan = dev.end_capture().map_err(kiln_ops::OpError::from)?;
        Ok((
            StepPlan {
                plan,
                dev: dev.clone(),
            },
            out?,
        ))
    }

    /// Submits the recorded step: one command buffer, one queue submission, no waiting.
    pub fn replay(&self) -> Result<()> {
        Ok(self.dev.replay(&self.plan)?)
    }

    /// Dispatches per replay.
    pub fn dispatches(&self) -> usize {
        self.plan.len()
    }

    /// The recorded device plan (its dispatches, for audits of what a step launches).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }
}
