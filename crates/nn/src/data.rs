//! Data: MNIST's IDX files (gzip), character-level text, seeded shuffling into batches. llm.c's
//! token shards, and windows and a loader over them, are in the `shards` module.

use crate::error::{NnError, Result};
use kiln_ops::random::Rng;
use std::io::Read;
use std::path::Path;

/// An IDX array: its dimensions and u8 payload.
#[derive(Debug, Clone)]
pub struct Idx {
    /// Extent of each dimension.
    pub dims: Vec<usize>,
    /// Row-major bytes.
    pub data: Vec<u8>,
}

fn err(path: &Path, message: impl Into<String>) -> NnError {
    NnError::Data {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// The largest IDX payload the readers accept (1 GiB): a header may declare any dimensions, and a
/// compressed file can expand a thousandfold, so what is read is bounded before it is read.
pub const MAX_IDX_BYTES: usize = 1 << 30;

/// Reads an IDX file of unsigned bytes (gzip-compressed when the name ends in `.gz`, one member or
/// several concatenated), checking its magic number, its dimension count and that the payload is
/// exactly as long as they say. The file is streamed: the header is read and checked first, then
/// exactly the payload it declares, so a small compressed file that expands to gigabytes is
/// refused after at most the declared size.
pub fn read_idx(path: &Path, expect_dims: usize) -> Result<Idx> {
    read_idx_checked(path, expect_dims, |_| Ok(()))
}

/// [`read_idx`] with a check of the dimensions (`check` returns what is wrong) before any of the
/// payload is read.
pub fn read_idx_checked(
    path: &Path,
    expect_dims: usize,
    check: impl Fn(&[usize]) -> std::result::Result<(), String>,
) -> Result<Idx> {
    let file = std::fs::File::open(path).map_err(|e| err(path, e.to_string()))?;
    let file = std::io::BufReader::new(file);
    let out = if path.extension().is_some_and(|e| e == "gz") {
        read_idx_from(flate2::read::MultiGzDecoder::new(file), expect_dims, check)
            .map_err(|m| format!("{m} (after gzip decompression)"))
    } else {
        read_idx_from(file, expect_dims, check)
    };
    out.map_err(|m| err(path, m))
}

/// Reads up to `buf.len()` bytes; returns how many came before the end of the stream.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::result::Result<usize, String> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("reading: {e}")),
        }
    }
    Ok(got)
}

/// Reads IDX data of unsigned bytes from a stream (already decompressed): the header, then
/// `check` on its dimensions, then exactly the payload they declare.
pub fn read_idx_from(
    mut r: impl Read,
    expect_dims: usize,
    check: impl Fn(&[usize]) -> std::result::Result<(), String>,
) -> std::result::Result<Idx, String> {
    if expect_dims == 0 || expect_dims > 255 {
        return Err(format!(
            "{expect_dims} dimensions asked for: IDX files have 1 to 255"
        ));
    }
    let header = 4 + 4 * expect_dims;
    let mut head = vec![0u8; header];
    let got = read_full(&mut r, &mut head)?;
    if got < 4 {
        return Err(format!("{got} bytes: too short for an IDX header"));
    }
    let magic = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let want = 0x0800 | expect_dims as u32;
    if magic != want {
        return Err(format!(
            "magic number 0x{magic:08x}, expected 0x{want:08x} (u8 data, {expect_dims} dimensions)"
        ));
    }
    if got < header {
        return Err(format!(
            "{got} bytes: too short for a {expect_dims}-dimension header"
        ));
    }
    let dims: Vec<usize> = head[4..]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_IDX_BYTES)
        .ok_or_else(|| {
            format!("dimensions {dims:?} declare more than the {MAX_IDX_BYTES} bytes this reader accepts")
        })?;
    check(&dims)?;
    // Grows with what arrives, never to more than the declared size.
    let mut data = Vec::new();
    (&mut r)
        .take(n as u64)
        .read_to_end(&mut data)
        .map_err(|e| format!("reading: {e} (truncated or corrupt)"))?;
    if data.len() != n {
        return Err(format!(
            "dimensions {dims:?} need {n} bytes of data, the file has {}",
            data.len()
        ));
    }
    let mut extra = [0u8; 1];
    if read_full(&mut r, &mut extra)? > 0 {
        return Err(format!(
            "dimensions {dims:?} need {n} bytes of data, the file has more"
        ));
    }
    Ok(Idx { dims, data })
}

/// Parses IDX bytes (already decompressed).
pub fn parse_idx(bytes: &[u8], expect_dims: usize) -> std::result::Result<Idx, String> {
    read_idx_from(bytes, expect_dims, |_| Ok(()))
}

/// MNIST images (normalised as the seeds do: (x/255 - 0.1307) / 0.3081) and labels.
pub struct Mnist {
    /// [n, 784] row-major.
    pub images: Vec<f32>,
    /// `[n]`
    pub labels: Vec<i32>,
}

impl Mnist {
    /// Reads `t10k-images-idx3-ubyte.gz` and `t10k-labels-idx1-ubyte.gz` from `dir`.
    pub fn load(dir: &Path) -> Result<Mnist> {
        let ip = dir.join("t10k-images-idx3-ubyte.gz");
        let lp = dir.join("t10k-labels-idx1-ubyte.gz");
        // Labels first: their count bounds what the images may declare, before any is read.
        let lab = read_idx(&lp, 1)?;
        let img = read_idx_checked(&ip, 3, |d| Self::check_images(d, lab.dims[0], &lp))?;
        Self::from_idx(img, lab).map_err(|m| err(&lp, m))
    }

