//! [`Device`]: the handle every other module extends, and what one wgpu device shares across
//! handles. The modules that add its methods (adapter, memory, pipeline, variants, submit,
//! capture, profiling) build on this one and on the leaf modules of types it holds.

use crate::buffer::Pool;
use crate::dispatch::{Capture, Pending};
use crate::info::AdapterSummary;
use crate::kernel::{CachedModule, Kernel, PipelineKey};
use crate::policy::{AdapterProfile, Footprint, KernelPolicy};
use crate::timing::ProfileChunk;
use crate::DeviceError;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

/// Override constants as a launcher passed them, owned.
pub(crate) type OwnedConstants = Vec<(String, f64)>;

/// Everything one wgpu device shares across [`Device`] handles.
pub(crate) struct Inner {
    pub(crate) adapter: wgpu::Adapter,
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) summary: AdapterSummary,
    /// The real adapter's features, limits and subgroup and cooperative-matrix sizes.
    pub(crate) profile: AdapterProfile,
    pub(crate) pool: Arc<Pool>,
    /// Shader modules by name, with a hash of the source each was compiled from.
    pub(crate) modules: Mutex<HashMap<String, CachedModule>>,
    pub(crate) pipelines: Mutex<HashMap<PipelineKey, Arc<Kernel>>>,
    /// Footprints of registered entry points by (shader, entry, constants), with the constants.
    pub(crate) footprints: Mutex<HashMap<PipelineKey, (Footprint, OwnedConstants)>>,
    pub(crate) pipeline_cache: Option<wgpu::PipelineCache>,
    pub(crate) pending: Mutex<Pending>,
    /// Recordings in progress, one per thread: a thread's dispatches go to its own recording.
    pub(crate) captures: Mutex<HashMap<std::thread::ThreadId, Capture>>,
    pub(crate) fault: Arc<Mutex<Option<DeviceError>>>,
    pub(crate) submissions: AtomicU64,
    pub(crate) dispatches: AtomicU64,
    pub(crate) pipeline_hits: AtomicU64,
    pub(crate) pipeline_misses: AtomicU64,
    pub(crate) timestamp_period: f32,
    /// Per-dispatch timestamps of the submissions made while [`Device::profile`] runs.
    pub(crate) profiling: Mutex<Option<Vec<ProfileChunk>>>,
    /// (kernel label, parameter type) pairs whose layouts `launch_with` has checked.
    pub(crate) params_checked: Mutex<std::collections::HashSet<(String, std::any::TypeId)>>,
}

/// A GPU device and everything kiln keeps per device. Cheap to clone (shared handle); each
/// handle carries its own [`KernelPolicy`] (see [`Device::with_policy`]).
#[derive(Clone)]
pub struct Device {
    pub(crate) inner: Arc<Inner>,
    pub(crate) policy: Arc<KernelPolicy>,
}
