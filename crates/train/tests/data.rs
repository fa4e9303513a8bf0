//! Datasets and the DataLoader: a seeded shuffle that is the same for the same seed, shards that
//! are disjoint and cover every epoch, and batches equal to a direct read of the examples (on the
//! background thread as on the caller's). No device needed.

use kiln_nn::data::{shuffled, Mnist};
use kiln_nn::shards::TokenDataset;
use kiln_train::parallel::epoch_batches;
use kiln_train::{ArrayDataset, Batch, BatchTargets, DataLoader, Dataset, Inputs, TargetKind};
use std::path::PathBuf;

fn toy(n: usize) -> (Vec<f32>, Vec<i32>) {
    let x: Vec<f32> = (0..n * 3).map(|i| i as f32 * 0.5).collect();
    let y: Vec<i32> = (0..n).map(|i| (i * 7 % 10) as i32).collect();
    (x, y)
}

fn collect(l: &DataLoader, epoch: u64) -> Vec<Batch> {
    let mut out = Vec::new();
    l.for_each(epoch, |b| {
        out.push(b);
        Ok(())
    })
    .unwrap();
    out
}

#[test]
fn the_shuffle_is_the_same_for_a_seed_and_follows_seed_plus_epoch() {
    let (x, y) = toy(103);
    let data = ArrayDataset::classes(&x, &[3], &y);
    let l = DataLoader::new(&data)
        .with_batch_size(16)
        .with_shuffle(true)
        .with_seed(5);
    let order = |bs: &[Batch]| {
        bs.iter()
            .flat_map(|b| b.indices.clone())
            .collect::<Vec<_>>()
    };
    let a = collect(&l, 1);
    assert_eq!(
        a,
        collect(&l, 1),
        "the same seed and epoch read the same batches"
    );
    assert_eq!(
        order(&a),
        shuffled(103, 6),
        "epoch 1 of seed 5 is the shuffle of seed 6"
    );
    assert_ne!(
        order(&a),
        order(&collect(&l, 2)),
        "another epoch, another order"
    );
    assert_ne!(
        order(&a),
        order(&collect(&l.with_seed(6), 1)),
        "another seed"
    );
    // The batches: 6 of 16 and a last of 7, indexed in order.
    assert_eq!(
        a.iter().map(|b| b.indices.len()).collect::<Vec<_>>(),
        [16, 16, 16, 16, 16, 16, 7]
    );
    assert!(a.iter().enumerate().all(|(i, b)| b.index == i));
    // Without shuffling: 0..n in order, as PyTorch's default.
    let plain = DataLoader::new(&data).with_batch_size(16);
    assert_eq!(order(&collect(&plain, 3)), (0..103).collect::<Vec<_>>());
}

#[test]
fn shards_are_disjoint_cover_each_epoch_and_follow_the_share_rule() {
    let (x, y) = toy(101);
    let data = ArrayDataset::classes(&x, &[3], &y);
    for world in 1..=4 {
        for batch in [1, 7, 32] {
            let mut seen = vec![0usize; 101];
            for rank in 0..world {
                let l = DataLoader::new(&data)
                    .with_batch_size(batch)
                    .with_shuffle(true)
                    .with_seed(3)
                    .with_shard(rank, world);
                let batches = collect(&l, 2);
                // Exactly what the training loops' rule gives this process.
                let want = epoch_batches(101, batch, 5, rank, world);
                assert_eq!(batches.len(), want.len());
                for (b, (idx, share)) in batches.iter().zip(&want) {
                    assert_eq!((&b.indices, b.share), (idx, *share));
                    assert_eq!(b.share.len, b.indices.len());
                    for &i in &b.indices {
                        seen[i] += 1;
                    }
                }
            }
            assert!(
                seen.iter().all(|&c| c == 1),
                "world {world}, batch {batch}: every example exactly once, got {seen:?}"
            );
        }
    }
}

