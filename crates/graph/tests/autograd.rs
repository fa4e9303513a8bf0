//! Autograd on composite graphs against central finite differences of an f64 CPU forward.

use kiln_graph::{autocast_f16, no_grad, Device, Tensor};
use kiln_ops::conv::{self, Conv2dSpec};
use kiln_ops::numeric::{assert_close, finite_diff, to_f64};
use kiln_ops::pool::{self, Pool2dSpec};
use kiln_ops::random::Rng;
use kiln_ops::softmax;

fn dev() -> Device {
    Device::shared().expect("a GPU or software Vulkan adapter (run scripts/setup.sh)")
}

fn param(d: &Device, v: &[f32], s: &[usize]) -> Tensor {
    Tensor::from_f32(d, v, s)
        .unwrap()
        .requires_grad_(true)
        .unwrap()
}

/// y[r, o] = sum_i x[r, i] w[o, i] + b[o]
fn cpu_linear(x: &[f64], w: &[f64], b: &[f64], rows: usize, inp: usize, out: usize) -> Vec<f64> {
    (0..rows * out)
        .map(|ro| {
            let (r, o) = (ro / out, ro % out);
            b[o] + (0..inp)
                .map(|i| x[r * inp + i] * w[o * inp + i])
                .sum::<f64>()
        })
        .collect()
}

/// Splits a flat parameter vector into pieces of the given sizes.
fn split<'a>(v: &'a [f64], sizes: &[usize]) -> Vec<&'a [f64]> {
    let mut at = 0;
    sizes
        .iter()
        .map(|&s| {
            at += s;
            &v[at - s..at]
        })
        .collect()
}

#[test]
fn two_layer_mlp() {
    let d = dev();
    let mut r = Rng::new(10);
    let (n, i, h, o) = (4, 5, 6, 3);
    let sizes = [h * i, h, o * h, o];
    let vals: Vec<Vec<f32>> = sizes.iter().map(|&s| r.vec(s, -1.0, 1.0)).collect();
    let x = r.vec(n * i, -1.0, 1.0);
    let labels = vec![0, 2, 1, 2];
    let ps: Vec<Tensor> = vals
        .iter()
        .zip([vec![h, i], vec![h], vec![o, h], vec![o]])
        .map(|(v, s)| param(&d, v, &s))
        .collect();
    let xt = Tensor::from_f32(&d, &x, &[n, i]).unwrap();
    let y = Tensor::from_i32(&d, &labels, &[n]).unwrap();
    let loss = xt
        .linear(&ps[0], Some(&ps[1]))
        .unwrap()
        .tanh()
        .unwrap()
        .linear(&ps[2], Some(&ps[3]))
        .unwrap()
        .cross_entropy(&y, None)
        .unwrap();
    loss.backward().unwrap();
    let x64 = to_f64(&x);
    let f = |flat: &[f64]| {
        let p = split(flat, &sizes);
        let hdn: Vec<f64> = cpu_linear(&x64, p[0], p[1], n, i, h)
            .iter()
            .map(|v| v.tanh())
            .collect();
        softmax::cpu::cross_entropy(&cpu_linear(&hdn, p[2], p[3], n, h, o), o, &labels, None)
    };
    let flat: Vec<f64> = vals.iter().flat_map(|v| to_f64(v)).collect();
    assert_close("loss", &[loss.item().unwrap()], &[f(&flat)], 1e-5, 1e-5);
    let fd = finite_diff(f, &flat, 1e-4);
    let fd = split(&fd, &sizes);
    for (k, p) in ps.iter().enumerate() {
        let g = p.grad().unwrap().to_f32(&d).unwrap();
        assert_close(&format!("mlp param {k}"), &g, fd[k], 1e-4, 1e-3);
    }
}

