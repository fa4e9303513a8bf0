//! kiln-device: adapter choice, limits and features, buffers and their pool, the shader registry,
//! cached pipelines, kernel choice under the adapter's limits, kernel launch, readback and timing.
//! Nothing here knows about neural networks.
//!
//! Work is recorded, not submitted: every [`Device::launch`] appends a dispatch to a pending list,
//! and the list goes to the GPU as one command buffer and one queue submission when results are
//! read back or [`Device::flush`] is called. A [`Plan`] captures such a list once and replays it.
//!
//! Modules by concern: `adapter` (choosing the adapter, [`Capabilities`], [`AdapterSummary`],
//! [`Device::new`]), `buffer` (buffers, their pool, allocation), `pipeline` (shader modules, the
//! kernel and pipeline caches), `policy` ([`KernelPolicy`], variant tables, limit checks),
//! `submit` ([`Params`], launch, submission, host writes and readback), `capture` ([`Plan`]s),
//! `timing`, and [`shaders`] (the registry).

mod adapter;
mod buffer;
mod capture;
mod error;
pub mod known;
mod pipeline;
mod policy;
pub mod shaders;
mod submit;
mod timing;

pub use adapter::{parse_mesa_version, AdapterSummary, Capabilities, Device};
pub use buffer::{Buffer, DType, Element, MemoryStats, PoolStats, WINDOW_BYTES};
pub use capture::Plan;
pub use error::{DeviceError, Result};
pub use pipeline::{Kernel, KernelUse};
pub use policy::{AdapterProfile, Footprint, KernelPolicy, Variant, VariantTable};
pub use shaders::BindingKind;
pub use submit::{Counters, Params, ReadTicket};
pub use timing::{KernelTime, Timing, TimingSource};
