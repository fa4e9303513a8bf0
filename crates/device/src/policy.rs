//! Kernel choice: which variant of an op family runs, checked against the adapter's limits.
//!
//! Every op family with more than one kernel (kiln-ops keeps the tables; see
//! `kiln_ops::kernels` for the families and their variant names) lists its variants in a
//! [`VariantTable`], in order of preference, as llm.c numbers its kernels. Each variant says
//! whether it `supports` a shape on the device (a hard condition: correctness and every adapter
//! limit) and whether it `prefers` it (a heuristic). The automatic choice is the first variant
//! that supports and prefers the shape. A [`KernelPolicy`] carried by the [`Device`] may force a
//! variant per family; a forced variant that does not support the shape is a typed error, never
//! a silent fallback.
//!
//! Limits are checked on the specialised module: [`Device::fits`] applies the override constants
//! with naga and measures the workgroup memory, the invocations per workgroup and the storage
//! bindings of the entry point as the driver will see them. A [`AdapterProfile`] in the policy
//! lets tests and planners ask the same questions about another adapter (an H100, an Apple GPU
//! through Metal, WebGPU's defaults) on whatever adapter the process runs.

use crate::error::{DeviceError, Result};
use crate::info::Capabilities;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Which kernel variants a [`Device`](crate::Device) handle uses: automatic (the default) or forced per op
/// family, optionally planned against another adapter's [`AdapterProfile`].
///
/// ```
/// use kiln_device::KernelPolicy;
/// let p = KernelPolicy::default().force("matmul", "gemm_128x128");
/// assert_eq!(p.forced("matmul"), Some("gemm_128x128"));
/// assert_eq!(p.forced("attention"), None);
/// ```
#[derive(Clone, Debug, Default)]
pub struct KernelPolicy {
    forced: BTreeMap<String, String>,
    profile: Option<Arc<AdapterProfile>>,
}

impl KernelPolicy {
    /// Forces `variant` for every op of `family` (names: `kiln_ops::kernels`). A forced variant
    /// that cannot run a shape makes that op fail with [`DeviceError::VariantUnsupported`].
    pub fn force(mut self, family: &str, variant: &str) -> Self {
        self.forced.insert(family.to_string(), variant.to_string());
        self
    }

    /// The variant forced for `family`, if any.
    pub fn forced(&self, family: &str) -> Option<&str> {
        self.forced.get(family).map(String::as_str)
    }

    /// Every forced (family, variant) pair.
    pub fn forced_all(&self) -> impl Iterator<Item = (&str, &str)> {
        self.forced.iter().map(|(f, v)| (f.as_str(), v.as_str()))
    }

    /// Chooses kernels as if the device were `profile` (its limits, features and subgroup
    /// sizes). For planning and tests: kernels still run on the real adapter, so a profile
    /// larger than it can make launches fail.
    pub fn with_profile(mut self, profile: AdapterProfile) -> Self {
        self.profile = Some(Arc::new(profile));
        self
    }

    /// The adapter profile set by [`KernelPolicy::with_profile`], if any.
    pub fn profile(&self) -> Option<&AdapterProfile> {
        self.profile.as_deref()
    }

    /// Parses `family=variant` pairs separated by commas (the `KILN_KERNELS` environment
    /// variable, read by [`Device::new`](crate::Device::new)), e.g. `matmul=gemm_128x64,attention=flash`.
    pub fn parse(spec: &str) -> Result<KernelPolicy> {
        let mut p = KernelPolicy::default();
        for pair in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (family, variant) =
                pair.split_once('=')
                    .ok_or_else(|| DeviceError::UnknownVariant {
                        family: pair.to_string(),
                        variant: String::new(),
                        known: "a `family=variant` pair".into(),
                    })?;
            p = p.force(family.trim(), variant.trim());
        }
        Ok(p)
    }
}

