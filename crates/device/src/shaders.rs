//! The shader registry: every `shaders/*.wgsl` embedded at build time, validated with naga.

use crate::error::{DeviceError, Result};
use crate::policy::Footprint;
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

include!(concat!(env!("OUT_DIR"), "/shaders.rs"));

/// Names of all registered shaders, sorted.
pub fn names() -> impl Iterator<Item = &'static str> {
    SHADERS.iter().map(|(n, _)| *n)
}

/// The WGSL source of a registered shader.
pub fn source(name: &str) -> Result<&'static str> {
    SHADERS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .ok_or_else(|| DeviceError::UnknownShader(name.to_string()))
}

/// What [`Device::kernel_from_source`](crate::Device::kernel_from_source) appends to users'
/// WGSL: the launch helpers' workgroup size and the index arithmetic every 1-D or per-row
/// kernel needs.
pub const USER_PRELUDE: &str = r#"
// kiln's prelude for user kernels (appended by Device::kernel_from_source).
// The workgroup size kiln_ops::launch's helpers size their grids for.
const KILN_WG: u32 = 256u;
// This invocation's index in a 1-D launch of KILN_WG-wide workgroups (Device::launch spreads a
// count above one dispatch dimension's limit over a 2-D grid; this undoes it).
fn kiln_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * KILN_WG + lid;
}
// This workgroup's index in a launch of one workgroup per row (or per tile), likewise.
fn kiln_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}
"#;

/// Registered entry points that run without wgpu's bounds checks: (shader, entry point). Only
/// kernels whose every index is in range by construction belong here, with the launcher
/// checking what that rests on:
/// - `gemm::gemm_tile4`: interior tiles of matmuls only (every row, column and K slab inside the
///   operands, 16-byte aligned; `kiln_ops::matmul` plans edge tiles on the checked `gemm_tile`).
pub const UNCHECKED: &[(&str, &str)] = &[("gemm", "gemm_tile4")];

/// Whether `shader::entry` runs without bounds checks (see [`UNCHECKED`]).
pub fn runs_unchecked(shader: &str, entry: &str) -> bool {
    UNCHECKED.contains(&(shader, entry))
}

/// Shader files written in wgpu's own WGSL extension (`enable wgpu_cooperative_matrix;`): they
/// compile under naga only, never in a browser, and the standard-WGSL check (`tests/tint.rs`,
/// Dawn's Tint) leaves them out. Every other file is standard WGSL.
pub const WGPU_ONLY: &[&str] = &["attention_coop", "gemm_coop"];

/// `src` as a compiler that follows the WGSL specification takes it (Tint, in browsers and in
/// Dawn): with `enable subgroups;` put first where the shader uses subgroup built-ins.
///
/// kiln's files leave that directive out because naga 30 refuses it (it implements subgroups
/// without one); this is the one place that adds it, for the browser backend and for the
/// conformance test. Source that already enables subgroups is returned as it is.
///
/// ```
/// use kiln_device::shaders::standard_wgsl;
/// let src = "fn f(v: f32) -> f32 { return subgroupAdd(v); }";
/// assert!(standard_wgsl(src).starts_with("enable subgroups;\n"));
/// assert_eq!(standard_wgsl("fn g() {}"), "fn g() {}");
/// ```
pub fn standard_wgsl(src: &str) -> Cow<'_, str> {
    if uses_subgroups(src) && !enables(src, "subgroups") {
        Cow::Owned(format!("enable subgroups;\n{src}"))
    } else {
        Cow::Borrowed(src)
    }
}

/// A registered shader parsed and validated once per process (devices share it).
pub(crate) fn validated(name: &str) -> Result<Arc<Validated>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Validated>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(v) = cache.lock().unwrap().get(name) {
        return Ok(v.clone());
    }
    let v = Arc::new(validate(name, source(name)?)?);
    cache.lock().unwrap().insert(name.to_string(), v.clone());
    Ok(v)
}

