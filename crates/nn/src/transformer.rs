//! Multi-head attention and Transformer layers with PyTorch's parameter names, layouts and
//! initialisation: `MultiheadAttention`'s packed `in_proj_weight` `[3E, E]` (xavier-uniform) and
//! `in_proj_bias` (zeros), `out_proj` (Linear's default weight, zero bias);
//! `TransformerEncoderLayer`'s and `TransformerDecoderLayer`'s `self_attn`, `multihead_attn`,
//! `linear1`, `linear2`, `norm1`.. names, so a PyTorch `state_dict` saved as safetensors loads by
//! name.
//!
//! Attention takes PyTorch's masks: a key-padding mask `[B, Tk]` and an attention mask `[Tq, Tk]`
//! (or `[B*H, Tq, Tk]`), each either boolean (i32, nonzero = not allowed, as PyTorch's `True`) or
//! additive (f32, added to the scaled scores), and a causal flag. The fused kernel runs every
//! attention mask (additive or boolean, shared or per head) with a boolean key-padding mask;
//! the scores are formed, masked and softmaxed explicitly only where the weights are asked for,
//! dropout applies to the probabilities, or the key-padding mask is additive. (A row whose every
//! key is masked by the key-padding mask gives zeros in the fused kernel and a uniform average in
//! the explicit path, where PyTorch gives NaN.)

use crate::dropout::{Dropout, DropoutConfig};
use crate::error::{NnError, Result};
use crate::init::{with_default_rng, Init, Rng};
use crate::linear::{Linear, LinearConfig};
use crate::module::{indexed, indexed_mut, Module};
use crate::norm::{LayerNorm, LayerNormConfig};
use kiln_graph::{Device, Tensor};
use kiln_ops::attention::AttentionSpec;
use kiln_ops::mask::{additive_mask, MASKED};
use kiln_ops::matmul::Matmul;
use kiln_ops::DType;

/// Masks and outputs of one attention call (PyTorch's `forward` keywords), built with its
/// methods:
///
/// ```no_run
/// # fn main() -> Result<(), kiln_nn::NnError> {
/// use kiln_nn::transformer::{AttentionOptions, MultiHeadAttentionConfig};
/// use kiln_nn::Tensor;
/// let dev = kiln_nn::Device::shared()?;
/// let mha = MultiHeadAttentionConfig::new(16, 4).init(&dev)?;
/// let x = Tensor::zeros(&dev, &[2, 5, 16])?;
/// // Batch 1 ignores its last key.
/// let pad = Tensor::from_i32(&dev, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 1], &[2, 5])?;
/// let opts = AttentionOptions::new().key_padding_mask(&pad).need_weights(true);
/// let (y, weights) = mha.forward_with(&x, &x, &x, &opts)?;
/// assert_eq!(weights.unwrap().shape(), [2, 5, 5]); // averaged over heads
/// # Ok(()) }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct AttentionOptions<'a> {
    /// `[Tq, Tk]` or `[B*H, Tq, Tk]`: i32 nonzero = not allowed, or f32 added to the scores.
    pub attn_mask: Option<&'a Tensor>,
    /// `[B, Tk]`: i32 nonzero = ignore that key, or f32 added to the scores.
    pub key_padding_mask: Option<&'a Tensor>,
    /// Masks key j for query i where j > i. (PyTorch's `is_causal` is only a hint that comes with
    /// an `attn_mask`; here the flag alone applies the mask.)
    pub is_causal: bool,
    /// Also return the attention probabilities (the explicit path; costs `[B, H, Tq, Tk]`).
    pub need_weights: bool,
    /// Weights averaged over heads (`[B, Tq, Tk]`), else per head (`[B, H, Tq, Tk]`).
    pub average_attn_weights: bool,
    /// Score scale; None for 1/sqrt(head_dim).
    pub scale: Option<f32>,
}

impl Default for AttentionOptions<'_> {
    fn default() -> Self {
        AttentionOptions {
            attn_mask: None,
            key_padding_mask: None,
            is_causal: false,
            need_weights: false,
            average_attn_weights: true,
            scale: None,
        }
    }
}

