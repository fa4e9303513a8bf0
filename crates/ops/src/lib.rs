//! kiln-ops: one module per op family. Each has shape checks that return [`OpError`], a launcher
//! for its WGSL kernel, its backward rule, and a plain CPU reference (f64) used by the tests.
//!
//! Ops take and return [`Array`]s: a device buffer with a row-major shape. Each family also
//! implements [`op::Op`] (forward, backward, variant) beside its launchers, which is how
//! kiln-graph's autograd runs it; users' own ops implement the same trait.

pub mod attention;
pub mod banks;
pub mod conv;
pub mod decode;
pub mod dropout;
pub mod elementwise;
pub mod finite;
pub mod geometry;
pub mod half;
pub mod int8;
pub mod kernels;
pub mod layout;
pub mod lookup;
pub mod mask;
pub mod matmul;
pub mod norm;
pub mod op;
pub mod optim;
pub mod pool;
pub mod random;
pub mod reduce;
pub mod rnn;
pub mod softmax;
pub mod testing;

pub use kiln_device::{Buffer, DType, Device, DeviceError, Element, KernelPolicy, Params, Plan};
use std::sync::Arc;
use thiserror::Error;

/// What an op can report.
#[derive(Debug, Error, Clone)]
pub enum OpError {
    /// A shape that does not fit the op.
    #[error("{op}: expected {expected}, got {got}")]
    Shape {
        /// The op.
        op: &'static str,
        /// What it takes.
        expected: String,
        /// What it was given.
        got: String,
    },
    /// A dtype the op does not take.
    #[error("{op}: expected dtype {expected}, got {got}")]
    DType {
        /// The op.
        op: &'static str,
        /// The dtype it takes.
        expected: DType,
        /// The dtype it was given.
        got: DType,
    },
    /// An argument outside its valid range.
    #[error("{op}: {message}")]
    Invalid {
        /// The op.
        op: &'static str,
        /// What is wrong.
        message: String,
    },
    /// An op without a backward pass was asked for a gradient.
    #[error("{op} has no backward pass: it can run only where no input needs a gradient")]
    NoBackward {
        /// The op.
        op: String,
    },
    /// From the device layer.
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// The ops' result type.
pub type Result<T, E = OpError> = std::result::Result<T, E>;

/// A device buffer seen as a row-major array of `shape`.
#[derive(Clone, Debug)]
pub struct Array {
    /// The data.
    pub buf: Buffer,
    /// Extent of each dimension, outermost first.
    pub shape: Vec<usize>,
}

/// Number of elements of a shape.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

impl Array {
    /// Uploads f32 data.
    pub fn from_f32(dev: &Device, data: &[f32], shape: &[usize]) -> Result<Array> {
        check_len("from_f32", data.len(), shape)?;
        Ok(Array {
            buf: dev.upload(data)?,
            shape: shape.to_vec(),
        })
    }
    /// Uploads i32 data (class labels, indices).
    pub fn from_i32(dev: &Device, data: &[i32], shape: &[usize]) -> Result<Array> {
        check_len("from_i32", data.len(), shape)?;
        Ok(Array {
            buf: dev.upload(data)?,
            shape: shape.to_vec(),
        })
    }
    /// Uploads f16 data (needs the adapter's SHADER_F16 to be used in kernels).
    pub fn from_f16(dev: &Device, data: &[::half::f16], shape: &[usize]) -> Result<Array> {
        check_len("from_f16", data.len(), shape)?;
        Ok(Array {
            buf: dev.upload(data)?,
            shape: shape.to_vec(),
        })
    }
    /// An uninitialised f32 array.
    pub fn empty(dev: &Device, shape: &[usize]) -> Result<Array> {
        Ok(Array {
            buf: dev.alloc(numel(shape), DType::F32)?,
            shape: shape.to_vec(),
        })
    }
    /// An f32 array with every element `value` (filled on the GPU).
    pub fn full(dev: &Device, shape: &[usize], value: f32) -> Result<Array> {
        let a = Array::empty(dev, shape)?;
        fill(dev, &a.buf, value)?;
        Ok(a)
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    /// Element type.
    pub fn dtype(&self) -> DType {
        self.buf.dtype()
    }
    /// Reads f32 data back.
    pub fn to_f32(&self, dev: &Device) -> Result<Vec<f32>> {
        expect_dtype("to_f32", self, DType::F32)?;
        Ok(dev.download(&self.buf)?)
    }
    /// Reads f16 data back.
    pub fn to_f16(&self, dev: &Device) -> Result<Vec<::half::f16>> {
        expect_dtype("to_f16", self, DType::F16)?;
        Ok(dev.download(&self.buf)?)
    }
    /// Reads i32 data back.
    pub fn to_i32(&self, dev: &Device) -> Result<Vec<i32>> {
        expect_dtype("to_i32", self, DType::I32)?;
        Ok(dev.download(&self.buf)?)
    }
    /// Reads f32 data back without blocking (awaits the GPU; the form a browser page needs).
    pub async fn to_f32_async(&self, dev: &Device) -> Result<Vec<f32>> {
        expect_dtype("to_f32", self, DType::F32)?;
        Ok(dev.download_async(&self.buf).await?)
    }
    /// Reads i32 data back without blocking (awaits the GPU; the form a browser page needs).
    pub async fn to_i32_async(&self, dev: &Device) -> Result<Vec<i32>> {
        expect_dtype("to_i32", self, DType::I32)?;
        Ok(dev.download_async(&self.buf).await?)
    }
    /// The same data under another shape with as many elements (no copy).
    pub fn reshape(&self, shape: &[usize]) -> Result<Array> {
        if numel(shape) != self.numel() {
            return Err(OpError::Shape {
                op: "reshape",
                expected: format!("a shape with {} elements", self.numel()),
                got: format!("{shape:?}"),
            });
        }
        Ok(Array {
            buf: self.buf.clone(),
            shape: shape.to_vec(),
        })
    }
}

fn check_len(op: &'static str, len: usize, shape: &[usize]) -> Result<()> {
    if len != numel(shape) {
        return Err(OpError::Shape {
            op,
            expected: format!("{} values for shape {shape:?}", numel(shape)),
            got: format!("{len} values"),
        });
    }
    Ok(())
}

pub(crate) fn expect_dtype(op: &'static str, a: &Array, dtype: DType) -> Result<()> {
    if a.dtype() != dtype {
        return Err(OpError::DType {
            op,
            expected: dtype,
            got: a.dtype(),
        });
    }
    Ok(())
}

pub(crate) fn expect_nonempty(op: &'static str, a: &Array) -> Result<()> {
    if a.numel() == 0 {
        return Err(OpError::Shape {
            op,
            expected: "a non-empty array".into(),
            got: format!("{:?}", a.shape),
        });
    }
    Ok(())
}

/// `buf`, or a one-element placeholder for a binding the kernel leaves unread without it.
pub(crate) fn or_placeholder(dev: &Device, buf: Option<&Buffer>) -> Result<Buffer> {
    match buf {
        Some(b) => Ok(b.clone()),
        None => Ok(dev.alloc(1, DType::F32)?),
    }
}

/// f32 elements in the uniform arrays kernels read bulk data through (`array<vec4<f32>, 4096>`,
/// 64 KiB, the smallest `max_uniform_buffer_binding_size` wgpu allows).
pub(crate) const WINDOW_FLOATS: usize = (kiln_device::WINDOW_BYTES / 4) as usize;

/// A run of whole items that one 64 KiB uniform window of each buffer holds.
pub(crate) struct UniformRun {
    /// The first item of the run.
    pub first: usize,
    /// Items in the run.
    pub count: usize,
    /// Per buffer: the window, to bind to an `array<vec4<f32>, 4096>` uniform, and the elements
    /// from its start to the run's first item.
    pub windows: Vec<(Buffer, usize)>,
}

/// Splits `items` items, laid one after another from element 0 of each buffer (`item_len` f32
/// each), into runs that one 64 KiB uniform window of every buffer holds, so that a kernel can
/// read them through uniform arrays. Software adapters gather a uniform array's elements in one
/// vector operation but load a storage buffer's one invocation at a time, four to five times
/// slower on lavapipe. None where one item (plus the offset alignment's slack) is larger than a
/// window.
pub(crate) fn uniform_runs(
    dev: &Device,
    bufs: &[(&Buffer, usize)],
    items: usize,
) -> Result<Option<Vec<UniformRun>>> {
    let align = dev.limits().min_uniform_buffer_offset_alignment as usize / 4;
    if bufs
        .iter()
        .any(|&(_, len)| len == 0 || len + align - 1 > WINDOW_FLOATS)
    {
        return Ok(None);
    }
    // Per buffer, what to window and the last aligned start that leaves a whole window.
    let mut sources = Vec::new();
    for &(buf, len) in bufs {
        if buf.capacity() < (WINDOW_FLOATS * 4) as u64 {
            // A binding must be a full 64 KiB: copy a small buffer into one.
            let full = dev.alloc(WINDOW_FLOATS, DType::F32)?;
            let n = len * items;
            if n > 0 {
                let copy = dev.kernel("fill", "copy", &[])?;
                launch_1d(
                    dev,
                    &copy,
                    &[&full, buf],
                    &Params::new().u(n as u32).f(0.0),
                    n,
                )?;
            }
            sources.push(full);
        } else {
            sources.push(buf.clone());
        }
    }
    let mut runs = Vec::new();
    let mut first = 0;
    while first < items {
        let mut count = items - first;
        let mut windows = Vec::new();
        for (src, &(_, len)) in sources.iter().zip(bufs) {
            let (window, skip) = window_at(src, align, first * len);
            count = count.min((WINDOW_FLOATS - skip) / len);
            windows.push((window, skip));
        }
        runs.push(UniformRun {
            first,
            count,
            windows,
        });
        first += count;
    }
    Ok(Some(runs))
}

/// The 64 KiB uniform window of `buf` (a window's size or larger) that starts at or before
/// element `start`, aligned, inside the allocation, and the elements from its start to `start`.
fn window_at(buf: &Buffer, align: usize, start: usize) -> (Buffer, usize) {
    let last = (buf.capacity() as usize / 4 - WINDOW_FLOATS) / align * align;
    let at = (start / align * align).min(last);
    let window = buf
        .window((at * 4) as u64, WINDOW_FLOATS)
        .expect("window inside the allocation");
    (window, start - at)
}

/// The 64 KiB uniform window of `buf` that holds its elements `start .. start + len`, and the
/// elements from the window's start to `start`, for a kernel that reads one range of a larger
/// buffer through a uniform array. None where the range (plus the offset alignment's slack) is
/// larger than a window or the buffer's allocation is smaller than one.
pub(crate) fn uniform_window(
    dev: &Device,
    buf: &Buffer,
    start: usize,
    len: usize,
) -> Option<(Buffer, usize)> {
    let align = dev.limits().min_uniform_buffer_offset_alignment as usize / 4;
    if len == 0 || buf.capacity() < (WINDOW_FLOATS * 4) as u64 {
        return None;
    }
    let (window, skip) = window_at(buf, align, start);
    (skip + len <= WINDOW_FLOATS).then_some((window, skip))
}

/// Workgroup size of the 1-D kernels (the WGSL `WG` constant).
pub(crate) const WG: u32 = 256;

/// Launches a 1-D kernel over `n` invocations of 256 per workgroup.
pub(crate) fn launch_1d(
    dev: &Device,
    kernel: &Arc<kiln_device::Kernel>,
    bufs: &[&Buffer],
    params: &Params,
    n: usize,
) -> Result<()> {
    let groups = u32::try_from(n.div_ceil(WG as usize)).map_err(|_| OpError::Invalid {
        op: "launch",
        message: format!("{n} elements exceed what one dispatch can index"),
    })?;
    dev.launch(kernel, bufs, params, [groups, 1, 1])?;
    Ok(())
}

/// Launches the 1-D kernel `shader::entry` over `n` elements: its quad entry point (`entry`
/// followed by "4", four elements per invocation, loaded as vec4s) where every buffer is
/// [`Buffer::quad_aligned`], else `entry` itself, one element per invocation. Software adapters
/// run the quad form about three times as fast.
pub(crate) fn launch_quads(
    dev: &Device,
    shader: &str,
    entry: &str,
    constants: &[(&str, f64)],
    bufs: &[&Buffer],
    params: &Params,
    n: usize,
) -> Result<()> {
    if bufs.iter().all(|b| b.quad_aligned()) {
        let k = dev.kernel(shader, &format!("{entry}4"), constants)?;
        launch_1d(dev, &k, bufs, params, n.div_ceil(4))
    } else {
        let k = dev.kernel(shader, entry, constants)?;
        launch_1d(dev, &k, bufs, params, n)
    }
}

/// Sets every element of an f32 buffer to `value` on the GPU (recorded like any op, so it replays).
pub fn fill(dev: &Device, buf: &Buffer, value: f32) -> Result<()> {
    let p = Params::new().u(buf.len() as u32).f(value);
    launch_quads(dev, "fill", "fill", &[], &[buf], &p, buf.len())
}

/// Packs up to 8 dims into the `array<vec4<u32>, 2>` layout the WGSL kernels read.
pub(crate) fn pack8(op: &'static str, v: &[usize]) -> Result<[u32; 8]> {
    if v.len() > 8 {
        return Err(OpError::Invalid {
            op,
            message: format!("at most 8 dimensions are supported, got {}", v.len()),
        });
    }
    let mut out = [0u32; 8];
    for (o, &x) in out.iter_mut().zip(v) {
        *o = x as u32;
    }
    Ok(out)
}