/// The values of a registered shader's override constants once `constants` are applied to
/// `entry` (naga's specialisation: the defaults the WGSL computes, such as a padded stride
/// `AS = BK + 8u`, included), by name. Only the overrides the entry point uses are listed.
/// Models of a kernel (the bank-conflict audit) read its strides here, so they follow the
/// shader rather than a copy of its arithmetic.
pub fn override_values(
    shader: &str,
    entry: &str,
    constants: &[(&str, f64)],
) -> Result<std::collections::BTreeMap<String, f64>> {
    let v = validated(shader)?;
    let mut pc = naga::back::PipelineConstants::default();
    for (k, val) in constants {
        pc.insert(k.to_string(), *val);
    }
    let err = |message: String| DeviceError::Shader {
        name: shader.to_string(),
        message: format!("entry `{entry}` with {constants:?}: {message}"),
    };
    let names: std::collections::BTreeSet<String> = v
        .module
        .overrides
        .iter()
        .filter_map(|(_, o)| o.name.clone())
        .collect();
    let (module, _) = naga::back::pipeline_constants::process_overrides(
        &v.module,
        &v.info,
        Some((naga::ShaderStage::Compute, entry)),
        &pc,
    )
    .map_err(|e| err(e.to_string()))?;
    let mut out = std::collections::BTreeMap::new();
    for (_, c) in module.constants.iter() {
        let Some(name) = c.name.as_ref().filter(|n| names.contains(*n)) else {
            continue;
        };
        let value = match module.global_expressions[c.init] {
            naga::Expression::Literal(l) => match l {
                naga::Literal::U32(x) => x as f64,
                naga::Literal::I32(x) => x as f64,
                naga::Literal::F32(x) => x as f64,
                naga::Literal::Bool(x) => x as u8 as f64,
                _ => continue,
            },
            _ => continue,
        };
        out.insert(name.clone(), value);
    }
    Ok(out)
}

/// A parsed and validated shader module.
pub struct Validated {
    /// naga's IR.
    pub module: naga::Module,
    /// naga's analysis of it.
    pub info: naga::valid::ModuleInfo,
    /// The module uses subgroup operations.
    subgroups: bool,
    /// The module enables cooperative matrices.
    cooperative_matrix: bool,
    /// The module enables f16.
    f16: bool,
}

/// How a kernel uses one of its bindings (group 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindingKind {
    /// `var<storage, read>`.
    StorageRead,
    /// `var<storage, read_write>`.
    StorageReadWrite,
    /// A `var<uniform>` of struct type: the kernel's parameter block.
    Uniform,
    /// A `var<uniform>` array: a data buffer read as a uniform (bound like a storage buffer).
    UniformRead,
}

/// Parses and validates WGSL with every capability naga knows; errors name the shader.
pub fn validate(name: &str, src: &str) -> Result<Validated> {
    let module = naga::front::wgsl::parse_str(src).map_err(|e| DeviceError::Shader {
        name: name.to_string(),
        message: e.emit_to_string_with_path(src, &format!("{name}.wgsl")),
    })?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .map_err(|e| DeviceError::Shader {
        name: name.to_string(),
        message: e.emit_to_string_with_path(src, &format!("{name}.wgsl")),
    })?;
    Ok(Validated {
        module,
        info,
        subgroups: uses_subgroups(src),
        cooperative_matrix: enables(src, "wgpu_cooperative_matrix"),
        f16: enables(src, "f16"),
    })
}

/// Whether WGSL source uses subgroup built-ins or functions (comments aside): such a module cannot
/// be created on an adapter without the SUBGROUP feature.
pub fn uses_subgroups(src: &str) -> bool {
    src.lines()
        .any(|l| l.split("//").next().unwrap_or("").contains("subgroup"))
}

/// Whether WGSL source has the directive `enable <extension>;` (`f16`, `wgpu_cooperative_matrix`):
/// such a module cannot be created on an adapter without the matching feature.
pub fn enables(src: &str, extension: &str) -> bool {
    src.lines().any(|l| {
        l.trim()
            .strip_prefix("enable ")
            .and_then(|r| r.strip_suffix(';'))
            .is_some_and(|e| e.trim() == extension)
    })
}

