//! Software adapters' 2-D f32 matmul: both operands read through 64 KiB uniform windows.

use super::*;

/// The most `gemm_uniform` dispatches one matmul may take; beyond it the other kernels run it:
/// many blocks mean small ones (large operands), a dispatch each with little work, where gemm_sg
/// or gemm_direct measured faster (512^3: 5.1 GFLOP/s against 3.2).
pub(super) const MAX_UNIFORM_BLOCKS: usize = 8;

/// One dispatch of `gemm_uniform`: a block of C over a range of K, with the operand windows
/// that hold it.
pub(super) struct UniformBlock {
    pub(super) m: (usize, usize),
    pub(super) n: (usize, usize),
    pub(super) k: (usize, usize),
    pub(super) a: (Buffer, usize, usize, usize),
    pub(super) b: (Buffer, usize, usize, usize),
    pub(super) part: usize,
}

/// Item lengths (floats per window item) of A and B in `gemm_uniform`'s split: A stored [M, K]
/// splits along M (items of K), stored [K, M] along K (items of M); B likewise.
pub(super) fn uniform_item_lens(c: &GemmCall) -> (usize, usize) {
    let g = &c.g;
    let (ta, tb) = (g.a[1] == 1 && g.a[2] != 1, g.b[1] == 1 && g.b[2] != 1);
    (if ta { g.m } else { g.k }, if tb { g.k } else { g.n })
}

/// Windows of `items` items of `len` floats (as [`uniform_runs`] splits them, each window
/// starting at the aligned element at or before its first item).
pub(super) fn uniform_run_count(len: usize, items: usize, align: usize) -> usize {
    let (mut first, mut runs) = (0, 0);
    while first < items {
        let skip = (first * len) % align;
        first += ((WINDOW_FLOATS - skip) / len).max(1);
        runs += 1;
    }
    runs
}

/// `gemm_uniform`'s dispatches for a call (an estimate from the shapes, as it splits them).
pub(super) fn uniform_blocks(dev: &Device, c: &GemmCall) -> usize {
    let align = dev.limits().min_uniform_buffer_offset_alignment as usize / 4;
    let g = &c.g;
    let (ta, tb) = (g.a[1] == 1 && g.a[2] != 1, g.b[1] == 1 && g.b[2] != 1);
    let (la, lb) = uniform_item_lens(c);
    if la.max(lb) + align - 1 > WINDOW_FLOATS || la == 0 || lb == 0 {
        return usize::MAX;
    }
    if ta && !tb {
        uniform_run_count(la.max(lb), g.k, align)
    } else {
        uniform_run_count(la, if ta { g.k } else { g.m }, align)
            * uniform_run_count(lb, if tb { g.n } else { g.k }, align)
    }
}

/// Invocations along N of a `gemm_uniform` workgroup for N columns.
pub(super) fn uniform_wx(n: usize) -> usize {
    n.div_ceil(4).next_multiple_of(8).min(64)
}

