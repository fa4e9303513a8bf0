//! Layout ops through one strided-copy kernel: permute/transpose, slice, concat, broadcast, copy.
//! Reshape is free ([`Array::reshape`]).

use crate::{
    expect_dtype, launch_1d, launch_quads, numel, pack8, strides, Array, DType, Device, OpError,
    Params, Result,
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
    let at_in = (off_in, in_strides);
    copy_or_add(dev, x, out, shape, at_in, (off_out, out_strides), false)
}

/// Axes of `shape` with their strides in x and in out, without axes of extent 1 and with each
/// run of axes that both sides lay out contiguously merged into one: the kernel pays a division
/// per axis per element, and the quad kernel needs the innermost axis long and contiguous.
fn collapse(shape: &[usize], si: &[usize], so: &[usize]) -> Vec<(usize, usize, usize)> {
    let mut axes: Vec<(usize, usize, usize)> = Vec::new();
    for ((&e, &a), &b) in shape.iter().zip(si).zip(so) {
        if e == 1 {
            continue;
        }
        match axes.last_mut() {
            Some(last) if last.1 == a * e && last.2 == b * e => *last = (last.0 * e, a, b),
            _ => axes.push((e, a, b)),
        }
    }
    if axes.is_empty() {
        axes.push((1, 1, 1));
    }
    axes
}

/// [`strided_copy`], or with `add` out += x: four elements per invocation where the layout
/// allows (see layout.wgsl's `strided_copy4`).
fn copy_or_add(
    dev: &Device,
    x: &crate::Buffer,
    out: &crate::Buffer,
    shape: &[usize],
    (off_in, in_strides): (usize, &[usize]),
    (off_out, out_strides): (usize, &[usize]),
    add: bool,
) -> Result<()> {
    let n = numel(shape);
    let axes = collapse(shape, in_strides, out_strides);
    let pick = |f: fn(&(usize, usize, usize)) -> usize| axes.iter().map(f).collect::<Vec<_>>();
    let (extents, si, so) = (pick(|a| a.0), pick(|a| a.1), pick(|a| a.2));
    let p = Params::new()
        .u(n as u32)
        .u(axes.len() as u32)
        .u(off_in as u32)
        .u(off_out as u32)
        .us(&pack8("strided_copy", &extents)?)
        .us(&pack8("strided_copy", &si)?)
        .us(&pack8("strided_copy", &so)?);
    let &(inner, inner_si, inner_so) = axes.last().expect("at least one axis");
    // Quads never straddle a row: the innermost axis is contiguous and whole quads long, and
    // every other stride and both offsets are multiples of 4.
    let quad_layout = inner_si == 1
        && inner_so == 1
        && inner.is_multiple_of(4)
        && [off_in, off_out]
            .iter()
            .chain(&si[..axes.len() - 1])
            .chain(&so[..axes.len() - 1])
            .all(|v| v.is_multiple_of(4));
    let consts = [("ACCUMULATE", add as u8 as f64)];
    if quad_layout {
        launch_quads(dev, "layout", "strided_copy", &consts, &[x, out], &p, n)
    } else {
        let k = dev.kernel("layout", "strided_copy", &consts)?;
        launch_1d(dev, &k, &[x, out], &p, n)
    }
}

/// Adds `dy` into the slice `start .. start + dy.shape[axis]` along `axis` of `into`, in place:
/// the gradient of [`slice()`] accumulated into the gradient of the whole, so that many slices
/// of one array (an RNN's time steps) need no zero-filled full-size gradient each.
pub fn slice_add(dev: &Device, into: &Array, dy: &Array, axis: usize, start: usize) -> Result<()> {
    expect_dtype("slice_add", into, DType::F32)?;
    expect_dtype("slice_add", dy, DType::F32)?;
    let fits = dy.shape.len() == into.shape.len()
        && axis < into.shape.len()
        && dy
            .shape
            .iter()
            .zip(&into.shape)
            .enumerate()
            .all(
                |(d, (&a, &b))| {
                    if d == axis {
                        start + a <= b
                    } else {
                        a == b
                    }
                },
            );
    if !fits {
        return Err(OpError::Shape {
            op: "slice_add",
            expected: format!("a slice from {start} along axis {axis} of {:?}", into.shape),
            got: format!("{:?}", dy.shape),
        });
    }
    let os = strides(&into.shape);
    let at_out = (start * os[axis], &os[..]);
    copy_or_add(
        dev,
        &dy.buf,
        &into.buf,
        &dy.shape,
        (0, &strides(&dy.shape)),
        at_out,
        true,
    )
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

/// The same data under another shape with as many elements (no copy), as an op.
#[derive(Clone, Debug)]
pub struct Reshape(pub Vec<usize>);

impl crate::op::Op for Reshape {
    fn name(&self) -> &str {
        "reshape"
    }
    fn forward(&self, _dev: &Device, inputs: &[&Array]) -> Result<crate::op::Forward> {
        Ok(inputs[0].reshape(&self.0)?.into())
    }
    fn backward(
        &self,
        _dev: &Device,
        ctx: &crate::op::Ctx,
        dy: &Array,
    ) -> Result<Vec<Option<Array>>> {
        Ok(vec![Some(dy.reshape(&ctx.inputs[0].shape)?)])
    }
}

/// Dimensions reordered (`out.shape[i] = x.shape[perm[i]]`), as an op.
#[derive(Clone, Debug)]
pub struct Permute(pub Vec<usize>);

impl crate::op::Op for Permute {
    fn name(&self) -> &str {
        "permute"
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<crate::op::Forward> {
        Ok(permute(dev, inputs[0], &self.0)?.into())
    }
    fn backward(
        &self,
        dev: &Device,
        _ctx: &crate::op::Ctx,
        dy: &Array,
    ) -> Result<Vec<Option<Array>>> {
        let mut inv = vec![0; self.0.len()];
        for (i, &p) in self.0.iter().enumerate() {
            inv[p] = i;
        }
        Ok(vec![Some(permute(dev, dy, &inv)?)])
    }
}

/// Inputs joined along `axis`, as an op; each input's gradient is its slice of the output's.
#[derive(Clone, Copy, Debug)]
pub struct Concat {
    /// The axis.
    pub axis: usize,
}

impl crate::op::Op for Concat {
    fn name(&self) -> &str {
        "concat"
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<crate::op::Forward> {
        Ok(concat(dev, inputs, self.axis)?.into())
    }
    fn backward(
        &self,
        dev: &Device,
        ctx: &crate::op::Ctx,
        dy: &Array,
    ) -> Result<Vec<Option<Array>>> {
        let mut at = 0;
        let mut grads = Vec::with_capacity(ctx.inputs.len());
        for (i, x) in ctx.inputs.iter().enumerate() {
            let len = x.shape[self.axis];
            grads.push(if ctx.needs(i) {
                Some(slice(dev, dy, self.axis, at, len)?)
            } else {
                None
            });
            at += len;
        }
        Ok(grads)
    }
}
