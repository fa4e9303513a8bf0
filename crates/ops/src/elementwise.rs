//! Element-wise ops: unary functions with their derivatives, and binary ops with NumPy broadcasting.

use crate::{
    expect_dtype, launch_1d, launch_quads, numel, pack8, Array, DType, Device, OpError, Params,
    Result,
};

/// A unary function.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unary {
    /// -x
    Neg,
    /// e^x
    Exp,
    /// ln x
    Log,
    /// sqrt x
    Sqrt,
    /// |x|
    Abs,
    /// max(x, 0)
    Relu,
    /// 1 / (1 + e^-x)
    Sigmoid,
    /// tanh x
    Tanh,
    /// x * Phi(x), the exact (erf) form as PyTorch's default.
    Gelu,
    /// alpha * x + beta (scalar multiply and add).
    Affine(f32, f32),
    /// x^alpha
    Pow(f32),
    /// x^2
    Square,
    /// The tanh approximation of GELU, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): GPT-2's
    /// `gelu_new` and PyTorch's `gelu(approximate="tanh")`.
    GeluTanh,
}

impl Unary {
    /// The shader's OP code (declared in elementwise.wgsl).
    fn code(self) -> u32 {
        use kiln_device::shaders::consts::elementwise::*;
        match self {
            Unary::Neg => UNARY_NEG,
            Unary::Exp => UNARY_EXP,
            Unary::Log => UNARY_LOG,
            Unary::Sqrt => UNARY_SQRT,
            Unary::Abs => UNARY_ABS,
            Unary::Relu => UNARY_RELU,
            Unary::Sigmoid => UNARY_SIGMOID,
            Unary::Tanh => UNARY_TANH,
            Unary::Gelu => UNARY_GELU,
            Unary::Affine(..) => UNARY_AFFINE,
            Unary::Pow(_) => UNARY_POW,
            Unary::Square => UNARY_SQUARE,
            Unary::GeluTanh => UNARY_GELU_TANH,
        }
    }
    fn scalars(self) -> (f32, f32) {
        match self {
            Unary::Affine(a, b) => (a, b),
            Unary::Pow(a) => (a, 0.0),
            _ => (0.0, 0.0),
        }
    }
}

/// A binary op; comparisons give 1.0 or 0.0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binary {
    /// a + b
    Add,
    /// a - b
    Sub,
    /// a * b
    Mul,
    /// a / b
    Div,
    /// a^b
    Pow,
    /// max(a, b)
    Max,
    /// min(a, b)
    Min,
    /// a > b
    Gt,
    /// a < b
    Lt,
    /// a >= b
    Ge,
    /// a == b
    Eq,
}

impl Binary {
    /// The shader's OP code (declared in elementwise.wgsl).
    fn code(self) -> u32 {
        use kiln_device::shaders::consts::elementwise::*;
        match self {
            Binary::Add => BINARY_ADD,
            Binary::Sub => BINARY_SUB,
            Binary::Mul => BINARY_MUL,
            Binary::Div => BINARY_DIV,
            Binary::Pow => BINARY_POW,
            Binary::Max => BINARY_MAX,
            Binary::Min => BINARY_MIN,
            Binary::Gt => BINARY_GT,
            Binary::Lt => BINARY_LT,
            Binary::Ge => BINARY_GE,
            Binary::Eq => BINARY_EQ,
        }
    }
}

/// y = f(x).
pub fn unary(dev: &Device, x: &Array, op: Unary) -> Result<Array> {
    expect_dtype("unary", x, DType::F32)?;
    let out = Array::empty(dev, &x.shape)?;
    unary_into(dev, &x.buf, op, &out.buf, x.numel())?;
    Ok(out)
}

/// out[i] = f(x[i]) for the first `n` elements (`out` may be `x`).
pub(crate) fn unary_into(
    dev: &Device,
    x: &crate::Buffer,
    op: Unary,
    out: &crate::Buffer,
    n: usize,
) -> Result<()> {
    let (a, b) = op.scalars();
    let p = Params::new().u(n as u32).f(a).f(b);
    let consts = [("OP", op.code() as f64)];
    launch_quads(dev, "elementwise", "unary", &consts, &[x, out], &p, n)
}

