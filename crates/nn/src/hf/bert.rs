//! BERT as `transformers.BertModel`: word, position and token-type embeddings summed and
//! normalised, post-norm encoder layers (attention, then the feed-forward block, each added to
//! its input and layer-normalised with the config's eps), keys masked where the attention mask
//! is 0; and sentence embeddings as sentence-transformers computes them (mean over the real
//! tokens, then L2 normalisation).
//!
//! Parameters carry Hugging Face's names (`encoder.layer.0.attention.self.query.weight`), so
//! [`BertModel::from_folder`] loads a `save_pretrained` folder and [`BertModel::save_folder`]
//! writes one that `transformers` and sentence-transformers load.

use crate::error::{NnError, Result};
use crate::hf::config::{activation, BertConfig};
use crate::hf::folder::{copy_companions, create_dir, model_files, Dropouts, Kind, Source};
use crate::hf::tokenizer::Batch;
use crate::hf::weights::{self, layer_hint, Name, Spec, Weights};
use crate::init::Rng;
use crate::module::{indexed, indexed_mut, Module};
use crate::transformer::{scaled_dot_product_attention, Activation, AttentionOptions};
use crate::{Dropout, LayerNorm, Linear, SplitEmbedding, SplitEmbeddingConfig};
use kiln_graph::{Device, Tensor};
use std::path::Path;

/// One encoder layer (`encoder.layer.N`).
struct BertLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
    attn_probs_dropout: Dropout,
    hidden_dropout1: Dropout,
    hidden_dropout2: Dropout,
}

impl Module for BertLayer {
    /// A layer runs inside [`BertModel::forward`], which brings its mask; alone, an error.
    fn forward(&self, _x: &Tensor) -> Result<Tensor> {
        Err(NnError::Config(
            "a BERT layer runs inside BertModel::forward".into(),
        ))
    }
    // Hugging Face's names; the dropouts last, in checkpoint order.
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("attention.self.query".into(), &self.query),
            ("attention.self.key".into(), &self.key),
            ("attention.self.value".into(), &self.value),
            ("attention.output.dense".into(), &self.attn_out),
            ("attention.output.LayerNorm".into(), &self.attn_norm),
            ("intermediate.dense".into(), &self.intermediate),
            ("output.dense".into(), &self.output),
            ("output.LayerNorm".into(), &self.out_norm),
            ("attention.self.dropout".into(), &self.attn_probs_dropout),
            ("attention.output.dropout".into(), &self.hidden_dropout1),
            ("output.dropout".into(), &self.hidden_dropout2),
        ]
    }
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        vec![
            ("attention.self.query".into(), &mut self.query),
            ("attention.self.key".into(), &mut self.key),
            ("attention.self.value".into(), &mut self.value),
            ("attention.output.dense".into(), &mut self.attn_out),
            ("attention.output.LayerNorm".into(), &mut self.attn_norm),
            ("intermediate.dense".into(), &mut self.intermediate),
            ("output.dense".into(), &mut self.output),
            ("output.LayerNorm".into(), &mut self.out_norm),
            (
                "attention.self.dropout".into(),
                &mut self.attn_probs_dropout,
            ),
            ("attention.output.dropout".into(), &mut self.hidden_dropout1),
            ("output.dropout".into(), &mut self.hidden_dropout2),
        ]
    }
}

/// BERT's encoder (`transformers.BertModel`), with the pooler where the weights have one.
pub struct BertModel {
    config: BertConfig,
    act: Activation,
    word_embeddings: SplitEmbedding,
    position_embeddings: SplitEmbedding,
    token_type_embeddings: SplitEmbedding,
    emb_norm: LayerNorm,
    emb_dropout: Dropout,
    layers: Vec<BertLayer>,
    pooler: Option<Linear>,
    attn_probs_p: f32,
}

