//! GPT-2 as `transformers.GPT2LMHeadModel`: word and learned position embeddings, pre-norm
//! blocks (causal attention, then the feed-forward block with the tanh GELU, each added to its
//! input), a final LayerNorm and the LM head tied to the word embedding. The projections are
//! Hugging Face's `Conv1D` (weights `[in, out]`, y = x W + b; `c_attn` packs q|k|v along its
//! output).
//!
//! Generation keeps each layer's keys and values in a cache ([`kiln_ops::decode::KvCache`]):
//! the prompt runs once, then each new token costs one position's work, its attention a single
//! query row per head against the cache (shaders/decode_attention.wgsl). Greedy decoding or
//! temperature and top-k sampling from a seed; [`GenerationConfig::use_cache`] false recomputes
//! the whole sequence each step instead (the reference the cache is checked against).

use crate::error::{NnError, Result};
use crate::hf::config::{activation, Gpt2Config};
use crate::hf::folder::{copy_companions, create_dir, model_files, Dropouts, Kind, Source};
use crate::hf::weights::{self, layer_hint, Name, Spec, Weights};
use crate::init::Rng;
use crate::module::{indexed, indexed_mut, Module};
use crate::transformer::{scaled_dot_product_attention, Activation, AttentionOptions};
use crate::{Dropout, LayerNorm, SplitEmbedding, SplitEmbeddingConfig};
use kiln_graph::{checkpoint, is_grad_enabled, no_grad, Array, Device, OpError, Tensor};
use kiln_ops::decode::{self, KvCache};
use kiln_ops::matmul::Matmul;
use std::path::Path;

/// Hugging Face's `Conv1D`: y = x W + b with W `[in, out]`.
#[derive(Clone)]
struct Conv1D {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1D {
    fn load(
        src: &mut Source,
        dev: &Device,
        prefix: &str,
        inp: usize,
        out: usize,
        kind: Kind,
    ) -> Result<Conv1D> {
        Ok(Conv1D {
            weight: src.param(dev, &format!("{prefix}.weight"), &[inp, out], kind)?,
            bias: src.param(dev, &format!("{prefix}.bias"), &[out], Kind::Zeros)?,
        })
    }
    /// x `[..., in]` -> `[..., out]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (inp, out) = (self.weight.shape()[0], self.weight.shape()[1]);
        let mut shape = x.shape().to_vec();
        let rows = x.numel() / inp;
        *shape.last_mut().unwrap() = out;
        Ok(x.reshape(&[rows, inp])?
            .matmul_with(&self.weight, Matmul::new(), Some(&self.bias))?
            .reshape(&shape)?)
    }
}

impl Module for Conv1D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Conv1D::forward(self, x)
    }
    fn own_parameters(&self) -> Vec<(String, Tensor)> {
        vec![
            ("weight".into(), self.weight.clone()),
            ("bias".into(), self.bias.clone()),
        ]
    }
}

/// One block (`transformer.h.N`). Cloning shares its tensors and dropout generators.
#[derive(Clone)]
struct Block {
    ln_1: LayerNorm,
    c_attn: Conv1D,
    c_proj: Conv1D,
    ln_2: LayerNorm,
    c_fc: Conv1D,
    mlp_proj: Conv1D,
    attn_dropout: Dropout,
    resid_dropout1: Dropout,
    resid_dropout2: Dropout,
    act: Activation,
    heads: usize,
    /// The attention score scale of this layer.
    scale: f32,
}

impl Block {
    /// The block's parameters, in `named_parameters`' order.
    fn tensors(&self) -> Vec<Tensor> {
        self.named_parameters()
            .into_iter()
            .map(|(_, t)| t)
            .collect()
    }

    /// The same block computing with `t` (in [`Block::tensors`]' order) instead of its own
    /// parameters: what a checkpointed block recomputes with.
    fn with_tensors(&self, t: &[Tensor]) -> Block {
        let mut b = self.clone();
        let slots = [
            &mut b.ln_1.weight,
            &mut b.ln_1.bias,
            &mut b.c_attn.weight,
            &mut b.c_attn.bias,
            &mut b.c_proj.weight,
            &mut b.c_proj.bias,
            &mut b.ln_2.weight,
            &mut b.ln_2.bias,
            &mut b.c_fc.weight,
            &mut b.c_fc.bias,
            &mut b.mlp_proj.weight,
            &mut b.mlp_proj.bias,
        ];
        for (slot, t) in slots.into_iter().zip(t) {
            *slot = t.clone();
        }
        b
    }

