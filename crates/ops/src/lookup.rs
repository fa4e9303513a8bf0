//! Embedding lookup from a table kept as one or more blocks of rows, with PyTorch's
//! `padding_idx`, forward and backward.
//!
//! A table larger than one storage binding (GPT-2's 50,257 x 768 word embedding is 154 MB, over
//! lavapipe's 128 MiB) cannot be one buffer; split into blocks of consecutive rows, each its own
//! buffer, it is looked up with one dispatch per block, and each block gets its own gradient. A
//! table in one block is the plain embedding.
//!
//! The backward pass needs no atomics and costs n^2 id comparisons plus n * dim additions for n
//! looked-up positions (see shaders/lookup.wgsl), where a scan of the table per row would cost
//! vocab * dim * n: the difference between milliseconds and minutes for a 30,522-word
//! vocabulary. `Tensor::embedding` is this op on a table of one block.

use crate::{expect_dtype, launch_1d, Array, DType, Device, OpError, Params, Result};

/// Checks the blocks (2-D, f32, one width) and the ids (i32); returns the width and each block's
/// first row.
fn check(op: &'static str, blocks: &[&[usize]], ids: &Array) -> Result<(usize, Vec<usize>)> {
    expect_dtype(op, ids, DType::I32)?;
    let first = blocks.first().ok_or_else(|| OpError::Invalid {
        op,
        message: "no table blocks given".into(),
    })?;
    let dim = match first {
        [_, d] => *d,
        s => {
            return Err(OpError::Shape {
                op,
                expected: "table blocks [rows, dim]".into(),
                got: format!("{s:?}"),
            })
        }
    };
    let mut starts = Vec::with_capacity(blocks.len());
    let mut start = 0usize;
    for (i, s) in blocks.iter().enumerate() {
        if s.len() != 2 || s[1] != dim {
            return Err(OpError::Shape {
                op,
                expected: format!("block {i} of shape [rows, {dim}] (the width of block 0)"),
                got: format!("{s:?}"),
            });
        }
        starts.push(start);
        start += s[0];
    }
    if start > i32::MAX as usize {
        return Err(OpError::Invalid {
            op,
            message: format!("{start} rows: ids are i32"),
        });
    }
    Ok((dim, starts))
}

fn params(
    n: usize,
    dim: usize,
    start: usize,
    rows: usize,
    first: bool,
    pad: Option<usize>,
) -> Params {
    Params::new()
        .u(n as u32)
        .u(dim as u32)
        .u(start as u32)
        .u(rows as u32)
        .u(first as u32)
        .i(pad.map_or(-1, |p| p as i32))
}

/// out[..., :] = table[ids[...], :] for a table given as blocks of consecutive rows (block 0 holds
/// rows 0.., block 1 the next ones...). The output has the ids' shape plus `[dim]`; an id outside
/// the table reads nothing and gives a zero row (check ids on the host with
/// [`check_ids_in_range`] where they come from users).
pub fn lookup(dev: &Device, blocks: &[&Array], ids: &Array) -> Result<Array> {
    let shapes: Vec<&[usize]> = blocks.iter().map(|b| &b.shape[..]).collect();
    let (dim, starts) = check("lookup", &shapes, ids)?;
    for b in blocks {
        expect_dtype("lookup", b, DType::F32)?;
    }
    let mut shape = ids.shape.clone();
    shape.push(dim);
    let out = Array::empty(dev, &shape)?;
    let n = ids.numel();
    if n == 0 || dim == 0 {
        return Ok(out);
    }
    let k = dev.kernel("lookup", "lookup_forward", &[])?;
    for (i, (b, &start)) in blocks.iter().zip(&starts).enumerate() {
        let p = params(n, dim, start, b.shape[0], i == 0, None);
        launch_1d(dev, &k, &[&ids.buf, &b.buf, &out.buf], &p, n * dim)?;
    }
    Ok(out)
}

