//! Every op against its CPU reference, every backward against central finite differences of the
//! reference (f64), on small and odd shapes. One shared device; no adapter fails every test.

use kiln_ops::conv::{self, Conv2dSpec};
use kiln_ops::elementwise::{self, Binary, Unary};
use kiln_ops::matmul;
use kiln_ops::optim::{self, Rule};
use kiln_ops::pool::{self, Pool2dSpec};
use kiln_ops::reduce::{self, Reduce};
use kiln_ops::testing::{assert_close, dot, finite_diff, to_f64, Rng};
use kiln_ops::{layout, Array, DType, Device, DeviceError, KernelPolicy, OpError};

fn dev() -> Device {
    Device::shared().expect("a GPU or software Vulkan adapter (run scripts/setup.sh)")
}

/// The shared device with kernel variants forced: (family, variant) pairs.
fn forced(pairs: &[(&str, &str)]) -> Device {
    let p = pairs
        .iter()
        .fold(KernelPolicy::default(), |p, (f, v)| p.force(f, v));
    dev().with_policy(p)
}

/// The value, or None where a forced variant refused the shape with the typed error (any other
/// error fails the test).
fn unless_refused<T>(r: Result<T, OpError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(OpError::Device(DeviceError::VariantUnsupported { .. })) => None,
        Err(e) => panic!("{e}"),
    }
}

fn arr(d: &Device, v: &[f32], s: &[usize]) -> Array {
    Array::from_f32(d, v, s).unwrap()
}

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
            assert!(reduce::reduce_backward(&d, &dya, &shape, axis, Reduce::Max).is_err());
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
    assert!(reduce::reduce(&d, &xa, 3, Reduce::Sum, false).is_err());
    assert!(reduce::reduce(
        &d,
        &Array::empty(&d, &[0, 3]).unwrap(),
        0,
        Reduce::Sum,
        false
    )
    .is_err());
}

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
    assert!(layout::permute(&d, &xa, &[0, 0, 1]).is_err());
    assert!(layout::slice(&d, &xa, 2, 3, 2).is_err());
    assert!(layout::concat(&d, &[&xa, &s], 1).is_err());
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
    assert!(layout::slice_add(&d, &into, &s, 1, 2).is_err());
    assert!(layout::slice_add(&d, &into, &s, 0, 0).is_err());
    layout::slice_add(&d, &into, &s, 1, 1).unwrap();
    assert_eq!(
        into.to_f32(&d).unwrap(),
        [0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    );
}

/// The software adapters' GEMM kernels, each forced: gemm_uniform (2-D only), gemm_sg
/// (vec4-aligned matmuls only), the direct kernel with and without the uniform copy of A, and the
/// 4 x 4 tiles; shapes a forced variant refuses must be refused with the typed error.
#[test]
fn matmul_software_variants() {
    for v in [
        "gemm_uniform",
        "gemm_sg",
        "gemm_direct_ua",
        "gemm_4x4",
        "gemm_direct",
    ] {
        let ran = matmul_cases(&forced(&[("matmul", v)]));
        assert!(ran >= 4, "{v} ran {ran} cases");
    }
}

/// The GPU tiles, each forced: interior tiles with 16-byte loads where the layout allows, edge
/// tiles with bounds tests, split K.
#[test]
fn matmul_gpu_tiles() {
    for v in [
        "gemm_128x128",
        "gemm_128x64",
        "gemm_64x64",
        "gemm_16x64",
        "gemm_64x16",
    ] {
        let ran = matmul_cases(&forced(&[("matmul", v)]));
        assert_eq!(ran, 14, "{v} refused a shape");
    }
}

/// Interior tiles of the 128 x 128 and 16 x 64 kernels with every operand layout, batches and a
/// split K: the 16-byte-load kernel (gemm_tile4) and its edge tiles.
#[test]
fn matmul_gpu_tiles_interior() {
    let mut r = Rng::new(12);
    for v in ["gemm_128x128", "gemm_16x64"] {
        let d = forced(&[("matmul", v)]);
        for (batch, m, n, k) in [
            (1, 136, 132, 16),
            (2, 33, 72, 24),
            (1, 16, 64, 8),
            (1, 8, 8, 512),
        ] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let sa = if ta { [batch, k, m] } else { [batch, m, k] };
                let sb = if tb { [batch, n, k] } else { [batch, k, n] };
                let a = r.vec(batch * m * k, -1.0, 1.0);
                let b = r.vec(batch * n * k, -1.0, 1.0);
                let c =
                    matmul::matmul(&d, &arr(&d, &a, &sa), &arr(&d, &b, &sb), ta, tb, None).unwrap();
                let want = matmul::cpu::matmul(
                    &to_f64(&a),
                    &to_f64(&b),
                    batch,
                    m,
                    n,
                    k,
                    ta,
                    tb,
                    true,
                    true,
                );
                let what = format!("{v} {sa:?}x{sb:?} ta={ta} tb={tb}");
                assert_close(&what, &c.to_f32(&d).unwrap(), &want, 1e-4, 1e-4);
            }
        }
    }
}

/// Each fused activation after the bias, in the tiles' epilogue (GPU tiles, with and without a K
/// split) and as a pass of its own (software kernels), with its backward against finite
/// differences.
#[test]
fn matmul_bias_act_fuses_the_epilogue() {
    use matmul::Activation;
    let mut r = Rng::new(13);
    for v in ["gemm_64x64", "gemm_16x64", "gemm_direct"] {
        let d = forced(&[("matmul", v)]);
        for act in [
            Activation::None,
            Activation::Relu,
            Activation::Gelu,
            Activation::Tanh,
            Activation::Sigmoid,
        ] {
            for (m, n, k) in [(5, 7, 9), (3, 6, 700)] {
                let a = r.vec(m * k, -1.0, 1.0);
                let b = r.vec(k * n, -1.0, 1.0);
                let bias = r.vec(n, -1.0, 1.0);
                let (aa, ba, bb) = (
                    arr(&d, &a, &[m, k]),
                    arr(&d, &b, &[k, n]),
                    arr(&d, &bias, &[n]),
                );
                let saved =
                    matmul::matmul_bias_act(&d, &aa, &ba, false, false, Some(&bb), act).unwrap();
                let f = |x: f64| match act.unary() {
                    Some(op) => elementwise::cpu::unary(x, op),
                    None => x,
                };
                let cpu = |a: &[f64], b: &[f64]| {
                    let c = matmul::cpu::matmul(a, b, 1, m, n, k, false, false, false, false);
                    c.iter()
                        .enumerate()
                        .map(|(i, v)| f(v + bias[i % n] as f64))
                        .collect::<Vec<_>>()
                };
                let (a64, b64) = (to_f64(&a), to_f64(&b));
                let what = format!("{v} {act:?} {m}x{n}x{k}");
                assert_close(
                    &what,
                    &saved.out.to_f32(&d).unwrap(),
                    &cpu(&a64, &b64),
                    1e-4,
                    1e-4,
                );
                let dy = r.vec(m * n, -1.0, 1.0);
                let (da, db, _) = matmul::matmul_bias_act_backward(
                    &d,
                    &aa,
                    &ba,
                    false,
                    false,
                    &saved,
                    &arr(&d, &dy, &[m, n]),
                    [true, true, false],
                )
                .unwrap();
                if k < 100 {
                    let fa = |x: &[f64]| dot(&cpu(x, &b64), &dy);
                    let fb = |x: &[f64]| dot(&cpu(&a64, x), &dy);
                    let (ga, gb) = (finite_diff(fa, &a64, 1e-4), finite_diff(fb, &b64, 1e-4));
                    assert_close(
                        &format!("{what} dA"),
                        &da.unwrap().to_f32(&d).unwrap(),
                        &ga,
                        1e-3,
                        1e-3,
                    );
                    assert_close(
                        &format!("{what} dB"),
                        &db.unwrap().to_f32(&d).unwrap(),
                        &gb,
                        1e-3,
                        1e-3,
                    );
                }
            }
        }
    }
}