/// The tensors a config implies, with the fields that give each dimension.
fn specs(c: &BertConfig) -> Vec<Spec> {
    let h = (c.hidden_size, "hidden_size");
    let i = (c.intermediate_size, "intermediate_size");
    let mut v = vec![
        Spec::new(
            "embeddings.word_embeddings.weight",
            &[(c.vocab_size, "vocab_size"), h],
        ),
        Spec::new(
            "embeddings.position_embeddings.weight",
            &[(c.max_position_embeddings, "max_position_embeddings"), h],
        ),
        Spec::new(
            "embeddings.token_type_embeddings.weight",
            &[(c.type_vocab_size, "type_vocab_size"), h],
        ),
        Spec::new("embeddings.LayerNorm.weight", &[h]),
        Spec::new("embeddings.LayerNorm.bias", &[h]),
    ];
    for l in 0..c.num_hidden_layers {
        let p = format!("encoder.layer.{l}");
        for n in [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
        ] {
            v.push(Spec::new(format!("{p}.{n}.weight"), &[h, h]));
            v.push(Spec::new(format!("{p}.{n}.bias"), &[h]));
        }
        for n in ["attention.output.LayerNorm", "output.LayerNorm"] {
            v.push(Spec::new(format!("{p}.{n}.weight"), &[h]));
            v.push(Spec::new(format!("{p}.{n}.bias"), &[h]));
        }
        v.push(Spec::new(format!("{p}.intermediate.dense.weight"), &[i, h]));
        v.push(Spec::new(format!("{p}.intermediate.dense.bias"), &[i]));
        v.push(Spec::new(format!("{p}.output.dense.weight"), &[h, i]));
        v.push(Spec::new(format!("{p}.output.dense.bias"), &[h]));
    }
    v.push(Spec::new("pooler.dense.weight", &[h, h]).optional());
    v.push(Spec::new("pooler.dense.bias", &[h]).optional());
    v
}

/// A file's tensor name as BertModel's: BertFor* checkpoints prefix `bert.`; their task heads
/// (`cls.*`) and the `position_ids` buffer are not BertModel's.
fn canonical(name: &str) -> Name {
    let n = name.strip_prefix("bert.").unwrap_or(name);
    if n == "embeddings.position_ids" || n.starts_with("cls.") {
        Name::Ignore
    } else {
        Name::Tensor(n.to_string())
    }
}

impl BertModel {
    /// Loads a Hugging Face BERT folder (`config.json`, `model.safetensors`), in evaluation mode
    /// (as `from_pretrained`). Any tensor that is missing, unexpected or shaped otherwise than
    /// the config says is reported, with the config field involved.
    pub fn from_folder(dev: &Device, dir: &Path) -> Result<BertModel> {
        let (config_path, weights_path) = model_files(dir)?;
        let config = BertConfig::from_file(&config_path)?;
        let w = Weights::load(&weights_path, &specs(&config), canonical).map_err(|e| {
            layer_hint(
                e,
                config.num_hidden_layers,
                "encoder.layer.",
                "num_hidden_layers",
            )
        })?;
        let mut m = Self::build(
            dev,
            config,
            &config_path,
            &mut Source::File(&w),
            w.has("pooler.dense.weight"),
        )?;
        m.set_training(false);
        Ok(m)
    }

    /// A model with `transformers`' random initialisation (N(0, `std`) weights, zero biases, the
    /// padding row zero), in training mode.
    pub fn new_random(dev: &Device, config: BertConfig, std: f64, seed: u64) -> Result<BertModel> {
        config.validate(Path::new("config"))?;
        let mut rng = Rng::new(seed);
        Self::build(
            dev,
            config,
            Path::new("config"),
            &mut Source::Random { rng: &mut rng, std },
            true,
        )
    }