/// What kernel choice may depend on about an adapter.
#[derive(Clone, Debug)]
pub struct AdapterProfile {
    /// A name for messages ("NVIDIA H100 (Vulkan)").
    pub name: String,
    /// "Vulkan", "Metal", "Dx12"...
    pub backend: String,
    /// A software rasteriser (lavapipe, WARP).
    pub is_software: bool,
    /// Mesa's (major, minor) where the driver is Mesa's.
    pub mesa_version: Option<(u32, u32)>,
    /// Optional features.
    pub caps: Capabilities,
    /// The device limits.
    pub limits: wgpu::Limits,
    /// The smallest subgroup a compute shader may run with (0 where unknown).
    pub subgroup_min_size: u32,
    /// The largest subgroup a compute shader may run with (0 where unknown).
    pub subgroup_max_size: u32,
    /// Square cooperative-matrix sizes with f16 inputs and f32 accumulators, largest first.
    pub coop_f16_sizes: Vec<u32>,
    /// Compute units (SMs, CUs, Xe cores, GPU cores; a software adapter's CPU threads): from
    /// [`crate::known::KNOWN_DEVICES`] by name, else [`crate::known::default_compute_units`].
    /// Grid targets (split-K, split-KV decode) are sized from it; 0 where unknown.
    pub compute_units: u32,
    /// Peak f32 rate, TFLOP/s, where the device is known.
    pub peak_f32_tflops: Option<f64>,
    /// Peak f16 rate with f32 accumulation, TFLOP/s, where the device is known.
    pub peak_f16_tflops: Option<f64>,
    /// Peak memory bandwidth, GB/s, where the device is known.
    pub bandwidth_gbs: Option<f64>,
}

impl AdapterProfile {
    fn gpu(name: &str, backend: &str, limits: wgpu::Limits) -> AdapterProfile {
        AdapterProfile {
            name: name.into(),
            backend: backend.into(),
            is_software: false,
            mesa_version: None,
            caps: Capabilities {
                f16: true,
                subgroups: true,
                cooperative_matrix: false,
                timestamps: true,
                pipeline_cache: backend == "Vulkan",
            },
            limits,
            subgroup_min_size: 32,
            subgroup_max_size: 32,
            coop_f16_sizes: Vec::new(),
            compute_units: 0,
            peak_f32_tflops: None,
            peak_f16_tflops: None,
            bandwidth_gbs: None,
        }
    }

    /// The same profile with the compute units and peaks of the known device `name`.
    fn known(self, name: &str) -> AdapterProfile {
        let k = crate::known::lookup(name).expect("a device of the known-device table");
        AdapterProfile {
            compute_units: k.compute_units,
            peak_f32_tflops: Some(k.peak_f32_tflops),
            peak_f16_tflops: Some(k.peak_f16_tflops),
            bandwidth_gbs: Some(k.bandwidth_gbs),
            ..self
        }
    }

    /// Limits of a desktop Vulkan or DX12 GPU: `shared` bytes of workgroup memory, 1,024
    /// invocations, bindings up to 2 GiB - 1 (wgpu's cap), `storage` buffers per stage.
    fn desktop(shared: u32, storage: u32) -> wgpu::Limits {
        wgpu::Limits {
            max_compute_workgroup_storage_size: shared,
            max_compute_invocations_per_workgroup: 1024,
            max_compute_workgroup_size_x: 1024,
            max_compute_workgroup_size_y: 1024,
            max_compute_workgroup_size_z: 64,
            max_compute_workgroups_per_dimension: 65535,
            max_storage_buffers_per_shader_stage: storage,
            max_storage_buffer_binding_size: (1 << 31) - 1,
            max_buffer_size: (1 << 31) - 1,
            ..wgpu::Limits::default()
        }
    }

    /// NVIDIA Hopper (H100/H200) through Vulkan: 48 KiB of workgroup memory without the opt-in,
    /// 16 x 16 f16 cooperative matrices, 132 SMs.
    pub fn nvidia_hopper() -> AdapterProfile {
        Self::gpu(
            "NVIDIA H100 (Vulkan)",
            "Vulkan",
            Self::desktop(49152, 1 << 20),
        )
        .known("NVIDIA H100 80GB HBM3")
        .with_coop(&[16])
    }

