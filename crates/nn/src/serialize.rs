//! Named tensors as safetensors files with PyTorch's state_dict names and layouts, written
//! atomically (temporary file in the same directory, flushed and synced, then renamed).
//!
//! Every file kiln writes carries a format version (`kiln.format`) and a CRC32 (`kiln.crc32`) of
//! everything else in it: each metadata entry and each tensor's name, dtype, shape and bytes. A
//! truncated or altered file, metadata included, is rejected on load, and so is a file without the
//! checksum: files from other tools (PyTorch's safetensors) are read with the explicit
//! [`load_unverified`] / [`TensorFile::open_unverified`]. A CRC32 catches corruption, not a
//! deliberate forgery (anyone can recompute it). Training checkpoints (optimizer state, epochs done,
//! the run's settings) build on these in kiln-train.

use crate::error::{NnError, Result};
use kiln_graph::Tensor;
/// The element types a safetensors file names (re-exported for [`TensorFile::raw_tensors`]).
pub use safetensors::tensor::Dtype;
use safetensors::tensor::{SafeTensorError, SafeTensors, TensorView};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

const CHECKSUM_KEY: &str = "kiln.crc32";
const FORMAT_KEY: &str = "kiln.format";
/// The file format this kiln writes: 2 since the checksum covers the metadata too (format 1, with
/// no `kiln.format` key, covered the tensors only and left the metadata open to edits).
pub const FORMAT_VERSION: u32 = 2;
/// Metadata key that marks a quantized model file, with its precision ("int8", "f16").
pub(crate) const QUANTIZED_KEY: &str = "kiln.quantized";

pub(crate) fn err(path: &Path, message: impl Into<String>) -> NnError {
    NnError::Data {
        path: path.display().to_string(),
        message: message.into(),
    }
}

/// Writes `named` tensors (f32) and `metadata` to `path` atomically: the previous file, if any,
/// stays intact until the new one is complete on disk.
pub fn save(path: &Path, named: &[(String, Tensor)], metadata: &[(String, String)]) -> Result<()> {
    let mut tensors = Vec::with_capacity(named.len());
    for (name, t) in named {
        tensors.push(RawTensor::f32(name, t.shape(), &t.to_vec()?));
    }
    save_raw(path, tensors, metadata)
}

/// One tensor as stored: name, dtype, shape and little-endian bytes.
#[derive(Clone, Debug)]
pub(crate) struct RawTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl RawTensor {
    pub fn f32(name: &str, shape: &[usize], v: &[f32]) -> RawTensor {
        RawTensor {
            name: name.to_string(),
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            data: bytes_of(v),
        }
    }
    /// The values as f32 (the dtype must be F32).
    pub fn to_f32(&self) -> Vec<f32> {
        f32s(&self.data)
    }
}

/// Writes tensors of any dtype with the format version and the checksum, atomically.
pub(crate) fn save_raw(
    path: &Path,
    mut tensors: Vec<RawTensor>,
    metadata: &[(String, String)],
) -> Result<()> {
    // The checksum covers tensors in name order (the order safetensors stores).
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let mut meta: HashMap<String, String> = metadata.iter().cloned().collect();
    meta.insert(FORMAT_KEY.into(), FORMAT_VERSION.to_string());
    meta.remove(CHECKSUM_KEY);
    let sum = checksum(
        &meta,
        tensors
            .iter()
            .map(|t| (t.name.as_str(), t.dtype, &t.shape[..], &t.data[..])),
    );
    meta.insert(CHECKSUM_KEY.into(), format!("{sum:08x}"));
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|t| {
            Ok((
                t.name.clone(),
                TensorView::new(t.dtype, t.shape.clone(), &t.data)
                    .map_err(|e| err(path, e.to_string()))?,
            ))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| err(path, e.to_string()))?;
    write_atomically(path, &bytes)
}

/// Reads every tensor (checksum verified) and the metadata.
pub(crate) fn read_raw(
    path: &Path,
) -> Result<(HashMap<String, RawTensor>, HashMap<String, String>)> {
    let file = TensorFile::open(path)?;
    let st = file.tensors()?;
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let t = RawTensor {
                name: name.clone(),
                dtype: v.dtype(),
                shape: v.shape().to_vec(),
                data: v.data().to_vec(),
            };
            (name, t)
        })
        .collect();
    Ok((tensors, file.meta))
}

/// Writes bytes to a temporary file beside `path`, syncs it, and renames it over `path`.
/// Temporary files that earlier saves to the same path left behind when their process was killed
/// (`.NAME.tmp-PID` with PID no longer running) are removed first.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| err(path, "not a file path"))?;
    if path.is_dir() {
        return Err(err(path, "is a directory, not a file path"));
    }
    remove_stale_temporaries(dir, &name.to_string_lossy());
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename itself is durable once the directory is synced.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(
            path,
            format!("writing failed, previous file left as it was: {e}"),
        ));
    }
    Ok(())
}

