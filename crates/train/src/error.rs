//! The training layer's one error type.

use kiln_nn::NnError;
use kiln_ops::{DeviceError, OpError};
use thiserror::Error;

/// Errors of the training loops.
#[derive(Debug, Error)]
pub enum TrainError {
    /// From a module, an optimizer, an op or the device.
    #[error(transparent)]
    Nn(#[from] NnError),
    /// A training run that cannot continue (bad settings, a non-finite loss).
    #[error("training: {0}")]
    Training(String),
    /// From the data-parallel layer (kiln-dist): the transport, or another process.
    #[error("data-parallel training: {0}")]
    Parallel(Box<dyn std::error::Error + Send + Sync>),
    /// A checkpoint or report file that cannot be read or written.
    #[error("{path}: {message}")]
    File {
        /// The file or directory.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

impl From<OpError> for TrainError {
    fn from(e: OpError) -> Self {
        TrainError::Nn(e.into())
    }
}

impl From<DeviceError> for TrainError {
    fn from(e: DeviceError) -> Self {
        TrainError::Nn(e.into())
    }
}

/// The training layer's result type.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
