//! Convolution (direct kernels and the implicit GEMM, every gradient) and pooling, against the
//! CPU and finite differences.

use crate::common::{arr, dev, expect_err, forced, Tally};
use kiln_ops::conv::{self, Conv2dSpec};
use kiln_ops::numeric::{assert_close, dot, finite_diff, to_f64};
use kiln_ops::pool::{self, Pool2dSpec};
use kiln_ops::random::Rng;
use kiln_ops::{Array, Device};

/// The automatic choice on this adapter, then each variant of the convolution families forced:
/// the software adapters' direct kernels, and the implicit GEMM on the software and GPU tiles.
#[test]
fn conv2d_forward_and_gradients() {
    conv_cases(&dev(), "conv (automatic)");
    conv_cases(
        &forced(&[("conv", "conv_direct"), ("conv_wgrad", "conv_wgrad")]),
        "conv_direct + conv_wgrad",
    );
}

#[test]
fn conv2d_on_the_implicit_gemm() {
    // Each layer shape builds its own pipelines (the shape's divisors are override constants),
    // which lavapipe compiles slowly: the GPU tiles take the small layers only.
    for (v, large) in [
        ("gemm_direct", true),
        ("gemm_direct_ua", false),
        ("gemm_4x4", true),
        ("gemm_64x64", false),
        ("gemm_16x64", false),
    ] {
        let d = forced(&[
            ("conv", "conv_gemm"),
            ("conv_wgrad", "conv_gemm"),
            ("matmul", v),
        ]);
        conv_cases_with(&d, &format!("conv_gemm on {v}"), large);
    }
}

#[test]
fn conv2d_weight_gradient_on_subgroups() {
    let d = dev();
    assert!(d.capabilities().subgroups, "lavapipe has subgroups");
    conv_cases(&forced(&[("conv_wgrad", "conv_wgrad_sg")]), "conv_wgrad_sg");
}

fn conv_cases(d: &Device, label: &str) {
    conv_cases_with(d, label, true)
}

