//! What an adapter is: its optional features, its summary, and the facts kiln reads off wgpu's
//! description of it.

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
pub(crate) fn f16_f32_square_sizes(props: &[wgpu::CooperativeMatrixProperties]) -> Vec<u32> {
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
/// How kiln ranks adapter kinds: discrete GPUs first, software adapters last.
pub(crate) fn type_rank(t: wgpu::DeviceType) -> u32 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

/// The summary of wgpu's description of an adapter.
pub(crate) fn summarize(info: &wgpu::AdapterInfo) -> AdapterSummary {
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
