//! Multi-head attention and Transformer layers, from Linear, LayerNorm, Dropout and the fused
//! attention kernel. Parameter names follow the modules' fields (`self_attn.q_proj.weight`...).

use crate::dropout::{Dropout, DropoutConfig};
use crate::init::Rng;
use crate::linear::{Linear, LinearConfig};
use crate::module::{prefixed, Module};
use crate::norm::{LayerNorm, LayerNormConfig};
use crate::Result;
use kiln_graph::{Device, Tensor};
use kiln_ops::attention::AttentionSpec;

/// Multi-head attention with separate query, key, value and output projections.
pub struct MultiHeadAttention {
    /// Query projection [E, E].
    pub q_proj: Linear,
    /// Key projection [E, E].
    pub k_proj: Linear,
    /// Value projection [E, E].
    pub v_proj: Linear,
    /// Output projection [E, E].
    pub out_proj: Linear,
    heads: usize,
}

impl MultiHeadAttention {
    /// `embed` must divide by `heads`.
    pub fn new(
        dev: &Device,
        rng: &mut Rng,
        embed: usize,
        heads: usize,
    ) -> Result<MultiHeadAttention> {
        if heads == 0 || !embed.is_multiple_of(heads) {
            return Err(crate::NnError::Config(format!(
                "embed dim {embed} is not divisible by {heads} heads"
            )));
        }
        Ok(MultiHeadAttention {
            q_proj: LinearConfig::new(embed, embed).init_with(dev, rng)?,
            k_proj: LinearConfig::new(embed, embed).init_with(dev, rng)?,
            v_proj: LinearConfig::new(embed, embed).init_with(dev, rng)?,
            out_proj: LinearConfig::new(embed, embed).init_with(dev, rng)?,
            heads,
        })
    }

    fn split(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, e) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        Ok(x.reshape(&[b, t, self.heads, e / self.heads])?
            .permute(&[0, 2, 1, 3])?)
    }

    fn project(&self, lin: &Linear, x: &Tensor) -> Result<Tensor> {
        let (b, t, e) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        lin.forward(&x.reshape(&[b * t, e])?)?
            .reshape(&[b, t, e])
            .map_err(Into::into)
    }

    /// query: [B, Tq, E], key and value: [B, Tk, E]; key_padding_mask: i32 [B, Tk], nonzero =
    /// ignore. Returns [B, Tq, E].
    pub fn attend(
        &self,
        query: &Tensor,
        key: &Tensor,
        value: &Tensor,
        key_padding_mask: Option<&Tensor>,
        causal: bool,
    ) -> Result<Tensor> {
        let q = self.split(&self.project(&self.q_proj, query)?)?;
        let k = self.split(&self.project(&self.k_proj, key)?)?;
        let v = self.split(&self.project(&self.v_proj, value)?)?;
        let o = q.attention(
            &k,
            &v,
            key_padding_mask,
            AttentionSpec {
                causal,
                scale: None,
            },
        )?;
        let (b, tq, e) = (query.shape()[0], query.shape()[1], query.shape()[2]);
        let o = o.permute(&[0, 2, 1, 3])?.reshape(&[b, tq, e])?;
        self.project(&self.out_proj, &o)
    }

    /// Parameters by name.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = prefixed("q_proj", self.q_proj.named_parameters());
        v.extend(prefixed("k_proj", self.k_proj.named_parameters()));
        v.extend(prefixed("v_proj", self.v_proj.named_parameters()));
        v.extend(prefixed("out_proj", self.out_proj.named_parameters()));
        v
    }
}

/// Feed-forward activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// max(x, 0)
    Relu,
    /// GELU (erf form)
    Gelu,
}

/// Layer options, PyTorch's defaults: post-norm, ReLU, dropout 0.1.
#[derive(Clone, Copy, Debug)]
pub struct LayerConfig {
    /// Model width.
    pub d_model: usize,
    /// Attention heads.
    pub heads: usize,
    /// Feed-forward width.
    pub ff: usize,
    /// Dropout probability.
    pub dropout: f32,
    /// Feed-forward activation.
    pub activation: Activation,
    /// LayerNorm before each block (pre-norm) instead of after the residual (post-norm).
    pub norm_first: bool,
}