    /// x `[B, T, n_embd]` through the block.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let qkv = self.c_attn.forward(&self.ln_1.forward(x)?)?;
        self.forward_qkv(x, &qkv)
    }

    /// The rest of the block once the packed q|k|v projection of `x` is made (generation puts
    /// its keys and values into the cache in between).
    fn forward_qkv(&self, x: &Tensor, qkv: &Tensor) -> Result<Tensor> {
        let &[b, t, e] = x.shape() else {
            return Err(NnError::Input(format!(
                "a block takes [batch, seq, n_embd], got {:?}",
                x.shape()
            )));
        };
        let heads = self.heads;
        let parts = qkv
            .reshape(&[b, t, 3, heads, e / heads])?
            .permute(&[2, 0, 3, 1, 4])?;
        let part = |i: usize| -> Result<Tensor> {
            Ok(parts.slice(0, i, 1)?.reshape(&[b, heads, t, e / heads])?)
        };
        let opts = AttentionOptions::causal().scale(self.scale);
        // Attention dropout (training, with `attn_pdrop` > 0) takes the explicit attention path.
        let d = &self.attn_dropout;
        let drop = (d.is_training() && d.p() > 0.0).then_some(d);
        let (a, _) =
            scaled_dot_product_attention(&part(0)?, &part(1)?, &part(2)?, &opts, heads, drop)?;
        let a = a.permute(&[0, 2, 1, 3])?.reshape(&[b, t, e])?;
        let x = x.add(&self.resid_dropout1.forward(&self.c_proj.forward(&a)?)?)?;
        let m = self
            .act
            .apply(&self.c_fc.forward(&self.ln_2.forward(&x)?)?)?;
        Ok(x.add(&self.resid_dropout2.forward(&self.mlp_proj.forward(&m)?)?)?)
    }

    /// [`Block::forward`] as an activation checkpoint: only `x` is kept for the backward pass,
    /// which runs the block again.
    fn forward_checkpointed(&self, x: &Tensor) -> Result<Tensor> {
        let params = self.tensors();
        let mut inputs = vec![x];
        inputs.extend(params.iter());
        let blk = self.clone();
        Ok(checkpoint(&inputs, move |t| {
            blk.with_tensors(&t[1..]).forward(&t[0]).map_err(op_error)
        })?)
    }
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Block::forward(self, x)
    }
    // Hugging Face's names; the dropouts last, in checkpoint order.
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![
            ("ln_1".into(), &self.ln_1),
            ("attn.c_attn".into(), &self.c_attn),
            ("attn.c_proj".into(), &self.c_proj),
            ("ln_2".into(), &self.ln_2),
            ("mlp.c_fc".into(), &self.c_fc),
            ("mlp.c_proj".into(), &self.mlp_proj),
            ("attn.attn_dropout".into(), &self.attn_dropout),
            ("attn.resid_dropout".into(), &self.resid_dropout1),
            ("mlp.dropout".into(), &self.resid_dropout2),
        ]
    }
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        vec![
            ("ln_1".into(), &mut self.ln_1),
            ("attn.c_attn".into(), &mut self.c_attn),
            ("attn.c_proj".into(), &mut self.c_proj),
            ("ln_2".into(), &mut self.ln_2),
            ("mlp.c_fc".into(), &mut self.c_fc),
            ("mlp.c_proj".into(), &mut self.mlp_proj),
            ("attn.attn_dropout".into(), &mut self.attn_dropout),
            ("attn.resid_dropout".into(), &mut self.resid_dropout1),
            ("mlp.dropout".into(), &mut self.resid_dropout2),
        ]
    }
}

/// A block's error as the op error a checkpoint's function returns (an op's own error passes
/// through unchanged).
fn op_error(e: NnError) -> OpError {
    match e {
        NnError::Op(e) => e,
        other => OpError::Invalid {
            op: "gpt2 block",
            message: other.to_string(),
        },
    }
}

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// The most likely token (`do_sample=False`).
    Greedy,
    /// A draw from softmax(logits / temperature) over the `top_k` most likely tokens (0: all).
    TopK {
        /// How many of the most likely tokens stay candidates (0 keeps every token).
        top_k: usize,
        /// Divides the logits (below 1 sharpens, above 1 flattens).
        temperature: f32,
    },
}

/// Generation settings.
#[derive(Clone, Debug)]
pub struct GenerationConfig {
    /// Tokens to generate after the prompt (fewer where `eos_token_id` comes first).
    pub max_new_tokens: usize,
    /// How each token is chosen.
    pub sampling: Sampling,
    /// Seed of the sampling generator.
    pub seed: u64,
    /// Keep keys and values in a cache (one position's work per token) or recompute the whole
    /// sequence each step.
    pub use_cache: bool,
    /// Stop after generating this token (None: generate `max_new_tokens`).
    pub eos_token_id: Option<i32>,
}