/// The directory a file path lives in (`.` for a bare name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Removes `.NAME.tmp-PID` files in `dir` whose writing process has ended: a save killed between
/// creating its temporary file and renaming it leaves one behind. A running writer's file (another
/// live process, or this one) is left alone, and so is any file whose suffix is not a PID.
fn remove_stale_temporaries(dir: &Path, name: &str) {
    let prefix = format!(".{name}.tmp-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !process_alive(pid) && e.path().is_file() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Whether a process with this id exists (true where that cannot be told: nothing is removed then).
fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return true;
        };
        // Signal 0 checks for existence without sending anything; only "no such process" (ESRCH)
        // means it is gone (EPERM: it exists under another user).
        // SAFETY: kill with signal 0 has no effect on the target; it only reports an error code.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// An advisory lock that a run holds on a file path it owns (its checkpoint) from before training
/// until it ends, so that a second run saving to the same path fails at once instead of
/// overwriting the first one's file. It is a lock on a sidecar `.NAME.lock` in the same directory
/// (the checkpoint itself is replaced by each atomic save); the operating system releases it when
/// the process ends, however it ends. The sidecar stays: removing it would let two runs lock two
/// different files of the same name.
#[derive(Debug)]
pub struct PathLock {
    path: PathBuf,
    _file: std::fs::File,
}

impl PathLock {
    /// Takes the lock for `path`, checking on the way that a file can be written there: the
    /// directory exists and is writable, and `path` is not a directory. Fails naming the process
    /// that holds it when another run does.
    pub fn acquire(path: &Path) -> Result<PathLock> {
        let name = path
            .file_name()
            .ok_or_else(|| err(path, "not a file path"))?;
        if path.is_dir() {
            return Err(err(path, "is a directory, not a file path"));
        }
        let dir = parent_dir(path);
        if !dir.is_dir() {
            return Err(err(
                path,
                format!(
                    "cannot be written: the folder {} does not exist",
                    dir.display()
                ),
            ));
        }
        let lock_path = dir.join(format!(".{}.lock", name.to_string_lossy()));
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| err(path, format!("cannot be written ({e})")))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
                let holder = holder.trim();
                return Err(err(
                    path,
                    format!(
                        "another run is saving to this path{}; two runs must not share a checkpoint",
                        if holder.is_empty() {
                            String::new()
                        } else {
                            format!(" (process {holder})")
                        }
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(err(
                    path,
                    format!("cannot lock {}: {e}", lock_path.display()),
                ))
            }
        }
        // The holder's id, for the message another run prints.
        let _ = file.set_len(0);
        let _ = write!(file, "{}", std::process::id());
        let _ = file.flush();
        Ok(PathLock {
            path: path.to_path_buf(),
            _file: file,
        })
    }

    /// The path this lock guards.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn bytes_of(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// CRC32 over the metadata (but the checksum itself) in key order and the tensors in the order
/// given (name order), every field length-prefixed so that no two different files hash the same
/// byte stream.
fn checksum<'a>(
    meta: &HashMap<String, String>,
    tensors: impl Iterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>,
) -> u32 {
    let mut h = crc32fast::Hasher::new();
    let mut put = |b: &[u8]| {
        h.update(&(b.len() as u64).to_le_bytes());
        h.update(b);
    };
    let mut keys: Vec<&String> = meta.keys().filter(|k| *k != CHECKSUM_KEY).collect();
    keys.sort();
    put(b"kiln metadata");
    for k in keys {
        put(k.as_bytes());
        put(meta[k].as_bytes());
    }
    put(b"kiln tensors");
    for (name, dtype, shape, data) in tensors {
        put(name.as_bytes());
        put(format!("{dtype:?}").as_bytes());
        let dims: Vec<u8> = shape
            .iter()
            .flat_map(|d| (*d as u64).to_le_bytes())
            .collect();
        put(&dims);
        put(data);
    }
    h.finalize()
}

/// A tensor as a file stores it: name, dtype, shape and little-endian bytes.
pub type StoredTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// What a non-strict load skipped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    /// Model parameters the file does not have (left as they were).
    pub missing: Vec<String>,
    /// File tensors the model does not have.
    pub unexpected: Vec<String>,
    /// Names in both with different shapes or dtypes (left as they were), with the reason.
    pub mismatched: Vec<String>,
}

/// Where a training checkpoint keeps the optimizer's state (`optim.G.P.K`), which loading a
/// model from it skips by design.
const OPTIMIZER_STATE: &str = "optim.";

impl LoadReport {
    /// File tensors the model does not have, other than a training checkpoint's optimizer state:
    /// what a non-strict load ignored that the user may not expect (a layer the model lacks).
    pub fn ignored(&self) -> Vec<&str> {
        self.unexpected
            .iter()
            .filter(|n| !n.starts_with(OPTIMIZER_STATE))
            .map(String::as_str)
            .collect()
    }