impl<'a> AttentionOptions<'a> {
    /// No masks, no weights.
    pub fn new() -> Self {
        Self::default()
    }
    /// Causal self-attention.
    pub fn causal() -> Self {
        Self::default().is_causal(true)
    }
    /// An attention mask `[Tq, Tk]` (or `[B*H, Tq, Tk]`).
    pub fn attn_mask(mut self, mask: &'a Tensor) -> Self {
        self.attn_mask = Some(mask);
        self
    }
    /// A key-padding mask `[B, Tk]`.
    pub fn key_padding_mask(mut self, mask: &'a Tensor) -> Self {
        self.key_padding_mask = Some(mask);
        self
    }
    /// The causal mask.
    pub fn is_causal(mut self, yes: bool) -> Self {
        self.is_causal = yes;
        self
    }
    /// Return the attention weights.
    pub fn need_weights(mut self, yes: bool) -> Self {
        self.need_weights = yes;
        self
    }
    /// Average the weights over heads (the default) or keep them per head.
    pub fn average_attn_weights(mut self, yes: bool) -> Self {
        self.average_attn_weights = yes;
        self
    }
    /// Another score scale than 1/sqrt(head_dim).
    pub fn scale(mut self, scale: f32) -> Self {
        self.scale = Some(scale);
        self
    }
}

/// A [`MultiHeadAttention`]'s size and options (PyTorch's `nn.MultiheadAttention` defaults: no
/// dropout, biases).
#[derive(Clone, Debug)]
pub struct MultiHeadAttentionConfig {
    /// Model width E.
    pub embed_dim: usize,
    /// Heads; must divide E.
    pub num_heads: usize,
    /// Dropout on the attention probabilities while training.
    pub dropout: f32,
    /// Biases on the input and output projections.
    pub bias: bool,
}

impl MultiHeadAttentionConfig {
    /// `num_heads` heads over width `embed_dim`.
    pub fn new(embed_dim: usize, num_heads: usize) -> Self {
        MultiHeadAttentionConfig {
            embed_dim,
            num_heads,
            dropout: 0.0,
            bias: true,
        }
    }
    /// Dropout on the attention probabilities.
    pub fn with_dropout(mut self, p: f32) -> Self {
        self.dropout = p;
        self
    }
    /// Whether the projections have biases.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
    /// The module, drawn from this thread's default generator.
    pub fn init(&self, dev: &Device) -> Result<MultiHeadAttention> {
        with_default_rng(|rng| self.init_with(dev, rng))
    }
    /// The module, drawn from `rng`: `in_proj_weight` xavier-uniform, `out_proj.weight` Linear's
    /// default, biases zero, as PyTorch's `_reset_parameters`.
    pub fn init_with(&self, dev: &Device, rng: &mut Rng) -> Result<MultiHeadAttention> {
        let (e, h) = (self.embed_dim, self.num_heads);
        if h == 0 || e == 0 || !e.is_multiple_of(h) {
            return Err(NnError::Config(format!(
                "embed_dim {e} is not divisible by num_heads {h}"
            )));
        }
        let w = [3 * e, e];
        let in_proj_weight = Init::XavierUniform { gain: 1.0 }.param(dev, rng, &w, &w)?;
        let in_proj_bias = if self.bias {
            Some(Init::Constant(0.0).param(dev, rng, &[3 * e], &w)?)
        } else {
            None
        };
        let out_proj = LinearConfig::new(e, e)
            .with_bias(self.bias)
            .with_bias_init(Init::Constant(0.0))
            .init_with(dev, rng)?;
        Ok(MultiHeadAttention {
            in_proj_weight,
            in_proj_bias,
            out_proj,
            num_heads: h,
            dropout: DropoutConfig::new(self.dropout)
                .with_seed(rng.next_u64())
                .init(dev)?,
            dropout_p: self.dropout,
        })
    }
}

/// Multi-head attention as PyTorch's `nn.MultiheadAttention` (batch first): `in_proj_weight`
/// `[3E, E]` holds W_q, W_k, W_v stacked, `in_proj_bias` `[3E]` their biases, `out_proj` the
/// output projection.
pub struct MultiHeadAttention {
    /// `[3E, E]`: W_q; W_k; W_v, each in Linear's `[out, in]` layout.
    pub in_proj_weight: Tensor,
    /// `[3E]`: b_q; b_k; b_v.
    pub in_proj_bias: Option<Tensor>,
    /// Output projection `[E, E]`.
    pub out_proj: Linear,
    num_heads: usize,
    dropout: Dropout,
    dropout_p: f32,
}

impl MultiHeadAttention {
    /// Model width E.
    pub fn embed_dim(&self) -> usize {
        self.in_proj_weight.shape()[1]
    }
    /// Heads.
    pub fn num_heads(&self) -> usize {
        self.num_heads
    }

    /// Rows `part * E ..` of the packed projection (0 query, 1 key, 2 value; `parts` of them).
    fn proj_part(&self, part: usize, parts: usize) -> Result<(Tensor, Option<Tensor>)> {
        let e = self.embed_dim();
        if parts == 3 {
            return Ok((self.in_proj_weight.clone(), self.in_proj_bias.clone()));
        }
        let w = self.in_proj_weight.slice(0, part * e, parts * e)?;
        let b = match &self.in_proj_bias {
            Some(b) => Some(b.slice(0, part * e, parts * e)?),
            None => None,
        };
        Ok((w, b))
    }

