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
    // A truncated member is an error, not a short read.
    let whole = gzip(&[&bomb[..9000]]);
    std::fs::write(&p, &whole[..whole.len() - 10]).unwrap();
    assert!(read_idx(&p, 3).is_err());
    std::fs::remove_file(&p).ok();
}

/// A small kiln checkpoint: a linear layer, optimizer state, metadata.
fn checkpoint_bytes() -> Vec<u8> {
    use kiln_nn::{LinearConfig, Module, Sgd};
    let d = kiln_nn::Device::shared().expect("a GPU or software Vulkan adapter");
    let m = LinearConfig::new(3, 2).init(&d).unwrap();
    let o = Sgd::new(0.1)
        .momentum(0.9)
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