/// The MLP above under `autocast_f16`: the loss matches a CPU model that rounds every matmul
/// operand to f16 (and sums in f64), and the f32 parameters get f32 gradients within f16's
/// precision of the exact ones.
#[test]
fn mixed_precision_mlp() {
    let d = dev();
    let mut r = Rng::new(11);
    let (n, i, h, o) = (4, 5, 6, 3);
    let sizes = [h * i, h, o * h, o];
    let vals: Vec<Vec<f32>> = sizes.iter().map(|&s| r.vec(s, -1.0, 1.0)).collect();
    let x = r.vec(n * i, -1.0, 1.0);
    let labels = vec![1, 0, 2, 2];
    let ps: Vec<Tensor> = vals
        .iter()
        .zip([vec![h, i], vec![h], vec![o, h], vec![o]])
        .map(|(v, s)| param(&d, v, &s))
        .collect();
    let xt = Tensor::from_f32(&d, &x, &[n, i]).unwrap();
    let y = Tensor::from_i32(&d, &labels, &[n]).unwrap();
    let loss = autocast_f16(|| {
        let hdn = xt.linear(&ps[0], Some(&ps[1]))?.tanh()?;
        assert_eq!(hdn.dtype(), kiln_graph::DType::F32);
        hdn.linear(&ps[2], Some(&ps[3]))?.cross_entropy(&y, None)
    })
    .unwrap();
    assert!(!kiln_graph::is_autocast_f16());
    loss.backward().unwrap();
    let r16 =
        |v: &[f64]| -> Vec<f64> { v.iter().map(|x| half::f16::from_f64(*x).to_f64()).collect() };
    let x64 = to_f64(&x);
    let model = |flat: &[f64], round: bool| {
        let q = |v: &[f64]| if round { r16(v) } else { v.to_vec() };
        let p = split(flat, &sizes);
        let hdn: Vec<f64> = cpu_linear(&q(&x64), &q(p[0]), p[1], n, i, h)
            .iter()
            .map(|v| v.tanh())
            .collect();
        let logits = cpu_linear(&q(&hdn), &q(p[2]), p[3], n, h, o);
        softmax::cpu::cross_entropy(&logits, o, &labels, None)
    };
    let flat: Vec<f64> = vals.iter().flat_map(|v| to_f64(v)).collect();
    let (rounded, exact) = (model(&flat, true), model(&flat, false));
    let got = loss.item().unwrap();
    assert_close("f16 loss", &[got], &[rounded], 2e-6, 2e-6);
    // The rounding is visible: the f32 model's loss is further away than the tolerance above.
    assert!((got as f64 - exact).abs() > 1e-5, "{got} vs f32 {exact}");
    let fd = finite_diff(|v| model(v, false), &flat, 1e-4);
    let fd = split(&fd, &sizes);
    for (k, p) in ps.iter().enumerate() {
        let g = p.grad().unwrap();
        assert_eq!(g.dtype(), kiln_graph::DType::F32);
        assert_close(
            &format!("f16 mlp param {k}"),
            &g.to_f32(&d).unwrap(),
            fd[k],
            5e-3,
            2e-2,
        );
    }
}

