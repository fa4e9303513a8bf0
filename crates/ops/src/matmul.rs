//! Batched matmul as PyTorch's `torch.matmul`: either operand transposed (a stride swap, no
//! copy), an optional fused bias and activation ([`matmul_bias_act`]), the gradients
//! ([`matmul_backward`]), the [`Matmul`] op and its CPU reference. The products run on the GEMM
//! engine ([`crate::gemm`]).

/// The activation [`matmul_bias_act`] fuses into the product's epilogue.
pub use crate::gemm::Activation;
use crate::gemm::{
    coop_size, gemm, uniform::matmul_uniform, F16Plan, GemmCall, GemmKind, GEMM, GEMM_F16,
};
use crate::half::{cast, cast_f16_scaled};
use crate::reduce::sum_to;
use crate::{expect_dtype, Array, Buffer, DType, Device, OpError, Result};

fn mat_dims(op: &'static str, s: &[usize], transposed: bool) -> Result<(usize, usize)> {
    if s.len() < 2 {
        return Err(OpError::Shape {
            op,
            expected: "at least 2 dimensions".into(),
            got: format!("{s:?}"),
        });
    }
    let (r, c) = (s[s.len() - 2], s[s.len() - 1]);
    Ok(if transposed { (c, r) } else { (r, c) })
}

/// `C = op(A) op(B) (+ bias[n])`, op = transpose when the flag is set.
///
/// A: [..., M, K] ([..., K, M] when `ta`), B: [..., K, N] ([..., N, K] when `tb`). The leading
/// (batch) dimensions must match, or one operand may be 2-D and is then shared by every batch.
/// A and B are both f32, or both f16 (mixed precision: C and the bias stay f32, products are
/// summed in f32).
pub fn matmul(
    dev: &Device,
    a: &Array,
    b: &Array,
    ta: bool,
    tb: bool,
    bias: Option<&Array>,
) -> Result<Array> {
    Ok(matmul_full(dev, a, b, ta, tb, bias, None, Activation::None, false)?.0)
}

/// What [`matmul_bias_act`] keeps for its backward: the output, and the value before the
/// activation where the activation's gradient needs it (GELU, tanh, sigmoid).
pub struct MatmulActSaved {
    /// act(op(A) op(B) + bias).
    pub out: Array,
    /// op(A) op(B) + bias, for activations other than ReLU (whose gradient the output gives).
    pub pre: Option<Array>,
    /// The activation.
    pub act: Activation,
}

/// `act(op(A) op(B) + bias)` in one pass where the kernel has an epilogue (the GPU tiles);
/// elsewhere the activation follows as its own pass. Shapes as [`matmul`]; f16 operands take the
/// activation as a separate pass. Returns the output and what the backward needs.
pub fn matmul_bias_act(
    dev: &Device,
    a: &Array,
    b: &Array,
    ta: bool,
    tb: bool,
    bias: Option<&Array>,
    act: Activation,
) -> Result<MatmulActSaved> {
    let keep = !matches!(act, Activation::None | Activation::Relu);
    let (out, pre) = matmul_full(dev, a, b, ta, tb, bias, None, act, keep)?;
    Ok(MatmulActSaved { out, pre, act })
}

/// Gradients of [`matmul_bias_act`] for dY: (dA, dB, dbias) as [`matmul_backward`] gives them.
#[allow(clippy::too_many_arguments)]
pub fn matmul_bias_act_backward(
    dev: &Device,
    a: &Array,
    b: &Array,
    ta: bool,
    tb: bool,
    saved: &MatmulActSaved,
    dy: &Array,
    need: [bool; 3],
) -> Result<(Option<Array>, Option<Array>, Option<Array>)> {
    let dz = match saved.act.unary() {
        None => dy.clone(),
        // ReLU's gradient is the same read off the output as off its input.
        Some(op) => {
            let x = saved.pre.as_ref().unwrap_or(&saved.out);
            crate::elementwise::unary_backward(dev, x, dy, op)?
        }
    };
    matmul_backward(dev, a, b, ta, tb, &dz, need)
}

/// [`matmul`] with C scaled by `alpha[0]` (f16 operands only; see [`matmul_backward`]).
fn matmul_scaled(
    dev: &Device,
    a: &Array,
    b: &Array,
    ta: bool,
    tb: bool,
    bias: Option<&Array>,
    alpha: Option<&Buffer>,
) -> Result<Array> {
    Ok(matmul_full(dev, a, b, ta, tb, bias, alpha, Activation::None, false)?.0)
}