impl GenerationConfig {
    /// Greedy decoding of `max_new_tokens` tokens with the cache, not stopping at end-of-text.
    pub fn greedy(max_new_tokens: usize) -> Self {
        GenerationConfig {
            max_new_tokens,
            sampling: Sampling::Greedy,
            seed: 0,
            use_cache: true,
            eos_token_id: None,
        }
    }
    /// Temperature and top-k sampling from `seed`.
    pub fn sample(max_new_tokens: usize, temperature: f32, top_k: usize, seed: u64) -> Self {
        GenerationConfig {
            sampling: Sampling::TopK { top_k, temperature },
            seed,
            ..Self::greedy(max_new_tokens)
        }
    }
    /// Recompute the whole sequence each step (no cache).
    pub fn without_cache(mut self) -> Self {
        self.use_cache = false;
        self
    }
    /// Stop at `eos`.
    pub fn stop_at(mut self, eos: Option<i32>) -> Self {
        self.eos_token_id = eos;
        self
    }
}

/// Each layer's key and value caches for one generation.
pub struct Gpt2Cache {
    layers: Vec<KvCache>,
}

impl Gpt2Cache {
    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |c| c.len)
    }
    /// True before the prompt ran.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// GPT-2 with its language-model head (`transformers.GPT2LMHeadModel`).
pub struct Gpt2LMHeadModel {
    config: Gpt2Config,
    act: Activation,
    wte: SplitEmbedding,
    wpe: SplitEmbedding,
    drop: Dropout,
    h: Vec<Block>,
    ln_f: LayerNorm,
    /// Rows of `wte`: `config.vocab_size`, or more after [`Gpt2LMHeadModel::pad_vocab`].
    padded_vocab: usize,
    /// Recompute each block's forward pass in the backward pass.
    checkpointing: bool,
}

fn specs(c: &Gpt2Config) -> Vec<Spec> {
    let e = (c.n_embd, "n_embd");
    let e3 = (3 * c.n_embd, "n_embd");
    let inner = (c.inner(), "n_inner");
    let mut v = vec![
        Spec::new("transformer.wte.weight", &[(c.vocab_size, "vocab_size"), e]),
        Spec::new(
            "transformer.wpe.weight",
            &[(c.n_positions, "n_positions"), e],
        ),
    ];
    for l in 0..c.n_layer {
        let p = format!("transformer.h.{l}");
        for n in ["ln_1", "ln_2"] {
            v.push(Spec::new(format!("{p}.{n}.weight"), &[e]));
            v.push(Spec::new(format!("{p}.{n}.bias"), &[e]));
        }
        v.push(Spec::new(format!("{p}.attn.c_attn.weight"), &[e, e3]));
        v.push(Spec::new(format!("{p}.attn.c_attn.bias"), &[e3]));
        v.push(Spec::new(format!("{p}.attn.c_proj.weight"), &[e, e]));
        v.push(Spec::new(format!("{p}.attn.c_proj.bias"), &[e]));
        v.push(Spec::new(format!("{p}.mlp.c_fc.weight"), &[e, inner]));
        v.push(Spec::new(format!("{p}.mlp.c_fc.bias"), &[inner]));
        v.push(Spec::new(format!("{p}.mlp.c_proj.weight"), &[inner, e]));
        v.push(Spec::new(format!("{p}.mlp.c_proj.bias"), &[e]));
    }
    v.push(Spec::new("transformer.ln_f.weight", &[e]));
    v.push(Spec::new("transformer.ln_f.bias", &[e]));
    v
}

/// A file's tensor name as GPT2LMHeadModel's: Hub checkpoints of `GPT2Model` name them without
/// `transformer.`; the causal-mask buffers (`attn.bias`, `attn.masked_bias`) and a stored copy of
/// the tied `lm_head.weight` are not parameters.
fn canonical(name: &str) -> Name {
    if name == "lm_head.weight"
        || name.ends_with(".attn.bias")
        || name.ends_with(".attn.masked_bias")
    {
        return Name::Ignore;
    }
    if name.starts_with("transformer.") {
        Name::Tensor(name.to_string())
    } else {
        Name::Tensor(format!("transformer.{name}"))
    }
}

impl Gpt2LMHeadModel {
    /// Loads a Hugging Face GPT-2 folder (`config.json`, `model.safetensors`, either naming
    /// layout), in evaluation mode. Any tensor that is missing, unexpected or shaped otherwise
    /// than the config says is reported, with the config field involved. A word embedding larger
    /// than one storage binding is split into blocks (see [`SplitEmbedding`]).
    pub fn from_folder(dev: &Device, dir: &Path) -> Result<Gpt2LMHeadModel> {
        let (config_path, weights_path) = model_files(dir)?;
        let config = Gpt2Config::from_file(&config_path)?;
        let w = Weights::load(&weights_path, &specs(&config), canonical)
            .map_err(|e| layer_hint(e, config.n_layer, "h.", "n_layer"))?;
        let mut m = Self::build(dev, config, &config_path, &mut Source::File(&w), 1.0)?;
        m.set_training(false);
        Ok(m)
    }

