//! The hook through which `fit::fit` (`FitConfig::with_distributed`) and `lm_train::train_lm_parallel` train
//! one model in several processes at once (data parallelism), and the rule that splits each
//! global batch among them. kiln-dist implements [`DataParallel`] over MPI; this crate knows
//! nothing of the transport.
//!
//! A batch size in these loops is always the global one: each of `world` processes trains on its
//! [`Share`] of every batch, and the gradients are combined so that the update equals the one a
//! single process would make on the whole batch. Runs therefore follow the same trajectory (up to
//! float32 summation order) at any number of processes, and a checkpoint resumes at any number.

use crate::Result;
use kiln_graph::Tensor;
use kiln_nn::data::shuffled;
use kiln_nn::{Module, Optimizer};

/// One process's part of a global batch: positions `start .. start + len` of its `global`
/// examples.
///
/// The rule: a batch of `global` examples is cut into `world` contiguous blocks whose sizes
/// differ by at most one, the larger ones first (64 over 3 processes: 22, 21, 21). A process's
/// mean gradient counts `len / global` in the combined one, so the combination is the mean over
/// the whole batch whatever the sizes; a process whose block is empty (a last short batch with
/// fewer examples than processes) contributes nothing and still applies the update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    /// First position in the global batch.
    pub start: usize,
    /// Examples this process trains on.
    pub len: usize,
    /// Examples in the global batch.
    pub global: usize,
}

impl Share {
    /// Process `rank`'s share of a batch of `global` examples among `world` processes.
    pub fn of(global: usize, rank: usize, world: usize) -> Share {
        let world = world.max(1);
        let (base, extra) = (global / world, global % world);
        let len = base + usize::from(rank < extra);
        let start = rank * base + rank.min(extra);
        Share { start, len, global }
    }

    /// The whole batch (one process).
    pub fn whole(global: usize) -> Share {
        Share::of(global, 0, 1)
    }

    /// The positions, for slicing the batch.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.len
    }

    /// This process's weight in the combined gradient and loss: `len / global`.
    pub fn weight(&self) -> f32 {
        if self.global == 0 {
            0.0
        } else {
            self.len as f32 / self.global as f32
        }
    }
}

/// One epoch's batches for process `rank` of `world`: the examples' order for the epoch (the
/// seeded shuffle [`shuffled`]`(len, epoch_seed)`, the same in every process) cut into global
/// batches of `batch` (the last may be shorter), and this process's indices and [`Share`] of
/// each. Over an epoch the processes' indices are disjoint and cover `0..len` exactly once.
pub fn epoch_batches(
    len: usize,
    batch: usize,
    epoch_seed: u64,
    rank: usize,
    world: usize,
) -> Vec<(Vec<usize>, Share)> {
    shuffled(len, epoch_seed)
        .chunks(batch.max(1))
        .map(|global| {
            let share = Share::of(global.len(), rank, world);
            (global[share.range()].to_vec(), share)
        })
        .collect()
}

/// How a training loop runs its steps when several processes train one model, each on its share
/// of every batch: the implementation owns the recorded steps, because the gradients must be
/// combined between backward and the optimizer's update.
pub trait DataParallel {
    /// This process's rank, 0 to `world_size() - 1`; rank 0 alone writes checkpoints, history
    /// files and progress.
    fn rank(&self) -> usize;

    /// Number of processes.
    fn world_size(&self) -> usize;

    /// Makes every process's model (parameters, random-generator offsets) and optimizer (state,
    /// step count) equal to rank 0's. Loops call it once before the first step.
    fn broadcast(&mut self, model: &dyn Module, opt: &mut Optimizer) -> Result<()>;

    /// Records a training step for this process's share of a batch and runs it as the current
    /// step: `forward` builds the loss (the forward pass) from the batch already in place; the
    /// implementation runs backward, combines the gradients across processes and records the
    /// optimizer's update (its `step`, which begins the optimizer's step) (skipped on the device when the combined loss is not finite, where
    /// `guard` is set). Returns the step's id for [`DataParallel::replay_step`], the loss tensor
    /// (whose buffer each replay rewrites) and the loss averaged over the processes (weighted by
    /// their shares).
    fn record_step(
        &mut self,
        opt: &mut Optimizer,
        guard: bool,
        share: Share,
        forward: &mut dyn FnMut() -> Result<Tensor>,
    ) -> Result<(usize, Tensor, f32)>;

    /// Runs a recorded step again on the batch now in its input buffers; returns the averaged
    /// loss. The loop has begun the optimizer's step ([`Optimizer::prepare_replay`]).
    fn replay_step(&mut self, step: usize, share: Share) -> Result<f32>;

    /// Takes part in a step in which this process has no examples (`share.len == 0`): it
    /// contributes nothing to the combined gradient and applies the same update as the others.
    /// Needs a step recorded earlier. The loop has begun the optimizer's step
    /// ([`Optimizer::prepare_replay`]). Returns the averaged loss.
    fn empty_step(&mut self, share: Share) -> Result<f32>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_contiguous_nearly_equal_and_cover_the_batch() {
        for global in 0..40 {
            for world in 1..7 {
                let shares: Vec<Share> = (0..world).map(|r| Share::of(global, r, world)).collect();
                let mut next = 0;
                for s in &shares {
                    assert_eq!(s.start, next, "{global} over {world}: {shares:?}");
                    next += s.len;
                }
                assert_eq!(next, global);
                let (lo, hi) = (
                    shares.iter().map(|s| s.len).min().unwrap(),
                    shares.iter().map(|s| s.len).max().unwrap(),
                );
                assert!(hi - lo <= 1, "{shares:?}");
                let w: f32 = shares.iter().map(Share::weight).sum();
                assert!(global == 0 || (w - 1.0).abs() < 1e-6, "{shares:?}");
            }
        }
        assert_eq!(
            (0..3).map(|r| Share::of(64, r, 3).len).collect::<Vec<_>>(),
            [22, 21, 21]
        );
    }
}