    /// x `[B, T, E]` through `parts` consecutive projections starting at `first` (one matmul),
    /// split into `parts` tensors of `[B, H, T, D]`.
    fn project(&self, x: &Tensor, first: usize, parts: usize) -> Result<Vec<Tensor>> {
        let (b, t, e) = dims3("MultiheadAttention", x, self.embed_dim())?;
        let (h, d) = (self.num_heads, e / self.num_heads);
        let (w, bias) = self.proj_part(first, parts)?;
        let y = x.reshape(&[b * t, e])?.linear(&w, bias.as_ref())?;
        if parts == 1 {
            return Ok(vec![y.reshape(&[b, t, h, d])?.permute(&[0, 2, 1, 3])?]);
        }
        // [B, T, parts, H, D] -> [parts, B, H, T, D]: each part a contiguous slice.
        let y = y.reshape(&[b, t, parts, h, d])?.permute(&[2, 0, 3, 1, 4])?;
        (0..parts)
            .map(|i| Ok(y.slice(0, i, 1)?.reshape(&[b, h, t, d])?))
            .collect()
    }

    /// `query` `[B, Tq, E]` attends to `key`, `value` `[B, Tk, E]` under `opts`' masks; returns
    /// `[B, Tq, E]` and, where `opts.need_weights`, the attention probabilities (`[B, Tq, Tk]`
    /// averaged over heads, or `[B, H, Tq, Tk]`). Self-attention (the same tensor three times)
    /// projects with one matmul.
    pub fn forward_with(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        opts: &AttentionOptions,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let e = self.embed_dim();
        let (b, tq, _) = dims3("MultiheadAttention query", query, e)?;
        let (bk, tk, _) = dims3("MultiheadAttention key", key, e)?;
        if value.shape() != key.shape() || bk != b {
            return Err(NnError::Config(format!(
                "MultiheadAttention: key {:?} and value {:?} must match, with the query's batch {b}",
                key.shape(),
                value.shape()
            )));
        }
        let (q, k, v) = if query.same(key) && key.same(value) {
            let mut p = self.project(query, 0, 3)?.into_iter();
            (p.next().unwrap(), p.next().unwrap(), p.next().unwrap())
        } else if key.same(value) {
            let q = self.project(query, 0, 1)?.remove(0);
            let mut kv = self.project(key, 1, 2)?.into_iter();
            (q, kv.next().unwrap(), kv.next().unwrap())
        } else {
            (
                self.project(query, 0, 1)?.remove(0),
                self.project(key, 1, 1)?.remove(0),
                self.project(value, 2, 1)?.remove(0),
            )
        };
        let (o, weights) = scaled_dot_product_attention(
            &q,
            &k,
            &v,
            opts,
            self.num_heads,
            (self.dropout.is_training() && self.dropout_p > 0.0).then_some(&self.dropout),
        )?;
        let o = o.permute(&[0, 2, 1, 3])?.reshape(&[b, tq, e])?;
        let out = self.out_proj.forward(&o)?;
        let weights = match weights {
            Some(w) if opts.average_attn_weights => Some(w.mean(1, false)?),
            Some(w) => Some(w),
            None => None,
        };
        debug_assert!(weights
            .as_ref()
            .is_none_or(|w| w.shape().last() == Some(&tk)));
        Ok((out, weights))
    }
}

impl Module for MultiHeadAttention {
    /// Self-attention of x `[B, T, E]` without masks.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_with(x, x, x, &AttentionOptions::new())?.0)
    }
    fn own_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = vec![("in_proj_weight".to_string(), self.in_proj_weight.clone())];
        v.extend(
            self.in_proj_bias
                .iter()
                .map(|b| ("in_proj_bias".to_string(), b.clone())),
        );
        v
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("out_proj".into(), &self.out_proj),
            ("dropout".into(), &self.dropout),
        ]
    }
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        vec![
            ("out_proj".into(), &mut self.out_proj),
            ("dropout".into(), &mut self.dropout),
        ]
    }
}

fn dims3(what: &str, x: &Tensor, e: usize) -> Result<(usize, usize, usize)> {
    match x.shape() {
        &[b, t, xe] if xe == e => Ok((b, t, xe)),
        s => Err(NnError::Config(format!(
            "{what}: expected [batch, seq, {e}], got {s:?}"
        ))),
    }
}

/// An f32 mask to add to scores: f32 masks as they are, i32 ones as [`MASKED`] where nonzero.
fn additive(m: &Tensor) -> Result<Tensor> {
    match m.dtype() {
        DType::F32 => Ok(m.detach()),
        DType::I32 => Ok(Tensor::from_array(
            m.device(),
            additive_mask(m.device(), m.array(), MASKED)?,
        )),
        other => Err(NnError::Config(format!(
            "attention masks are i32 (nonzero = not allowed) or f32 (added), got {other}"
        ))),
    }
}

