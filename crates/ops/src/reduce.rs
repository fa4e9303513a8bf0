//! Reductions along one axis (sum, mean, max, argmax), full sums, and sums back to a broadcast
//! source shape (the backward of broadcasting).

use crate::kernels::{all_fit, KernelSpec};
use crate::{
    expect_dtype, expect_nonempty, launch_1d, launch_quads, Array, DType, Device, OpError, Params,
    Result,
};
use kiln_device::{Variant, VariantTable};

/// The reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    /// Sum.
    Sum,
    /// Arithmetic mean.
    Mean,
    /// Maximum.
    Max,
    /// Maximum of absolute values (0 for all zeros).
    AbsMax,
}

impl Reduce {
    /// The shader's OP code (declared in reduce.wgsl).
    fn code(self) -> u32 {
        use kiln_device::shaders::consts::reduce::*;
        match self {
            Reduce::Sum => SUM,
            Reduce::Mean => MEAN,
            Reduce::Max => MAX,
            Reduce::AbsMax => ABS_MAX,
        }
    }
}

fn split_axis(op: &'static str, shape: &[usize], axis: usize) -> Result<(usize, usize, usize)> {
    if axis >= shape.len() {
        return Err(OpError::Invalid {
            op,
            message: format!("axis {axis} out of range for shape {shape:?}"),
        });
    }
    Ok((
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    ))
}

fn out_shape(shape: &[usize], axis: usize, keepdim: bool) -> Vec<usize> {
    let mut s = shape.to_vec();
    if keepdim {
        s[axis] = 1;
    } else {
        s.remove(axis);
    }
    s
}

/// Reduces `x` along `axis`.
pub fn reduce(dev: &Device, x: &Array, axis: usize, op: Reduce, keepdim: bool) -> Result<Array> {
    expect_dtype("reduce", x, DType::F32)?;
    expect_nonempty("reduce", x)?;
    let (outer, len, inner) = split_axis("reduce", &x.shape, axis)?;
    let out = Array::empty(dev, &out_shape(&x.shape, axis, keepdim))?;
    reduce_raw(dev, &x.buf, &out.buf, outer, len, inner, op)?;
    Ok(out)
}

/// A reduction along one axis of [outer, len, inner], as the kernel choice sees it.
#[derive(Clone, Copy, Debug)]
pub struct ColsumCall {
    /// Dimensions before the axis, multiplied.
    pub outer: usize,
    /// The axis.
    pub len: usize,
    /// Dimensions after it, multiplied.
    pub inner: usize,
    /// Mean has no two-pass form (its blocks would each divide by their own length).
    pub mean: bool,
}

/// Rows per block of the two-pass reductions.
pub(crate) const ROW_BLOCK: usize = 256;

/// The column reductions' variants: many rows into few outputs (bias, LayerNorm and abs-max
/// gradients) in two passes on GPUs, where one invocation per column over every row would keep
/// one compute unit busy; software adapters keep the one-pass kernels.
pub static COLSUM: VariantTable<ColsumCall, ColsumPlan> = VariantTable {
    family: "colsum",
    variants: &[
        Variant {
            name: "colsum_two_pass",
            plan: |d, c| {
                if c.mean {
                    return Err("no two-pass mean".into());
                }
                // Blocks of ROW_BLOCK rows, or of a multiple of it where there would be more
                // blocks than one dispatch dimension takes.
                let max = d
                    .adapter_profile()
                    .limits
                    .max_compute_workgroups_per_dimension as usize;
                let rows_per_block = ROW_BLOCK * c.len.div_ceil(ROW_BLOCK * max).max(1);
                all_fit(d, &[blocks_spec(Reduce::Sum, c.inner, rows_per_block)])?;
                Ok(ColsumPlan::TwoPass { rows_per_block })
            },
            prefers: |d, c| {
                !d.adapter_profile().is_software
                    && c.len >= 2 * ROW_BLOCK
                    && c.outer * c.inner < 65536
            },
        },
        Variant {
            name: "colsum_one_pass",
            plan: |_, _| Ok(ColsumPlan::OnePass),
            prefers: |_, _| true,
        },
    ],
};

/// How a column reduction runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColsumPlan {
    /// Blocks of rows into partial sums, then the partials' sum.
    TwoPass {
        /// Rows per block.
        rows_per_block: usize,
    },
    /// An invocation (or a workgroup) per output over every row.
    OnePass,
}

/// reduce_blocks for `inner` columns: a power of two of columns per workgroup up to 256, the
/// rest of its invocations sharing a column's rows.
fn blocks_spec(op: Reduce, inner: usize, rows_per_block: usize) -> KernelSpec {
    let tc = inner.next_power_of_two().min(crate::WG as usize);
    KernelSpec::new(
        "reduce",
        "reduce_blocks",
        &[
            ("OP", op.code() as f64),
            ("TC", tc as f64),
            ("RB", rows_per_block as f64),
        ],
    )
}