#[test]
fn small_conv_net() {
    let d = dev();
    let mut r = Rng::new(11);
    let (n, ci, hw, co, k) = (2, 2, 6, 3, 3);
    let spec = Conv2dSpec {
        padding: (1, 1),
        ..Default::default()
    };
    let pool = Pool2dSpec::square(2);
    let feat = co * 3 * 3;
    let sizes = [co * ci * k * k, co, 2 * feat, 2];
    let vals: Vec<Vec<f32>> = sizes.iter().map(|&s| r.vec(s, -0.5, 0.5)).collect();
    let x = r.vec(n * ci * hw * hw, -1.0, 1.0);
    let target = r.vec(n * 2, -1.0, 1.0);
    let ps: Vec<Tensor> = vals
        .iter()
        .zip([vec![co, ci, k, k], vec![co], vec![2, feat], vec![2]])
        .map(|(v, s)| param(&d, v, &s))
        .collect();
    let xt = Tensor::from_f32(&d, &x, &[n, ci, hw, hw]).unwrap();
    let tt = Tensor::from_f32(&d, &target, &[n, 2]).unwrap();
    let out = xt
        .conv2d(&ps[0], Some(&ps[1]), spec)
        .unwrap()
        .relu()
        .unwrap()
        .max_pool2d(pool)
        .unwrap()
        .flatten()
        .unwrap()
        .linear(&ps[2], Some(&ps[3]))
        .unwrap();
    let loss = out.mse_loss(&tt).unwrap();
    loss.backward().unwrap();
    let x64 = to_f64(&x);
    let f = |flat: &[f64]| {
        let p = split(flat, &sizes);
        let (c, cs) = conv::cpu::conv2d(
            &x64,
            [n, ci, hw, hw],
            p[0],
            [co, ci, k, k],
            Some(p[1]),
            &spec,
        );
        let c: Vec<f64> = c.iter().map(|v| v.max(0.0)).collect();
        let pooled = pool::cpu::pool2d(&c, cs, &pool, false);
        let y = cpu_linear(&pooled, p[2], p[3], n, feat, 2);
        y.iter()
            .zip(&target)
            .map(|(a, b)| (a - *b as f64).powi(2))
            .sum::<f64>()
            / y.len() as f64
    };
    let flat: Vec<f64> = vals.iter().flat_map(|v| to_f64(v)).collect();
    assert_close("loss", &[loss.item().unwrap()], &[f(&flat)], 1e-5, 1e-4);
    let fd = finite_diff(f, &flat, 1e-4);
    let fd = split(&fd, &sizes);
    for (k, p) in ps.iter().enumerate() {
        let g = p.grad().unwrap().to_f32(&d).unwrap();
        assert_close(&format!("conv net param {k}"), &g, fd[k], 1e-4, 2e-3);
    }
}

#[test]
fn attention_block_from_matmul_and_softmax() {
    let d = dev();
    let mut r = Rng::new(12);
    let (b, s, e) = (2, 3, 4);
    let sizes = [b * s * e; 3];
    let vals: Vec<Vec<f32>> = sizes.iter().map(|&n| r.vec(n, -1.0, 1.0)).collect();
    let w = r.vec(b * s * e, -1.0, 1.0);
    let [q, k, v]: [Tensor; 3] = std::array::from_fn(|i| param(&d, &vals[i], &[b, s, e]));
    let wt = Tensor::from_f32(&d, &w, &[b, s, e]).unwrap();
    let scale = 1.0 / (e as f32).sqrt();
    let att = q
        .matmul_with(&k, kiln_ops::matmul::Matmul::new().transpose_b(true), None)
        .unwrap()
        .affine(scale, 0.0)
        .unwrap()
        .softmax()
        .unwrap();
    let out = att.matmul(&v).unwrap();
    let loss = out.mul(&wt).unwrap().sum_all().unwrap();
    loss.backward().unwrap();
    let f = |flat: &[f64]| {
        let p = split(flat, &sizes);
        let mut total = 0.0;
        for z in 0..b {
            let o = z * s * e;
            let mut scores = vec![0.0; s * s];
            for i in 0..s {
                for j in 0..s {
                    scores[i * s + j] = (0..e)
                        .map(|t| p[0][o + i * e + t] * p[1][o + j * e + t])
                        .sum::<f64>()
                        * scale as f64;
                }
            }
            let a = softmax::cpu::softmax(&scores, s, false);
            for i in 0..s {
                for t in 0..e {
                    let val: f64 = (0..s).map(|j| a[i * s + j] * p[2][o + j * e + t]).sum();
                    total += val * w[o + i * e + t] as f64;
                }
            }
        }
        total
    };
    let flat: Vec<f64> = vals.iter().flat_map(|v| to_f64(v)).collect();
    let fd = finite_diff(f, &flat, 1e-4);
    let fd = split(&fd, &sizes);
    for (i, t) in [q, k, v].iter().enumerate() {
        assert_close(
            &format!("attention input {i}"),
            &t.grad().unwrap().to_f32(&d).unwrap(),
            fd[i],
            1e-4,
            1e-3,
        );
    }
}

