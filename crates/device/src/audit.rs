//! Audits of kiln's specialised shaders on naga's IR, for tests that keep GPU kernels in the
//! shape GPU compilers need.
//!
//! A function-local or private array (or matrix) indexed by a value that is not a constant, inside
//! a loop, can only stay in registers if the driver unrolls the loop; otherwise it lives in
//! local memory (on NVIDIA, hundreds of cycles a read). Accumulators and prefetch registers
//! must therefore be indexed by constants (or be named variables), so no driver has to unroll
//! for them.

use crate::error::{DeviceError, Result};
use naga::{AddressSpace, Block, Expression, Function, Handle, Module, Statement, TypeInner};
use std::collections::HashSet;

/// Every place where entry point `entry` of registered shader `shader`, specialised with
/// `constants`, indexes a function-local or private array or matrix by a non-constant inside a
/// loop (loops of functions it calls included), as "function `f`: `acc` indexed by a
/// non-constant inside a loop". Empty where there is none.
pub fn dynamic_private_indexing(
    shader: &str,
    entry: &str,
    constants: &[(&str, f64)],
) -> Result<Vec<String>> {
    let v = crate::shaders::validated(shader)?;
    let mut pc = naga::back::PipelineConstants::default();
    for (k, c) in constants {
        pc.insert(k.to_string(), *c);
    }
    let (module, info) = naga::back::pipeline_constants::process_overrides(
        &v.module,
        &v.info,
        Some((naga::ShaderStage::Compute, entry)),
        &pc,
    )
    .map_err(|e| DeviceError::Shader {
        name: shader.to_string(),
        message: format!("entry `{entry}` with {constants:?}: {e}"),
    })?;
    let (index, ep) = module
        .entry_points
        .iter()
        .enumerate()
        .find(|(_, ep)| ep.name == entry)
        .ok_or_else(|| DeviceError::UnknownEntryPoint {
            shader: shader.to_string(),
            entry: entry.to_string(),
        })?;
    let mut walk = Walk {
        module: &module,
        info: &info,
        found: Vec::new(),
        seen: HashSet::new(),
    };
    walk.function(&ep.function, info.get_entry_point(index), entry, false);
    walk.found.sort();
    walk.found.dedup();
    Ok(walk.found)
}

struct Walk<'a> {
    module: &'a Module,
    info: &'a naga::valid::ModuleInfo,
    found: Vec<String>,
    /// (function, inside a loop) pairs already walked.
    seen: HashSet<(Handle<Function>, bool)>,
}

impl Walk<'_> {
    fn function(
        &mut self,
        f: &Function,
        fi: &naga::valid::FunctionInfo,
        name: &str,
        in_loop: bool,
    ) {
        self.block(f, fi, name, &f.body, in_loop);
    }

    fn block(
        &mut self,
        f: &Function,
        fi: &naga::valid::FunctionInfo,
        name: &str,
        b: &Block,
        in_loop: bool,
    ) {
        for s in b.iter() {
            match s {
                Statement::Emit(range) if in_loop => {
                    for h in range.clone() {
                        self.expression(f, fi, name, h);
                    }
                }
                Statement::Block(inner) => self.block(f, fi, name, inner, in_loop),
                Statement::If { accept, reject, .. } => {
                    self.block(f, fi, name, accept, in_loop);
                    self.block(f, fi, name, reject, in_loop);
                }
                Statement::Switch { cases, .. } => {
                    for c in cases {
                        self.block(f, fi, name, &c.body, in_loop);
                    }
                }
                Statement::Loop {
                    body, continuing, ..
                } => {
                    self.block(f, fi, name, body, true);
                    self.block(f, fi, name, continuing, true);
                }
                Statement::Call { function, .. } if self.seen.insert((*function, in_loop)) => {
                    let callee = &self.module.functions[*function];
                    let cname = callee.name.clone().unwrap_or_default();
                    let cinfo = &self.info[*function];
                    self.function(callee, cinfo, &cname, in_loop);
                }
                _ => {}
            }
        }
    }

    /// Records `h` where it indexes a local or private array or matrix by a non-constant.
    fn expression(
        &mut self,
        f: &Function,
        fi: &naga::valid::FunctionInfo,
        name: &str,
        h: Handle<Expression>,
    ) {
        let Expression::Access { base, index } = f.expressions[h] else {
            return;
        };
        if matches!(
            f.expressions[index],
            Expression::Literal(_) | Expression::Constant(_) | Expression::ZeroValue(_)
        ) {
            return;
        }
        // What is indexed: an array or matrix, through a pointer or as a value.
        let types = &self.module.types;
        let indexed = match fi[base].ty.inner_with(types) {
            TypeInner::Pointer { base: t, .. } => &types[*t].inner,
            TypeInner::ValuePointer { .. } => return,
            other => other,
        };
        if !matches!(indexed, TypeInner::Array { .. } | TypeInner::Matrix { .. }) {
            return;
        }
        if let Some(var) = self.private_root(f, base) {
            self.found.push(format!(
                "function `{name}`: `{var}` indexed by a non-constant inside a loop"
            ));
        }
    }

    /// The name of the function-local or private variable an access chain starts from, if it
    /// starts from one (or from a value: a function argument or a loaded local).
    fn private_root(&self, f: &Function, mut e: Handle<Expression>) -> Option<String> {
        loop {
            match &f.expressions[e] {
                Expression::Access { base, .. } | Expression::AccessIndex { base, .. } => e = *base,
                Expression::Load { pointer } => e = *pointer,
                Expression::LocalVariable(v) => {
                    return Some(f.local_variables[*v].name.clone().unwrap_or_default())
                }
                Expression::GlobalVariable(g) => {
                    let g = &self.module.global_variables[*g];
                    return (g.space == AddressSpace::Private)
                        .then(|| g.name.clone().unwrap_or_default());
                }
                Expression::FunctionArgument(i) => {
                    let arg = &f.arguments[*i as usize];
                    // A pointer into storage or workgroup memory is not a register array.
                    if let TypeInner::Pointer { space, .. } = self.module.types[arg.ty].inner {
                        if !matches!(space, AddressSpace::Function | AddressSpace::Private) {
                            return None;
                        }
                    }
                    return Some(arg.name.clone().unwrap_or_else(|| format!("argument {i}")));
                }
                _ => return None,
            }
        }
    }
}