struct FeedForward {
    linear1: Linear,
    linear2: Linear,
    dropout: Dropout,
    activation: Activation,
}

impl FeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, e) = (x.shape()[0], x.shape()[1], x.shape()[2]);
        let h = self.linear1.forward(&x.reshape(&[b * t, e])?)?;
        let h = match self.activation {
            Activation::Relu => h.relu()?,
            Activation::Gelu => h.gelu()?,
        };
        let h = self.dropout.forward(&h)?;
        Ok(self.linear2.forward(&h)?.reshape(&[b, t, e])?)
    }
}

fn feed_forward(dev: &Device, rng: &mut Rng, c: &LayerConfig) -> Result<FeedForward> {
    Ok(FeedForward {
        linear1: LinearConfig::new(c.d_model, c.ff).init_with(dev, rng)?,
        linear2: LinearConfig::new(c.ff, c.d_model).init_with(dev, rng)?,
        dropout: DropoutConfig::new(c.dropout)
            .with_seed(rng.next_u64())
            .init(dev)?,
        activation: c.activation,
    })
}

/// Self-attention then feed-forward, each with a residual connection and LayerNorm.
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
    /// A layer with the given options.
    pub fn new(dev: &Device, rng: &mut Rng, c: &LayerConfig) -> Result<TransformerEncoderLayer> {
        Ok(TransformerEncoderLayer {
            self_attn: MultiHeadAttention::new(dev, rng, c.d_model, c.heads)?,
            ff: feed_forward(dev, rng, c)?,
            norm1: LayerNormConfig::new(c.d_model).init(dev)?,
            norm2: LayerNormConfig::new(c.d_model).init(dev)?,
            dropout1: DropoutConfig::new(c.dropout)
                .with_seed(rng.next_u64())
                .init(dev)?,
            dropout2: DropoutConfig::new(c.dropout)
                .with_seed(rng.next_u64())
                .init(dev)?,
            norm_first: c.norm_first,
            causal: false,
        })
    }

    /// x: [B, T, E] with an optional key-padding mask.
    pub fn forward_masked(&self, x: &Tensor, key_padding_mask: Option<&Tensor>) -> Result<Tensor> {
        let sa = |h: &Tensor| -> Result<Tensor> {
            self.dropout1.forward(
                &self
                    .self_attn
                    .attend(h, h, h, key_padding_mask, self.causal)?,
            )
        };
        let ff = |h: &Tensor| -> Result<Tensor> { self.dropout2.forward(&self.ff.forward(h)?) };
        if self.norm_first {
            let x = x.add(&sa(&self.norm1.forward(x)?)?)?;
            Ok(x.add(&ff(&self.norm2.forward(&x)?)?)?)
        } else {
            let x = self.norm1.forward(&x.add(&sa(x)?)?)?;
            Ok(self.norm2.forward(&x.add(&ff(&x)?)?)?)
        }
    }
}

impl Module for TransformerEncoderLayer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_masked(x, None)
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = prefixed("self_attn", self.self_attn.named_parameters());
        v.extend(prefixed("linear1", self.ff.linear1.named_parameters()));
        v.extend(prefixed("linear2", self.ff.linear2.named_parameters()));
        v.extend(prefixed("norm1", self.norm1.named_parameters()));
        v.extend(prefixed("norm2", self.norm2.named_parameters()));
        v
    }
    fn set_training(&mut self, training: bool) {
        for d in [&mut self.dropout1, &mut self.dropout2, &mut self.ff.dropout] {
            d.set_training(training);
        }
    }
    fn advance_rng(&self) -> Result<()> {
        [&self.dropout1, &self.dropout2, &self.ff.dropout]
            .iter()
            .try_for_each(|d| d.advance_rng())
    }
}

