//! Pruning (masks kept through fine-tuning) and knowledge distillation.

use kiln_graph::{Device, Tensor};
use kiln_nn::lenet::lenet5;
use kiln_nn::prune::{magnitude_masks, sparsity};
use kiln_nn::{Module, Sgd};
use kiln_ops::random::Rng;
use kiln_train::{fit, ArrayDataset, FitConfig, Loss};

fn dev() -> Device {
    Device::shared().expect("a GPU or software Vulkan adapter (run scripts/setup.sh)")
}

#[test]
fn magnitude_pruning_keeps_pruned_weights_at_zero_while_fine_tuning() {
    let d = dev();
    let m = lenet5(&d, 1).unwrap();
    let weights: Vec<Tensor> = m
        .named_parameters()
        .into_iter()
        .filter(|(n, _)| n.ends_with("weight"))
        .map(|(_, t)| t)
        .collect();
    let original = weights[0].to_vec().unwrap();
    // Per tensor: each weight tensor loses exactly floor(0.8 n) entries.
    let masks = magnitude_masks(&weights, 0.8, false).unwrap();
    for (mk, w) in masks.iter().zip(&weights) {
        assert_eq!(mk.pruned, (w.numel() as f64 * 0.8).floor() as usize);
    }
    let s = sparsity(&weights).unwrap();
    assert!((s - 0.8).abs() < 0.01, "sparsity {s}");
    // The kept weights are the largest: every kept |w| is at least every pruned |w|.
    let w0 = weights[0].to_vec().unwrap();
    let kept_min = original
        .iter()
        .zip(&w0)
        .filter(|(_, now)| **now != 0.0)
        .map(|(o, _)| o.abs())
        .fold(f32::MAX, f32::min);
    let pruned_max = original
        .iter()
        .zip(&w0)
        .filter(|(_, now)| **now == 0.0)
        .map(|(o, _)| o.abs())
        .fold(0.0, f32::max);
    assert!(
        kept_min >= pruned_max,
        "kept {kept_min} < pruned {pruned_max}"
    );
    assert!(
        w0.iter()
            .zip(&original)
            .all(|(now, o)| *now == 0.0 || now == o),
        "kept weights unchanged"
    );
    // Fine-tuning with the masks on the optimizer: the zeros stay zeros.
    let mut rng = Rng::new(3);
    let x = rng.vec(128 * 784, -1.0, 1.0);
    let y: Vec<i32> = (0..128).map(|i| i % 10).collect();
    let data = ArrayDataset::classes(&x, &[1, 28, 28], &y);
    let mut opt = Sgd::new(0.05)
        .with_momentum(0.9)
        .init(&d, m.parameters())
        .unwrap();
    let zero_sets: Vec<Vec<bool>> = weights
        .iter()
        .map(|w| w.to_vec().unwrap().iter().map(|v| *v == 0.0).collect())
        .collect();
    opt.set_masks(masks);
    fit(
        &d,
        &m,
        &mut opt,
        Loss::CrossEntropy,
        &data,
        FitConfig::default().with_epochs(2).with_progress(false),
    )
    .unwrap();
    for (w, zeros) in weights.iter().zip(&zero_sets) {
        let now = w.to_vec().unwrap();
        assert!(
            now.iter().zip(zeros).all(|(v, z)| !z || *v == 0.0),
            "a pruned weight came back"
        );
        assert!(now.iter().zip(zeros).any(|(v, z)| !z && *v != 0.0));
    }
    // Global pruning reaches the target over all tensors together.
    let g = magnitude_masks(&weights, 0.9, true).unwrap();
    let total: usize = weights.iter().map(|w| w.numel()).sum();
    let pruned: usize = g.iter().map(|m| m.pruned).sum();
    assert!((pruned as f64 / total as f64 - 0.9).abs() < 0.01);
    // A sparsity outside [0, 1) is an error.
    let e = magnitude_masks(&weights, 1.0, true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("sparsity 1 outside [0, 1)"), "{e}");
    let e = magnitude_masks(&weights, -0.1, false)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("sparsity -0.1 outside [0, 1)"), "{e}");
}

