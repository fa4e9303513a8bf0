//! Reductions along every axis, their backward, sum_to, and column reductions in two passes.

use crate::common::{arr, dev, expect_err, forced, unless_refused};
use kiln_ops::numeric::{assert_close, to_f64};
use kiln_ops::random::Rng;
use kiln_ops::reduce::{self, Reduce};
use kiln_ops::Array;

#[test]
fn reductions_along_every_axis() {
    let d = dev();
    let mut r = Rng::new(3);
    // [3, 5, 8]: reducing axis 0 or 1 leaves whole quads of outputs (the quad kernel).
    for shape in [[3, 5, 7], [3, 5, 8]] {
        let x = r.vec(shape.iter().product(), -3.0, 3.0);
        let xa = arr(&d, &x, &shape);
        for axis in 0..3 {
            for op in [Reduce::Sum, Reduce::Mean, Reduce::Max, Reduce::AbsMax] {
                let y = reduce::reduce(&d, &xa, axis, op, false).unwrap();
                let want = reduce::cpu::reduce(&to_f64(&x), &shape, axis, op);
                assert_close(
                    &format!("{op:?} axis {axis}"),
                    &y.to_f32(&d).unwrap(),
                    &want,
                    1e-5,
                    1e-5,
                );
            }
            let (_, idx) = reduce::argmax(&d, &xa, axis).unwrap();
            assert_eq!(
                idx.to_i32(&d).unwrap(),
                reduce::cpu::argmax(&to_f64(&x), &shape, axis)
            );
            // The backward spreads dy over the axis (divided by its length for the mean).
            let mut kept = shape.to_vec();
            kept[axis] = 1;
            let dy = r.vec(kept.iter().product(), -1.0, 1.0);
            let dya = arr(&d, &dy, &kept);
            for (op, scale) in [(Reduce::Sum, 1.0), (Reduce::Mean, 1.0 / shape[axis] as f64)] {
                let dx = reduce::reduce_backward(&d, &dya, &shape, axis, op).unwrap();
                let want: Vec<f64> = (0..x.len())
                    .map(|e| {
                        let mut rest = e;
                        let mut at = 0;
                        let mut stride_kept = 1;
                        for a in (0..3).rev() {
                            let c = rest % shape[a];
                            rest /= shape[a];
                            if a != axis {
                                at += c * stride_kept;
                            }
                            stride_kept *= kept[a];
                        }
                        dy[at] as f64 * scale
                    })
                    .collect();
                assert_close(
                    &format!("{op:?} backward axis {axis}"),
                    &dx.to_f32(&d).unwrap(),
                    &want,
                    1e-6,
                    1e-6,
                );
            }
            expect_err(
                reduce::reduce_backward(&d, &dya, &shape, axis, Reduce::Max),
                "reduce Max has no gradient",
            );
        }
    }
    let xa = arr(&d, &r.vec(105, -3.0, 3.0), &[3, 5, 7]);
    // A long row takes the one-workgroup-per-output path.
    let long = r.vec(100_003, -1.0, 1.0);
    let s = reduce::sum_all(&d, &arr(&d, &long, &[100_003])).unwrap();
    let want: f64 = long.iter().map(|&v| v as f64).sum();
    assert_close("sum_all", &s.to_f32(&d).unwrap(), &[want], 1e-3, 1e-5);
    let m = reduce::reduce(&d, &arr(&d, &long, &[1, 100_003]), 1, Reduce::AbsMax, false).unwrap();
    let want = long.iter().fold(0.0f64, |a, &v| a.max(v.abs() as f64));
    assert_close(
        "absmax, long row",
        &m.to_f32(&d).unwrap(),
        &[want],
        0.0,
        0.0,
    );
    // sum_to undoes broadcasting.
    let g = r.vec(2 * 3 * 4, -1.0, 1.0);
    let st = reduce::sum_to(&d, &arr(&d, &g, &[2, 3, 4]), &[3, 1]).unwrap();
    assert_eq!(st.shape, vec![3, 1]);
    let want: Vec<f64> = (0..3)
        .map(|j| {
            (0..2)
                .flat_map(|i| (0..4).map(move |k| (i, k)))
                .map(|(i, k)| g[(i * 3 + j) * 4 + k] as f64)
                .sum()
        })
        .collect();
    assert_close("sum_to", &st.to_f32(&d).unwrap(), &want, 1e-5, 1e-5);
    expect_err(
        reduce::reduce(&d, &xa, 3, Reduce::Sum, false),
        "axis 3 out of range for shape [3, 5, 7]",
    );
    expect_err(
        reduce::reduce(
            &d,
            &Array::empty(&d, &[0, 3]).unwrap(),
            0,
            Reduce::Sum,
            false,
        ),
        "expected a non-empty array, got [0, 3]",
    );
}

