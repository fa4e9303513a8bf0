//! max_pool2d and avg_pool2d over NCHW, forward and backward (a deterministic gather).

use crate::conv::Conv2dSpec;
use crate::{expect_dtype, launch_1d, Array, DType, Device, OpError, Params, Result};

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

fn params(n: usize, xs: [usize; 4], oh: usize, ow: usize, s: &Pool2dSpec) -> Params {
    let c = &s.conv;
    Params::new().us(&[
        n,
        xs[2],
        xs[3],
        oh,
        ow,
        s.kernel.0,
        s.kernel.1,
        c.stride.0,
        c.stride.1,
        c.padding.0,
        c.padding.1,
        c.dilation.0,
        c.dilation.1,
    ]
    .map(|v| v as u32))
}

/// The pool kernel with the shape's divisors as override constants: integer division has no
/// vector form on CPUs, so software adapters divide by a constant far faster.
fn kernel(
    dev: &Device,
    entry: &str,
    op: u32,
    xs: [usize; 4],
    oh: usize,
    ow: usize,
    s: &Pool2dSpec,
) -> Result<std::sync::Arc<kiln_device::Kernel>> {
    let c = &s.conv;
    Ok(dev.kernel(
        "pool",
        entry,
        &[
            ("OP", op as f64),
            ("PW", xs[3] as f64),
            ("PHW", (xs[2] * xs[3]) as f64),
            ("POW", ow as f64),
            ("POHW", (oh * ow) as f64),
            ("PSH", c.stride.0 as f64),
            ("PSW", c.stride.1 as f64),
            (
                "DISJOINT",
                (c.dilation == (1, 1) && c.stride.0 >= s.kernel.0 && c.stride.1 >= s.kernel.1) as u8
                    as f64,
            ),
        ],
    )?)
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
    let k = kernel(dev, "pool_forward", 0, xs, oh, ow, spec)?;
    launch_1d(
        dev,
        &k,
        &[&x.buf, &y.buf, &idx.buf],
        &params(y.numel(), xs, oh, ow, spec),
        y.numel(),
    )?;
    Ok((y, idx))
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
    let dx = Array::empty(dev, x_shape)?;
    let k = kernel(dev, "pool_backward", 0, xs, oh, ow, spec)?;
    launch_1d(
        dev,
        &k,
        &[&dx.buf, &dy.buf, &idx.buf],
        &params(dx.numel(), xs, oh, ow, spec),
        dx.numel(),
    )?;
    Ok(dx)
}

/// Average pooling (padding counted in the divisor, as PyTorch's default).
pub fn avg_pool2d(dev: &Device, x: &Array, spec: &Pool2dSpec) -> Result<Array> {
    expect_dtype("avg_pool2d", x, DType::F32)?;
    let (xs, oh, ow) = dims("avg_pool2d", &x.shape, spec)?;
    let y = Array::empty(dev, &[xs[0], xs[1], oh, ow])?;
    let k = kernel(dev, "pool_forward", 1, xs, oh, ow, spec)?;
    // The max branch's index binding is unused here but still declared: a 1-element stand-in.
    let unused = dev.alloc(1, DType::I32)?;
    launch_1d(
        dev,
        &k,
        &[&x.buf, &y.buf, &unused],
        &params(y.numel(), xs, oh, ow, spec),
        y.numel(),
    )?;
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
    let dx = Array::empty(dev, x_shape)?;
    let k = kernel(dev, "pool_backward", 1, xs, oh, ow, spec)?;
    let unused = dev.alloc(1, DType::I32)?;
    launch_1d(
        dev,
        &k,
        &[&dx.buf, &dy.buf, &unused],
        &params(dx.numel(), xs, oh, ow, spec),
        dx.numel(),
    )?;
    Ok(dx)
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
                            best = best.max(v);
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
