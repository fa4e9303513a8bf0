//! Capture and replay: a thread's dispatches recorded once into a [`Plan`] and submitted again
//! and again, with the buffers they touch kept out of the pool while the plan lives.

use crate::buffer::{self, Pool, Raw};
use crate::device::Device;
use crate::dispatch::{Capture, Dispatch};
use crate::error::{DeviceError, Result};
use std::sync::Arc;

/// A recorded list of dispatches that can be submitted again and again.
///
/// It keeps every buffer it touched out of the pool while it lives, so nothing outside the plan
/// can reuse an intermediate between replays; dropping it returns them.
pub struct Plan {
    dispatches: Vec<Arc<Dispatch>>,
    held: Vec<Raw>,
    /// Buffers owned elsewhere when recording ended: if their owner drops them, the plan still
    /// writes them on replay, so they must not go back to the pool before the plan does.
    _kept: Vec<Arc<buffer::BufferInner>>,
    pool: Arc<Pool>,
}

impl Plan {
    /// Number of dispatches one replay submits.
    pub fn len(&self) -> usize {
        self.dispatches.len()
    }
    /// True when the plan recorded nothing.
    pub fn is_empty(&self) -> bool {
        self.dispatches.is_empty()
    }
    /// What each dispatch launches, in order: for audits of a recorded step (how many
    /// workgroups each kernel spreads over) and for profiles.
    pub fn dispatches(&self) -> Vec<DispatchInfo> {
        self.dispatches
            .iter()
            .map(|d| DispatchInfo {
                kernel: d.kernel.label().to_string(),
                groups: d.groups,
                workgroup_size: d.kernel.footprint().workgroup_size,
            })
            .collect()
    }
}

/// One recorded dispatch, as [`Plan::dispatches`] lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatchInfo {
    /// The kernel's label: "shader::entry" and its override constants.
    pub kernel: String,
    /// Workgroups in each dimension (after splitting counts over one dimension's limit).
    pub groups: [u32; 3],
    /// Invocations per workgroup in each dimension.
    pub workgroup_size: [u32; 3],
}

impl DispatchInfo {
    /// Workgroups in all.
    pub fn workgroups(&self) -> u64 {
        self.groups.iter().map(|&g| g as u64).product()
    }
}

impl Drop for Plan {
    fn drop(&mut self) {
        self.pool.release_held(std::mem::take(&mut self.held));
    }
}
impl Device {
    /// Starts recording on this thread: every dispatch this thread records from now on is also
    /// kept for a [`Plan`] (other threads are unaffected). The recorded work still runs once, at
    /// the next flush.
    pub fn begin_capture(&self) -> Result<()> {
        let me = std::thread::current().id();
        let mut caps = self.inner.captures.lock().unwrap();
        if caps.contains_key(&me) {
            return Err(DeviceError::Binding {
                kernel: "capture".into(),
                message: "this thread is already recording a plan".into(),
            });
        }
        self.inner.pool.begin_capture();
        caps.insert(
            me,
            Capture {
                dispatches: Vec::new(),
                touched: Vec::new(),
            },
        );
        Ok(())
    }

    /// Ends this thread's recording and returns the plan.
    pub fn end_capture(&self) -> Result<Plan> {
        let me = std::thread::current().id();
        let cap = self.inner.captures.lock().unwrap().remove(&me);
        let cap = cap.ok_or_else(|| DeviceError::Binding {
            kernel: "capture".into(),
            message: "end_capture without begin_capture on this thread".into(),
        })?;
        let held = self.inner.pool.end_capture();
        let mut kept: Vec<Arc<buffer::BufferInner>> =
            cap.touched.iter().filter_map(|w| w.upgrade()).collect();
        kept.sort_by_key(|b| Arc::as_ptr(b) as usize);
        kept.dedup_by_key(|b| Arc::as_ptr(b) as usize);
        Ok(Plan {
            dispatches: cap.dispatches,
            held,
            _kept: kept,
            pool: self.inner.pool.clone(),
        })
    }

    /// Submits a plan's dispatches (after any pending work) in one submission.
    pub fn replay(&self, plan: &Plan) -> Result<()> {
        self.submit_with(Some(&plan.dispatches), |_| {})
    }
}