#[test]
fn tensor_used_twice_and_broadcasting() {
    let d = dev();
    // y = sum(x * x + x): dy/dx = 2x + 1 (x feeds three uses).
    let xv = [0.5f32, -1.0, 2.0];
    let x = param(&d, &xv, &[3]);
    x.mul(&x)
        .unwrap()
        .add(&x)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let want: Vec<f64> = xv.iter().map(|&v| 2.0 * v as f64 + 1.0).collect();
    assert_close(
        "x*x + x",
        &x.grad().unwrap().to_f32(&d).unwrap(),
        &want,
        1e-6,
        1e-6,
    );
    // A second backward accumulates, as in PyTorch.
    x.mul(&x)
        .unwrap()
        .add(&x)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let twice: Vec<f64> = want.iter().map(|v| 2.0 * v).collect();
    assert_close(
        "accumulated",
        &x.grad().unwrap().to_f32(&d).unwrap(),
        &twice,
        1e-6,
        1e-6,
    );

    // z = sum((a[3,4] + b[4]) * s[3,1] / c[1]): broadcast gradients sum over the broadcast axes.
    let mut r = Rng::new(13);
    let (av, bv, sv) = (
        r.vec(12, -1.0, 1.0),
        r.vec(4, -1.0, 1.0),
        r.vec(3, 0.5, 1.5),
    );
    let cv = [1.7f32];
    let (a, b, s, c) = (
        param(&d, &av, &[3, 4]),
        param(&d, &bv, &[4]),
        param(&d, &sv, &[3, 1]),
        param(&d, &cv, &[1]),
    );
    a.add(&b)
        .unwrap()
        .mul(&s)
        .unwrap()
        .div(&c)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let f = |flat: &[f64]| {
        let p = split(flat, &[12, 4, 3, 1]);
        (0..12)
            .map(|i| (p[0][i] + p[1][i % 4]) * p[2][i / 4] / p[3][0])
            .sum::<f64>()
    };
    let flat: Vec<f64> = [&av[..], &bv, &sv, &cv]
        .iter()
        .flat_map(|v| to_f64(v))
        .collect();
    let fd = finite_diff(f, &flat, 1e-4);
    let fd = split(&fd, &[12, 4, 3, 1]);
    for (i, t) in [a, b, s, c].iter().enumerate() {
        assert_close(
            &format!("broadcast input {i}"),
            &t.grad().unwrap().to_f32(&d).unwrap(),
            fd[i],
            1e-4,
            1e-4,
        );
    }
}