/// The convolution cases on `d`, counted by pass (forward, dx, dw with db) under `label`;
/// `large`: also the layers that span several uniform windows.
fn conv_cases_with(d: &Device, label: &str, large: bool) {
    let d = d.clone();
    let mut t = Tally::new(label);
    let mut r = Rng::new(5);
    let specs = [
        ([2, 3, 7, 6], [4, 3, 3, 3], Conv2dSpec::default()),
        (
            [1, 1, 8, 8],
            [6, 1, 5, 5],
            Conv2dSpec {
                padding: (2, 2),
                ..Default::default()
            },
        ),
        (
            [2, 2, 9, 7],
            [3, 2, 3, 2],
            Conv2dSpec {
                stride: (2, 3),
                padding: (1, 0),
                dilation: (1, 2),
            },
        ),
        // Two blocks of 16 output channels, a partial block of columns, dilation.
        (
            [1, 5, 6, 11],
            [20, 5, 3, 3],
            Conv2dSpec {
                padding: (2, 1),
                dilation: (2, 1),
                ..Default::default()
            },
        ),
        // 6- and 7-wide kernels: one quad of columns and a tail of 2 or 3 (conv_wgrad's TAIL).
        (
            [2, 2, 6, 9],
            [5, 2, 2, 7],
            Conv2dSpec {
                padding: (1, 3),
                ..Default::default()
            },
        ),
        ([1, 1, 4, 11], [3, 1, 3, 6], Conv2dSpec::default()),
        (
            [1, 3, 5, 5],
            [2, 3, 1, 1],
            Conv2dSpec {
                stride: (2, 2),
                ..Default::default()
            },
        ),
    ];
    for (xs, ws, spec) in specs {
        let x = r.vec(xs.iter().product(), -1.0, 1.0);
        let w = r.vec(ws.iter().product(), -1.0, 1.0);
        let b = r.vec(ws[0], -1.0, 1.0);
        let (xa, wa, ba) = (arr(&d, &x, &xs), arr(&d, &w, &ws), arr(&d, &b, &[ws[0]]));
        let (x64, w64, b64) = (to_f64(&x), to_f64(&w), to_f64(&b));
        let (want, ys) = conv::cpu::conv2d(&x64, xs, &w64, ws, Some(&b64), &spec);
        let what = format!("conv {xs:?} {ws:?} {spec:?}");
        t.case_of("forward", &what, || {
            let y = conv::conv2d(&d, &xa, &wa, Some(&ba), &spec)?;
            assert_eq!(y.shape, ys.to_vec());
            assert_close(&what, &y.to_f32(&d)?, &want, 1e-4, 1e-4);
            Ok(())
        });
        let dy = r.vec(ys.iter().product(), -1.0, 1.0);
        let dya = arr(&d, &dy, &ys);
        // A forced direct kernel has no input gradient at stride > 1: refused, and counted so.
        t.case_of("dx", &what, || {
            let dx = conv::conv2d_backward_input(&d, &dya, &wa, &xs, &spec)?;
            let fx = |v: &[f64]| {
                dot(
                    &conv::cpu::conv2d(v, xs, &w64, ws, Some(&b64), &spec).0,
                    &dy,
                )
            };
            let want = finite_diff(fx, &x64, 1e-3);
            assert_close(&format!("{what} dx"), &dx.to_f32(&d)?, &want, 1e-3, 1e-3);
            Ok(())
        });
        t.case_of("dw", &what, || {
            let dw = conv::conv2d_backward_weight(&d, &dya, &xa, &ws, &spec)?;
            let db = conv::conv2d_backward_bias(&d, &dya)?;
            let fw = |v: &[f64]| {
                dot(
                    &conv::cpu::conv2d(&x64, xs, v, ws, Some(&b64), &spec).0,
                    &dy,
                )
            };
            let fb = |v: &[f64]| {
                dot(
                    &conv::cpu::conv2d(&x64, xs, &w64, ws, Some(v), &spec).0,
                    &dy,
                )
            };
            let want_dw = finite_diff(fw, &w64, 1e-3);
            let dw = dw.to_f32(&d)?;
            assert_close(&format!("{what} dw"), &dw, &want_dw, 1e-3, 1e-3);
            let want_db = finite_diff(fb, &b64, 1e-3);
            assert_close(&format!("{what} db"), &db.to_f32(&d)?, &want_db, 1e-3, 1e-3);
            // Both at once (one pass over dy where the direct kernel runs): the same gradients.
            let (dw2, db2) = conv::conv2d_backward_weight_bias(&d, &dya, &xa, &ws, &spec)?;
            assert_eq!(
                (dw2.shape.as_slice(), db2.shape.as_slice()),
                (&ws[..], &[ws[0]][..])
            );
            let dw2 = dw2.to_f32(&d)?;
            assert_close(
                &format!("{what} dw with db"),
                &dw2,
                &to_f64(&dw),
                1e-6,
                1e-6,
            );
            let db2 = db2.to_f32(&d)?;
            assert_close(&format!("{what} db with dw"), &db2, &want_db, 1e-3, 1e-3);
            Ok(())
        });
    }
    // LeNet's conv2 weight gradient at batch 62: long K, split across workgroups
    // (implicit GEMM) or image chunks, the last one short (direct kernel).
    let (xs, ws) = ([62, 6, 14, 14], [16, 6, 5, 5]);
    let x = r.vec(xs.iter().product(), -1.0, 1.0);
    let dy = r.vec(62 * 16 * 10 * 10, -1.0, 1.0);
    let spec = Conv2dSpec::default();
    // A forced gemm_direct_ua refuses dy as A (larger than its uniform copy).
    t.case_of("dw", "lenet conv2 (split K)", || {
        let (dw, db) = conv::conv2d_backward_weight_bias(
            &d,
            &arr(&d, &dy, &[62, 16, 10, 10]),
            &arr(&d, &x, &xs),
            &ws,
            &spec,
        )?;
        let mut want_db = vec![0.0; 16];
        for (e, &g) in dy.iter().enumerate() {
            want_db[e / 100 % 16] += g as f64;
        }
        assert_close("lenet conv2 db", &db.to_f32(&d)?, &want_db, 1e-4, 1e-4);
        let mut want = vec![0.0; 16 * 150];
        for o in 0..16 {
            for c in 0..6 {
                for i in 0..5 {
                    for j in 0..5 {
                        let mut s = 0.0;
                        for b in 0..62 {
                            for oy in 0..10 {
                                for ox in 0..10 {
                                    s += dy[((b * 16 + o) * 10 + oy) * 10 + ox] as f64
                                        * x[((b * 6 + c) * 14 + oy + i) * 14 + ox + j] as f64;
                                }
                            }
                        }
                        want[((o * 6 + c) * 5 + i) * 5 + j] = s;
                    }
                }
            }
        }
        assert_close("lenet conv2 dw", &dw.to_f32(&d)?, &want, 1e-3, 1e-4);
        Ok(())
    });
    // Enough images that the direct kernels read x and dy through several uniform windows, one
    // starting mid-image and one pinned to the allocation's end; then images larger than a
    // window (the weight gradient takes conv_wgrad_sg where there are subgroups), which the
    // direct correlation splits into parts of input channels, one with two groups of output
    // channels (72 x 20 x 5 x 5 weights); then weights in two groups while images fit; last, a
    // plane larger than a window (the implicit GEMM). A forced direct kernel refuses that plane:
    // each pass is its own case, so a refused forward leaves the gradients checked.
    let layers = [
        ([23, 3, 21, 21], [5, 3, 5, 5], 2),
        ([1, 2, 100, 90], [3, 2, 3, 3], 1),
        ([1, 20, 30, 30], [72, 20, 5, 5], 0),
        ([3, 40, 6, 6], [48, 40, 3, 3], 1),
        ([1, 1, 130, 130], [2, 1, 3, 3], 1),
    ];
    for (xs, ws, pad) in layers.into_iter().filter(|_| large) {
        let [n, ci, h, wd] = xs;
        let [co, _, k, _] = ws;
        let padded = Conv2dSpec {
            padding: (pad, pad),
            ..Default::default()
        };
        let (oh, ow) = (h + 2 * pad - k + 1, wd + 2 * pad - k + 1);
        let x = r.vec(xs.iter().product(), -1.0, 1.0);
        let w = r.vec(ws.iter().product(), -1.0, 1.0);
        let dy = r.vec(n * co * oh * ow, -1.0, 1.0);
        let (xa, wa) = (arr(&d, &x, &xs), arr(&d, &w, &ws));
        let dya = arr(&d, &dy, &[n, co, oh, ow]);
        let what = format!("conv {xs:?} {ws:?}");
        t.case_of("forward", &what, || {
            let y = conv::conv2d(&d, &xa, &wa, None, &padded)?;
            let (want, _) = conv::cpu::conv2d(&to_f64(&x), xs, &to_f64(&w), ws, None, &padded);
            assert_close(&what, &y.to_f32(&d)?, &want, 1e-4, 1e-4);
            Ok(())
        });
        let (mut want_dx, mut want_dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
        let mut want_db = vec![0.0; co];
        for (e, &g) in dy.iter().enumerate() {
            want_db[e / (oh * ow) % co] += g as f64;
        }
        for (b, o, c) in
            (0..n).flat_map(|b| (0..co).flat_map(move |o| (0..ci).map(move |c| (b, o, c))))
        {
            for (i, j) in (0..k).flat_map(|i| (0..k).map(move |j| (i, j))) {
                let wi = ((o * ci + c) * k + i) * k + j;
                for (oy, ox) in (0..oh).flat_map(|oy| (0..ow).map(move |ox| (oy, ox))) {
                    let (iy, ix) = (
                        (oy + i) as isize - pad as isize,
                        (ox + j) as isize - pad as isize,
                    );
                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                        continue;
                    }
                    let xi = ((b * ci + c) * h + iy as usize) * wd + ix as usize;
                    let g = dy[((b * co + o) * oh + oy) * ow + ox] as f64;
                    want_dx[xi] += g * w[wi] as f64;
                    want_dw[wi] += g * x[xi] as f64;
                }
            }
        }
        t.case_of("dx", &what, || {
            let dx = conv::conv2d_backward_input(&d, &dya, &wa, &xs, &padded)?;
            assert_close(&format!("{what} dx"), &dx.to_f32(&d)?, &want_dx, 1e-4, 1e-4);
            Ok(())
        });
        t.case_of("dw", &what, || {
            let (dw, db) = conv::conv2d_backward_weight_bias(&d, &dya, &xa, &ws, &padded)?;
            assert_close(&format!("{what} db"), &db.to_f32(&d)?, &want_db, 1e-4, 1e-4);
            assert_close(&format!("{what} dw"), &dw.to_f32(&d)?, &want_dw, 1e-3, 1e-4);
            Ok(())
        });
    }
    t.finish();
    // Bad shapes are errors that name both sides.
    let e = conv::conv2d(
        &d,
        &arr(&d, &[0.0; 32], &[1, 2, 4, 4]),
        &arr(&d, &[0.0; 27], &[1, 3, 3, 3]),
        None,
        &spec,
    )
    .unwrap_err();
    assert!(e.to_string().contains("3 channels"), "{e}");
    let e = conv::conv2d(
        &d,
        &arr(&d, &[0.0; 4], &[1, 1, 2, 2]),
        &arr(&d, &[0.0; 9], &[1, 1, 3, 3]),
        None,
        &spec,
    )
    .unwrap_err();
    assert!(e.to_string().contains("2x2"), "{e}");
}