/// Every matmul: shape checks, the variant choice, the launch. Returns C and, with `keep_pre`,
/// the value before the activation.
#[allow(clippy::too_many_arguments)]
fn matmul_full(
    dev: &Device,
    a: &Array,
    b: &Array,
    ta: bool,
    tb: bool,
    bias: Option<&Array>,
    alpha: Option<&Buffer>,
    act: Activation,
    keep_pre: bool,
) -> Result<(Array, Option<Array>)> {
    let f16 = a.dtype() == DType::F16;
    if f16 {
        expect_dtype("matmul", b, DType::F16)?;
    } else {
        expect_dtype("matmul", a, DType::F32)?;
        expect_dtype("matmul", b, DType::F32)?;
    }
    if let Some(bias) = bias {
        expect_dtype("matmul bias", bias, DType::F32)?;
    }
    let (m, k) = mat_dims("matmul", &a.shape, ta)?;
    let (k2, n) = mat_dims("matmul", &b.shape, tb)?;
    if k != k2 {
        return Err(OpError::Shape {
            op: "matmul",
            expected: format!(
                "B with {k} rows (inner dimension of A {:?}, ta={ta})",
                a.shape
            ),
            got: format!("B {:?} with {k2} rows (tb={tb})", b.shape),
        });
    }
    let (ab, bb) = (&a.shape[..a.shape.len() - 2], &b.shape[..b.shape.len() - 2]);
    let batch_shape = if ab == bb || bb.is_empty() {
        ab.to_vec()
    } else if ab.is_empty() {
        bb.to_vec()
    } else {
        return Err(OpError::Shape {
            op: "matmul",
            expected: format!("batch dimensions {ab:?} (or a 2-D operand)"),
            got: format!("{bb:?}"),
        });
    };
    if let Some(bias) = bias {
        if bias.shape != [n] {
            return Err(OpError::Shape {
                op: "matmul bias",
                expected: format!("[{n}]"),
                got: format!("{:?}", bias.shape),
            });
        }
    }
    let batch: usize = batch_shape.iter().product();
    let mut shape = batch_shape.clone();
    shape.extend([m, n]);
    let mut call = GemmCall::matmul(batch, m, n, k, ta, tb, !ab.is_empty(), !bb.is_empty(), f16)
        .with_activation(act, keep_pre);
    call.quads = [a.buf.quad_aligned(), b.buf.quad_aligned(), true];
    if f16 && alpha.is_none() && matches!(GEMM_F16.choose(dev, &call)?.plan, F16Plan::Widen) {
        // No cooperative matrices: the same products in f32 (f16 widens exactly).
        let (a, b) = (cast(dev, a, DType::F32)?, cast(dev, b, DType::F32)?);
        let (c, pre) = matmul_full(dev, &a, &b, ta, tb, bias, None, act, keep_pre)?;
        return Ok((c, pre));
    }
    let act_after = f16 && act != Activation::None;
    if act_after {
        call = call.with_activation(Activation::None, false);
    }
    let c = if !f16 && GEMM.choose(dev, &call)?.plan.kind == GemmKind::Uniform {
        matmul_uniform(dev, a, b, ta, tb, bias)?.reshape(&shape)?
    } else {
        let c = Array::empty(dev, &shape)?;
        let pre = if call.pre {
            Some(Array::empty(dev, &shape)?)
        } else {
            None
        };
        gemm(
            dev,
            &call,
            &a.buf,
            &b.buf,
            bias.map(|b| &b.buf),
            alpha,
            &c.buf,
            pre.as_ref().map(|p| &p.buf),
        )?;
        if !act_after && call.act == act {
            return Ok((c, pre));
        }
        c
    };
    // The activation as a pass of its own (gemm_uniform, f16): the product is the value before.
    match act.unary() {
        None => Ok((c, None)),
        Some(op) => {
            let y = crate::elementwise::unary(dev, &c, op)?;
            Ok((y, keep_pre.then_some(c)))
        }
    }
}

