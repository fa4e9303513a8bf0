//! `config.json` as typed configs with `transformers`' defaults. Fields kiln does not use are
//! kept (`extra`) and written back, so a saved folder's config says everything the original did.

use crate::error::{NnError, Result};
use crate::hf::file_err;
use crate::transformer::Activation;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| file_err(path, format!("not a valid config: {e}")))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| file_err(path, e.to_string()))?;
    crate::serialize::write_atomically(path, format!("{text}\n").as_bytes())?;
    Ok(())
}

fn config_err(path: &Path, field: &str, message: impl Into<String>) -> NnError {
    NnError::ConfigField {
        path: path.display().to_string(),
        field: field.into(),
        message: message.into(),
    }
}

/// A `hidden_act` / `activation_function` value as kiln's activation.
pub fn activation(path: &Path, field: &str, name: &str) -> Result<Activation> {
    match name {
        // transformers' "gelu" is the exact erf form; "gelu_new", "gelu_pytorch_tanh" and
        // "gelu_fast" are the tanh approximation (equal up to float rounding).
        "gelu" => Ok(Activation::Gelu),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
        "relu" => Ok(Activation::Relu),
        other => Err(config_err(
            path,
            field,
            format!("activation {other:?} is not supported (gelu, gelu_new, relu are)"),
        )),
    }
}

fn d_vocab() -> usize {
    30522
}
fn d_hidden() -> usize {
    768
}
fn d_layers() -> usize {
    12
}
fn d_intermediate() -> usize {
    3072
}
fn d_gelu() -> String {
    "gelu".into()
}
fn d_dropout() -> f32 {
    0.1
}
fn d_positions() -> usize {
    512
}
fn d_type_vocab() -> usize {
    2
}
fn d_bert_eps() -> f64 {
    1e-12
}
fn d_pad() -> Option<usize> {
    Some(0)
}