    /// NVIDIA Ada (RTX 4090) through Vulkan: 48 KiB, 128 SMs.
    pub fn nvidia_ada() -> AdapterProfile {
        Self::gpu(
            "NVIDIA RTX 4090 (Vulkan)",
            "Vulkan",
            Self::desktop(49152, 1 << 20),
        )
        .known("NVIDIA GeForce RTX 4090")
        .with_coop(&[16])
    }

    /// AMD RDNA 3 (RX 7900 XTX) through RADV: 64 KiB, wave32 or wave64, 96 CUs.
    pub fn amd_rdna3() -> AdapterProfile {
        AdapterProfile {
            subgroup_min_size: 32,
            subgroup_max_size: 64,
            mesa_version: Some((24, 2)),
            ..Self::gpu(
                "AMD RX 7900 XTX (RADV)",
                "Vulkan",
                Self::desktop(65536, 1 << 20),
            )
        }
        .known("AMD Radeon RX 7900 XTX (RADV NAVI31)")
        .with_coop(&[16])
    }

    /// Apple M-series through Metal: 32 KiB of threadgroup memory, 31 buffers per stage,
    /// 8 x 8 simdgroup matrices, 10 GPU cores (M2).
    pub fn apple_m() -> AdapterProfile {
        let mut l = Self::desktop(32768, 31);
        l.max_storage_buffer_binding_size = 1 << 30;
        Self::gpu("Apple M2 (Metal)", "Metal", l)
            .known("Apple M2")
            .with_coop(&[8])
    }

    /// Intel Arc (A770) through ANV: 64 KiB, SIMD8 to SIMD32, 32 Xe cores, no square f16
    /// cooperative matrix with f32 accumulators.
    pub fn intel_arc() -> AdapterProfile {
        AdapterProfile {
            subgroup_min_size: 8,
            subgroup_max_size: 32,
            mesa_version: Some((24, 2)),
            ..Self::gpu(
                "Intel Arc A770 (ANV)",
                "Vulkan",
                Self::desktop(65536, 1 << 20),
            )
        }
        .known("Intel(R) Arc(tm) A770 Graphics")
    }

    /// A DX12 adapter with 32 KiB of group-shared memory, waves of 4 to 128 lanes, 64 UAVs per
    /// stage, no cooperative matrices (wgpu offers them on Vulkan and Metal only).
    pub fn dx12_32k() -> AdapterProfile {
        AdapterProfile {
            subgroup_min_size: 4,
            subgroup_max_size: 128,
            ..Self::gpu(
                "DX12 adapter, 32 KiB shared",
                "Dx12",
                Self::desktop(32768, 64),
            )
        }
    }

    /// WebGPU's default limits (`wgpu::Limits::default()`): 16 KiB, 256 invocations, 8 storage
    /// buffers per stage, 128 MiB bindings; no optional feature.
    pub fn webgpu_default() -> AdapterProfile {
        AdapterProfile {
            caps: Capabilities::default(),
            subgroup_min_size: 0,
            subgroup_max_size: 0,
            ..Self::gpu("WebGPU defaults", "BrowserWebGpu", wgpu::Limits::default())
        }
    }

    /// wgpu's downlevel defaults (`wgpu::Limits::downlevel_defaults()`): WebGPU's, but only 4
    /// storage buffers per stage and 16,352 bytes of workgroup memory.
    pub fn webgpu_downlevel() -> AdapterProfile {
        AdapterProfile {
            name: "wgpu downlevel defaults".into(),
            limits: wgpu::Limits::downlevel_defaults(),
            ..Self::webgpu_default()
        }
    }

    /// The same profile with f16 cooperative matrices of these square sizes (largest first).
    fn with_coop(mut self, sizes: &[u32]) -> AdapterProfile {
        self.coop_f16_sizes = sizes.to_vec();
        self.caps.cooperative_matrix = !sizes.is_empty();
        self
    }

