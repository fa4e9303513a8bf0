//! kiln-device: adapter choice, limits and features, buffers and their pool, the shader registry,
//! cached pipelines, kernel launch, readback and timing. Nothing here knows about neural networks.
//!
//! Work is recorded, not submitted: every [`Device::launch`] appends a dispatch to a pending list,
//! and the list goes to the GPU as one command buffer and one queue submission when results are
//! read back or [`Device::flush`] is called. A [`Plan`] captures such a list once and replays it.

mod buffer;
mod error;
pub mod shaders;
mod timing;

pub use buffer::{Buffer, DType, Element, PoolStats};
pub use error::{DeviceError, Result};
pub use shaders::BindingKind;
pub use timing::{KernelTime, Timing, TimingSource};

use buffer::{Pool, Raw, Usage};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Optional adapter features kiln knows how to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `enable f16;` in shaders.
    pub f16: bool,
    /// Subgroup operations.
    pub subgroups: bool,
    /// Cooperative matrices (experimental in wgpu).
    pub cooperative_matrix: bool,
    /// Timestamp queries at compute-pass boundaries.
    pub timestamps: bool,
    /// A driver pipeline cache that can be saved to disk.
    pub pipeline_cache: bool,
}

/// What was chosen, for printing and for decisions (e.g. fixed tile sizes on software adapters).
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// The adapter's name, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)".
    pub name: String,
    /// "Vulkan", "Metal", "Dx12"...
    pub backend: String,
    /// "DiscreteGpu", "IntegratedGpu", "Cpu"...
    pub device_type: String,
    /// Driver name and version.
    pub driver: String,
    /// True for a software rasteriser (lavapipe, WARP...).
    pub is_software: bool,
    /// The smallest subgroup the driver may run a compute shader with (0 where unknown).
    pub subgroup_min_size: u32,
    /// The largest subgroup the driver may run a compute shader with (0 where unknown).
    pub subgroup_max_size: u32,
    /// Mesa's (major, minor) release where the driver is Mesa's (lavapipe, RADV, ANV...).
    pub mesa_version: Option<(u32, u32)>,
}

/// The square sizes among cooperative-matrix configurations with f16 inputs and f32 accumulators,
/// largest first.
fn f16_f32_square_sizes(props: &[wgpu::CooperativeMatrixProperties]) -> Vec<u32> {
    use wgpu::CooperativeScalarType as T;
    let mut sizes: Vec<u32> = props
        .iter()
        .filter(|p| p.m_size == p.n_size && p.n_size == p.k_size)
        .filter(|p| p.ab_type == T::F16 && p.cr_type == T::F32)
        .map(|p| p.m_size)
        .collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes.dedup();
    sizes
}

/// Mesa's (major, minor) release from a driver description such as
/// "llvmpipe Mesa 25.0.7-2~bpo12+1 (LLVM 15.0.6)".
pub fn parse_mesa_version(driver: &str) -> Option<(u32, u32)> {
    let rest = &driver[driver.find("Mesa ")? + 5..];
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// A compiled compute pipeline with the bindings its entry point uses.
pub struct Kernel {
    name: String,
    label: String,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    bindings: Vec<(u32, BindingKind)>,
}

impl Kernel {
    /// "shader::entry".
    pub fn name(&self) -> &str {
        &self.name
    }
    /// "shader::entry" followed by the override constants it was built with, if any.
    pub fn label(&self) -> &str {
        &self.label
    }
    /// The (binding, kind) pairs the entry point uses, in binding order.
    pub fn bindings(&self) -> &[(u32, BindingKind)] {
        &self.bindings
    }
}

/// A kernel's parameter block: 32-bit words written in the order of the WGSL struct's fields.
#[derive(Clone, Debug, Default)]
pub struct Params(Vec<u32>);

impl Params {
    /// An empty block.
    pub fn new() -> Self {
        Params(Vec::new())
    }
    /// Appends a u32 field.
    pub fn u(mut self, v: u32) -> Self {
        self.0.push(v);
        self
    }
    /// Appends an i32 field.
    pub fn i(mut self, v: i32) -> Self {
        self.0.push(v as u32);
        self
    }
    /// Appends an f32 field.
    pub fn f(mut self, v: f32) -> Self {
        self.0.push(v.to_bits());
        self
    }
    /// Appends several u32 fields.
    pub fn us(mut self, vs: &[u32]) -> Self {
        self.0.extend_from_slice(vs);
        self
    }
    /// The words.
    pub fn words(&self) -> &[u32] {
        &self.0
    }
}

struct Dispatch {
    kernel: Arc<Kernel>,
    bind_group: wgpu::BindGroup,
    groups: [u32; 3],
    /// The parameter block must outlive the submission: recycling it earlier would let a later
    /// `write_buffer` change what this dispatch reads.
    _params: Option<Buffer>,
}

/// Work recorded and not yet submitted.
#[derive(Default)]
struct Pending {
    dispatches: Vec<Arc<Dispatch>>,
    /// Copies for asynchronous readback, encoded after every dispatch of the submission.
    reads: Vec<Arc<ReadJob>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.dispatches.is_empty() && self.reads.is_empty()
    }
}

type MapResult = Arc<Mutex<Option<std::result::Result<(), String>>>>;

struct ReadJob {
    device: wgpu::Device,
    src: wgpu::Buffer,
    src_offset: u64,
    staging: Buffer,
    bytes: u64,
    /// Bytes of data (the copy is padded to a multiple of 4).
    data_bytes: usize,
    submitted: std::sync::atomic::AtomicBool,
    mapped: MapResult,
    data: OnceLock<Vec<u8>>,
}

