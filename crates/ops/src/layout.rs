//! Layout ops through one strided-copy kernel: permute/transpose, slice, concat, broadcast, copy.
//! Reshape is free ([`Array::reshape`]).

use crate::{
    expect_dtype, launch_1d, numel, pack8, strides, Array, DType, Device, OpError, Params, Result,
};

/// Copies `shape`-many elements from `x` (offset, strides) into `out` (offset, strides).
#[allow(clippy::too_many_arguments)]
pub fn strided_copy(
    dev: &Device,
    x: &crate::Buffer,
    out: &crate::Buffer,
    shape: &[usize],
    off_in: usize,
    in_strides: &[usize],
    off_out: usize,
    out_strides: &[usize],
) -> Result<()> {
    let n = numel(shape);
    let k = dev.kernel("layout", "strided_copy", &[])?;
    let p = Params::new()
        .u(n as u32)
        .u(shape.len() as u32)
        .u(off_in as u32)
        .u(off_out as u32)
        .us(&pack8("strided_copy", shape)?)
        .us(&pack8("strided_copy", in_strides)?)
        .us(&pack8("strided_copy", out_strides)?);
    launch_1d(dev, &k, &[x, out], &p, n)
}

/// Reorders dimensions: `out.shape[i] = x.shape[perm[i]]`.
pub fn permute(dev: &Device, x: &Array, perm: &[usize]) -> Result<Array> {
    expect_dtype("permute", x, DType::F32)?;
    let mut seen = vec![false; x.shape.len()];
    if perm.len() != x.shape.len()
        || perm
            .iter()
            .any(|&p| p >= seen.len() || std::mem::replace(&mut seen[p], true))
    {
        return Err(OpError::Invalid {
            op: "permute",
            message: format!("{perm:?} is not a permutation of {} axes", x.shape.len()),
        });
    }
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let xs = strides(&x.shape);
    let in_strides: Vec<usize> = perm.iter().map(|&p| xs[p]).collect();
    let out = Array::empty(dev, &shape)?;
    strided_copy(
        dev,
        &x.buf,
        &out.buf,
        &shape,
        0,
        &in_strides,
        0,
        &strides(&shape),
    )?;
    Ok(out)
}

/// Swaps two dimensions.
pub fn transpose(dev: &Device, x: &Array, a: usize, b: usize) -> Result<Array> {
    let mut perm: Vec<usize> = (0..x.shape.len()).collect();
    if a >= perm.len() || b >= perm.len() {
        return Err(OpError::Invalid {
            op: "transpose",
            message: format!("axes ({a}, {b}) out of range for shape {:?}", x.shape),
        });
    }
    perm.swap(a, b);
    permute(dev, x, &perm)
}

/// x[.., start..start+len, ..] along `axis`.
pub fn slice(dev: &Device, x: &Array, axis: usize, start: usize, len: usize) -> Result<Array> {
    expect_dtype("slice", x, DType::F32)?;
    if axis >= x.shape.len() || start + len > x.shape[axis] {
        return Err(OpError::Invalid {
            op: "slice",
            message: format!(
                "{start}..{} along axis {axis} of shape {:?}",
                start + len,
                x.shape
            ),
        });
    }
    let mut shape = x.shape.clone();
    shape[axis] = len;
    let xs = strides(&x.shape);
    let out = Array::empty(dev, &shape)?;
    strided_copy(
        dev,
        &x.buf,
        &out.buf,
        &shape,
        start * xs[axis],
        &xs,
        0,
        &strides(&shape),
    )?;
    Ok(out)
}

/// Backward of [`slice()`]: dy placed at start..start+len along `axis` of zeros of `shape`.
pub fn slice_backward(
    dev: &Device,
    dy: &Array,
    shape: &[usize],
    axis: usize,
    start: usize,
) -> Result<Array> {
    let dx = Array::full(dev, shape, 0.0)?;
    let os = strides(shape);
    strided_copy(
        dev,
        &dy.buf,
        &dx.buf,
        &dy.shape,
        0,
        &strides(&dy.shape),
        start * os[axis],
        &os,
    )?;
    Ok(dx)
}

/// Joins arrays along `axis`; all other extents must match.
pub fn concat(dev: &Device, xs: &[&Array], axis: usize) -> Result<Array> {
    let first = xs.first().ok_or(OpError::Invalid {
        op: "concat",
        message: "no arrays given".into(),
    })?;
    let mut shape = first.shape.clone();
    if axis >= shape.len() {
        return Err(OpError::Invalid {
            op: "concat",
            message: format!("axis {axis} out of range for shape {shape:?}"),
        });
    }
    shape[axis] = 0;
    for x in xs {
        expect_dtype("concat", x, DType::F32)?;
        let mut s = x.shape.clone();
        let mut f = first.shape.clone();
        if s.len() != f.len() {
            return Err(OpError::Shape {
                op: "concat",
                expected: format!("{} dimensions", f.len()),
                got: format!("{:?}", x.shape),
            });
        }
        s[axis] = 0;
        f[axis] = 0;
        if s != f {
            return Err(OpError::Shape {
                op: "concat",
                expected: format!("{:?} outside axis {axis}", first.shape),
                got: format!("{:?}", x.shape),
            });
        }
        shape[axis] += x.shape[axis];
    }
    let out = Array::empty(dev, &shape)?;
    let os = strides(&shape);
    let mut at = 0;
    for x in xs {
        strided_copy(
            dev,
            &x.buf,
            &out.buf,
            &x.shape,
            0,
            &strides(&x.shape),
            at * os[axis],
            &os,
        )?;
        at += x.shape[axis];
    }
    Ok(out)
}

/// Materialises a broadcast of `x` to `shape`.
pub fn broadcast_to(dev: &Device, x: &Array, shape: &[usize]) -> Result<Array> {
    let s = crate::elementwise::broadcast_shape("broadcast_to", &x.shape, shape)?;
    if s != shape {
        return Err(OpError::Shape {
            op: "broadcast_to",
            expected: format!("a shape {:?} broadcasts to", x.shape),
            got: format!("{shape:?}"),
        });
    }
    let out = Array::empty(dev, shape)?;
    let st = crate::elementwise::broadcast_strides(&x.shape, shape);
    strided_copy(dev, &x.buf, &out.buf, shape, 0, &st, 0, &strides(shape))?;
    Ok(out)
}

/// A contiguous copy.
pub fn copy(dev: &Device, x: &Array) -> Result<Array> {
    let out = Array::empty(dev, &x.shape)?;
    let st = strides(&x.shape);
    strided_copy(dev, &x.buf, &out.buf, &x.shape, 0, &st, 0, &st)?;
    Ok(out)
}