/// A forced variant that cannot run a shape is a typed error naming the family, the variant and
/// why; an unknown variant name lists the family's variants.
#[test]
fn forced_variants_refuse_what_they_cannot_run() {
    let d = forced(&[("matmul", "gemm_sg")]);
    let a = arr(&d, &[1.0; 15], &[3, 5]);
    let b = arr(&d, &[1.0; 35], &[5, 7]);
    let e = matmul::matmul(&d, &a, &b, false, false, None).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, OpError::Device(DeviceError::VariantUnsupported { .. }))
            && msg.contains("matmul")
            && msg.contains("gemm_sg")
            && msg.contains("vec4"),
        "{msg}"
    );
    let d = forced(&[("matmul", "gemm_9x9")]);
    let e = matmul::matmul(&d, &a, &b, false, false, None).unwrap_err();
    assert!(e.to_string().contains("gemm_128x128"), "{e}");
}

/// Every case on `d` (whose policy may force a variant); returns how many cases ran rather than
/// being refused by a forced variant.
fn matmul_cases(d: &Device) -> usize {
    let d = d.clone();
    let mut ran = 0;
    let mut r = Rng::new(4);
    // (batch_a, batch_b, m, n, k): primes, 1s, non-multiples of every tile, a shared 2-D operand.
    let cases = [
        (0, 0, 1, 1, 1),
        (0, 0, 13, 17, 19),
        (0, 0, 67, 5, 131),
        (3, 3, 7, 11, 5),
        (2, 0, 9, 4, 6),
        (0, 2, 5, 3, 8),
        (0, 0, 6, 25, 3000),
        // vec4-aligned (gemm_sg on software adapters): edges inside its 32-row block, batches,
        // a shared operand, split K.
        (0, 0, 12, 20, 16),
        (2, 2, 4, 8, 12),
        (0, 3, 8, 4, 4),
        (0, 0, 20, 12, 2400),
        // gemm_sg's workgroup narrows to N: 16 invocations for 36 columns; two workgroups of 64
        // for 264.
        (0, 0, 36, 36, 20),
        (0, 0, 8, 264, 8),
        // Operands larger than a 64 KiB uniform window: gemm_uniform splits M, N and K.
        (0, 0, 150, 300, 130),
    ];
    for (ba, bb, m, n, k) in cases {
        // Fresh (zeroed) buffers: a tile a kernel forgets to write cannot pass on values a
        // recycled buffer kept from an earlier product.
        d.trim_pool();
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let batch = ba.max(bb).max(1);
            let sa: Vec<usize> = (ba > 0)
                .then_some(ba)
                .into_iter()
                .chain(if ta { [k, m] } else { [m, k] })
                .collect();
            let sb: Vec<usize> = (bb > 0)
                .then_some(bb)
                .into_iter()
                .chain(if tb { [n, k] } else { [k, n] })
                .collect();
            let a = r.vec(sa.iter().product(), -1.0, 1.0);
            let b = r.vec(sb.iter().product(), -1.0, 1.0);
            let bias = r.vec(n, -1.0, 1.0);
            let (aa, ba_) = (arr(&d, &a, &sa), arr(&d, &b, &sb));
            let c = matmul::matmul(&d, &aa, &ba_, ta, tb, Some(&arr(&d, &bias, &[n])));
            let Some(c) = unless_refused(c) else {
                continue;
            };
            if (ta, tb) == (false, false) {
                ran += 1;
            }
            let mut want = matmul::cpu::matmul(
                &to_f64(&a),
                &to_f64(&b),
                batch,
                m,
                n,
                k,
                ta,
                tb,
                ba > 0,
                bb > 0,
            );
            want.iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v += bias[i % n] as f64);
            let what = format!("matmul {sa:?}x{sb:?} ta={ta} tb={tb}");
            assert_close(&what, &c.to_f32(&d).unwrap(), &want, 1e-4, 1e-4);
            if k > 100 {
                continue; // finite differences on the small cases only
            }
            let dc = r.vec(c.numel(), -1.0, 1.0);
            let dca = arr(&d, &dc, &c.shape);
            // The gradients' products have other shapes, which a forced variant may refuse.
            let grads = matmul::matmul_backward(&d, &aa, &ba_, ta, tb, &dca, [true; 3]);
            let Some((da, db, dbias)) = unless_refused(grads) else {
                continue;
            };
            let (da, db) = (da.unwrap(), db.unwrap());
            // Asked for one operand's gradient, it computes that one, the same, and not the other.
            let (no_a, only_b, _) =
                matmul::matmul_backward(&d, &aa, &ba_, ta, tb, &dca, [false, true, false]).unwrap();
            let (only_a, no_b, _) =
                matmul::matmul_backward(&d, &aa, &ba_, ta, tb, &dca, [true, false, false]).unwrap();
            assert!(no_a.is_none() && no_b.is_none(), "{sa:?}x{sb:?}");
            assert_eq!(only_a.unwrap().to_f32(&d).unwrap(), da.to_f32(&d).unwrap());
            assert_eq!(only_b.unwrap().to_f32(&d).unwrap(), db.to_f32(&d).unwrap());
            let (a64, b64) = (to_f64(&a), to_f64(&b));
            let f_a = |x: &[f64]| {
                dot(
                    &matmul::cpu::matmul(x, &b64, batch, m, n, k, ta, tb, ba > 0, bb > 0),
                    &dc,
                )
            };
            let f_b = |x: &[f64]| {
                dot(
                    &matmul::cpu::matmul(&a64, x, batch, m, n, k, ta, tb, ba > 0, bb > 0),
                    &dc,
                )
            };
            assert_close(
                &format!("{what} dA"),
                &da.to_f32(&d).unwrap(),
                &finite_diff(f_a, &a64, 1e-3),
                1e-3,
                1e-3,
            );
            assert_close(
                &format!("{what} dB"),
                &db.to_f32(&d).unwrap(),
                &finite_diff(f_b, &b64, 1e-3),
                1e-3,
                1e-3,
            );
            let want_bias: Vec<f64> = (0..n)
                .map(|j| dc.iter().skip(j).step_by(n).map(|&v| v as f64).sum())
                .collect();
            assert_close(
                &format!("{what} dbias"),
                &dbias.unwrap().to_f32(&d).unwrap(),
                &want_bias,
                1e-4,
                1e-4,
            );
        }
    }
    let e = matmul::matmul(
        &d,
        &arr(&d, &[0.0; 6], &[2, 3]),
        &arr(&d, &[0.0; 8], &[4, 2]),
        false,
        false,
        None,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("[2, 3]") && e.to_string().contains("[4, 2]"),
        "{e}"
    );
    ran
}

/// f16 values rounded as the device rounds them.
fn round_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect()
}

/// What `half::cast_f16_scaled` keeps of `v`: f16 after scaling max |v| into (2^13, 2^14].
fn round_f16_scaled(v: &[f32]) -> Vec<f32> {
    let amax = v.iter().fold(0.0f32, |a, x| a.max(x.abs()));
    let s = 2f32.powi(14 - amax.log2().ceil() as i32);
    v.iter()
        .map(|x| half::f16::from_f32(x * s).to_f32() / s)
        .collect()
}

