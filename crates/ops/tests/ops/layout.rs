//! Layout ops (permute, transpose, slice, concat, broadcast, slice_add) against a strided CPU
//! reference, through both copy kernels.

use crate::common::{arr, dev, expect_err};
use kiln_ops::numeric::{assert_close, to_f64};
use kiln_ops::random::Rng;
use kiln_ops::{layout, OpError};

#[test]
fn layout_ops() {
    let d = dev();
    let x: Vec<f32> = (0..24).map(|v| v as f32).collect();
    let xa = arr(&d, &x, &[2, 3, 4]);
    let p = layout::permute(&d, &xa, &[2, 0, 1]).unwrap();
    assert_eq!(p.shape, vec![4, 2, 3]);
    let pv = p.to_f32(&d).unwrap();
    for a in 0..4 {
        for b in 0..2 {
            for c in 0..3 {
                assert_eq!(pv[(a * 2 + b) * 3 + c], x[(b * 3 + c) * 4 + a]);
            }
        }
    }
    let t = layout::transpose(&d, &xa, 1, 2)
        .unwrap()
        .to_f32(&d)
        .unwrap();
    assert_eq!(t[1], x[4]);
    let s = layout::slice(&d, &xa, 2, 1, 2).unwrap();
    assert_eq!(s.shape, vec![2, 3, 2]);
    assert_eq!(s.to_f32(&d).unwrap()[..4], [1.0, 2.0, 5.0, 6.0]);
    let back = layout::slice_backward(&d, &s, &[2, 3, 4], 2, 1)
        .unwrap()
        .to_f32(&d)
        .unwrap();
    assert_eq!(back[..8], [0.0, 1.0, 2.0, 0.0, 0.0, 5.0, 6.0, 0.0]);
    let c = layout::concat(&d, &[&s, &xa], 2).unwrap();
    assert_eq!(c.shape, vec![2, 3, 6]);
    assert_eq!(c.to_f32(&d).unwrap()[..6], [1.0, 2.0, 0.0, 1.0, 2.0, 3.0]);
    let b = layout::broadcast_to(&d, &arr(&d, &[1.0, 2.0], &[2, 1]), &[2, 3]).unwrap();
    assert_eq!(b.to_f32(&d).unwrap(), vec![1.0, 1.0, 1.0, 2.0, 2.0, 2.0]);
    expect_err(
        layout::permute(&d, &xa, &[0, 0, 1]),
        "not a permutation of 3 axes",
    );
    expect_err(layout::slice(&d, &xa, 2, 3, 2), "3..5 along axis 2");
    expect_err(
        layout::concat(&d, &[&xa, &s], 1),
        "expected [2, 3, 4] outside axis 1, got [2, 3, 2]",
    );
}

/// Element `i` (row-major over `shape`) of an array with `strides`, from `offset`.
fn strided_index(i: usize, shape: &[usize], strides: &[usize], offset: usize) -> usize {
    let (mut rem, mut at) = (i, offset);
    for (&e, &s) in shape.iter().zip(strides).rev() {
        at += rem % e * s;
        rem /= e;
    }
    at
}

fn row_major(shape: &[usize]) -> Vec<usize> {
    let mut st = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        st[i] = st[i + 1] * shape[i + 1];
    }
    st
}

#[test]
fn layout_ops_match_a_cpu_reference() {
    let d = dev();
    let mut r = Rng::new(21);
    let perms = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    let mut labels = Vec::new();
    // [2, 3, 8] and [4, 1, 12]: many copies move whole quads along the last axis (the quad
    // kernel); [3, 5, 7]: none do.
    for shape in [[2, 3, 8], [3, 5, 7], [4, 1, 12]] {
        let x = r.vec(shape.iter().product(), -1.0, 1.0);
        let xa = arr(&d, &x, &shape);
        let xs = row_major(&shape);
        for perm in perms {
            let out = layout::permute(&d, &xa, &perm).unwrap();
            let os: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
            let st: Vec<usize> = perm.iter().map(|&p| xs[p]).collect();
            let want: Vec<f64> = (0..x.len())
                .map(|i| x[strided_index(i, &os, &st, 0)] as f64)
                .collect();
            assert_eq!(out.shape, os);
            assert_close(
                &format!("permute {shape:?} {perm:?}"),
                &out.to_f32(&d).unwrap(),
                &want,
                0.0,
                0.0,
            );
        }
        for axis in 0..3 {
            let e = shape[axis];
            // (2, 4): a quad's length from an offset inside a quad.
            for (start, len) in [(0, e), (1, e - 1), (e / 2, e - e / 2), (e - 1, 1), (2, 4)] {
                if len == 0 || start + len > e {
                    continue;
                }
                let mut ss = shape;
                ss[axis] = len;
                let what = format!("slice {start}+{len} of axis {axis} of {shape:?}");
                let prof = d
                    .profile(|| {
                        let s = layout::slice(&d, &xa, axis, start, len)?;
                        let want: Vec<f64> = (0..s.numel())
                            .map(|i| x[strided_index(i, &ss, &xs, start * xs[axis])] as f64)
                            .collect();
                        assert_close(&what, &s.to_f32(&d).unwrap(), &want, 0.0, 0.0);
                        // Its gradient added into another array's slice, in place.
                        let base = r.vec(x.len(), -1.0, 1.0);
                        let into = arr(&d, &base, &shape);
                        layout::slice_add(&d, &into, &s, axis, start)?;
                        let mut want: Vec<f64> = to_f64(&base);
                        for i in 0..s.numel() {
                            want[strided_index(i, &ss, &xs, start * xs[axis])] +=
                                x[strided_index(i, &ss, &xs, start * xs[axis])] as f64;
                        }
                        assert_close(
                            &format!("add into {what}"),
                            &into.to_f32(&d).unwrap(),
                            &want,
                            1e-6,
                            0.0,
                        );
                        Ok::<(), OpError>(())
                    })
                    .unwrap();
                labels.extend(prof.into_iter().map(|k| k.kernel));
            }
        }
    }
    // Both kernels ran, copying and adding (the labels may include tests running alongside).
    for entry in ["strided_copy", "strided_copy4"] {
        for add in [0, 1] {
            let label = format!("layout::{entry}{{ACCUMULATE={add}}}");
            assert!(labels.contains(&label), "{label} never ran: {labels:?}");
        }
    }
    let s = arr(&d, &[1.0; 6], &[2, 3]);
    let into = arr(&d, &[0.0; 8], &[2, 4]);
    expect_err(
        layout::slice_add(&d, &into, &s, 1, 2),
        "from 2 along axis 1 of [2, 4], got [2, 3]",
    );
    expect_err(
        layout::slice_add(&d, &into, &s, 0, 0),
        "from 0 along axis 0 of [2, 4], got [2, 3]",
    );
    layout::slice_add(&d, &into, &s, 1, 1).unwrap();
    assert_eq!(
        into.to_f32(&d).unwrap(),
        [0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    );
}