    fn build(
        dev: &Device,
        config: BertConfig,
        config_path: &Path,
        src: &mut Source,
        pooler: bool,
    ) -> Result<BertModel> {
        let c = &config;
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let act = activation(config_path, "hidden_act", &c.hidden_act)?;
        let table = |src: &mut Source,
                     name: &str,
                     rows: usize,
                     pad: Option<usize>|
         -> Result<SplitEmbedding> {
            let mut v = src.values(name, rows * h, Kind::Weight)?;
            if let (Source::Random { .. }, Some(p)) = (&*src, pad) {
                v[p * h..(p + 1) * h].fill(0.0);
            }
            SplitEmbeddingConfig::new(rows, h)
                .with_padding_idx(pad)
                .from_rows(dev, &v)
        };
        let word_embeddings = table(
            src,
            "embeddings.word_embeddings.weight",
            c.vocab_size,
            c.pad_token_id,
        )?;
        let position_embeddings = table(
            src,
            "embeddings.position_embeddings.weight",
            c.max_position_embeddings,
            None,
        )?;
        let token_type_embeddings = table(
            src,
            "embeddings.token_type_embeddings.weight",
            c.type_vocab_size,
            None,
        )?;
        let eps = c.layer_norm_eps;
        let emb_norm = src.layer_norm(dev, "embeddings.LayerNorm", h, eps)?;
        let mut drops = Dropouts::new(0);
        let emb_dropout = drops.next(dev, c.hidden_dropout_prob)?;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for l in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            layers.push(BertLayer {
                query: src.linear(dev, &format!("{p}.attention.self.query"), h, h)?,
                key: src.linear(dev, &format!("{p}.attention.self.key"), h, h)?,
                value: src.linear(dev, &format!("{p}.attention.self.value"), h, h)?,
                attn_out: src.linear(dev, &format!("{p}.attention.output.dense"), h, h)?,
                attn_norm: src.layer_norm(
                    dev,
                    &format!("{p}.attention.output.LayerNorm"),
                    h,
                    eps,
                )?,
                intermediate: src.linear(dev, &format!("{p}.intermediate.dense"), h, i)?,
                output: src.linear(dev, &format!("{p}.output.dense"), i, h)?,
                out_norm: src.layer_norm(dev, &format!("{p}.output.LayerNorm"), h, eps)?,
                attn_probs_dropout: drops.next(dev, c.attention_probs_dropout_prob)?,
                hidden_dropout1: drops.next(dev, c.hidden_dropout_prob)?,
                hidden_dropout2: drops.next(dev, c.hidden_dropout_prob)?,
            });
        }
        let pooler = if pooler {
            Some(src.linear(dev, "pooler.dense", h, h)?)
        } else {
            None
        };
        Ok(BertModel {
            act,
            attn_probs_p: c.attention_probs_dropout_prob,
            config,
            word_embeddings,
            position_embeddings,
            token_type_embeddings,
            emb_norm,
            emb_dropout,
            layers,
            pooler,
        })
    }

    /// The config.
    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// The longest input (`max_position_embeddings`).
    pub fn max_length(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// The word embedding table.
    pub fn word_embeddings(&self) -> &SplitEmbedding {
        &self.word_embeddings
    }

    /// Parameters of the embeddings and the first `n` encoder layers (to freeze them while
    /// fine-tuning the rest: `requires_grad_(false)`).
    pub fn lower_parameters(&self, n: usize) -> Vec<Tensor> {
        let mut v: Vec<Tensor> = self
            .named_parameters()
            .into_iter()
            .filter(|(name, _)| name.starts_with("embeddings."))
            .map(|(_, t)| t)
            .collect();
        for l in self.layers.iter().take(n) {
            v.extend(l.named_parameters().into_iter().map(|(_, t)| t));
        }
        v
    }

    /// Host checks of a batch: its length against the positions, its ids against the vocabulary.
    fn check(&self, batch: &Batch) -> Result<()> {
        let c = &self.config;
        if batch.seq_len > c.max_position_embeddings {
            return Err(NnError::Input(format!(
                "{} tokens per text, but config.json's max_position_embeddings is {}: truncate \
                 (Tokenizer::with_max_length)",
                batch.seq_len, c.max_position_embeddings
            )));
        }
        let n = batch.batch_size * batch.seq_len;
        for (what, v, max) in [
            ("input_ids", &batch.input_ids, c.vocab_size),
            ("token_type_ids", &batch.token_type_ids, c.type_vocab_size),
        ] {
            if v.len() != n {
                return Err(NnError::Input(format!(
                    "{what} has {} values for [{}, {}]",
                    v.len(),
                    batch.batch_size,
                    batch.seq_len
                )));
            }
            if let Some(bad) = v.iter().find(|&&i| i < 0 || i as usize >= max) {
                return Err(NnError::Input(format!(
                    "{what} holds {bad}, outside [0, {max})"
                )));
            }
        }
        Ok(())
    }

    /// `last_hidden_state` `[B, T, hidden]` for a tokenized batch (every position, padding
    /// included, as `transformers` returns it; padded keys are masked).
    pub fn forward_batch(&self, batch: &Batch) -> Result<Tensor> {
        self.check(batch)?;
        let dev = self.word_embeddings.blocks()[0].device();
        let shape = [batch.batch_size, batch.seq_len];
        let ids = Tensor::from_i32(dev, &batch.input_ids, &shape)?;
        let types = Tensor::from_i32(dev, &batch.token_type_ids, &shape)?;
        let pad: Vec<i32> = batch
            .attention_mask
            .iter()
            .map(|&m| i32::from(m == 0))
            .collect();
        let kpm = Tensor::from_i32(dev, &pad, &shape)?;
        self.forward(&ids, Some(&types), Some(&kpm))
    }

    /// `last_hidden_state` for i32 ids `[B, T]`, optional token types `[B, T]` (zeros if None) and
    /// an optional key-padding mask `[B, T]` in kiln's convention (nonzero = padding, i.e. `1 -
    /// attention_mask`). Ids are not checked here ([`BertModel::forward_batch`] checks them);
    /// an id outside the vocabulary reads a zero row, never out of bounds.
    pub fn forward(
        &self,
        ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        key_padding_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let &[b, t] = ids.shape() else {
            return Err(NnError::Input(format!(
                "ids [batch, seq], got {:?}",
                ids.shape()
            )));
        };
        if t > c.max_position_embeddings {
            return Err(NnError::Input(format!(
                "{t} positions, but config.json's max_position_embeddings is {}",
                c.max_position_embeddings
            )));
        }
        let dev = ids.device();
        let (h, heads) = (c.hidden_size, c.num_attention_heads);
        let positions: Vec<i32> = (0..t as i32).collect();
        let pos = self
            .position_embeddings
            .forward(&Tensor::from_i32(dev, &positions, &[t])?)?;
        let zeros;
        let types = match token_type_ids {
            Some(tt) => tt,
            None => {
                zeros = Tensor::from_i32(dev, &vec![0; b * t], &[b, t])?;
                &zeros
            }
        };
        let x = self
            .word_embeddings
            .forward(ids)?
            .add(&pos)?
            .add(&self.token_type_embeddings.forward(types)?)?;
        let mut x = self.emb_dropout.forward(&self.emb_norm.forward(&x)?)?;
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape(&[b, t, heads, h / heads])?
                .permute(&[0, 2, 1, 3])?)
        };
        let opts = AttentionOptions {
            key_padding_mask,
            ..AttentionOptions::new()
        };
        let probs_dropout = self.attn_probs_p > 0.0;
        for l in &self.layers {
            let q = split(l.query.forward(&x)?)?;
            let k = split(l.key.forward(&x)?)?;
            let v = split(l.value.forward(&x)?)?;
            let drop = (probs_dropout && l.attn_probs_dropout.is_training())
                .then_some(&l.attn_probs_dropout);
            let (ctx, _) = scaled_dot_product_attention(&q, &k, &v, &opts, heads, drop)?;
            let ctx = ctx.permute(&[0, 2, 1, 3])?.reshape(&[b, t, h])?;
            let a = l.hidden_dropout1.forward(&l.attn_out.forward(&ctx)?)?;
            let y = l.attn_norm.forward(&a.add(&x)?)?;
            let f = self.act.apply(&l.intermediate.forward(&y)?)?;
            let f = l.hidden_dropout2.forward(&l.output.forward(&f)?)?;
            x = l.out_norm.forward(&f.add(&y)?)?;
        }
        Ok(x)
    }

    /// BertPooler: tanh(dense(first token)) `[B, hidden]`; an error for weights without a
    /// pooler.
    pub fn pooler_output(&self, last_hidden_state: &Tensor) -> Result<Tensor> {
        let p = self.pooler.as_ref().ok_or_else(|| {
            NnError::Input("this model's weights have no pooler (pooler.dense.*)".into())
        })?;
        let first = last_hidden_state.slice(1, 0, 1)?;
        let b = first.shape()[0];
        Ok(p.forward(&first.reshape(&[b, self.config.hidden_size])?)?
            .tanh()?)
    }

    /// Sentence embeddings as sentence-transformers' all-MiniLM-L6-v2 makes them: mean of the
    /// last hidden states over the real tokens, L2-normalised; `[B, hidden]`.
    pub fn sentence_embeddings(&self, batch: &Batch) -> Result<Tensor> {
        let h = self.forward_batch(batch)?;
        normalize(&mean_pooling(&h, batch)?)
    }

    /// Writes a Hugging Face folder `dir` (config.json, model.safetensors with Hugging Face's
    /// names, plus the tokenizer and sentence-transformers files of `source`, the folder the
    /// model came from, where given) that `transformers.AutoModel` and sentence-transformers
    /// load.
    pub fn save_folder(&self, dir: &Path, source: Option<&Path>) -> Result<()> {
        create_dir(dir)?;
        if let Some(src) = source {
            copy_companions(src, dir)?;
        }
        let mut tensors = Vec::new();
        let word = "embeddings.word_embeddings.weight";
        for (name, t) in self.named_parameters() {
            if name.starts_with(word) {
                continue;
            }
            tensors.push((name, t.shape().to_vec(), t.to_vec()?));
        }
        let we = &self.word_embeddings;
        tensors.push((
            word.to_string(),
            vec![we.num_embeddings(), we.embedding_dim()],
            we.to_vec()?,
        ));
        let mut config = self.config.clone();
        config
            .extra
            .insert("architectures".into(), serde_json::json!(["BertModel"]));
        config
            .extra
            .insert("dtype".into(), serde_json::json!("float32"));
        weights::save(&dir.join("model.safetensors"), &tensors)?;
        config.save(&dir.join("config.json"))
    }
}

