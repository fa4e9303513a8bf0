//! 2-D convolution (NCHW, any stride, padding and dilation, optional bias) as implicit GEMM on the
//! matmul's tiled kernel: forward, input gradient, weight gradient; bias gradient by reduction.

use crate::matmul::{gemm, Geom, Mode};
use crate::reduce::{reduce, Reduce};
use crate::{expect_dtype, Array, DType, Device, OpError, Result};

/// Stride, padding and dilation (height, width).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dSpec {
    /// Step between windows.
    pub stride: (usize, usize),
    /// Zeros added on each side.
    pub padding: (usize, usize),
    /// Spacing between kernel taps.
    pub dilation: (usize, usize),
}

impl Default for Conv2dSpec {
    fn default() -> Self {
        Conv2dSpec {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
        }
    }
}

impl Conv2dSpec {
    /// Output extent along one axis, as PyTorch computes it; None when the window does not fit.
    pub fn out_len(
        input: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
        dil: usize,
    ) -> Option<usize> {
        let span = dil * (kernel.checked_sub(1)?) + 1;
        (input + 2 * pad).checked_sub(span).map(|r| r / stride + 1)
    }

    /// Output (OH, OW) for an input (H, W) and kernel (KH, KW).
    pub fn out_hw(
        &self,
        op: &'static str,
        h: usize,
        w: usize,
        kh: usize,
        kw: usize,
    ) -> Result<(usize, usize)> {
        if self.stride.0 == 0 || self.stride.1 == 0 || self.dilation.0 == 0 || self.dilation.1 == 0
        {
            return Err(OpError::Invalid {
                op,
                message: format!(
                    "stride {:?} and dilation {:?} must be positive",
                    self.stride, self.dilation
                ),
            });
        }
        let oh = Self::out_len(h, kh, self.stride.0, self.padding.0, self.dilation.0);
        let ow = Self::out_len(w, kw, self.stride.1, self.padding.1, self.dilation.1);
        match (oh, ow) {
            (Some(oh), Some(ow)) if oh > 0 && ow > 0 => Ok((oh, ow)),
            _ => Err(OpError::Shape {
                op,
                expected: format!("an input of at least the kernel's span ({kh}x{kw}, {self:?})"),
                got: format!("{h}x{w}"),
            }),
        }
    }
}

fn dims4(op: &'static str, what: &str, s: &[usize]) -> Result<[usize; 4]> {
    s.try_into().map_err(|_| OpError::Shape {
        op,
        expected: format!("{what} with 4 dimensions"),
        got: format!("{s:?}"),
    })
}

fn geom(x: [usize; 4], w: [usize; 4], oh: usize, ow: usize, s: &Conv2dSpec) -> [usize; 14] {
    [
        x[1],
        x[2],
        x[3],
        w[0],
        oh,
        ow,
        w[2],
        w[3],
        s.stride.0,
        s.stride.1,
        s.padding.0,
        s.padding.1,
        s.dilation.0,
        s.dilation.1,
    ]
}

fn check(
    op: &'static str,
    x: [usize; 4],
    w: [usize; 4],
    spec: &Conv2dSpec,
) -> Result<(usize, usize)> {
    if x[1] != w[1] {
        return Err(OpError::Shape {
            op,
            expected: format!("input with {} channels (weight {w:?})", w[1]),
            got: format!("{x:?}"),
        });
    }
    spec.out_hw(op, x[2], x[3], w[2], w[3])
}

/// y = conv2d(x, w) + bias. x: [N, Ci, H, W], w: [Co, Ci, KH, KW], bias: [Co] -> y: [N, Co, OH, OW].
pub fn conv2d(
    dev: &Device,
    x: &Array,
    w: &Array,
    bias: Option<&Array>,
    spec: &Conv2dSpec,
) -> Result<Array> {
    expect_dtype("conv2d", x, DType::F32)?;
    expect_dtype("conv2d", w, DType::F32)?;
    let xs = dims4("conv2d", "input", &x.shape)?;
    let ws = dims4("conv2d", "weight", &w.shape)?;
    let (oh, ow) = check("conv2d", xs, ws, spec)?;
    if let Some(b) = bias {
        if b.shape != [ws[0]] {
            return Err(OpError::Shape {
                op: "conv2d bias",
                expected: format!("[{}]", ws[0]),
                got: format!("{:?}", b.shape),
            });
        }
    }
    let y = Array::empty(dev, &[xs[0], ws[0], oh, ow])?;
    let g = Geom {
        m: ws[0],
        n: xs[0] * oh * ow,
        k: ws[1] * ws[2] * ws[3],
        batch: 1,
        bias_mode: 2,
        conv: geom(xs, ws, oh, ow, spec),
        ..Default::default()
    };
    gemm(
        dev,
        Mode::ConvForward,
        &w.buf,
        &x.buf,
        bias.map(|b| &b.buf),
        &y.buf,
        &g,
    )?;
    Ok(y)
}

