//! Data readers and checkpoint files against hostile input: IDX files are streamed and bounded by
//! their declared dimensions (a small gzip that expands without end is refused after the declared
//! size), multi-member gzip is read, and a fuzz of the checkpoint and IDX parsers (a few thousand
//! mutated files each) shows no panic and no altered file accepted.

use kiln_nn::data::{parse_idx, read_idx, read_idx_from, MAX_IDX_BYTES};
use kiln_nn::serialize::TensorFile;
use proptest::prelude::*;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

fn idx_header(dims: &[u32]) -> Vec<u8> {
    let mut h = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        h.extend_from_slice(&d.to_be_bytes());
    }
    h
}

/// A reader that counts what is taken from it.
struct Counted<R> {
    inner: R,
    taken: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.taken.set(self.taken.get() + n as u64);
        Ok(n)
    }
}

#[test]
fn idx_payload_reads_stop_at_the_declared_size() {
    // A header declaring 10 images followed by an endless stream: refused after 7,841 bytes of
    // payload (one past the declared size), not read to the end.
    let taken = std::rc::Rc::new(std::cell::Cell::new(0));
    let endless = Counted {
        inner: std::io::Cursor::new(idx_header(&[10, 28, 28])).chain(std::io::repeat(0)),
        taken: taken.clone(),
    };
    let e = read_idx_from(endless, 3, |_| Ok(())).unwrap_err();
    assert!(e.contains("has more"), "{e}");
    assert!(taken.get() < 64 * 1024, "read {} bytes", taken.get());
    // Dimensions beyond the limit (or whose product overflows) are refused before any payload.
    for dims in [[u32::MAX, u32::MAX, u32::MAX], [1 << 20, 28, 28 * 4]] {
        let taken = std::rc::Rc::new(std::cell::Cell::new(0));
        let endless = Counted {
            inner: std::io::Cursor::new(idx_header(&dims)).chain(std::io::repeat(0)),
            taken: taken.clone(),
        };
        let e = read_idx_from(endless, 3, |_| Ok(())).unwrap_err();
        assert!(e.contains(&MAX_IDX_BYTES.to_string()), "{e}");
        assert!(taken.get() < 64 * 1024);
    }
    // The caller's check runs before the payload too.
    let e = read_idx_from(
        std::io::Cursor::new(idx_header(&[5, 28, 29])).chain(std::io::repeat(0)),
        3,
        |d| Err(format!("{d:?} refused")),
    )
    .unwrap_err();
    assert!(e.contains("[5, 28, 29] refused"), "{e}");
}

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("kiln-readers-{}-{name}", std::process::id()))
}

fn gzip(parts: &[&[u8]]) -> Vec<u8> {
    // Each part its own gzip member, concatenated (what `cat a.gz b.gz` makes).
    let mut out = Vec::new();
    for p in parts {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(p).unwrap();
        out.extend(e.finish().unwrap());
    }
    out
}

#[test]
fn gzip_bombs_are_refused_and_multi_member_gzip_is_read() {
    // 8 MB of zeros after a header declaring 10 images: about 8 KB compressed.
    let mut bomb = idx_header(&[10, 28, 28]);
    bomb.resize(8 << 20, 0);
    let p = tmp("bomb.gz");
    std::fs::write(&p, gzip(&[&bomb])).unwrap();
    let e = read_idx(&p, 3).unwrap_err().to_string();
    assert!(e.contains("has more") && e.contains("gzip"), "{e}");
    // Header and payload as two gzip members.
    let payload: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
    std::fs::write(&p, gzip(&[&idx_header(&[2, 3, 4]), &payload])).unwrap();
    let idx = read_idx(&p, 3).unwrap();
    assert_eq!((idx.dims, idx.data), (vec![2, 3, 4], payload));
    // A truncated member is an error, not a short read: the header declares exactly the bytes
    // the whole member holds.
    let whole = gzip(&[&bomb[..16 + 10 * 28 * 28]]);
    std::fs::write(&p, &whole[..whole.len() - 10]).unwrap();
    let e = read_idx(&p, 3).err().unwrap().to_string();
    assert!(e.contains("incomplete deflate stream"), "{e}");
    std::fs::remove_file(&p).ok();
}

/// A small kiln checkpoint: a linear layer, optimizer state, metadata.
fn checkpoint_bytes() -> Vec<u8> {
    use kiln_nn::{LinearConfig, Module, Sgd};
    let d = kiln_nn::Device::shared().expect("a GPU or software Vulkan adapter");
    let m = LinearConfig::new(3, 2).init(&d).unwrap();
    let o = Sgd::new(0.1)
        .with_momentum(0.9)
        .init(&d, m.parameters())
        .unwrap();
    let mut named = m.named_parameters();
    named.extend(o.state_tensors());
    let p = tmp("fuzz.safetensors");
    kiln_nn::serialize::save(
        &p,
        &named,
        &[
            ("kiln.epochs_done".into(), "3".into()),
            ("kiln.setting.seed".into(), "7".into()),
        ],
    )
    .unwrap();
    let bytes = std::fs::read(&p).unwrap();
    std::fs::remove_file(&p).ok();
    bytes
}

