//! Index-based datasets and the loader that deals them out in batches.
//!
//! A [`Dataset`] is anything that holds `len()` examples and reads any of them by index into a
//! batch ([`Dataset::get_batch`]): in-memory arrays ([`ArrayDataset`]), MNIST's IDX files
//! ([`kiln_nn::data::Mnist`]) and token shards ([`kiln_nn::shards::TokenDataset`], whose examples
//! are windows of token ids) implement it. A [`DataLoader`] orders a dataset's examples for each
//! epoch (a seeded shuffle, the same in every process), cuts them into global batches, hands
//! each process of a data-parallel run its share of every batch ([`Share`]), and reads the
//! batches on a background thread while the caller trains on the previous one.

use crate::error::{Result, TrainError};
use crate::parallel::{epoch_batches, Share};
use kiln_graph::{Device, Tensor};
use kiln_nn::data::{gather_rows, Mnist};
use kiln_nn::shards::TokenDataset;
use std::sync::mpsc;

/// What a dataset's examples are trained towards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    /// One class id per example (cross-entropy).
    Classes,
    /// `width` values per example (MSE, binary cross-entropy).
    Values(usize),
    /// One class id per input position (a language model's next tokens).
    Tokens,
}

/// A batch's inputs, row-major.
#[derive(Clone, Debug, PartialEq)]
pub enum Inputs {
    /// Values (images, features).
    F32(Vec<f32>),
    /// Ids (tokens).
    I32(Vec<i32>),
}

impl Inputs {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Inputs::F32(v) => v.len(),
            Inputs::I32(v) => v.len(),
        }
    }
    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A new tensor of `shape` holding them.
    pub fn upload(&self, dev: &Device, shape: &[usize]) -> Result<Tensor> {
        Ok(match self {
            Inputs::F32(v) => Tensor::from_f32(dev, v, shape)?,
            Inputs::I32(v) => Tensor::from_i32(dev, v, shape)?,
        })
    }
    /// Writes them into `to` (a tensor [`Inputs::upload`] made for a batch of this size).
    pub fn write(&self, to: &Tensor) -> Result<()> {
        match self {
            Inputs::F32(v) => to.copy_from_slice(v)?,
            Inputs::I32(v) => to.copy_from_slice(v)?,
        }
        Ok(())
    }
}

/// A batch's targets, in the form the losses take them.
#[derive(Clone, Debug, PartialEq)]
pub enum BatchTargets {
    /// One class id per example, or per position for [`TargetKind::Tokens`].
    Classes(Vec<i32>),
    /// `width` values per example, row-major.
    Values(Vec<f32>, usize),
}

impl BatchTargets {
    /// A new tensor holding them: `[n]` class ids, or `[n, width]` values.
    pub fn upload(&self, dev: &Device) -> Result<Tensor> {
        Ok(match self {
            BatchTargets::Classes(y) => Tensor::from_i32(dev, y, &[y.len()])?,
            BatchTargets::Values(y, w) => Tensor::from_f32(dev, y, &[y.len() / w, *w])?,
        })
    }
    /// Writes them into `to` (a tensor [`BatchTargets::upload`] made for a batch of this size).
    pub fn write(&self, to: &Tensor) -> Result<()> {
        match self {
            BatchTargets::Classes(y) => to.copy_from_slice(y)?,
            BatchTargets::Values(y, _) => to.copy_from_slice(y)?,
        }
        Ok(())
    }
}

