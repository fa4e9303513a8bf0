//! Character-level language modelling: a corpus with a train/validation split, seeded random
//! windows, two models (a causal Transformer and an LSTM) and sampling. The training loop is
//! `kiln_train::lm_train`.

use crate::embedding::{Embedding, EmbeddingConfig};
use crate::error::{NnError, Result};
use crate::init::Rng;
use crate::linear::{Linear, LinearConfig};
use crate::module::{indexed, indexed_mut, Module};
use crate::norm::{LayerNorm, LayerNormConfig};
use crate::rnn::{Recurrent, RecurrentConfig};
use crate::transformer::{Activation, TransformerEncoderLayer, TransformerLayerConfig};
use kiln_graph::{no_grad, Device, Tensor};
use std::path::Path;

/// A text, its character vocabulary, and the text as ids split into train and validation parts.
pub struct CharCorpus {
    /// The vocabulary, sorted; id = position.
    pub chars: Vec<char>,
    /// The first part of the text.
    pub train: Vec<i32>,
    /// The last `val_fraction` of the text.
    pub val: Vec<i32>,
}

impl CharCorpus {
    /// Reads a UTF-8 text file and splits it (the validation part is the end of the text).
    pub fn load(path: &Path, val_fraction: f64) -> Result<CharCorpus> {
        let text = std::fs::read_to_string(path).map_err(|e| NnError::Data {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_text(&text, val_fraction).map_err(|m| NnError::Data {
            path: path.display().to_string(),
            message: m,
        })
    }

    /// Builds the corpus from a string.
    pub fn from_text(text: &str, val_fraction: f64) -> std::result::Result<CharCorpus, String> {
        let mut chars: Vec<char> = text
            .chars()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        chars.sort();
        if chars.len() < 2 {
            return Err(format!(
                "{} distinct characters: too few to model",
                chars.len()
            ));
        }
        let ids: Vec<i32> = text
            .chars()
            .map(|c| chars.binary_search(&c).unwrap() as i32)
            .collect();
        let split = ((ids.len() as f64) * (1.0 - val_fraction)) as usize;
        Ok(CharCorpus {
            chars,
            train: ids[..split].to_vec(),
            val: ids[split..].to_vec(),
        })
    }

    /// Vocabulary size.
    pub fn vocab(&self) -> usize {
        self.chars.len()
    }

    /// Ids of the characters of `s` that are in the vocabulary.
    pub fn encode(&self, s: &str) -> Vec<i32> {
        s.chars()
            .filter_map(|c| self.chars.binary_search(&c).ok().map(|i| i as i32))
            .collect()
    }

    /// Text of ids.
    pub fn decode(&self, ids: &[i32]) -> String {
        ids.iter().map(|&i| self.chars[i as usize]).collect()
    }
}

/// `batch` random windows of `context` ids and the same windows shifted by one (the targets).
pub fn sample_windows(
    data: &[i32],
    batch: usize,
    context: usize,
    rng: &mut Rng,
) -> (Vec<i32>, Vec<i32>) {
    let (mut x, mut y) = (
        Vec::with_capacity(batch * context),
        Vec::with_capacity(batch * context),
    );
    for _ in 0..batch {
        let s = rng.below(data.len() - context - 1);
        x.extend_from_slice(&data[s..s + context]);
        y.extend_from_slice(&data[s + 1..s + context + 1]);
    }
    (x, y)
}

/// A model of the next character: ids [B, T] -> logits [B * T, vocab].
pub trait LanguageModel: Module {
    /// Logits for every position.
    fn logits(&self, ids: &Tensor) -> Result<Tensor>;
    /// Longest context the model takes.
    fn context(&self) -> usize;
}

/// A decoder-only Transformer: token and learned position embeddings, pre-norm causal layers,
/// a final LayerNorm and a linear head.
pub struct CharTransformer {
    tok: Embedding,
    pos: Embedding,
    layers: Vec<TransformerEncoderLayer>,
    ln_f: LayerNorm,
    head: Linear,
    context: usize,
}

/// Size of a [`CharTransformer`].
#[derive(Clone, Copy, Debug)]
pub struct TransformerLmConfig {
    /// Vocabulary size.
    pub vocab: usize,
    /// Longest context (positions learned).
    pub context: usize,
    /// Model width.
    pub d_model: usize,
    /// Attention heads.
    pub heads: usize,
    /// Layers.
    pub layers: usize,
    /// Dropout probability.
    pub dropout: f32,
}

impl CharTransformer {
    /// Pre-norm causal layers with feed-forward width 4 x d_model and GELU.
    pub fn new(dev: &Device, seed: u64, c: &TransformerLmConfig) -> Result<CharTransformer> {
        let mut rng = Rng::new(seed);
        // No dropout on the attention probabilities, so training keeps the fused kernel.
        let cfg = TransformerLayerConfig::new(c.d_model, c.heads)
            .with_dim_feedforward(4 * c.d_model)
            .with_dropout(c.dropout)
            .with_attention_dropout(0.0)
            .with_activation(Activation::Gelu)
            .with_norm_first(true);
        let mut ls = Vec::new();
        for _ in 0..c.layers {
            let mut l = TransformerEncoderLayer::new(dev, &mut rng, &cfg)?;
            l.causal = true;
            ls.push(l);
        }
        Ok(CharTransformer {
            tok: EmbeddingConfig::new(c.vocab, c.d_model).init_with(dev, &mut rng)?,
            pos: EmbeddingConfig::new(c.context, c.d_model).init_with(dev, &mut rng)?,
            layers: ls,
            ln_f: LayerNormConfig::new(c.d_model).init(dev)?,
            head: LinearConfig::new(c.d_model, c.vocab).init_with(dev, &mut rng)?,
            context: c.context,
        })
    }
}

impl Module for CharTransformer {
    /// i32 ids [B, T] -> logits [B * T, vocab] (as [`LanguageModel::logits`]).
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.logits(ids)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut v: Vec<(String, &dyn Module)> =
            vec![("tok".into(), &self.tok), ("pos".into(), &self.pos)];
        v.extend(indexed("layers", &self.layers));
        v.push(("ln_f".into(), &self.ln_f));
        v.push(("head".into(), &self.head));
        v
    }
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        let mut v: Vec<(String, &mut dyn Module)> =
            vec![("tok".into(), &mut self.tok), ("pos".into(), &mut self.pos)];
        v.extend(indexed_mut("layers", &mut self.layers));
        v.push(("ln_f".into(), &mut self.ln_f));
        v.push(("head".into(), &mut self.head));
        v
    }
}