    /// A model with `transformers`' random initialisation (N(0, `std`) weights, zero biases,
    /// LayerNorms 1 and 0), in training mode: for tests and benchmarks without weights.
    pub fn new_random(
        dev: &Device,
        config: Gpt2Config,
        std: f64,
        seed: u64,
    ) -> Result<Gpt2LMHeadModel> {
        config.validate(Path::new("config"))?;
        let mut rng = Rng::new(seed);
        Self::build(
            dev,
            config,
            Path::new("config"),
            &mut Source::Random { rng: &mut rng, std },
            1.0,
        )
    }

    /// GPT-2's initialisation for training from scratch, as `transformers.GPT2LMHeadModel(config)`
    /// and nanoGPT draw it: weights N(0, `std`) (GPT-2's `initializer_range` is 0.02), the two
    /// projections into the residual stream of each block (`attn.c_proj`, `mlp.c_proj`) N(0,
    /// `std` / sqrt(2 `n_layer`)) so the stream's variance does not grow with depth, zero biases,
    /// LayerNorms 1 and 0; in training mode.
    pub fn init_from_scratch(
        dev: &Device,
        config: Gpt2Config,
        std: f64,
        seed: u64,
    ) -> Result<Gpt2LMHeadModel> {
        config.validate(Path::new("config"))?;
        let mut rng = Rng::new(seed);
        let resid = 1.0 / (2.0 * config.n_layer.max(1) as f64).sqrt();
        Self::build(
            dev,
            config,
            Path::new("config"),
            &mut Source::Random { rng: &mut rng, std },
            resid,
        )
    }

    fn build(
        dev: &Device,
        config: Gpt2Config,
        path: &Path,
        src: &mut Source,
        resid_scale: f64,
    ) -> Result<Gpt2LMHeadModel> {
        let c = &config;
        let (e, inner) = (c.n_embd, c.inner());
        let act = activation(path, "activation_function", &c.activation_function)?;
        let table = |src: &mut Source, name: &str, rows: usize| -> Result<SplitEmbedding> {
            let v = src.values(name, rows * e, Kind::Weight)?;
            SplitEmbeddingConfig::new(rows, e).from_rows(dev, &v)
        };
        let wte = table(src, "transformer.wte.weight", c.vocab_size)?;
        let wpe = table(src, "transformer.wpe.weight", c.n_positions)?;
        let eps = c.layer_norm_epsilon;
        let mut drops = Dropouts::new(0);
        let drop = drops.next(dev, c.embd_pdrop)?;
        let mut h = Vec::with_capacity(c.n_layer);
        let (w, r) = (Kind::Weight, Kind::Scaled(resid_scale));
        for l in 0..c.n_layer {
            let p = format!("transformer.h.{l}");
            h.push(Block {
                ln_1: src.layer_norm(dev, &format!("{p}.ln_1"), e, eps)?,
                c_attn: Conv1D::load(src, dev, &format!("{p}.attn.c_attn"), e, 3 * e, w)?,
                c_proj: Conv1D::load(src, dev, &format!("{p}.attn.c_proj"), e, e, r)?,
                ln_2: src.layer_norm(dev, &format!("{p}.ln_2"), e, eps)?,
                c_fc: Conv1D::load(src, dev, &format!("{p}.mlp.c_fc"), e, inner, w)?,
                mlp_proj: Conv1D::load(src, dev, &format!("{p}.mlp.c_proj"), inner, e, r)?,
                attn_dropout: drops.next(dev, c.attn_pdrop)?,
                resid_dropout1: drops.next(dev, c.resid_pdrop)?,
                resid_dropout2: drops.next(dev, c.resid_pdrop)?,
                act,
                heads: c.n_head,
                scale: Self::scale_of(c, l),
            });
        }
        let ln_f = src.layer_norm(dev, "transformer.ln_f", e, eps)?;
        Ok(Gpt2LMHeadModel {
            act,
            padded_vocab: config.vocab_size,
            config,
            wte,
            wpe,
            drop,
            h,
            ln_f,
            checkpointing: false,
        })
    }

    /// Pads the word embedding with zero rows up to a multiple of `multiple` (llm.c pads GPT-2's
    /// 50,257 words to 50,304 = 393 x 128, so the head's matmul and its gradient run on whole
    /// tiles). The padded rows are never looked up (ids are checked against `vocab_size`), and
    /// their scores are cut off before any softmax: [`Gpt2LMHeadModel::logits`], the losses and
    /// generation see `vocab_size` columns only, so the padding takes no probability and gets no
    /// gradient (under weight decay it stays zero). `config().vocab_size` stays the true size and
    /// [`Gpt2LMHeadModel::save_folder`] writes the unpadded table. The parameters change (the
    /// word embedding's blocks are new tensors): pad before making an optimizer. A multiple the
    /// size already is changes nothing.
    pub fn pad_vocab(&mut self, multiple: usize) -> Result<()> {
        let v = self.config.vocab_size;
        let padded = v.div_ceil(multiple.max(1)) * multiple.max(1);
        if padded == self.wte.num_embeddings() {
            return Ok(());
        }
        let e = self.config.n_embd;
        let mut rows = self.wte.to_vec()?;
        rows.truncate(v * e);
        rows.resize(padded * e, 0.0);
        let dev = self.device().clone();
        self.wte = SplitEmbeddingConfig::new(padded, e).from_rows(&dev, &rows)?;
        self.padded_vocab = padded;
        Ok(())
    }

