//! `SplitEmbedding`: an embedding table kept as blocks of rows, each under the adapter's storage
//! binding limit, so tables larger than one binding (GPT-2's 50,257 x 768 words are 154 MB,
//! lavapipe binds 128 MiB; wgpu caps any binding near 2 GiB) load and train on every adapter.
//! Lookups run one dispatch per block ([`kiln_ops::lookup`]), each block is its own parameter (so
//! its gradient and optimizer state are under the limit too), and [`SplitEmbedding::logits`]
//! multiplies by the table's transpose block by block for a tied output head. A table that fits
//! is one block: the plain embedding, with PyTorch's `padding_idx` and a fast backward.

use crate::error::{NnError, Result};
use crate::init::{with_default_rng, Init, Rng};
use crate::module::Module;
use kiln_graph::{Device, Tensor};
use kiln_ops::lookup::Lookup;
use kiln_ops::matmul::Matmul;

/// A [`SplitEmbedding`]'s size and options (PyTorch's `nn.Embedding` defaults: N(0, 1), no
/// padding row; blocks as large as the adapter binds).
///
/// ```no_run
/// # fn main() -> Result<(), kiln_nn::NnError> {
/// use kiln_nn::split_embedding::SplitEmbeddingConfig;
/// let dev = kiln_nn::Device::shared()?;
/// // 1,000 rows of 32 floats in blocks of at most 40,000 bytes: 4 blocks of 312 rows and one of 64.
/// let table = SplitEmbeddingConfig::new(1000, 32)
///     .with_max_block_bytes(40_000)
///     .init(&dev)?;
/// assert_eq!(table.blocks().len(), 4);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SplitEmbeddingConfig {
    /// Rows (the vocabulary).
    pub num_embeddings: usize,
    /// Width of each row.
    pub embedding_dim: usize,
    /// The row that gets no gradient (PyTorch's `padding_idx`).
    pub padding_idx: Option<usize>,
    /// Largest block in bytes; None: the adapter's storage binding limit.
    pub max_block_bytes: Option<u64>,
    /// How the table starts.
    pub init: Init,
}

impl SplitEmbeddingConfig {
    /// A table of `num_embeddings` rows of width `embedding_dim`.
    pub fn new(num_embeddings: usize, embedding_dim: usize) -> Self {
        SplitEmbeddingConfig {
            num_embeddings,
            embedding_dim,
            padding_idx: None,
            max_block_bytes: None,
            init: Init::Normal {
                mean: 0.0,
                std: 1.0,
            },
        }
    }
    /// The row that gets no gradient.
    pub fn with_padding_idx(mut self, idx: Option<usize>) -> Self {
        self.padding_idx = idx;
        self
    }
    /// A block size below the adapter's limit (tests; memory planning).
    pub fn with_max_block_bytes(mut self, bytes: u64) -> Self {
        self.max_block_bytes = Some(bytes);
        self
    }
    /// How the table starts.
    pub fn with_init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }

    /// Rows per block on `dev`.
    pub fn rows_per_block(&self, dev: &Device) -> Result<usize> {
        let l = dev.limits();
        let limit = l.max_storage_buffer_binding_size.min(l.max_buffer_size);
        let bytes = self.max_block_bytes.map_or(limit, |b| b.min(limit));
        let row = (self.embedding_dim.max(1) * 4) as u64;
        if bytes < row {
            return Err(NnError::Config(format!(
                "one row of {} floats ({row} bytes) is larger than a block of {bytes} bytes",
                self.embedding_dim
            )));
        }
        Ok((bytes / row) as usize)
    }

    /// The table drawn from this thread's default generator.
    pub fn init(&self, dev: &Device) -> Result<SplitEmbedding> {
        with_default_rng(|rng| self.init_with(dev, rng))
    }

    /// The table drawn from `rng` (row-major, block after block).
    pub fn init_with(&self, dev: &Device, rng: &mut Rng) -> Result<SplitEmbedding> {
        let shape = [self.num_embeddings, self.embedding_dim];
        let (fan_in, fan_out) = crate::init::fans(&shape);
        let v = self.init.values(
            rng,
            self.num_embeddings * self.embedding_dim,
            fan_in,
            fan_out,
        );
        self.from_rows(dev, &v)
    }

    /// The table holding `values` (`num_embeddings * embedding_dim`, row-major).
    pub fn from_rows(&self, dev: &Device, values: &[f32]) -> Result<SplitEmbedding> {
        let (vocab, dim) = (self.num_embeddings, self.embedding_dim);
        if vocab == 0 || dim == 0 {
            return Err(NnError::Config(format!(
                "embedding of [{vocab}, {dim}]: both must be positive"
            )));
        }
        if values.len() != vocab * dim {
            return Err(NnError::Config(format!(
                "embedding of [{vocab}, {dim}] given {} values",
                values.len()
            )));
        }
        if self.padding_idx.is_some_and(|p| p >= vocab) {
            return Err(NnError::Config(format!(
                "padding_idx {:?} outside the {vocab} rows",
                self.padding_idx
            )));
        }
        let per = self.rows_per_block(dev)?;
        let mut blocks = Vec::new();
        let mut at = 0;
        while at < vocab {
            let rows = per.min(vocab - at);
            let t = Tensor::from_f32(dev, &values[at * dim..(at + rows) * dim], &[rows, dim])?;
            blocks.push(t.requires_grad_(true)?);
            at += rows;
        }
        Ok(SplitEmbedding {
            blocks,
            dim,
            padding_idx: self.padding_idx,
        })
    }
}

