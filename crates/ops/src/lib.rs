//! kiln-ops: one module per op family. Each has shape checks that return [`OpError`], a launcher
//! for its WGSL kernel, its backward rule, and a plain CPU reference (f64) used by the tests.
//!
//! Ops take and return [`Array`]s: a device buffer with a row-major shape. Each family also
//! implements [`op::Op`] (forward, backward, variant) beside its launchers, which is how
//! kiln-graph's autograd runs it; users' own ops implement the same trait.

mod array;
pub mod attention;
pub mod banks;
pub mod conv;
pub mod decode;
pub mod dropout;
pub mod elementwise;
mod error;
pub mod finite;
pub mod gemm;
pub mod geometry;
pub mod half;
pub mod int8;
pub mod kernels;
pub mod launch;
pub mod layout;
pub mod lookup;
pub mod mask;
pub mod matmul;
pub mod norm;
pub mod numeric;
pub mod op;
pub mod optim;
pub mod pool;
pub mod random;
pub mod reduce;
pub mod rnn;
pub mod rows;
pub mod softmax;
mod window;

pub use array::fill;
pub(crate) use array::{expect_dtype, expect_nonempty, or_placeholder, pack8};
pub use array::{numel, strides, Array};
pub use error::{OpError, Result};
pub use kiln_device::{
    Buffer, DType, Device, DeviceError, Element, KernelParams, KernelPolicy, Params, Plan,
};
pub(crate) use launch::{launch_1d, launch_quads, WG};
pub(crate) use window::{uniform_runs, uniform_window, UniformRun, WINDOW_FLOATS};
