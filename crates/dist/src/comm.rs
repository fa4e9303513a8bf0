//! The process group: how this process was started, its rank and its machine-local rank, the
//! adapter it trains on, and collectives that never wait forever.
//!
//! Every collective here is MPI's non-blocking form polled against a deadline (the watchdog):
//! when another process has died or hung, the survivors report which operation did not complete
//! and end the job with `MPI_Abort`, since MPI cannot cancel a collective. A process whose own
//! step fails calls [`Dist::fail`], which aborts the others at once instead of leaving them
//! waiting for its half of the next all-reduce.

use crate::{DistError, Result};
use kiln_device::Device;
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::request::{Request, Scope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use std::fmt::Display;
use std::time::{Duration, Instant};

/// How long a collective may wait for the other processes before the job is aborted, unless
/// [`Dist::init`] is given another: long enough for the slowest legitimate wait (another process
/// compiling its kernels on a software adapter, or evaluating), short enough that a hung job ends.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// Exit code of processes ended by the watchdog or by [`Dist::fail`].
pub const ABORT_CODE: i32 = 3;

/// This process's place among the processes of a data-parallel job, over MPI.
pub struct Dist {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    local_rank: usize,
    local_size: usize,
    timeout: Duration,
    // Last: MPI_Finalize runs when it drops, after the communicator is gone.
    _universe: Universe,
}

impl Dist {
    /// Initialises MPI in a process that an MPI launcher started (`mpirun -np N program ...`).
    /// Without a launcher this is [`DistError::NoLauncher`], whose message names `mpirun`: a
    /// program asked to train in parallel must not silently train alone.
    ///
    /// Collectives wait at most `timeout` for the other processes (see the module's doc). From
    /// here on, a panic in this process aborts the whole job.
    pub fn init(timeout: Duration) -> Result<Dist> {
        if !crate::launcher::launched_by_mpi() {
            return Err(DistError::NoLauncher);
        }
        let universe = mpi::initialize().ok_or(DistError::AlreadyInitialized)?;
        let world = universe.world();
        // The processes that share this machine's memory: its rank there picks the adapter.
        let local = world.split_shared(world.rank());
        let dist = Dist {
            rank: world.rank() as usize,
            size: world.size() as usize,
            local_rank: local.rank() as usize,
            local_size: local.size() as usize,
            world,
            timeout,
            _universe: universe,
        };
        let (rank, size) = (dist.rank, dist.size);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            eprintln!("kiln-dist: rank {rank} of {size} panicked; aborting every rank");
            // SAFETY: MPI is initialised (this hook is installed after MPI_Init) and MPI_Abort
            // takes no buffers; it does not return.
            unsafe {
                mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, ABORT_CODE);
            }
        }));
        Ok(dist)
    }

    /// This process's rank, 0 to `size() - 1`.
    pub fn rank(&self) -> usize {
        self.rank
    }
    /// Number of processes.
    pub fn size(&self) -> usize {
        self.size
    }
    /// Rank among the processes on this machine.
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }
    /// Number of processes on this machine.
    pub fn local_size(&self) -> usize {
        self.local_size
    }
    /// True on rank 0, the process that writes checkpoints, reports and progress.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }
    /// How long a collective waits for the others before aborting the job.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// This process's device: adapter `index` in [`Device::adapters`]' order when given
    /// (`--device-index`); otherwise, as PyTorch's `cuda:LOCAL_RANK`, the local rank's turn among
    /// the machine's adapters of the preferred kind (processes on a machine with two GPUs take
    /// one each; on a machine with one adapter they share it). `WGPU_ADAPTER_NAME`, when set and
    /// no index is given, chooses instead, as for [`Device::new`].
    pub fn device(&self, index: Option<usize>) -> Result<Device> {
        if let Some(i) = index {
            return Ok(Device::with_adapter_index(i)?);
        }
        if std::env::var("WGPU_ADAPTER_NAME").is_ok_and(|s| !s.is_empty()) {
            return Ok(Device::new()?);
        }
        let adapters = Device::adapters();
        let kind = adapters.first().map(|a| a.device_type.clone());
        let same_kind = adapters
            .iter()
            .take_while(|a| Some(&a.device_type) == kind.as_ref())
            .count()
            .max(1);
        Ok(Device::with_adapter_index(self.local_rank % same_kind)?)
    }

    /// Reports this process's failure and ends the job: every process exits (`MPI_Abort`) at
    /// once instead of waiting for this one's part of the next collective.
    pub fn fail(&self, error: &dyn Display) -> ! {
        eprintln!(
            "kiln-dist: rank {} of {} failed: {error}; aborting every rank",
            self.rank, self.size
        );
        self.world.abort(ABORT_CODE)
    }

    /// Waits for `request`, polling MPI so that the operation progresses; past the timeout,
    /// names `what` and ends the job.
    pub(crate) fn finish<'a, D: ?Sized, S: Scope<'a>>(
        &self,
        mut request: Request<'a, D, S>,
        what: &dyn Fn() -> String,
    ) {
        let start = Instant::now();
        let mut idle = Backoff::default();
        loop {
            match request.test() {
                Ok(_) => return,
                Err(r) => request = r,
            }
            self.check_deadline(start, what);
            idle.wait();
        }
    }

    /// Ends the job when an operation started at `start` has waited past the timeout.
    pub(crate) fn check_deadline(&self, start: Instant, what: &dyn Fn() -> String) {
        if start.elapsed() > self.timeout {
            eprintln!(
                "kiln-dist: rank {} of {}: {} did not complete within {} s: another rank failed, \
                 was killed or hung; aborting every rank",
                self.rank,
                self.size,
                what(),
                self.timeout.as_secs_f64()
            );
            self.world.abort(ABORT_CODE);
        }
    }

    pub(crate) fn world(&self) -> &SimpleCommunicator {
        &self.world
    }

    /// Overwrites `data` with rank 0's values, in every process.
    pub fn broadcast<T: Equivalence>(&self, data: &mut [T], what: &str) {
        let root = self.world.process_at_rank(0);
        mpi::request::scope(|scope| {
            let req = root.immediate_broadcast_into(scope, data);
            self.finish(req, &|| format!("the broadcast of {what}"));
        });
    }

    /// Element-wise sums of `data` over every process, in every process.
    pub fn sum<T: Equivalence + Copy>(&self, data: &mut [T], what: &str) {
        let send = data.to_vec();
        mpi::request::scope(|scope| {
            let req = self.world.immediate_all_reduce_into(
                scope,
                &send[..],
                data,
                SystemOperation::sum(),
            );
            self.finish(req, &|| format!("the sum of {what}"));
        });
    }

    /// The smallest and the largest of `value` over every process, for checking that they agree.
    pub fn min_max(&self, value: u64, what: &str) -> (u64, u64) {
        let send = [value, u64::MAX - value];
        let mut got = [0u64; 2];
        mpi::request::scope(|scope| {
            let req = self.world.immediate_all_reduce_into(
                scope,
                &send[..],
                &mut got[..],
                SystemOperation::min(),
            );
            self.finish(req, &|| format!("the comparison of {what}"));
        });
        (got[0], u64::MAX - got[1])
    }

    /// Waits until every process gets here.
    pub fn barrier(&self, what: &str) {
        let req = self.world.immediate_barrier();
        self.finish(req, &|| format!("the barrier at {what}"));
    }
}

/// Idle waiting between polls: a few yields, then sleeps growing to a millisecond, so that a
/// process waiting on the others leaves the cores to the ones still computing (on a software
/// adapter the GPU's work runs on the same cores).
#[derive(Default)]
pub(crate) struct Backoff(u32);

impl Backoff {
    pub(crate) fn wait(&mut self) {
        if self.0 < 16 {
            std::thread::yield_now();
        } else {
            let us = (50u64 << ((self.0 - 16) / 8).min(4)).min(1000);
            std::thread::sleep(Duration::from_micros(us));
        }
        self.0 = self.0.saturating_add(1);
    }
    pub(crate) fn reset(&mut self) {
        self.0 = 0;
    }
}
