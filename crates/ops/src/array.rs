//! [`Array`]: a device buffer seen as a row-major array, and the shape checks ops share.

use crate::{launch_quads, Buffer, DType, Device, OpError, Params, Result};

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
    /// An uninitialised f32 array of `like`'s shape (an op's output or gradient).
    pub fn empty_like(dev: &Device, like: &Array) -> Result<Array> {
        Array::empty(dev, &like.shape)
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
