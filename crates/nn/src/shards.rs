//! Token shards as llm.c writes them, a dataset of fixed-length windows over them, and a seeded
//! loader that deals the windows out to steps, micro-batches and processes.
//!
//! The file format is llm.c's `.bin` (dev/data/data_common.py, version 1): a header of 256
//! little-endian i32s, then the tokens as little-endian u16s.
//!
//! | header word | meaning |
//! |---|---|
//! | 0 | magic 20240520 |
//! | 1 | version 1 (u16 tokens) |
//! | 2 | number of tokens |
//! | 3 | the vocabulary size the tokens were written for (kiln; llm.c leaves 0: unknown) |
//! | 4..256 | 0 |
//!
//! llm.c's shards load here and kiln's load in llm.c. A file whose magic, version or length do not
//! agree with its header is refused when it is opened, as is a token at or past the vocabulary of
//! the model that reads it (an embedding lookup past the table would read a zero row, never fail).
//!
//! A [`TokenDataset`] cuts the shards into windows of `context + 1` tokens starting every `context`
//! tokens (llm.c's and nanoGPT's layout: a window's first `context` tokens are the inputs, its last
//! `context` the targets), so it is an index-based dataset: [`TokenDataset::len`] windows, and a
//! batch of any indices ([`TokenDataset::get_batch`]). A [`TokenLoader`] orders them: a seeded
//! shuffle per epoch, dealt out in micro-batches to steps, their accumulation and the processes of
//! a data-parallel run, so a step's windows follow from (seed, step) alone and a resumed run reads
//! exactly what the uninterrupted one would have.

use crate::data::shuffled;
use crate::error::{NnError, Result};
use crate::serialize::write_atomically;
use std::path::{Path, PathBuf};

/// Header word 0 of a token shard (llm.c's).
pub const SHARD_MAGIC: i32 = 20240520;
/// Header word 1: tokens as u16.
pub const SHARD_VERSION: i32 = 1;
/// Header bytes (256 i32s).
pub const SHARD_HEADER_BYTES: usize = 1024;