    /// Rows of the word embedding: `vocab_size`, or the padded size (see
    /// [`Gpt2LMHeadModel::pad_vocab`]).
    pub fn padded_vocab_size(&self) -> usize {
        self.padded_vocab
    }

    /// Recomputes each block's forward pass in the backward pass instead of keeping its
    /// intermediate tensors (`transformers`' `gradient_checkpointing_enable`): memory for
    /// activations falls to each block's input plus one block's intermediates at a time, for
    /// one more forward pass of compute. Results are the same (the same kernels run on the same
    /// values).
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        self.checkpointing = on;
    }

    /// Whether blocks are recomputed in the backward pass.
    pub fn gradient_checkpointing(&self) -> bool {
        self.checkpointing
    }

    /// The config.
    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }

    /// The word embedding, which is also the LM head.
    pub fn wte(&self) -> &SplitEmbedding {
        &self.wte
    }

    fn device(&self) -> &Device {
        self.wte.blocks()[0].device()
    }

    /// The score scale of layer `l`.
    fn scale_of(c: &Gpt2Config, l: usize) -> f32 {
        let d = (c.n_embd / c.n_head) as f32;
        let mut s = if c.scale_attn_weights {
            1.0 / d.sqrt()
        } else {
            1.0
        };
        if c.scale_attn_by_inverse_layer_idx {
            s /= (l + 1) as f32;
        }
        s
    }

    /// Scores `[..., vocab_size]` of hidden states `[..., n_embd]`: the tied head, with the
    /// padded rows' columns cut off.
    fn head_logits(&self, h: &Tensor) -> Result<Tensor> {
        let y = self.wte.logits(h)?;
        if self.padded_vocab == self.config.vocab_size {
            return Ok(y);
        }
        Ok(y.slice(y.shape().len() - 1, 0, self.config.vocab_size)?)
    }

    fn check_ids(&self, ids: &[i32], what: &str) -> Result<()> {
        let v = self.config.vocab_size;
        match ids.iter().find(|&&i| i < 0 || i as usize >= v) {
            Some(bad) => Err(NnError::Input(format!(
                "{what} holds token {bad}, outside the vocabulary [0, {v})"
            ))),
            None => Ok(()),
        }
    }

    fn check_len(&self, t: usize) -> Result<()> {
        if t > self.config.n_positions {
            return Err(NnError::Input(format!(
                "{t} positions, but config.json's n_positions is {}",
                self.config.n_positions
            )));
        }
        Ok(())
    }

    /// The final hidden states `[B, T, n_embd]` (after `ln_f`) for i32 ids `[B, T]`. Ids are not
    /// checked here (the methods taking host ids check them); one outside the vocabulary reads a
    /// zero row, never out of bounds.
    pub fn hidden_states(&self, ids: &Tensor) -> Result<Tensor> {
        self.run(ids, None)
    }

    /// Hidden states, writing each layer's keys and values into `cache` when given.
    fn run(&self, ids: &Tensor, mut cache: Option<&mut Gpt2Cache>) -> Result<Tensor> {
        let &[_, t] = ids.shape() else {
            return Err(NnError::Input(format!(
                "ids [batch, seq], got {:?}",
                ids.shape()
            )));
        };
        self.check_len(t)?;
        let dev = ids.device();
        let e = self.config.n_embd;
        let positions: Vec<i32> = (0..t as i32).collect();
        let pos = self
            .wpe
            .forward(&Tensor::from_i32(dev, &positions, &[t])?)?;
        let mut x = self.drop.forward(&self.wte.forward(ids)?.add(&pos)?)?;
        let recompute = self.checkpointing && cache.is_none() && is_grad_enabled();
        for (l, blk) in self.h.iter().enumerate() {
            x = if let Some(cache) = cache.as_deref_mut() {
                let qkv = blk.c_attn.forward(&blk.ln_1.forward(&x)?)?;
                decode::kv_append(dev, &mut cache.layers[l], qkv.array(), e, 2 * e)?;
                blk.forward_qkv(&x, &qkv)?
            } else if recompute {
                blk.forward_checkpointed(&x)?
            } else {
                blk.forward(&x)?
            };
        }
        self.ln_f.forward(&x)
    }

    /// Logits `[B, T, vocab_size]` for i32 ids `[B, T]` (the head is the word embedding's
    /// transpose, block by block).
    pub fn logits(&self, ids: &Tensor) -> Result<Tensor> {
        self.head_logits(&self.hidden_states(ids)?)
    }

    /// The language-model loss with `labels = input_ids`, as `GPT2LMHeadModel(input_ids,
    /// labels=input_ids).loss`: mean cross-entropy of each position's logits against the next
    /// token. `input_ids` is `[batch, seq]` row-major.
    pub fn lm_loss(&self, input_ids: &[i32], batch: usize) -> Result<Tensor> {
        self.lm_loss_with_labels(input_ids, input_ids, batch)
    }

    /// The loss for `labels` (`[batch, seq]`, shifted inside as `transformers` does; -100 =
    /// ignore). The logits are made for a few rows at a time, so that no logits buffer exceeds a
    /// storage binding however large the batch and vocabulary.
    pub fn lm_loss_with_labels(
        &self,
        input_ids: &[i32],
        labels: &[i32],
        batch: usize,
    ) -> Result<Tensor> {
        let t = input_ids.len() / batch.max(1);
        if batch == 0 || t < 2 || input_ids.len() != batch * t || labels.len() != input_ids.len() {
            return Err(NnError::Input(format!(
                "{} ids and {} labels for a batch of {batch}: need [batch, seq] with seq >= 2",
                input_ids.len(),
                labels.len()
            )));
        }
        self.check_ids(input_ids, "input_ids")?;
        let v = self.config.vocab_size;
        if let Some(bad) = labels
            .iter()
            .find(|&&l| l != -100 && (l < 0 || l as usize >= v))
        {
            return Err(NnError::Input(format!(
                "labels hold {bad}, outside [0, {v}) and not -100"
            )));
        }
        let dev = self.device();
        let e = self.config.n_embd;
        let h = self.hidden_states(&Tensor::from_i32(dev, input_ids, &[batch, t])?)?;
        let rows = batch * (t - 1);
        let h = h.slice(1, 0, t - 1)?.reshape(&[rows, e])?;
        let shifted: Vec<i32> = (0..batch)
            .flat_map(|b| labels[b * t + 1..(b + 1) * t].to_vec())
            .collect();
        let counted = shifted.iter().filter(|&&l| l != -100).count();
        if counted == 0 {
            return Err(NnError::Input(
                "every label is -100: nothing to predict".into(),
            ));
        }
        let l = dev.limits();
        let limit = l.max_storage_buffer_binding_size.min(l.max_buffer_size) as usize;
        let chunk = (limit / (4 * self.padded_vocab)).clamp(1, rows);
        let mut total: Option<Tensor> = None;
        let mut at = 0;
        while at < rows {
            let n = chunk.min(rows - at);
            let lab = &shifted[at..at + n];
            let count = lab.iter().filter(|&&l| l != -100).count();
            if count > 0 {
                let hc = if n == rows {
                    h.clone()
                } else {
                    h.slice(0, at, n)?
                };
                let logits = self.head_logits(&hc)?;
                let ce = logits
                    .cross_entropy(&Tensor::from_i32(dev, lab, &[n])?, Some(-100))?
                    .affine(count as f32 / counted as f32, 0.0)?;
                total = Some(match total {
                    Some(s) => s.add(&ce)?,
                    None => ce,
                });
            }
            at += n;
        }
        Ok(total.expect("at least one counted label"))
    }

    /// The mean cross-entropy of next-token prediction for device tensors, as a recorded training
    /// step needs them (the host rewrites both before each replay): `inputs` `[B, T]` i32 ids,
    /// `targets` `[B, T]` (or `[B * T]`) i32, each position's next token (llm.c's and nanoGPT's
    /// windows of T + 1 tokens cut into inputs and targets), every position counted. Ids are not
    /// checked here: the token-shard reader refuses ids past the vocabulary when it opens a file.
    /// The scores are made a few thousand rows at a time where `[B * T, vocab]` would pass a
    /// storage binding.
    pub fn lm_loss_from(&self, inputs: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let &[b, t] = inputs.shape() else {
            return Err(NnError::Input(format!(
                "inputs [batch, seq], got {:?}",
                inputs.shape()
            )));
        };
        let rows = b * t;
        if inputs.dtype() != kiln_graph::DType::I32
            || targets.dtype() != kiln_graph::DType::I32
            || targets.numel() != rows
        {
            return Err(NnError::Input(format!(
                "inputs and targets as i32 [batch, seq]: got {:?} {} and {:?} {}",
                inputs.shape(),
                inputs.dtype(),
                targets.shape(),
                targets.dtype()
            )));
        }
        let dev = self.device();
        let h = self
            .hidden_states(inputs)?
            .reshape(&[rows, self.config.n_embd])?;
        let l = dev.limits();
        let limit = l.max_storage_buffer_binding_size.min(l.max_buffer_size) as usize;
        let mut chunk = (limit / (4 * self.padded_vocab)).max(1);
        if chunk < rows {
            // Each chunk's targets are a window of the targets' buffer: its offset must be
            // aligned for binding.
            let align = (l.min_storage_buffer_offset_alignment as usize / 4).max(1);
            chunk = (chunk / align * align).max(align);
        }
        let chunk = chunk.min(rows);
        let mut total: Option<Tensor> = None;
        let mut at = 0;
        while at < rows {
            let n = chunk.min(rows - at);
            let (hc, yc) = if n == rows {
                (h.clone(), targets.reshape(&[rows])?)
            } else {
                let window = targets
                    .array()
                    .buf
                    .window((at * 4) as u64, n)
                    .ok_or_else(|| NnError::Input("targets: a window past the end".into()))?;
                let y = Array {
                    buf: window,
                    shape: vec![n],
                };
                (h.slice(0, at, n)?, Tensor::from_array(dev, y))
            };
            let mut ce = self.head_logits(&hc)?.cross_entropy(&yc, None)?;
            if n < rows {
                ce = ce.affine(n as f32 / rows as f32, 0.0)?;
            }
            total = Some(match total {
                Some(s) => s.add(&ce)?,
                None => ce,
            });
            at += n;
        }
        Ok(total.expect("at least one row"))
    }

    /// Empty key/value caches for one sequence of up to `n_positions` tokens.
    pub fn new_cache(&self) -> Result<Gpt2Cache> {
        let c = &self.config;
        let d = c.n_embd / c.n_head;
        let layers = (0..c.n_layer)
            .map(|_| KvCache::new(self.device(), 1, c.n_head, c.n_positions, d))
            .collect::<std::result::Result<_, _>>()?;
        Ok(Gpt2Cache { layers })
    }

    /// Runs `prompt` into an empty `cache` and returns the logits that follow it `[vocab]`.
    pub fn prefill(&self, cache: &mut Gpt2Cache, prompt: &[i32]) -> Result<Vec<f32>> {
        if !cache.is_empty() || prompt.is_empty() {
            return Err(NnError::Input(
                "prefill takes a non-empty prompt and an empty cache".into(),
            ));
        }
        self.check_ids(prompt, "the prompt")?;
        no_grad(|| {
            let dev = self.device();
            let t = prompt.len();
            let h = self.run(&Tensor::from_i32(dev, prompt, &[1, t])?, Some(cache))?;
            let last = h.slice(1, t - 1, 1)?;
            Ok(self.head_logits(&last)?.to_vec()?)
        })
    }

    /// Feeds one token at the next position and returns the logits that follow it `[vocab]`:
    /// every layer appends its key and value to `cache` and attends its single query to it.
    pub fn decode_step(&self, cache: &mut Gpt2Cache, token: i32) -> Result<Vec<f32>> {
        self.check_ids(&[token], "the token")?;
        let pos = cache.len();
        if pos == 0 {
            return Err(NnError::Input("decode_step after prefill".into()));
        }
        self.check_len(pos + 1)?;
        let c = &self.config;
        let e = c.n_embd;
        no_grad(|| {
            let dev = self.device();
            let wte = self
                .wte
                .forward(&Tensor::from_i32(dev, &[token], &[1, 1])?)?;
            let wpe = self
                .wpe
                .forward(&Tensor::from_i32(dev, &[pos as i32], &[1, 1])?)?;
            let mut x = wte.add(&wpe)?;
            for (l, blk) in self.h.iter().enumerate() {
                let qkv = blk.c_attn.forward(&blk.ln_1.forward(&x)?)?;
                let kv = &mut cache.layers[l];
                decode::kv_append(dev, kv, qkv.array(), e, 2 * e)?;
                let a = decode::decode_attention(dev, qkv.array(), 0, kv, Some(blk.scale))?;
                let a = Tensor::from_array(dev, a).reshape(&[1, 1, e])?;
                x = x.add(&blk.c_proj.forward(&a)?)?;
                let m = self.act.apply(&blk.c_fc.forward(&blk.ln_2.forward(&x)?)?)?;
                x = x.add(&blk.mlp_proj.forward(&m)?)?;
            }
            Ok(self.head_logits(&self.ln_f.forward(&x)?)?.to_vec()?)
        })
    }

    /// Generates up to `cfg.max_new_tokens` tokens after `prompt` and returns them (without the
    /// prompt). The prompt and the new tokens must fit `n_positions`: an error says so before
    /// anything runs.
    pub fn generate(&self, prompt: &[i32], cfg: &GenerationConfig) -> Result<Vec<i32>> {
        if prompt.is_empty() {
            return Err(NnError::Input("an empty prompt".into()));
        }
        self.check_ids(prompt, "the prompt")?;
        let n = self.config.n_positions;
        if prompt.len() + cfg.max_new_tokens > n {
            return Err(NnError::Input(format!(
                "{} prompt tokens + {} new ones exceed config.json's n_positions {n}",
                prompt.len(),
                cfg.max_new_tokens
            )));
        }
        if let Sampling::TopK { temperature, .. } = cfg.sampling {
            if !(temperature > 0.0 && temperature.is_finite()) {
                return Err(NnError::Input(format!(
                    "temperature {temperature} must be positive"
                )));
            }
        }
        let mut rng = Rng::new(cfg.seed);
        let mut out = Vec::with_capacity(cfg.max_new_tokens);
        let mut cache = if cfg.use_cache {
            Some(self.new_cache()?)
        } else {
            None
        };
        let mut seq = prompt.to_vec();
        for step in 0..cfg.max_new_tokens {
            let logits = match cache.as_mut() {
                Some(c) if step == 0 => self.prefill(c, prompt)?,
                Some(c) => self.decode_step(c, *seq.last().unwrap())?,
                None => self.next_logits_full(&seq)?,
            };
            let next = choose(&logits, cfg.sampling, &mut rng);
            out.push(next);
            seq.push(next);
            if cfg.eos_token_id == Some(next) {
                break;
            }
        }
        Ok(out)
    }

    /// The logits after `seq`, recomputing every position (no cache).
    pub fn next_logits_full(&self, seq: &[i32]) -> Result<Vec<f32>> {
        self.check_ids(seq, "the sequence")?;
        no_grad(|| {
            let dev = self.device();
            let t = seq.len();
            let h = self.hidden_states(&Tensor::from_i32(dev, seq, &[1, t])?)?;
            Ok(self.head_logits(&h.slice(1, t - 1, 1)?)?.to_vec()?)
        })
    }

    /// Writes a Hugging Face folder `dir` (config.json, model.safetensors in
    /// `save_pretrained`'s layout: `transformer.*` names, no `lm_head.weight` since the head is
    /// tied; plus the tokenizer and generation files of `source` where given).
    pub fn save_folder(&self, dir: &Path, source: Option<&Path>) -> Result<()> {
        create_dir(dir)?;
        if let Some(src) = source {
            copy_companions(src, dir)?;
        }
        let mut tensors = Vec::new();
        for (name, t) in self.named_parameters() {
            if name.starts_with("transformer.wte.") {
                continue;
            }
            tensors.push((name, t.shape().to_vec(), t.to_vec()?));
        }
        // The true vocabulary only: padded rows are kiln's layout, not the model's.
        let (v, e) = (self.config.vocab_size, self.wte.embedding_dim());
        let mut wte = self.wte.to_vec()?;
        wte.truncate(v * e);
        tensors.push(("transformer.wte.weight".to_string(), vec![v, e], wte));
        let mut config = self.config.clone();
        config.extra.insert(
            "architectures".into(),
            serde_json::json!(["GPT2LMHeadModel"]),
        );
        config
            .extra
            .insert("dtype".into(), serde_json::json!("float32"));
        weights::save(&dir.join("model.safetensors"), &tensors)?;
        config.save(&dir.join("config.json"))
    }
}