/// Gradients of [`matmul`] for dC: (dA, dB, dbias), each in its operand's stored shape, in f32,
/// each only where `need` asks for it (an input or a frozen weight needs none, and dA and dB are
/// each a product as costly as the forward one). With f16 operands on cooperative matrices, dC
/// is rounded to f16 too, after scaling by a power of two chosen on the device from max |dC|
/// (and undone in the products), so small gradients keep f16's precision without a loss scale;
/// without cooperative matrices the gradients are computed in f32 from the widened operands.
pub fn matmul_backward(
    dev: &Device,
    a: &Array,
    b: &Array,
    ta: bool,
    tb: bool,
    dc: &Array,
    need: [bool; 3],
) -> Result<(Option<Array>, Option<Array>, Option<Array>)> {
    expect_dtype("matmul_backward", dc, DType::F32)?;
    if a.dtype() == DType::F16 && coop_size(dev)?.is_none() {
        let (a, b) = (cast(dev, a, DType::F32)?, cast(dev, b, DType::F32)?);
        return matmul_backward(dev, &a, &b, ta, tb, dc, need);
    }
    // The products' dC: f16 after scaling (undone by alpha) for f16 operands, else dC itself.
    let scaled;
    let (g, alpha) = if a.dtype() == DType::F16 {
        scaled = cast_f16_scaled(dev, dc)?;
        (&scaled.0, Some(&scaled.1))
    } else {
        (dc, None)
    };
    // A 2-D operand shared across batches collects the gradient of every batch (sum_to).
    let da = if need[0] {
        let d = if ta {
            matmul_scaled(dev, b, g, tb, true, None, alpha)?
        } else {
            matmul_scaled(dev, g, b, false, !tb, None, alpha)?
        };
        Some(sum_to(dev, &d, &a.shape)?)
    } else {
        None
    };
    let db = if need[1] {
        let d = if tb {
            matmul_scaled(dev, g, a, true, ta, None, alpha)?
        } else {
            matmul_scaled(dev, a, g, !ta, false, None, alpha)?
        };
        Some(sum_to(dev, &d, &b.shape)?)
    } else {
        None
    };
    let dbias = if need[2] {
        let n = *dc.shape.last().unwrap();
        Some(sum_to(dev, &dc.reshape(&[dc.numel() / n.max(1), n])?, &[1, n])?.reshape(&[n])?)
    } else {
        None
    };
    Ok((da, db, dbias))
}

/// CPU reference.
pub mod cpu {
    /// `C[b] = op(A[b]) op(B[b])` for `batch` matrices (a_batched/b_batched say whether the operand
    /// has a batch dimension or is shared).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        a: &[f64],
        b: &[f64],
        batch: usize,
        m: usize,
        n: usize,
        k: usize,
        ta: bool,
        tb: bool,
        a_batched: bool,
        b_batched: bool,
    ) -> Vec<f64> {
        let mut c = vec![0.0; batch * m * n];
        for z in 0..batch {
            let ao = if a_batched { z * m * k } else { 0 };
            let bo = if b_batched { z * k * n } else { 0 };
            for i in 0..m {
                for j in 0..n {
                    let mut s = 0.0;
                    for p in 0..k {
                        let av = if ta {
                            a[ao + p * m + i]
                        } else {
                            a[ao + i * k + p]
                        };
                        let bv = if tb {
                            b[bo + j * k + p]
                        } else {
                            b[bo + p * n + j]
                        };
                        s += av * bv;
                    }
                    c[z * m * n + i * n + j] = s;
                }
            }
        }
        c
    }
}

/// `op(a) op(b) (+ bias)` as an op: inputs a, b and optionally bias; each operand's product
/// is taken only where its gradient is wanted (a network's input or a frozen weight costs none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Matmul {
    /// Use a's transpose (its last two axes swapped).
    pub transpose_a: bool,
    /// Use b's transpose.
    pub transpose_b: bool,
}

impl Matmul {
    /// a @ b.
    pub fn new() -> Matmul {
        Matmul::default()
    }
    /// Use a's transpose.
    pub fn transpose_a(mut self, yes: bool) -> Matmul {
        self.transpose_a = yes;
        self
    }
    /// Use b's transpose (x @ w^T for PyTorch's Linear weights).
    pub fn transpose_b(mut self, yes: bool) -> Matmul {
        self.transpose_b = yes;
        self
    }
}

impl crate::op::Op for Matmul {
    fn name(&self) -> &str {
        "matmul"
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<crate::op::Forward> {
        let (ta, tb) = (self.transpose_a, self.transpose_b);
        Ok(matmul(dev, inputs[0], inputs[1], ta, tb, inputs.get(2).copied())?.into())
    }
    fn backward(
        &self,
        dev: &Device,
        ctx: &crate::op::Ctx,
        dy: &Array,
    ) -> Result<Vec<Option<Array>>> {
        let (a, b) = (ctx.inputs[0], ctx.inputs[1]);
        let need = [ctx.needs(0), ctx.needs(1), ctx.needs(2)];
        let (ta, tb) = (self.transpose_a, self.transpose_b);
        let (da, db, dbias) = matmul_backward(dev, a, b, ta, tb, dy, need)?;
        let mut grads = vec![da, db];
        if ctx.inputs.len() > 2 {
            grads.push(dbias);
        }
        Ok(grads)
    }
}