impl Drop for ReadJob {
    fn drop(&mut self) {
        // The staging buffer must go back to the pool unmapped. Once read, it already is; a map
        // still in flight is waited for first (an unmap does not cancel it).
        if !self.submitted.load(Ordering::Acquire) || self.data.get().is_some() {
            return;
        }
        let _ = await_mapping(&self.device, &self.mapped);
        if matches!(*self.mapped.lock().unwrap(), Some(Ok(()))) {
            self.staging.wgpu().unmap();
        }
    }
}

/// Polls until the map callback has run. Another thread's poll may be the one that runs it, a
/// moment after our own poll returns, so one poll is not enough.
fn await_mapping(device: &wgpu::Device, mapped: &MapResult) -> Result<()> {
    let start = std::time::Instant::now();
    while mapped.lock().unwrap().is_none() {
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| DeviceError::Readback(e.to_string()))?;
        if mapped.lock().unwrap().is_some() {
            break;
        }
        if start.elapsed() > std::time::Duration::from_secs(60) {
            return Err(DeviceError::Readback(
                "the mapping did not complete within 60 s".into(),
            ));
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    Ok(())
}

/// A readback in flight: the buffer's contents as of the end of the submission that carried it.
/// Reading it never stalls the GPU; [`ReadTicket::try_read`] does not block either.
pub struct ReadTicket {
    job: Arc<ReadJob>,
    dev: Device,
}

impl ReadTicket {
    fn take<T: Element>(&self) -> Option<Vec<T>> {
        if self.job.data.get().is_none() {
            if !matches!(*self.job.mapped.lock().unwrap(), Some(Ok(()))) {
                return None;
            }
            let slice = self.job.staging.wgpu().slice(..self.job.bytes);
            let bytes = slice.get_mapped_range().ok()?.to_vec();
            self.job.staging.wgpu().unmap();
            let _ = self.job.data.set(bytes);
        }
        let bytes = self.job.data.get()?;
        let n = self.job.data_bytes.min(bytes.len());
        Some(bytemuck::pod_collect_to_vec(
            &bytes[..n - n % T::DTYPE.size()],
        ))
    }

    fn failed(&self) -> Result<()> {
        match &*self.job.mapped.lock().unwrap() {
            Some(Err(e)) => Err(DeviceError::Readback(e.clone())),
            _ => Ok(()),
        }
    }

    /// The values if the GPU has finished (polls the device without waiting), else None.
    pub fn try_read<T: Element>(&self) -> Result<Option<Vec<T>>> {
        self.dev
            .inner
            .device
            .poll(wgpu::PollType::Poll)
            .map_err(|e| DeviceError::Readback(e.to_string()))?;
        self.failed()?;
        Ok(self.take())
    }

    /// Waits for the values (submitting the carrying work first if it is still pending).
    pub fn wait<T: Element>(&self) -> Result<Vec<T>> {
        if !self.job.submitted.load(Ordering::Acquire) {
            self.dev.flush()?;
        }
        await_mapping(&self.dev.inner.device, &self.job.mapped)?;
        self.failed()?;
        self.take()
            .ok_or_else(|| DeviceError::Readback("mapping did not complete".into()))
    }
}

struct Capture {
    dispatches: Vec<Arc<Dispatch>>,
    /// Every buffer bound while recording; those still alive at the end are kept by the plan.
    touched: Vec<std::sync::Weak<buffer::BufferInner>>,
}

/// A recorded list of dispatches that can be submitted again and again.
///
/// It keeps every buffer it touched out of the pool while it lives, so nothing outside the plan
/// can reuse an intermediate between replays; dropping it returns them.
pub struct Plan {
    dispatches: Vec<Arc<Dispatch>>,
    held: Vec<Raw>,
    /// Buffers owned elsewhere when recording ended: if their owner drops them, the plan still
    /// writes them on replay, so they must not go back to the pool before the plan does.
    _kept: Vec<Arc<buffer::BufferInner>>,
    pool: Arc<Pool>,
}

impl Plan {
    /// Number of dispatches one replay submits.
    pub fn len(&self) -> usize {
        self.dispatches.len()
    }
    /// True when the plan recorded nothing.
    pub fn is_empty(&self) -> bool {
        self.dispatches.is_empty()
    }
}

impl Drop for Plan {
    fn drop(&mut self) {
        self.pool.release_held(std::mem::take(&mut self.held));
    }
}

/// Counters for asserting how work reaches the GPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Queue submissions so far.
    pub submissions: u64,
    /// Dispatches recorded so far (eager and replayed).
    pub dispatches: u64,
    /// Pipeline requests served from the cache.
    pub pipeline_hits: u64,
    /// Pipelines compiled.
    pub pipeline_misses: u64,
}

type PipelineKey = (String, String, String);

/// Bytes of a uniform window (see [`Buffer::window`]): 64 KiB, the smallest
/// `max_uniform_buffer_binding_size` wgpu allows.
pub const WINDOW_BYTES: u64 = 65536;

/// On software adapters, storage buffers of at least this many bytes are allocated with
/// [`WINDOW_BYTES`] or more (see `Device::take`).
const WINDOW_MIN_BYTES: u64 = 2048;

