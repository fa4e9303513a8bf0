//! Tensor methods: each applies one of kiln-ops' ops through [`Tensor::apply`] (or composes a
//! few), with PyTorch's names.

use crate::mode::is_autocast_f16;
use crate::{Result, Tensor};
use kiln_ops::attention::{AttentionMasked, AttentionSpec, AttnCall};
use kiln_ops::conv::{Conv2d, Conv2dSpec};
use kiln_ops::dropout::Dropout;
use kiln_ops::elementwise::{self, Binary, Unary};
use kiln_ops::half::Cast;
use kiln_ops::layout::{Concat, Permute, Reshape};
use kiln_ops::matmul::Matmul;
use kiln_ops::norm::{Embedding, LayerNorm};
use kiln_ops::pool::{AvgPool2d, MaxPool2d, Pool2dSpec};
use kiln_ops::reduce::{self, Reduce, ReduceAxis};
use kiln_ops::rnn::{GruCell, LstmCell};
use kiln_ops::softmax::{CrossEntropyLoss, Softmax};
use kiln_ops::{Buffer, DType, OpError};

impl Tensor {
    // ---- element-wise ----

    /// self + other (broadcasting).
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        Tensor::apply(Binary::Add, &[self, other])
    }
    /// self - other (broadcasting).
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        Tensor::apply(Binary::Sub, &[self, other])
    }
    /// self * other (broadcasting).
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        Tensor::apply(Binary::Mul, &[self, other])
    }
    /// self / other (broadcasting).
    pub fn div(&self, other: &Tensor) -> Result<Tensor> {
        Tensor::apply(Binary::Div, &[self, other])
    }
    /// Element-wise comparison, or max/min, without gradient (masks): 1.0 where true.
    pub fn compare(&self, other: &Tensor, op: Binary) -> Result<Tensor> {
        let out = elementwise::binary(self.device(), self.array(), other.array(), op)?;
        Ok(Tensor::from_array(self.device(), out))
    }

    /// y = f(x) for a unary function.
    pub fn unary(&self, op: Unary) -> Result<Tensor> {
        Tensor::apply(op, &[self])
    }
    /// max(x, 0).
    pub fn relu(&self) -> Result<Tensor> {
        self.unary(Unary::Relu)
    }
    /// Logistic sigmoid.
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary(Unary::Sigmoid)
    }
    /// tanh.
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary(Unary::Tanh)
    }
    /// GELU (erf form).
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary(Unary::Gelu)
    }
    /// GELU's tanh approximation (GPT-2's `gelu_new`, PyTorch's `gelu(approximate="tanh")`).
    pub fn gelu_tanh(&self) -> Result<Tensor> {
        self.unary(Unary::GeluTanh)
    }
    /// e^x.
    pub fn exp(&self) -> Result<Tensor> {
        self.unary(Unary::Exp)
    }
    /// ln x.
    pub fn log(&self) -> Result<Tensor> {
        self.unary(Unary::Log)
    }
    /// -x.
    pub fn neg(&self) -> Result<Tensor> {
        self.unary(Unary::Neg)
    }
    /// x^2.
    pub fn square(&self) -> Result<Tensor> {
        self.unary(Unary::Square)
    }
    /// alpha * x + beta.
    pub fn affine(&self, alpha: f32, beta: f32) -> Result<Tensor> {
        self.unary(Unary::Affine(alpha, beta))
    }
    /// The same values as `dtype` (f32 or f16). Gradients pass through unchanged, in f32.
    pub fn cast(&self, dtype: DType) -> Result<Tensor> {
        if self.dtype() == dtype {
            return Ok(self.clone());
        }
        Tensor::apply(Cast(dtype), &[self])
    }

    // ---- shape ----

    /// The same data under another shape (free).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        Tensor::apply(Reshape(shape.to_vec()), &[self])
    }
    /// Flattens every dimension after the first: [N, ...] -> [N, rest].
    pub fn flatten(&self) -> Result<Tensor> {
        let n = *self.shape().first().unwrap_or(&1);
        self.reshape(&[n, self.numel() / n.max(1)])
    }
    /// Reorders dimensions: `out.shape[i] = self.shape[perm[i]]`.
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        Tensor::apply(Permute(perm.to_vec()), &[self])
    }
    /// Swaps two dimensions.
    pub fn transpose(&self, a: usize, b: usize) -> Result<Tensor> {
        let mut perm: Vec<usize> = (0..self.shape().len()).collect();
        if a >= perm.len() || b >= perm.len() {
            return Err(OpError::Invalid {
                op: "transpose",
                message: format!("axes ({a}, {b}) for shape {:?}", self.shape()),
            });
        }
        perm.swap(a, b);
        self.permute(&perm)
    }
    /// Joins tensors along an axis.
    pub fn concat(parts: &[&Tensor], axis: usize) -> Result<Tensor> {
        Tensor::apply(Concat { axis }, parts)
    }

    // ---- reductions ----

    /// Sum along an axis.
    pub fn sum(&self, axis: usize, keepdim: bool) -> Result<Tensor> {
        self.reduce(Reduce::Sum, axis, keepdim)
    }
    /// Mean along an axis.
    pub fn mean(&self, axis: usize, keepdim: bool) -> Result<Tensor> {
        self.reduce(Reduce::Mean, axis, keepdim)
    }
    fn reduce(&self, op: Reduce, axis: usize, keepdim: bool) -> Result<Tensor> {
        Tensor::apply(ReduceAxis { op, axis, keepdim }, &[self])
    }
    /// Sum of all elements, shape `[1]`.
    pub fn sum_all(&self) -> Result<Tensor> {
        self.reshape(&[1, self.numel()])?.sum(1, false)
    }
    /// Mean of all elements, shape `[1]`.
    pub fn mean_all(&self) -> Result<Tensor> {
        self.reshape(&[1, self.numel()])?.mean(1, false)
    }
    /// Index of the maximum along an axis (i32, no gradient).
    pub fn argmax(&self, axis: usize) -> Result<Tensor> {
        let (_, idx) = reduce::argmax(self.device(), self.array(), axis)?;
        Ok(Tensor::from_array(self.device(), idx))
    }

    // ---- linear algebra and layers ----

    /// `op(self) op(other) (+ bias)`, batched, with the transposes `spec` names (see
    /// [`kiln_ops::matmul::matmul`]). Under [`crate::autocast_f16`], f32 operands are cast to
    /// f16 first.
    pub fn matmul_with(
        &self,
        other: &Tensor,
        spec: Matmul,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        if is_autocast_f16() && self.dtype() == DType::F32 && other.dtype() == DType::F32 {
            let (a, b) = (self.cast(DType::F16)?, other.cast(DType::F16)?);
            return a.matmul_with(&b, spec, bias);
        }
        match bias {
            Some(bias) => Tensor::apply(spec, &[self, other, bias]),
            None => Tensor::apply(spec, &[self, other]),
        }
    }
    /// self @ other.
    pub fn matmul(&self, other: &Tensor) -> Result<Tensor> {
        self.matmul_with(other, Matmul::new(), None)
    }
    /// x @ w^T + b with PyTorch's Linear layout (w: [out, in]).
    pub fn linear(&self, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        self.matmul_with(w, Matmul::new().transpose_b(true), b)
    }

    /// 2-D convolution (NCHW) with PyTorch's weight layout [Co, Ci, KH, KW].
    pub fn conv2d(&self, w: &Tensor, b: Option<&Tensor>, spec: Conv2dSpec) -> Result<Tensor> {
        match b {
            Some(b) => Tensor::apply(Conv2d(spec), &[self, w, b]),
            None => Tensor::apply(Conv2d(spec), &[self, w]),
        }
    }
    /// Max pooling.
    pub fn max_pool2d(&self, spec: Pool2dSpec) -> Result<Tensor> {
        Tensor::apply(MaxPool2d(spec), &[self])
    }
    /// Average pooling.
    pub fn avg_pool2d(&self, spec: Pool2dSpec) -> Result<Tensor> {
        Tensor::apply(AvgPool2d(spec), &[self])
    }

    /// Dropout with drop probability `p`, drawing its mask from the generator state in `rng`
    /// (see [`kiln_ops::dropout::DropoutRng`]). The backward pass reuses the same mask.
    pub fn dropout(&self, p: f32, rng: &Buffer) -> Result<Tensor> {
        let op = Dropout {
            p,
            rng: rng.clone(),
        };
        Tensor::apply(op, &[self])
    }

    /// Layer normalisation over the last axis with affine parameters `[cols]`.
    pub fn layer_norm(&self, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
        Tensor::apply(LayerNorm { eps }, &[self, gamma, beta])
    }

    /// Rows of this table `[vocab, dim]` picked by i32 `ids` (shape ids + `[dim]`).
    pub fn embedding(&self, ids: &Tensor) -> Result<Tensor> {
        Tensor::apply(Embedding, &[self, ids])
    }

    /// One fused LSTM step (PyTorch's gates i, f, g, o): self is the input term of the gate
    /// pre-activations [B, 4H], `hg` the recurrent term, `c_prev` the cell state [B, H].
    /// Returns [B, 2H]: the new hidden state and cell state side by side (slice them apart).
    pub fn lstm_cell(&self, hg: &Tensor, c_prev: &Tensor) -> Result<Tensor> {
        Tensor::apply(LstmCell, &[self, hg, c_prev])
    }

    /// One fused GRU step (PyTorch's gates r, z, n): self is the input term of the gate
    /// pre-activations [B, 3H], `hg` the recurrent term with its bias, `h_prev` the hidden state
    /// [B, H]. Returns the new hidden state [B, H].
    pub fn gru_cell(&self, hg: &Tensor, h_prev: &Tensor) -> Result<Tensor> {
        Tensor::apply(GruCell, &[self, hg, h_prev])
    }

    /// Fused scaled-dot-product attention of self (Q `[B, H, Tq, D]`) over `k`, `v`
    /// (`[B, H, Tk, D]`) with the spec's optional causal mask and a key-padding mask (i32
    /// `[B, Tk]`, nonzero = ignore). Under [`crate::autocast_f16`], f32 operands are cast to f16
    /// where the device runs attention on cooperative matrices (elsewhere f16 would only be
    /// widened back).
    pub fn attention(
        &self,
        k: &Tensor,
        v: &Tensor,
        key_padding_mask: Option<&Tensor>,
        spec: AttentionSpec,
    ) -> Result<Tensor> {
        self.attention_masked(k, v, key_padding_mask, None, spec)
    }

    /// [`Tensor::attention`] with an additive float mask `[Tq, Tk]` (every batch item and head)
    /// or `[B, H, Tq, Tk]` added to the scaled scores (PyTorch's float `attn_mask`; -inf masks).
    /// The masks take no gradient.
    pub fn attention_masked(
        &self,
        k: &Tensor,
        v: &Tensor,
        key_padding_mask: Option<&Tensor>,
        attn_mask: Option<&Tensor>,
        spec: AttentionSpec,
    ) -> Result<Tensor> {
        if is_autocast_f16() && [self, k, v].iter().all(|t| t.dtype() == DType::F32) {
            if let [b, h, tq, d] = *self.shape() {
                let tk = k.shape().get(2).copied().unwrap_or(0);
                let call = AttnCall::new(b, h, tq, tk, d)
                    .with_f16(true)
                    .with_head_masks(attn_mask.is_some_and(|m| m.shape().len() == 4));
                let coop = kiln_ops::attention::plan(self.device(), &call)
                    .is_ok_and(|p| p.variant.starts_with("flash_coop"));
                if coop {
                    let (q, k, v) = (
                        self.cast(DType::F16)?,
                        k.cast(DType::F16)?,
                        v.cast(DType::F16)?,
                    );
                    return q.attention_masked(&k, &v, key_padding_mask, attn_mask, spec);
                }
            }
        }
        let op = AttentionMasked {
            spec,
            key_padding: key_padding_mask.is_some(),
        };
        let mut inputs = vec![self, k, v];
        inputs.extend(key_padding_mask);
        inputs.extend(attn_mask);
        Tensor::apply(op, &inputs)
    }

    /// softmax along the last axis.
    pub fn softmax(&self) -> Result<Tensor> {
        Tensor::apply(Softmax { log: false }, &[self])
    }
    /// log_softmax along the last axis.
    pub fn log_softmax(&self) -> Result<Tensor> {
        Tensor::apply(Softmax { log: true }, &[self])
    }

    /// Mean cross-entropy of these logits `[N, C]` against i32 labels `[N]` (shape `[1]`); rows
    /// labelled `ignore_index` do not count.
    pub fn cross_entropy(&self, labels: &Tensor, ignore_index: Option<i32>) -> Result<Tensor> {
        Tensor::apply(CrossEntropyLoss { ignore_index }, &[self, labels])
    }

    /// Mean squared error against a target of the same shape (shape `[1]`).
    pub fn mse_loss(&self, target: &Tensor) -> Result<Tensor> {
        self.sub(target)?.square()?.mean_all()
    }
}