impl Module for BertModel {
    /// `last_hidden_state` for i32 ids `[B, T]`, no padding, token types 0.
    fn forward(&self, ids: &kiln_graph::Tensor) -> Result<kiln_graph::Tensor> {
        BertModel::forward(self, ids, None, None)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut v: Vec<(String, &dyn Module)> = vec![
            ("embeddings.word_embeddings".into(), &self.word_embeddings),
            (
                "embeddings.position_embeddings".into(),
                &self.position_embeddings,
            ),
            (
                "embeddings.token_type_embeddings".into(),
                &self.token_type_embeddings,
            ),
            ("embeddings.LayerNorm".into(), &self.emb_norm),
            ("embeddings.dropout".into(), &self.emb_dropout),
        ];
        v.extend(indexed("encoder.layer", &self.layers));
        v.extend(
            self.pooler
                .iter()
                .map(|p| ("pooler.dense".into(), p as &dyn Module)),
        );
        v
    }
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        let mut v: Vec<(String, &mut dyn Module)> = vec![
            (
                "embeddings.word_embeddings".into(),
                &mut self.word_embeddings,
            ),
            (
                "embeddings.position_embeddings".into(),
                &mut self.position_embeddings,
            ),
            (
                "embeddings.token_type_embeddings".into(),
                &mut self.token_type_embeddings,
            ),
            ("embeddings.LayerNorm".into(), &mut self.emb_norm),
            ("embeddings.dropout".into(), &mut self.emb_dropout),
        ];
        v.extend(indexed_mut("encoder.layer", &mut self.layers));
        v.extend(
            self.pooler
                .iter_mut()
                .map(|p| ("pooler.dense".into(), p as &mut dyn Module)),
        );
        v
    }
}