#[test]
fn slices_of_one_tensor_add_their_gradients() {
    let d = dev();
    let mut r = Rng::new(17);
    let (xv, av, cv) = (
        r.vec(12, -1.0, 1.0),
        r.vec(8, -1.0, 1.0),
        r.vec(8, -1.0, 1.0),
    );
    let (x, a, c) = (
        param(&d, &xv, &[2, 6]),
        param(&d, &av, &[2, 4]),
        param(&d, &cv, &[2, 4]),
    );
    // h = tanh(x) feeds overlapping slices and a whole-tensor use; x itself is sliced too. u = a
    // + c hands one gradient buffer to both a and c, and a is then sliced: adding a slice's
    // gradient into that shared buffer in place would corrupt c's.
    let h = x.tanh().unwrap();
    let s0 = h.slice(1, 0, 2).unwrap();
    let s1 = h.slice(1, 2, 3).unwrap();
    let s2 = h.slice(1, 1, 4).unwrap();
    let u = a.add(&c).unwrap();
    let terms = [
        s0.mul(&s0).unwrap().sum_all().unwrap(),
        s1.affine(3.0, 0.5).unwrap().sum_all().unwrap(),
        s2.mul(&s1.slice(1, 0, 1).unwrap())
            .unwrap()
            .sum_all()
            .unwrap(),
        h.mul(&x).unwrap().sum_all().unwrap(),
        x.slice(0, 1, 1)
            .unwrap()
            .square()
            .unwrap()
            .sum_all()
            .unwrap(),
        u.mul(&u).unwrap().sum_all().unwrap(),
        a.slice(1, 1, 2)
            .unwrap()
            .affine(2.0, 0.0)
            .unwrap()
            .sum_all()
            .unwrap(),
        a.slice(0, 0, 1)
            .unwrap()
            .square()
            .unwrap()
            .sum_all()
            .unwrap(),
    ];
    let mut total = terms[0].clone();
    for t in &terms[1..] {
        total = total.add(t).unwrap();
    }
    total.backward().unwrap();
    let f = |flat: &[f64]| {
        let p = split(flat, &[12, 8, 8]);
        let (x, a, c) = (p[0], p[1], p[2]);
        let h: Vec<f64> = x.iter().map(|v| v.tanh()).collect();
        let mut z = 0.0;
        for row in 0..2 {
            let hr = &h[row * 6..row * 6 + 6];
            z += hr[0] * hr[0] + hr[1] * hr[1];
            z += (2..5).map(|j| 3.0 * hr[j] + 0.5).sum::<f64>();
            // s2 [.., 1..5] times s1's first column (h[.., 2]), broadcast along the row.
            z += (1..5).map(|j| hr[j] * hr[2]).sum::<f64>();
            z += (0..6).map(|j| hr[j] * x[row * 6 + j]).sum::<f64>();
            z += (0..4)
                .map(|j| (a[row * 4 + j] + c[row * 4 + j]).powi(2))
                .sum::<f64>();
            z += (1..3).map(|j| 2.0 * a[row * 4 + j]).sum::<f64>();
        }
        z += x[6..12].iter().map(|v| v * v).sum::<f64>();
        z += a[0..4].iter().map(|v| v * v).sum::<f64>();
        z
    };
    let flat: Vec<f64> = [&xv[..], &av, &cv].iter().flat_map(|v| to_f64(v)).collect();
    let fd = finite_diff(f, &flat, 1e-4);
    let fd = split(&fd, &[12, 8, 8]);
    for (name, t, want) in [("x", &x, fd[0]), ("a", &a, fd[1]), ("c", &c, fd[2])] {
        assert_close(
            &format!("gradient of {name}"),
            &t.grad().unwrap().to_f32(&d).unwrap(),
            want,
            1e-4,
            1e-4,
        );
    }
}

#[test]
fn no_grad_and_detach_record_nothing() {
    let d = dev();
    let x = param(&d, &[1.0, 2.0], &[2]);
    let y = no_grad(|| x.mul(&x).unwrap());
    assert!(!y.requires_grad());
    assert!(x.mul(&x).unwrap().requires_grad());
    assert!(!x.detach().requires_grad());
    // backward from a non-scalar is an error, not a guess.
    let e = x.mul(&x).unwrap().backward().unwrap_err();
    assert!(e.to_string().contains("expected a scalar"), "{e}");
}