    /// How many file tensors were a training checkpoint's optimizer state.
    pub fn optimizer_state(&self) -> usize {
        self.unexpected.len() - self.ignored().len()
    }

    /// Every parameter loaded and every file tensor used (optimizer state aside).
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.mismatched.is_empty() && self.ignored().is_empty()
    }
}

impl std::fmt::Display for LoadReport {
    /// One line for people: what was left at its initial values and what was ignored.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[&str]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        let left: Vec<&str> = self
            .missing
            .iter()
            .chain(&self.mismatched)
            .map(String::as_str)
            .collect();
        write!(
            f,
            "left at initial values: {}; ignored from the file: {}",
            list(&left),
            list(&self.ignored())
        )?;
        match self.optimizer_state() {
            0 => Ok(()),
            n => write!(
                f,
                " (and {n} optimizer-state tensors of a training checkpoint)"
            ),
        }
    }
}

/// The file's metadata (checksum verified).
pub fn read_metadata(path: &Path) -> Result<HashMap<String, String>> {
    Ok(TensorFile::open(path)?.meta)
}

/// A safetensors file read whole and checked: its header parses, its checksum matches (unless
/// opened unverified) and every floating-point tensor is finite. Nothing has been loaded anywhere
/// yet, so a caller can check the metadata before touching a model.
pub struct TensorFile {
    path: PathBuf,
    bytes: Vec<u8>,
    meta: HashMap<String, String>,
}

impl TensorFile {
    /// Opens a file kiln wrote: the format version and the checksum are required.
    pub fn open(path: &Path) -> Result<TensorFile> {
        Self::read(path, true)
    }

    /// Opens a file that may come from another tool (PyTorch's safetensors writes no kiln
    /// checksum): a checksum present is still verified, a missing one is accepted, so nothing
    /// vouches for the bytes of such a file. Non-finite values are refused all the same.
    pub fn open_unverified(path: &Path) -> Result<TensorFile> {
        Self::read(path, false)
    }

    /// Checks bytes already in memory as [`TensorFile::open`] does; `path` names them in errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<TensorFile> {
        let meta = check(path, &bytes, true)?;
        Ok(TensorFile {
            path: path.to_path_buf(),
            bytes,
            meta,
        })
    }

    fn read(path: &Path, required: bool) -> Result<TensorFile> {
        let bytes = std::fs::read(path).map_err(|e| err(path, e.to_string()))?;
        let meta = check(path, &bytes, required)?;
        Ok(TensorFile {
            path: path.to_path_buf(),
            bytes,
            meta,
        })
    }

    /// The metadata (the `kiln.` keys included).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.meta
    }

    /// The path it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn tensors(&self) -> Result<SafeTensors<'_>> {
        // Already parsed once by `check`: this cannot fail on the same bytes.
        SafeTensors::deserialize(&self.bytes).map_err(|e| err(&self.path, describe(&e)))
    }

    /// Every tensor's name, dtype, shape and little-endian bytes, in name order.
    pub fn raw_tensors(&self) -> Result<Vec<StoredTensor>> {
        let st = self.tensors()?;
        let mut v: Vec<_> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(v)
    }

    /// Loads tensors into the model's parameters by name. Strict: any missing, unexpected or
    /// mis-shaped tensor is an error naming it, and nothing is changed. Non-strict: those are
    /// skipped and reported.
    pub fn load_into(&self, named: &[(String, Tensor)], strict: bool) -> Result<LoadReport> {
        let path = &self.path;
        if let Some(q) = self.meta.get(QUANTIZED_KEY) {
            return Err(err(
                path,
                format!("holds a {q}-quantized model, not f32 parameters: load it with quant::QuantizedModel::load"),
            ));
        }
        let st = self.tensors()?;
        let mut report = LoadReport::default();
        let mut writes = Vec::new();
        for (name, t) in named {
            match st.tensor(name) {
                Err(_) => report.missing.push(name.clone()),
                Ok(v) if v.dtype() != Dtype::F32 => report
                    .mismatched
                    .push(format!("{name}: dtype {:?}, model has F32", v.dtype())),
                Ok(v) if v.shape() != t.shape() => report.mismatched.push(format!(
                    "{name}: shape {:?} in the file, {:?} in the model",
                    v.shape(),
                    t.shape()
                )),
                Ok(v) => writes.push((t, v)),
            }
        }
        let known: std::collections::HashSet<&str> =
            named.iter().map(|(n, _)| n.as_str()).collect();
        report.unexpected = st
            .names()
            .into_iter()
            .filter(|n| !known.contains(*n))
            .map(str::to_string)
            .collect();
        report.unexpected.sort();
        if strict && (report.missing.len() + report.unexpected.len() + report.mismatched.len()) > 0
        {
            return Err(err(
                path,
                format!(
                    "does not match the model: missing {:?}, unexpected {:?}, mismatched {:?}",
                    report.missing, report.unexpected, report.mismatched
                ),
            ));
        }
        for (t, v) in writes {
            t.copy_from_slice(&f32s(v.data()))?;
        }
        Ok(report)
    }
}