/// dx = f'(x) * dy.
pub fn unary_backward(dev: &Device, x: &Array, dy: &Array, op: Unary) -> Result<Array> {
    same_shape("unary_backward", &x.shape, &dy.shape)?;
    let dx = Array::empty(dev, &x.shape)?;
    let (a, b) = op.scalars();
    let p = Params::new().u(x.numel() as u32).f(a).f(b);
    let consts = [("OP", op.code() as f64)];
    let bufs = [&x.buf, &dy.buf, &dx.buf];
    launch_quads(
        dev,
        "elementwise",
        "unary_backward",
        &consts,
        &bufs,
        &p,
        x.numel(),
    )?;
    Ok(dx)
}

pub(crate) fn same_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<()> {
    if a != b {
        return Err(OpError::Shape {
            op,
            expected: format!("{a:?}"),
            got: format!("{b:?}"),
        });
    }
    Ok(())
}

/// The broadcast shape of two shapes (NumPy rules: align right; extents equal or 1).
pub fn broadcast_shape(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(OpError::Shape {
                    op,
                    expected: format!("shapes that broadcast with {a:?}"),
                    got: format!("{b:?}"),
                })
            }
        };
    }
    Ok(out)
}

/// Strides of `shape` seen as `out` (right-aligned; 0 along broadcast axes).
pub fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let own = crate::strides(shape);
    let lead = out.len() - shape.len();
    (0..out.len())
        .map(|i| {
            if i < lead || shape[i - lead] == 1 {
                0
            } else {
                own[i - lead]
            }
        })
        .collect()
}

/// out = a (op) b with broadcasting.
pub fn binary(dev: &Device, a: &Array, b: &Array, op: Binary) -> Result<Array> {
    expect_dtype("binary", a, DType::F32)?;
    expect_dtype("binary", b, DType::F32)?;
    let shape = broadcast_shape("binary", &a.shape, &b.shape)?;
    let out = Array::empty(dev, &shape)?;
    let same = a.shape == shape && b.shape == shape;
    let p = Params::new()
        .u(numel(&shape) as u32)
        .u(shape.len() as u32)
        .u(0)
        .u(0) // pads to the vec4 alignment of the arrays that follow
        .us(&pack8("binary", &shape)?)
        .us(&pack8("binary", &broadcast_strides(&a.shape, &shape))?)
        .us(&pack8("binary", &broadcast_strides(&b.shape, &shape))?);
    let bufs = [&a.buf, &b.buf, &out.buf];
    let consts = [("OP", op.code() as f64), ("SAME", same as u32 as f64)];
    if same {
        launch_quads(
            dev,
            "elementwise",
            "binary",
            &consts,
            &bufs,
            &p,
            numel(&shape),
        )?;
    } else {
        let k = dev.kernel("elementwise", "binary", &consts)?;
        launch_1d(dev, &k, &bufs, &p, numel(&shape))?;
    }
    Ok(out)
}

/// x *= mask, in place (pruning: masked entries stay zero).
pub fn mask_in_place(dev: &Device, x: &crate::Buffer, mask: &crate::Buffer) -> Result<()> {
    if x.len() != mask.len() || x.dtype() != DType::F32 || mask.dtype() != DType::F32 {
        return Err(OpError::Shape {
            op: "mask_in_place",
            expected: format!("an f32 mask of {} elements", x.len()),
            got: format!("{} x {}", mask.len(), mask.dtype()),
        });
    }
    // Bindings in order: y (the mask), then inout.
    launch_quads(
        dev,
        "elementwise",
        "mask_in_place",
        &[],
        &[mask, x],
        &Params::new().u(x.len() as u32).f(0.0).f(0.0),
        x.len(),
    )
}

/// CPU references in f64.
pub mod cpu {
    use super::{broadcast_shape, broadcast_strides, Binary, Unary};

    fn erf(x: f64) -> f64 {
        // Series/continued-fraction free: integrate with high-order Simpson for reference accuracy.
        let n = 2000;
        let h = x / n as f64;
        let f = |t: f64| (-t * t).exp();
        let mut s = f(0.0) + f(x);
        for i in 1..n {
            s += f(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 };
        }
        s * h / 3.0 * 2.0 / std::f64::consts::PI.sqrt()
    }