#[test]
fn layer_norm_and_embedding_in_a_graph() {
    let d = dev();
    let mut r = Rng::new(14);
    let (vocab, dim) = (6, 4);
    let table = r.vec(vocab * dim, -1.0, 1.0);
    let (g, b) = (r.vec(dim, 0.5, 1.5), r.vec(dim, -0.5, 0.5));
    let ids = [2usize, 5, 2];
    let w = r.vec(ids.len() * dim, -1.0, 1.0);
    let (tt, gt, bt) = (
        param(&d, &table, &[vocab, dim]),
        param(&d, &g, &[dim]),
        param(&d, &b, &[dim]),
    );
    let ids32: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
    let ia = Tensor::from_i32(&d, &ids32, &[3]).unwrap();
    let wt = Tensor::from_f32(&d, &w, &[3, dim]).unwrap();
    let loss = tt
        .embedding(&ia)
        .unwrap()
        .layer_norm(&gt, &bt, 1e-5)
        .unwrap()
        .mul(&wt)
        .unwrap()
        .sum_all()
        .unwrap();
    loss.backward().unwrap();
    let sizes = [vocab * dim, dim, dim];
    let f = |flat: &[f64]| {
        let p = split(flat, &sizes);
        let rows: Vec<f64> = ids
            .iter()
            .flat_map(|&i| p[0][i * dim..(i + 1) * dim].to_vec())
            .collect();
        let y = kiln_ops::norm::cpu::layer_norm(&rows, dim, p[1], p[2], 1e-5);
        y.iter().zip(&w).map(|(a, b)| a * *b as f64).sum::<f64>()
    };
    let flat: Vec<f64> = [&table[..], &g, &b]
        .iter()
        .flat_map(|v| to_f64(v))
        .collect();
    let fd = finite_diff(f, &flat, 1e-4);
    let fd = split(&fd, &sizes);
    for (i, t) in [tt, gt, bt].iter().enumerate() {
        assert_close(
            &format!("embedding+layer_norm input {i}"),
            &t.grad().unwrap().to_f32(&d).unwrap(),
            fd[i],
            2e-3,
            2e-3,
        );
    }
}