#[test]
fn f16_casts_round_to_nearest_even() {
    let d = dev();
    let mut r = Rng::new(9);
    // Odd length (the last f16 shares a word with padding), ties and subnormals included.
    let mut x = r.vec(1001, -70.0, 70.0);
    x.extend([
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        3.0e-6,
        -1.0e-7,
        0.0,
        65504.0,
    ]);
    let xa = arr(&d, &x, &[x.len()]);
    let h = kiln_ops::half::cast(&d, &xa, kiln_ops::DType::F16).unwrap();
    let want: Vec<half::f16> = x.iter().map(|v| half::f16::from_f32(*v)).collect();
    let got = h.to_f16(&d).unwrap();
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g.to_bits(),
            w.to_bits(),
            "element {i}: {} -> {g} (want {w})",
            x[i]
        );
    }
    let back = kiln_ops::half::cast(&d, &h, kiln_ops::DType::F32).unwrap();
    assert_eq!(back.to_f32(&d).unwrap(), round_f16(&x));
    let i = Array::from_i32(&d, &[1, 2], &[2]).unwrap();
    assert!(kiln_ops::half::cast(&d, &i, kiln_ops::DType::F16).is_err());
    // Scaled: tiny values (subnormal or zero in plain f16) keep 11 significant bits.
    for scale in [1e-9f32, 1.0, 3e4] {
        let v: Vec<f32> = r.vec(777, -1.0, 1.0).iter().map(|x| x * scale).collect();
        let (h, inv) = kiln_ops::half::cast_f16_scaled(&d, &arr(&d, &v, &[7, 111])).unwrap();
        let inv = d.download::<f32>(&inv).unwrap()[0];
        let got: Vec<f32> = h
            .to_f16(&d)
            .unwrap()
            .iter()
            .map(|x| x.to_f32() * inv)
            .collect();
        assert_eq!(got, round_f16_scaled(&v), "scale {scale}");
    }
}

#[test]
fn matmul_f16_on_every_available_path() {
    let d = dev();
    let coop = !d.cooperative_f16_f32_sizes().is_empty();
    // Set on machines known to have cooperative matrices, so the path cannot silently go untested.
    if std::env::var_os("KILN_REQUIRE_COOP").is_some() {
        assert!(
            coop,
            "KILN_REQUIRE_COOP is set but the adapter has no f16 cooperative matrices"
        );
    }
    // Mesa's lavapipe reports 8 x 8 fragments only, but lowers cooperative matrices of any size
    // in software: there the 16 x 16 entry points run too, through a profile that lists them.
    let mut sizes = d.cooperative_f16_f32_sizes().to_vec();
    let mut prof = d.adapter_profile().clone();
    if coop && d.adapter().is_software && !sizes.contains(&16) {
        sizes.insert(0, 16);
        prof.coop_f16_sizes = sizes.clone();
    }
    // Every fragment size the adapter offers, each forced; a size it lacks is refused.
    for (v, size) in [
        ("coop16", 16),
        ("coop16_small", 16),
        ("coop8", 8),
        ("coop8_small", 8),
    ] {
        let policy = KernelPolicy::default().force("matmul_f16", v);
        let fd = dev().with_policy(policy.clone().with_profile(prof.clone()));
        if sizes.contains(&size) {
            matmul_f16_cases(&fd, true);
        } else {
            let fd = dev().with_policy(policy);
            let a = Array::from_f16(&d, &[half::f16::ONE; 4], &[2, 2]).unwrap();
            let e = matmul::matmul(&fd, &a, &a, false, false, None).unwrap_err();
            assert!(e.to_string().contains(v), "{e}");
        }
    }
    // Widening to f32 always.
    matmul_f16_cases(&forced(&[("matmul_f16", "widen")]), false);
}

fn matmul_f16_cases(d: &Device, coop: bool) {
    let d = d.clone();
    let mut r = Rng::new(8);
    // (batch_a, batch_b, m, n, k): edges inside a fragment and a workgroup tile, several tiles,
    // batches, a shared operand, and a K long enough to be split across workgroups.
    let cases = [
        (0, 0, 1, 1, 1),
        (0, 0, 13, 17, 19),
        (0, 0, 70, 37, 45),
        (2, 2, 9, 20, 33),
        (0, 3, 16, 16, 16),
        (0, 0, 8, 12, 1500),
        // Interior tiles (16-byte loads) of the 64 and 128 tiles beside edge tiles.
        (0, 0, 136, 130, 64),
        (2, 2, 72, 66, 32),
    ];
    for (ba, bb, m, n, k) in cases {
        // Fresh (zeroed) buffers: a tile a kernel forgets to write cannot pass on values a
        // recycled buffer kept from an earlier product.
        d.trim_pool();
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let batch = ba.max(bb).max(1);
            let shape = |b: usize, r: usize, c: usize, t: bool| -> Vec<usize> {
                let mut s: Vec<usize> = (b > 0).then_some(b).into_iter().collect();
                s.extend(if t { [c, r] } else { [r, c] });
                s
            };
            let (sa, sb) = (shape(ba, m, k, ta), shape(bb, k, n, tb));
            let a = round_f16(&r.vec(sa.iter().product(), -1.0, 1.0));
            let b = round_f16(&r.vec(sb.iter().product(), -1.0, 1.0));
            let bias = r.vec(n, -1.0, 1.0);
            // Upload as f32 and cast on the device, as a mixed-precision model does.
            let to16 = |v: &[f32], s: &[usize]| {
                kiln_ops::half::cast(&d, &arr(&d, v, s), kiln_ops::DType::F16).unwrap()
            };
            let (aa, bh) = (to16(&a, &sa), to16(&b, &sb));
            let c = matmul::matmul(&d, &aa, &bh, ta, tb, Some(&arr(&d, &bias, &[n]))).unwrap();
            assert_eq!(c.dtype(), kiln_ops::DType::F32);
            let (a64, b64) = (to_f64(&a), to_f64(&b));
            let cpu = |x: &[f64], y: &[f64]| {
                matmul::cpu::matmul(x, y, batch, m, n, k, ta, tb, ba > 0, bb > 0)
            };
            let mut want = cpu(&a64, &b64);
            want.iter_mut()
                .enumerate()
                .for_each(|(i, v)| *v += bias[i % n] as f64);
            // Products of f16 values are exact in f32; only the f32 sums round.
            let what = format!("f16 matmul coop={coop} {sa:?}x{sb:?} ta={ta} tb={tb}");
            assert_close(&what, &c.to_f32(&d).unwrap(), &want, 1e-4, 1e-4);
            if k > 100 || m * n > 2000 {
                continue; // finite differences on the small cases only
            }
            // Backward, once with gradients far below f16's normal range (1e-7), which only the
            // power-of-two scaling of dC keeps accurate. On cooperative matrices dC is rounded to
            // f16's 11 significant bits; widened, it stays f32.
            let dscale = if (m, n, k) == (13, 17, 19) { 1e-7 } else { 1.0 };
            let dc: Vec<f32> = r
                .vec(c.numel(), -1.0, 1.0)
                .iter()
                .map(|v| v * dscale)
                .collect();
            let dc16 = if coop {
                round_f16_scaled(&dc)
            } else {
                dc.clone()
            };
            let (da, db, dbias) =
                matmul::matmul_backward(&d, &aa, &bh, ta, tb, &arr(&d, &dc, &c.shape), [true; 3])
                    .unwrap();
            let (da, db) = (da.unwrap(), db.unwrap());
            let f_a = |x: &[f64]| dot(&cpu(x, &b64), &dc16);
            let f_b = |x: &[f64]| dot(&cpu(&a64, x), &dc16);
            let tol = 1e-4 * (k as f64).sqrt().max(1.0) * dscale as f64;
            assert_close(
                &format!("{what} dA"),
                &da.to_f32(&d).unwrap(),
                &finite_diff(f_a, &a64, 0.5),
                tol,
                1e-3,
            );
            assert_close(
                &format!("{what} dB"),
                &db.to_f32(&d).unwrap(),
                &finite_diff(f_b, &b64, 0.5),
                tol,
                1e-3,
            );
            let want_bias: Vec<f64> = (0..n)
                .map(|j| dc.iter().skip(j).step_by(n).map(|&v| v as f64).sum())
                .collect();
            assert_close(
                &format!("{what} dbias"),
                &dbias.unwrap().to_f32(&d).unwrap(),
                &want_bias,
                1e-4 * dscale as f64,
                1e-4,
            );
        }
    }
    // Mixed operand types are refused.
    let a16 = kiln_ops::half::cast(&d, &arr(&d, &[1.0; 4], &[2, 2]), kiln_ops::DType::F16).unwrap();
    let e = matmul::matmul(&d, &a16, &arr(&d, &[1.0; 4], &[2, 2]), false, false, None).unwrap_err();
    assert!(matches!(e, OpError::DType { .. }), "{e}");
}