/// Examples read by index (PyTorch's map-style `Dataset`). Implementations are shared with the
/// loader's background thread, hence `Sync`.
pub trait Dataset: Sync {
    /// Number of examples.
    fn len(&self) -> usize;
    /// True when there are no examples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The shape of one example's inputs, e.g. `[1, 28, 28]`.
    fn shape(&self) -> Vec<usize>;
    /// What the examples are trained towards.
    fn targets(&self) -> TargetKind;
    /// Examples `indices`, in that order: their inputs (`indices.len()` times `shape()`) and
    /// targets. An index at or past `len()` is an error.
    fn get_batch(&self, indices: &[usize]) -> Result<(Inputs, BatchTargets)>;
    /// Checks the data is whole (lengths agree) before a run uses it.
    fn check(&self) -> Result<()> {
        Ok(())
    }
    /// `[n, shape...]`: the inputs' shape for a batch of `n`.
    fn batch_shape(&self, n: usize) -> Vec<usize> {
        std::iter::once(n).chain(self.shape()).collect()
    }
}

fn out_of_range(indices: &[usize], len: usize) -> Result<()> {
    match indices.iter().find(|&&i| i >= len) {
        Some(i) => Err(TrainError::Training(format!(
            "example {i} asked for from a dataset of {len} (0..{len})"
        ))),
        None => Ok(()),
    }
}

/// Targets of an [`ArrayDataset`].
#[derive(Clone, Copy, Debug)]
pub enum Targets<'a> {
    /// One class id per example (cross-entropy).
    Classes(&'a [i32]),
    /// `width` values per example (MSE, binary cross-entropy).
    Values(&'a [f32], usize),
}

/// Examples as a row-major `[n, shape...]` f32 array and their targets, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct ArrayDataset<'a> {
    /// `[n * prod(shape)]` values.
    pub x: &'a [f32],
    /// Shape of one example, e.g. `[1, 28, 28]`.
    pub shape: &'a [usize],
    /// The targets.
    pub y: Targets<'a>,
}

impl<'a> ArrayDataset<'a> {
    /// Examples with class labels.
    pub fn classes(x: &'a [f32], shape: &'a [usize], y: &'a [i32]) -> Self {
        ArrayDataset {
            x,
            shape,
            y: Targets::Classes(y),
        }
    }
    /// Examples with `width` target values each.
    pub fn values(x: &'a [f32], shape: &'a [usize], y: &'a [f32], width: usize) -> Self {
        ArrayDataset {
            x,
            shape,
            y: Targets::Values(y, width),
        }
    }
    fn width(&self) -> usize {
        self.shape.iter().product()
    }
    /// Number of examples (as many as there are targets).
    pub fn len(&self) -> usize {
        match self.y {
            Targets::Classes(y) => y.len(),
            Targets::Values(y, w) => y.len() / w.max(1),
        }
    }
    /// True when there are no examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Dataset for ArrayDataset<'_> {
    fn len(&self) -> usize {
        ArrayDataset::len(self)
    }
    fn shape(&self) -> Vec<usize> {
        self.shape.to_vec()
    }
    fn targets(&self) -> TargetKind {
        match self.y {
            Targets::Classes(_) => TargetKind::Classes,
            Targets::Values(_, w) => TargetKind::Values(w),
        }
    }
    fn check(&self) -> Result<()> {
        if self.x.len() != self.len() * self.width() {
            return Err(TrainError::Training(format!(
                "{} input values for {} examples of shape {:?} (expected {})",
                self.x.len(),
                self.len(),
                self.shape,
                self.len() * self.width()
            )));
        }
        if let Targets::Values(y, w) = self.y {
            if w == 0 || !y.len().is_multiple_of(w) {
                return Err(TrainError::Training(format!(
                    "{} target values are not a multiple of width {w}",
                    y.len()
                )));
            }
        }
        Ok(())
    }
    fn get_batch(&self, idx: &[usize]) -> Result<(Inputs, BatchTargets)> {
        out_of_range(idx, self.len())?;
        let x = Inputs::F32(gather_rows(self.x, self.width(), idx));
        let y = match self.y {
            Targets::Classes(y) => BatchTargets::Classes(idx.iter().map(|&i| y[i]).collect()),
            Targets::Values(y, w) => BatchTargets::Values(gather_rows(y, w, idx), w),
        };
        Ok((x, y))
    }
}

