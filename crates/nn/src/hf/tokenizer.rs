//! `tokenizer.json` through Hugging Face's `tokenizers` crate (the same Rust code `transformers`'
//! fast tokenizers run): WordPiece, byte-level BPE or whatever the file describes, with
//! truncation to a model's length and padding to the batch's longest sentence, attention masks
//! and token type ids.
//!
//! The padding and truncation a file carries (all-MiniLM-L6-v2's pads every sentence to 128) are
//! replaced: batches are padded to their longest sentence, as sentence-transformers does, and
//! truncated to the length set with [`Tokenizer::with_max_length`].

use crate::error::{NnError, Result};
use std::path::{Path, PathBuf};
use tokenizers::{TruncationParams, TruncationStrategy};

/// Token ids of a batch of texts, right-padded to the longest, row-major `[batch, seq]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Token ids.
    pub input_ids: Vec<i32>,
    /// 1 for a real token, 0 for padding.
    pub attention_mask: Vec<i32>,
    /// Segment ids (0 for a single sentence).
    pub token_type_ids: Vec<i32>,
    /// Texts.
    pub batch_size: usize,
    /// Positions per text (the longest text's length).
    pub seq_len: usize,
    /// How many texts were cut to the maximum length.
    pub truncated: usize,
}

impl Batch {
    /// A batch from token ids per text (no special tokens added), right-padded with `pad_id`.
    pub fn from_ids(rows: &[Vec<i32>], pad_id: i32) -> Result<Batch> {
        let seq_len = rows.iter().map(Vec::len).max().unwrap_or(0);
        if rows.is_empty() || seq_len == 0 {
            return Err(NnError::Input("an empty batch".into()));
        }
        let mut b = Batch {
            input_ids: Vec::with_capacity(rows.len() * seq_len),
            attention_mask: Vec::with_capacity(rows.len() * seq_len),
            token_type_ids: vec![0; rows.len() * seq_len],
            batch_size: rows.len(),
            seq_len,
            truncated: 0,
        };
        for r in rows {
            b.input_ids.extend(r);
            b.input_ids
                .extend(std::iter::repeat_n(pad_id, seq_len - r.len()));
            b.attention_mask.extend(std::iter::repeat_n(1, r.len()));
            b.attention_mask
                .extend(std::iter::repeat_n(0, seq_len - r.len()));
        }
        Ok(b)
    }

    /// Each text's length without padding.
    pub fn lengths(&self) -> Vec<usize> {
        self.attention_mask
            .chunks(self.seq_len.max(1))
            .map(|r| r.iter().filter(|&&m| m != 0).count())
            .collect()
    }

    /// Rows `range` of the batch, still padded to this batch's length.
    pub fn rows(&self, range: std::ops::Range<usize>) -> Batch {
        let t = self.seq_len;
        let cut = |v: &[i32]| v[range.start * t..range.end * t].to_vec();
        Batch {
            input_ids: cut(&self.input_ids),
            attention_mask: cut(&self.attention_mask),
            token_type_ids: cut(&self.token_type_ids),
            batch_size: range.len(),
            seq_len: t,
            truncated: 0,
        }
    }
}

/// A Hugging Face tokenizer read from `tokenizer.json`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    max_length: Option<usize>,
    pad_id: i32,
}

fn tok_err(path: &Path, message: impl Into<String>) -> NnError {
    NnError::Tokenizer {
        path: path.display().to_string(),
        message: message.into(),
    }
}

