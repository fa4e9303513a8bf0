use thiserror::Error;

/// What the data-parallel layer reports instead of panicking or hanging.
#[derive(Debug, Error)]
pub enum DistError {
    /// Parallel training was asked for in a process that no MPI launcher started.
    #[error(
        "distributed training needs an MPI launcher: start the program with \
         `mpirun -np N <program> ...` (none of the launcher's variables {:?} is set)",
        crate::launcher::LAUNCHER_VARIABLES
    )]
    NoLauncher,
    /// MPI was initialised before (one `Dist` per process).
    #[error("MPI is already initialised in this process (create one Dist per process)")]
    AlreadyInitialized,
    /// The processes do not agree on something they must share (the model, the gradients'
    /// layout, the batch).
    #[error("the processes disagree: {0}")]
    Mismatch(String),
    /// Settings that cannot work.
    #[error("{0}")]
    Config(String),
    /// From the device.
    #[error(transparent)]
    Device(#[from] kiln_device::DeviceError),
    /// From an op.
    #[error(transparent)]
    Op(#[from] kiln_ops::OpError),
    /// From the training layer (a forward pass, an optimizer, a checkpoint).
    #[error(transparent)]
    Train(#[from] kiln_train::TrainError),
}

impl From<kiln_nn::NnError> for DistError {
    fn from(e: kiln_nn::NnError) -> Self {
        DistError::Train(e.into())
    }
}

impl From<DistError> for kiln_train::TrainError {
    fn from(e: DistError) -> Self {
        match e {
            DistError::Train(t) => t,
            other => kiln_train::TrainError::Parallel(Box::new(other)),
        }
    }
}

/// kiln-dist's result type.
pub type Result<T, E = DistError> = std::result::Result<T, E>;