/// Explains a safetensors parse error; only the errors that a cut-off file produces say so.
fn describe(e: &SafeTensorError) -> String {
    match e {
        SafeTensorError::MetadataIncompleteBuffer | SafeTensorError::InvalidHeaderLength => {
            format!("not a valid safetensors file ({e}): truncated, or its header is corrupt")
        }
        SafeTensorError::HeaderTooSmall => {
            format!("not a valid safetensors file ({e}): shorter than the 8-byte header length")
        }
        _ => format!("not a valid safetensors file: {e}"),
    }
}

/// Parses the header, checks the format version and the checksum (`required`: its absence is an
/// error too) and that every floating-point tensor is finite; returns the metadata.
fn check(path: &Path, bytes: &[u8], required: bool) -> Result<HashMap<String, String>> {
    if bytes.is_empty() {
        return Err(err(path, "empty file"));
    }
    let st = SafeTensors::deserialize(bytes).map_err(|e| err(path, describe(&e)))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| err(path, describe(&e)))?;
    let meta = header.metadata().clone().unwrap_or_default();
    match meta.get(FORMAT_KEY) {
        Some(v) if v.parse::<u32>() == Ok(FORMAT_VERSION) => {}
        Some(v) => {
            return Err(err(
                path,
                format!(
                    "format version {v:?}: this kiln reads version {FORMAT_VERSION} (written by a newer kiln, or altered)"
                ),
            ))
        }
        None if meta.contains_key(CHECKSUM_KEY) && required => {
            return Err(err(
                path,
                format!(
                    "written by an older kiln (format 1, whose checksum leaves the metadata unchecked): load it unverified (serialize::load_unverified) and save it again to get format {FORMAT_VERSION}"
                ),
            ))
        }
        None => {}
    }
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut views = Vec::with_capacity(names.len());
    for n in &names {
        views.push(st.tensor(n).map_err(|e| err(path, describe(&e)))?);
    }
    match meta.get(CHECKSUM_KEY) {
        // Format 1 files summed the tensors only: an unverified load skips their old checksum.
        Some(_) if !meta.contains_key(FORMAT_KEY) => {}
        Some(want) => {
            let got = format!(
                "{:08x}",
                checksum(
                    &meta,
                    names
                        .iter()
                        .zip(&views)
                        .map(|(n, v)| (n.as_str(), v.dtype(), v.shape(), v.data()))
                )
            );
            if &got != want {
                return Err(err(path, format!("checksum mismatch: the file says {want}, its contents give {got} (altered or corrupt; the checksum covers the metadata and every tensor)")));
            }
        }
        None if required => {
            return Err(err(
                path,
                format!(
                    "has no `{CHECKSUM_KEY}` checksum, so its contents cannot be verified: a file from another tool must be loaded explicitly unverified (serialize::load_unverified)"
                ),
            ))
        }
        None => {}
    }
    for (n, v) in names.iter().zip(&views) {
        check_finite(path, n, v)?;
    }
    Ok(meta)
}

/// Refuses a floating-point tensor holding NaN or an infinity, naming it, the first position and
/// how many there are.
fn check_finite(path: &Path, name: &str, v: &TensorView) -> Result<()> {
    let values: Vec<f32> = match v.dtype() {
        Dtype::F32 => f32s(v.data()),
        Dtype::F16 => v
            .data()
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => v
            .data()
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return Ok(()),
    };
    let mut bad = values.iter().enumerate().filter(|(_, x)| !x.is_finite());
    if let Some((i, x)) = bad.next() {
        return Err(err(
            path,
            format!(
                "tensor `{name}` holds non-finite values: {} of {} (the first, {x}, at index {i})",
                1 + bad.count(),
                values.len()
            ),
        ));
    }
    Ok(())
}

/// Loads tensors into the model's parameters by name from a file kiln wrote (checksum required;
/// see [`TensorFile::load_into`] for `strict`).
pub fn load(path: &Path, named: &[(String, Tensor)], strict: bool) -> Result<LoadReport> {
    TensorFile::open(path)?.load_into(named, strict)
}

/// [`load`] for a file from another tool, which carries no kiln checksum (see
/// [`TensorFile::open_unverified`]).
pub fn load_unverified(
    path: &Path,
    named: &[(String, Tensor)],
    strict: bool,
) -> Result<LoadReport> {
    TensorFile::open_unverified(path)?.load_into(named, strict)
}
