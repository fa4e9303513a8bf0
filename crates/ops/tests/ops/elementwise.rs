//! Element-wise ops: every unary op and its backward, binary ops under NumPy's broadcasting,
//! and the quad (vec4) kernels beside their one-element twins on views and windows.

use crate::common::{arr, dev};
use kiln_ops::elementwise::{self, Binary, Unary};
use kiln_ops::numeric::{assert_close, to_f64};
use kiln_ops::random::Rng;
use kiln_ops::{Array, DType, OpError};

#[test]
fn unary_forward_and_backward() {
    let d = dev();
    let mut r = Rng::new(1);
    let ops = [
        Unary::Neg,
        Unary::Exp,
        Unary::Log,
        Unary::Sqrt,
        Unary::Abs,
        Unary::Relu,
        Unary::Sigmoid,
        Unary::Tanh,
        Unary::Gelu,
        Unary::Affine(2.5, -1.0),
        Unary::Pow(1.7),
        Unary::Square,
        Unary::GeluTanh,
    ];
    for op in ops {
        let positive = matches!(op, Unary::Log | Unary::Sqrt | Unary::Pow(_));
        let n = 1031; // prime, not a multiple of the workgroup
        let mut x = if positive {
            r.vec(n, 0.2, 3.0)
        } else {
            r.vec(n, -4.0, 4.0)
        };
        if matches!(op, Unary::Relu | Unary::Abs) {
            // Keep away from the kink, where finite differences are meaningless.
            x.iter_mut().for_each(|v| {
                if v.abs() < 0.05 {
                    *v += 0.1
                }
            });
        }
        let xa = arr(&d, &x, &[n]);
        let y = elementwise::unary(&d, &xa, op).unwrap().to_f32(&d).unwrap();
        let want: Vec<f64> = x
            .iter()
            .map(|&v| elementwise::cpu::unary(v as f64, op))
            .collect();
        assert_close(&format!("{op:?} forward"), &y, &want, 1e-5, 1e-5);
        let dy = r.vec(n, -1.0, 1.0);
        let dx = elementwise::unary_backward(&d, &xa, &arr(&d, &dy, &[n]), op)
            .unwrap()
            .to_f32(&d)
            .unwrap();
        let fd: Vec<f64> = x
            .iter()
            .zip(&dy)
            .map(|(&v, &g)| {
                let h = 1e-4;
                let f = |t: f64| elementwise::cpu::unary(t, op);
                (f(v as f64 + h) - f(v as f64 - h)) / (2.0 * h) * g as f64
            })
            .collect();
        assert_close(&format!("{op:?} backward"), &dx, &fd, 1e-4, 1e-3);
    }
}

#[test]
fn binary_broadcasting_matches_numpy_rules() {
    let d = dev();
    let mut r = Rng::new(2);
    let cases: [(&[usize], &[usize]); 6] = [
        (&[7, 5], &[7, 5]),
        (&[7, 5], &[5]),
        (&[3, 1, 4], &[1, 5, 1]),
        (&[1], &[2, 3]),
        (&[2, 1, 3, 1], &[4, 1, 2]),
        (&[1], &[1]),
    ];
    for (sa, sb) in cases {
        for op in [
            Binary::Add,
            Binary::Sub,
            Binary::Mul,
            Binary::Div,
            Binary::Max,
            Binary::Min,
            Binary::Gt,
            Binary::Pow,
        ] {
            let na: usize = sa.iter().product();
            let nb: usize = sb.iter().product();
            let a = r.vec(na, 0.5, 2.0);
            let b = r.vec(nb, 0.5, 2.0);
            let out = elementwise::binary(&d, &arr(&d, &a, sa), &arr(&d, &b, sb), op).unwrap();
            let (shape, want) = elementwise::cpu::binary(&to_f64(&a), sa, &to_f64(&b), sb, op);
            assert_eq!(out.shape, shape);
            assert_close(
                &format!("{op:?} {sa:?} {sb:?}"),
                &out.to_f32(&d).unwrap(),
                &want,
                1e-6,
                1e-5,
            );
        }
    }
    let e = elementwise::binary(
        &d,
        &arr(&d, &[0.0; 6], &[2, 3]),
        &arr(&d, &[0.0; 4], &[4]),
        Binary::Add,
    )
    .unwrap_err();
    assert!(matches!(e, OpError::Shape { .. }), "{e}");
    assert!(
        e.to_string().contains("[2, 3]") && e.to_string().contains("[4]"),
        "{e}"
    );
}

