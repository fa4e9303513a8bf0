//! kiln-device: adapter choice, limits and features, buffers and their pool, the shader registry,
//! cached pipelines, kernel choice under the adapter's limits, kernel launch, readback and timing.
//! Nothing here knows about neural networks.
//!
//! Work is recorded, not submitted: every [`Device::launch`] appends a dispatch to a pending list,
//! and the list goes to the GPU as one command buffer and one queue submission when results are
//! read back or [`Device::flush`] is called. A [`Plan`] captures such a list once and replays it.
//!
//! Modules by concern. Types that other modules hold are leaves (they import no `Device`):
//! `info` ([`Capabilities`], [`AdapterSummary`]), `buffer` (buffers and their pool), `dispatch`
//! ([`Params`], recorded dispatches, readbacks in flight, [`Counters`]), `kernel` ([`Kernel`]),
//! `policy` ([`KernelPolicy`], [`AdapterProfile`], [`Footprint`]), `params` (typed parameter
//! blocks), `timing`, [`known`] and [`shaders`] (the registry). `device` holds [`Device`] itself.
//! Its methods come from `adapter` ([`Device::new`]), `memory`, `pipeline` (shader modules and the
//! pipeline cache), `variants` ([`VariantTable`]), `submit` (launch, submission and readback),
//! `capture` ([`Plan`]s) and `profiling`.

mod adapter;
pub mod audit;
mod buffer;
mod capture;
mod device;
mod dispatch;
mod error;
mod info;
mod kernel;
pub mod known;
mod memory;
mod params;
mod pipeline;
mod policy;
mod profiling;
pub mod shaders;
mod submit;
mod timing;
mod variants;

pub use buffer::{Buffer, DType, Element, MemoryStats, PoolStats, WINDOW_BYTES};
#[doc(hidden)]
pub use bytemuck;
pub use capture::{DispatchInfo, Plan};
pub use device::Device;
pub use dispatch::{Counters, Params};
pub use error::{DeviceError, Result};
pub use info::{parse_mesa_version, AdapterSummary, Capabilities};
pub use kernel::{Kernel, KernelUse};
pub use params::{KernelParams, ParamField, ParamKind, ParamScalar, WgslField};
pub use policy::{AdapterProfile, Footprint, KernelPolicy};
pub use shaders::BindingKind;
pub use submit::ReadTicket;
pub use timing::{KernelTime, Timing, TimingSource};
pub use variants::{Chosen, Variant, VariantTable};