#[test]
fn pooling_forward_and_gradients() {
    let d = dev();
    let mut r = Rng::new(6);
    let specs = [
        ([2, 3, 8, 8], Pool2dSpec::square(2)),
        ([1, 2, 7, 5], Pool2dSpec::square(3)),
        (
            [1, 1, 6, 7],
            Pool2dSpec {
                kernel: (3, 2),
                conv: Conv2dSpec {
                    stride: (2, 1),
                    padding: (1, 1),
                    dilation: (1, 1),
                },
            },
        ),
        // Disjoint windows with gaps between them and padding (the one-window backward path).
        (
            [2, 1, 7, 8],
            Pool2dSpec {
                kernel: (2, 2),
                conv: Conv2dSpec {
                    stride: (3, 3),
                    padding: (1, 1),
                    dilation: (1, 1),
                },
            },
        ),
    ];
    // Each case also on windows of x and dy (Buffer::window): where a window's length is not a
    // multiple of 4, the one-element kernels run instead of their quad twins.
    let window = |a: Array| Array {
        buf: a.buf.window(0, a.numel()).unwrap(),
        shape: a.shape,
    };
    for (windowed, (xs, spec)) in [false, true]
        .into_iter()
        .flat_map(|w| specs.map(|s| (w, s)))
    {
        let x = r.vec(xs.iter().product(), -1.0, 1.0);
        let x64 = to_f64(&x);
        let mut xa = arr(&d, &x, &xs);
        if windowed {
            xa = window(xa);
        }
        let (y, idx) = pool::max_pool2d(&d, &xa, &spec).unwrap();
        assert_close(
            "max_pool",
            &y.to_f32(&d).unwrap(),
            &pool::cpu::pool2d(&x64, xs, &spec, false),
            0.0,
            0.0,
        );
        let ya = pool::avg_pool2d(&d, &xa, &spec).unwrap();
        assert_close(
            "avg_pool",
            &ya.to_f32(&d).unwrap(),
            &pool::cpu::pool2d(&x64, xs, &spec, true),
            1e-6,
            1e-5,
        );
        let dy = r.vec(y.numel(), -1.0, 1.0);
        let mut dya = arr(&d, &dy, &y.shape);
        if windowed {
            dya = window(dya);
        }
        // A released buffer of dx's size holding garbage: dx, likely given its memory, must
        // still come out zero wherever no window reaches.
        drop(arr(&d, &vec![7.0; x.len()], &xs));
        let dx = pool::max_pool2d_backward(&d, &dya, &idx, &xs, &spec).unwrap();
        let f = |v: &[f64]| dot(&pool::cpu::pool2d(v, xs, &spec, false), &dy);
        assert_close(
            "max_pool dx",
            &dx.to_f32(&d).unwrap(),
            &finite_diff(f, &x64, 1e-4),
            1e-3,
            1e-3,
        );
        drop(arr(&d, &vec![7.0; x.len()], &xs));
        let dx = pool::avg_pool2d_backward(&d, &dya, &xs, &spec).unwrap();
        let f = |v: &[f64]| dot(&pool::cpu::pool2d(v, xs, &spec, true), &dy);
        assert_close(
            "avg_pool dx",
            &dx.to_f32(&d).unwrap(),
            &finite_diff(f, &x64, 1e-4),
            1e-4,
            1e-3,
        );
    }
    expect_err(
        pool::max_pool2d(&d, &arr(&d, &[0.0; 4], &[2, 2]), &Pool2dSpec::square(2)),
        "expected [N, C, H, W], got [2, 2]",
    );
}

