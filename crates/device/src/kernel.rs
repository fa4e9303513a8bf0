//! [`Kernel`]: a compiled compute pipeline and what kiln knows of its entry point, and the keys
//! pipelines and modules are cached by. (`pipeline` compiles them.)

use crate::error::{DeviceError, Result};
use crate::params::{KernelParams, WgslField};
use crate::policy::Footprint;
use crate::shaders::{self, BindingKind};
use std::sync::Arc;

/// A compiled compute pipeline with the bindings its entry point uses.
pub struct Kernel {
    pub(crate) name: String,
    pub(crate) label: String,
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: wgpu::BindGroupLayout,
    pub(crate) bindings: Vec<(u32, BindingKind)>,
    pub(crate) footprint: Footprint,
    pub(crate) params: Option<Vec<WgslField>>,
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
    /// What the specialised entry point asks of the adapter (checked before it was built).
    pub fn footprint(&self) -> &Footprint {
        &self.footprint
    }
    /// The members of the WGSL struct the entry point binds as its parameter block.
    pub fn params_layout(&self) -> Option<&[WgslField]> {
        self.params.as_deref()
    }
}

/// A registered kernel a device was asked about: [`crate::Device::kernels_seen`].
#[derive(Clone, Debug, PartialEq)]
pub struct KernelUse {
    /// The registered shader.
    pub shader: String,
    /// The entry point.
    pub entry: String,
    /// The override constants, as the launcher passed them.
    pub constants: Vec<(String, f64)>,
    /// What the specialised entry point asks of an adapter.
    pub footprint: Footprint,
}

/// (shader, entry point, override constants): what a pipeline is cached by.
pub(crate) type PipelineKey = (String, String, String);
/// A compiled module, naga's view of it, and [`source_hash`] of its WGSL.
pub(crate) type CachedModule = (wgpu::ShaderModule, Arc<shaders::Validated>, u64);

/// Identifies a shader's source in the module cache (not a security boundary: a collision
/// would only let one test shader stand in for another).
pub(crate) fn source_hash(src: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    src.hash(&mut h);
    h.finish()
}
impl Kernel {
    /// Checks `P` against the WGSL struct this kernel binds as its parameter block: the same
    /// fields, in the same order, at the same offsets, of the same scalar types.
    pub fn check_params<P: KernelParams>(&self) -> Result<()> {
        let wgsl = self.params_layout().ok_or_else(|| DeviceError::Binding {
            kernel: self.name().to_string(),
            message: "the entry point binds no parameter block".into(),
        })?;
        let rust: Vec<String> = P::FIELDS
            .iter()
            .map(|f| format!("{}: {:?} @{}", f.name, f.kind, f.offset))
            .collect();
        let wgsl: Vec<String> = wgsl
            .iter()
            .map(|f| match f.kind {
                Some(k) => format!("{}: {k:?} @{}", f.name, f.offset),
                None => format!("{}: (not a 32-bit scalar) @{}", f.name, f.offset),
            })
            .collect();
        if rust != wgsl {
            return Err(DeviceError::Binding {
                kernel: self.name().to_string(),
                message: format!(
                    "the parameter block {} does not match the WGSL struct: Rust [{}], WGSL [{}]",
                    std::any::type_name::<P>(),
                    rust.join(", "),
                    wgsl.join(", ")
                ),
            });
        }
        Ok(())
    }
}