/// Scaled dot-product attention of q `[B, H, Tq, D]` over k, v `[B, H, Tk, D]` under `opts`'
/// masks (`heads` = H, for `[B*H, Tq, Tk]` masks), with `dropout` on the probabilities when
/// given; returns `[B, H, Tq, D]` and, where `opts.need_weights`, the probabilities `[B, H, Tq,
/// Tk]`. The fused kernel runs where nothing asks for the explicit scores.
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: &AttentionOptions,
    heads: usize,
    dropout: Option<&Dropout>,
) -> Result<(Tensor, Option<Tensor>)> {
    let (b, tq, d) = (q.shape()[0], q.shape()[2], q.shape()[3]);
    let tk = k.shape()[2];
    let kpm_bool = opts
        .key_padding_mask
        .is_none_or(|m| m.dtype() == DType::I32);
    if kpm_bool && !opts.need_weights && dropout.is_none() {
        if let Some(m) = opts.key_padding_mask {
            check_mask_shape("key_padding_mask", m, &[b, tk])?;
        }
        let spec = AttentionSpec {
            causal: opts.is_causal,
            scale: opts.scale,
        };
        let mask = opts
            .attn_mask
            .map(|m| attn_mask_of(m, b, heads, tq, tk))
            .transpose()?;
        return Ok((
            q.attention_masked(k, v, opts.key_padding_mask, mask.as_ref(), spec)?,
            None,
        ));
    }
    let scale = opts.scale.unwrap_or(1.0 / (d as f32).sqrt());
    let mut s = q
        .matmul_with(k, Matmul::new().transpose_b(true), None)?
        .affine(scale, 0.0)?;
    if let Some(m) = opts.attn_mask {
        s = s.add(&attn_mask_of(m, b, heads, tq, tk)?)?;
    }
    if let Some(m) = opts.key_padding_mask {
        check_mask_shape("key_padding_mask", m, &[b, tk])?;
        s = s.add(&additive(m)?.reshape(&[b, 1, 1, tk])?)?;
    }
    if opts.is_causal {
        let mask: Vec<f32> = (0..tq * tk)
            .map(|i| if i % tk > i / tk { MASKED } else { 0.0 })
            .collect();
        s = s.add(&Tensor::from_f32(q.device(), &mask, &[tq, tk])?)?;
    }
    let p = s.softmax()?;
    let pd = match dropout {
        Some(drop) => drop.forward(&p)?,
        None => p.clone(),
    };
    let o = pd.matmul(v)?;
    Ok((o, opts.need_weights.then_some(p)))
}

/// An attention mask `[Tq, Tk]` or `[B*H, Tq, Tk]` in additive form, `[Tq, Tk]` or
/// `[B, H, Tq, Tk]`.
fn attn_mask_of(m: &Tensor, b: usize, heads: usize, tq: usize, tk: usize) -> Result<Tensor> {
    match m.shape() {
        [a, c] if *a == tq && *c == tk => additive(m),
        [bh, a, c] if *bh == b * heads && *a == tq && *c == tk => {
            Ok(additive(m)?.reshape(&[b, heads, tq, tk])?)
        }
        s => Err(NnError::Config(format!(
            "attn_mask: expected [{tq}, {tk}] or [{}, {tq}, {tk}], got {s:?}",
            b * heads
        ))),
    }
}

fn check_mask_shape(what: &str, m: &Tensor, want: &[usize]) -> Result<()> {
    if m.shape() != want {
        return Err(NnError::Config(format!(
            "{what}: expected {want:?}, got {:?}",
            m.shape()
        )));
    }
    Ok(())
}

/// Feed-forward activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// max(x, 0)
    Relu,
    /// GELU (erf form)
    Gelu,
    /// GELU (tanh form, GPT-2's `gelu_new`)
    GeluTanh,
}

impl Activation {
    /// Applies the activation.
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Relu => x.relu()?,
            Activation::Gelu => x.gelu()?,
            Activation::GeluTanh => x.gelu_tanh()?,
        })
    }
}