impl Validated {
    /// The bindings (group 0) an entry point actually uses, sorted by binding number.
    pub fn bindings(&self, shader: &str, entry: &str) -> Result<Vec<(u32, BindingKind)>> {
        let (index, _) = self
            .module
            .entry_points
            .iter()
            .enumerate()
            .find(|(_, ep)| ep.name == entry && ep.stage == naga::ShaderStage::Compute)
            .ok_or_else(|| DeviceError::UnknownEntryPoint {
                shader: shader.to_string(),
                entry: entry.to_string(),
            })?;
        let uses = self.info.get_entry_point(index);
        let mut out = Vec::new();
        for (handle, var) in self.module.global_variables.iter() {
            let Some(binding) = &var.binding else {
                continue;
            };
            if uses[handle].is_empty() {
                continue;
            }
            let kind = match var.space {
                naga::AddressSpace::Uniform
                    if matches!(
                        self.module.types[var.ty].inner,
                        naga::TypeInner::Struct { .. }
                    ) =>
                {
                    BindingKind::Uniform
                }
                naga::AddressSpace::Uniform => BindingKind::UniformRead,
                naga::AddressSpace::Storage { access } => {
                    if access.contains(naga::StorageAccess::STORE) {
                        BindingKind::StorageReadWrite
                    } else {
                        BindingKind::StorageRead
                    }
                }
                _ => continue,
            };
            if binding.group != 0 {
                return Err(DeviceError::Shader {
                    name: shader.to_string(),
                    message: format!(
                        "binding group {} used; kiln kernels use group 0",
                        binding.group
                    ),
                });
            }
            out.push((binding.binding, kind));
        }
        out.sort_by_key(|(b, _)| *b);
        Ok(out)
    }

    /// The members of the struct `entry` binds as its parameter block (a `var<uniform>` of
    /// struct type), None where it binds none.
    pub fn params_layout(&self, entry: &str) -> Option<Vec<crate::params::WgslField>> {
        let (index, _) = self
            .module
            .entry_points
            .iter()
            .enumerate()
            .find(|(_, ep)| ep.name == entry)?;
        let uses = self.info.get_entry_point(index);
        let (_, var) = self.module.global_variables.iter().find(|(h, v)| {
            v.space == naga::AddressSpace::Uniform
                && !uses[*h].is_empty()
                && matches!(
                    self.module.types[v.ty].inner,
                    naga::TypeInner::Struct { .. }
                )
        })?;
        let naga::TypeInner::Struct { members, .. } = &self.module.types[var.ty].inner else {
            return None;
        };
        use crate::params::ParamKind;
        Some(
            members
                .iter()
                .map(|m| crate::params::WgslField {
                    name: m.name.clone().unwrap_or_default(),
                    offset: m.offset,
                    kind: match self.module.types[m.ty].inner {
                        naga::TypeInner::Scalar(naga::Scalar {
                            kind: naga::ScalarKind::Uint,
                            width: 4,
                        }) => Some(ParamKind::U32),
                        naga::TypeInner::Scalar(naga::Scalar {
                            kind: naga::ScalarKind::Sint,
                            width: 4,
                        }) => Some(ParamKind::I32),
                        naga::TypeInner::Scalar(naga::Scalar {
                            kind: naga::ScalarKind::Float,
                            width: 4,
                        }) => Some(ParamKind::F32),
                        _ => None,
                    },
                })
                .collect(),
        )
    }