struct Inner {
    adapter: wgpu::Adapter,
    device: wgpu::Device,
    queue: wgpu::Queue,
    summary: AdapterSummary,
    caps: Capabilities,
    limits: wgpu::Limits,
    pool: Arc<Pool>,
    /// Shader modules by name, with a hash of the source each was compiled from.
    modules: Mutex<HashMap<String, CachedModule>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<Kernel>>>,
    pipeline_cache: Option<wgpu::PipelineCache>,
    pending: Mutex<Pending>,
    /// Recordings in progress, one per thread: a thread's dispatches go to its own recording.
    captures: Mutex<HashMap<std::thread::ThreadId, Capture>>,
    fault: Arc<Mutex<Option<DeviceError>>>,
    submissions: AtomicU64,
    dispatches: AtomicU64,
    pipeline_hits: AtomicU64,
    pipeline_misses: AtomicU64,
    timestamp_period: f32,
    /// Per-dispatch timestamps of the submissions made while [`Device::profile`] runs.
    profile: Mutex<Option<Vec<timing::ProfileChunk>>>,
    /// See [`Device::cooperative_f16_f32_sizes`].
    coop_f16_sizes: Vec<u32>,
}

/// A GPU device and everything kiln keeps per device. Cheap to clone (shared handle).
#[derive(Clone)]
pub struct Device {
    inner: Arc<Inner>,
}

static SHARED: OnceLock<std::result::Result<Device, DeviceError>> = OnceLock::new();

/// A compiled module, naga's view of it, and [`source_hash`] of its WGSL.
type CachedModule = (wgpu::ShaderModule, Arc<shaders::Validated>, u64);

/// Identifies a shader's source in the module cache (not a security boundary: a collision
/// would only let one test shader stand in for another).
fn source_hash(src: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    src.hash(&mut h);
    h.finish()
}

fn type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// Every adapter of every enabled backend, sorted by [`type_rank`] (a stable sort: the system's
/// order within a kind).
fn ranked_adapters() -> Vec<wgpu::Adapter> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
    adapters.sort_by_key(|a| type_rank(a.get_info().device_type));
    adapters
}

/// Names, backends and kinds, for errors that list what there is.
fn adapter_names(adapters: &[wgpu::Adapter]) -> Vec<String> {
    adapters
        .iter()
        .map(|a| {
            let i = a.get_info();
            format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
        })
        .collect()
}

fn summarize(info: &wgpu::AdapterInfo) -> AdapterSummary {
    let driver = format!("{} {}", info.driver, info.driver_info)
        .trim()
        .to_string();
    AdapterSummary {
        is_software: info.device_type == wgpu::DeviceType::Cpu,
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        mesa_version: parse_mesa_version(&driver),
        driver,
        subgroup_min_size: info.subgroup_min_size,
        subgroup_max_size: info.subgroup_max_size,
    }
}

impl Device {
    /// One device per process, created on first use: tests in one binary share it, because
    /// creating many devices leaks memory on some drivers (lavapipe).
    pub fn shared() -> Result<Device> {
        SHARED.get_or_init(Device::new).clone()
    }

