//! Shared by the benchmarks (`mod common;`): timing and the JSON lines they print.
#![allow(dead_code)]
use kiln::device::{Device, Timing};

#[path = "../../examples/common/json.rs"]
mod json;
pub use json::JsonLine;

/// Runs `work` once to compile and warm up, then times `reps` more runs in one measurement.
pub fn time_reps<E>(
    dev: &Device,
    reps: usize,
    work: impl Fn() -> Result<(), E>,
) -> anyhow::Result<Timing>
where
    E: From<kiln::device::DeviceError> + std::error::Error + Send + Sync + 'static,
{
    work()?;
    dev.wait()?;
    Ok(dev.time(|| {
        for _ in 0..reps {
            work()?;
        }
        Ok::<(), E>(())
    })?)
}