/// The automatic choice on this adapter, then each variant of the convolution families forced:
/// the software adapters' direct kernels, and the implicit GEMM on the software and GPU tiles.
#[test]
fn conv2d_forward_and_gradients() {
    conv_cases(&dev());
    conv_cases(&forced(&[
        ("conv", "conv_direct"),
        ("conv_wgrad", "conv_wgrad"),
    ]));
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
        conv_cases_with(&d, large);
    }
}

#[test]
fn conv2d_weight_gradient_on_subgroups() {
    let d = dev();
    assert!(d.capabilities().subgroups, "lavapipe has subgroups");
    conv_cases(&forced(&[("conv_wgrad", "conv_wgrad_sg")]));
}

fn conv_cases(d: &Device) {
    conv_cases_with(d, true)
}

/// The convolution cases on `d`; `large`: also the layers that span several uniform windows.
fn conv_cases_with(d: &Device, large: bool) {
    let d = d.clone();
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
        let y = conv::conv2d(&d, &xa, &wa, Some(&ba), &spec).unwrap();
        let (x64, w64, b64) = (to_f64(&x), to_f64(&w), to_f64(&b));
        let (want, ys) = conv::cpu::conv2d(&x64, xs, &w64, ws, Some(&b64), &spec);
        assert_eq!(y.shape, ys.to_vec());
        let what = format!("conv {xs:?} {ws:?} {spec:?}");
        assert_close(&what, &y.to_f32(&d).unwrap(), &want, 1e-4, 1e-4);
        let dy = r.vec(y.numel(), -1.0, 1.0);
        let dya = arr(&d, &dy, &y.shape);
        // A forced direct kernel has no input gradient at stride > 1.
        let Some(dx) = unless_refused(conv::conv2d_backward_input(&d, &dya, &wa, &xs, &spec))
        else {
            continue;
        };
        let dw = conv::conv2d_backward_weight(&d, &dya, &xa, &ws, &spec).unwrap();
        let db = conv::conv2d_backward_bias(&d, &dya).unwrap();
        let fx = |v: &[f64]| {
            dot(
                &conv::cpu::conv2d(v, xs, &w64, ws, Some(&b64), &spec).0,
                &dy,
            )
        };
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
        assert_close(
            &format!("{what} dx"),
            &dx.to_f32(&d).unwrap(),
            &finite_diff(fx, &x64, 1e-3),
            1e-3,
            1e-3,
        );
        assert_close(
            &format!("{what} dw"),
            &dw.to_f32(&d).unwrap(),
            &finite_diff(fw, &w64, 1e-3),
            1e-3,
            1e-3,
        );
        let want_db = finite_diff(fb, &b64, 1e-3);
        assert_close(
            &format!("{what} db"),
            &db.to_f32(&d).unwrap(),
            &want_db,
            1e-3,
            1e-3,
        );
        // Both at once (one pass over dy where the direct kernel runs): the same gradients.
        let (dw2, db2) = conv::conv2d_backward_weight_bias(&d, &dya, &xa, &ws, &spec).unwrap();
        assert_eq!(
            (dw2.shape.as_slice(), db2.shape.as_slice()),
            (&ws[..], &[ws[0]][..])
        );
        let (dw, dw2) = (dw.to_f32(&d).unwrap(), dw2.to_f32(&d).unwrap());
        assert_close(
            &format!("{what} dw with db"),
            &dw2,
            &to_f64(&dw),
            1e-6,
            1e-6,
        );
        assert_close(
            &format!("{what} db with dw"),
            &db2.to_f32(&d).unwrap(),
            &want_db,
            1e-3,
            1e-3,
        );
    }
    // LeNet's conv2 weight gradient at batch 62: long K, split across workgroups
    // (implicit GEMM) or image chunks, the last one short (direct kernel).
    let (xs, ws) = ([62, 6, 14, 14], [16, 6, 5, 5]);
    let x = r.vec(xs.iter().product(), -1.0, 1.0);
    let dy = r.vec(62 * 16 * 10 * 10, -1.0, 1.0);
    let spec = Conv2dSpec::default();
    // A forced gemm_direct_ua refuses dy as A (larger than its uniform copy).
    let grads = conv::conv2d_backward_weight_bias(
        &d,
        &arr(&d, &dy, &[62, 16, 10, 10]),
        &arr(&d, &x, &xs),
        &ws,
        &spec,
    );
    if let Some((dw, db)) = unless_refused(grads) {
        let mut want_db = vec![0.0; 16];
        for (e, &g) in dy.iter().enumerate() {
            want_db[e / 100 % 16] += g as f64;
        }
        assert_close(
            "lenet conv2 db",
            &db.to_f32(&d).unwrap(),
            &want_db,
            1e-4,
            1e-4,
        );
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
        assert_close(
            "lenet conv2 dw (split K)",
            &dw.to_f32(&d).unwrap(),
            &want,
            1e-3,
            1e-4,
        );
    }
    // Enough images that the direct kernels read x and dy through several uniform windows, one
    // starting mid-image and one pinned to the allocation's end; then images larger than a
    // window (the weight gradient takes conv_wgrad_sg where there are subgroups), which the
    // direct correlation splits into parts of input channels, one with two groups of output
    // channels (72 x 20 x 5 x 5 weights); then weights in two groups while images fit; last, a
    // plane larger than a window (the implicit GEMM).
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
        // A forced direct kernel refuses a plane larger than a window.
        let Some(y) = unless_refused(conv::conv2d(&d, &xa, &wa, None, &padded)) else {
            continue;
        };
        let (want, _) = conv::cpu::conv2d(&to_f64(&x), xs, &to_f64(&w), ws, None, &padded);
        assert_close(&what, &y.to_f32(&d).unwrap(), &want, 1e-4, 1e-4);
        let Some(dx) = unless_refused(conv::conv2d_backward_input(&d, &dya, &wa, &xs, &padded))
        else {
            continue;
        };
        let wgrad = conv::conv2d_backward_weight_bias(&d, &dya, &xa, &ws, &padded);
        let Some((dw, db)) = unless_refused(wgrad) else {
            continue;
        };
        let (mut want_dx, mut want_dw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
        let mut want_db = vec![0.0; co];
        for (e, &g) in dy.iter().enumerate() {
            want_db[e / (oh * ow) % co] += g as f64;
        }
        assert_close(
            &format!("{what} db"),
            &db.to_f32(&d).unwrap(),
            &want_db,
            1e-4,
            1e-4,
        );
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
        assert_close(
            &format!("{what} dx"),
            &dx.to_f32(&d).unwrap(),
            &want_dx,
            1e-4,
            1e-4,
        );
        assert_close(
            &format!("{what} dw"),
            &dw.to_f32(&d).unwrap(),
            &want_dw,
            1e-3,
            1e-4,
        );
    }
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
    assert!(pool::max_pool2d(&d, &arr(&d, &[0.0; 4], &[2, 2]), &Pool2dSpec::square(2)).is_err());
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
        for (xs, spec) in specs {
            let x = r.vec(xs.iter().product(), -1.0, 1.0);
            let x64 = to_f64(&x);
            let xa = arr(&d, &x, &xs);
            // Windows refuse the plane larger than one.
            let Some((y, idx)) = unless_refused(pool::max_pool2d(&d, &xa, &spec)) else {
                assert_eq!((windows, xs[2]), ("pool_windows", 130));
                continue;
            };
            let what = format!("max_pool {xs:?} {windows}");
            let want = pool::cpu::pool2d(&x64, xs, &spec, false);
            assert_close(&what, &y.to_f32(&d).unwrap(), &want, 0.0, 0.0);
            // Each index names the plane element the maximum came from.
            let (hw, ohw) = (xs[2] * xs[3], y.shape[2] * y.shape[3]);
            for (o, &at) in idx.to_i32(&d).unwrap().iter().enumerate() {
                assert_eq!(
                    x64[o / ohw * hw + at as usize],
                    want[o],
                    "{what}: index {o}"
                );
            }
            let ya = pool::avg_pool2d(&d, &xa, &spec).unwrap();
            let want = pool::cpu::pool2d(&x64, xs, &spec, true);
            assert_close(
                &format!("avg {what}"),
                &ya.to_f32(&d).unwrap(),
                &want,
                1e-6,
                1e-5,
            );
        }
    }
}

