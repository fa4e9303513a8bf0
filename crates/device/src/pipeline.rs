//! Pipelines: shader modules compiled once per device, compute pipelines cached by entry point
//! and override constants, and the driver's pipeline cache on disk.

use crate::device::Device;
use crate::error::{DeviceError, Result};
use crate::kernel::{source_hash, Kernel, KernelUse};
use crate::policy::Footprint;
use crate::shaders;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Device {
    /// The footprint of a registered shader's entry point with these override constants,
    /// checked against [`Device::adapter_profile`]: `Ok` where it fits, else the limit it exceeds.
    pub fn fits(&self, shader: &str, entry: &str, constants: &[(&str, f64)]) -> Result<Footprint> {
        let f = self.footprint(shader, entry, constants)?;
        f.check(&format!("{shader}::{entry}"), self.adapter_profile())?;
        Ok(f)
    }

    /// The footprint of a registered shader's entry point with these override constants.
    pub fn footprint(
        &self,
        shader: &str,
        entry: &str,
        constants: &[(&str, f64)],
    ) -> Result<Footprint> {
        let key = (
            shader.to_string(),
            entry.to_string(),
            format!("{constants:?}"),
        );
        if let Some((f, _)) = self.inner.footprints.lock().unwrap().get(&key) {
            return Ok(*f);
        }
        let validated = crate::shaders::validated(shader)?;
        let f = validated.footprint(shader, entry, constants)?;
        let owned = constants.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        self.inner
            .footprints
            .lock()
            .unwrap()
            .insert(key, (f, owned));
        Ok(f)
    }

    /// Every registered kernel this device has measured (for a plan or a variant's limit check)
    /// or built, with its override constants, sorted: the pipelines kiln's launchers ask for, as
    /// the standard-WGSL check (`tests/tint.rs`) compiles them under another WGSL compiler.
    pub fn kernels_seen(&self) -> Vec<KernelUse> {
        let mut out: Vec<KernelUse> = self
            .inner
            .footprints
            .lock()
            .unwrap()
            .iter()
            .map(|((shader, entry, _), (footprint, constants))| KernelUse {
                shader: shader.clone(),
                entry: entry.clone(),
                constants: constants.clone(),
                footprint: *footprint,
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.shader, &a.entry, format!("{:?}", a.constants)).cmp(&(
                &b.shader,
                &b.entry,
                format!("{:?}", b.constants),
            ))
        });
        out
    }

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

    /// Like [`Device::kernel`] for WGSL not in the registry: users' own ops, tests. Such shaders
    /// keep wgpu's loop bounding, which the registered ones go without.
    ///
    /// kiln appends [`shaders::USER_PRELUDE`] to the source (WGSL declarations may come in any
    /// order, so line numbers in errors stay the user's): `KILN_WG`, the workgroup size the
    /// launch helpers of `kiln_ops::launch` size their grids for, and `kiln_index` /
    /// `kiln_group`, which undo [`Device::launch`]'s split of a large count over a 2-D grid.
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
        let src = format!("{src}\n{}", shaders::USER_PRELUDE);
        if let Some((.., hash)) = self.inner.modules.lock().unwrap().get(shader) {
            if *hash != source_hash(&src) {
                return Err(taken(
                    "different WGSL source compiled earlier on this device",
                ));
            }
        }
        self.compile(shader, &src, entry, constants, false)
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
        let unchecked = registered && shaders::runs_unchecked(shader, entry);
        let (module, validated) = self.module(shader, src, registered, unchecked)?;
        let bindings = validated.bindings(shader, entry)?;
        // wgpu 30 does not check workgroup memory against the limit (wgpu#8946): a driver may
        // then fail or run an empty kernel. Every limit is checked here first, on the module
        // as the override constants specialise it.
        let footprint = if registered {
            self.footprint(shader, entry, constants)?
        } else {
            validated.footprint(shader, entry, constants)?
        };
        footprint.check(&format!("{shader}::{entry}"), &self.inner.profile)?;
        let d = &self.inner.device;
        let (pipeline, error) = crate::error::scoped(d, || {
            d.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(&format!("{shader}::{entry}")),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    zero_initialize_workgroup_memory: false,
                },
                cache: self.inner.pipeline_cache.as_ref(),
            })
        });
        if let Some(e) = error {
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
            footprint,
            params: validated.params_layout(entry),
        });
        self.inner
            .pipelines
            .lock()
            .unwrap()
            .insert(key, kernel.clone());
        Ok(kernel)
    }

    /// The shader module of `name`, compiled once per device (twice for a shader with entry
    /// points that run without bounds checks: `unchecked` picks that copy).
    fn module(
        &self,
        name: &str,
        src: &str,
        registered: bool,
        unchecked: bool,
    ) -> Result<(wgpu::ShaderModule, Arc<shaders::Validated>)> {
        let key = if unchecked {
            format!("{name}+unchecked")
        } else {
            name.to_string()
        };
        if let Some((module, validated, _)) = self.inner.modules.lock().unwrap().get(&key) {
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
        let validated = if registered {
            shaders::validated(name)?
        } else {
            Arc::new(shaders::validate(name, src)?)
        };
        let hash = source_hash(src);
        let d = &self.inner.device;
        // The browser compiles the WGSL itself, as the specification has it (naga only reads it).
        let src = if self.inner.summary.backend == "BrowserWebGpu" {
            shaders::standard_wgsl(src)
        } else {
            std::borrow::Cow::Borrowed(src)
        };
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(name),
            source: wgpu::ShaderSource::Wgsl(src),
        };
        // kiln's own shaders are compiled without wgpu's loop bounding, which adds a counter and
        // a branch to every loop and so keeps compilers from unrolling loops of a fixed trip
        // count (on lavapipe a LeNet step ran 11% faster without it; on GPUs unrolled loops
        // keep tile registers out of local memory). Users' shaders keep it. Bounds checks stay
        // on, except in the entry points `shaders::runs_unchecked` names: interior GEMM tiles
        // whose every index is in range by construction, where clamping each workgroup-memory
        // index would cost an instruction per load in the innermost loop.
        let checks = wgpu::ShaderRuntimeChecks {
            force_loop_bounding: !registered,
            bounds_checks: !unchecked,
            ..wgpu::ShaderRuntimeChecks::checked()
        };
        // SAFETY: without loop bounding, a shader must not loop forever. Registered shaders
        // don't: `shaders::tests::every_loop_steps_towards_its_bound` checks each loop header.
        // Without bounds checks, every index must be in range: `shaders::runs_unchecked` lists
        // the entry points whose launchers guarantee it (see there). Any other source keeps both.
        let (module, error) = crate::error::scoped(d, || unsafe {
            d.create_shader_module_trusted(desc, checks)
        });
        if let Some(e) = error {
            return Err(DeviceError::Shader {
                name: name.to_string(),
                message: e.to_string(),
            });
        }
        self.inner
            .modules
            .lock()
            .unwrap()
            .insert(key, (module.clone(), validated.clone(), hash));
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
}
