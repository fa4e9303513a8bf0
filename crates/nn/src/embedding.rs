//! `Embedding`: a lookup table, as PyTorch's `nn.Embedding`.

use crate::error::Result;
use crate::init::{with_default_rng, Init, Rng};
use crate::module::Module;
use kiln_graph::{Device, Tensor};

/// An [`Embedding`]'s size and initialisation (PyTorch's default: N(0, 1)).
#[derive(Clone, Debug)]
pub struct EmbeddingConfig {
    /// Rows (the vocabulary).
    pub num_embeddings: usize,
    /// Width of each row.
    pub embedding_dim: usize,
    /// How the table starts.
    pub init: Init,
}

impl EmbeddingConfig {
    /// A table of `num_embeddings` rows of width `embedding_dim`.
    pub fn new(num_embeddings: usize, embedding_dim: usize) -> Self {
        EmbeddingConfig {
            num_embeddings,
            embedding_dim,
            init: Init::Normal {
                mean: 0.0,
                std: 1.0,
            },
        }
    }
    /// How the table starts.
    pub fn with_init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }
    /// The table, drawn from this thread's default generator.
    pub fn init(&self, dev: &Device) -> Result<Embedding> {
        with_default_rng(|rng| self.init_with(dev, rng))
    }
    /// The table, drawn from `rng`.
    pub fn init_with(&self, dev: &Device, rng: &mut Rng) -> Result<Embedding> {
        let shape = [self.num_embeddings, self.embedding_dim];
        Ok(Embedding {
            weight: self.init.param(dev, rng, &shape, &shape)?,
        })
    }
}

/// A lookup table [num_embeddings, embedding_dim].
pub struct Embedding {
    /// [num_embeddings, embedding_dim]
    pub weight: Tensor,
}

impl Module for Embedding {
    /// i32 ids of any shape -> that shape + `[embedding_dim]`. Ids are checked on the device
    /// side to stay in bounds; see [`kiln_ops::lookup::check_ids_in_range`] for a host check.
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.weight.embedding(ids)?)
    }
    fn own_parameters(&self) -> Vec<(String, Tensor)> {
        vec![("weight".into(), self.weight.clone())]
    }
}