    /// Chooses an adapter (a GPU first, a software adapter otherwise; `WGPU_BACKEND` and
    /// `WGPU_ADAPTER_NAME` are honoured), requests every optional feature kiln can use and the
    /// adapter's full limits (`KILN_MAX_STORAGE_BINDING`, in bytes, lowers the storage binding
    /// limit), and installs handlers that turn wgpu errors into `Result`s.
    pub fn new() -> Result<Device> {
        let adapters = ranked_adapters();
        let seen = adapter_names(&adapters);
        let wanted = std::env::var("WGPU_ADAPTER_NAME")
            .ok()
            .filter(|s| !s.is_empty());
        let adapter = match &wanted {
            Some(w) => {
                let w = w.to_lowercase();
                adapters
                    .into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&w))
            }
            None => adapters.into_iter().next(),
        };
        let adapter = adapter.ok_or_else(|| {
            DeviceError::NoAdapter(match &wanted {
                Some(w) => format!("WGPU_ADAPTER_NAME={w:?} matched none of {seen:?}"),
                None => "no Vulkan, Metal or DX12 adapter; on Linux without a GPU install \
                         the software driver: apt-get install mesa-vulkan-drivers libvulkan1 \
                         (scripts/setup.sh does this)"
                    .to_string(),
            })
        })?;
        Self::from_adapter(adapter)
    }

    /// Every adapter in the order [`Device::new`] prefers them (discrete GPUs, integrated,
    /// virtual, other, software; the system's order within a kind), for choosing one per process:
    /// processes that share a machine pass different indices to [`Device::with_adapter_index`].
    pub fn adapters() -> Vec<AdapterSummary> {
        ranked_adapters()
            .iter()
            .map(|a| summarize(&a.get_info()))
            .collect()
    }

    /// The adapter at `index` in [`Device::adapters`]' order (`WGPU_ADAPTER_NAME` is not
    /// consulted); an index past the end is an error naming the adapters there are.
    pub fn with_adapter_index(index: usize) -> Result<Device> {
        let adapters = ranked_adapters();
        let seen = adapter_names(&adapters);
        let n = adapters.len();
        let adapter = adapters.into_iter().nth(index).ok_or_else(|| {
            DeviceError::NoAdapter(format!(
                "adapter index {index} asked for, but there are {n}: {seen:?}"
            ))
        })?;
        Self::from_adapter(adapter)
    }

    fn from_adapter(adapter: wgpu::Adapter) -> Result<Device> {
        let info = adapter.get_info();
        let have = adapter.features();
        let mut want = wgpu::Features::empty();
        for f in [
            wgpu::Features::SHADER_F16,
            wgpu::Features::SUBGROUP,
            wgpu::Features::TIMESTAMP_QUERY,
            wgpu::Features::PIPELINE_CACHE,
            wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX,
        ] {
            if have.contains(f) {
                want |= f;
            }
        }
        let coop = want.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);
        let mut limits = adapter.limits();
        // KILN_MAX_STORAGE_BINDING=<bytes> asks for a smaller storage binding limit than the
        // adapter's (wgpu then enforces it), so tests of tensors split across bindings run on
        // adapters whose real limit is far larger.
        if let Some(cap) = std::env::var("KILN_MAX_STORAGE_BINDING")
            .ok()
            .and_then(|v| v.trim().parse().ok())
        {
            limits.max_storage_buffer_binding_size =
                limits.max_storage_buffer_binding_size.min(cap);
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("kiln"),
            required_features: want,
            required_limits: limits.clone(),
            // SAFETY: experimental features are only requested for cooperative matrices, and
            // every kernel that uses them has a scalar fallback chosen at run time.
            experimental_features: if coop {
                unsafe { wgpu::ExperimentalFeatures::enabled() }
            } else {
                wgpu::ExperimentalFeatures::disabled()
            },
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| DeviceError::RequestDevice {
            adapter: info.name.clone(),
            reason: e.to_string(),
        })?;
        let fault: Arc<Mutex<Option<DeviceError>>> = Arc::new(Mutex::new(None));
        let f = fault.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            f.lock()
                .unwrap()
                .get_or_insert(DeviceError::Wgpu(e.to_string()));
        }));
        let f = fault.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if reason != wgpu::DeviceLostReason::Destroyed {
                *f.lock().unwrap() = Some(DeviceError::Lost(format!("{reason:?}: {msg}")));
            }
        });
        let caps = Capabilities {
            f16: want.contains(wgpu::Features::SHADER_F16),
            subgroups: want.contains(wgpu::Features::SUBGROUP),
            cooperative_matrix: coop,
            timestamps: want.contains(wgpu::Features::TIMESTAMP_QUERY),
            pipeline_cache: want.contains(wgpu::Features::PIPELINE_CACHE),
        };
        let pipeline_cache = caps.pipeline_cache.then(|| {
            let data = std::env::var_os("KILN_PIPELINE_CACHE").and_then(|p| std::fs::read(p).ok());
            // SAFETY: the data came from `PipelineCache::get_data` (written by
            // `save_pipeline_cache`); wgpu checks its header against this adapter and falls back
            // to an empty cache when it does not match.
            unsafe {
                device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
                    label: Some("kiln"),
                    data: data.as_deref(),
                    fallback: true,
                })
            }
        });
        let summary = summarize(&info);
        // Read once: ops ask on every f16 matmul.
        let coop_f16_sizes = if coop {
            f16_f32_square_sizes(&adapter.cooperative_matrix_properties())
        } else {
            Vec::new()
        };
        let timestamp_period = queue.get_timestamp_period();
        Ok(Device {
            inner: Arc::new(Inner {
                adapter,
                device,
                queue,
                summary,
                caps,
                limits,
                pool: Pool::new(),
                modules: Mutex::default(),
                pipelines: Mutex::default(),
                pipeline_cache,
                pending: Mutex::default(),
                captures: Mutex::default(),
                fault,
                submissions: AtomicU64::new(0),
                dispatches: AtomicU64::new(0),
                pipeline_hits: AtomicU64::new(0),
                pipeline_misses: AtomicU64::new(0),
                timestamp_period,
                profile: Mutex::default(),
                coop_f16_sizes,
            }),
        })
    }

    /// The chosen adapter.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.inner.summary
    }
    /// The optional features kiln requested.
    pub fn capabilities(&self) -> Capabilities {
        self.inner.caps
    }
    /// The device's limits (the adapter's own, not WebGPU's defaults).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }
    /// Cooperative-matrix shapes the adapter reports.
    pub fn cooperative_matrix_properties(&self) -> Vec<wgpu::CooperativeMatrixProperties> {
        if self.inner.caps.cooperative_matrix {
            self.inner.adapter.cooperative_matrix_properties()
        } else {
            Vec::new()
        }
    }
    /// Square cooperative-matrix sizes (8, 16) the adapter multiplies with f16 inputs and f32
    /// accumulators, largest first; empty without cooperative matrices.
    pub fn cooperative_f16_f32_sizes(&self) -> &[u32] {
        &self.inner.coop_f16_sizes
    }
    /// Submission, dispatch and pipeline-cache counters.
    pub fn counters(&self) -> Counters {
        let i = &self.inner;
        Counters {
            submissions: i.submissions.load(Ordering::Relaxed),
            dispatches: i.dispatches.load(Ordering::Relaxed),
            pipeline_hits: i.pipeline_hits.load(Ordering::Relaxed),
            pipeline_misses: i.pipeline_misses.load(Ordering::Relaxed),
        }
    }
    /// Bytes allocated and in use by the buffer pool.
    pub fn pool_stats(&self) -> PoolStats {
        self.inner.pool.stats()
    }
    /// Returns every free pooled buffer to the driver.
    pub fn trim_pool(&self) {
        self.inner.pool.trim()
    }

    /// Reports a device loss (sticky: the device is unusable) or an uncaptured error (once).
    fn check_fault(&self) -> Result<()> {
        let mut fault = self.inner.fault.lock().unwrap();
        match fault.clone() {
            Some(e @ DeviceError::Lost(_)) => Err(e),
            Some(e) => {
                *fault = None;
                Err(e)
            }
            None => Ok(()),
        }
    }

    // ---- buffers ----

    fn take(&self, usage: Usage, bytes: u64) -> Result<Raw> {
        let l = &self.inner.limits;
        let max_binding = l.max_storage_buffer_binding_size;
        if bytes > l.max_buffer_size || (usage == Usage::Storage && bytes > max_binding) {
            return Err(DeviceError::BufferTooLarge {
                requested: bytes,
                max_buffer_size: l.max_buffer_size,
                max_binding_size: max_binding,
            });
        }
        let cap = l.max_buffer_size.min(max_binding) & !3;
        let mut class = buffer::size_class(bytes);
        // Software adapters' kernels read operands through 64 KiB uniform windows, and a window
        // binding needs 64 KiB behind it: a medium storage buffer gets that much, so that it is
        // bound in place instead of copied into a full-size buffer on every read.
        if usage == Usage::Storage
            && self.inner.summary.is_software
            && bytes >= WINDOW_MIN_BYTES
            && l.max_uniform_buffer_binding_size >= WINDOW_BYTES
        {
            class = class.max(WINDOW_BYTES);
        }
        let class = class.min(cap.max(bytes.next_multiple_of(4)));
        Ok(self.inner.pool.take(&self.inner.device, usage, class))
    }

    /// A storage buffer for `len` elements of `dtype`, contents unspecified (a recycled buffer
    /// keeps old data; kernels that accumulate must clear it first).
    pub fn alloc(&self, len: usize, dtype: DType) -> Result<Buffer> {
        let bytes = (len.max(1) * dtype.size()) as u64;
        let raw = self.take(Usage::Storage, bytes)?;
        Ok(Buffer::new(
            &self.inner.pool,
            raw,
            Usage::Storage,
            len,
            dtype,
        ))
    }

    /// A new storage buffer holding `data`.
    pub fn upload<T: Element>(&self, data: &[T]) -> Result<Buffer> {
        let buf = self.alloc(data.len(), T::DTYPE)?;
        self.write(&buf, data)?;
        Ok(buf)
    }

    /// Overwrites a buffer's contents from the host. Work recorded before this call still sees
    /// the old contents (it is submitted first).
    pub fn write<T: Element>(&self, buf: &Buffer, data: &[T]) -> Result<()> {
        if data.len() != buf.len() || T::DTYPE != buf.dtype() {
            return Err(DeviceError::Binding {
                kernel: "write".into(),
                message: format!(
                    "buffer holds {} x {}, data is {} x {}",
                    buf.len(),
                    buf.dtype(),
                    data.len(),
                    T::DTYPE
                ),
            });
        }
        // Under the pending lock: a host write must land after every dispatch recorded before
        // it, so no other thread may slip a submission of older dispatches in behind it.
        let mut pending = self.inner.pending.lock().unwrap();
        if !pending.is_empty() {
            self.submit_locked(&mut pending, None, None, |_| {})?;
        }
        buf.inner
            .host_written
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let bytes: &[u8] = bytemuck::cast_slice(data);
        if bytes.len().is_multiple_of(4) {
            self.inner
                .queue
                .write_buffer(buf.wgpu(), buf.offset(), bytes);
        } else {
            // Copies must be 4-byte multiples: pad odd f16 lengths.
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().next_multiple_of(4), 0);
            self.inner
                .queue
                .write_buffer(buf.wgpu(), buf.offset(), &padded);
        }
        Ok(())
    }

    /// Submits pending work and reads a buffer back.
    pub fn download<T: Element>(&self, buf: &Buffer) -> Result<Vec<T>> {
        if T::DTYPE.size() != buf.dtype().size() {
            return Err(DeviceError::Binding {
                kernel: "download".into(),
                message: format!("buffer holds {}, asked for {}", buf.dtype(), T::DTYPE),
            });
        }
        let bytes = buf.bytes().next_multiple_of(4).max(4);
        let staging = self.take(Usage::Staging, bytes)?;
        let staging = Buffer::new(
            &self.inner.pool,
            staging,
            Usage::Staging,
            bytes as usize / 4,
            DType::U32,
        );
        self.submit_with(None, |enc| {
            enc.copy_buffer_to_buffer(buf.wgpu(), buf.offset(), staging.wgpu(), 0, bytes)
        })?;
        let bytes_out = self.map_read(staging.wgpu(), bytes)?;
        let n = buf.bytes() as usize;
        Ok(bytemuck::pod_collect_to_vec(&bytes_out[..n]))
    }

    fn map_read(&self, buffer: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let slice = buffer.slice(..bytes);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| DeviceError::Readback(e.to_string()))?;
        self.check_fault()?;
        rx.recv()
            .map_err(|e| DeviceError::Readback(e.to_string()))?
            .map_err(|e| DeviceError::Readback(e.to_string()))?;
        let out = slice
            .get_mapped_range()
            .map_err(|e| DeviceError::Readback(e.to_string()))?
            .to_vec();
        buffer.unmap();
        Ok(out)
    }

    // ---- shaders and pipelines ----

    /// A cached compute pipeline for a registered shader's entry point with the given override
    /// constants. The first request compiles it; later requests with the same key hit the cache.
    pub fn kernel(
        &self,
        shader: &str,
        entry: &str,
        constants: &[(&str, f64)],
    ) -> Result<Arc<Kernel>> {
        let src = shaders::source(shader)?;
        self.compile(shader, src, entry, constants, true)
    }

    /// Like [`Device::kernel`] for WGSL not in the registry (tests, experiments). Such shaders
    /// keep wgpu's loop bounding, which the registered ones go without.
    ///
    /// Modules and pipelines are cached by name, so the name must be the source's own: a
    /// registered shader's name, or one already used for different source, is refused with
    /// [`DeviceError::ShaderNameTaken`] rather than silently answered with the other module.
    pub fn kernel_from_source(
        &self,
        shader: &str,
        src: &str,
        entry: &str,
        constants: &[(&str, f64)],
    ) -> Result<Arc<Kernel>> {
        let taken = |taken_by| DeviceError::ShaderNameTaken {
            name: shader.to_string(),
            taken_by,
        };
        if shaders::source(shader).is_ok() {
            return Err(taken("one of kiln's registered shaders"));
        }
        if let Some((.., hash)) = self.inner.modules.lock().unwrap().get(shader) {
            if *hash != source_hash(src) {
                return Err(taken(
                    "different WGSL source compiled earlier on this device",
                ));
            }
        }
        self.compile(shader, src, entry, constants, false)
    }

    /// The pipeline cache lookup and compilation behind [`Device::kernel`] and
    /// [`Device::kernel_from_source`]; `registered` says that `src` is one of kiln's shaders.
    fn compile(
        &self,
        shader: &str,
        src: &str,
        entry: &str,
        constants: &[(&str, f64)],
        registered: bool,
    ) -> Result<Arc<Kernel>> {
        let key = (
            shader.to_string(),
            entry.to_string(),
            format!("{constants:?}"),
        );
        if let Some(k) = self.inner.pipelines.lock().unwrap().get(&key) {
            self.inner.pipeline_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(k.clone());
        }
        self.inner.pipeline_misses.fetch_add(1, Ordering::Relaxed);
        let (module, validated) = self.module(shader, src, registered)?;
        let bindings = validated.bindings(shader, entry)?;
        let storage = bindings
            .iter()
            .filter(|(_, k)| matches!(k, BindingKind::StorageRead | BindingKind::StorageReadWrite))
            .count() as u32;
        let max = self.inner.limits.max_storage_buffers_per_shader_stage;
        if storage > max {
            return Err(DeviceError::Binding {
                kernel: format!("{shader}::{entry}"),
                message: format!(
                    "uses {storage} storage buffers; the adapter allows {max} per stage"
                ),
            });
        }
        let d = &self.inner.device;
        let scope = d.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&format!("{shader}::{entry}")),
            layout: None,
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: self.inner.pipeline_cache.as_ref(),
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(DeviceError::Shader {
                name: shader.to_string(),
                message: format!("entry `{entry}` with {constants:?}: {e}"),
            });
        }
        let name = format!("{shader}::{entry}");
        let consts: Vec<String> = constants.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let kernel = Arc::new(Kernel {
            label: if consts.is_empty() {
                name.clone()
            } else {
                format!("{name}{{{}}}", consts.join(","))
            },
            name,
            layout: pipeline.get_bind_group_layout(0),
            pipeline,
            bindings,
        });
        self.inner
            .pipelines
            .lock()
            .unwrap()
            .insert(key, kernel.clone());
        Ok(kernel)
    }

    fn module(
        &self,
        name: &str,
        src: &str,
        registered: bool,
    ) -> Result<(wgpu::ShaderModule, Arc<shaders::Validated>)> {
        if let Some((module, validated, _)) = self.inner.modules.lock().unwrap().get(name) {
            return Ok((module.clone(), validated.clone()));
        }
        // A shader that enables f16 cannot even be created without the feature: say which.
        if shaders::enables(src, "f16") && !self.capabilities().f16 {
            return Err(DeviceError::MissingFeature("shader-f16"));
        }
        if shaders::uses_subgroups(src) && !self.capabilities().subgroups {
            return Err(DeviceError::MissingFeature("subgroups"));
        }
        if shaders::enables(src, "wgpu_cooperative_matrix")
            && !self.capabilities().cooperative_matrix
        {
            return Err(DeviceError::MissingFeature("cooperative-matrix"));
        }
        // naga first: its messages name the shader and the line.
        let validated = Arc::new(shaders::validate(name, src)?);
        let d = &self.inner.device;
        let scope = d.push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        };
        // kiln's own shaders are compiled without wgpu's loop bounding, which adds a counter to
        // every loop and so stops lavapipe's compiler from unrolling loops of a fixed trip count
        // (a LeNet step runs 11% faster on Mesa 25 without it). Bounds checks stay on.
        let checks = wgpu::ShaderRuntimeChecks {
            force_loop_bounding: !registered,
            ..wgpu::ShaderRuntimeChecks::checked()
        };
        // SAFETY: without loop bounding, a shader must not loop forever. Registered shaders
        // don't: `shaders::tests::every_loop_steps_towards_its_bound` checks each loop header.
        // Any other source keeps the bounding.
        let module = unsafe { d.create_shader_module_trusted(desc, checks) };
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(DeviceError::Shader {
                name: name.to_string(),
                message: e.to_string(),
            });
        }
        self.inner.modules.lock().unwrap().insert(
            name.to_string(),
            (module.clone(), validated.clone(), source_hash(src)),
        );
        Ok((module, validated))
    }

    /// Writes the driver's pipeline cache to `path` (temp file + rename), where supported.
    pub fn save_pipeline_cache(&self, path: &std::path::Path) -> Result<bool> {
        let Some(data) = self
            .inner
            .pipeline_cache
            .as_ref()
            .and_then(|c| c.get_data())
        else {
            return Ok(false);
        };
        let err = |e: std::io::Error| DeviceError::CacheFile {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, data).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)?;
        Ok(true)
    }

    // ---- launch ----

    /// Records one dispatch of `kernel` over `groups` workgroups, binding `buffers` to the entry
    /// point's storage bindings (and uniform arrays) in binding order and `params` to its
    /// parameter block (its uniform struct).
    ///
    /// A 1-D count above the adapter's per-dimension limit is split into x and y; kernels compute
    /// their linear workgroup index as `wid.x + wid.y * nwg.x` and bounds-check it.
    pub fn launch(
        &self,
        kernel: &Arc<Kernel>,
        buffers: &[&Buffer],
        params: &Params,
        groups: [u32; 3],
    ) -> Result<()> {
        let err = |message: String| DeviceError::Binding {
            kernel: kernel.name.clone(),
            message,
        };
        let storage: Vec<(u32, BindingKind)> = kernel
            .bindings
            .iter()
            .filter(|(_, k)| *k != BindingKind::Uniform)
            .copied()
            .collect();
        let uniform = kernel
            .bindings
            .iter()
            .find(|(_, k)| *k == BindingKind::Uniform)
            .map(|(b, _)| *b);
        if storage.len() != buffers.len() {
            return Err(err(format!(
                "entry point uses {} storage buffers, {} were given",
                storage.len(),
                buffers.len()
            )));
        }
        if uniform.is_some() == params.0.is_empty() {
            return Err(err(format!(
                "entry point {} a parameter block, {} words were given",
                if uniform.is_some() { "uses" } else { "has no" },
                params.0.len()
            )));
        }
        if groups.contains(&0) {
            return Ok(()); // nothing to do: empty tensors
        }
        let max = self.inner.limits.max_compute_workgroups_per_dimension;
        let groups = if groups[0] > max && groups[1] == 1 && groups[2] == 1 {
            let y = groups[0].div_ceil(max);
            [groups[0].div_ceil(y), y, 1]
        } else {
            groups
        };
        if groups.iter().any(|&g| g > max) {
            return Err(DeviceError::DispatchTooLarge {
                kernel: kernel.name.clone(),
                groups,
                limit: max,
            });
        }
        let params_buf = match uniform {
            Some(_) => {
                let mut words = params.0.clone();
                words.resize(words.len().next_multiple_of(4), 0);
                let raw = self.take(Usage::Uniform, (words.len() * 4) as u64)?;
                let b = Buffer::new(
                    &self.inner.pool,
                    raw,
                    Usage::Uniform,
                    words.len(),
                    DType::U32,
                );
                self.inner
                    .queue
                    .write_buffer(b.wgpu(), 0, bytemuck::cast_slice(&words));
                Some(b)
            }
            None => None,
        };
        let mut entries: Vec<wgpu::BindGroupEntry> = storage
            .iter()
            .zip(buffers)
            .map(|(&(binding, kind), b)| wgpu::BindGroupEntry {
                binding,
                resource: if kind == BindingKind::UniformRead {
                    b.uniform_binding(self.inner.limits.max_uniform_buffer_binding_size)
                } else {
                    b.binding()
                },
            })
            .collect();
        if let (Some(binding), Some(p)) = (uniform, &params_buf) {
            entries.push(wgpu::BindGroupEntry {
                binding,
                resource: p.wgpu().as_entire_binding(),
            });
        }
        let scope = self
            .inner
            .device
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let bind_group = self
            .inner
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &kernel.layout,
                entries: &entries,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(err(e.to_string()));
        }
        let dispatch = Arc::new(Dispatch {
            kernel: kernel.clone(),
            bind_group,
            groups,
            _params: params_buf,
        });
        let me = std::thread::current().id();
        if let Some(cap) = self.inner.captures.lock().unwrap().get_mut(&me) {
            cap.dispatches.push(dispatch.clone());
            cap.touched
                .extend(buffers.iter().map(|b| Arc::downgrade(&b.inner)));
        }
        self.inner.pending.lock().unwrap().dispatches.push(dispatch);
        Ok(())
    }

    fn encode(pass: &mut wgpu::ComputePass<'_>, dispatches: &[Arc<Dispatch>]) {
        for d in dispatches {
            pass.set_pipeline(&d.kernel.pipeline);
            pass.set_bind_group(0, &d.bind_group, &[]);
            pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
        }
    }

    /// Encodes `extra` dispatches after the pending ones, then `after` (copies), in one command
    /// buffer and one submission.
    fn submit_with(
        &self,
        extra: Option<&[Arc<Dispatch>]>,
        after: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> Result<()> {
        self.submit_timed(extra, None, after)
    }

    fn submit_timed(
        &self,
        extra: Option<&[Arc<Dispatch>]>,
        timestamps: Option<&wgpu::QuerySet>,
        after: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> Result<()> {
        let mut pending = self.inner.pending.lock().unwrap();
        self.submit_locked(&mut pending, extra, timestamps, after)
    }

    /// Encodes and submits with the pending list locked for the whole time, so host writes
    /// (`write`) are ordered exactly between submissions.
    fn submit_locked(
        &self,
        pending: &mut Pending,
        extra: Option<&[Arc<Dispatch>]>,
        timestamps: Option<&wgpu::QuerySet>,
        after: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> Result<()> {
        self.check_fault()?;
        let mut pending = std::mem::take(pending);
        // A scope per submission: its validation errors come back to this caller, and a bad
        // submission does not poison later ones.
        let scope = self
            .inner
            .device
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let mut enc = self
            .inner
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("kiln"),
            });
        let reads = std::mem::take(&mut pending.reads);
        let n = pending.dispatches.len() + extra.map_or(0, |e| e.len());
        let profiling = timestamps.is_none() && self.inner.profile.lock().unwrap().is_some();
        let mut profiled = Vec::new();
        if profiling && n > 0 {
            let all: Vec<&Arc<Dispatch>> = pending
                .dispatches
                .iter()
                .chain(extra.into_iter().flatten())
                .collect();
            for chunk in all.chunks(timing::PROFILE_CHUNK) {
                profiled.push(timing::encode_profiled(self, &mut enc, chunk));
            }
        } else if n > 0 || timestamps.is_some() {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("kiln"),
                timestamp_writes: timestamps.map(|q| wgpu::ComputePassTimestampWrites {
                    query_set: q,
                    beginning_of_pass_write_index: Some(0),
                    end_of_pass_write_index: Some(1),
                }),
            });
            Self::encode(&mut pass, &pending.dispatches);
            if let Some(e) = extra {
                Self::encode(&mut pass, e);
            }
        }
        for r in &reads {
            enc.copy_buffer_to_buffer(&r.src, r.src_offset, r.staging.wgpu(), 0, r.bytes);
        }
        after(&mut enc);
        self.inner.queue.submit([enc.finish()]);
        for r in &reads {
            r.submitted.store(true, Ordering::Release);
            let mapped = r.mapped.clone();
            r.staging
                .wgpu()
                .slice(..r.bytes)
                .map_async(wgpu::MapMode::Read, move |res| {
                    *mapped.lock().unwrap() = Some(res.map_err(|e| e.to_string()));
                });
        }
        if profiling {
            if let Some(list) = self.inner.profile.lock().unwrap().as_mut() {
                list.extend(profiled);
            }
        }
        self.inner.submissions.fetch_add(1, Ordering::Relaxed);
        self.inner.dispatches.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(DeviceError::Wgpu(e.to_string()));
        }
        self.check_fault()
    }

    /// Starts an asynchronous readback of `buf`: a copy is added to the next submission, after all
    /// of its dispatches (a plan replayed next included), and the returned ticket yields the
    /// values once the GPU is done. Staging buffers come from the pool, so steady periodic reads
    /// cycle through a few of them.
    pub fn read_async(&self, buf: &Buffer) -> Result<ReadTicket> {
        let bytes = buf.bytes().next_multiple_of(4).max(4);
        let raw = self.take(Usage::Staging, bytes)?;
        let staging = Buffer::new(
            &self.inner.pool,
            raw,
            Usage::Staging,
            bytes as usize / 4,
            DType::U32,
        );
        let job = Arc::new(ReadJob {
            device: self.inner.device.clone(),
            src: buf.wgpu().clone(),
            src_offset: buf.offset(),
            staging,
            bytes,
            data_bytes: buf.bytes() as usize,
            submitted: std::sync::atomic::AtomicBool::new(false),
            mapped: Arc::default(),
            data: OnceLock::new(),
        });
        self.inner.pending.lock().unwrap().reads.push(job.clone());
        Ok(ReadTicket {
            job,
            dev: self.clone(),
        })
    }

    /// Submits all pending work (one submission; none if nothing is pending).
    pub fn flush(&self) -> Result<()> {
        if self.inner.pending.lock().unwrap().is_empty() {
            return self.check_fault();
        }
        self.submit_with(None, |_| {})
    }

    /// Blocks until the GPU has finished all submitted work.
    pub fn wait(&self) -> Result<()> {
        self.flush()?;
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| DeviceError::Wgpu(e.to_string()))?;
        self.check_fault()
    }

    // ---- plans ----

    /// Starts recording on this thread: every dispatch this thread records from now on is also
    /// kept for a [`Plan`] (other threads are unaffected). The recorded work still runs once, at
    /// the next flush.
    pub fn begin_capture(&self) -> Result<()> {
        let me = std::thread::current().id();
        let mut caps = self.inner.captures.lock().unwrap();
        if caps.contains_key(&me) {
            return Err(DeviceError::Binding {
                kernel: "capture".into(),
                message: "this thread is already recording a plan".into(),
            });
        }
        self.inner.pool.begin_capture();
        caps.insert(
            me,
            Capture {
                dispatches: Vec::new(),
                touched: Vec::new(),
            },
        );
        Ok(())
    }

    /// Ends this thread's recording and returns the plan.
    pub fn end_capture(&self) -> Result<Plan> {
        let me = std::thread::current().id();
        let cap = self.inner.captures.lock().unwrap().remove(&me);
        let cap = cap.ok_or_else(|| DeviceError::Binding {
            kernel: "capture".into(),
            message: "end_capture without begin_capture on this thread".into(),
        })?;
        let held = self.inner.pool.end_capture();
        let mut kept: Vec<Arc<buffer::BufferInner>> =
            cap.touched.iter().filter_map(|w| w.upgrade()).collect();
        kept.sort_by_key(|b| Arc::as_ptr(b) as usize);
        kept.dedup_by_key(|b| Arc::as_ptr(b) as usize);
        Ok(Plan {
            dispatches: cap.dispatches,
            held,
            _kept: kept,
            pool: self.inner.pool.clone(),
        })
    }

    /// Submits a plan's dispatches (after any pending work) in one submission.
    pub fn replay(&self, plan: &Plan) -> Result<()> {
        self.submit_with(Some(&plan.dispatches), |_| {})
    }

    // ---- timing ----

    /// Times `work` (which records dispatches) with GPU timestamps around one compute pass where
    /// the adapter has them, and with CPU wall time around submit-and-wait otherwise.
    pub fn time<E: From<DeviceError>>(
        &self,
        work: impl FnOnce() -> Result<(), E>,
    ) -> Result<Timing, E> {
        timing::time(self, work)
    }

    /// Runs `work` with every dispatch in its own timed compute pass and returns GPU time per
    /// kernel label (shader, entry point and constants), most expensive first. The device's
    /// submissions from other threads meanwhile are counted too. Needs timestamp queries.
    pub fn profile<E: From<DeviceError>>(
        &self,
        work: impl FnOnce() -> Result<(), E>,
    ) -> Result<Vec<KernelTime>, E> {
        timing::profile(self, work)
    }
}