    /// Every profile above, for tests that plan kernels under each.
    pub fn reference_profiles() -> Vec<AdapterProfile> {
        vec![
            Self::nvidia_hopper(),
            Self::nvidia_ada(),
            Self::amd_rdna3(),
            Self::apple_m(),
            Self::intel_arc(),
            Self::dx12_32k(),
            Self::webgpu_default(),
            Self::webgpu_downlevel(),
        ]
    }

    /// Whether a storage binding of `bytes` fits this adapter's limits.
    pub fn fits_binding(&self, bytes: u64) -> bool {
        bytes <= self.limits.max_storage_buffer_binding_size && bytes <= self.limits.max_buffer_size
    }

    /// The subgroup size a kernel should assume it may be given at most (32 where unknown).
    pub fn subgroup_max(&self) -> u32 {
        match self.subgroup_max_size {
            0 => 32,
            s => s,
        }
    }
}

/// What an entry point asks of an adapter once its override constants are applied (measured by
/// naga on the specialised module, not estimated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// Bytes of workgroup memory: each `var<workgroup>` rounded up to 16 bytes, as WebGPU counts.
    pub workgroup_bytes: u64,
    /// The workgroup size.
    pub workgroup_size: [u32; 3],
    /// Storage buffers bound.
    pub storage_buffers: u32,
    /// The module uses subgroup operations.
    pub subgroups: bool,
    /// The module uses cooperative matrices.
    pub cooperative_matrix: bool,
    /// The module enables f16.
    pub f16: bool,
}

impl Footprint {
    /// Invocations per workgroup.
    pub fn invocations(&self) -> u32 {
        self.workgroup_size.iter().product()
    }

    /// Checks the footprint of `kernel` ("shader::entry") against `profile`; the error names
    /// the first limit exceeded.
    pub fn check(&self, kernel: &str, profile: &AdapterProfile) -> Result<()> {
        let l = &profile.limits;
        let over = |limit: &'static str, needed: u64, allowed: u64| {
            Err(DeviceError::OverLimit {
                kernel: kernel.to_string(),
                adapter: profile.name.clone(),
                limit,
                needed,
                allowed,
            })
        };
        if self.f16 && !profile.caps.f16 {
            return Err(DeviceError::MissingFeature("shader-f16"));
        }
        if self.subgroups && !profile.caps.subgroups {
            return Err(DeviceError::MissingFeature("subgroups"));
        }
        if self.cooperative_matrix && !profile.caps.cooperative_matrix {
            return Err(DeviceError::MissingFeature("cooperative-matrix"));
        }
        if self.workgroup_bytes > l.max_compute_workgroup_storage_size as u64 {
            return over(
                "max_compute_workgroup_storage_size",
                self.workgroup_bytes,
                l.max_compute_workgroup_storage_size as u64,
            );
        }
        let inv = self.invocations() as u64;
        if inv > l.max_compute_invocations_per_workgroup as u64 {
            return over(
                "max_compute_invocations_per_workgroup",
                inv,
                l.max_compute_invocations_per_workgroup as u64,
            );
        }
        let dims = [
            (
                "max_compute_workgroup_size_x",
                l.max_compute_workgroup_size_x,
            ),
            (
                "max_compute_workgroup_size_y",
                l.max_compute_workgroup_size_y,
            ),
            (
                "max_compute_workgroup_size_z",
                l.max_compute_workgroup_size_z,
            ),
        ];
        for (&size, (name, max)) in self.workgroup_size.iter().zip(dims) {
            if size > max {
                return over(name, size as u64, max as u64);
            }
        }
        if self.storage_buffers > l.max_storage_buffers_per_shader_stage {
            return over(
                "max_storage_buffers_per_shader_stage",
                self.storage_buffers as u64,
                l.max_storage_buffers_per_shader_stage as u64,
            );
        }
        // Subgroup kernels are written for whole subgroups: a workgroup smaller than one, or
        // not a multiple of the largest size, would leave a subgroup partly filled.
        let sg = profile.subgroup_max_size as u64;
        if self.subgroups && sg > 0 && !inv.is_multiple_of(sg) {
            return over("whole subgroups per workgroup (subgroup_max_size)", inv, sg);
        }
        Ok(())
    }
}
