//! kiln-dist: data-parallel training across processes and machines over MPI, with the semantics
//! of PyTorch's DistributedDataParallel. Gradients travel through host buffers, so it works with
//! any adapter wgpu drives (and with several processes sharing one).
//!
//! - [`comm`]: the process group ([`Dist`]): started by `mpirun`, rank and machine-local rank, the
//!   adapter each process takes, collectives with a watchdog, and aborting the job on failure.
//! - [`ddp`]: [`DistributedDataParallel`]: the broadcast from rank 0, bucketed non-blocking
//!   all-reduce of the gradients overlapped with backward, `no_sync` accumulation; it implements
//!   `kiln_train::parallel::DataParallel`, so `fit` (`FitConfig::with_distributed`) and `train_lm_parallel` run on it.
//! - [`sampler`]: which examples each process trains on in an epoch.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use kiln_dist::{DdpConfig, Dist, DistributedDataParallel, DEFAULT_TIMEOUT};
//! let dist = Dist::init(DEFAULT_TIMEOUT)?;          // under `mpirun -np N`
//! let dev = dist.device(None)?;                      // this process's adapter
//! let mut ddp = DistributedDataParallel::new(&dist, &dev, DdpConfig::default());
//! // let cfg = kiln_train::FitConfig::default().with_distributed(&mut ddp);
//! // kiln_train::fit(&dev, &model, &mut opt, Loss::CrossEntropy, &train, cfg)?;
//! # Ok(()) }
//! ```

pub mod comm;
pub mod ddp;
mod error;
mod launcher;
pub mod sampler;

pub use comm::{Dist, ABORT_CODE, DEFAULT_TIMEOUT};
pub use ddp::{DdpConfig, DistributedDataParallel, StepTimes};
pub use error::{DistError, Result};
pub use launcher::{launched_by_mpi, LAUNCHER_VARIABLES};
pub use sampler::DistributedSampler;
