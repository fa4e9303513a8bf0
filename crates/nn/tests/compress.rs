//! Pruning (masks kept through fine-tuning) and knowledge distillation.

use kiln_graph::{Device, Tensor};
use kiln_nn::layers::{lenet5, Module};
use kiln_nn::prune::{magnitude_masks, sparsity};
use kiln_nn::train::{fit, Dataset, FitConfig, Loss};
use kiln_nn::Optimizer;
use kiln_ops::testing::Rng;

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
    let y: Vec<i32> = (0..128).map(|i| (i % 10) as i32).collect();
    let data = Dataset::classes(&x, &[1, 28, 28], &y);
    let mut opt = Optimizer::sgd(&d, m.parameters(), 0.05, 0.9, false, 0.0).unwrap();
    let zero_sets: Vec<Vec<bool>> = weights
        .iter()
        .map(|w| w.to_vec().unwrap().iter().map(|v| *v == 0.0).collect())
        .collect();
    opt.set_masks(masks);
    fit(
        &d,
        &m,
        &mut opt,
        &data,
        None,
        &FitConfig {
            progress: false,
            ..FitConfig::new(Loss::CrossEntropy, 2, 32, 0)
        },
        |_| {},
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
    assert!(magnitude_masks(&weights, 1.0, true).is_err());
    assert!(magnitude_masks(&weights, -0.1, false).is_err());
}

#[test]
fn distillation_loss_matches_its_formula_and_gradient() {
    use kiln_nn::distill::distillation_loss;
    use kiln_ops::softmax::cpu::{cross_entropy, softmax};
    use kiln_ops::testing::{assert_close, finite_diff, to_f64};
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
        .requires_grad(true);
    let teacher = Tensor::from_f32(&d, &tl, &[n, c])
        .unwrap()
        .requires_grad(true);
    let y = kiln_graph::Array::from_i32(&d, &labels, &[n]).unwrap();
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