fn err(path: &Path, message: impl Into<String>) -> NnError {
    NnError::Data {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// A shard's bytes for `tokens`, written for a vocabulary of `vocab` ids (each token must be below
/// it, and `vocab` at most 65,536, what u16 holds).
pub fn encode_shard(tokens: &[u32], vocab: usize) -> Result<Vec<u8>> {
    if vocab == 0 || vocab > 1 << 16 {
        return Err(NnError::Invalid(format!(
            "a u16 token shard holds vocabularies of 1 to 65,536 ids, not {vocab}"
        )));
    }
    if let Some((i, t)) = tokens
        .iter()
        .enumerate()
        .find(|(_, &t)| t as usize >= vocab)
    {
        return Err(NnError::Invalid(format!(
            "token {t} at position {i} is outside the vocabulary of {vocab}"
        )));
    }
    let n = i32::try_from(tokens.len()).map_err(|_| {
        NnError::Invalid(format!(
            "{} tokens: a shard holds at most {} (llm.c's header stores the count as i32)",
            tokens.len(),
            i32::MAX
        ))
    })?;
    let mut header = [0i32; SHARD_HEADER_BYTES / 4];
    header[0] = SHARD_MAGIC;
    header[1] = SHARD_VERSION;
    header[2] = n;
    header[3] = vocab as i32;
    let mut out = Vec::with_capacity(SHARD_HEADER_BYTES + 2 * tokens.len());
    out.extend(header.iter().flat_map(|w| w.to_le_bytes()));
    out.extend(tokens.iter().flat_map(|&t| (t as u16).to_le_bytes()));
    Ok(out)
}

/// Writes `tokens` as a shard at `path` (atomically: a reader never sees half a file).
pub fn write_shard(path: &Path, tokens: &[u32], vocab: usize) -> Result<()> {
    let bytes = encode_shard(tokens, vocab).map_err(|e| err(path, e.to_string()))?;
    write_atomically(path, &bytes)
}

/// A shard's tokens from its bytes, for a model of `vocab` ids: the magic, version and length
/// must agree with the header, and every token must be below `vocab` (and below the vocabulary
/// the header names, where it names one). The error says what was expected and what came.
pub fn decode_shard(bytes: &[u8], vocab: usize) -> std::result::Result<Vec<u16>, String> {
    if bytes.len() < SHARD_HEADER_BYTES {
        return Err(format!(
            "{} bytes: shorter than the {SHARD_HEADER_BYTES}-byte header of a token shard",
            bytes.len()
        ));
    }
    let word = |i: usize| i32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap());
    if word(0) != SHARD_MAGIC {
        return Err(format!(
            "not a token shard: magic {} where llm.c's format has {SHARD_MAGIC}",
            word(0)
        ));
    }
    if word(1) != SHARD_VERSION {
        return Err(format!(
            "token shard version {}: only version {SHARD_VERSION} (u16 tokens) is read",
            word(1)
        ));
    }
    let n =
        usize::try_from(word(2)).map_err(|_| format!("the header counts {} tokens", word(2)))?;
    let body = bytes.len() - SHARD_HEADER_BYTES;
    if body != 2 * n {
        return Err(format!(
            "the header counts {n} tokens ({} bytes after the header) but {body} bytes follow{}",
            2 * n,
            if body < 2 * n { ": truncated" } else { "" }
        ));
    }
    let written = word(3);
    if !(0..=1 << 16).contains(&written) {
        return Err(format!("the header names a vocabulary of {written}"));
    }
    if written as usize > vocab {
        return Err(format!(
            "written for a vocabulary of {written} ids, more than the model's {vocab}"
        ));
    }
    let tokens: Vec<u16> = bytes[SHARD_HEADER_BYTES..]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    if let Some((i, t)) = tokens
        .iter()
        .enumerate()
        .find(|(_, &t)| t as usize >= vocab)
    {
        return Err(format!(
            "token {t} at position {i} is outside the model's vocabulary of {vocab}"
        ));
    }
    Ok(tokens)
}

/// Reads a shard for a model of `vocab` ids (see [`decode_shard`]).
pub fn read_shard(path: &Path, vocab: usize) -> Result<Vec<u16>> {
    let bytes = std::fs::read(path).map_err(|e| err(path, e.to_string()))?;
    decode_shard(&bytes, vocab).map_err(|m| err(path, m))
}

/// Windows of `context + 1` tokens over one or more shards, starting every `context` tokens within
/// each shard (a window never spans two shards): an index-based dataset of `[context + 1]` rows.
#[derive(Clone, Debug)]
pub struct TokenDataset {
    shards: Vec<Vec<u16>>,
    /// Windows before each shard's first (a running total).
    starts: Vec<usize>,
    windows: usize,
    context: usize,
}

impl TokenDataset {
    /// The windows of the shards at `paths`, read for a model of `vocab` ids. Every shard must
    /// hold at least one window.
    pub fn open(paths: &[PathBuf], context: usize, vocab: usize) -> Result<TokenDataset> {
        let shards = paths
            .iter()
            .map(|p| read_shard(p, vocab))
            .collect::<Result<Vec<_>>>()?;
        for (p, s) in paths.iter().zip(&shards) {
            if s.len() < context + 1 {
                return Err(err(
                    p,
                    format!(
                        "{} tokens: fewer than one window of context {context} + 1",
                        s.len()
                    ),
                ));
            }
        }
        TokenDataset::from_shards(shards, context)
    }

    /// The windows of token sequences already in memory.
    pub fn from_shards(shards: Vec<Vec<u16>>, context: usize) -> Result<TokenDataset> {
        if context == 0 || shards.is_empty() {
            return Err(NnError::Invalid(format!(
                "a token dataset needs a context of at least 1 and a shard ({context}, {} shards)",
                shards.len()
            )));
        }
        let mut starts = Vec::with_capacity(shards.len());
        let mut windows = 0;
        for s in &shards {
            starts.push(windows);
            windows += s.len().saturating_sub(1) / context;
        }
        if windows == 0 {
            return Err(NnError::Invalid(format!(
                "no window of context {context} + 1 fits the shards"
            )));
        }
        Ok(TokenDataset {
            shards,
            starts,
            windows,
            context,
        })
    }

    /// Number of windows.
    pub fn len(&self) -> usize {
        self.windows
    }

    /// True when there is no window (never, once built).
    pub fn is_empty(&self) -> bool {
        self.windows == 0
    }

    /// Tokens per window, minus one: the inputs' length.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Tokens in all shards.
    pub fn tokens(&self) -> usize {
        self.shards.iter().map(Vec::len).sum()
    }

    /// Window `i`: `context + 1` tokens.
    pub fn window(&self, i: usize) -> Result<&[u16]> {
        if i >= self.windows {
            return Err(NnError::Invalid(format!(
                "window {i} of a dataset of {}",
                self.windows
            )));
        }
        let s = self.starts.partition_point(|&st| st <= i) - 1;
        let at = (i - self.starts[s]) * self.context;
        Ok(&self.shards[s][at..at + self.context + 1])
    }

    /// Windows `indices` as rows of a `[indices.len(), context + 1]` i32 batch.
    pub fn get_batch(&self, indices: &[usize]) -> Result<Vec<i32>> {
        let mut out = Vec::with_capacity(indices.len() * (self.context + 1));
        for &i in indices {
            out.extend(self.window(i)?.iter().map(|&t| t as i32));
        }
        Ok(out)
    }
}

/// Splits a `[rows, context + 1]` batch of windows into inputs and targets, each `[rows, context]`:
/// a window's first `context` tokens and its last `context`.
pub fn inputs_and_targets(batch: &[i32], context: usize) -> (Vec<i32>, Vec<i32>) {
    let w = context + 1;
    let rows = batch.len() / w;
    let mut x = Vec::with_capacity(rows * context);
    let mut y = Vec::with_capacity(rows * context);
    for r in batch.chunks_exact(w) {
        x.extend_from_slice(&r[..context]);
        y.extend_from_slice(&r[1..]);
    }
    (x, y)
}

/// Deals a dataset's windows out to training steps: epoch `e` visits every window once, in the
/// seeded order `shuffled(len, seed, e)`, and the windows of consecutive epochs form one stream.
/// Each step takes `micro_batches * world` micro-batches of `batch` windows from the stream: for
/// micro-batch `m` of step `s`, process `rank` takes stream positions from
/// `((s * micro_batches + m) * world + rank) * batch`. Every process and every micro-batch gets
/// different windows, the step's windows depend on (seed, step) alone, and a run at any
/// accumulation or world size consumes the stream in the same order.
#[derive(Clone, Debug)]
pub struct TokenLoader {
    len: usize,
    batch: usize,
    micro_batches: usize,
    rank: usize,
    world: usize,
    seed: u64,
    /// The permutation of the last epoch used.
    epoch: Option<(u64, Vec<usize>)>,
}

impl TokenLoader {
    /// A loader over `len` windows: micro-batches of `batch` windows, `micro_batches` of them per
    /// step and process, for process `rank` of `world`.
    pub fn new(
        len: usize,
        batch: usize,
        micro_batches: usize,
        seed: u64,
        rank: usize,
        world: usize,
    ) -> Result<TokenLoader> {
        if len == 0 || batch == 0 || micro_batches == 0 || world == 0 || rank >= world {
            return Err(NnError::Invalid(format!(
                "a token loader over {len} windows, batch {batch}, {micro_batches} micro-batches, \
                 rank {rank} of {world}: every count must be at least 1 and the rank below the world"
            )));
        }
        Ok(TokenLoader {
            len,
            batch,
            micro_batches,
            rank,
            world,
            seed,
            epoch: None,
        })
    }

    /// Windows per step over all processes and micro-batches.
    pub fn windows_per_step(&self) -> usize {
        self.batch * self.micro_batches * self.world
    }

    /// The order of epoch `e`.
    fn order(&mut self, e: u64) -> &[usize] {
        if self.epoch.as_ref().is_none_or(|(at, _)| *at != e) {
            let seed = self.seed ^ e.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            self.epoch = Some((e, shuffled(self.len, seed)));
        }
        &self.epoch.as_ref().unwrap().1
    }

    /// The window indices of micro-batch `micro` of step `step` (0-based) for this process.
    pub fn indices(&mut self, step: u64, micro: usize) -> Vec<usize> {
        let group = (step * self.micro_batches as u64 + micro as u64) * self.world as u64
            + self.rank as u64;
        let first = group * self.batch as u64;
        let len = self.len as u64;
        (first..first + self.batch as u64)
            .map(|p| self.order(p / len)[(p % len) as usize])
            .collect()
    }

    /// Epochs (fractional) the stream has covered after `steps` steps.
    pub fn epochs_after(&self, steps: u64) -> f64 {
        steps as f64 * self.windows_per_step() as f64 / self.len as f64
    }
}
