//! The ops' error type.

use kiln_device::{DType, DeviceError};
use thiserror::Error;

/// What an op can report.
#[derive(Debug, Error, Clone)]
pub enum OpError {
    /// A shape that does not fit the op.
    #[error("{op}: expected {expected}, got {got}")]
    Shape {
        /// The op.
        op: &'static str,
        /// What it takes.
        expected: String,
        /// What it was given.
        got: String,
    },
    /// A dtype the op does not take.
    #[error("{op}: expected dtype {expected}, got {got}")]
    DType {
        /// The op.
        op: &'static str,
        /// The dtype it takes.
        expected: DType,
        /// The dtype it was given.
        got: DType,
    },
    /// An argument outside its valid range.
    #[error("{op}: {message}")]
    Invalid {
        /// The op.
        op: &'static str,
        /// What is wrong.
        message: String,
    },
    /// An op without a backward pass was asked for a gradient.
    #[error("{op} has no backward pass: it can run only where no input needs a gradient")]
    NoBackward {
        /// The op.
        op: String,
    },
    /// From the device layer.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// The ops' result type.
pub type Result<T, E = OpError> = std::result::Result<T, E>;