/// A Transformer encoder or decoder layer's options, PyTorch's constructor arguments and
/// defaults: feed-forward width 2048, dropout 0.1 (also on the attention probabilities), ReLU,
/// LayerNorm eps 1e-5, post-norm, biases.
///
/// ```no_run
/// # fn main() -> Result<(), kiln_nn::NnError> {
/// use kiln_nn::transformer::{Activation, TransformerLayerConfig};
/// let dev = kiln_nn::Device::shared()?;
/// let cfg = TransformerLayerConfig::new(64, 4)
///     .with_dim_feedforward(256)
///     .with_activation(Activation::Gelu)
///     .with_norm_first(true);
/// let encoder_layer = cfg.init_encoder(&dev)?;
/// let decoder_layer = cfg.init_decoder(&dev)?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct TransformerLayerConfig {
    /// Model width.
    pub d_model: usize,
    /// Attention heads.
    pub nhead: usize,
    /// Feed-forward width.
    pub dim_feedforward: usize,
    /// Dropout after attention and feed-forward blocks and inside the feed-forward block.
    pub dropout: f32,
    /// Dropout on the attention probabilities (PyTorch uses `dropout`).
    pub attention_dropout: f32,
    /// Feed-forward activation.
    pub activation: Activation,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f32,
    /// LayerNorm before each block (pre-norm) instead of after the residual (post-norm).
    pub norm_first: bool,
    /// Biases in the linear layers and LayerNorms' shifts.
    pub bias: bool,
}

impl TransformerLayerConfig {
    /// Width `d_model` with `nhead` heads, PyTorch's defaults for the rest.
    pub fn new(d_model: usize, nhead: usize) -> Self {
        TransformerLayerConfig {
            d_model,
            nhead,
            dim_feedforward: 2048,
            dropout: 0.1,
            attention_dropout: 0.1,
            activation: Activation::Relu,
            layer_norm_eps: 1e-5,
            norm_first: false,
            bias: true,
        }
    }
    /// Feed-forward width.
    pub fn with_dim_feedforward(mut self, n: usize) -> Self {
        self.dim_feedforward = n;
        self
    }
    /// Dropout everywhere, the attention probabilities included (PyTorch's `dropout`).
    pub fn with_dropout(mut self, p: f32) -> Self {
        self.dropout = p;
        self.attention_dropout = p;
        self
    }
    /// Dropout on the attention probabilities alone (0 keeps the fused kernel while training).
    pub fn with_attention_dropout(mut self, p: f32) -> Self {
        self.attention_dropout = p;
        self
    }
    /// Feed-forward activation.
    pub fn with_activation(mut self, a: Activation) -> Self {
        self.activation = a;
        self
    }
    /// LayerNorm epsilon.
    pub fn with_layer_norm_eps(mut self, eps: f32) -> Self {
        self.layer_norm_eps = eps;
        self
    }
    /// Pre-norm (true) or post-norm (false, PyTorch's default).
    pub fn with_norm_first(mut self, yes: bool) -> Self {
        self.norm_first = yes;
        self
    }
    /// Biases in the linear layers.
    pub fn with_bias(mut self, bias: bool) -> Self {
        self.bias = bias;
        self
    }
    /// An encoder layer drawn from this thread's default generator.
    pub fn init_encoder(&self, dev: &Device) -> Result<TransformerEncoderLayer> {
        with_default_rng(|rng| TransformerEncoderLayer::new(dev, rng, self))
    }
    /// An encoder layer drawn from `rng`.
    pub fn init_encoder_with(
        &self,
        dev: &Device,
        rng: &mut Rng,
    ) -> Result<TransformerEncoderLayer> {
        TransformerEncoderLayer::new(dev, rng, self)
    }
    /// A decoder layer drawn from this thread's default generator.
    pub fn init_decoder(&self, dev: &Device) -> Result<TransformerDecoderLayer> {
        with_default_rng(|rng| TransformerDecoderLayer::new(dev, rng, self))
    }
    /// A decoder layer drawn from `rng`.
    pub fn init_decoder_with(
        &self,
        dev: &Device,
        rng: &mut Rng,
    ) -> Result<TransformerDecoderLayer> {
        TransformerDecoderLayer::new(dev, rng, self)
    }

    fn attention(&self, dev: &Device, rng: &mut Rng) -> Result<MultiHeadAttention> {
        MultiHeadAttentionConfig::new(self.d_model, self.nhead)
            .with_dropout(self.attention_dropout)
            .with_bias(self.bias)
            .init_with(dev, rng)
    }
    fn norm(&self, dev: &Device) -> Result<LayerNorm> {
        LayerNormConfig::new(self.d_model)
            .with_eps(self.layer_norm_eps)
            .init(dev)
    }
    fn dropout(&self, dev: &Device, rng: &mut Rng) -> Result<Dropout> {
        DropoutConfig::new(self.dropout)
            .with_seed(rng.next_u64())
            .init(dev)
    }
    fn feed_forward(&self, dev: &Device, rng: &mut Rng) -> Result<FeedForward> {
        Ok(FeedForward {
            linear1: LinearConfig::new(self.d_model, self.dim_feedforward)
                .with_bias(self.bias)
                .init_with(dev, rng)?,
            linear2: LinearConfig::new(self.dim_feedforward, self.d_model)
                .with_bias(self.bias)
                .init_with(dev, rng)?,
            dropout: self.dropout(dev, rng)?,
            activation: self.activation,
        })
    }
}

