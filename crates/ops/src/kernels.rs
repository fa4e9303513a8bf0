//! Kernel families and their variants: the names a [`kiln_device::KernelPolicy`] forces, in one
//! place. Each family keeps its [`kiln_device::VariantTable`] beside its launcher, most preferred
//! first; the automatic choice is the first variant that supports and prefers the shape.
//!
//! | family | variants (table order) | table |
//! |---|---|---|
//! | `matmul` (f32 GEMM, also the implicit GEMM of convolutions) | `gemm_uniform`, `gemm_sg`, `gemm_direct_ua`, `gemm_4x4` (software adapters); `gemm_128x128`, `gemm_128x64`, `gemm_64x64`, `gemm_16x64`, `gemm_64x16` (GPU tiles); `gemv` (at most 8 rows: generation); `gemm_direct` (anywhere) | `gemm::GEMM` |
//! | `matmul_f16` (f16 operands, f32 accumulation) | `coop16`, `coop8` (cooperative matrices, 128 x 128 per workgroup), `coop16_small`, `coop8_small` (64 x 64), `widen` (to f32) | `gemm::GEMM_F16` |
//! | `conv` (forward and input gradient) | `conv_direct` (software adapters: uniform windows), `conv_gemm` (implicit GEMM through `matmul`) | `conv::CONV` |
//! | `conv_wgrad` (weight gradient) | `conv_wgrad` (uniform windows), `conv_wgrad_sg` (subgroups), `conv_gemm` | `conv::WGRAD` |
//! | `pool` (pooling forward) | `pool_windows` (uniform windows, Mesa before 25), `pool_storage` | `pool::POOL` |
//! | `attention` | `flash_coop16`, `flash_coop8` (f16 forward and backward on cooperative matrices), `flash_sg` (FlashAttention-2, f32, a row's invocations exchanging partial sums by subgroup shuffles; GPUs), `flash` (the same through workgroup memory; anywhere, software adapters' choice) | `attention::ATTENTION` |
//! | `colsum` (column reductions: bias, LayerNorm and abs-max gradients) | `colsum_two_pass` (row blocks, then a sum of the partials), `colsum_one_pass` | `reduce::COLSUM` |
//! | `rows` (softmax, log_softmax, layer norm, cross-entropy: a row per group of adjacent lanes) | `rows_sg` (subgroup shuffles; rows of at most a subgroup's lanes), `rows_wg` (workgroup-memory tree, up to 256 lanes a row) | `rows::ROWS` |
//! | `decode` (attention of one new token against a key/value cache) | `decode_split` (the cache split across workgroups, then a combine pass), `decode_single` (a workgroup per head) | `decode::DECODE` |
//! | `optim` (optimizer updates) | `optim_multi` (every parameter of a group, eight per dispatch), `optim_multi2` (two per dispatch: 7 storage buffers, within WebGPU's default 8), `optim_single` (a dispatch per parameter) | `optim::OPTIM` |
//!
//! Force a variant per device handle, e.g. for tests or benchmarks:
//! `dev.with_policy(KernelPolicy::default().force("matmul", "gemm_128x64"))`, or for a whole
//! process through `KILN_KERNELS=matmul=gemm_128x64,attention=flash`.

use crate::{Device, Result};
use kiln_device::{Footprint, Kernel};
use std::sync::Arc;

/// One pipeline a variant would build: a registered shader's entry point and its override
/// constants. Launchers build their pipelines from these, and planners check them against an
/// adapter's limits without launching anything.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelSpec {
    /// The registered shader (`shaders/<name>.wgsl`).
    pub shader: &'static str,
    /// The entry point.
    pub entry: String,
    /// Override constants.
    pub constants: Vec<(&'static str, f64)>,
}

impl KernelSpec {
    /// A spec.
    pub fn new(shader: &'static str, entry: &str, constants: &[(&'static str, f64)]) -> Self {
        KernelSpec {
            shader,
            entry: entry.to_string(),
            constants: constants.to_vec(),
        }
    }

    /// The cached pipeline.
    pub fn kernel(&self, dev: &Device) -> Result<Arc<Kernel>> {
        Ok(dev.kernel(self.shader, &self.entry, &self.constants)?)
    }

    /// The footprint, checked against the device's adapter profile.
    pub fn fits(&self, dev: &Device) -> Result<Footprint> {
        Ok(dev.fits(self.shader, &self.entry, &self.constants)?)
    }

    /// The values of the specialised shader's override constants (its own defaults included),
    /// by name: what models of the kernel (the bank audit) read its strides from.
    pub fn override_values(&self) -> Result<std::collections::BTreeMap<String, f64>> {
        Ok(kiln_device::shaders::override_values(
            self.shader,
            &self.entry,
            &self.constants,
        )?)
    }

    /// One override value, or an error naming the constant.
    pub fn value(&self, name: &str) -> Result<u64> {
        self.override_values()?
            .get(name)
            .map(|v| *v as u64)
            .ok_or_else(|| crate::OpError::Invalid {
                op: "kernel model",
                message: format!("{} has no override `{name}`", self.label()),
            })
    }

    /// "shader::entry{constants}", for messages.
    pub fn label(&self) -> String {
        format!("{}::{}{:?}", self.shader, self.entry, self.constants)
    }
}

/// A variant's choice for one call: which variant, and the pipelines it builds.
#[derive(Clone, Debug)]
pub struct Planned {
    /// The op family.
    pub family: &'static str,
    /// The chosen variant.
    pub variant: &'static str,
    /// Its pipelines.
    pub kernels: Vec<KernelSpec>,
    /// Bytes of the largest storage binding the call makes.
    pub largest_binding: u64,
}

/// `Ok` where every spec fits the device's profile, else the first limit exceeded, as the
/// `supports` condition of a variant table wants it.
pub(crate) fn all_fit(dev: &Device, specs: &[KernelSpec]) -> std::result::Result<(), String> {
    for s in specs {
        s.fits(dev).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `Ok` where a storage binding of `bytes` fits the device's profile.
pub(crate) fn binding_fits(dev: &Device, bytes: u64) -> std::result::Result<(), String> {
    let p = dev.adapter_profile();
    if p.fits_binding(bytes) {
        Ok(())
    } else {
        Err(format!(
            "a binding of {bytes} bytes exceeds {}'s max_storage_buffer_binding_size {}",
            p.name, p.limits.max_storage_buffer_binding_size
        ))
    }
}