#[test]
fn distillation_loss_matches_its_formula_and_gradient() {
    use kiln_nn::loss::distillation_loss;
    use kiln_ops::numeric::{assert_close, finite_diff, to_f64};
    use kiln_ops::softmax::cpu::{cross_entropy, softmax};
    let d = dev();
    let mut r = Rng::new(8);
    let (n, c, t, alpha) = (4, 5, 3.0, 0.7);
    let (s, tl) = (r.vec(n * c, -2.0, 2.0), r.vec(n * c, -2.0, 2.0));
    let labels = [0, 3, 4, 1];
    let tl64 = to_f64(&tl);
    let cpu = |s: &[f64]| {
        let ps = softmax(&s.iter().map(|v| v / t).collect::<Vec<_>>(), c, true);
        let pt = softmax(&tl64.iter().map(|v| v / t).collect::<Vec<_>>(), c, true);
        let kl: f64 = pt
            .iter()
            .zip(&ps)
            .map(|(lt, ls)| lt.exp() * (lt - ls))
            .sum::<f64>()
            / n as f64;
        alpha * t * t * kl + (1.0 - alpha) * cross_entropy(s, c, &labels, None)
    };
    let st = Tensor::from_f32(&d, &s, &[n, c])
        .unwrap()
        .requires_grad_(true)
        .unwrap();
    let teacher = Tensor::from_f32(&d, &tl, &[n, c])
        .unwrap()
        .requires_grad_(true)
        .unwrap();
    let y = Tensor::from_i32(&d, &labels, &[n]).unwrap();
    let loss = distillation_loss(&st, &teacher, &y, t as f32, alpha as f32).unwrap();
    assert_close(
        "distillation loss",
        &[loss.item().unwrap()],
        &[cpu(&to_f64(&s))],
        1e-5,
        1e-5,
    );
    loss.backward().unwrap();
    assert_close(
        "d student",
        &st.grad().unwrap().to_f32(&d).unwrap(),
        &finite_diff(cpu, &to_f64(&s), 1e-4),
        1e-5,
        1e-3,
    );
    assert!(teacher.grad().is_none(), "the teacher gets no gradient");
}

mod quantization {
    use super::dev;
    use kiln_graph::Tensor;
    use kiln_nn::data::Mnist;
    use kiln_nn::lenet::lenet5;
    use kiln_nn::quant::{quantize, Calibration, Precision, QuantConfig, QuantizedModel};
    use kiln_nn::serialize;
    use kiln_nn::{Module, Sgd};
    use kiln_train::{fit, predict, ArrayDataset, FitConfig, Loss};
    use std::path::PathBuf;