/// The variant the device's policy chooses for a reduction, and its pipelines (the second pass
/// of the two-pass form is the one-pass reduction of the blocks' partials).
pub fn plan(dev: &Device, c: &ColsumCall) -> Result<crate::kernels::Planned> {
    let v = COLSUM.choose(dev, c)?;
    let one = KernelSpec::new("reduce", "reduce", &[("OP", 0.0)]);
    let wide = KernelSpec::new("reduce", "reduce_wide", &[("OP", 0.0)]);
    let kernels = match v.plan {
        ColsumPlan::TwoPass { rows_per_block } => {
            vec![blocks_spec(Reduce::Sum, c.inner, rows_per_block), one]
        }
        ColsumPlan::OnePass => vec![one, wide],
    };
    Ok(crate::kernels::Planned {
        family: COLSUM.family,
        variant: v.variant,
        kernels,
        largest_binding: (c.outer * c.len * c.inner) as u64 * 4,
    })
}

/// Reduces a buffer viewed as [outer, len, inner] into [outer, inner].
pub(crate) fn reduce_raw(
    dev: &Device,
    x: &crate::Buffer,
    out: &crate::Buffer,
    outer: usize,
    len: usize,
    inner: usize,
    op: Reduce,
) -> Result<()> {
    let call = ColsumCall {
        outer,
        len,
        inner,
        mean: op == Reduce::Mean,
    };
    if len == 0 || outer * inner == 0 {
        return reduce_one_pass(dev, x, out, outer, len, inner, op);
    }
    if let ColsumPlan::TwoPass { rows_per_block: rb } = COLSUM.choose(dev, &call)?.plan {
        let blocks = len.div_ceil(rb);
        let partial = dev.alloc(outer * blocks * inner, DType::F32)?;
        let spec = blocks_spec(op, inner, rb);
        let tc = spec.constants[1].1 as usize;
        let p = Params::new().us(&[outer, len, inner, blocks].map(|v| v as u32));
        let groups = [inner.div_ceil(tc) as u32, blocks as u32, outer as u32];
        dev.launch(&spec.kernel(dev)?, &[x, &partial], &p, groups)?;
        return reduce_one_pass(dev, &partial, out, outer, blocks, inner, op);
    }
    reduce_one_pass(dev, x, out, outer, len, inner, op)
}

/// One pass: an invocation per output (four where the buffers allow), or a workgroup per output
/// where there are few outputs with long rows.
fn reduce_one_pass(
    dev: &Device,
    x: &crate::Buffer,
    out: &crate::Buffer,
    outer: usize,
    len: usize,
    inner: usize,
    op: Reduce,
) -> Result<()> {
    let p = Params::new().u(outer as u32).u(len as u32).u(inner as u32);
    let outputs = outer * inner;
    // Few long rows: one workgroup per output keeps all lanes busy.
    if outputs < 64 && len >= 1024 {
        let k = dev.kernel("reduce", "reduce_wide", &[("OP", op.code() as f64)])?;
        dev.launch(&k, &[x, out], &p, [outputs as u32, 1, 1])?;
    } else if inner.is_multiple_of(4) {
        // Four outputs per invocation where the buffers allow it (inner % 4 == 0: no quad
        // straddles two rows, and the outputs come in whole quads).
        let consts = [("OP", op.code() as f64)];
        launch_quads(dev, "reduce", "reduce", &consts, &[x, out], &p, outputs)?;
    } else {
        let k = dev.kernel("reduce", "reduce", &[("OP", op.code() as f64)])?;
        launch_1d(dev, &k, &[x, out], &p, outputs)?;
    }
    Ok(())
}

/// The gradient of a Sum or Mean along `axis` of an input of `shape`, from `dy` (the reduced
/// shape, with or without the kept axis): `dy` spread back over the axis (divided by its length
/// for the mean).
pub fn reduce_backward(
    dev: &Device,
    dy: &Array,
    shape: &[usize],
    axis: usize,
    op: Reduce,
) -> Result<Array> {
    let (outer, len, inner) = split_axis("reduce_backward", shape, axis)?;
    if !matches!(op, Reduce::Sum | Reduce::Mean) {
        return Err(OpError::Invalid {
            op: "reduce_backward",
            message: format!("reduce {op:?} has no gradient"),
        });
    }
    if dy.numel() != outer * inner {
        return Err(OpError::Shape {
            op: "reduce_backward",
            expected: format!("dy with {} elements", outer * inner),
            got: format!("{:?}", dy.shape),
        });
    }
    let dx = Array::empty(dev, shape)?;
    let k = dev.kernel("reduce", "reduce_backward", &[("OP", op.code() as f64)])?;
    let p = Params::new().u(outer as u32).u(len as u32).u(inner as u32);
    launch_1d(dev, &k, &[&dy.buf, &dx.buf], &p, dx.numel())?;
    Ok(dx)
}

