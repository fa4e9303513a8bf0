//! max_pool2d and avg_pool2d over NCHW, forward and backward (a deterministic gather).

use crate::conv::Conv2dSpec;
use crate::{
    expect_dtype, launch_1d, launch_quads, uniform_runs, Array, DType, Device, OpError, Params,
    Result, WINDOW_FLOATS,
};
use kiln_device::shaders::consts::pool as codes;
use kiln_device::{Variant, VariantTable};

/// How the forward pass reads its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolPlan {
    /// Through 64 KiB uniform windows, a dispatch per window.
    Windows,
    /// From the storage buffer, one dispatch.
    Storage,
}

/// The forward pass's variants, over the input's shape [N, C, H, W].
pub static POOL: VariantTable<[usize; 4], PoolPlan> = VariantTable {
    family: "pool",
    variants: &[
        Variant {
            name: "pool_windows",
            plan: |d, xs| {
                let align = d.limits().min_uniform_buffer_offset_alignment as usize / 4;
                if xs[2] * xs[3] + align - 1 > WINDOW_FLOATS {
                    return Err("an input plane is larger than a 64 KiB window".into());
                }
                Ok(PoolPlan::Windows)
            },
            // Mesa 22.3's llvmpipe loads a storage buffer one lane at a time and gathers a
            // uniform array's elements in one vector load, which pays for a dispatch per window;
            // Mesa 25's gathers storage loads too, and one dispatch is faster (LeNet's first
            // pool at batch 64: 0.86 ms against 1.46 through 20 windows; on Mesa 22.3, 1.75
            // against 1.45).
            prefers: |d, _| {
                let p = d.adapter_profile();
                p.is_software && p.mesa_version < Some((25, 0))
            },
        },
        Variant {
            name: "pool_storage",
            plan: |_, _| Ok(PoolPlan::Storage),
            prefers: |_, _| true,
        },
    ],
};

/// Pooling window and its spec (stride, padding, dilation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dSpec {
    /// Window (KH, KW).
    pub kernel: (usize, usize),
    /// Stride, padding, dilation.
    pub conv: Conv2dSpec,
}

impl Pool2dSpec {
    /// A k x k window with stride k and no padding (PyTorch's default stride).
    pub fn square(k: usize) -> Self {
        Pool2dSpec {
            kernel: (k, k),
            conv: Conv2dSpec {
                stride: (k, k),
                ..Default::default()
            },
        }
    }
}

fn dims(op: &'static str, x: &[usize], spec: &Pool2dSpec) -> Result<([usize; 4], usize, usize)> {
    let xs: [usize; 4] = x.try_into().map_err(|_| OpError::Shape {
        op,
        expected: "[N, C, H, W]".into(),
        got: format!("{x:?}"),
    })?;
    let (kh, kw) = spec.kernel;
    if spec.conv.padding.0 * 2 > kh || spec.conv.padding.1 * 2 > kw {
        return Err(OpError::Invalid {
            op,
            message: format!(
                "padding {:?} must be at most half the window {:?}",
                spec.conv.padding, spec.kernel
            ),
        });
    }
    let (oh, ow) = spec.conv.out_hw(op, xs[2], xs[3], kh, kw)?;
    Ok((xs, oh, ow))
}

/// The parameter block: `n` invocations; `plane0` and `skip` place a windowed forward dispatch.
fn params(n: usize, plane0: usize, skip: usize) -> Params {
    Params::new().us(&[n, plane0, skip].map(|v| v as u32))
}

/// Dilation 1 and strides at least the window: every input lies in at most one window.
fn disjoint(s: &Pool2dSpec) -> bool {
    let c = &s.conv;
    c.dilation == (1, 1) && c.stride.0 >= s.kernel.0 && c.stride.1 >= s.kernel.1
}