#[test]
fn quad_kernels_keep_memory_past_the_end_and_windows_take_the_one_element_path() {
    let d = dev();
    // In place on a view of 7 of an allocation's 8 floats: the quad kernel's last quad overhangs
    // the view, and the 8th float must not change.
    let whole = d
        .upload(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
        .unwrap();
    let seven = whole.view(7, DType::F32).unwrap();
    assert!(seven.quad_aligned());
    let mask = d.upload(&[2.0f32; 7]).unwrap();
    elementwise::mask_in_place(&d, &seven, &mask).unwrap();
    assert_eq!(
        d.download::<f32>(&whole).unwrap(),
        [2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 8.0]
    );
    kiln_ops::fill(&d, &seven, 5.0).unwrap();
    assert_eq!(
        d.download::<f32>(&whole).unwrap(),
        [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 8.0]
    );
    // A window of 7 floats ends inside a quad, so a vec4 array bound to it would not reach the
    // last three: these take the one-element kernels.
    let data: Vec<f32> = (1..=7).map(|v| v as f32).collect();
    let win = d.upload(&data).unwrap().window(0, 7).unwrap();
    assert!(!win.quad_aligned());
    let x = Array {
        buf: win,
        shape: vec![7],
    };
    let neg: Vec<f64> = data.iter().map(|&v| -v as f64).collect();
    // Which entry point ran, from the profile's kernel labels (which may include dispatches of
    // tests running alongside on the shared device).
    let entries = |x: &Array| {
        let mut y = None;
        let prof = d
            .profile(|| {
                y = Some(elementwise::unary(&d, x, Unary::Neg)?);
                Ok::<(), OpError>(())
            })
            .unwrap();
        let labels: Vec<String> = prof.into_iter().map(|k| k.kernel).collect();
        (y.unwrap(), labels)
    };
    let (y, labels) = entries(&x);
    assert!(
        labels.iter().any(|l| l == "elementwise::unary{OP=0}"),
        "{labels:?}"
    );
    assert_close("neg of a window", &y.to_f32(&d).unwrap(), &neg, 0.0, 0.0);
    let (y, labels) = entries(&arr(&d, &data, &[7]));
    assert!(
        labels.iter().any(|l| l == "elementwise::unary4{OP=0}"),
        "{labels:?}"
    );
    assert_close("neg", &y.to_f32(&d).unwrap(), &neg, 0.0, 0.0);
    let dx = elementwise::unary_backward(&d, &x, &x, Unary::Square).unwrap();
    let want: Vec<f64> = data.iter().map(|&v| 2.0 * (v * v) as f64).collect();
    assert_close(
        "square' of a window",
        &dx.to_f32(&d).unwrap(),
        &want,
        0.0,
        0.0,
    );
    let sum = elementwise::binary(&d, &x, &x, Binary::Add).unwrap();
    let want: Vec<f64> = data.iter().map(|&v| 2.0 * v as f64).collect();
    assert_close("sum of a window", &sum.to_f32(&d).unwrap(), &want, 0.0, 0.0);
    let m7 = d.upload(&[3.0f32; 7]).unwrap();
    elementwise::mask_in_place(&d, &x.buf, &m7).unwrap();
    let want: Vec<f64> = data.iter().map(|&v| 3.0 * v as f64).collect();
    assert_close("mask of a window", &x.to_f32(&d).unwrap(), &want, 0.0, 0.0);
    kiln_ops::fill(&d, &x.buf, -1.0).unwrap();
    assert_close(
        "fill of a window",
        &x.to_f32(&d).unwrap(),
        &[-1.0; 7],
        0.0,
        0.0,
    );
}