/// An embedding table `[num_embeddings, dim]` kept as blocks of consecutive rows (one block where
/// it fits one storage binding).
pub struct SplitEmbedding {
    blocks: Vec<Tensor>,
    dim: usize,
    padding_idx: Option<usize>,
}

impl SplitEmbedding {
    /// The blocks, first rows first (each a parameter).
    pub fn blocks(&self) -> &[Tensor] {
        &self.blocks
    }
    /// Rows.
    pub fn num_embeddings(&self) -> usize {
        self.blocks.iter().map(|b| b.shape()[0]).sum()
    }
    /// Width of a row.
    pub fn embedding_dim(&self) -> usize {
        self.dim
    }
    /// The row that gets no gradient.
    pub fn padding_idx(&self) -> Option<usize> {
        self.padding_idx
    }

    /// The whole table, row-major (read back block by block).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        let mut v = Vec::with_capacity(self.num_embeddings() * self.dim);
        for b in &self.blocks {
            v.extend(b.to_vec()?);
        }
        Ok(v)
    }

    /// Overwrites the table from `values` (row-major, `num_embeddings * dim`).
    pub fn copy_from_slice(&self, values: &[f32]) -> Result<()> {
        if values.len() != self.num_embeddings() * self.dim {
            return Err(NnError::Config(format!(
                "embedding of [{}, {}] given {} values",
                self.num_embeddings(),
                self.dim,
                values.len()
            )));
        }
        let mut at = 0;
        for b in &self.blocks {
            b.copy_from_slice(&values[at..at + b.numel()])?;
            at += b.numel();
        }
        Ok(())
    }

    /// The whole gradient, row-major, or None before a backward pass reached the table.
    pub fn grad_to_vec(&self) -> Result<Option<Vec<f32>>> {
        let mut v = Vec::new();
        for b in &self.blocks {
            match b.grad() {
                Some(g) => v.extend(g.to_f32(b.device())?),
                None => return Ok(None),
            }
        }
        Ok(Some(v))
    }

    /// h `[..., dim]` times the table's transpose: `[..., num_embeddings]` scores, block by
    /// block (a language model's output head tied to its input embedding).
    pub fn logits(&self, h: &Tensor) -> Result<Tensor> {
        let shape = h.shape().to_vec();
        let Some((&dim, lead)) = shape.split_last().filter(|(&d, _)| d == self.dim) else {
            return Err(NnError::Config(format!(
                "tied head: expected [..., {}], got {shape:?}",
                self.dim
            )));
        };
        let rows: usize = lead.iter().product();
        let h2 = h.reshape(&[rows, dim])?;
        let parts: Vec<Tensor> = self
            .blocks
            .iter()
            .map(|b| h2.matmul_with(b, Matmul::new().transpose_b(true), None))
            .collect::<std::result::Result<_, _>>()?;
        let y = if parts.len() == 1 {
            parts.into_iter().next().unwrap()
        } else {
            Tensor::concat(&parts.iter().collect::<Vec<_>>(), 1)?
        };
        let mut out = lead.to_vec();
        out.push(self.num_embeddings());
        Ok(y.reshape(&out)?)
    }
}

impl Module for SplitEmbedding {
    /// i32 ids of any shape -> that shape + `[dim]`; an id outside the table gives a zero row
    /// (the kernel never reads out of bounds; check ids where users supply them).
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut inputs: Vec<&Tensor> = self.blocks.iter().collect();
        inputs.push(ids);
        Ok(Tensor::apply(
            Lookup {
                padding_idx: self.padding_idx,
            },
            &inputs,
        )?)
    }
    /// `weight` for a table in one block (PyTorch's name); `weight.block0`, `weight.block1`...
    /// for a split one.
    fn own_parameters(&self) -> Vec<(String, Tensor)> {
        if self.blocks.len() == 1 {
            return vec![("weight".into(), self.blocks[0].clone())];
        }
        self.blocks
            .iter()
            .enumerate()
            .map(|(i, b)| (format!("weight.block{i}"), b.clone()))
            .collect()
    }
}