    /// f(x).
    pub fn unary(x: f64, op: Unary) -> f64 {
        match op {
            Unary::Neg => -x,
            Unary::Exp => x.exp(),
            Unary::Log => x.ln(),
            Unary::Sqrt => x.sqrt(),
            Unary::Abs => x.abs(),
            // NaN propagates (f32::max would return 0), as PyTorch and the shader.
            Unary::Relu => {
                if x > 0.0 || x.is_nan() {
                    x
                } else {
                    0.0
                }
            }
            Unary::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Unary::Tanh => x.tanh(),
            Unary::Gelu => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
            Unary::Affine(a, b) => a as f64 * x + b as f64,
            Unary::Pow(a) => x.powf(a as f64),
            Unary::Square => x * x,
            Unary::GeluTanh => {
                let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
                0.5 * x * (1.0 + u.tanh())
            }
        }
    }

    /// a (op) b.
    pub fn binary_scalar(a: f64, b: f64, op: Binary) -> f64 {
        let t = |c: bool| if c { 1.0 } else { 0.0 };
        match op {
            Binary::Add => a + b,
            Binary::Sub => a - b,
            Binary::Mul => a * b,
            Binary::Div => a / b,
            Binary::Pow => a.powf(b),
            Binary::Max => a.max(b),
            Binary::Min => a.min(b),
            Binary::Gt => t(a > b),
            Binary::Lt => t(a < b),
            Binary::Ge => t(a >= b),
            Binary::Eq => t(a == b),
        }
    }

    /// Broadcasting binary op; returns the output shape and values.
    pub fn binary(
        a: &[f64],
        sa: &[usize],
        b: &[f64],
        sb: &[usize],
        op: Binary,
    ) -> (Vec<usize>, Vec<f64>) {
        let shape = broadcast_shape("cpu", sa, sb).expect("broadcastable");
        let (ta, tb) = (broadcast_strides(sa, &shape), broadcast_strides(sb, &shape));
        let n: usize = shape.iter().product();
        let out = (0..n)
            .map(|i| {
                let (mut rem, mut ia, mut ib) = (i, 0, 0);
                for d in (0..shape.len()).rev() {
                    let c = rem % shape[d];
                    rem /= shape[d];
                    ia += c * ta[d];
                    ib += c * tb[d];
                }
                binary_scalar(a[ia], b[ib], op)
            })
            .collect();
        (shape, out)
    }
}

impl crate::op::Op for Unary {
    fn name(&self) -> &str {
        "unary"
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<crate::op::Forward> {
        Ok(unary(dev, inputs[0], *self)?.into())
    }
    fn backward(
        &self,
        dev: &Device,
        ctx: &crate::op::Ctx,
        dy: &Array,
    ) -> Result<Vec<Option<Array>>> {
        Ok(vec![Some(unary_backward(dev, ctx.inputs[0], dy, *self)?)])
    }
}

impl crate::op::Op for Binary {
    fn name(&self) -> &str {
        "binary"
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<crate::op::Forward> {
        Ok(binary(dev, inputs[0], inputs[1], *self)?.into())
    }
    /// Add, Sub, Mul and Div have gradients (summed back over broadcast axes); comparisons,
    /// Pow, Max and Min have none.
    fn backward(
        &self,
        dev: &Device,
        ctx: &crate::op::Ctx,
        dy: &Array,
    ) -> Result<Vec<Option<Array>>> {
        use crate::reduce::sum_to;
        let (a, b) = (ctx.inputs[0], ctx.inputs[1]);
        let (ga, gb) = match self {
            Binary::Add => (dy.clone(), dy.clone()),
            Binary::Sub => (dy.clone(), unary(dev, dy, Unary::Neg)?),
            Binary::Mul => (
                binary(dev, dy, b, Binary::Mul)?,
                binary(dev, dy, a, Binary::Mul)?,
            ),
            Binary::Div => {
                let ga = binary(dev, dy, b, Binary::Div)?;
                // d(a/b)/db = -a/b^2 = -(a/b)/b
                let q = binary(dev, &binary(dev, a, b, Binary::Div)?, b, Binary::Div)?;
                let gb = unary(dev, &binary(dev, dy, &q, Binary::Mul)?, Unary::Neg)?;
                (ga, gb)
            }
            op => {
                return Err(OpError::Invalid {
                    op: "backward",
                    message: format!("{op:?} has no gradient"),
                })
            }
        };
        Ok(vec![
            ctx.needs(0)
                .then(|| sum_to(dev, &ga, &a.shape))
                .transpose()?,
            ctx.needs(1)
                .then(|| sum_to(dev, &gb, &b.shape))
                .transpose()?,
        ])
    }
}