#[test]
fn a_recurrence_takes_its_weight_gradient_in_one_product() {
    let d = dev();
    let (b, t, h) = (2, 3, 4);
    let mut r = Rng::new(12);
    let (xv, wv, hv, mv) = (
        r.vec(b * t * h, -1.0, 1.0),
        r.vec(h * h, -0.8, 0.8),
        r.vec(b * h, -1.0, 1.0),
        r.vec(b * t * h, -1.0, 1.0),
    );
    let (xw, w, h0) = (
        param(&d, &xv, &[b, t, h]),
        param(&d, &wv, &[h, h]),
        param(&d, &hv, &[b, h]),
    );
    // h_s = tanh(xw[:, s] + h_{s-1} w^T) from a nonzero h_0; loss = sum(seq * m).
    let (steps, rec) = xw.recurrence(&w).unwrap();
    let mut hs = h0.clone();
    let mut outs = Vec::new();
    for s in 0..t {
        let xg = steps.slice(1, s, 1).unwrap().reshape(&[b, h]).unwrap();
        hs = xg.add(&rec.step(&hs).unwrap()).unwrap().tanh().unwrap();
        outs.push(hs.reshape(&[b, 1, h]).unwrap());
    }
    let seq = Tensor::concat(&outs.iter().collect::<Vec<_>>(), 1).unwrap();
    let e = rec.finish(&h0, &outs[0]).unwrap_err();
    // A sequence of the wrong length.
    assert!(e.to_string().contains("got [2, 4] and [2, 1, 4]"), "{e}");
    let loss = seq
        .mul(&Tensor::from_f32(&d, &mv, &[b, t, h]).unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
    let e = loss.backward().unwrap_err();
    // Backward before finish is an error, not a wrong gradient.
    assert!(
        e.to_string().contains("backward before Recurrence::finish"),
        "{e}"
    );
    // What the failed pass gave to leaves before it stopped goes.
    for p in [&xw, &w, &h0] {
        p.zero_grad();
    }
    rec.finish(&h0, &seq).unwrap();
    loss.backward().unwrap();
    let f = |flat: &[f64]| {
        let p = split(flat, &[b * t * h, h * h, b * h]);
        let (x, w, h0) = (p[0], p[1], p[2]);
        let mut z = 0.0;
        for bi in 0..b {
            let mut hp = h0[bi * h..(bi + 1) * h].to_vec();
            for s in 0..t {
                let at = (bi * t + s) * h;
                let hn: Vec<f64> = (0..h)
                    .map(|o| {
                        let rec: f64 = (0..h).map(|k| w[o * h + k] * hp[k]).sum();
                        (x[at + o] + rec).tanh()
                    })
                    .collect();
                z += (0..h).map(|o| hn[o] * mv[at + o] as f64).sum::<f64>();
                hp = hn;
            }
        }
        z
    };
    let flat: Vec<f64> = [&xv[..], &wv, &hv].iter().flat_map(|v| to_f64(v)).collect();
    let fd = finite_diff(f, &flat, 1e-5);
    let fd = split(&fd, &[b * t * h, h * h, b * h]);
    for (name, p, want) in [("xw", &xw, fd[0]), ("w", &w, fd[1]), ("h0", &h0, fd[2])] {
        let got = p.grad().unwrap().to_f32(&d).unwrap();
        assert_close(&format!("recurrence d{name}"), &got, want, 1e-4, 1e-3);
    }
}

#[test]
fn backward_with_reports_each_leaf_once_when_its_gradient_is_final() {
    let d = dev();
    let mut r = Rng::new(3);
    // Three layers with biases; the first layer's output also skips the second (w1 and b1 get
    // gradient from two paths).
    let shapes = [[4, 3], [4, 4], [2, 4]];
    let ws: Vec<Tensor> = shapes
        .iter()
        .map(|s| param(&d, &r.vec(s[0] * s[1], -1.0, 1.0), s))
        .collect();
    let bs: Vec<Tensor> = shapes
        .iter()
        .map(|s| param(&d, &r.vec(s[0], -1.0, 1.0), &[s[0]]))
        .collect();
    let x = Tensor::from_f32(&d, &r.vec(6, -1.0, 1.0), &[2, 3]).unwrap();
    let h1 = x.linear(&ws[0], Some(&bs[0])).unwrap().tanh().unwrap();
    let h2 = h1.linear(&ws[1], Some(&bs[1])).unwrap().add(&h1).unwrap();
    let loss = h2.linear(&ws[2], Some(&bs[2])).unwrap().sum_all().unwrap();
    let layer = |t: &Tensor| (0..3).find(|&l| t.same(&ws[l]) || t.same(&bs[l])).unwrap();
    let mut seen: Vec<(usize, Tensor, Vec<f32>)> = Vec::new();
    loss.backward_with(&mut |leaf| {
        let l = layer(leaf);
        // Final as soon as reported, and reported as soon as final: no earlier layer's gradient
        // exists yet when a later layer's is reported.
        for k in 0..l {
            assert!(ws[k].grad().is_none() && bs[k].grad().is_none());
        }
        seen.push((l, leaf.clone(), leaf.grad().unwrap().to_f32(&d)?));
        Ok(())
    })
    .unwrap();
    let order: Vec<usize> = seen.iter().map(|s| s.0).collect();
    assert_eq!(order, [2, 2, 1, 1, 0, 0]);
    for (_, leaf, g) in &seen {
        assert_eq!(g, &leaf.grad().unwrap().to_f32(&d).unwrap());
    }
}

/// Two residual blocks, y = x + tanh(LN(x) W + b), each checkpointed or not: equal losses and
/// gradients bit for bit (the recomputation runs the same kernels on the same values), eagerly
/// and inside a recorded step; a wrong function is a clear error; mixed precision is recomputed
/// under the mode the forward pass ran in.
#[test]
fn checkpointed_blocks_equal_plain_ones() {
    use kiln_graph::{checkpoint, StepPlan};
    let d = dev();
    let mut r = Rng::new(31);
    let (n, c) = (6, 8);
    let x0 = r.vec(n * c, -1.0, 1.0);
    let blocks: Vec<[Tensor; 4]> = (0..2)
        .map(|_| {
            [
                param(&d, &r.vec(c, 0.5, 1.5), &[c]),
                param(&d, &r.vec(c, -0.1, 0.1), &[c]),
                param(&d, &r.vec(c * c, -0.5, 0.5), &[c, c]),
                param(&d, &r.vec(c, -0.1, 0.1), &[c]),
            ]
        })
        .collect();
    fn block(t: &[Tensor]) -> kiln_graph::Result<Tensor> {
        let h = t[0].layer_norm(&t[1], &t[2], 1e-5)?;
        let y = h.matmul(&t[3])?.add(&t[4])?.tanh()?;
        t[0].add(&y)
    }
    let run = |ckpt: bool, f16: bool| -> (f32, Vec<Vec<f32>>) {
        let x = param(&d, &x0, &[n, c]);
        let go = || -> kiln_graph::Result<Tensor> {
            let mut h = x.clone();
            for b in &blocks {
                let ins = [&h, &b[0], &b[1], &b[2], &b[3]];
                h = if ckpt {
                    checkpoint(&ins, block)?
                } else {
                    block(&ins.map(Tensor::clone))?
                };
            }
            h.mul(&h)?.sum_all()
        };
        let loss = if f16 { autocast_f16(go) } else { go() }.unwrap();
        loss.backward().unwrap();
        let mut grads = vec![x.grad().unwrap().to_f32(&d).unwrap()];
        for b in &blocks {
            for p in b {
                grads.push(p.grad().unwrap().to_f32(&d).unwrap());
                p.zero_grad();
            }
        }
        (loss.item().unwrap(), grads)
    };
    for f16 in [false, true] {
        let (l0, g0) = run(false, f16);
        let (l1, g1) = run(true, f16);
        assert_eq!(l0.to_bits(), l1.to_bits(), "loss (f16 {f16})");
        for (k, (a, b)) in g0.iter().zip(&g1).enumerate() {
            assert!(
                a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits()),
                "gradient {k} (f16 {f16}): {a:?} vs {b:?}"
            );
        }
    }
    // Inside a recorded step, replayed: the same gradients again.
    let (_, want) = run(false, false);
    let x = Tensor::from_f32(&d, &x0, &[n, c]).unwrap();
    let b = &blocks[0];
    let (plan, _) = StepPlan::record(&d, || {
        let ins = [&x, &b[0], &b[1], &b[2], &b[3]];
        let h = checkpoint(&ins, block)?;
        let ins = [
            &h,
            &blocks[1][0],
            &blocks[1][1],
            &blocks[1][2],
            &blocks[1][3],
        ];
        let h = checkpoint(&ins, block)?;
        let loss = h.mul(&h)?.sum_all()?;
        loss.backward()?;
        Ok::<_, kiln_ops::OpError>(loss)
    })
    .unwrap();
    d.flush().unwrap();
    let first = b[2].grad().unwrap().to_f32(&d).unwrap();
    plan.replay().unwrap();
    let again = b[2].grad().unwrap().to_f32(&d).unwrap();
    assert_eq!(first, again);
    assert_eq!(
        first, want[3],
        "recorded checkpointed step: first block's weight gradient"
    );
    for p in blocks.iter().flatten() {
        p.zero_grad();
    }
    // A function whose recomputation differs from its forward pass is named.
    let flip = std::sync::atomic::AtomicBool::new(false);
    let x = param(&d, &x0, &[n, c]);
    let y = checkpoint(&[&x], move |t| {
        if flip.swap(true, std::sync::atomic::Ordering::Relaxed) {
            t[0].sum_all()
        } else {
            t[0].tanh()
        }
    })
    .unwrap();
    let msg = y.sum_all().unwrap().backward().unwrap_err().to_string();
    assert!(msg.contains("recomputed output"), "{msg}");
}