impl Tokenizer {
    /// Reads `path` (a tokenizer.json, or a folder holding one), dropping the padding and
    /// truncation settings the file carries.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let path = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path.to_path_buf()
        };
        if !path.is_file() {
            return Err(tok_err(&path, "no such file"));
        }
        let mut inner = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| tok_err(&path, format!("not a tokenizer.json: {e}")))?;
        let pad_id = inner
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| {
                ["[PAD]", "<pad>", "<|endoftext|>"]
                    .iter()
                    .find_map(|t| inner.token_to_id(t))
            })
            .unwrap_or(0);
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| tok_err(&path, e.to_string()))?;
        Ok(Tokenizer {
            inner,
            path,
            max_length: None,
            pad_id: pad_id as i32,
        })
    }

    /// The tokenizer of a model folder (`dir/tokenizer.json`), checked against the model's
    /// vocabulary (`vocab_size` from its config) and truncating to `max_length` tokens (the
    /// model's positions; sentence-transformers' `max_seq_length` where the folder has
    /// `sentence_bert_config.json` and it is smaller).
    pub fn for_model(dir: &Path, vocab_size: usize, max_length: usize) -> Result<Tokenizer> {
        let tok = Tokenizer::from_file(dir)?;
        tok.check_vocab(vocab_size)?;
        let st_max = std::fs::read_to_string(dir.join("sentence_bert_config.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| v.get("max_seq_length").and_then(|m| m.as_u64()));
        let max = st_max.map_or(max_length, |m| (m as usize).min(max_length));
        tok.with_max_length(max)
    }

    /// Truncates every text to `max_length` tokens, special tokens included.
    pub fn with_max_length(mut self, max_length: usize) -> Result<Tokenizer> {
        let params = TruncationParams {
            max_length,
            strategy: TruncationStrategy::LongestFirst,
            ..Default::default()
        };
        self.inner
            .with_truncation(Some(params))
            .map_err(|e| tok_err(&self.path, e.to_string()))?;
        self.max_length = Some(max_length);
        Ok(self)
    }

    /// The truncation length, if set.
    pub fn max_length(&self) -> Option<usize> {
        self.max_length
    }

    /// Tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The padding id (the file's, else `[PAD]`'s, `<pad>`'s or `<|endoftext|>`'s, else 0).
    pub fn pad_id(&self) -> i32 {
        self.pad_id
    }

    /// The id of a token, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<i32> {
        self.inner.token_to_id(token).map(|i| i as i32)
    }

    /// An error unless the tokenizer's vocabulary is the model's (a tokenizer.json from another
    /// model would feed it ids that mean something else, or that its embedding does not have).
    pub fn check_vocab(&self, model_vocab_size: usize) -> Result<()> {
        let n = self.vocab_size();
        if n != model_vocab_size {
            return Err(tok_err(
                &self.path,
                format!(
                    "{n} tokens, but the model's config.json has vocab_size {model_vocab_size}: \
                     a tokenizer from another model?"
                ),
            ));
        }
        Ok(())
    }

    /// The ids of one text (with the tokenizer's special tokens, e.g. BERT's `[CLS]` and `[SEP]`,
    /// where `add_special_tokens`), truncated to the maximum length if set.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<i32>> {
        let e = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| tok_err(&self.path, e.to_string()))?;
        Ok(e.get_ids().iter().map(|&i| i as i32).collect())
    }

    /// Texts with special tokens, truncated to the maximum length, right-padded to the longest,
    /// with attention masks and token type ids.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Batch> {
        if texts.is_empty() {
            return Err(NnError::Input("an empty batch".into()));
        }
        let mut encs = Vec::with_capacity(texts.len());
        let mut truncated = 0;
        for t in texts {
            let e = self
                .inner
                .encode(*t, true)
                .map_err(|e| tok_err(&self.path, e.to_string()))?;
            truncated += usize::from(!e.get_overflowing().is_empty());
            encs.push(e);
        }
        let rows: Vec<Vec<i32>> = encs
            .iter()
            .map(|e| e.get_ids().iter().map(|&i| i as i32).collect())
            .collect();
        let mut b = Batch::from_ids(&rows, self.pad_id)?;
        for (i, e) in encs.iter().enumerate() {
            for (j, &t) in e.get_type_ids().iter().enumerate() {
                b.token_type_ids[i * b.seq_len + j] = t as i32;
            }
        }
        b.truncated = truncated;
        Ok(b)
    }

    /// Trains a byte-level BPE as GPT-2's (bytes as the initial alphabet, so every text encodes;
    /// GPT-2's pre-tokenizer regex; no prefix space; `<|endoftext|>` as its one special token)
    /// with the `tokenizers` library's trainer on `files`, to `vocab_size` tokens at most (fewer
    /// where the text has no more pairs seen twice), and writes it to `out` (a tokenizer.json
    /// that `transformers` and [`Tokenizer::from_file`] read).
    pub fn train_byte_level_bpe(
        files: &[PathBuf],
        vocab_size: usize,
        out: &Path,
    ) -> Result<Tokenizer> {
        use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        use tokenizers::{
            AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper,
            PreTokenizerWrapper, TokenizerBuilder,
        };
        if vocab_size < 257 {
            return Err(tok_err(
                out,
                format!(
                    "a byte-level BPE needs at least 257 tokens (256 bytes and <|endoftext|>),                      not {vocab_size}"
                ),
            ));
        }
        let mut trainer = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .min_frequency(2)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .special_tokens(vec![AddedToken::from("<|endoftext|>", true)])
            .build();
        let byte_level = ByteLevel::default().add_prefix_space(false);
        let mut tok = TokenizerBuilder::<
            BPE,
            NormalizerWrapper,
            PreTokenizerWrapper,
            PostProcessorWrapper,
            DecoderWrapper,
        >::new()
        .with_model(BPE::default())
        .with_pre_tokenizer(Some(byte_level.into()))
        .with_post_processor(Some(byte_level.into()))
        .with_decoder(Some(byte_level.into()))
        .build()
        .map_err(|e| tok_err(out, e.to_string()))?;
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        for f in files {
            if !f.is_file() {
                return Err(tok_err(f, "no such file to train a tokenizer on"));
            }
        }
        tok.train_from_files(&mut trainer, names)
            .map_err(|e| tok_err(out, format!("training: {e}")))?;
        tok.save(out, false)
            .map_err(|e| tok_err(out, format!("writing: {e}")))?;
        Tokenizer::from_file(out)
    }

    /// Text of ids (lossy UTF-8 where byte-level tokens split a character, as the tokenizers
    /// library decodes).
    pub fn decode(&self, ids: &[i32], skip_special_tokens: bool) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i.max(0) as u32).collect();
        self.inner
            .decode(&ids, skip_special_tokens)
            .map_err(|e| tok_err(&self.path, e.to_string()))
    }
}