struct FeedForward {
    linear1: Linear,
    linear2: Linear,
    dropout: Dropout,
    activation: Activation,
}

impl FeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.activation.apply(&self.linear1.forward(x)?)?;
        self.linear2.forward(&self.dropout.forward(&h)?)
    }
}

/// Self-attention then feed-forward, each with a residual connection and LayerNorm (PyTorch's
/// `nn.TransformerEncoderLayer`, batch first).
pub struct TransformerEncoderLayer {
    /// Self-attention.
    pub self_attn: MultiHeadAttention,
    ff: FeedForward,
    norm1: LayerNorm,
    norm2: LayerNorm,
    dropout1: Dropout,
    dropout2: Dropout,
    norm_first: bool,
    /// Apply a causal mask in self-attention (decoder-only language models).
    pub causal: bool,
}

impl TransformerEncoderLayer {
    /// A layer with the given options, drawn from `rng`.
    pub fn new(
        dev: &Device,
        rng: &mut Rng,
        c: &TransformerLayerConfig,
    ) -> Result<TransformerEncoderLayer> {
        Ok(TransformerEncoderLayer {
            self_attn: c.attention(dev, rng)?,
            ff: c.feed_forward(dev, rng)?,
            norm1: c.norm(dev)?,
            norm2: c.norm(dev)?,
            dropout1: c.dropout(dev, rng)?,
            dropout2: c.dropout(dev, rng)?,
            norm_first: c.norm_first,
            causal: false,
        })
    }

    /// x: `[B, T, E]` under `opts`' masks (`src_mask`, `src_key_padding_mask`, `is_causal`); the
    /// layer's own `causal` flag adds the causal mask.
    pub fn forward_with(&self, x: &Tensor, opts: &AttentionOptions) -> Result<Tensor> {
        let opts = AttentionOptions {
            is_causal: opts.is_causal || self.causal,
            need_weights: false,
            ..*opts
        };
        let sa = |h: &Tensor| -> Result<Tensor> {
            self.dropout1
                .forward(&self.self_attn.forward_with(h, h, h, &opts)?.0)
        };
        let ff = |h: &Tensor| -> Result<Tensor> { self.dropout2.forward(&self.ff.forward(h)?) };
        if self.norm_first {
            let x = x.add(&sa(&self.norm1.forward(x)?)?)?;
            Ok(x.add(&ff(&self.norm2.forward(&x)?)?)?)
        } else {
            let x = self.norm1.forward(&x.add(&sa(x)?)?)?;
            self.norm2.forward(&x.add(&ff(&x)?)?)
        }
    }

    /// x: `[B, T, E]` with an optional key-padding mask (i32 `[B, T]`, nonzero = ignore).
    pub fn forward_masked(&self, x: &Tensor, key_padding_mask: Option<&Tensor>) -> Result<Tensor> {
        let opts = AttentionOptions {
            key_padding_mask,
            ..AttentionOptions::new()
        };
        self.forward_with(x, &opts)
    }
}

impl Module for TransformerEncoderLayer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, &AttentionOptions::new())
    }
    // PyTorch's names; the dropouts last, so generator offsets keep their checkpoint order.
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("self_attn".into(), &self.self_attn),
            ("linear1".into(), &self.ff.linear1),
            ("linear2".into(), &self.ff.linear2),
            ("norm1".into(), &self.norm1),
            ("norm2".into(), &self.norm2),
            ("dropout1".into(), &self.dropout1),
            ("dropout2".into(), &self.dropout2),
            ("dropout".into(), &self.ff.dropout),
        ]
    }
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        vec![
            ("self_attn".into(), &mut self.self_attn),
            ("linear1".into(), &mut self.ff.linear1),
            ("linear2".into(), &mut self.ff.linear2),
            ("norm1".into(), &mut self.norm1),
            ("norm2".into(), &mut self.norm2),
            ("dropout1".into(), &mut self.dropout1),
            ("dropout2".into(), &mut self.dropout2),
            ("dropout".into(), &mut self.ff.dropout),
        ]
    }
}

/// Layers applied in order (`layers.0...`), then an optional final LayerNorm (`norm`): the
/// body of PyTorch's `nn.TransformerEncoder` ([`TransformerEncoder`]) and
/// `nn.TransformerDecoder` ([`TransformerDecoder`]).
pub struct Stack<L> {
    /// The layers.
    pub layers: Vec<L>,
    /// Final normalisation (usual with pre-norm layers).
    pub norm: Option<LayerNorm>,
}