/// dx for dy: [N, Co, OH, OW], w: [Co, Ci, KH, KW] and the input's shape.
pub fn conv2d_backward_input(
    dev: &Device,
    dy: &Array,
    w: &Array,
    x_shape: &[usize],
    spec: &Conv2dSpec,
) -> Result<Array> {
    let xs = dims4("conv2d_backward_input", "input", x_shape)?;
    let ws = dims4("conv2d_backward_input", "weight", &w.shape)?;
    let (oh, ow) = check("conv2d_backward_input", xs, ws, spec)?;
    expect_dy(&dy.shape, [xs[0], ws[0], oh, ow])?;
    let dx = Array::empty(dev, x_shape)?;
    let g = Geom {
        m: ws[1],
        n: xs[0] * xs[2] * xs[3],
        k: ws[0] * ws[2] * ws[3],
        batch: 1,
        conv: geom(xs, ws, oh, ow, spec),
        ..Default::default()
    };
    gemm(dev, Mode::ConvInputGrad, &w.buf, &dy.buf, None, &dx.buf, &g)?;
    Ok(dx)
}

/// dw for dy: [N, Co, OH, OW], x: [N, Ci, H, W] and the weight's shape.
pub fn conv2d_backward_weight(
    dev: &Device,
    dy: &Array,
    x: &Array,
    w_shape: &[usize],
    spec: &Conv2dSpec,
) -> Result<Array> {
    let xs = dims4("conv2d_backward_weight", "input", &x.shape)?;
    let ws = dims4("conv2d_backward_weight", "weight", w_shape)?;
    let (oh, ow) = check("conv2d_backward_weight", xs, ws, spec)?;
    expect_dy(&dy.shape, [xs[0], ws[0], oh, ow])?;
    let dw = Array::empty(dev, w_shape)?;
    let g = Geom {
        m: ws[0],
        n: ws[1] * ws[2] * ws[3],
        k: xs[0] * oh * ow,
        batch: 1,
        conv: geom(xs, ws, oh, ow, spec),
        ..Default::default()
    };
    gemm(
        dev,
        Mode::ConvWeightGrad,
        &dy.buf,
        &x.buf,
        None,
        &dw.buf,
        &g,
    )?;
    Ok(dw)
}

/// dbias[c] = sum of dy over batch and space.
pub fn conv2d_backward_bias(dev: &Device, dy: &Array) -> Result<Array> {
    let s = dims4("conv2d_backward_bias", "dy", &dy.shape)?;
    let per_image = reduce(
        dev,
        &dy.reshape(&[s[0], s[1], s[2] * s[3]])?,
        2,
        Reduce::Sum,
        false,
    )?;
    reduce(dev, &per_image, 0, Reduce::Sum, false)
}

fn expect_dy(got: &[usize], want: [usize; 4]) -> Result<()> {
    if got != want {
        return Err(OpError::Shape {
            op: "conv2d backward",
            expected: format!("dy {want:?}"),
            got: format!("{got:?}"),
        });
    }
    Ok(())
}

/// CPU reference.
pub mod cpu {
    use super::Conv2dSpec;

    /// Direct convolution. x: [N, Ci, H, W], w: [Co, Ci, KH, KW].
    pub fn conv2d(
        x: &[f64],
        xs: [usize; 4],
        w: &[f64],
        ws: [usize; 4],
        bias: Option<&[f64]>,
        s: &Conv2dSpec,
    ) -> (Vec<f64>, [usize; 4]) {
        let [n, ci, h, wd] = xs;
        let [co, _, kh, kw] = ws;
        let (oh, ow) = s.out_hw("cpu", h, wd, kh, kw).expect("valid conv");
        let mut y = vec![0.0; n * co * oh * ow];
        for b in 0..n {
            for o in 0..co {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = bias.map_or(0.0, |bb| bb[o]);
                        for c in 0..ci {
                            for i in 0..kh {
                                for j in 0..kw {
                                    let iy = (oy * s.stride.0 + i * s.dilation.0) as isize
                                        - s.padding.0 as isize;
                                    let ix = (ox * s.stride.1 + j * s.dilation.1) as isize
                                        - s.padding.1 as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                        continue;
                                    }
                                    acc += x[((b * ci + c) * h + iy as usize) * wd + ix as usize]
                                        * w[((o * ci + c) * kh + i) * kw + j];
                                }
                            }
                        }
                        y[((b * co + o) * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
        (y, [n, co, oh, ow])
    }
}
