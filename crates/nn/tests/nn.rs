//! Modules against CPU references, PyTorch names and layouts, the MNIST reader on good and bad
//! files, schedules, and short real training runs whose loss must fall.

use kiln_graph::{Device, Tensor};
use kiln_nn::data::{parse_idx, read_idx, shuffled, Mnist};
use kiln_nn::lenet::lenet5;
use kiln_nn::schedule::Schedule;
use kiln_nn::{LinearConfig, Module, Sgd};
use kiln_ops::numeric::{assert_close, to_f64};
use kiln_ops::random::Rng;
use std::io::Write;
use std::path::PathBuf;

fn dev() -> Device {
    Device::shared().expect("a GPU or software Vulkan adapter (run scripts/setup.sh)")
}

fn mnist_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist")
}

#[test]
fn lenet_has_pytorch_names_and_shapes() {
    let m = lenet5(&dev(), 0).unwrap();
    let got: Vec<(String, Vec<usize>)> = m
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec()))
        .collect();
    let want = [
        ("conv1.weight", vec![6, 1, 5, 5]),
        ("conv1.bias", vec![6]),
        ("conv2.weight", vec![16, 6, 5, 5]),
        ("conv2.bias", vec![16]),
        ("fc1.weight", vec![120, 400]),
        ("fc1.bias", vec![120]),
        ("fc2.weight", vec![84, 120]),
        ("fc2.bias", vec![84]),
        ("fc3.weight", vec![10, 84]),
        ("fc3.bias", vec![10]),
    ];
    assert_eq!(
        got,
        want.iter()
            .map(|(n, s)| (n.to_string(), s.clone()))
            .collect::<Vec<_>>()
    );
    // PyTorch's default init, U(-b, b) with b = 1/sqrt(fan_in): every weight within b, and the
    // 48,000 values spread as that distribution does (mean 0, variance b^2 / 3, both ends
    // reached), which a constant, a normal or a wrongly scaled draw would not.
    let w = m.named_parameters()[4].1.to_vec().unwrap(); // fc1.weight, fan_in 400
    let b = 1.0 / 400f64.sqrt();
    let n = w.len() as f64;
    let mean = w.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = w.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    assert!(w.iter().all(|v| (v.abs() as f64) <= b));
    assert!(mean.abs() < 0.02 * b, "mean {mean}");
    assert!((var / (b * b / 3.0) - 1.0).abs() < 0.03, "variance {var}");
    let (lo, hi) = w
        .iter()
        .fold((0f32, 0f32), |(l, h), &v| (l.min(v), h.max(v)));
    assert!(
        lo < -0.999 * b as f32 && hi > 0.999 * b as f32,
        "range {lo}..{hi}"
    );
    let out = m
        .forward(&Tensor::full(&dev(), &[3, 1, 28, 28], 0.5).unwrap())
        .unwrap();
    assert_eq!(out.shape(), &[3, 10]);
}

#[test]
fn linear_matches_hand_computed_values() {
    let d = dev();
    let mut rng = Rng::new(3);
    let lin = LinearConfig::new(3, 2).init_with(&d, &mut rng).unwrap();
    let x = [1.0f32, 2.0, 3.0, -1.0, 0.0, 0.5];
    let y = lin
        .forward(&Tensor::from_f32(&d, &x, &[2, 3]).unwrap())
        .unwrap()
        .to_vec()
        .unwrap();
    let (w, b) = (
        to_f64(&lin.weight.to_vec().unwrap()),
        to_f64(&lin.bias.as_ref().unwrap().to_vec().unwrap()),
    );
    let want: Vec<f64> = (0..4)
        .map(|i| {
            b[i % 2]
                + (0..3)
                    .map(|k| x[i / 2 * 3 + k] as f64 * w[i % 2 * 3 + k])
                    .sum::<f64>()
        })
        .collect();
    assert_close("linear", &y, &want, 1e-6, 1e-6);
}

