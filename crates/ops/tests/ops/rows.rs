//! The row kernels (softmax, log_softmax, layer norm, cross-entropy) on every variant of the
//! `rows` family, forced through the kernel policy, against f64 CPU references: widths that give
//! every lanes-per-row count from 1 to 256, scalar and vec4 rows, several rows per workgroup and
//! rows past a workgroup's end. Each variant's runner counts the cases it checked and the shapes
//! it refused, and fails when it checked none.

use crate::common::{arr, dev, Tally};
use kiln_ops::norm;
use kiln_ops::numeric::{assert_close, dot, finite_diff, to_f64};
use kiln_ops::random::Rng;
use kiln_ops::rows::{self, RowCall, RowOp};
use kiln_ops::softmax;
use kiln_ops::{Array, Device, KernelPolicy};

/// The automatic choice and each variant of the `rows` family, forced; and each variant planned
/// as on a GPU (this adapter's limits and subgroup size, but a GPU's lanes per row: rows wider
/// than a subgroup, which the subgroup variant reduces across subgroups).
fn variants() -> Vec<(&'static str, Device)> {
    let mut v = vec![("automatic", dev())];
    let mut gpu_like = dev().adapter_profile().clone();
    gpu_like.is_software = false;
    for (name, gpu_name) in [
        ("rows_sg", "rows_sg, GPU lanes"),
        ("rows_wg", "rows_wg, GPU lanes"),
    ] {
        let force = KernelPolicy::default().force("rows", name);
        v.push((name, dev().with_policy(force.clone())));
        v.push((
            gpu_name,
            dev().with_policy(force.with_profile(gpu_like.clone())),
        ));
    }
    v
}

/// (rows, cols): widths for 1 to 256 lanes per row (scalar and vec4), rows within one
/// workgroup, across several, and past a workgroup's end.
const SHAPES: [(usize, usize); 12] = [
    (1, 1),
    (5, 3),
    (33, 10),
    (300, 7),
    (7, 37),
    (65, 64),
    (3, 100),
    (9, 768),
    (2, 1000),
    (3, 4100),
    (2, 8192),
    (2, 50257),
];