    /// What `entry` asks of an adapter with these override constants applied: workgroup memory
    /// (each variable rounded up to 16 bytes, as WebGPU counts it), workgroup size, storage
    /// buffers, features.
    pub fn footprint(
        &self,
        shader: &str,
        entry: &str,
        constants: &[(&str, f64)],
    ) -> Result<Footprint> {
        let storage_buffers = self
            .bindings(shader, entry)?
            .iter()
            .filter(|(_, k)| matches!(k, BindingKind::StorageRead | BindingKind::StorageReadWrite))
            .count() as u32;
        let mut pc = naga::back::PipelineConstants::default();
        for (k, v) in constants {
            pc.insert(k.to_string(), *v);
        }
        let err = |message: String| DeviceError::Shader {
            name: shader.to_string(),
            message: format!("entry `{entry}` with {constants:?}: {message}"),
        };
        let (module, info) = naga::back::pipeline_constants::process_overrides(
            &self.module,
            &self.info,
            Some((naga::ShaderStage::Compute, entry)),
            &pc,
        )
        .map_err(|e| err(e.to_string()))?;
        let (index, ep) = module
            .entry_points
            .iter()
            .enumerate()
            .find(|(_, ep)| ep.name == entry)
            .ok_or_else(|| DeviceError::UnknownEntryPoint {
                shader: shader.to_string(),
                entry: entry.to_string(),
            })?;
        let mut layouter = naga::proc::Layouter::default();
        layouter
            .update(module.to_ctx())
            .map_err(|e| err(e.to_string()))?;
        let uses = info.get_entry_point(index);
        let workgroup_bytes = module
            .global_variables
            .iter()
            .filter(|(h, v)| v.space == naga::AddressSpace::WorkGroup && !uses[*h].is_empty())
            .map(|(_, v)| (layouter[v.ty].size as u64).next_multiple_of(16))
            .sum();
        Ok(Footprint {
            workgroup_bytes,
            workgroup_size: ep.workgroup_size,
            storage_buffers,
            subgroups: self.subgroups,
            cooperative_matrix: self.cooperative_matrix,
            f16: self.f16,
        })
    }