#[test]
fn batches_equal_a_direct_read_of_arrays_idx_files_and_token_shards() {
    // In-memory arrays, with values as targets.
    let x: Vec<f32> = (0..40).map(|i| i as f32).collect();
    let t: Vec<f32> = (0..20).map(|i| -(i as f32)).collect();
    let data = ArrayDataset::values(&x, &[2, 2], &t, 2);
    assert_eq!(data.targets(), TargetKind::Values(2));
    assert_eq!(data.batch_shape(3), [3, 2, 2]);
    let l = DataLoader::new(&data).with_batch_size(4).with_shuffle(true);
    let mut checked = 0;
    for b in collect(&l, 1) {
        let want_x: Vec<f32> = b
            .indices
            .iter()
            .flat_map(|&i| x[i * 4..i * 4 + 4].to_vec())
            .collect();
        let want_y: Vec<f32> = b
            .indices
            .iter()
            .flat_map(|&i| t[i * 2..i * 2 + 2].to_vec())
            .collect();
        assert_eq!(b.x, Inputs::F32(want_x));
        assert_eq!(b.y, BatchTargets::Values(want_y, 2));
        checked += b.indices.len();
    }
    assert_eq!(checked, 10);

    // MNIST's IDX files.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
    let m = Mnist::load(&dir).unwrap();
    assert_eq!(
        (Dataset::len(&m), m.shape(), m.targets()),
        (10_000, vec![1, 28, 28], TargetKind::Classes)
    );
    let l = DataLoader::new(&m)
        .with_batch_size(100)
        .with_shuffle(true)
        .with_seed(9);
    let mut checked = 0;
    l.for_each(0, |b| {
        if b.index % 20 == 0 {
            let (imgs, labels): (Vec<f32>, Vec<i32>) = {
                let mut xs = Vec::new();
                let mut ys = Vec::new();
                for &i in &b.indices {
                    let (xi, yi) = m.split(i..i + 1).unwrap();
                    xs.extend(xi);
                    ys.extend(yi);
                }
                (xs, ys)
            };
            assert_eq!(b.x, Inputs::F32(imgs));
            assert_eq!(b.y, BatchTargets::Classes(labels));
            checked += 1;
        }
        Ok(())
    })
    .unwrap();
    assert_eq!(checked, 5);

    // Token shards: inputs a window's first `context` ids, targets its last `context`.
    let shards = vec![(0..50u16).collect::<Vec<_>>(), (100..133u16).collect()];
    let tokens = TokenDataset::from_shards(shards, 8).unwrap();
    assert_eq!(
        (Dataset::len(&tokens), tokens.targets()),
        (6 + 4, TargetKind::Tokens)
    );
    let l = DataLoader::new(&tokens)
        .with_batch_size(3)
        .with_shuffle(true)
        .with_seed(1);
    let mut checked = 0;
    for b in collect(&l, 0) {
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for &i in &b.indices {
            let w = tokens.window(i).unwrap();
            xs.extend(w[..8].iter().map(|&v| v as i32));
            ys.extend(w[1..].iter().map(|&v| v as i32));
        }
        assert_eq!(b.x, Inputs::I32(xs));
        assert_eq!(b.y, BatchTargets::Classes(ys));
        checked += b.indices.len();
    }
    assert_eq!(checked, 10);
}

#[test]
fn the_background_reader_gives_what_the_caller_s_thread_reads() {
    let (x, y) = toy(77);
    let data = ArrayDataset::classes(&x, &[3], &y);
    let l = DataLoader::new(&data)
        .with_batch_size(8)
        .with_shuffle(true)
        .with_seed(2);
    let inline: Vec<Batch> = l.batches(4).unwrap().map(Result::unwrap).collect();
    assert_eq!(collect(&l, 4), inline);
    assert_eq!(collect(&l.with_prefetch(0), 4), inline);
    assert_eq!(collect(&l.with_prefetch(1), 4), inline);
    // An error from the caller ends the epoch at once and is returned.
    let mut seen = 0;
    let e = l
        .for_each(4, |b| {
            seen += 1;
            if b.index == 2 {
                return Err(kiln_train::TrainError::Training("stop at batch 2".into()));
            }
            Ok(())
        })
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("stop at batch 2") && seen == 3,
        "{e}, {seen} batches"
    );
}

#[test]
fn bad_loaders_and_indices_are_errors() {
    let (x, y) = toy(10);
    let data = ArrayDataset::classes(&x, &[3], &y);
    let e = data.get_batch(&[3, 10]).unwrap_err().to_string();
    assert!(
        e.contains("example 10 asked for from a dataset of 10"),
        "{e}"
    );
    let e = DataLoader::new(&data)
        .with_batch_size(0)
        .batches(0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("batch size of at least 1"), "{e}");
    let e = DataLoader::new(&data)
        .with_shard(2, 2)
        .batches(0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("rank 2 of 2"), "{e}");
    let short = ArrayDataset::classes(&x[..20], &[3], &y);
    let e = DataLoader::new(&short)
        .for_each(0, |_| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("20 input values for 10 examples"), "{e}");
}
