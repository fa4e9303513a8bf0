//! A user-written op: swish (SiLU), y = x * sigmoid(x), as one WGSL kernel each way, given a
//! backward through `kiln::ops::op::Op` so autograd, gradcheck and recorded steps take it like
//! any built-in op. Shared by examples/custom_op.rs and tests/custom_op.rs.

use kiln::device::{Device, Params};
use kiln::ops::op::{Ctx, Forward, Op};
use kiln::ops::{Array, OpError, Result};

/// The WGSL: bindings in kiln's order (read-only inputs, then outputs, then the parameter block).
const SRC: &str = r#"
struct Params { n: u32 }
const WG: u32 = 256u;

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

// Large element counts arrive as a 2-D grid of workgroups (Device::launch splits them).
fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.x + wid.y * nwg.x) * WG + lid;
}

@compute @workgroup_size(WG)
fn swish_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    out[i] = x[i] / (1.0 + exp(-x[i]));
}

// dx = dy * (s + x s (1 - s)), s = sigmoid(x)
@compute @workgroup_size(WG)
fn swish_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    let s = 1.0 / (1.0 + exp(-x[i]));
    out[i] = dy[i] * (s + x[i] * s * (1.0 - s));
}
"#;

/// y = x * sigmoid(x), element-wise, on f32 tensors of any shape.
#[derive(Clone, Copy, Debug)]
pub struct Swish;

impl Swish {
    /// Runs one entry point over `x` (and `dy` for the backward): a kernel binds only what its
    /// entry point reads, in binding order, then its output.
    fn launch(dev: &Device, entry: &str, x: &Array, dy: Option<&Array>) -> Result<Array> {
        if x.dtype() != kiln::ops::DType::F32 || dy.is_some_and(|d| d.shape != x.shape) {
            return Err(OpError::Shape {
                op: "swish",
                expected: format!("f32 x and dy of one shape, x {:?}", x.shape),
                got: format!("{} x, dy {:?}", x.dtype(), dy.map(|d| &d.shape)),
            });
        }
        let out = Array::empty(dev, &x.shape)?;
        let kernel = dev.kernel_from_source("user_swish", SRC, entry, &[])?;
        let groups = u32::try_from(x.numel().div_ceil(256)).map_err(|_| OpError::Invalid {
            op: "swish",
            message: format!("{} elements are more than one dispatch indexes", x.numel()),
        })?;
        let params = Params::new().u(x.numel() as u32);
        let mut bufs = vec![&x.buf];
        bufs.extend(dy.map(|d| &d.buf));
        bufs.push(&out.buf);
        dev.launch(&kernel, &bufs, &params, [groups, 1, 1])?;
        Ok(out)
    }
}

impl Op for Swish {
    fn name(&self) -> &str {
        "swish"
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<Forward> {
        Ok(Swish::launch(dev, "swish_forward", inputs[0], None)?.into())
    }
    fn backward(&self, dev: &Device, ctx: &Ctx, dy: &Array) -> Result<Vec<Option<Array>>> {
        let dx = Swish::launch(dev, "swish_backward", ctx.inputs[0], Some(dy))?;
        Ok(vec![Some(dx)])
    }
}

/// The CPU reference, in f64.
pub fn swish_cpu(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| v / (1.0 + (-v).exp())).collect()
}
