//! Layer geometry shared by several op families: a convolution's stride, padding and dilation,
//! and the GEMM view of a Linear or Conv2d layer (the int8 and f16 kernels work on it).

use crate::{expect_dtype, Array, DType, OpError, Params, Result};

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
    /// The implicit GEMM's convolution geometry (the GEMM shader's parameter words): cin, h, w,
    /// cout, oh, ow, kh, kw, stride, padding and dilation (each height then width), for x:
    /// [N, Ci, H, W] and w: [Co, Ci, KH, KW].
    pub(crate) fn gemm_geom(
        &self,
        x: [usize; 4],
        w: [usize; 4],
        oh: usize,
        ow: usize,
    ) -> [usize; 14] {
        let s = self;
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

/// The GEMM view of a Linear or Conv2d layer on a given input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerGeom {
    /// Images (Linear: rows of the input).
    pub n: usize,
    /// Input channels (Linear: input features).
    pub c: usize,
    /// Input height and width (Linear: 1 x 1).
    pub hw: (usize, usize),
    /// Output channels (Linear: output features).
    pub m: usize,
    /// Kernel height and width (Linear: 1 x 1).
    pub kernel: (usize, usize),
    /// Output height and width (Linear: 1 x 1).
    pub out_hw: (usize, usize),
    /// Stride, padding, dilation.
    pub spec: Conv2dSpec,
    /// A Linear layer: the output is [n, m] rather than [n, m, oh, ow].
    pub linear: bool,
}

impl LayerGeom {
    /// A Linear layer: input [n, in], weight [out, in].
    pub fn linear(op: &'static str, x: &[usize], w: &[usize]) -> Result<LayerGeom> {
        match (x, w) {
            ([n, k], [m, k2]) if k == k2 && *n > 0 => Ok(LayerGeom {
                n: *n,
                c: *k,
                hw: (1, 1),
                m: *m,
                kernel: (1, 1),
                out_hw: (1, 1),
                spec: Conv2dSpec::default(),
                linear: true,
            }),
            _ => Err(OpError::Shape {
                op,
                expected: format!(
                    "an input [batch, {}] for weight {w:?}",
                    w.get(1).unwrap_or(&0)
                ),
                got: format!("{x:?}"),
            }),
        }
    }

    /// A convolution: input [n, c, h, w], weight [m, c, kh, kw].
    pub fn conv(op: &'static str, x: &[usize], w: &[usize], spec: Conv2dSpec) -> Result<LayerGeom> {
        match (x, w) {
            ([n, c, h, wd], [m, c2, kh, kw]) if c == c2 && *n > 0 => Ok(LayerGeom {
                n: *n,
                c: *c,
                hw: (*h, *wd),
                m: *m,
                kernel: (*kh, *kw),
                out_hw: spec.out_hw(op, *h, *wd, *kh, *kw)?,
                spec,
                linear: false,
            }),
            _ => Err(OpError::Shape {
                op,
                expected: format!(
                    "an input [batch, {}, height, width] for weight {w:?}",
                    w.get(1).unwrap_or(&0)
                ),
                got: format!("{x:?}"),
            }),
        }
    }

    /// GEMM rows: images x output pixels.
    pub fn rows(&self) -> usize {
        self.n * self.out_hw.0 * self.out_hw.1
    }

    /// GEMM depth: input channels x kernel taps.
    pub fn k(&self) -> usize {
        self.c * self.kernel.0 * self.kernel.1
    }

    /// The input's shape.
    pub fn input_shape(&self) -> Vec<usize> {
        if self.linear {
            vec![self.n, self.c]
        } else {
            vec![self.n, self.c, self.hw.0, self.hw.1]
        }
    }

    /// The output's shape.
    pub fn output_shape(&self) -> Vec<usize> {
        if self.linear {
            vec![self.n, self.m]
        } else {
            vec![self.n, self.m, self.out_hw.0, self.out_hw.1]
        }
    }

    /// The window fields shared by every quantized kernel's parameter block, from `c` on.
    pub(crate) fn window_params(&self, p: Params) -> Params {
        let s = &self.spec;
        [
            self.c,
            self.hw.0,
            self.hw.1,
            self.out_hw.0 * self.out_hw.1,
            self.out_hw.1,
            self.kernel.0,
            self.kernel.1,
            s.stride.0,
            s.stride.1,
            s.padding.0,
            s.padding.1,
            s.dilation.0,
            s.dilation.1,
        ]
        .iter()
        .fold(p, |p, v| p.u(*v as u32))
    }

    /// The input value under GEMM column `col` of row `row` (zero in the padding): the CPU
    /// reference of the kernels' gather.
    pub fn tap(&self, x: &[f32], row: usize, col: usize) -> f32 {
        let (ohw, ow) = (self.out_hw.0 * self.out_hw.1, self.out_hw.1);
        let (img, pix) = (row / ohw, row % ohw);
        let taps = self.kernel.0 * self.kernel.1;
        let (ci, t) = (col / taps, col % taps);
        let s = &self.spec;
        let iy = ((pix / ow) * s.stride.0 + (t / self.kernel.1) * s.dilation.0) as isize
            - s.padding.0 as isize;
        let ix = ((pix % ow) * s.stride.1 + (t % self.kernel.1) * s.dilation.1) as isize
            - s.padding.1 as isize;
        if iy < 0 || ix < 0 || iy >= self.hw.0 as isize || ix >= self.hw.1 as isize {
            return 0.0;
        }
        x[((img * self.c + ci) * self.hw.0 + iy as usize) * self.hw.1 + ix as usize]
    }

    /// Index of output (row, channel) in the output's row-major (NCHW) order.
    pub fn out_index(&self, row: usize, m: usize) -> usize {
        let ohw = self.out_hw.0 * self.out_hw.1;
        ((row / ohw) * self.m + m) * ohw + row % ohw
    }

    /// The input must be f32 in [`LayerGeom::input_shape`].
    pub(crate) fn check_input(&self, op: &'static str, x: &Array) -> Result<()> {
        expect_dtype(op, x, DType::F32)?;
        if x.shape != self.input_shape() {
            return Err(OpError::Shape {
                op,
                expected: format!("input {:?}", self.input_shape()),
                got: format!("{:?}", x.shape),
            });
        }
        Ok(())
    }
}