/// A BERT model's `config.json` (`transformers.BertConfig`; defaults are bert-base's).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BertConfig {
    /// Word-piece vocabulary size.
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    /// Model width.
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    /// Encoder layers.
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    /// Attention heads.
    #[serde(default = "d_layers")]
    pub num_attention_heads: usize,
    /// Feed-forward width.
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    /// Feed-forward activation ("gelu" is the exact erf form).
    #[serde(default = "d_gelu")]
    pub hidden_act: String,
    /// Dropout after embeddings, attention output and feed-forward.
    #[serde(default = "d_dropout")]
    pub hidden_dropout_prob: f32,
    /// Dropout on the attention probabilities.
    #[serde(default = "d_dropout")]
    pub attention_probs_dropout_prob: f32,
    /// Learned positions.
    #[serde(default = "d_positions")]
    pub max_position_embeddings: usize,
    /// Segment (token type) vocabulary.
    #[serde(default = "d_type_vocab")]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "d_bert_eps")]
    pub layer_norm_eps: f64,
    /// The padding token (its embedding row gets no gradient).
    #[serde(default = "d_pad")]
    pub pad_token_id: Option<usize>,
    /// "absolute" is the one kiln implements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position_embedding_type: Option<String>,
    /// "bert".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    /// Every other field, kept as it was.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for BertConfig {
    /// BERT-base's shape (12 layers, 12 heads, width 768, 30,522 words), as
    /// `transformers.BertConfig()`.
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl BertConfig {
    /// Reads and checks `path` (a config.json).
    pub fn from_file(path: &Path) -> Result<BertConfig> {
        let c: BertConfig = read_json(path)?;
        c.validate(path)?;
        Ok(c)
    }
    /// Writes it as config.json.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_json(path, self)
    }
    /// Checks what kiln's BERT needs; errors name the field.
    pub fn validate(&self, path: &Path) -> Result<()> {
        if let Some(t) = self.model_type.as_deref().filter(|t| *t != "bert") {
            return Err(config_err(
                path,
                "model_type",
                format!("{t:?} is not a BERT config"),
            ));
        }
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if v == 0 {
                return Err(config_err(path, field, "must be positive"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(config_err(
                path,
                "num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        if let Some(p) = self.pad_token_id.filter(|&p| p >= self.vocab_size) {
            return Err(config_err(
                path,
                "pad_token_id",
                format!("{p} is outside vocab_size {}", self.vocab_size),
            ));
        }
        match self.position_embedding_type.as_deref() {
            None | Some("absolute") => {}
            Some(other) => {
                return Err(config_err(
                    path,
                    "position_embedding_type",
                    format!("{other:?} is not supported (absolute is)"),
                ))
            }
        }
        activation(path, "hidden_act", &self.hidden_act)?;
        Ok(())
    }
}

fn d_gpt2_vocab() -> usize {
    50257
}
fn d_n_positions() -> usize {
    1024
}
fn d_gelu_new() -> String {
    "gelu_new".into()
}
fn d_gpt2_eps() -> f64 {
    1e-5
}
fn d_true() -> bool {
    true
}
fn d_eot() -> Option<i64> {
    Some(50256)
}

/// A GPT-2 model's `config.json` (`transformers.GPT2Config`; defaults are GPT-2 small's).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Gpt2Config {
    /// BPE vocabulary size.
    #[serde(default = "d_gpt2_vocab")]
    pub vocab_size: usize,
    /// Learned positions (the longest context).
    #[serde(default = "d_n_positions")]
    pub n_positions: usize,
    /// Model width.
    #[serde(default = "d_hidden")]
    pub n_embd: usize,
    /// Blocks.
    #[serde(default = "d_layers")]
    pub n_layer: usize,
    /// Attention heads.
    #[serde(default = "d_layers")]
    pub n_head: usize,
    /// Feed-forward width (None: 4 * n_embd).
    #[serde(default)]
    pub n_inner: Option<usize>,
    /// Feed-forward activation ("gelu_new" is the tanh form).
    #[serde(default = "d_gelu_new")]
    pub activation_function: String,
    /// Dropout after attention and feed-forward.
    #[serde(default = "d_dropout")]
    pub resid_pdrop: f32,
    /// Dropout after the embeddings.
    #[serde(default = "d_dropout")]
    pub embd_pdrop: f32,
    /// Dropout on the attention probabilities.
    #[serde(default = "d_dropout")]
    pub attn_pdrop: f32,
    /// LayerNorm epsilon.
    #[serde(default = "d_gpt2_eps")]
    pub layer_norm_epsilon: f64,
    /// Scores scaled by 1/sqrt(head_dim).
    #[serde(default = "d_true")]
    pub scale_attn_weights: bool,
    /// Scores also scaled by 1/(layer index + 1).
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Begin-of-text token.
    #[serde(default = "d_eot")]
    pub bos_token_id: Option<i64>,
    /// End-of-text token (generation stops there).
    #[serde(default = "d_eot")]
    pub eos_token_id: Option<i64>,
    /// The LM head shares the word embedding (kiln supports only tied heads).
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
    /// "gpt2".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    /// Every other field, kept as it was.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for Gpt2Config {
    /// GPT-2 small (124M): 12 layers, 12 heads, width 768, context 1,024, 50,257 words, dropout
    /// 0.1, the tanh GELU, as `transformers.GPT2Config()`.
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl Gpt2Config {
    /// A GPT-2 of this shape, GPT-2 small's settings otherwise (dropout 0.1, the tanh GELU,
    /// LayerNorm epsilon 1e-5, a tied head).
    pub fn new(
        vocab_size: usize,
        n_positions: usize,
        n_embd: usize,
        n_layer: usize,
        n_head: usize,
    ) -> Self {
        Gpt2Config {
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            ..Gpt2Config::default()
        }
    }
    /// The same dropout `p` after the embeddings, on the attention probabilities and on each
    /// block's two outputs (GPT-2 uses 0.1 for all three).
    pub fn with_dropout(mut self, p: f32) -> Self {
        self.resid_pdrop = p;
        self.embd_pdrop = p;
        self.attn_pdrop = p;
        self
    }
    /// Reads and checks `path` (a config.json).
    pub fn from_file(path: &Path) -> Result<Gpt2Config> {
        let c: Gpt2Config = read_json(path)?;
        c.validate(path)?;
        Ok(c)
    }
    /// Writes it as config.json.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_json(path, self)
    }
    /// Feed-forward width.
    pub fn inner(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }
    /// Checks what kiln's GPT-2 needs; errors name the field.
    pub fn validate(&self, path: &Path) -> Result<()> {
        if let Some(t) = self.model_type.as_deref().filter(|t| *t != "gpt2") {
            return Err(config_err(
                path,
                "model_type",
                format!("{t:?} is not a GPT-2 config"),
            ));
        }
        for (field, v) in [
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_head", self.n_head),
            ("n_inner", self.inner()),
        ] {
            if v == 0 {
                return Err(config_err(path, field, "must be positive"));
            }
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(config_err(
                path,
                "n_head",
                format!("{} does not divide n_embd {}", self.n_head, self.n_embd),
            ));
        }
        if !self.tie_word_embeddings {
            return Err(config_err(
                path,
                "tie_word_embeddings",
                "false (an untied LM head) is not supported",
            ));
        }
        if let Some(true) = self
            .extra
            .get("add_cross_attention")
            .and_then(|v| v.as_bool())
        {
            return Err(config_err(
                path,
                "add_cross_attention",
                "cross-attention blocks are not supported",
            ));
        }
        activation(path, "activation_function", &self.activation_function)?;
        Ok(())
    }
}
