//! What timings are: their source, durations, per-kernel times, and the timestamps of a profiled
//! submission waiting to be read. (`profiling` takes them.)

/// Where a timing came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimingSource {
    /// GPU timestamp queries at the start and end of the compute pass.
    GpuTimestamps,
    /// CPU wall clock around submission and wait.
    CpuWallClock,
}

/// A measured duration.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Seconds.
    pub seconds: f64,
    /// How it was measured.
    pub source: TimingSource,
}

/// GPU time spent in one kernel (by label) during [`crate::Device::profile`].
#[derive(Clone, Debug)]
pub struct KernelTime {
    /// The kernel's label: shader, entry point and override constants.
    pub kernel: String,
    /// Dispatches of it.
    pub calls: u64,
    /// Seconds of GPU time, summed over its dispatches.
    pub seconds: f64,
}

/// Dispatches per query set: two timestamps each, within wgpu's 4,096 queries per set.
pub(crate) const PROFILE_CHUNK: usize = 2048;

/// The timestamps of one submission's dispatches, waiting to be read.
pub(crate) struct ProfileChunk {
    pub(crate) labels: Vec<String>,
    pub(crate) read: wgpu::Buffer,
}