#[test]
fn recurrent_cells_match_the_cpu_and_finite_differences() {
    let d = dev();
    let mut r = Rng::new(31);
    for (rows, units) in [(3, 5), (1, 1), (2, 67)] {
        let xg = r.vec(rows * 4 * units, -2.0, 2.0);
        let hg = r.vec(rows * 4 * units, -2.0, 2.0);
        let cp = r.vec(rows * units, -1.5, 1.5);
        let (xa, ha, ca) = (
            arr(&d, &xg, &[rows, 4 * units]),
            arr(&d, &hg, &[rows, 4 * units]),
            arr(&d, &cp, &[rows, units]),
        );
        let pre: Vec<f64> = xg.iter().zip(&hg).map(|(a, b)| (a + b) as f64).collect();
        let hc = kiln_ops::rnn::lstm_cell(&d, &xa, &ha, &ca).unwrap();
        assert_eq!(hc.shape, [rows, 2 * units]);
        let want = kiln_ops::rnn::cpu::lstm_cell(&pre, &to_f64(&cp), units);
        let what = format!("lstm_cell {rows}x{units}");
        assert_close(&what, &hc.to_f32(&d).unwrap(), &want, 1e-6, 1e-5);
        // The gradient of sum(w * hc) against finite differences of the CPU cell.
        let w = r.vec(rows * 2 * units, -1.0, 1.0);
        let (dpre, dcp) =
            kiln_ops::rnn::lstm_cell_backward(&d, &xa, &ha, &ca, &arr(&d, &w, &[rows, 2 * units]))
                .unwrap();
        let loss = |pre: &[f64], cp: &[f64]| {
            let hc = kiln_ops::rnn::cpu::lstm_cell(pre, cp, units);
            hc.iter().zip(&w).map(|(a, b)| a * *b as f64).sum::<f64>()
        };
        let cp64 = to_f64(&cp);
        let fd_pre = finite_diff(|v| loss(v, &cp64), &pre, 1e-5);
        let fd_c = finite_diff(|v| loss(&pre, v), &cp64, 1e-5);
        assert_close(
            &format!("{what} d(pre)"),
            &dpre.to_f32(&d).unwrap(),
            &fd_pre,
            1e-4,
            1e-3,
        );
        assert_close(
            &format!("{what} d(c_prev)"),
            &dcp.to_f32(&d).unwrap(),
            &fd_c,
            1e-4,
            1e-3,
        );
    }
    for (rows, units) in [(3, 5), (1, 1), (2, 67)] {
        let xg = r.vec(rows * 3 * units, -2.0, 2.0);
        let hg = r.vec(rows * 3 * units, -2.0, 2.0);
        let hp = r.vec(rows * units, -1.0, 1.0);
        let (xa, ha, pa) = (
            arr(&d, &xg, &[rows, 3 * units]),
            arr(&d, &hg, &[rows, 3 * units]),
            arr(&d, &hp, &[rows, units]),
        );
        let (x64, g64, p64) = (to_f64(&xg), to_f64(&hg), to_f64(&hp));
        let h = kiln_ops::rnn::gru_cell(&d, &xa, &ha, &pa).unwrap();
        let want = kiln_ops::rnn::cpu::gru_cell(&x64, &g64, &p64, units);
        let what = format!("gru_cell {rows}x{units}");
        assert_close(&what, &h.to_f32(&d).unwrap(), &want, 1e-6, 1e-5);
        let w = r.vec(rows * units, -1.0, 1.0);
        let (dx, dg, dp) =
            kiln_ops::rnn::gru_cell_backward(&d, &xa, &ha, &pa, &arr(&d, &w, &[rows, units]))
                .unwrap();
        let loss = |x: &[f64], g: &[f64], p: &[f64]| {
            let h = kiln_ops::rnn::cpu::gru_cell(x, g, p, units);
            h.iter().zip(&w).map(|(a, b)| a * *b as f64).sum::<f64>()
        };
        let fds = [
            finite_diff(|v| loss(v, &g64, &p64), &x64, 1e-5),
            finite_diff(|v| loss(&x64, v, &p64), &g64, 1e-5),
            finite_diff(|v| loss(&x64, &g64, v), &p64, 1e-5),
        ];
        for ((name, got), fd) in [("xg", dx), ("hg", dg), ("h_prev", dp)]
            .into_iter()
            .zip(&fds)
        {
            let got = got.to_f32(&d).unwrap();
            assert_close(&format!("{what} d({name})"), &got, fd, 1e-4, 1e-3);
        }
    }
    let a = arr(&d, &[0.0; 8], &[1, 8]);
    let c = arr(&d, &[0.0; 3], &[1, 3]);
    let e = kiln_ops::rnn::gru_cell(&d, &a, &a, &c).unwrap_err();
    assert!(
        matches!(e, OpError::Shape { .. }) && e.to_string().contains("[1, 9]"),
        "{e}"
    );
    let e = kiln_ops::rnn::lstm_cell(&d, &a, &a, &c).unwrap_err();
    assert!(
        matches!(e, OpError::Shape { .. }) && e.to_string().contains("[1, 12]"),
        "{e}"
    );
}

/// Every update rule, with and without their options.
fn all_rules() -> [Rule; 8] {
    [
        Rule::Sgd {
            momentum: 0.0,
            dampening: 0.0,
            nesterov: false,
            weight_decay: 0.0,
        },
        Rule::Sgd {
            momentum: 0.9,
            dampening: 0.1,
            nesterov: false,
            weight_decay: 1e-2,
        },
        Rule::Sgd {
            momentum: 0.9,
            dampening: 0.0,
            nesterov: true,
            weight_decay: 0.0,
        },
        Rule::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
        },
        Rule::Adam {
            beta1: 0.8,
            beta2: 0.99,
            eps: 1e-6,
            weight_decay: 1e-2,
            decoupled: false,
        },
        Rule::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
            decoupled: true,
        },
        Rule::RmsProp {
            alpha: 0.99,
            eps: 1e-8,
            weight_decay: 0.0,
            momentum: 0.0,
            centered: false,
        },
        Rule::RmsProp {
            alpha: 0.9,
            eps: 1e-6,
            weight_decay: 1e-3,
            momentum: 0.5,
            centered: true,
        },
    ]
}