/// Column reductions in two passes (blocks of rows, then the blocks' partials), forced: sums,
/// maxima and abs-maxima over odd shapes (one column, more columns than a workgroup, a row count
/// just past a block), against the CPU; LayerNorm's gamma and beta gradients the same way against
/// a direct sum; the mean has no two-pass form and is refused.
#[test]
fn column_reductions_in_two_passes() {
    use kiln_ops::norm;
    let d = forced(&[("colsum", "colsum_two_pass")]);
    let mut r = Rng::new(33);
    for shape in [[1, 1031, 7], [2, 600, 300], [1, 20_011, 1], [3, 513, 5]] {
        let x = r.vec(shape.iter().product(), -3.0, 3.0);
        let xa = arr(&d, &x, &shape);
        for op in [Reduce::Sum, Reduce::Max, Reduce::AbsMax] {
            let y = reduce::reduce(&d, &xa, 1, op, false).unwrap();
            let want = reduce::cpu::reduce(&to_f64(&x), &shape, 1, op);
            let what = format!("two-pass {op:?} {shape:?}");
            assert_close(&what, &y.to_f32(&d).unwrap(), &want, 1e-3, 1e-5);
        }
        assert!(unless_refused(reduce::reduce(&d, &xa, 1, Reduce::Mean, false)).is_none());
    }
    let (rows, cols) = (700, 300);
    let x = r.vec(rows * cols, -2.0, 2.0);
    let (g, b) = (r.vec(cols, 0.5, 1.5), r.vec(cols, -0.5, 0.5));
    let (xa, ga, ba) = (
        arr(&d, &x, &[rows, cols]),
        arr(&d, &g, &[cols]),
        arr(&d, &b, &[cols]),
    );
    let (_, saved) = norm::layer_norm(&d, &xa, &ga, &ba, 1e-5).unwrap();
    let dy = r.vec(rows * cols, -1.0, 1.0);
    let (_, dg, db) =
        norm::layer_norm_backward(&d, &xa, &ga, &saved, &arr(&d, &dy, &[rows, cols])).unwrap();
    let (mut want_g, mut want_b) = (vec![0.0; cols], vec![0.0; cols]);
    for row in 0..rows {
        let v = &x[row * cols..(row + 1) * cols];
        let mean = v.iter().map(|&t| t as f64).sum::<f64>() / cols as f64;
        let var = v.iter().map(|&t| (t as f64 - mean).powi(2)).sum::<f64>() / cols as f64;
        let rstd = 1.0 / (var + 1e-5).sqrt();
        for j in 0..cols {
            let g = dy[row * cols + j] as f64;
            want_g[j] += g * (v[j] as f64 - mean) * rstd;
            want_b[j] += g;
        }
    }
    assert_close(
        "two-pass dgamma",
        &dg.to_f32(&d).unwrap(),
        &want_g,
        1e-3,
        1e-4,
    );
    assert_close(
        "two-pass dbeta",
        &db.to_f32(&d).unwrap(),
        &want_b,
        1e-3,
        1e-4,
    );
}