impl<L: Module> Stack<L> {
    /// `num_layers` layers made by `layer` in turn, with a final LayerNorm of `cfg` where
    /// `final_norm`.
    fn build(
        dev: &Device,
        cfg: &TransformerLayerConfig,
        num_layers: usize,
        final_norm: bool,
        mut layer: impl FnMut() -> Result<L>,
    ) -> Result<Stack<L>> {
        Ok(Stack {
            layers: (0..num_layers).map(|_| layer()).collect::<Result<_>>()?,
            norm: if final_norm {
                Some(cfg.norm(dev)?)
            } else {
                None
            },
        })
    }

    /// x through `step` with every layer in turn, then the final norm.
    fn run(&self, x: &Tensor, step: impl Fn(&L, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
        let mut h = x.clone();
        for l in &self.layers {
            h = step(l, &h)?;
        }
        match &self.norm {
            Some(n) => n.forward(&h),
            None => Ok(h),
        }
    }
}

impl<L: Module> Module for Stack<L> {
    /// x through every layer's `forward`, then the final norm (a decoder's layers take a
    /// memory too: use [`TransformerDecoder::forward_with`]).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, |l, h| l.forward(h))
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut v = indexed("layers", &self.layers);
        v.extend(self.norm.iter().map(|n| ("norm".into(), n as &dyn Module)));
        v
    }
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        let mut v = indexed_mut("layers", &mut self.layers);
        v.extend(
            self.norm
                .iter_mut()
                .map(|n| ("norm".into(), n as &mut dyn Module)),
        );
        v
    }
}

/// A stack of encoder layers (`layers.0...`), with an optional final LayerNorm (`norm`), as
/// PyTorch's `nn.TransformerEncoder`.
pub type TransformerEncoder = Stack<TransformerEncoderLayer>;

impl Stack<TransformerEncoderLayer> {
    /// `num_layers` layers of `cfg`, drawn from `rng`, with a final LayerNorm where `final_norm`.
    pub fn new(
        dev: &Device,
        rng: &mut Rng,
        cfg: &TransformerLayerConfig,
        num_layers: usize,
        final_norm: bool,
    ) -> Result<TransformerEncoder> {
        Stack::build(dev, cfg, num_layers, final_norm, || {
            cfg.init_encoder_with(dev, rng)
        })
    }

    /// x: `[B, T, E]` through every layer under `opts`' masks.
    pub fn forward_with(&self, x: &Tensor, opts: &AttentionOptions) -> Result<Tensor> {
        self.run(x, |l, h| l.forward_with(h, opts))
    }
}

/// Self-attention over the target, cross-attention over the encoder's output (`memory`),
/// feed-forward, each with a residual connection and LayerNorm, pre- or post-norm (PyTorch's
/// `nn.TransformerDecoderLayer`, batch first).
pub struct TransformerDecoderLayer {
    /// Self-attention over the target.
    pub self_attn: MultiHeadAttention,
    /// Attention over the memory (PyTorch's `multihead_attn`).
    pub multihead_attn: MultiHeadAttention,
    ff: FeedForward,
    norms: [LayerNorm; 3],
    dropouts: [Dropout; 3],
    norm_first: bool,
}

impl TransformerDecoderLayer {
    /// A layer with the given options, drawn from `rng`.
    pub fn new(
        dev: &Device,
        rng: &mut Rng,
        c: &TransformerLayerConfig,
    ) -> Result<TransformerDecoderLayer> {
        Ok(TransformerDecoderLayer {
            self_attn: c.attention(dev, rng)?,
            multihead_attn: c.attention(dev, rng)?,
            ff: c.feed_forward(dev, rng)?,
            norms: [c.norm(dev)?, c.norm(dev)?, c.norm(dev)?],
            dropouts: [
                c.dropout(dev, rng)?,
                c.dropout(dev, rng)?,
                c.dropout(dev, rng)?,
            ],
            norm_first: c.norm_first,
        })
    }