/// MNIST from its IDX files: `[1, 28, 28]` images (normalised as [`Mnist`] does) and their digits.
impl Dataset for Mnist {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn shape(&self) -> Vec<usize> {
        vec![1, 28, 28]
    }
    fn targets(&self) -> TargetKind {
        TargetKind::Classes
    }
    fn check(&self) -> Result<()> {
        ArrayDataset::classes(&self.images, &[1, 28, 28], &self.labels).check()
    }
    fn get_batch(&self, idx: &[usize]) -> Result<(Inputs, BatchTargets)> {
        ArrayDataset::classes(&self.images, &[1, 28, 28], &self.labels).get_batch(idx)
    }
}

/// Token shards: each example is a window of `context` input ids and the `context` ids that
/// follow each of them (the targets).
impl Dataset for TokenDataset {
    fn len(&self) -> usize {
        TokenDataset::len(self)
    }
    fn shape(&self) -> Vec<usize> {
        vec![self.context()]
    }
    fn targets(&self) -> TargetKind {
        TargetKind::Tokens
    }
    fn get_batch(&self, idx: &[usize]) -> Result<(Inputs, BatchTargets)> {
        let windows = TokenDataset::get_batch(self, idx)?;
        let (x, y) = kiln_nn::shards::inputs_and_targets(&windows, self.context());
        Ok((Inputs::I32(x), BatchTargets::Classes(y)))
    }
}

/// One batch a [`DataLoader`] read: this process's examples of a global batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Position of the batch in its epoch, from 0.
    pub index: usize,
    /// The examples' indices in the dataset (this process's share of the global batch).
    pub indices: Vec<usize>,
    /// This process's share of the global batch.
    pub share: Share,
    /// Their inputs, `[indices.len(), shape...]` row-major.
    pub x: Inputs,
    /// Their targets.
    pub y: BatchTargets,
}

/// Batches of a [`Dataset`], as PyTorch's `DataLoader` with a `DistributedSampler`: built as
/// `DataLoader::new(&data).with_batch_size(64).with_shuffle(true).with_seed(0)`.
///
/// An epoch's order is the seeded shuffle `shuffled(len, seed + epoch)` (or `0..len` without
/// shuffling), the same in every process; it is cut into global batches of `batch_size` (the
/// last may be shorter), and process `rank` of `world` takes its [`Share`] of each, so that over
/// an epoch the processes' examples are disjoint and cover the dataset exactly once. Batches are
/// read on a background thread, a few ahead of the caller ([`DataLoader::for_each`]).
#[derive(Clone, Copy)]
pub struct DataLoader<'a> {
    data: &'a dyn Dataset,
    /// Examples per global batch (default 1, as PyTorch's).
    pub batch_size: usize,
    /// Shuffle every epoch (default false, as PyTorch's).
    pub shuffle: bool,
    /// Seed of the shuffle; epoch `e` uses `seed + e` (default 0).
    pub seed: u64,
    /// This process's rank (default 0).
    pub rank: usize,
    /// Number of processes (default 1).
    pub world: usize,
    /// Batches read ahead on the background thread (default 2; 0 reads each batch on the
    /// caller's thread when it is needed).
    pub prefetch: usize,
}

impl std::fmt::Debug for DataLoader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataLoader")
            .field("len", &self.data.len())
            .field("batch_size", &self.batch_size)
            .field("shuffle", &self.shuffle)
            .field("seed", &self.seed)
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("prefetch", &self.prefetch)
            .finish()
    }
}