impl LanguageModel for CharTransformer {
    fn logits(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = (ids.shape()[0], ids.shape()[1]);
        let dev = self.tok.weight.device();
        let positions: Vec<i32> = (0..t as i32).collect();
        let pos = self
            .pos
            .forward(&Tensor::from_i32(dev, &positions, &[t])?)?;
        let mut h = self.tok.forward(ids)?.add(&pos)?;
        for l in &self.layers {
            h = l.forward(&h)?;
        }
        let e = h.shape()[2];
        let h = self.ln_f.forward(&h)?.reshape(&[b * t, e])?;
        self.head.forward(&h)
    }
    fn context(&self) -> usize {
        self.context
    }
}

/// Embedding, a multi-layer LSTM and a linear head.
pub struct CharLstm {
    emb: Embedding,
    lstm: Recurrent,
    head: Linear,
    context: usize,
}

impl CharLstm {
    /// An LSTM of `layers` x `hidden` over embeddings of width `embed`.
    pub fn new(
        dev: &Device,
        seed: u64,
        vocab: usize,
        context: usize,
        embed: usize,
        hidden: usize,
        layers: usize,
    ) -> Result<CharLstm> {
        let mut rng = Rng::new(seed);
        Ok(CharLstm {
            emb: EmbeddingConfig::new(vocab, embed).init_with(dev, &mut rng)?,
            lstm: RecurrentConfig::lstm(embed, hidden)
                .with_num_layers(layers)
                .init_with(dev, &mut rng)?,
            head: LinearConfig::new(hidden, vocab).init_with(dev, &mut rng)?,
            context,
        })
    }
}

impl Module for CharLstm {
    /// i32 ids [B, T] -> logits [B * T, vocab] (as [`LanguageModel::logits`]).
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.logits(ids)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("embedding".into(), &self.emb),
            ("lstm".into(), &self.lstm),
            ("head".into(), &self.head),
        ]
    }
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        vec![
            ("embedding".into(), &mut self.emb),
            ("lstm".into(), &mut self.lstm),
            ("head".into(), &mut self.head),
        ]
    }
}

impl LanguageModel for CharLstm {
    fn logits(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = (ids.shape()[0], ids.shape()[1]);
        let h = self.lstm.forward(&self.emb.forward(ids)?)?;
        let hd = h.shape()[2];
        self.head.forward(&h.reshape(&[b * t, hd])?)
    }
    fn context(&self) -> usize {
        self.context
    }
}

/// Samples `len` characters after `prompt` (temperature-scaled softmax, seeded), feeding the model
/// its last `context` characters each time.
pub fn generate(
    dev: &Device,
    model: &dyn LanguageModel,
    corpus: &CharCorpus,
    prompt: &str,
    len: usize,
    temperature: f32,
    seed: u64,
) -> Result<String> {
    let mut ids = corpus.encode(prompt);
    if ids.is_empty() {
        ids.push(0);
    }
    let mut rng = Rng::new(seed);
    let v = corpus.vocab();
    no_grad(|| {
        for _ in 0..len {
            let ctx: Vec<i32> = ids[ids.len().saturating_sub(model.context())..].to_vec();
            let t = ctx.len();
            let logits = model.logits(&Tensor::from_i32(dev, &ctx, &[1, t])?)?;
            let last = logits
                .slice(0, t - 1, 1)?
                .affine(1.0 / temperature.max(1e-3), 0.0)?
                .softmax()?
                .to_vec()?;
            let u = rng.uniform() as f32;
            let mut acc = 0.0;
            let next = last.iter().position(|&p| {
                acc += p;
                acc >= u
            });
            ids.push(next.unwrap_or(v - 1) as i32);
        }
        Ok(corpus.decode(&ids))
    })
}