/// A group's update in few dispatches (eight parameters per `multi` dispatch, two per `multi2`: 11 parameters of
/// odd lengths, 1 to 1031, some frozen) and one per parameter, each forced, against the CPU over
/// three steps; the flat state of each parameter starts on its 256-byte boundary.
#[test]
fn grouped_optimizer_updates_match_the_cpu() {
    for variant in ["optim_multi", "optim_multi2", "optim_single"] {
        grouped_optimizer_cases(&forced(&[("optim", variant)]), variant);
    }
}

fn grouped_optimizer_cases(d: &Device, variant: &str) {
    let mut r = Rng::new(81);
    let lens = [1, 7, 1031, 64, 5, 333, 2, 17, 250, 3, 9];
    {
        for rule in all_rules() {
            let (offsets, total) = optim::state_layout(&lens);
            assert!(offsets.iter().all(|o| o % optim::STATE_ALIGN == 0));
            let state: Vec<_> = (0..rule.state_count())
                .map(|_| d.upload(&vec![0.0f32; total]).unwrap())
                .collect();
            let p0: Vec<Vec<f32>> = lens.iter().map(|&n| r.vec(n, -1.0, 1.0)).collect();
            let params: Vec<_> = p0.iter().map(|p| d.upload(p).unwrap()).collect();
            let mut p64: Vec<Vec<f64>> = p0.iter().map(|p| to_f64(p)).collect();
            let mut s64: Vec<Vec<Vec<f64>>> = lens.iter().map(|&n| vec![vec![0.0; n]; 3]).collect();
            let hp = d.upload(&rule.hyper(0.01, 1)).unwrap();
            // Parameter 4 is frozen: never in a slot, never changed.
            let live: Vec<usize> = (0..lens.len()).filter(|&i| i != 4).collect();
            for step in 1..=3u64 {
                let lr = 0.01 / step as f64;
                d.write(&hp, &rule.hyper(lr as f32, step)).unwrap();
                let grads: Vec<Vec<f32>> = lens.iter().map(|&n| r.vec(n, -1.0, 1.0)).collect();
                let gbufs: Vec<_> = grads.iter().map(|g| d.upload(g).unwrap()).collect();
                let slots: Vec<optim::Slot> = live
                    .iter()
                    .map(|&i| optim::Slot {
                        param: &params[i],
                        grad: &gbufs[i],
                        state_offset: offsets[i],
                    })
                    .collect();
                optim::step_group(d, &rule, &slots, &state, &hp, None).unwrap();
                for &i in &live {
                    optim::cpu_step(
                        &rule,
                        lr,
                        step,
                        &mut p64[i],
                        &to_f64(&grads[i]),
                        &mut s64[i],
                    );
                }
            }
            for (i, p) in params.iter().enumerate() {
                assert_close(
                    &format!("{variant} {rule:?} parameter {i}"),
                    &d.download::<f32>(p).unwrap(),
                    &p64[i],
                    1e-5,
                    1e-4,
                );
            }
        }
    }
}

/// WebGPU's default limits as the profile on this adapter: each family's automatic choice fits
/// them (GPU tiles for matmuls, the implicit GEMM for convolutions, FlashAttention-2, the
/// two-slot grouped update), and those kernels compute what the CPU does.
#[test]
fn webgpu_default_limits_choose_fitting_variants_that_match_the_cpu() {
    use kiln_device::AdapterProfile;
    use kiln_ops::gemm::{self, GemmCall};
    let web = AdapterProfile::webgpu_default();
    let d = dev().with_policy(KernelPolicy::default().with_profile(web.clone()));
    let call = optim::OptimCall {
        params: 10,
        quads: true,
    };
    let plans = [
        optim::plan(&d, &call).unwrap(),
        gemm::plan(
            &d,
            &GemmCall::matmul(1, 64, 120, 400, false, true, false, false, false),
        )
        .unwrap(),
        conv::plan(
            &d,
            conv::ConvPass::Forward,
            [8, 6, 14, 14],
            [16, 6, 5, 5],
            &Conv2dSpec::default(),
        )
        .unwrap(),
    ];
    let variants: Vec<&str> = plans.iter().map(|p| p.variant).collect();
    assert_eq!(variants[0], "optim_multi2");
    assert!(
        variants[1].starts_with("gemm_") && variants[1].contains('x'),
        "{variants:?}"
    );
    assert_eq!(variants[2], "conv_gemm");
    for p in &plans {
        for k in &p.kernels {
            let f = d.footprint(k.shader, &k.entry, &k.constants).unwrap();
            f.check(&k.label(), &web).unwrap();
        }
    }
    // The convolution's implicit GEMM runs on the same tiles (conv2d_on_the_implicit_gemm).
    assert!(matmul_cases(&d) >= 4);
    grouped_optimizer_cases(&d, "WebGPU defaults");
}

#[test]
fn optimizers_match_pytorch_formulas_over_ten_steps() {
    let d = dev();
    let mut r = Rng::new(8);
    let rules = all_rules();
    // Each rule twice: on a view of 333 of 336 floats, whose last quad overhangs it (the quad
    // kernels, which must leave the 3 floats past it alone), and on a window of 333 floats,
    // which ends inside a quad (the one-element kernels).
    for (rule, window) in rules.iter().flat_map(|r| [(*r, false), (*r, true)]) {
        let n = 333;
        let p0 = r.vec(n, -1.0, 1.0);
        let mut stored = p0.clone();
        stored.extend([7.0, 8.0, 9.0]);
        let whole = d.upload(&stored).unwrap();
        let param = if window {
            whole.window(0, n).unwrap()
        } else {
            whole.view(n, DType::F32).unwrap()
        };
        assert_eq!(param.quad_aligned(), !window);
        let state: Vec<_> = (0..rule.state_count())
            .map(|_| d.upload(&vec![0.0f32; n]).unwrap())
            .collect();
        let hp = d.upload(&rule.hyper(0.01, 1)).unwrap();
        let mut p64 = to_f64(&p0);
        let mut s64 = vec![vec![0.0; n]; 3];
        for step in 1..=10u64 {
            let lr = 0.01 * (1.0 - 0.05 * step as f64); // a changing learning rate
            let g = r.vec(n, -1.0, 1.0);
            d.write(&hp, &rule.hyper(lr as f32, step)).unwrap();
            optim::step(&d, &rule, &param, &d.upload(&g).unwrap(), &state, &hp, None).unwrap();
            optim::cpu_step(&rule, lr, step, &mut p64, &to_f64(&g), &mut s64);
        }
        assert_close(
            &format!("{rule:?}, window {window}"),
            &d.download::<f32>(&param).unwrap(),
            &p64,
            1e-5,
            1e-4,
        );
        assert_eq!(d.download::<f32>(&whole).unwrap()[n..], [7.0, 8.0, 9.0]);
    }
}