/// The pool kernels' override constants: the whole shape, since integer division has no vector
/// form on CPUs, and loops over a constant window unroll, so software adapters run them far
/// faster.
fn constants(
    op: u32,
    xs: [usize; 4],
    (oh, ow): (usize, usize),
    s: &Pool2dSpec,
    window: bool,
) -> [(&'static str, f64); 15] {
    let c = &s.conv;
    let f = |v: usize| v as f64;
    [
        ("OP", op as f64),
        ("IH", f(xs[2])),
        ("IW", f(xs[3])),
        ("OH", f(oh)),
        ("OW", f(ow)),
        ("KH", f(s.kernel.0)),
        ("KW", f(s.kernel.1)),
        ("SH", f(c.stride.0)),
        ("SW", f(c.stride.1)),
        ("PADH", f(c.padding.0)),
        ("PADW", f(c.padding.1)),
        ("DH", f(c.dilation.0)),
        ("DW", f(c.dilation.1)),
        ("DISJOINT", disjoint(s) as u8 as f64),
        ("WINDOW", window as u8 as f64),
    ]
}

/// The forward pass into `y` (and, for max, `idx`): through uniform windows of x where a
/// software adapter's window holds a plane, else in one dispatch reading x from storage.
fn forward(
    dev: &Device,
    op: u32,
    x: &Array,
    y: &Array,
    idx: &crate::Buffer,
    xs: [usize; 4],
    spec: &Pool2dSpec,
) -> Result<()> {
    let (oh, ow) = (y.shape[2], y.shape[3]);
    let planes = xs[0] * xs[1];
    let runs = if POOL.choose(dev, &xs)?.plan == PoolPlan::Windows {
        uniform_runs(dev, &[(&x.buf, xs[2] * xs[3])], planes)?
    } else {
        None
    };
    match runs {
        Some(runs) => {
            let consts = constants(op, xs, (oh, ow), spec, true);
            let k = dev.kernel("pool", "pool_forward", &consts)?;
            // The storage binding of x is declared but not read.
            let unused = dev.alloc(1, DType::F32)?;
            for r in &runs {
                let (xu, skip) = &r.windows[0];
                let n = r.count * oh * ow;
                let p = params(n, r.first, *skip);
                launch_1d(dev, &k, &[&unused, &y.buf, idx, xu], &p, n)?;
            }
        }
        None => {
            // The uniform window is declared but not read: a 64 KiB stand-in fills it.
            let unused = dev.alloc(WINDOW_FLOATS, DType::F32)?;
            let n = y.numel();
            let p = params(n, 0, 0);
            let bufs = [&x.buf, &y.buf, idx, &unused];
            let consts = constants(op, xs, (oh, ow), spec, false);
            launch_quads(dev, "pool", "pool_forward", &consts, &bufs, &p, n)?;
        }
    }
    Ok(())
}

/// The variant the device's policy chooses for max pooling of `x` ([N, C, H, W]) and the
/// pipelines of its forward pass, for planners (the limit-profile test).
pub fn plan(dev: &Device, x: [usize; 4], spec: &Pool2dSpec) -> Result<crate::kernels::Planned> {
    let (xs, oh, ow) = dims("max_pool2d", &x, spec)?;
    let v = POOL.choose(dev, &xs)?;
    let windows = v.plan == PoolPlan::Windows;
    let consts = constants(codes::MAX, xs, (oh, ow), spec, windows);
    Ok(crate::kernels::Planned {
        family: POOL.family,
        variant: v.variant,
        kernels: vec![crate::kernels::KernelSpec::new(
            "pool",
            "pool_forward",
            &consts,
        )],
        largest_binding: (xs.iter().product::<usize>() * 4) as u64,
    })
}

/// Max pooling: (y, argmax indices within each plane).
pub fn max_pool2d(dev: &Device, x: &Array, spec: &Pool2dSpec) -> Result<(Array, Array)> {
    expect_dtype("max_pool2d", x, DType::F32)?;
    let (xs, oh, ow) = dims("max_pool2d", &x.shape, spec)?;
    let shape = [xs[0], xs[1], oh, ow];
    let y = Array::empty(dev, &shape)?;
    let idx = Array {
        buf: dev.alloc(y.numel(), DType::I32)?,
        shape: shape.to_vec(),
    };
    forward(dev, codes::MAX, x, &y, &idx.buf, xs, spec)?;
    Ok((y, idx))
}

/// The gradient dx of pooling from dy (and, for max, the saved argmax `idx`): one invocation per
/// window where windows do not overlap (after zeroing dx where they leave inputs out), else one
/// per input gathering from the windows that cover it.
fn backward(
    dev: &Device,
    op: u32,
    dy: &Array,
    idx: &crate::Buffer,
    xs: [usize; 4],
    spec: &Pool2dSpec,
) -> Result<Array> {
    let (oh, ow) = (dy.shape[2], dy.shape[3]);
    let dx = Array::empty(dev, &xs)?;
    let c = &spec.conv;
    let bufs = [&dx.buf, &dy.buf, idx];
    let consts = constants(op, xs, (oh, ow), spec, false);
    if disjoint(spec) {
        let covers_all = c.padding == (0, 0)
            && spec.kernel == c.stride
            && oh * c.stride.0 == xs[2]
            && ow * c.stride.1 == xs[3];
        if !covers_all {
            crate::fill(dev, &dx.buf, 0.0)?;
        }
        // The scatter's quad twin takes four windows per invocation.
        let n = dy.numel();
        launch_quads(
            dev,
            "pool",
            "pool_scatter",
            &consts,
            &bufs,
            &params(n, 0, 0),
            n,
        )?;
    } else {
        let k = dev.kernel("pool", "pool_backward", &consts)?;
        let n = dx.numel();
        launch_1d(dev, &k, &bufs, &params(n, 0, 0), n)?;
    }
    Ok(dx)
}

/// Gradient of max pooling: dy routed to each window's argmax.
pub fn max_pool2d_backward(
    dev: &Device,
    dy: &Array,
    idx: &Array,
    x_shape: &[usize],
    spec: &Pool2dSpec,
) -> Result<Array> {
    let (xs, oh, ow) = dims("max_pool2d_backward", x_shape, spec)?;
    if dy.shape != [xs[0], xs[1], oh, ow] || idx.shape != dy.shape {
        return Err(OpError::Shape {
            op: "max_pool2d_backward",
            expected: format!("dy and indices {:?}", [xs[0], xs[1], oh, ow]),
            got: format!("{:?} and {:?}", dy.shape, idx.shape),
        });
    }
    backward(dev, codes::MAX, dy, &idx.buf, xs, spec)
}

/// Average pooling (padding counted in the divisor, as PyTorch's default).
pub fn avg_pool2d(dev: &Device, x: &Array, spec: &Pool2dSpec) -> Result<Array> {
    expect_dtype("avg_pool2d", x, DType::F32)?;
    let (xs, oh, ow) = dims("avg_pool2d", &x.shape, spec)?;
    let y = Array::empty(dev, &[xs[0], xs[1], oh, ow])?;
    // The max branch's index binding is unused here but still declared: a 1-element stand-in.
    let unused = dev.alloc(1, DType::I32)?;
    forward(dev, codes::AVG, x, &y, &unused, xs, spec)?;
    Ok(y)
}

/// Gradient of average pooling.
pub fn avg_pool2d_backward(
    dev: &Device,
    dy: &Array,
    x_shape: &[usize],
    spec: &Pool2dSpec,
) -> Result<Array> {
    let (xs, oh, ow) = dims("avg_pool2d_backward", x_shape, spec)?;
    if dy.shape != [xs[0], xs[1], oh, ow] {
        return Err(OpError::Shape {
            op: "avg_pool2d_backward",
            expected: format!("dy {:?}", [xs[0], xs[1], oh, ow]),
            got: format!("{:?}", dy.shape),
        });
    }
    let unused = dev.alloc(1, DType::I32)?;
    backward(dev, codes::AVG, dy, &unused, xs, spec)
}

/// CPU reference.
pub mod cpu {
    use super::Pool2dSpec;

    /// Max (avg = false) or average pooling of x: [N, C, H, W].
    pub fn pool2d(x: &[f64], xs: [usize; 4], s: &Pool2dSpec, avg: bool) -> Vec<f64> {
        let (kh, kw) = s.kernel;
        let (oh, ow) = s.conv.out_hw("cpu", xs[2], xs[3], kh, kw).unwrap();
        let (h, w) = (xs[2], xs[3]);
        let mut y = Vec::new();
        for plane in 0..xs[0] * xs[1] {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut best = f64::NEG_INFINITY;
                    let mut sum = 0.0;
                    for i in 0..kh {
                        for j in 0..kw {
                            let iy = (oy * s.conv.stride.0 + i * s.conv.dilation.0) as isize
                                - s.conv.padding.0 as isize;
                            let ix = (ox * s.conv.stride.1 + j * s.conv.dilation.1) as isize
                                - s.conv.padding.1 as isize;
                            if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                continue;
                            }
                            let v = x[plane * h * w + iy as usize * w + ix as usize];
                            // NaN wins and stays, as in PyTorch (f64::max drops it).
                            if v > best || v.is_nan() || best.is_nan() {
                                best = if best.is_nan() { best } else { v };
                            }
                            sum += v;
                        }
                    }
                    y.push(if avg { sum / (kh * kw) as f64 } else { best });
                }
            }
        }
        y
    }
}