/// sentence-transformers' mean pooling: sum over positions of h * mask / max(sum(mask), 1e-9),
/// for h `[B, T, E]` and the batch's attention mask; `[B, E]`.
pub fn mean_pooling(h: &Tensor, batch: &Batch) -> Result<Tensor> {
    let &[b, t, e] = h.shape() else {
        return Err(NnError::Input(format!(
            "hidden states [B, T, E], got {:?}",
            h.shape()
        )));
    };
    if b != batch.batch_size || t != batch.seq_len {
        return Err(NnError::Input(format!(
            "hidden states {:?} for a batch of [{}, {}]",
            h.shape(),
            batch.batch_size,
            batch.seq_len
        )));
    }
    let dev = h.device();
    let mask: Vec<f32> = batch.attention_mask.iter().map(|&m| m as f32).collect();
    let counts: Vec<f32> = batch
        .lengths()
        .iter()
        .map(|&n| (n as f32).max(1e-9))
        .collect();
    let m = Tensor::from_f32(dev, &mask, &[b, t, 1])?;
    let sum = h.mul(&m)?.sum(1, false)?;
    debug_assert_eq!(sum.shape(), [b, e]);
    Ok(sum.div(&Tensor::from_f32(dev, &counts, &[b, 1])?)?)
}

/// Rows divided by their L2 norm (`F.normalize(x, dim=-1)`; sqrt(sum x^2 + 1e-24) stands in
/// for max(norm, 1e-12), the same for any row that is not all but zero): x `[B, E]`.
pub fn normalize(x: &Tensor) -> Result<Tensor> {
    let last = x.shape().len() - 1;
    let norm = x
        .square()?
        .sum(last, true)?
        .affine(1.0, 1e-24)?
        .unary(kiln_ops::elementwise::Unary::Sqrt)?;
    Ok(x.div(&norm)?)
}