/// A mutation of a file: byte flips, a cut, an insertion or a removal.
#[derive(Clone, Debug)]
enum Mutation {
    Flip(Vec<(usize, u8)>),
    Cut(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => prop::collection::vec((any::<usize>(), 1u8..=255), 1..4).prop_map(Mutation::Flip),
        1 => any::<usize>().prop_map(Mutation::Cut),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, b)| Mutation::Insert(at, b)),
        1 => (any::<usize>(), 1usize..8).prop_map(|(at, n)| Mutation::Remove(at, n)),
    ]
}

fn apply(good: &[u8], m: &Mutation) -> Vec<u8> {
    let mut v = good.to_vec();
    let n = v.len();
    match m {
        Mutation::Flip(f) => f.iter().for_each(|(at, x)| v[at % n] ^= x),
        Mutation::Cut(at) => v.truncate(at % n),
        Mutation::Insert(at, b) => {
            let at = at % (n + 1);
            v.splice(at..at, b.iter().copied());
        }
        Mutation::Remove(at, k) => {
            let at = at % n;
            v.drain(at..(at + k).min(n));
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 3000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// No mutated checkpoint panics the reader, and none that differs in content is accepted:
    /// what is accepted has the same metadata and tensors as the original (a change in header
    /// padding, say, changes no content).
    #[test]
    fn mutated_checkpoints_never_panic_and_are_never_accepted_altered(m in mutation()) {
        thread_local! {
            static GOOD: (Vec<u8>, TensorFile) = {
                let b = checkpoint_bytes();
                let f = TensorFile::from_bytes(Path::new("good"), b.clone()).unwrap();
                (b, f)
            };
        }
        GOOD.with(|(good, original)| {
            let bad = apply(good, &m);
            if let Ok(f) = TensorFile::from_bytes(Path::new("mutated"), bad) {
                assert_eq!(f.metadata(), original.metadata(), "{m:?}");
                assert_eq!(f.raw_tensors().unwrap(), original.raw_tensors().unwrap(), "{m:?}");
            }
        });
    }

    /// Arbitrary bytes and mutated headers never panic the IDX parser, and what it accepts is
    /// exactly as long as its dimensions say.
    #[test]
    fn idx_parser_never_panics(
        dims in prop::collection::vec(0u32..40, 1..4),
        extra in -3i64..3,
        m in mutation(),
        expect in 0usize..5,
    ) {
        let n: u64 = dims.iter().map(|&d| d as u64).product();
        let mut bytes = idx_header(&dims);
        bytes.resize((bytes.len() as i64 + n as i64 + extra).max(0) as usize, 7);
        let bytes = if bytes.is_empty() { bytes } else { apply(&bytes, &m) };
        if let Ok(idx) = parse_idx(&bytes, expect) {
            assert_eq!(idx.data.len(), idx.dims.iter().product::<usize>());
            assert_eq!(idx.dims.len(), expect);
        }
    }
}

/// llm.c's token shards: a round trip; what llm.c writes (vocabulary word 0) reads; a foreign,
/// truncated, over-long or other-version file and a token past the vocabulary are refused with
/// what was expected and what came; the dataset's windows and the loader's order.
#[test]
fn token_shards_round_trip_and_refuse_bad_files() {
    use kiln_nn::shards::{
        decode_shard, encode_shard, inputs_and_targets, read_shard, write_shard, TokenDataset,
        TokenLoader, SHARD_HEADER_BYTES, SHARD_MAGIC,
    };
    let path = tmp("kiln-shard.bin");
    let tokens: Vec<u32> = (0..1000).map(|i| (i * 7919 % 50257) as u32).collect();
    write_shard(&path, &tokens, 50257).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), SHARD_HEADER_BYTES + 2 * tokens.len());
    let word = |b: &[u8], i: usize| i32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap());
    assert_eq!(
        [
            word(&bytes, 0),
            word(&bytes, 1),
            word(&bytes, 2),
            word(&bytes, 3)
        ],
        [SHARD_MAGIC, 1, 1000, 50257]
    );
    let back = read_shard(&path, 50304).unwrap();
    assert_eq!(back.iter().map(|&t| t as u32).collect::<Vec<_>>(), tokens);

    // llm.c leaves word 3 at 0: read, ids still checked against the model.
    let mut llmc = bytes.clone();
    llmc[12..16].copy_from_slice(&0i32.to_le_bytes());
    assert_eq!(decode_shard(&llmc, 50257).unwrap(), back);

    let refuse = |b: &[u8], vocab: usize, want: &str| {
        let msg = decode_shard(b, vocab).unwrap_err();
        assert!(msg.contains(want), "expected {want:?} in {msg:?}");
    };
    refuse(&bytes[..bytes.len() - 1], 50257, "truncated");
    refuse(&bytes[..100], 50257, "shorter than the 1024-byte header");
    let mut long = bytes.clone();
    long.extend([0, 0]);
    refuse(&long, 50257, "but 2002 bytes follow");
    let mut foreign = bytes.clone();
    foreign[..4].copy_from_slice(&0x04034b50i32.to_le_bytes()); // a zip file's magic
    refuse(&foreign, 50257, "not a token shard: magic 67324752");
    let mut v2 = bytes.clone();
    v2[4..8].copy_from_slice(&2i32.to_le_bytes());
    refuse(&v2, 50257, "version 2");
    // Written for 50,257 ids, read by a model of 1,000.
    refuse(
        &bytes,
        1000,
        "written for a vocabulary of 50257 ids, more than the model's 1000",
    );
    // An id past the model's vocabulary in a file that names none.
    refuse(&llmc, 40000, "outside the model's vocabulary of 40000");
    let msg = read_shard(&tmp("kiln-no-such-shard.bin"), 10)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("kiln-no-such-shard.bin"), "{msg}");
    // Writing refuses what the format cannot hold or the vocabulary does not have.
    let msg = encode_shard(&[5, 300], 256).unwrap_err().to_string();
    assert!(
        msg.contains("token 300 at position 1 is outside the vocabulary of 256"),
        "{msg}"
    );
    let msg = encode_shard(&[5], 70000).unwrap_err().to_string();
    assert!(msg.contains("65,536"), "{msg}");

    // Windows of context 4 (+1) every 4 tokens, never across shards: 9 tokens give 2, 6 give 1.
    let a: Vec<u16> = (0..9).collect();
    let b: Vec<u16> = (100..106).collect();
    let ds = TokenDataset::from_shards(vec![a, b], 4).unwrap();
    assert_eq!(ds.len(), 3);
    assert_eq!(ds.window(1).unwrap(), [4, 5, 6, 7, 8]);
    assert_eq!(ds.window(2).unwrap(), [100, 101, 102, 103, 104]);
    let e = ds.window(3).err().unwrap().to_string();
    assert!(e.contains("window 3 of a dataset of 3"), "{e}");
    let batch = ds.get_batch(&[2, 0]).unwrap();
    let (x, y) = inputs_and_targets(&batch, 4);
    assert_eq!(x, [100, 101, 102, 103, 0, 1, 2, 3]);
    assert_eq!(y, [101, 102, 103, 104, 1, 2, 3, 4]);
    let ds = TokenDataset::open(std::slice::from_ref(&path), 64, 50257).unwrap();
    assert_eq!((ds.len(), ds.tokens()), (999 / 64, 1000));
    std::fs::remove_file(&path).unwrap();

    // The loader: one epoch at any world size and accumulation visits every window once, the
    // same stream in the same order; a step's windows depend on (seed, step) alone.
    let n = 48;
    let stream = |batch: usize, micro: usize, world: usize| -> Vec<usize> {
        let mut loaders: Vec<TokenLoader> = (0..world)
            .map(|r| TokenLoader::new(n, batch, micro, 7, r, world).unwrap())
            .collect();
        let steps = n / (batch * micro * world);
        let mut out = Vec::new();
        for s in 0..steps as u64 {
            for m in 0..micro {
                for l in &mut loaders {
                    out.extend(l.indices(s, m));
                }
            }
        }
        out
    };
    let one = stream(4, 1, 1);
    let mut sorted = one.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        (0..n).collect::<Vec<_>>(),
        "an epoch covers every window once"
    );
    assert_ne!(one, (0..n).collect::<Vec<_>>(), "shuffled");
    assert_eq!(stream(2, 2, 1), one);
    assert_eq!(stream(2, 1, 2), one);
    assert_eq!(stream(1, 3, 2), one);
    let mut fresh = TokenLoader::new(n, 4, 1, 7, 0, 1).unwrap();
    assert_eq!(fresh.indices(5, 0), one[20..24]);
    // The next epoch is another order.
    let next: Vec<usize> = (12..24).flat_map(|s| fresh.indices(s, 0)).collect();
    assert_ne!(next, one);
    let mut sorted = next;
    sorted.sort();
    assert_eq!(sorted, (0..n).collect::<Vec<_>>());
    let e = TokenLoader::new(n, 4, 1, 7, 2, 2)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("rank 2 of 2") && e.contains("rank below the world"),
        "{e}"
    );
}