    /// Translates the module with naga's SPIR-V, MSL and HLSL back ends (override constants at
    /// their defaults), so a construct one platform's compiler rejects shows up on any machine.
    pub fn translate_all(&self, name: &str) -> Result<()> {
        let err = |backend: &str, e: String| DeviceError::Shader {
            name: name.to_string(),
            message: format!("{backend} translation failed: {e}"),
        };
        // Per entry point, as wgpu does when it builds a pipeline.
        for ep in &self.module.entry_points {
            let (module, info) = naga::back::pipeline_constants::process_overrides(
                &self.module,
                &self.info,
                Some((ep.stage, &ep.name)),
                &Default::default(),
            )
            .map_err(|e| err("override", format!("{}: {e}", ep.name)))?;
            naga::back::spv::write_vec(&module, &info, &Default::default(), None)
                .map_err(|e| err("SPIR-V", format!("{}: {e}", ep.name)))?;
            // Metal's simdgroup matrices need MSL 2.3.
            let coop = module
                .types
                .iter()
                .any(|(_, t)| matches!(t.inner, naga::TypeInner::CooperativeMatrix { .. }));
            let msl = naga::back::msl::Options {
                lang_version: if coop { (2, 3) } else { (1, 0) },
                ..Default::default()
            };
            naga::back::msl::write_string(&module, &info, &msl, &Default::default())
                .map_err(|e| err("MSL", format!("{}: {e}", ep.name)))?;
            // wgpu offers cooperative matrices on Vulkan and Metal only, and naga's HLSL writer has
            // no lowering for them.
            if coop {
                continue;
            }
            let mut hlsl = String::new();
            let options = naga::back::hlsl::Options::default();
            let pipeline = naga::back::hlsl::PipelineOptions::default();
            naga::back::hlsl::Writer::new(&mut hlsl, &options, &pipeline)
                .write(&module, &info, None)
                .map_err(|e| err("HLSL", format!("{}: {e}", ep.name)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The build's table of u32 constants (which op launchers read their codes from) holds
    /// exactly the named u32 constants naga finds in each shader, with the same values.
    #[test]
    fn generated_constants_match_what_naga_reads() {
        for (name, src) in SHADERS {
            let module = naga::front::wgsl::parse_str(src).unwrap();
            let mut want: Vec<(String, u32)> = module
                .constants
                .iter()
                .filter_map(|(_, c)| {
                    let n = c.name.clone()?;
                    let ok = n
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                    match module.global_expressions[c.init] {
                        naga::Expression::Literal(naga::Literal::U32(v)) if ok => Some((n, v)),
                        _ => None,
                    }
                })
                .collect();
            let mut got: Vec<(String, u32)> = CONSTS
                .iter()
                .filter(|(s, ..)| s == name)
                .map(|(_, n, v)| (n.to_string(), *v))
                .collect();
            want.sort();
            got.sort();
            assert_eq!(got, want, "constants of {name}.wgsl");
        }
    }

    /// Every registered shader parses, validates, and translates to SPIR-V, MSL and HLSL.
    #[test]
    fn every_shader_validates_and_translates() {
        assert!(!SHADERS.is_empty());
        for (name, src) in SHADERS {
            let v = validate(name, src).unwrap_or_else(|e| panic!("{e}"));
            v.translate_all(name).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    /// Only the subgroup kernels need the SUBGROUP feature; a comment naming subgroups does not.
    #[test]
    fn subgroup_use_is_detected_outside_comments() {
        let users: Vec<&str> = SHADERS
            .iter()
            .filter(|(_, src)| uses_subgroups(src))
            .map(|(name, _)| *name)
            .collect();
        assert_eq!(
            users,
            [
                "attention_coop",
                "attention_sg",
                "conv_wgrad_sg",
                "gemm_coop",
                "gemm_sg",
                "rows_sg"
            ]
        );
        assert!(!uses_subgroups("// subgroups would help here\nfn f() {}"));
        assert!(uses_subgroups("let x = subgroupShuffle(v, 0u); // y"));
    }

    /// The feature checks read `enable` directives, and only whole ones.
    #[test]
    fn enable_directives_name_their_extension() {
        let src = "enable f16;\n  enable wgpu_cooperative_matrix;\n// enable subgroups;\n";
        assert!(enables(src, "f16"));
        assert!(enables(src, "wgpu_cooperative_matrix"));
        assert!(!enables(src, "subgroups"));
        assert!(!enables("enable f16x;", "f16"));
        let users: Vec<&str> = SHADERS
            .iter()
            .filter(|(_, src)| enables(src, "wgpu_cooperative_matrix"))
            .map(|(name, _)| *name)
            .collect();
        assert_eq!(users, WGPU_ONLY);
    }

    /// The browser's WGSL differs from naga's only by the subgroups directive, put first.
    #[test]
    fn standard_wgsl_enables_subgroups_where_used() {
        for (name, src) in SHADERS {
            let std = standard_wgsl(src);
            if uses_subgroups(src) {
                assert_eq!(std, format!("enable subgroups;\n{src}"), "{name}");
            } else {
                assert_eq!(std, *src, "{name}");
            }
        }
        let already = "enable subgroups;\nfn f(v: f32) -> f32 { return subgroupAdd(v); }";
        assert_eq!(standard_wgsl(already), already);
    }

    /// Override values come from the specialised module: the ones set, and the defaults the
    /// WGSL computes from them.
    #[test]
    fn override_values_follow_the_shader() {
        let v = override_values(
            "gemm_coop",
            "gemm_coop16",
            &[("BK", 16.0), ("A_KFAST", 1.0)],
        )
        .unwrap();
        assert_eq!(v["BK"], 16.0);
        assert_eq!(v["A_FAST"], 16.0);
        assert_eq!(v["AS"], 24.0, "BK + 8");
        let v = override_values("gemm_coop", "gemm_coop16", &[("A_KFAST", 0.0)]).unwrap();
        assert_eq!(v["AS"], v["BM"] + 8.0);
        let e = override_values("gemm_coop", "gemm_coop16", &[("NOPE", 1.0)]).unwrap_err();
        assert!(e.to_string().contains("'NOPE' not found"), "{e}");
    }

    #[test]
    fn a_bad_shader_is_named_in_the_error() {
        let err = validate(
            "broken_kernel",
            "@compute @workgroup_size(1) fn main() { let x: f32 = 1u; }",
        )
        .err()
        .expect("must fail");
        let msg = err.to_string();
        assert!(msg.contains("broken_kernel"), "{msg}");
        assert!(msg.contains("broken_kernel.wgsl"), "{msg}");
    }

    /// Steps a loop may take: one, halving, or a workgroup, tile or subgroup size (overrides that
    /// kiln sets to positive values, and the subgroup size, which is at least 1).
    const STEPS: [&str; 11] = [
        "BK", "BKV", "BQ2", "NT", "WG", "S", "TR", "sg", "lanes", "4u * sg", "LPR",
    ];

    /// The first loop in `src` that is not a `for` stepping its own counter by one of `STEPS`
    /// towards its bound, as its header.
    fn unbounded_loop(src: &str) -> Option<String> {
        let code: String = src
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        if let Some(w) = code
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .find(|w| *w == "while" || *w == "loop")
        {
            return Some(w.to_string());
        }
        for (at, _) in code.match_indices("for (") {
            let rest = &code[at + 5..];
            let header = &rest[..rest.find(") {").unwrap_or(rest.len())];
            let parts: Vec<&str> = header.split(';').map(str::trim).collect();
            let [init, cond, step] = parts[..] else {
                return Some(header.to_string());
            };
            let var = init
                .strip_prefix("var ")
                .and_then(|v| v.split([' ', ':']).next())
                .unwrap_or("");
            let ok = if let Some(by) = step.strip_prefix(&format!("{var} += ")) {
                STEPS.contains(&by) && cond.starts_with(&format!("{var} < "))
            } else if step == format!("{var}++") {
                cond.starts_with(&format!("{var} < "))
            } else if step == format!("{var} = {var} * 2u") {
                // Doubling from a positive start.
                init == format!("var {var} = 1u") && cond.starts_with(&format!("{var} < "))
            } else if step == format!("{var}--") {
                // Counting down ends at zero only for a signed counter.
                init.starts_with(&format!("var {var} = i32(")) && cond == format!("{var} >= 0")
            } else {
                step == format!("{var} = {var} / 2u") && cond == format!("{var} > 0u")
            };
            if !ok {
                return Some(header.to_string());
            }
        }
        None
    }

    /// Shader modules are created without wgpu's loop bounding (see `Device::module`), so every
    /// loop must end by itself.
    #[test]
    fn every_loop_steps_towards_its_bound() {
        for (name, src) in SHADERS {
            assert_eq!(unbounded_loop(src), None, "{name}.wgsl");
        }
        let bad = [
            "for (var i = 0u; i < n; i += p.step) {",
            "for (var i = 0u; i > n; i++) {",
            "for (var i = 8u; i >= 0u; i++) {",
            "for (var i = 0u; j < n; i++) {",
            "for (var i = n - 1u; i >= 0; i--) {",
            "for (i = 0u; i < n; i++) {",
            "loop { if (x) { break; } }",
            "while (x) { }",
        ];
        for b in bad {
            assert!(unbounded_loop(b).is_some(), "{b}");
        }
        assert_eq!(unbounded_loop("for (var i = lid; i < n; i += WG) {"), None);
    }

    #[test]
    fn bindings_are_reflected_per_entry_point() {
        let v = validate("fill", source("fill").unwrap()).unwrap();
        assert_eq!(
            v.bindings("fill", "iota").unwrap(),
            vec![
                (0, BindingKind::StorageReadWrite),
                (1, BindingKind::Uniform)
            ]
        );
        let e = v.bindings("fill", "nope").unwrap_err();
        assert!(
            e.to_string().contains("no compute entry point `nope`"),
            "{e}"
        );
    }
}