/// A 2-D f32 matmul by `gemm_uniform`, both operands read through 64 KiB uniform windows (the
/// variant's `supports` checks that an operand row fits one).
///
/// A stored [M, K] is split along M, stored [K, M] along K; B likewise along N or K. Blocks over
/// different K ranges write separate parts of C, summed at the end.
pub(crate) fn matmul_uniform(
    dev: &Device,
    a: &Array,
    b: &Array,
    ta: bool,
    tb: bool,
    bias: Option<&Array>,
) -> Result<Array> {
    let none = || OpError::Invalid {
        op: "matmul",
        message: "an operand row is longer than a 64 KiB uniform window".into(),
    };
    let (m, k) = if ta {
        (a.shape[1], a.shape[0])
    } else {
        (a.shape[0], a.shape[1])
    };
    let n = if tb { b.shape[0] } else { b.shape[1] };
    if m == 0 || n == 0 || k == 0 {
        let c = Array::full(dev, &[m, n], 0.0)?;
        return match bias {
            Some(bias) if m > 0 => {
                crate::elementwise::binary(dev, &c, bias, crate::elementwise::Binary::Add)
            }
            _ => Ok(c),
        };
    }
    // Window element strides (along M or N, along K) of each operand.
    let (a_ms, a_ks) = if ta { (1, m) } else { (k, 1) };
    let (b_ks, b_ns) = if tb { (1, k) } else { (n, 1) };
    let whole = |len: usize| (0, len);
    let mut blocks = Vec::new();
    let win = |r: &UniformRun, i: usize| (r.windows[i].0.clone(), r.windows[i].1);
    match (ta, tb) {
        // Both stored with K outermost: one split of K for both.
        (true, false) => {
            let runs = uniform_runs(dev, &[(&a.buf, m), (&b.buf, n)], k)?.ok_or_else(none)?;
            for (part, r) in runs.iter().enumerate() {
                let ((aw, askip), (bw, bskip)) = (win(r, 0), win(r, 1));
                blocks.push(UniformBlock {
                    m: whole(m),
                    n: whole(n),
                    k: (r.first, r.count),
                    a: (aw, askip, 0, r.first),
                    b: (bw, bskip, r.first, 0),
                    part,
                });
            }
        }
        _ => {
            // A split along M (stored [M, K]) or K; B along N (stored [N, K]) or K.
            let ra = uniform_runs(
                dev,
                &[(&a.buf, if ta { m } else { k })],
                if ta { k } else { m },
            )?
            .ok_or_else(none)?;
            let rb = uniform_runs(
                dev,
                &[(&b.buf, if tb { k } else { n })],
                if tb { n } else { k },
            )?
            .ok_or_else(none)?;
            for (i, r) in ra.iter().enumerate() {
                for (j, s) in rb.iter().enumerate() {
                    let ((aw, askip), (bw, bskip)) = (win(r, 0), win(s, 0));
                    let (mr, kr_a) = if ta {
                        (whole(m), Some((r.first, r.count)))
                    } else {
                        ((r.first, r.count), None)
                    };
                    let (nr, kr_b) = if tb {
                        ((s.first, s.count), None)
                    } else {
                        (whole(n), Some((s.first, s.count)))
                    };
                    let kr = kr_a.or(kr_b).unwrap_or(whole(k));
                    blocks.push(UniformBlock {
                        m: mr,
                        n: nr,
                        k: kr,
                        a: (aw, askip, mr.0 * (!ta) as usize, kr_a.map_or(0, |r| r.0)),
                        b: (bw, bskip, kr_b.map_or(0, |r| r.0), nr.0 * tb as usize),
                        part: if ta {
                            i
                        } else if tb {
                            0
                        } else {
                            j
                        },
                    });
                }
            }
        }
    }
    let parts = blocks.iter().map(|b| b.part + 1).max().unwrap_or(1);
    // The variant's `supports` checked that the parts' partial sums fit one binding.
    let out = Array::empty(dev, &[parts, m, n])?;
    let widest = blocks.iter().map(|b| b.n.1).max().unwrap_or(1);
    let wx = uniform_wx(widest);
    let kern = dev.kernel("gemm_uniform", "gemm_uniform", &[("WX", wx as f64)])?;
    let bias_buf = or_placeholder(dev, bias.map(|b| &b.buf))?;
    let u = |v: usize| v as u32;
    for blk in &blocks {
        let p = Params::new().us(&[
            u(m),
            u(n),
            u(blk.m.0),
            u(blk.m.1),
            u(blk.n.0),
            u(blk.n.1),
            u(blk.k.0),
            u(blk.k.1),
            u(blk.a.1),
            u(blk.a.2),
            u(blk.a.3),
            u(a_ms),
            u(a_ks),
            u(blk.b.1),
            u(blk.b.2),
            u(blk.b.3),
            u(b_ks),
            u(b_ns),
            u(blk.part),
            u(bias.is_some() as usize),
        ]);
        let groups = [
            u(blk.n.1.div_ceil(4).div_ceil(wx)),
            u(blk.m.1.div_ceil(8)),
            1,
        ];
        dev.launch(
            &kern,
            &[&blk.a.0, &blk.b.0, &bias_buf, &out.buf],
            &p,
            groups,
        )?;
    }
    let c = if parts == 1 {
        out
    } else {
        reduce(dev, &out, 0, Reduce::Sum, false)?
    };
    c.reshape(&[m, n])
}
