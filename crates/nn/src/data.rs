//! Data: MNIST's IDX files (gzip), character-level text, seeded shuffling into batches.

use crate::{NnError, Result};
use kiln_ops::testing::Rng;
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

/// Reads an IDX file of unsigned bytes (gzip-compressed when the name ends in `.gz`), checking
/// its magic number, its dimension count and that the payload is exactly as long as they say.
pub fn read_idx(path: &Path, expect_dims: usize) -> Result<Idx> {
    let raw = std::fs::read(path).map_err(|e| err(path, e.to_string()))?;
    let bytes = if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| err(path, format!("gzip: {e} (truncated or not gzip)")))?;
        out
    } else {
        raw
    };
    parse_idx(&bytes, expect_dims).map_err(|m| err(path, m))
}

/// Parses IDX bytes (already decompressed).
pub fn parse_idx(bytes: &[u8], expect_dims: usize) -> std::result::Result<Idx, String> {
    if bytes.len() < 4 {
        return Err(format!(
            "{} bytes: too short for an IDX header",
            bytes.len()
        ));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let want = 0x0800 | expect_dims as u32;
    if magic != want {
        return Err(format!(
            "magic number 0x{magic:08x}, expected 0x{want:08x} (u8 data, {expect_dims} dimensions)"
        ));
    }
    let header = 4 + 4 * expect_dims;
    if bytes.len() < header {
        return Err(format!(
            "{} bytes: too short for a {expect_dims}-dimension header",
            bytes.len()
        ));
    }
    let dims: Vec<usize> = (0..expect_dims)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let n: usize = dims.iter().product();
    if bytes.len() - header != n {
        return Err(format!(
            "dimensions {dims:?} need {n} bytes of data, the file has {}",
            bytes.len() - header
        ));
    }
    Ok(Idx {
        dims,
        data: bytes[header..].to_vec(),
    })
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
        let img = read_idx(&ip, 3)?;
        let lab = read_idx(&lp, 1)?;
        if img.dims[1..] != [28, 28] {
            return Err(err(
                &ip,
                format!("images are {:?}, expected [n, 28, 28]", img.dims),
            ));
        }
        if lab.dims[0] != img.dims[0] {
            return Err(err(
                &lp,
                format!("{} labels for {} images", lab.dims[0], img.dims[0]),
            ));
        }
        if let Some(bad) = lab.data.iter().find(|&&l| l > 9) {
            return Err(err(&lp, format!("label {bad} outside 0..=9")));
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

    /// Examples `range` as (images, labels).
    pub fn split(&self, range: std::ops::Range<usize>) -> (Vec<f32>, Vec<i32>) {
        (
            self.images[range.start * 784..range.end * 784].to_vec(),
            self.labels[range].to_vec(),
        )
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
    let data = &bytes[(i + 1).min(bytes.len())..];
    if data.len() < w * h {
        return Err(format!(
            "{w}x{h} image needs {} bytes of pixels, the file has {}",
            w * h,
            data.len()
        ));
    }
    let scale = |v: u8| ((v as usize * 255) / max) as u8;
    Ok((w, h, data[..w * h].iter().map(|&v| scale(v)).collect()))
}

/// A greyscale image resized (nearest neighbour) to 28x28 and normalised as MNIST (white digit on
/// black, as the data set has it).
pub fn to_mnist_input(w: usize, h: usize, pixels: &[u8]) -> Vec<f32> {
    (0..28 * 28)
        .map(|k| {
            let (y, x) = (k / 28, k % 28);
            let p = pixels[(y * h / 28) * w + x * w / 28];
            (p as f32 / 255.0 - 0.1307) / 0.3081
        })
        .collect()
}