/// The next token from `logits` under `sampling`.
fn choose(logits: &[f32], sampling: Sampling, rng: &mut Rng) -> i32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                if v > bv {
                    (i, v)
                } else {
                    (bi, bv)
                }
            })
            .0 as i32
    };
    match sampling {
        Sampling::Greedy => argmax(),
        Sampling::TopK { top_k, temperature } => {
            let mut idx: Vec<usize> = (0..logits.len()).collect();
            // Highest first; ties by index, so the order is the same on every run.
            idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
            if top_k > 0 {
                idx.truncate(top_k);
            }
            let m = logits[idx[0]] as f64;
            let w: Vec<f64> = idx
                .iter()
                .map(|&i| ((logits[i] as f64 - m) / temperature as f64).exp())
                .collect();
            let total: f64 = w.iter().sum();
            let mut u = rng.uniform() * total;
            for (k, &wi) in w.iter().enumerate() {
                if u < wi {
                    return idx[k] as i32;
                }
                u -= wi;
            }
            idx[idx.len() - 1] as i32
        }
    }
}

impl Module for Gpt2LMHeadModel {
    /// Logits `[B, T, vocab_size]` for i32 ids `[B, T]`.
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.logits(ids)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut v: Vec<(String, &dyn Module)> = vec![
            ("transformer.wte".into(), &self.wte),
            ("transformer.wpe".into(), &self.wpe),
            ("transformer.drop".into(), &self.drop),
        ];
        v.extend(indexed("transformer.h", &self.h));
        v.push(("transformer.ln_f".into(), &self.ln_f));
        v
    }
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        let mut v: Vec<(String, &mut dyn Module)> = vec![
            ("transformer.wte".into(), &mut self.wte),
            ("transformer.wpe".into(), &mut self.wpe),
            ("transformer.drop".into(), &mut self.drop),
        ];
        v.extend(indexed_mut("transformer.h", &mut self.h));
        v.push(("transformer.ln_f".into(), &mut self.ln_f));
        v
    }
}