/// Maximum along `axis` and the index of its first occurrence (i32).
pub fn argmax(dev: &Device, x: &Array, axis: usize) -> Result<(Array, Array)> {
    expect_dtype("argmax", x, DType::F32)?;
    expect_nonempty("argmax", x)?;
    let (outer, len, inner) = split_axis("argmax", &x.shape, axis)?;
    let shape = out_shape(&x.shape, axis, false);
    let vals = Array::empty(dev, &shape)?;
    let idx = Array {
        buf: dev.alloc(outer * inner, DType::I32)?,
        shape,
    };
    let k = dev.kernel("reduce", "argmax", &[])?;
    let p = Params::new().u(outer as u32).u(len as u32).u(inner as u32);
    launch_1d(dev, &k, &[&x.buf, &vals.buf, &idx.buf], &p, outer * inner)?;
    Ok((vals, idx))
}

/// Sum of every element, as shape [].
pub fn sum_all(dev: &Device, x: &Array) -> Result<Array> {
    reduce(dev, &x.reshape(&[1, x.numel()])?, 1, Reduce::Sum, false)?.reshape(&[])
}

/// Sums `x` (of a broadcast shape) back to `target`, the shape it was broadcast from.
pub fn sum_to(dev: &Device, x: &Array, target: &[usize]) -> Result<Array> {
    if x.shape == target {
        return Ok(x.clone());
    }
    let lead = x
        .shape
        .len()
        .checked_sub(target.len())
        .ok_or_else(|| OpError::Shape {
            op: "sum_to",
            expected: format!("a shape that broadcasts to {:?}", x.shape),
            got: format!("{target:?}"),
        })?;
    let mut cur = x.clone();
    // Leading axes first: they vanish entirely.
    for _ in 0..lead {
        cur = reduce(dev, &cur, 0, Reduce::Sum, false)?;
    }
    for (d, &t) in target.iter().enumerate() {
        if t == 1 && cur.shape[d] != 1 {
            cur = reduce(dev, &cur, d, Reduce::Sum, true)?;
        } else if t != cur.shape[d] {
            return Err(OpError::Shape {
                op: "sum_to",
                expected: format!("a shape that broadcasts to {:?}", x.shape),
                got: format!("{target:?}"),
            });
        }
    }
    Ok(cur)
}

/// CPU references in f64.
pub mod cpu {
    use super::Reduce;

    /// Reduces `x` of `shape` along `axis` (output without that axis).
    pub fn reduce(x: &[f64], shape: &[usize], axis: usize, op: Reduce) -> Vec<f64> {
        let outer: usize = shape[..axis].iter().product();
        let len = shape[axis];
        let inner: usize = shape[axis + 1..].iter().product();
        let mut out = Vec::with_capacity(outer * inner);
        for o in 0..outer {
            for i in 0..inner {
                let vals = (0..len).map(|j| x[(o * len + j) * inner + i]);
                out.push(match op {
                    Reduce::Sum => vals.sum(),
                    Reduce::Mean => vals.sum::<f64>() / len as f64,
                    Reduce::Max => vals.fold(f64::NEG_INFINITY, f64::max),
                    Reduce::AbsMax => vals.fold(0.0f64, |a, v| a.max(v.abs())),
                });
            }
        }
        out
    }

    /// Index of the first maximum along `axis`.
    pub fn argmax(x: &[f64], shape: &[usize], axis: usize) -> Vec<i32> {
        let outer: usize = shape[..axis].iter().product();
        let len = shape[axis];
        let inner: usize = shape[axis + 1..].iter().product();
        let mut out = Vec::new();
        for o in 0..outer {
            for i in 0..inner {
                let mut best = (f64::NEG_INFINITY, 0);
                for j in 0..len {
                    let v = x[(o * len + j) * inner + i];
                    if v > best.0 {
                        best = (v, j);
                    }
                }
                out.push(best.1 as i32);
            }
        }
        out
    }
}

/// A reduction along one axis, as an op; Sum and Mean have gradients (broadcast back), Max and
/// AbsMax none.
#[derive(Clone, Copy, Debug)]
pub struct ReduceAxis {
    /// The reduction.
    pub op: Reduce,
    /// The axis.
    pub axis: usize,
    /// Keep the reduced axis with extent 1.
    pub keepdim: bool,
}

impl crate::op::Op for ReduceAxis {
    fn name(&self) -> &str {
        "reduce"
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<crate::op::Forward> {
        Ok(reduce(dev, inputs[0], self.axis, self.op, self.keepdim)?.into())
    }
    fn backward(
        &self,
        dev: &Device,
        ctx: &crate::op::Ctx,
        dy: &Array,
    ) -> Result<Vec<Option<Array>>> {
        let shape = &ctx.inputs[0].shape;
        Ok(vec![Some(reduce_backward(
            dev, dy, shape, self.axis, self.op,
        )?)])
    }
}