fn softmax_backward_ref(y: &[f64], dy: &[f32], cols: usize, log: bool) -> Vec<f64> {
    y.chunks(cols)
        .zip(dy.chunks(cols))
        .flat_map(|(y, g)| {
            let s: f64 = if log {
                g.iter().map(|&v| v as f64).sum()
            } else {
                y.iter().zip(g).map(|(a, &b)| a * b as f64).sum()
            };
            y.iter()
                .zip(g)
                .map(|(&yv, &gv)| {
                    if log {
                        gv as f64 - yv.exp() * s
                    } else {
                        yv * (gv as f64 - s)
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// (dx, dgamma, dbeta) of layer norm for dy, in f64.
fn layer_norm_backward_ref(
    x: &[f64],
    g: &[f64],
    dy: &[f32],
    cols: usize,
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut dx, mut dg, mut db) = (Vec::new(), vec![0.0; cols], vec![0.0; cols]);
    for (row, dyr) in x.chunks(cols).zip(dy.chunks(cols)) {
        let mean = row.iter().sum::<f64>() / cols as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / cols as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        let xhat: Vec<f64> = row.iter().map(|v| (v - mean) * rstd).collect();
        let gg: Vec<f64> = dyr.iter().zip(g).map(|(&d, &gv)| d as f64 * gv).collect();
        let mg = gg.iter().sum::<f64>() / cols as f64;
        let mgx = gg.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / cols as f64;
        for j in 0..cols {
            dx.push(rstd * (gg[j] - mg - xhat[j] * mgx));
            dg[j] += dyr[j] as f64 * xhat[j];
            db[j] += dyr[j] as f64;
        }
    }
    (dx, dg, db)
}

/// (softmax - onehot) * dl / count over the first `classes` columns of rows `stride` wide.
fn xent_backward_ref(
    x: &[f64],
    stride: usize,
    classes: usize,
    labels: &[i32],
    ignore: Option<i32>,
    dl: f64,
) -> Vec<f64> {
    let count = labels.iter().filter(|&&l| Some(l) != ignore).count().max(1) as f64;
    let mut out = vec![0.0; x.len()];
    for (r, &l) in labels.iter().enumerate() {
        if Some(l) == ignore {
            continue;
        }
        let row = &x[r * stride..r * stride + classes];
        let p = softmax::cpu::softmax(row, classes, false);
        for j in 0..classes {
            out[r * stride + j] = (p[j] - if j as i32 == l { 1.0 } else { 0.0 }) * dl / count;
        }
    }
    out
}

#[test]
fn softmax_and_log_softmax_on_every_row_variant() {
    let mut r = Rng::new(7);
    for (variant, d) in variants() {
        let mut t = Tally::new(variant);
        for (rows, cols) in SHAPES {
            let x = r.vec(rows * cols, -5.0, 5.0);
            let x64 = to_f64(&x);
            let dy = r.vec(rows * cols, -1.0, 1.0);
            for log in [false, true] {
                t.case(&format!("softmax [{rows}, {cols}] log={log}"), || {
                    let xa = arr(&d, &x, &[rows, cols]);
                    let y = softmax::softmax(&d, &xa, log)?;
                    let want = softmax::cpu::softmax(&x64, cols, log);
                    assert_close("softmax", &y.to_f32(&d)?, &want, 1e-6, 1e-5);
                    let dx = softmax::softmax_backward(&d, &y, &arr(&d, &dy, &[rows, cols]), log)?;
                    let want = softmax_backward_ref(&want, &dy, cols, log);
                    assert_close("softmax dx", &dx.to_f32(&d)?, &want, 1e-5, 1e-4);
                    Ok(())
                });
            }
        }
        // Finite differences of the reference on a small case (the analytic references above
        // are checked by them too).
        t.case("softmax finite differences", || {
            let (rows, cols) = (3, 37);
            let x = r.vec(rows * cols, -5.0, 5.0);
            let x64 = to_f64(&x);
            let dy = r.vec(rows * cols, -1.0, 1.0);
            for log in [false, true] {
                let y = softmax::softmax(&d, &arr(&d, &x, &[rows, cols]), log)?;
                let dx = softmax::softmax_backward(&d, &y, &arr(&d, &dy, &[rows, cols]), log)?;
                let f = |v: &[f64]| dot(&softmax::cpu::softmax(v, cols, log), &dy);
                assert_close(
                    "softmax dx (fd)",
                    &dx.to_f32(&d)?,
                    &finite_diff(f, &x64, 1e-4),
                    1e-4,
                    1e-3,
                );
            }
            Ok(())
        });
        // Large logits stay finite (the maximum is subtracted).
        t.case("softmax of large logits", || {
            let y = softmax::softmax(&d, &arr(&d, &[1000.0; 64], &[2, 32]), false)?;
            assert!(y.to_f32(&d)?.iter().all(|v| (v - 1.0 / 32.0).abs() < 1e-6));
            Ok(())
        });
        t.finish();
    }
}

#[test]
fn layer_norm_on_every_row_variant() {
    let mut r = Rng::new(31);
    let eps = 1e-5;
    for (variant, d) in variants() {
        let mut t = Tally::new(variant);
        for (rows, cols) in SHAPES {
            // A large mean checks the variance is taken from the deviations.
            let x: Vec<f32> = r
                .vec(rows * cols, -2.0, 2.0)
                .iter()
                .map(|v| v + 100.0)
                .collect();
            let (g, b) = (r.vec(cols, 0.5, 1.5), r.vec(cols, -0.5, 0.5));
            let (x64, g64, b64) = (to_f64(&x), to_f64(&g), to_f64(&b));
            let dy = r.vec(rows * cols, -1.0, 1.0);
            t.case(&format!("layer_norm [{rows}, {cols}]"), || {
                let (xa, ga, ba) = (
                    arr(&d, &x, &[rows, cols]),
                    arr(&d, &g, &[cols]),
                    arr(&d, &b, &[cols]),
                );
                let (y, saved) = norm::layer_norm(&d, &xa, &ga, &ba, eps as f32)?;
                let want = norm::cpu::layer_norm(&x64, cols, &g64, &b64, eps);
                assert_close("layer_norm", &y.to_f32(&d)?, &want, 1e-4, 1e-4);
                let (dx, dg, db) =
                    norm::layer_norm_backward(&d, &xa, &ga, &saved, &arr(&d, &dy, &[rows, cols]))?;
                let (wx, wg, wb) = layer_norm_backward_ref(&x64, &g64, &dy, cols, eps);
                assert_close("layer_norm dx", &dx.to_f32(&d)?, &wx, 2e-3, 2e-3);
                assert_close("layer_norm dgamma", &dg.to_f32(&d)?, &wg, 1e-3, 1e-3);
                assert_close("layer_norm dbeta", &db.to_f32(&d)?, &wb, 1e-4, 1e-4);
                Ok(())
            });
        }
        t.case("layer_norm finite differences", || {
            let (rows, cols) = (5, 7);
            let x = r.vec(rows * cols, -2.0, 2.0);
            let (g, b) = (r.vec(cols, 0.5, 1.5), r.vec(cols, -0.5, 0.5));
            let (x64, g64, b64) = (to_f64(&x), to_f64(&g), to_f64(&b));
            let dy = r.vec(rows * cols, -1.0, 1.0);
            let xa = arr(&d, &x, &[rows, cols]);
            let ga = arr(&d, &g, &[cols]);
            let (_, saved) = norm::layer_norm(&d, &xa, &ga, &arr(&d, &b, &[cols]), 1e-5)?;
            let (dx, _, _) =
                norm::layer_norm_backward(&d, &xa, &ga, &saved, &arr(&d, &dy, &[rows, cols]))?;
            let fx = |v: &[f64]| dot(&norm::cpu::layer_norm(v, cols, &g64, &b64, 1e-5), &dy);
            assert_close(
                "layer_norm dx (fd)",
                &dx.to_f32(&d)?,
                &finite_diff(fx, &x64, 1e-4),
                2e-3,
                2e-3,
            );
            Ok(())
        });
        t.finish();
    }
}

#[test]
fn cross_entropy_on_every_row_variant() {
    let mut r = Rng::new(3);
    for (variant, d) in variants() {
        let mut t = Tally::new(variant);
        // (rows, stride, classes): unpadded rows, and vocabularies padded to a multiple of 4
        // (vec4 rows) or not.
        let mut shapes: Vec<(usize, usize, usize)> =
            SHAPES.iter().map(|&(r, c)| (r, c, c)).collect();
        shapes.extend([(9, 12, 10), (9, 13, 10), (3, 50304, 50257), (2, 1024, 1000)]);
        for (rows, stride, classes) in shapes {
            for ignore in [None, Some(-100)] {
                let x = r.vec(rows * stride, -3.0, 3.0);
                let x64 = to_f64(&x);
                let labels: Vec<i32> = (0..rows)
                    .map(|i| {
                        if ignore.is_some() && i % 5 == 0 {
                            -100
                        } else {
                            r.below(classes) as i32
                        }
                    })
                    .collect();
                t.case(
                    &format!(
                        "cross_entropy [{rows}, {stride}] classes {classes} ignore {ignore:?}"
                    ),
                    || {
                        let la = Array::from_i32(&d, &labels, &[rows])?;
                        let xa = arr(&d, &x, &[rows, stride]);
                        let ce = softmax::cross_entropy_padded(&d, &xa, &la, classes, ignore)?;
                        let loss = ce.loss.to_f32(&d)?;
                        let counted: Vec<f64> = x64
                            .chunks(stride)
                            .flat_map(|row| row[..classes].to_vec())
                            .collect();
                        let want = softmax::cpu::cross_entropy(&counted, classes, &labels, ignore);
                        assert_close("cross entropy", &loss[..1], &[want], 1e-5, 1e-5);
                        let n = labels.iter().filter(|&&l| Some(l) != ignore).count();
                        assert_eq!(loss[1] as usize, n, "rows counted");
                        let dx = softmax::cross_entropy_backward(&d, &ce, &arr(&d, &[2.0], &[1]))?;
                        let want = xent_backward_ref(&x64, stride, classes, &labels, ignore, 2.0);
                        assert_close("cross entropy dx", &dx.to_f32(&d)?, &want, 1e-7, 1e-4);
                        Ok(())
                    },
                );
            }
        }
        t.case("cross entropy finite differences", || {
            let (rows, cols) = (6, 7);
            let x = r.vec(rows * cols, -3.0, 3.0);
            let x64 = to_f64(&x);
            let labels: Vec<i32> = (0..rows).map(|_| r.below(cols) as i32).collect();
            let la = Array::from_i32(&d, &labels, &[rows])?;
            let ce = softmax::cross_entropy(&d, &arr(&d, &x, &[rows, cols]), &la, None)?;
            let dx = softmax::cross_entropy_backward(&d, &ce, &arr(&d, &[2.0], &[1]))?;
            let f = |v: &[f64]| 2.0 * softmax::cpu::cross_entropy(v, cols, &labels, None);
            assert_close(
                "cross entropy dx (fd)",
                &dx.to_f32(&d)?,
                &finite_diff(f, &x64, 1e-4),
                1e-5,
                1e-3,
            );
            Ok(())
        });
        t.finish();
    }
}

#[test]
fn cross_entropy_is_the_same_on_every_run_and_flags_bad_labels() {
    let d = dev();
    let mut r = Rng::new(11);
    let (rows, cols) = (2048, 129);
    let x = r.vec(rows * cols, -4.0, 4.0);
    let labels: Vec<i32> = (0..rows).map(|_| r.below(cols) as i32).collect();
    let xa = arr(&d, &x, &[rows, cols]);
    let la = Array::from_i32(&d, &labels, &[rows]).unwrap();
    let first = softmax::cross_entropy(&d, &xa, &la, None).unwrap();
    let first = first.loss.to_f32(&d).unwrap();
    for _ in 0..3 {
        let again = softmax::cross_entropy(&d, &xa, &la, None).unwrap();
        assert_eq!(again.loss.to_f32(&d).unwrap(), first, "bit for bit");
    }
    // An out-of-range label: an error on the host, NaN (never a plausible loss) on the device.
    let e = softmax::check_labels(&[0, 3, 10], 10, None).unwrap_err();
    assert!(e.to_string().contains("label 10 at position 2"), "{e}");
    let la = Array::from_i32(&d, &[0, 12], &[2]).unwrap();
    let ce = softmax::cross_entropy(&d, &arr(&d, &[0.0; 20], &[2, 10]), &la, None).unwrap();
    assert!(ce.loss.to_f32(&d).unwrap()[0].is_nan());
    let la = Array::from_i32(&d, &[0], &[1]).unwrap();
    let e = softmax::cross_entropy(&d, &arr(&d, &[0.0; 20], &[2, 10]), &la, None)
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("expected labels [2], got [1]"),
        "{e}"
    );
    let la = Array::from_i32(&d, &[0, 1], &[2]).unwrap();
    let e = softmax::cross_entropy_padded(&d, &arr(&d, &[0.0; 20], &[2, 10]), &la, 11, None)
        .err()
        .unwrap();
    assert!(e.to_string().contains("between 1 and 10 classes"), "{e}");
}

/// The lanes per row each variant plans, on this adapter and on an H100's profile: short rows
/// several to a workgroup, long ones a subgroup or a workgroup, never one row per lane on a GPU.
#[test]
fn row_plans_spread_rows_over_lanes() {
    let d = dev();
    let h100 = d.with_policy(
        KernelPolicy::default().with_profile(kiln_device::AdapterProfile::nvidia_hopper()),
    );
    for (cols, vec4, lanes) in [
        (10, false, 4),
        (65, false, 16),
        (768, true, 32),
        (50257, false, 256),
        (50304, true, 256),
    ] {
        let p = rows::plan(
            &h100,
            &RowCall {
                op: RowOp::Softmax,
                rows: 2048,
                cols,
                vec4,
            },
        )
        .unwrap();
        println!("H100 [2048, {cols}] vec4={vec4}: {p:?}");
        assert_eq!(p.lanes, lanes, "[2048, {cols}]");
        assert_eq!(p.shader, "rows_sg");
        assert!(p.groups >= 256 || 2048 * p.lanes / 32 >= 256);
    }
    for cols in [1, 10, 768, 8192] {
        let p = rows::plan(
            &d,
            &RowCall {
                op: RowOp::CrossEntropy,
                rows: 2048,
                cols,
                vec4: false,
            },
        )
        .unwrap();
        println!("this adapter [2048, {cols}]: {p:?}");
    }
}

#[test]
fn layer_norm_refuses_a_mismatched_gamma() {
    let d = dev();
    let e = norm::layer_norm(
        &d,
        &arr(&d, &[0.0; 6], &[2, 3]),
        &arr(&d, &[1.0; 2], &[2]),
        &arr(&d, &[0.0; 2], &[2]),
        1e-5,
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("expected gamma [3], got [2]"), "{e}");
}
