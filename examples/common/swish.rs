//! A user-written op: swish (SiLU), y = x * sigmoid(x), one WGSL kernel each way. Shared by
//! examples/custom_op.rs and tests/custom_op.rs.

use kiln::device::Device;
use kiln::ops::op::{self, Ctx, Forward, Op};
use kiln::ops::{Array, Result};

kiln::device::kernel_params! { struct N { n: u32 } }

// KILN_WG and kiln_index come from the prelude kiln appends to users' WGSL.
const SRC: &str = r#"
struct N { n: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: N;

@compute @workgroup_size(KILN_WG)
fn forward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
           @builtin(local_invocation_index) l: u32) {
    let i = kiln_index(w, n, l);
    if (i < p.n) { out[i] = x[i] / (1.0 + exp(-x[i])); }
}

@compute @workgroup_size(KILN_WG)
fn backward(@builtin(workgroup_id) w: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>,
            @builtin(local_invocation_index) l: u32) {
    let i = kiln_index(w, n, l);
    if (i >= p.n) { return; }
    let s = 1.0 / (1.0 + exp(-x[i]));
    out[i] = dy[i] * (s + x[i] * s * (1.0 - s));
}
"#;

/// y = x * sigmoid(x), element-wise, on f32 tensors of any shape.
#[derive(Clone, Copy, Debug)]
pub struct Swish;

/// Runs entry point `entry` over `x` (x, or x and dy) into a new array like x.
fn run(dev: &Device, entry: &str, x: &[&Array]) -> Result<Array> {
    let k = dev.kernel_from_source("swish", SRC, entry, &[])?;
    let n = x[0].numel() as u32;
    op::map(dev, &k, x, &N { n })
}

impl Op for Swish {
    fn name(&self) -> &str {
        "swish"
    }
    fn arity(&self) -> Option<usize> {
        Some(1)
    }
    fn forward(&self, dev: &Device, x: &[&Array]) -> Result<Forward> {
        Ok(run(dev, "forward", x)?.into())
    }
    fn backward(&self, dev: &Device, ctx: &Ctx, dy: &Array) -> Result<Vec<Option<Array>>> {
        Ok(vec![Some(run(dev, "backward", &[ctx.inputs[0], dy])?)])
    }
}

/// The CPU reference, in f64.
pub fn swish_cpu(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| v / (1.0 + (-v).exp())).collect()
}