/// A stack of encoder layers (`layers.0...`), with an optional final LayerNorm (`norm`).
pub struct TransformerEncoder {
    /// The layers.
    pub layers: Vec<TransformerEncoderLayer>,
    /// Final normalisation (usual with pre-norm layers).
    pub norm: Option<LayerNorm>,
}

impl Module for TransformerEncoder {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for l in &self.layers {
            h = l.forward(&h)?;
        }
        match &self.norm {
            Some(n) => n.forward(&h),
            None => Ok(h),
        }
    }
    fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<_> = self
            .layers
            .iter()
            .enumerate()
            .flat_map(|(i, l)| prefixed(&format!("layers.{i}"), l.named_parameters()))
            .collect();
        if let Some(n) = &self.norm {
            v.extend(prefixed("norm", n.named_parameters()));
        }
        v
    }
    fn set_training(&mut self, training: bool) {
        self.layers
            .iter_mut()
            .for_each(|l| l.set_training(training));
    }
    fn advance_rng(&self) -> Result<()> {
        self.layers.iter().try_for_each(|l| l.advance_rng())
    }
}

/// Causal self-attention, cross-attention over the encoder's output, feed-forward (post-norm).
pub struct TransformerDecoderLayer {
    /// Causal self-attention.
    pub self_attn: MultiHeadAttention,
    /// Attention over the encoder output.
    pub cross_attn: MultiHeadAttention,
    ff: FeedForward,
    norms: [LayerNorm; 3],
    dropouts: [Dropout; 3],
}

impl TransformerDecoderLayer {
    /// A layer with the given options (norm_first is ignored: post-norm).
    pub fn new(dev: &Device, rng: &mut Rng, c: &LayerConfig) -> Result<TransformerDecoderLayer> {
        Ok(TransformerDecoderLayer {
            self_attn: MultiHeadAttention::new(dev, rng, c.d_model, c.heads)?,
            cross_attn: MultiHeadAttention::new(dev, rng, c.d_model, c.heads)?,
            ff: feed_forward(dev, rng, c)?,
            norms: [
                LayerNormConfig::new(c.d_model).init(dev)?,
                LayerNormConfig::new(c.d_model).init(dev)?,
                LayerNormConfig::new(c.d_model).init(dev)?,
            ],
            dropouts: [
                DropoutConfig::new(c.dropout)
                    .with_seed(rng.next_u64())
                    .init(dev)?,
                DropoutConfig::new(c.dropout)
                    .with_seed(rng.next_u64())
                    .init(dev)?,
                DropoutConfig::new(c.dropout)
                    .with_seed(rng.next_u64())
                    .init(dev)?,
            ],
        })
    }

    /// x: [B, T, E] target, memory: [B, S, E] encoder output (memory_mask: i32 [B, S]).
    pub fn decode(
        &self,
        x: &Tensor,
        memory: &Tensor,
        memory_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let x = self.norms[0].forward(
            &x.add(&self.dropouts[0].forward(&self.self_attn.attend(x, x, x, None, true)?)?)?,
        )?;
        let x = self.norms[1].forward(
            &x.add(&self.dropouts[1].forward(&self.cross_attn.attend(
                &x,
                memory,
                memory,
                memory_mask,
                false,
            )?)?)?,
        )?;
        self.norms[2].forward(&x.add(&self.dropouts[2].forward(&self.ff.forward(&x)?)?)?)
    }

    /// Parameters by name.
    pub fn named_parameters(&self) -> Vec<(String, Tensor)> {
        let mut v = prefixed("self_attn", self.self_attn.named_parameters());
        v.extend(prefixed(
            "multihead_attn",
            self.cross_attn.named_parameters(),
        ));
        v.extend(prefixed("linear1", self.ff.linear1.named_parameters()));
        v.extend(prefixed("linear2", self.ff.linear2.named_parameters()));
        for (i, n) in self.norms.iter().enumerate() {
            v.extend(prefixed(&format!("norm{}", i + 1), n.named_parameters()));
        }
        v
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
