//! Adapter choice: finding the adapters, requesting a device with every feature kiln can use,
//! and the [`Device`] made on it.

use crate::buffer::{Pool, PoolStats};
use crate::device::{Device, Inner};
use crate::dispatch::Counters;
use crate::error::{DeviceError, Result};
use crate::info::{f16_f32_square_sizes, summarize, type_rank, AdapterSummary, Capabilities};
use crate::policy::{AdapterProfile, KernelPolicy};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

static SHARED: OnceLock<std::result::Result<Device, DeviceError>> = OnceLock::new();

/// Every adapter of every enabled backend, sorted by [`type_rank`] (a stable sort: the system's
/// order within a kind).
async fn ranked_adapters_async() -> Vec<wgpu::Adapter> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let mut adapters = instance.enumerate_adapters(wgpu::Backends::all()).await;
    adapters.sort_by_key(|a| type_rank(a.get_info().device_type));
    adapters
}

/// [`ranked_adapters_async`], waited for (natively; in the browser nothing may wait).
fn ranked_adapters() -> Result<Vec<wgpu::Adapter>> {
    if cfg!(target_arch = "wasm32") {
        return Err(DeviceError::WouldBlock("listing adapters"));
    }
    Ok(pollster::block_on(ranked_adapters_async()))
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
    ///
    /// In the browser, where nothing may block, use [`Device::new_async`].
    pub fn new() -> Result<Device> {
        if cfg!(target_arch = "wasm32") {
            return Err(DeviceError::WouldBlock("Device::new"));
        }
        pollster::block_on(Self::new_async())
    }

    /// [`Device::new`] without blocking: in a browser page, the adapter the browser offers
    /// through WebGPU (wgpu's `webgpu` backend); natively, the same choice as [`Device::new`].
    pub async fn new_async() -> Result<Device> {
        let adapters = ranked_adapters_async().await;
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
                None if cfg!(target_arch = "wasm32") => {
                    "this browser offers no WebGPU adapter (navigator.gpu is missing or \
                     requestAdapter found none)"
                        .to_string()
                }
                None => "no Vulkan, Metal or DX12 adapter; on Linux without a GPU install \
                         the software driver: apt-get install mesa-vulkan-drivers libvulkan1 \
                         (scripts/setup.sh does this)"
                    .to_string(),
            })
        })?;
        Self::from_adapter_async(adapter).await
    }

    /// Every adapter in the order [`Device::new`] prefers them (discrete GPUs, integrated,
    /// virtual, other, software; the system's order within a kind), for choosing one per process:
    /// processes that share a machine pass different indices to [`Device::with_adapter_index`].
    /// Empty in the browser, where listing adapters cannot be waited for.
    pub fn adapters() -> Vec<AdapterSummary> {
        ranked_adapters()
            .unwrap_or_default()
            .iter()
            .map(|a| summarize(&a.get_info()))
            .collect()
    }

    /// The adapter at `index` in [`Device::adapters`]' order (`WGPU_ADAPTER_NAME` is not
    /// consulted); an index past the end is an error naming the adapters there are.
    pub fn with_adapter_index(index: usize) -> Result<Device> {
        let adapters = ranked_adapters()?;
        let seen = adapter_names(&adapters);
        let n = adapters.len();
        let adapter = adapters.into_iter().nth(index).ok_or_else(|| {
            DeviceError::NoAdapter(format!(
                "adapter index {index} asked for, but there are {n}: {seen:?}"
            ))
        })?;
        Self::from_adapter(adapter)
    }

    /// A device on `adapter`, as [`Device::new`] makes it (every optional feature kiln can use,
    /// the adapter's full limits, errors turned into `Result`s).
    pub fn from_adapter(adapter: wgpu::Adapter) -> Result<Device> {
        if cfg!(target_arch = "wasm32") {
            return Err(DeviceError::WouldBlock("Device::from_adapter"));
        }
        pollster::block_on(Self::from_adapter_async(adapter))
    }

    /// [`Device::from_adapter`] without blocking (the device request is awaited).
    pub async fn from_adapter_async(adapter: wgpu::Adapter) -> Result<Device> {
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
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
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
            })
            .await
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
        let known = crate::known::lookup(&summary.name);
        let profile = AdapterProfile {
            name: summary.name.clone(),
            backend: summary.backend.clone(),
            is_software: summary.is_software,
            mesa_version: summary.mesa_version,
            caps,
            limits,
            subgroup_min_size: summary.subgroup_min_size,
            subgroup_max_size: summary.subgroup_max_size,
            coop_f16_sizes,
            // wgpu reports neither compute units nor peaks: a table of known devices does.
            compute_units: known.map_or_else(
                || crate::known::default_compute_units(summary.is_software, &summary.device_type),
                |k| k.compute_units,
            ),
            peak_f32_tflops: known.map(|k| k.peak_f32_tflops),
            peak_f16_tflops: known.map(|k| k.peak_f16_tflops),
            bandwidth_gbs: known.map(|k| k.bandwidth_gbs),
        };
        let policy = match std::env::var("KILN_KERNELS") {
            Ok(spec) => KernelPolicy::parse(&spec)?,
            Err(_) => KernelPolicy::default(),
        };
        let timestamp_period = queue.get_timestamp_period();
        Ok(Device {
            inner: Arc::new(Inner {
                adapter,
                device,
                queue,
                summary,
                profile,
                pool: Pool::new(),
                modules: Mutex::default(),
                pipelines: Mutex::default(),
                footprints: Mutex::default(),
                pipeline_cache,
                pending: Mutex::default(),
                captures: Mutex::default(),
                fault,
                submissions: AtomicU64::new(0),
                dispatches: AtomicU64::new(0),
                pipeline_hits: AtomicU64::new(0),
                pipeline_misses: AtomicU64::new(0),
                timestamp_period,
                profiling: Mutex::default(),
                params_checked: Mutex::default(),
            }),
            policy: Arc::new(policy),
        })
    }

    /// The chosen adapter.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.inner.summary
    }
    /// The optional features kiln requested.
    pub fn capabilities(&self) -> Capabilities {
        self.inner.profile.caps
    }
    /// The device's limits (the adapter's own, not WebGPU's defaults).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.profile.limits
    }
    /// Cooperative-matrix shapes the adapter reports.
    pub fn cooperative_matrix_properties(&self) -> Vec<wgpu::CooperativeMatrixProperties> {
        if self.inner.profile.caps.cooperative_matrix {
            self.inner.adapter.cooperative_matrix_properties()
        } else {
            Vec::new()
        }
    }
    /// Square cooperative-matrix sizes (8, 16) the adapter multiplies with f16 inputs and f32
    /// accumulators, largest first; empty without cooperative matrices.
    pub fn cooperative_f16_f32_sizes(&self) -> &[u32] {
        &self.inner.profile.coop_f16_sizes
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
    pub(crate) fn check_fault(&self) -> Result<()> {
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
}