    /// [`Mnist::load`] from the two files' gzip-compressed bytes (as a browser page fetches
    /// them): `images_gz` of `t10k-images-idx3-ubyte.gz`, `labels_gz` of the labels' file.
    pub fn from_gz_bytes(images_gz: &[u8], labels_gz: &[u8]) -> Result<Mnist> {
        let gz = |b| flate2::read::MultiGzDecoder::new(b);
        let named = |name: &'static str| move |m: String| err(Path::new(name), m);
        let lp = Path::new("t10k-labels-idx1-ubyte.gz");
        let lab = read_idx_from(gz(labels_gz), 1, |_| Ok(()))
            .map_err(named("t10k-labels-idx1-ubyte.gz"))?;
        let img = read_idx_from(gz(images_gz), 3, |d| Self::check_images(d, lab.dims[0], lp))
            .map_err(named("t10k-images-idx3-ubyte.gz"))?;
        Self::from_idx(img, lab).map_err(named("t10k-labels-idx1-ubyte.gz"))
    }

    fn check_images(d: &[usize], n: usize, labels: &Path) -> std::result::Result<(), String> {
        if d[1..] != [28, 28] {
            return Err(format!("images are {d:?}, expected [n, 28, 28]"));
        }
        if d[0] != n {
            return Err(format!(
                "{} images, but {} has {n} labels",
                d[0],
                labels.display()
            ));
        }
        Ok(())
    }

    fn from_idx(img: Idx, lab: Idx) -> std::result::Result<Mnist, String> {
        if let Some(bad) = lab.data.iter().find(|&&l| l > 9) {
            return Err(format!("label {bad} outside 0..=9"));
        }
        Ok(Mnist {
            images: img
                .data
                .iter()
                .map(|&p| (p as f32 / 255.0 - 0.1307) / 0.3081)
                .collect(),
            labels: lab.data.iter().map(|&l| l as i32).collect(),
        })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Examples `range` as (images, labels); a range outside the examples, or empty, is an error.
    pub fn split(&self, range: std::ops::Range<usize>) -> Result<(Vec<f32>, Vec<i32>)> {
        if range.start >= range.end || range.end > self.len() {
            return Err(NnError::Invalid(format!(
                "examples {}..{} asked for: MNIST has {} (0..{})",
                range.start,
                range.end,
                self.len(),
                self.len()
            )));
        }
        Ok((
            self.images[range.start * 784..range.end * 784].to_vec(),
            self.labels[range].to_vec(),
        ))
    }
}

/// A seeded permutation of 0..n (Fisher-Yates), the same for the same seed everywhere.
pub fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = Rng::new(seed);
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.below(i + 1));
    }
    v
}

/// Gathers rows `idx` of a row-major [n, width] array.
pub fn gather_rows<T: Copy>(data: &[T], width: usize, idx: &[usize]) -> Vec<T> {
    let mut out = Vec::with_capacity(idx.len() * width);
    for &i in idx {
        out.extend_from_slice(&data[i * width..(i + 1) * width]);
    }
    out
}

/// Reads a binary PGM (P5, 8-bit) image as rows of bytes: (width, height, pixels).
pub fn read_pgm(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let bytes = std::fs::read(path).map_err(|e| err(path, e.to_string()))?;
    parse_pgm(&bytes).map_err(|m| err(path, m))
}

/// Parses binary PGM bytes (comments allowed in the header).
pub fn parse_pgm(bytes: &[u8]) -> std::result::Result<(usize, usize, Vec<u8>), String> {
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'#') {
            if bytes[i] == b'#' {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            } else {
                i += 1;
            }
        }
        let start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if start == i {
            return Err("truncated PGM header".into());
        }
        fields.push(String::from_utf8_lossy(&bytes[start..i]).to_string());
    }
    if fields[0] != "P5" {
        return Err(format!(
            "magic {:?}, expected P5 (binary greyscale PGM)",
            fields[0]
        ));
    }
    let num = |s: &str| {
        s.parse::<usize>()
            .map_err(|_| format!("{s:?} is not a number"))
    };
    let (w, h, max) = (num(&fields[1])?, num(&fields[2])?, num(&fields[3])?);
    if max == 0 || max > 255 {
        return Err(format!("maximum value {max}: only 8-bit PGM is supported"));
    }
    if w == 0 || h == 0 {
        return Err(format!(
            "{w}x{h} image: width and height must be at least 1"
        ));
    }
    let size = w
        .checked_mul(h)
        .ok_or_else(|| format!("{w}x{h} image: the pixel count overflows"))?;
    let data = &bytes[(i + 1).min(bytes.len())..];
    if data.len() < size {
        return Err(format!(
            "{w}x{h} image needs {size} bytes of pixels, the file has {}",
            data.len()
        ));
    }
    let scale = |v: u8| ((v as usize * 255) / max) as u8;
    Ok((w, h, data[..size].iter().map(|&v| scale(v)).collect()))
}

/// A greyscale image resized (nearest neighbour) to 28x28 and normalised as MNIST (white digit on
/// black, as the data set has it). `pixels` holds `h` rows of `w` (both at least 1).
pub fn to_mnist_input(w: usize, h: usize, pixels: &[u8]) -> Result<Vec<f32>> {
    if w == 0 || h == 0 || w.checked_mul(h).is_none_or(|n| pixels.len() < n) {
        return Err(NnError::Invalid(format!(
            "a {w}x{h} image needs at least one pixel per side and {w}x{h} pixels, {} given",
            pixels.len()
        )));
    }
    Ok((0..28 * 28)
        .map(|k| {
            let (y, x) = (k / 28, k % 28);
            let p = pixels[(y * h / 28) * w + x * w / 28];
            (p as f32 / 255.0 - 0.1307) / 0.3081
        })
        .collect())
}