impl<'a> DataLoader<'a> {
    /// A loader over `data` with PyTorch's defaults: batches of 1, in order, one process.
    pub fn new(data: &'a dyn Dataset) -> Self {
        DataLoader {
            data,
            batch_size: 1,
            shuffle: false,
            seed: 0,
            rank: 0,
            world: 1,
            prefetch: if cfg!(target_arch = "wasm32") { 0 } else { 2 },
        }
    }
    /// Sets [`DataLoader::batch_size`].
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }
    /// Sets [`DataLoader::shuffle`].
    pub fn with_shuffle(mut self, shuffle: bool) -> Self {
        self.shuffle = shuffle;
        self
    }
    /// Sets [`DataLoader::seed`].
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Deals this process (`rank` of `world`) its share of every batch.
    pub fn with_shard(mut self, rank: usize, world: usize) -> Self {
        self.rank = rank;
        self.world = world;
        self
    }
    /// Sets [`DataLoader::prefetch`] (wasm32 has no threads: it is 0 there whatever is set).
    pub fn with_prefetch(mut self, batches: usize) -> Self {
        self.prefetch = batches;
        self
    }
    /// The dataset.
    pub fn dataset(&self) -> &'a dyn Dataset {
        self.data
    }
    /// Global batches per epoch.
    pub fn len(&self) -> usize {
        self.data.len().div_ceil(self.batch_size.max(1))
    }
    /// True when an epoch has no batches.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Epoch `epoch`'s batches as (this process's indices, its share), without reading them.
    pub fn plan(&self, epoch: u64) -> Vec<(Vec<usize>, Share)> {
        let n = self.data.len();
        if self.shuffle {
            return epoch_batches(
                n,
                self.batch_size,
                self.seed.wrapping_add(epoch),
                self.rank,
                self.world,
            );
        }
        let order: Vec<usize> = (0..n).collect();
        order
            .chunks(self.batch_size.max(1))
            .map(|global| {
                let share = Share::of(global.len(), self.rank, self.world);
                (global[share.range()].to_vec(), share)
            })
            .collect()
    }

    fn check(&self) -> Result<()> {
        if self.batch_size == 0 || self.world == 0 || self.rank >= self.world {
            return Err(TrainError::Training(format!(
                "a loader needs a batch size of at least 1 and a rank below the world size \
                 (batch size {}, rank {} of {})",
                self.batch_size, self.rank, self.world
            )));
        }
        self.data.check()
    }

    fn read(&self, index: usize, indices: Vec<usize>, share: Share) -> Result<Batch> {
        let (x, y) = self.data.get_batch(&indices)?;
        Ok(Batch {
            index,
            indices,
            share,
            x,
            y,
        })
    }

    /// Epoch `epoch`'s batches, each read on the caller's thread as the iterator reaches it.
    pub fn batches(&self, epoch: u64) -> Result<impl Iterator<Item = Result<Batch>> + '_> {
        self.check()?;
        Ok(self
            .plan(epoch)
            .into_iter()
            .enumerate()
            .map(|(i, (idx, share))| self.read(i, idx, share)))
    }

    /// Calls `f` with each of epoch `epoch`'s batches in order, the next ones being read on a
    /// background thread meanwhile (up to `prefetch` ahead). The first error, from a read or
    /// from `f`, ends the epoch and is returned.
    pub fn for_each(&self, epoch: u64, mut f: impl FnMut(Batch) -> Result<()>) -> Result<()> {
        if self.prefetch == 0 || cfg!(target_arch = "wasm32") {
            for b in self.batches(epoch)? {
                f(b?)?;
            }
            return Ok(());
        }
        self.check()?;
        let plan = self.plan(epoch);
        std::thread::scope(|s| {
            let (tx, rx) = mpsc::sync_channel::<Result<Batch>>(self.prefetch);
            s.spawn(move || {
                for (i, (idx, share)) in plan.into_iter().enumerate() {
                    let b = self.read(i, idx, share);
                    let failed = b.is_err();
                    // The receiver gone (the caller stopped on an error) ends the reading.
                    if tx.send(b).is_err() || failed {
                        return;
                    }
                }
            });
            // Dropping the receiver on an early return unblocks the reader.
            for b in rx {
                f(b?)?;
            }
            Ok(())
        })
    }
}