    /// tgt: `[B, T, E]`, memory: `[B, S, E]` (the encoder's output). `tgt_opts` masks the
    /// self-attention (`tgt_mask`, `tgt_key_padding_mask`, `tgt_is_causal`; a decoder usually
    /// wants [`AttentionOptions::causal`]), `memory_opts` the cross-attention (`memory_mask`,
    /// `memory_key_padding_mask`).
    pub fn forward_with(
        &self,
        tgt: &Tensor,
        memory: &Tensor,
        tgt_opts: &AttentionOptions,
        memory_opts: &AttentionOptions,
    ) -> Result<Tensor> {
        let tgt_opts = tgt_opts.need_weights(false);
        let memory_opts = memory_opts.need_weights(false);
        let sa = |x: &Tensor| -> Result<Tensor> {
            self.dropouts[0].forward(&self.self_attn.forward_with(x, x, x, &tgt_opts)?.0)
        };
        let ca = |x: &Tensor| -> Result<Tensor> {
            let y = self
                .multihead_attn
                .forward_with(x, memory, memory, &memory_opts)?
                .0;
            self.dropouts[1].forward(&y)
        };
        let ff = |x: &Tensor| -> Result<Tensor> { self.dropouts[2].forward(&self.ff.forward(x)?) };
        let [n1, n2, n3] = &self.norms;
        if self.norm_first {
            let x = tgt.add(&sa(&n1.forward(tgt)?)?)?;
            let x = x.add(&ca(&n2.forward(&x)?)?)?;
            Ok(x.add(&ff(&n3.forward(&x)?)?)?)
        } else {
            let x = n1.forward(&tgt.add(&sa(tgt)?)?)?;
            let x = n2.forward(&x.add(&ca(&x)?)?)?;
            n3.forward(&x.add(&ff(&x)?)?)
        }
    }
}

impl Module for TransformerDecoderLayer {
    /// A decoder layer takes a target and a memory: use
    /// [`TransformerDecoderLayer::forward_with`]. This one is an error naming it.
    fn forward(&self, _x: &Tensor) -> Result<Tensor> {
        Err(NnError::Config(
            "TransformerDecoderLayer takes (tgt, memory): use forward_with".into(),
        ))
    }
    // PyTorch's names; the dropouts last, so generator offsets keep their checkpoint order.
    fn children(&self) -> Vec<(String, &dyn Module)> {
        let [n1, n2, n3] = &self.norms;
        let [d1, d2, d3] = &self.dropouts;
        vec![
            ("self_attn".into(), &self.self_attn),
            ("multihead_attn".into(), &self.multihead_attn),
            ("linear1".into(), &self.ff.linear1),
            ("linear2".into(), &self.ff.linear2),
            ("norm1".into(), n1),
            ("norm2".into(), n2),
            ("norm3".into(), n3),
            ("dropout1".into(), d1),
            ("dropout2".into(), d2),
            ("dropout3".into(), d3),
            ("dropout".into(), &self.ff.dropout),
        ]
    }
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        let [n1, n2, n3] = &mut self.norms;
        let [d1, d2, d3] = &mut self.dropouts;
        vec![
            ("self_attn".into(), &mut self.self_attn),
            ("multihead_attn".into(), &mut self.multihead_attn),
            ("linear1".into(), &mut self.ff.linear1),
            ("linear2".into(), &mut self.ff.linear2),
            ("norm1".into(), n1),
            ("norm2".into(), n2),
            ("norm3".into(), n3),
            ("dropout1".into(), d1),
            ("dropout2".into(), d2),
            ("dropout3".into(), d3),
            ("dropout".into(), &mut self.ff.dropout),
        ]
    }
}

/// A stack of decoder layers (`layers.0...`) with an optional final LayerNorm (`norm`), as
/// PyTorch's `nn.TransformerDecoder`.
pub type TransformerDecoder = Stack<TransformerDecoderLayer>;

impl Stack<TransformerDecoderLayer> {
    /// `num_layers` layers of `cfg`, drawn from `rng`, with a final LayerNorm where `final_norm`.
    pub fn new(
        dev: &Device,
        rng: &mut Rng,
        cfg: &TransformerLayerConfig,
        num_layers: usize,
        final_norm: bool,
    ) -> Result<TransformerDecoder> {
        Stack::build(dev, cfg, num_layers, final_norm, || {
            cfg.init_decoder_with(dev, rng)
        })
    }

    /// tgt through every layer, each attending to `memory` (see
    /// [`TransformerDecoderLayer::forward_with`]).
    pub fn forward_with(
        &self,
        tgt: &Tensor,
        memory: &Tensor,
        tgt_opts: &AttentionOptions,
        memory_opts: &AttentionOptions,
    ) -> Result<Tensor> {
        self.run(tgt, |l, h| l.forward_with(h, memory, tgt_opts, memory_opts))
    }
}

/// The fixed sinusoidal position table [max_len, dim] of "Attention Is All You Need".
pub fn sinusoidal_positions(max_len: usize, dim: usize) -> Vec<f32> {
    let mut t = vec![0.0f32; max_len * dim];
    for pos in 0..max_len {
        for i in 0..dim {
            let rate = (pos as f64) / 10000f64.powf((2 * (i / 2)) as f64 / dim as f64);
            t[pos * dim + i] = if i % 2 == 0 { rate.sin() } else { rate.cos() } as f32;
        }
    }
    t
}