/// The gradient of each block whose `needs` entry is true (None for the others) for dy (the ids'
/// shape plus `[dim]`). `padding_idx`'s row gets no gradient, as PyTorch's
/// `nn.Embedding(padding_idx=...)`. Repeated ids sum in increasing position order.
pub fn lookup_backward(
    dev: &Device,
    block_shapes: &[&[usize]],
    ids: &Array,
    dy: &Array,
    padding_idx: Option<usize>,
    needs: &[bool],
) -> Result<Vec<Option<Array>>> {
    let (dim, starts) = check("lookup_backward", block_shapes, ids)?;
    expect_dtype("lookup_backward", dy, DType::F32)?;
    let n = ids.numel();
    if dy.numel() != n * dim {
        return Err(OpError::Shape {
            op: "lookup_backward",
            expected: format!("dy with {n} x {dim} values"),
            got: format!("{:?}", dy.shape),
        });
    }
    let wanted = |i: usize| needs.get(i).copied().unwrap_or(false);
    let links = if n > 0 && (0..block_shapes.len()).any(wanted) {
        let links = dev.alloc(2 * n, DType::I32)?;
        let k = dev.kernel("lookup", "lookup_links", &[])?;
        launch_1d(
            dev,
            &k,
            &[&ids.buf, &links],
            &params(n, dim, 0, 0, false, None),
            n,
        )?;
        Some(links)
    } else {
        None
    };
    let k = dev.kernel("lookup", "lookup_backward", &[])?;
    let mut grads = Vec::with_capacity(block_shapes.len());
    for (i, (shape, &start)) in block_shapes.iter().zip(&starts).enumerate() {
        if !wanted(i) {
            grads.push(None);
            continue;
        }
        let dw = Array::full(dev, shape, 0.0)?;
        if let Some(links) = &links {
            let p = params(n, dim, start, shape[0], false, padding_idx);
            launch_1d(dev, &k, &[&ids.buf, &dy.buf, links, &dw.buf], &p, n * dim)?;
        }
        grads.push(Some(dw));
    }
    Ok(grads)
}

/// CPU references in f64.
pub mod cpu {
    /// Rows of `table` ([vocab, dim], one block) for `ids`; out-of-range ids give zero rows.
    pub fn lookup(table: &[f64], dim: usize, ids: &[i32]) -> Vec<f64> {
        let vocab = table.len() / dim.max(1);
        ids.iter()
            .flat_map(|&id| {
                let ok = id >= 0 && (id as usize) < vocab;
                (0..dim).map(move |d| {
                    if ok {
                        table[id as usize * dim + d]
                    } else {
                        0.0
                    }
                })
            })
            .collect()
    }

    /// d table ([vocab, dim]) for dy ([n, dim]), with no gradient for `padding_idx`'s row.
    pub fn lookup_backward(
        vocab: usize,
        dim: usize,
        ids: &[i32],
        dy: &[f64],
        padding_idx: Option<usize>,
    ) -> Vec<f64> {
        let mut dw = vec![0.0; vocab * dim];
        for (i, &id) in ids.iter().enumerate() {
            if id < 0 || id as usize >= vocab || Some(id as usize) == padding_idx {
                continue;
            }
            for d in 0..dim {
                dw[id as usize * dim + d] += dy[i * dim + d];
            }
        }
        dw
    }
}

/// Embedding lookup as an op: inputs the table's blocks (each `[rows, dim]`, consecutive rows of
/// one table) then the i32 ids (no gradient); the output has the ids' shape plus `[dim]`. Each
/// block gets its own gradient; `padding_idx`'s row gets none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lookup {
    /// The row that gets no gradient (PyTorch's `padding_idx`), if any.
    pub padding_idx: Option<usize>,
}

impl crate::op::Op for Lookup {
    fn name(&self) -> &str {
        "lookup"
    }
    fn forward(&self, dev: &Device, inputs: &[&Array]) -> Result<crate::op::Forward> {
        let (ids, blocks) = split_ids("lookup", inputs)?;
        Ok(lookup(dev, blocks, ids)?.into())
    }
    fn backward(
        &self,
        dev: &Device,
        ctx: &crate::op::Ctx,
        dy: &Array,
    ) -> Result<Vec<Option<Array>>> {
        let (ids, blocks) = split_ids("lookup", ctx.inputs)?;
        let shapes: Vec<&[usize]> = blocks.iter().map(|b| &b.shape[..]).collect();
        let needs: Vec<bool> = (0..blocks.len()).map(|i| ctx.needs(i)).collect();
        let mut grads = lookup_backward(dev, &shapes, ids, dy, self.padding_idx, &needs)?;
        grads.push(None);
        Ok(grads)
    }
}

/// The ids (last input) and the blocks before them.
fn split_ids<'a, 'b>(
    op: &'static str,
    inputs: &'b [&'a Array],
) -> Result<(&'a Array, &'b [&'a Array])> {
    match inputs.split_last() {
        Some((ids, blocks)) if !blocks.is_empty() => Ok((ids, blocks)),
        _ => Err(OpError::Invalid {
            op,
            message: "takes the table's blocks and then the ids".into(),
        }),
    }
}

/// Host-side id check: every id in [0, vocab).
pub fn check_ids_in_range(ids: &[i32], vocab: usize) -> Result<()> {
    match ids
        .iter()
        .enumerate()
        .find(|(_, &v)| v < 0 || v as usize >= vocab)
    {
        Some((i, v)) => Err(OpError::Invalid {
            op: "embedding",
            message: format!("id {v} at position {i} is outside [0, {vocab})"),
        }),
        None => Ok(()),
    }
}
