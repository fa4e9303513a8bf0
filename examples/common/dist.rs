//! `--distributed` and the options that go with it, for the examples that train in several
//! processes under `mpirun -np N` (each on its share of every batch; see kiln::dist). Built
//! without the `dist` feature, no process group can exist (`Dist` has no values) and
//! `--distributed` is refused with the feature to build with.
// Each example uses what fits its loop.
#![allow(dead_code)]
use anyhow::Result;
use kiln::device::Device;
#[cfg(feature = "dist")]
use kiln::dist::DdpConfig;
#[cfg(feature = "dist")]
pub use kiln::dist::{Dist, StepTimes};
#[cfg(not(feature = "dist"))]
pub use without_mpi::{Dist, StepTimes};

/// What a build without the `dist` feature has in kiln::dist's place.
#[cfg(not(feature = "dist"))]
mod without_mpi {
    use kiln::device::Device;

    /// A process group, of which a build without MPI has none.
    pub enum Dist {}

    impl Dist {
        pub fn size(&self) -> usize {
            match *self {}
        }
        pub fn rank(&self) -> usize {
            match *self {}
        }
        pub fn is_root(&self) -> bool {
            match *self {}
        }
        pub fn device(&self, _: Option<usize>) -> anyhow::Result<Device> {
            match *self {}
        }
        pub fn fail(&self, _: &str) -> ! {
            match *self {}
        }
    }

    /// The data-parallel step times, of which a single process has none.
    #[derive(Default, Clone, Copy)]
    pub struct StepTimes;
}

/// `--distributed`, `--device-index`, `--dist-timeout`, `--bucket-mb`.
#[derive(clap::Args, Debug, Clone)]
pub struct DistArgs {
    /// Train one model in every process `mpirun -np N` starts, each on its share of every batch
    /// (batch sizes stay global), averaging gradients over MPI; only rank 0 prints and writes.
    #[arg(long)]
    pub distributed: bool,
    /// The adapter to train on, by its index in device_info's list (default: the preferred one;
    /// with --distributed, each process on a machine takes its local rank's).
    #[arg(long)]
    pub device_index: Option<usize>,
    /// With --distributed: seconds a process waits for the others in a collective before ending
    /// the job (another process failed or hung).
    #[arg(long, default_value_t = 300.0, value_parser = crate::common::positive_f32)]
    pub dist_timeout: f32,
    /// With --distributed: gradient megabytes per all-reduce (PyTorch's bucket_cap_mb).
    #[arg(long, default_value_t = 25.0, value_parser = crate::common::positive_f32)]
    pub bucket_mb: f32,
}

impl DistArgs {
    /// MPI when --distributed (an error naming mpirun when no launcher started this process).
    #[cfg(feature = "dist")]
    pub fn init(&self) -> Result<Option<Dist>> {
        use anyhow::Context;
        if !self.distributed {
            if kiln::dist::launched_by_mpi() {
                eprintln!(
                    "warning: started by an MPI launcher without --distributed: every process \
                     trains a model of its own"
                );
            }
            return Ok(None);
        }
        Ok(Some(
            Dist::init(std::time::Duration::from_secs_f32(self.dist_timeout))
                .context("--distributed")?,
        ))
    }

    /// Without the `dist` feature: --distributed is an error naming the feature.
    #[cfg(not(feature = "dist"))]
    pub fn init(&self) -> Result<Option<Dist>> {
        anyhow::ensure!(
            !self.distributed,
            "--distributed needs kiln's `dist` feature (MPI): build with `cargo build --release \
             --features dist --example NAME`"
        );
        Ok(None)
    }

    /// This process's device.
    pub fn device(&self, dist: Option<&Dist>) -> Result<Device> {
        Ok(match (dist, self.device_index) {
            (Some(d), i) => d.device(i)?,
            (None, Some(i)) => Device::with_adapter_index(i)?,
            (None, None) => Device::new()?,
        })
    }

    /// The data-parallel settings.
    #[cfg(feature = "dist")]
    pub fn ddp(&self) -> DdpConfig {
        DdpConfig {
            bucket_bytes: ((self.bucket_mb as f64) * (1u64 << 20) as f64).max(4.0) as usize,
        }
    }
}

/// The checkpoint and report options this process acts on: all of them in rank 0 (or the only
/// process); without `--save` in the others, which write nothing, so that only rank 0 takes the
/// checkpoint path's lock (a second process taking it would be refused as another run). Every
/// process reads `--resume`.
pub fn run_args(args: &crate::common::RunArgs, dist: Option<&Dist>) -> crate::common::RunArgs {
    let mut a = args.clone();
    if !is_root(dist) {
        a.save = None;
        a.save_every = None;
        a.out = None;
    }
    a
}

/// True in the process that prints and writes files: rank 0, or the only one.
pub fn is_root(dist: Option<&Dist>) -> bool {
    dist.is_none_or(Dist::is_root)
}

/// Runs an example's body; under --distributed, an error ends every process at once (MPI_Abort)
/// instead of leaving the others waiting for this one's part of the next step.
pub fn run<T>(dist: Option<&Dist>, body: impl FnOnce() -> Result<T>) -> Result<T> {
    let r = body();
    if let (Err(e), Some(d)) = (&r, dist) {
        d.fail(&format!("{e:#}"));
    }
    r
}

/// The JSON fields of a distributed run, added to `line`: the number of processes and, per
/// synchronised step, the time and its split (rank 0's view) and the bytes each process
/// all-reduces.
#[cfg(feature = "dist")]
pub fn json_fields(
    line: crate::common::JsonLine,
    dist: Option<&Dist>,
    t: &StepTimes,
) -> crate::common::JsonLine {
    let Some(d) = dist else {
        return line.set("processes", 1);
    };
    let per = |s: f64| s * 1e3 / t.steps.max(1) as f64;
    line.set("processes", d.size())
        .num("dist_step_ms", per(t.total), 2)
        .num("dist_submit_ms", per(t.submit), 2)
        .num("dist_compute_wait_ms", per(t.compute), 2)
        .num("dist_host_copies_ms", per(t.copies), 2)
        .num("dist_allreduce_wait_ms", per(t.allreduce), 2)
        .set("dist_bytes_per_step", t.bytes / t.steps.max(1))
}

/// The JSON fields of a run without the `dist` feature: one process.
#[cfg(not(feature = "dist"))]
pub fn json_fields(
    line: crate::common::JsonLine,
    dist: Option<&Dist>,
    _: &StepTimes,
) -> crate::common::JsonLine {
    if let Some(d) = dist {
        match *d {}
    }
    line.set("processes", 1)
}