#[test]
fn clip_grad_norm_scales_to_the_global_bound() {
    let d = dev();
    let mut r = Rng::new(9);
    let (a, b) = (r.vec(100, -1.0, 1.0), r.vec(37, -2.0, 2.0));
    let norm: f64 = a
        .iter()
        .chain(&b)
        .map(|&v| (v as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    for max_norm in [0.5f32, 1e6] {
        let (ga, gb) = (d.upload(&a).unwrap(), d.upload(&b).unwrap());
        let sq = optim::clip_grad_norm(&d, &[&ga, &gb], max_norm).unwrap();
        assert_close(
            "squared norm",
            &sq.to_f32(&d).unwrap(),
            &[norm * norm],
            1e-3,
            1e-5,
        );
        let scale = (max_norm as f64 / (norm + 1e-6)).min(1.0);
        let want: Vec<f64> = a.iter().map(|&v| v as f64 * scale).collect();
        assert_close(
            "clipped a",
            &d.download::<f32>(&ga).unwrap(),
            &want,
            1e-6,
            1e-5,
        );
        let want: Vec<f64> = b.iter().map(|&v| v as f64 * scale).collect();
        assert_close(
            "clipped b",
            &d.download::<f32>(&gb).unwrap(),
            &want,
            1e-6,
            1e-5,
        );
    }
}

#[test]
fn dropout_mask_matches_philox_and_replays() {
    use kiln_ops::dropout::{self, DropoutRng};
    let d = dev();
    let n = 10_007;
    let x: Vec<f32> = (0..n).map(|i| 1.0 + (i % 13) as f32).collect();
    let xa = arr(&d, &x, &[n]);
    let mut rng = DropoutRng::new(&d, 0x1234_5678_9abc).unwrap();
    let p = 0.3;
    let y = dropout::dropout(&d, &xa, p, rng.buffer())
        .unwrap()
        .to_f32(&d)
        .unwrap();
    let want: Vec<f64> = (0..n)
        .map(|i| {
            if dropout::cpu::keep(0x1234_5678_9abc, 0, i as u32, p) {
                x[i] as f64 / (1.0 - p as f64)
            } else {
                0.0
            }
        })
        .collect();
    assert_close("dropout vs Philox reference", &y, &want, 1e-6, 1e-6);
    let dropped = y.iter().filter(|v| **v == 0.0).count() as f64 / n as f64;
    assert!((dropped - 0.3).abs() < 0.02, "dropped fraction {dropped}");
    // Same state: same mask (the backward pass relies on this); next offset: another mask.
    let again = dropout::dropout(&d, &xa, p, rng.buffer())
        .unwrap()
        .to_f32(&d)
        .unwrap();
    assert_eq!(again, y);
    rng.advance(&d).unwrap();
    let next = dropout::dropout(&d, &xa, p, rng.buffer())
        .unwrap()
        .to_f32(&d)
        .unwrap();
    assert_ne!(next, y);
    assert!(dropout::dropout(&d, &xa, 1.0, rng.buffer()).is_err());
    assert!(dropout::dropout(&d, &xa, -0.1, rng.buffer()).is_err());
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

#[test]
fn int8_matmul_is_exact() {
    use kiln_ops::int8;
    let d = dev();
    let mut r = Rng::new(51);
    for (n, m, k) in [(1, 1, 1), (3, 5, 7), (16, 10, 84), (7, 13, 400)] {
        let (xq, _) = int8::quantize_tensor(&r.vec(n * k, -2.0, 2.0), 2.0);
        let (wq, _) = int8::quantize_rows(&r.vec(m * k, -0.5, 0.5), m, k);
        let (xb, wb) = (
            d.upload(&int8::pack_rows(&xq, k)).unwrap(),
            d.upload(&int8::pack_rows(&wq, k)).unwrap(),
        );
        let acc = d
            .download::<i32>(&int8::matmul_i8(&d, &xb, &wb, n, m, k).unwrap())
            .unwrap();
        assert_eq!(
            acc,
            int8::cpu_matmul_i8(&xq, &wq, n, m, k),
            "exact integer sums for {n}x{m}x{k}"
        );
    }
    let bad = d.upload(&[0u32; 3]).unwrap();
    assert!(int8::matmul_i8(&d, &bad, &bad, 2, 2, 8).is_err());
    // Extremes survive packing: -127 * -127 * K.
    let q = vec![-127i8; 8];
    let b = d.upload(&int8::pack_rows(&q, 8)).unwrap();
    assert_eq!(
        d.download::<i32>(&int8::matmul_i8(&d, &b, &b, 1, 1, 8).unwrap())
            .unwrap(),
        vec![127 * 127 * 8]
    );
}

/// Linear and conv geometries with odd sizes, padding, stride and dilation.
fn quant_layers() -> Vec<(kiln_ops::int8::LayerGeom, usize)> {
    use kiln_ops::int8::LayerGeom;
    let spec = |s, p, dl| Conv2dSpec {
        stride: (s, s),
        padding: (p, p),
        dilation: (dl, dl),
    };
    vec![
        (LayerGeom::linear("t", &[1, 1], &[1, 1]).unwrap(), 1),
        (LayerGeom::linear("t", &[7, 13], &[5, 13]).unwrap(), 13),
        (LayerGeom::linear("t", &[16, 400], &[10, 400]).unwrap(), 400),
        (
            LayerGeom::conv("t", &[2, 1, 8, 8], &[6, 1, 5, 5], spec(1, 2, 1)).unwrap(),
            25,
        ),
        (
            LayerGeom::conv("t", &[3, 3, 7, 9], &[5, 3, 3, 3], spec(2, 1, 2)).unwrap(),
            27,
        ),
    ]
}

#[test]
fn int8_layers_pack_exactly_and_dequantize_within_the_quantization_bound() {
    use kiln_ops::int8;
    let d = dev();
    let mut r = Rng::new(52);
    for (g, k) in quant_layers() {
        let x = r.vec(g.input_shape().iter().product(), -2.0, 2.0);
        let w = r.vec(g.m * k, -0.5, 0.5);
        let bias = r.vec(g.m, -1.0, 1.0);
        let xs = int8::scale_for(2.0);
        let xa = arr(&d, &x, &g.input_shape());
        // The GPU's int8 im2col equals the CPU's: same windows, same rounding (ties to even).
        let packed = int8::pack_input(&d, &xa, &g, xs).unwrap();
        let xq = int8::cpu_pack_input(&x, &g, xs);
        assert_eq!(
            d.download::<u32>(&packed).unwrap(),
            int8::pack_rows(&xq, k),
            "packed input {g:?}"
        );
        let (wq, ws) = int8::quantize_rows(&w, g.m, k);
        let (wb, wsb, bb) = (
            d.upload(&int8::pack_rows(&wq, k)).unwrap(),
            d.upload(&ws).unwrap(),
            d.upload(&bias).unwrap(),
        );
        let y = int8::layer_i8(&d, &xa, xs, &wb, &wsb, &bb, &g).unwrap();
        assert_eq!(y.shape, g.output_shape());
        let y = y.to_f32(&d).unwrap();
        // Exactly the integer sums, scaled: the CPU reference of the same arithmetic.
        let acc = int8::cpu_matmul_i8(&xq, &wq, g.rows(), g.m, k);
        let mut want = vec![0.0; y.len()];
        let mut exact = vec![0.0; y.len()];
        for row in 0..g.rows() {
            for m in 0..g.m {
                let o = g.out_index(row, m);
                want[o] = acc[row * g.m + m] as f64 * xs as f64 * ws[m] as f64 + bias[m] as f64;
                exact[o] = (0..k)
                    .map(|c| g.tap(&x, row, c) as f64 * w[m * k + c] as f64)
                    .sum::<f64>()
                    + bias[m] as f64;
            }
        }
        assert_close("dequantized", &y, &want, 1e-5, 1e-5);
        // Against the f32 layer, each product is off by at most half a step of each operand.
        let wmax = ws.iter().cloned().fold(0.0f32, f32::max) as f64;
        let tol = k as f64 * (2.0 * wmax / 2.0 + 0.5 * xs as f64 / 2.0 + wmax * xs as f64 / 4.0);
        assert_close("vs f32", &y, &exact, tol * 1.01, 0.0);
    }
}

#[test]
fn int8_bad_inputs_are_errors() {
    use kiln_ops::int8::{self, LayerGeom};
    let d = dev();
    assert!(LayerGeom::linear("t", &[4, 3], &[2, 5]).is_err());
    assert!(LayerGeom::conv("t", &[1, 2, 8, 8], &[4, 3, 3, 3], Conv2dSpec::default()).is_err());
    let e = LayerGeom::conv("t", &[1, 3, 2, 2], &[4, 3, 3, 3], Conv2dSpec::default())
        .err()
        .unwrap();
    assert!(matches!(e, OpError::Shape { .. }), "{e}");
    let g = LayerGeom::linear("t", &[2, 8], &[3, 8]).unwrap();
    let x = arr(&d, &[0.0; 18], &[2, 9]);
    assert!(
        int8::pack_input(&d, &x, &g, 0.1).is_err(),
        "wrong input shape"
    );
    let x = arr(&d, &[0.0; 16], &[2, 8]);
    assert!(int8::pack_input(&d, &x, &g, 0.0).is_err(), "zero scale");
    assert!(int8::pack_input(&d, &x, &g, f32::NAN).is_err(), "NaN scale");
}

#[test]
fn f16_weight_layers_match_the_cpu() {
    use kiln_ops::half;
    let d = dev();
    let mut r = Rng::new(53);
    assert!(
        half::supported(&d),
        "the adapter lacks SHADER_F16 (lavapipe and the H100 have it)"
    );
    for (g, k) in quant_layers() {
        let x = r.vec(g.input_shape().iter().product(), -2.0, 2.0);
        let w = half::to_f16(&r.vec(g.m * k, -0.5, 0.5));
        let bias = r.vec(g.m, -1.0, 1.0);
        let y = half::layer_f16w(
            &d,
            &arr(&d, &x, &g.input_shape()),
            &d.upload(&w).unwrap(),
            &d.upload(&bias).unwrap(),
            &g,
        )
        .unwrap();
        assert_eq!(y.shape, g.output_shape());
        assert_close(
            "f16 weights",
            &y.to_f32(&d).unwrap(),
            &half::cpu_layer_f16w(&x, &w, &bias, &g),
            1e-4,
            1e-4,
        );
        let short = d.upload(&w[1..]).unwrap();
        assert!(half::layer_f16w(
            &d,
            &arr(&d, &x, &g.input_shape()),
            &short,
            &d.upload(&bias).unwrap(),
            &g
        )
        .is_err());
    }
}

#[test]
fn lookup_from_blocks_with_padding_matches_reference() {
    use kiln_ops::lookup;
    let d = dev();
    let mut r = Rng::new(11);
    let (vocab, dim) = (23, 6);
    let table = r.vec(vocab * dim, -1.0, 1.0);
    // Repeats, the padding id, and an id out of range (a zero row, no gradient).
    let ids: Vec<i32> = vec![3, 0, 22, 3, 7, 0, 15, 3, 22, 40, 11, 7, 7, 1];
    let n = ids.len();
    let ida = Array::from_i32(&d, &ids, &[2, 7]).unwrap();
    let dy = r.vec(n * dim, -1.0, 1.0);
    let want_y = lookup::cpu::lookup(&to_f64(&table), dim, &ids);
    let want_dw = lookup::cpu::lookup_backward(vocab, dim, &ids, &to_f64(&dy), Some(0));
    // One block, and the same table in blocks of 10, 10 and 3 rows.
    for rows in [vec![vocab], vec![10, 10, 3]] {
        let mut blocks = Vec::new();
        let mut at = 0;
        for &n_rows in &rows {
            blocks.push(arr(
                &d,
                &table[at * dim..(at + n_rows) * dim],
                &[n_rows, dim],
            ));
            at += n_rows;
        }
        let refs: Vec<&Array> = blocks.iter().collect();
        let y = lookup::lookup(&d, &refs, &ida).unwrap();
        assert_eq!(y.shape, [2, 7, dim]);
        assert_close("lookup", &y.to_f32(&d).unwrap(), &want_y, 0.0, 0.0);
        let shapes: Vec<&[usize]> = blocks.iter().map(|b| &b.shape[..]).collect();
        let needs = vec![true; rows.len()];
        let grads = lookup::lookup_backward(
            &d,
            &shapes,
            &ida,
            &arr(&d, &dy, &[2, 7, dim]),
            Some(0),
            &needs,
        )
        .unwrap();
        let mut got = Vec::new();
        for g in grads {
            got.extend(g.unwrap().to_f32(&d).unwrap());
        }
        assert_close(
            &format!("lookup backward {rows:?}"),
            &got,
            &want_dw,
            1e-6,
            1e-6,
        );
    }
    let bad = arr(&d, &table[..4 * 5], &[4, 5]);
    let t = arr(&d, &table[..4 * dim], &[4, dim]);
    let e = lookup::lookup(&d, &[&t, &bad], &ida)
        .unwrap_err()
        .to_string();
    assert!(e.contains("lookup"), "{e}");
    let e = lookup::check_ids_in_range(&[1, 7], 7)
        .unwrap_err()
        .to_string();
    assert!(e.contains("id 7 at position 1 is outside [0, 7)"), "{e}");
}

#[test]
fn decode_attention_matches_reference_and_full_attention() {
    use kiln_ops::decode::{self, KvCache};
    let d = dev();
    let mut r = Rng::new(12);
    let (b, h, hd, t) = (2, 3, 8, 9);
    let e = h * hd;
    // Fused q|k|v rows [B, T, 3E], as GPT-2's c_attn gives them.
    let qkv = r.vec(b * t * 3 * e, -1.0, 1.0);
    let mut cache = KvCache::new(&d, b, h, 16, hd).unwrap();
    // The first t - 1 positions at once (a prompt), then the last one (a generation step).
    let head: Vec<f32> = (0..b)
        .flat_map(|bi| qkv[bi * t * 3 * e..(bi * t + t - 1) * 3 * e].to_vec())
        .collect();
    decode::kv_append(
        &d,
        &mut cache,
        &arr(&d, &head, &[b, t - 1, 3 * e]),
        e,
        2 * e,
    )
    .unwrap();
    let last: Vec<f32> = (0..b)
        .flat_map(|bi| qkv[(bi * t + t - 1) * 3 * e..(bi * t + t) * 3 * e].to_vec())
        .collect();
    let last = arr(&d, &last, &[b, 1, 3 * e]);
    decode::kv_append(&d, &mut cache, &last, e, 2 * e).unwrap();
    assert_eq!(cache.len, t);
    let out = decode::decode_attention(&d, &last, 0, &cache, None).unwrap();
    assert_eq!(out.shape, [b, e]);
    // Reference: the last row of causal attention over all t positions.
    let col = |bi: usize, ti: usize, c0: usize, hi: usize, k: usize| {
        qkv[(bi * t + ti) * 3 * e + c0 + hi * hd + k] as f64
    };
    let mut q = vec![0.0; b * e];
    let (mut kc, mut vc) = (vec![0.0; b * h * t * hd], vec![0.0; b * h * t * hd]);
    for bi in 0..b {
        for hi in 0..h {
            for k in 0..hd {
                q[bi * e + hi * hd + k] = col(bi, t - 1, 0, hi, k);
                for ti in 0..t {
                    kc[((bi * h + hi) * t + ti) * hd + k] = col(bi, ti, e, hi, k);
                    vc[((bi * h + hi) * t + ti) * hd + k] = col(bi, ti, 2 * e, hi, k);
                }
            }
        }
    }
    let want = decode::cpu::decode_attention(&q, &kc, &vc, b, h, t, hd, 1.0 / (hd as f64).sqrt());
    assert_close(
        "decode_attention",
        &out.to_f32(&d).unwrap(),
        &want,
        1e-5,
        1e-5,
    );
    // A cache that is full refuses more positions.
    let mut small = KvCache::new(&d, b, h, 2, hd).unwrap();
    let three = arr(&d, &qkv[..b * 3 * 3 * e], &[b, 3, 3 * e]);
    assert!(decode::kv_append(&d, &mut small, &three, e, 2 * e).is_err());
    assert!(decode::decode_attention(&d, &last, 0, &small, None).is_err());
}