/// Max pooling as an op (the argmax indices are kept for the backward pass).
#[derive(Clone, Copy, Debug)]
pub struct MaxPool2d(pub Pool2dSpec);

impl crate::op::Op for MaxPool2d {
    fn name(&self) -> &str {
        "max_pool2d"
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<crate::op::Forward> {
        let (out, idx) = max_pool2d(dev, inputs[0], &self.0)?;
        Ok(crate::op::Forward::with_saved(out, idx))
    }
    fn backward(
        &self,
        dev: &Device,
        ctx: &crate::op::Ctx,
        dy: &Array,
    ) -> Result<Vec<Option<Array>>> {
        let idx = ctx.saved.get::<Array>("max_pool2d")?;
        let x = &ctx.inputs[0].shape;
        Ok(vec![Some(max_pool2d_backward(dev, dy, idx, x, &self.0)?)])
    }
}

/// Average pooling as an op.
#[derive(Clone, Copy, Debug)]
pub struct AvgPool2d(pub Pool2dSpec);

impl crate::op::Op for AvgPool2d {
    fn name(&self) -> &str {
        "avg_pool2d"
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<crate::op::Forward> {
        Ok(avg_pool2d(dev, inputs[0], &self.0)?.into())
    }
    fn backward(
        &self,
        dev: &Device,
        ctx: &crate::op::Ctx,
        dy: &Array,
    ) -> Result<Vec<Option<Array>>> {
        let x = &ctx.inputs[0].shape;
        Ok(vec![Some(avg_pool2d_backward(dev, dy, x, &self.0)?)])
    }
}
