//! Shared by the kernel benchmarks (`mod common;`).
use kiln::device::{Device, Timing};

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