#[test]
fn idx_reader_accepts_mnist_and_rejects_bad_files() {
    let m = Mnist::load(&mnist_dir()).unwrap();
    assert_eq!(m.len(), 10_000);
    assert_eq!(m.images.len(), 10_000 * 784);
    assert_eq!(&m.labels[..5], &[7, 2, 1, 0, 4]); // the first test digits
                                                  // Wrong magic, short header, payload shorter or longer than the dimensions say.
    assert!(parse_idx(&[0, 0, 8, 3, 0, 0, 0, 1], 1)
        .unwrap_err()
        .contains("magic"));
    assert!(parse_idx(&[0, 0, 8, 1, 0], 1)
        .unwrap_err()
        .contains("too short"));
    assert!(parse_idx(&[0, 0, 8, 1, 0, 0, 0, 3, 1, 2], 1)
        .unwrap_err()
        .contains("need 3 bytes"));
    assert!(parse_idx(&[0, 0, 8, 1, 0, 0, 0, 1, 1, 2], 1)
        .unwrap_err()
        .contains("need 1 bytes"));
    assert_eq!(
        parse_idx(&[0, 0, 8, 1, 0, 0, 0, 2, 4, 5], 1).unwrap().data,
        vec![4, 5]
    );
    // A truncated gzip file is a clear error naming the file.
    let dir = std::env::temp_dir().join(format!("kiln-idx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = std::fs::read(mnist_dir().join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let cut = dir.join("cut-idx1-ubyte.gz");
    std::fs::File::create(&cut)
        .unwrap()
        .write_all(&good[..good.len() / 2])
        .unwrap();
    let e = read_idx(&cut, 1).unwrap_err().to_string();
    assert!(e.contains("cut-idx1-ubyte.gz") && e.contains("gzip"), "{e}");
    // Images read as labels: wrong magic.
    let e = read_idx(&mnist_dir().join("t10k-images-idx3-ubyte.gz"), 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("magic"), "{e}");
    let e = read_idx(&dir.join("missing.gz"), 1)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing.gz") && e.contains("No such file"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn schedules_follow_pytorch_shapes() {
    assert_eq!(
        Schedule::Step {
            step_size: 10,
            gamma: 0.5
        }
        .lr(1.0, 25),
        0.25
    );
    assert!((Schedule::Exponential { gamma: 0.9 }.lr(1.0, 2) - 0.81).abs() < 1e-6);
    let cos = Schedule::Cosine {
        t_max: 100,
        min_lr: 0.0,
    };
    assert_eq!(cos.lr(1.0, 0), 1.0);
    assert!((cos.lr(1.0, 50) - 0.5).abs() < 1e-6);
    assert!(cos.lr(1.0, 100).abs() < 1e-6);
    let oc = Schedule::OneCycle {
        total: 100,
        pct: 0.3,
    };
    assert!((oc.lr(1.0, 0) - 0.04).abs() < 1e-6);
    assert!((oc.lr(1.0, 30) - 1.0).abs() < 1e-6);
    assert!(oc.lr(1.0, 100) < 1e-5);
    let wu = Schedule::Warmup {
        steps: 4,
        then: Box::new(Schedule::Constant),
    };
    assert_eq!(
        [wu.lr(1.0, 0), wu.lr(1.0, 3), wu.lr(1.0, 9)],
        [0.25, 1.0, 1.0]
    );
    // transformers' get_linear_schedule_with_warmup(4 warm-up steps, 12 in all).
    let wl = Schedule::Warmup {
        steps: 4,
        then: Box::new(Schedule::LinearDecay { from: 4, total: 12 }),
    };
    let got: Vec<f32> = [0, 3, 4, 8, 11, 12, 20]
        .iter()
        .map(|&s| wl.lr(1.0, s))
        .collect();
    assert_eq!(got, [0.25, 1.0, 1.0, 0.5, 0.125, 0.0, 0.0]);
    // llm.c's and nanoGPT's get_lr (warm-up 4, cosine to 0.1 at step 12):
    //   lr = (it + 1) / warmup for it < warmup;
    //   min + 0.5 * (1 + cos(pi * (it - warmup) / (max - warmup))) * (1 - min) after.
    let wc = Schedule::Warmup {
        steps: 4,
        then: Box::new(Schedule::CosineDecay {
            from: 4,
            total: 12,
            min_lr: 0.1,
        }),
    };
    let want = |it: u64| -> f64 {
        if it < 4 {
            (it + 1) as f64 / 4.0
        } else {
            let r = ((it - 4) as f64 / 8.0).min(1.0);
            0.1 + 0.5 * (1.0 + (std::f64::consts::PI * r).cos()) * 0.9
        }
    };
    for it in 0..20 {
        assert!((wc.lr(1.0, it) as f64 - want(it)).abs() < 1e-6, "step {it}");
    }
    assert!((wc.lr(1.0, 8) - 0.55).abs() < 1e-6);
    let s = shuffled(10, 1);
    assert_eq!(s, shuffled(10, 1));
    assert_ne!(s, shuffled(10, 2));
}

#[test]
fn parameter_groups_clipping_and_gradient_accumulation() {
    let d = dev();
    let mut r = Rng::new(21);
    let (v1, v2) = (r.vec(5, -1.0, 1.0), r.vec(3, -1.0, 1.0));
    let (c1, c2) = (r.vec(5, -1.0, 1.0), r.vec(3, -1.0, 1.0));
    let p1 = Tensor::from_f32(&d, &v1, &[5])
        .unwrap()
        .requires_grad_(true)
        .unwrap();
    let p2 = Tensor::from_f32(&d, &v2, &[3])
        .unwrap()
        .requires_grad_(true)
        .unwrap();
    let (t1, t2) = (
        Tensor::from_f32(&d, &c1, &[5]).unwrap(),
        Tensor::from_f32(&d, &c2, &[3]).unwrap(),
    );
    // Group 0: lr 0.1, no decay; group 1: lr 0.01, weight decay 0.5.
    let mut opt = Sgd::new(0.1).init(&d, vec![p1.clone()]).unwrap();
    opt.add_param_group(vec![p2.clone()], 0.01, 0.5).unwrap();
    let loss = p1
        .mul(&t1)
        .unwrap()
        .sum_all()
        .unwrap()
        .add(&p2.mul(&t2).unwrap().sum_all().unwrap())
        .unwrap();
    loss.backward().unwrap();
    opt.step().unwrap();
    let want1: Vec<f64> = v1
        .iter()
        .zip(&c1)
        .map(|(&p, &g)| p as f64 - 0.1 * g as f64)
        .collect();
    let want2: Vec<f64> = v2
        .iter()
        .zip(&c2)
        .map(|(&p, &g)| p as f64 - 0.01 * (g as f64 + 0.5 * p as f64))
        .collect();
    assert_close("group 0", &p1.to_vec().unwrap(), &want1, 1e-6, 1e-5);
    assert_close("group 1", &p2.to_vec().unwrap(), &want2, 1e-6, 1e-5);

    // Clipping through the optimizer: the applied gradient has global norm max_norm.
    let q = Tensor::from_f32(&d, &[3.0, 4.0], &[2])
        .unwrap()
        .requires_grad_(true)
        .unwrap();
    let mut opt = Sgd::new(1.0).init(&d, vec![q.clone()]).unwrap();
    opt.set_clip_grad_norm(Some(1.0));
    q.mul(&q)
        .unwrap()
        .sum_all()
        .unwrap()
        .affine(0.5, 0.0)
        .unwrap()
        .backward()
        .unwrap(); // grad = q = (3, 4), norm 5
    opt.step().unwrap();
    assert_close(
        "clipped step",
        &q.to_vec().unwrap(),
        &[3.0 - 0.6, 4.0 - 0.8],
        1e-5,
        1e-5,
    );

    // Gradient accumulation: two half-batches at weight 1/2 give the full batch's gradient.
    let mut rng = Rng::new(5);
    let lin = LinearConfig::new(4, 3).init_with(&d, &mut rng).unwrap();
    let x = r.vec(8 * 4, -1.0, 1.0);
    let y: Vec<i32> = (0..8).map(|i| i % 3).collect();
    let full = |xs: &[f32], ys: &[i32], n: usize| {
        let xt = Tensor::from_f32(&d, xs, &[n, 4]).unwrap();
        let yt = Tensor::from_i32(&d, ys, &[n]).unwrap();
        lin.forward(&xt).unwrap().cross_entropy(&yt, None).unwrap()
    };
    full(&x, &y, 8).backward().unwrap();
    let g_full = lin.weight.grad().unwrap().to_f32(&d).unwrap();
    lin.weight.zero_grad();
    lin.bias.as_ref().unwrap().zero_grad();
    for h in 0..2 {
        full(&x[h * 16..(h + 1) * 16], &y[h * 4..(h + 1) * 4], 4)
            .affine(0.5, 0.0)
            .unwrap()
            .backward()
            .unwrap();
    }
    let g_acc = lin.weight.grad().unwrap().to_f32(&d).unwrap();
    assert_close(
        "accumulated micro-batches",
        &g_acc,
        &to_f64(&g_full),
        1e-6,
        1e-5,
    );
}

#[test]
fn dropout_draws_a_new_mask_per_replay_without_re_recording() {
    use kiln_graph::StepPlan;
    let d = Device::shared().unwrap();
    let drop = kiln_nn::DropoutConfig::new(0.5)
        .with_seed(7)
        .init(&d)
        .unwrap();
    let x = Tensor::full(&d, &[4096], 1.0)
        .unwrap()
        .requires_grad_(true)
        .unwrap();
    let (plan, y) = StepPlan::record(&d, || {
        let y = drop.forward(&x)?;
        y.sum_all()?.backward()?;
        Ok::<_, kiln_nn::NnError>(y)
    })
    .unwrap();
    let first = y.to_vec().unwrap();
    // The backward used the forward's mask: dx = mask / (1 - p).
    assert_eq!(x.grad().unwrap().to_f32(&d).unwrap(), first);
    drop.advance_rng().unwrap();
    plan.replay().unwrap();
    let second = y.to_vec().unwrap();
    assert_ne!(first, second, "a new offset draws a new mask");
    assert_eq!(x.grad().unwrap().to_f32(&d).unwrap(), second);
    let kept = second.iter().filter(|v| **v != 0.0).count();
    assert!(
        (1800..2300).contains(&kept),
        "{kept} of 4096 kept at p = 0.5"
    );
}

#[test]
fn pgm_reader_accepts_good_files_and_rejects_bad_ones() {
    use kiln_nn::data::{parse_pgm, to_mnist_input};
    let (w, h, px) = parse_pgm(b"P5\n# comment\n2 2\n255\n\x00\x40\x80\xff").unwrap();
    assert_eq!((w, h, px), (2, 2, vec![0, 64, 128, 255]));
    // A max value below 255 is scaled up.
    assert_eq!(parse_pgm(b"P5 1 1 15\n\x0f").unwrap().2, vec![255]);
    assert!(parse_pgm(b"P2\n2 2\n255\n0 0 0 0")
        .unwrap_err()
        .contains("P5"));
    assert!(parse_pgm(b"P5\n2 2\n65535\n")
        .unwrap_err()
        .contains("8-bit"));
    assert!(parse_pgm(b"P5\n4 4\n255\n\x00\x00")
        .unwrap_err()
        .contains("needs 16 bytes"));
    assert!(parse_pgm(b"P5\n4").unwrap_err().contains("truncated"));
    let x = to_mnist_input(2, 2, &[0, 255, 255, 0]).unwrap();
    assert_eq!(x.len(), 784);
    // Zero or overflowing dimensions are refused, not wrapped into a passing size check.
    for bad in [
        &b"P5 0 4 255\n"[..],
        b"P5 4 0 255\n",
        b"P5 4294967296 4294967296 255\n\x00",
        b"P5 18446744073709551615 2 255\n\x00",
    ] {
        let e = parse_pgm(bad).unwrap_err();
        assert!(e.contains("at least 1") || e.contains("overflows"), "{e}");
    }
    let e = to_mnist_input(0, 0, &[]).unwrap_err().to_string();
    assert!(e.contains("0x0 pixels, 0 given"), "{e}");
    let e = to_mnist_input(4, 4, &[0; 15]).unwrap_err().to_string();
    assert!(e.contains("4x4 pixels, 15 given"), "{e}");
    assert!(x[0] < 0.0 && x[27] > 2.0, "black maps low, white high");
}