/// The forward pass through uniform windows: 75 planes of 27 x 27 take four windows (runs that
/// start mid-window), a 130 x 130 plane is refused (larger than a window); both against the CPU,
/// with windows forced and storage forced.
#[test]
fn pooling_through_windows() {
    let mut r = Rng::new(61);
    let specs = [
        ([3, 25, 27, 27], Pool2dSpec::square(2)),
        ([1, 1, 130, 130], Pool2dSpec::square(3)),
    ];
    for windows in ["pool_windows", "pool_storage"] {
        let d = forced(&[("pool", windows)]);
        let mut t = Tally::new(windows);
        for (xs, spec) in specs {
            let x = r.vec(xs.iter().product(), -1.0, 1.0);
            let x64 = to_f64(&x);
            let xa = arr(&d, &x, &xs);
            let what = format!("max_pool {xs:?} {windows}");
            let checked = t.case(&what, || {
                let (y, idx) = pool::max_pool2d(&d, &xa, &spec)?;
                let want = pool::cpu::pool2d(&x64, xs, &spec, false);
                assert_close(&what, &y.to_f32(&d)?, &want, 0.0, 0.0);
                // Each index names the plane element the maximum came from.
                let (hw, ohw) = (xs[2] * xs[3], y.shape[2] * y.shape[3]);
                for (o, &at) in idx.to_i32(&d)?.iter().enumerate() {
                    assert_eq!(
                        x64[o / ohw * hw + at as usize],
                        want[o],
                        "{what}: index {o}"
                    );
                }
                let ya = pool::avg_pool2d(&d, &xa, &spec)?;
                let want = pool::cpu::pool2d(&x64, xs, &spec, true);
                assert_close(&format!("avg {what}"), &ya.to_f32(&d)?, &want, 1e-6, 1e-5);
                Ok(())
            });
            // Windows refuse the plane larger than one, and only that.
            if !checked {
                assert_eq!((windows, xs[2]), ("pool_windows", 130));
            }
        }
        t.finish();
    }
}
