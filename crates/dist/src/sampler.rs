//! The distributed sampler: which examples each process trains on in an epoch.
//!
//! The rule is `kiln_train::parallel`'s, which distributed `fit` follows: the epoch's seeded shuffle
//! (the same in every process) is cut into global batches, and each global batch into one
//! contiguous share per process, sizes differing by at most one. The last global batch may be
//! short; it is split by the same rule, so every process handles it the same way and the epoch
//! still covers every example exactly once (a process whose share is empty takes part in the step
//! without examples). Custom loops that use this sampler train exactly as distributed `fit` does.

use kiln_train::parallel::{epoch_batches, Share};

/// One process's view of the epochs of a data set.
#[derive(Clone, Debug)]
pub struct DistributedSampler {
    len: usize,
    batch: usize,
    seed: u64,
    rank: usize,
    world: usize,
}

impl DistributedSampler {
    /// `len` examples in global batches of `batch`, shuffled each epoch from `seed + epoch` (as
    /// `fit`), for process `rank` of `world`.
    pub fn new(len: usize, batch: usize, seed: u64, rank: usize, world: usize) -> Self {
        DistributedSampler {
            len,
            batch,
            seed,
            rank,
            world,
        }
    }

    /// Epoch `epoch`'s batches (epochs count from 1, as in `fit`): this process's indices of
    /// each and its [`Share`] of the global batch.
    pub fn epoch(&self, epoch: usize) -> Vec<(Vec<usize>, Share)> {
        epoch_batches(
            self.len,
            self.batch,
            self.seed + epoch as u64,
            self.rank,
            self.world,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_cover_every_example_exactly_once_per_epoch() {
        // Batches that divide the set, that leave a short last batch, a last batch with fewer
        // examples than processes, and world sizes that do not divide the batch.
        for (len, batch) in [(64, 16), (100, 32), (97, 24), (65, 64), (7, 64), (10, 3)] {
            for world in 1..=5 {
                let samplers: Vec<_> = (0..world)
                    .map(|r| DistributedSampler::new(len, batch, 7, r, world))
                    .collect();
                for epoch in 1..=3 {
                    let per_rank: Vec<_> = samplers.iter().map(|s| s.epoch(epoch)).collect();
                    let steps = per_rank[0].len();
                    assert_eq!(steps, len.div_ceil(batch));
                    let mut seen = vec![0u32; len];
                    for b in 0..steps {
                        // Every process takes part in every step, with its share of one batch.
                        let global = per_rank[0][b].1.global;
                        let mut total = 0;
                        for ranks in &per_rank {
                            let (idx, share) = &ranks[b];
                            assert_eq!(share.global, global);
                            assert_eq!(idx.len(), share.len);
                            total += idx.len();
                            idx.iter().for_each(|&i| seen[i] += 1);
                        }
                        assert_eq!(total, global);
                    }
                    assert!(
                        seen.iter().all(|&c| c == 1),
                        "len {len}, batch {batch}, world {world}, epoch {epoch}: {seen:?}"
                    );
                }
                // A new epoch, a new order.
                if len > 2 {
                    assert_ne!(samplers[0].epoch(1), samplers[0].epoch(2));
                }
            }
        }
    }

    #[test]
    fn two_ranks_split_the_one_process_batches() {
        let one = DistributedSampler::new(100, 64, 3, 0, 1).epoch(1);
        let r0 = DistributedSampler::new(100, 64, 3, 0, 2).epoch(1);
        let r1 = DistributedSampler::new(100, 64, 3, 1, 2).epoch(1);
        for b in 0..one.len() {
            let joined: Vec<usize> = r0[b].0.iter().chain(&r1[b].0).copied().collect();
            assert_eq!(joined, one[b].0);
        }
    }
}