    fn mnist(range: std::ops::Range<usize>) -> (Vec<f32>, Vec<i32>) {
        Mnist::load(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist"))
            .unwrap()
            .split(range)
            .unwrap()
    }

    fn argmax(v: &[f32]) -> Vec<usize> {
        v.chunks(10)
            .map(|r| (0..10).max_by(|a, b| r[*a].total_cmp(&r[*b])).unwrap())
            .collect()
    }

    fn agreement(a: &[f32], b: &[f32]) -> f64 {
        let (a, b) = (argmax(a), argmax(b));
        a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn quantized_lenet_tracks_f32_and_round_trips_through_files() {
        let d = dev();
        let (x, y) = mnist(0..1024);
        let (tx, _) = mnist(9000..9500);
        let shape = [1, 28, 28];
        let model = lenet5(&d, 5).unwrap();
        let mut opt = Sgd::new(0.05)
            .with_momentum(0.9)
            .init(&d, model.parameters())
            .unwrap();
        let cfg = FitConfig {
            progress: false,
            ..FitConfig::default()
                .with_epochs(2)
                .with_batch_size(64)
                .with_seed(0)
        };
        fit(
            &d,
            &model,
            &mut opt,
            Loss::CrossEntropy,
            &ArrayDataset::classes(&x, &shape, &y),
            cfg,
        )
        .unwrap();
        let want = predict(&d, &model, &tx, &shape, 100).unwrap();
        let dir = std::env::temp_dir().join(format!("kiln-quant-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f32_file = dir.join("f32.safetensors");
        serialize::save(&f32_file, &model.named_parameters(), &[]).unwrap();
        let scale = want.iter().fold(0.0f32, |a, v| a.max(v.abs()));

        for (cfg, tol, agree) in [
            (QuantConfig::int8(), 0.1, 0.97),
            (
                QuantConfig {
                    calibration: Calibration::Percentile(99.99),
                    ..QuantConfig::int8()
                },
                0.1,
                0.97,
            ),
            (QuantConfig::f16(), 2e-3, 0.998),
        ] {
            // A fresh f32 model with the trained weights is quantized (quantize consumes it).
            let f = lenet5(&d, 99).unwrap();
            serialize::load(&f32_file, &f.named_parameters(), true).unwrap();
            let q = quantize(&d, f, &x, &shape, &cfg).unwrap();
            assert!(
                q.uses_quantized_kernels(),
                "lavapipe runs int8 and f16 kernels"
            );
            let got = predict(&d, &q, &tx, &shape, 100).unwrap();
            let diff = max_diff(&got, &want);
            assert!(
                diff <= tol * scale,
                "{cfg:?}: logits off by {diff} (largest logit {scale})"
            );
            let a = agreement(&got, &want);
            assert!(a >= agree, "{cfg:?}: predictions agree on {a}");

            // Save and load: the same outputs, bit for bit, and a smaller file.
            let path = dir.join(format!("{:?}.safetensors", cfg.precision));
            q.save(&path).unwrap();
            let loaded = QuantizedModel::load(&d, &path, lenet5(&d, 1).unwrap()).unwrap();
            assert_eq!(loaded.precision(), cfg.precision);
            assert_eq!(predict(&d, &loaded, &tx, &shape, 100).unwrap(), got);
            let ratio = std::fs::metadata(&path).unwrap().len() as f64
                / std::fs::metadata(&f32_file).unwrap().len() as f64;
            let most = if cfg.precision == Precision::Int8 {
                0.3
            } else {
                0.55
            };
            assert!(ratio < most, "{cfg:?}: file is {ratio} of the f32 file");

            // The f32 fallback on the dequantized weights gives nearly the same outputs.
            let fb = q.to_f32_fallback(&d, lenet5(&d, 1).unwrap()).unwrap();
            assert!(!fb.uses_quantized_kernels());
            let fb_out = predict(&d, &fb, &tx, &shape, 100).unwrap();
            assert!(max_diff(&fb_out, &got) <= tol * scale);

            // Files of one kind are refused by the other loader, naming the problem.
            let e = serialize::load(&path, &lenet5(&d, 1).unwrap().named_parameters(), true)
                .unwrap_err()
                .to_string();
            assert!(e.contains("quantized"), "{e}");
        }
        let e = QuantizedModel::load(&d, &f32_file, lenet5(&d, 1).unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not a quantized model"), "{e}");
        // The wrong architecture: the error names the tensor.
        let int8_file = dir.join("Int8.safetensors");
        let e = QuantizedModel::load(
            &d,
            &int8_file,
            kiln_nn::lenet::lenet5_with_classes(&d, 1, 5).unwrap(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("fc3.weight"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn quantization_bad_inputs_are_clear_errors() {
        let d = dev();
        let (x, _) = mnist(0..64);
        let cfg = QuantConfig::int8();
        let q = |xs: &[f32], shape: &[usize], cfg: &QuantConfig| {
            quantize(&d, lenet5(&d, 1).unwrap(), xs, shape, cfg)
                .err()
                .map(|e| e.to_string())
        };
        // Calibration examples of the wrong shape for the model.
        let e = q(&x[..48 * 784], &[3, 16, 16], &cfg).unwrap_or_default();
        assert!(
            e.contains("do not fit the model") && e.contains("conv1"),
            "{e}"
        );
        // Values that are not whole examples, an empty set, a bad percentile.
        let e = q(&x[..1000], &[1, 28, 28], &cfg).unwrap_or_default();
        assert!(e.contains("whole examples"), "{e}");
        assert!(q(&[], &[1, 28, 28], &cfg).is_some());
        let pct = QuantConfig {
            calibration: Calibration::Percentile(120.0),
            ..QuantConfig::int8()
        };
        assert!(q(&x, &[1, 28, 28], &pct)
            .unwrap_or_default()
            .contains("percentile"));
        // Inference on inputs of another shape than the calibrated one.
        let m = quantize(&d, lenet5(&d, 1).unwrap(), &x, &[1, 28, 28], &cfg).unwrap();
        let bad = Tensor::from_f32(&d, &vec![0.0; 2 * 32 * 32], &[2, 1, 32, 32]).unwrap();
        let e = m.forward(&bad).err().unwrap().to_string();
        assert!(e.contains("[batch, 1, 28, 28]"), "{e}");
    }
}
