//! The seed models that run quickly, end to end on the default adapter.
use kiln::device::Device;
use kiln::train::regression::fit_line;

#[test]
fn linear_regression_learns_slope_and_intercept() {
    let dev = Device::shared().expect("a GPU or software Vulkan adapter (run scripts/setup.sh)");
    let fit = fit_line(&dev, 256, 300, 0.1, 0).unwrap();
    assert!((fit.w - 3.0).abs() < 0.05, "{fit:?}");
    assert!((fit.b - 2.0).abs() < 0.05, "{fit:?}");
    // The noise is N(0, 0.1^2): the fitted MSE sits near 0.01.
    assert!(fit.loss < 0.02, "{fit:?}");
}

#[test]
fn rnn_sequence_model_learns_the_majority_task() {
    use kiln::nn::rnn::RecurrentConfig;
    use kiln::nn::rnn::{majority_task, Cell, LastStepClassifier};
    use kiln::nn::{Adam, Module};
    use kiln::ops::testing::Rng;
    use kiln::train::{Compiled, Dataset, Loss};
    let dev = Device::shared().unwrap();
    let mut rng = Rng::new(0);
    let (x, y) = majority_task(512, 7, &mut rng);
    let (tx, ty) = majority_task(256, 7, &mut rng);
    let model = LastStepClassifier::new_with(
        &dev,
        &mut rng,
        &RecurrentConfig::new(Cell::RnnTanh, 1, 16).with_num_layers(2),
        2,
    )
    .unwrap();
    let opt = Adam::new(1e-2).init(&dev, model.parameters()).unwrap();
    let mut net = Compiled::compile(&dev, model, opt, Loss::CrossEntropy);
    let shape = [7, 1];
    net.fit(&Dataset::classes(&x, &shape, &y), 6, 64, None, |_| {})
        .unwrap();
    let (loss, acc) = net.evaluate(&Dataset::classes(&tx, &shape, &ty)).unwrap();
    // Stated bound: chance is 50%; 6 epochs reach well above 85%.
    assert!(
        acc.unwrap() > 0.85,
        "held-out accuracy {acc:?}, loss {loss}"
    );
}

#[test]
fn mnist_mlp_model_learns_in_one_epoch() {
    use kiln::nn::data::Mnist;
    use kiln::nn::{Adam, LinearConfig, Module, Relu, Sequential};
    use kiln::ops::testing::Rng;
    use kiln::train::{Compiled, Dataset, Loss};
    let dev = Device::shared().unwrap();
    let m = Mnist::load(&std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/mnist"))
        .unwrap();
    let (x, y) = m.split(0..1000);
    let (tx, ty) = m.split(9000..9500);
    let mut rng = Rng::new(0);
    let model = Sequential::new()
        .push(
            LinearConfig::new(784, 64)
                .init_with(&dev, &mut rng)
                .unwrap(),
        )
        .push(Relu)
        .push(LinearConfig::new(64, 10).init_with(&dev, &mut rng).unwrap());
    let opt = Adam::new(1e-3).init(&dev, model.parameters()).unwrap();
    let mut net = Compiled::compile(&dev, model, opt, Loss::CrossEntropy);
    net.fit(&Dataset::classes(&x, &[784], &y), 2, 64, None, |_| {})
        .unwrap();
    let (loss, acc) = net.evaluate(&Dataset::classes(&tx, &[784], &ty)).unwrap();
    // Stated bounds: untrained loss is about 2.3; two epochs of 1,000 images reach loss < 0.8
    // and accuracy > 75%.
    assert!(
        loss < 0.8 && acc.unwrap() > 0.75,
        "loss {loss}, accuracy {acc:?}"
    );
}

#[test]
fn loads_a_lenet_written_by_the_reference_safetensors_library() {
    // tests/fixtures/make_lenet_safetensors.py wrote it with PyTorch's names (no kiln checksum).
    use kiln::nn::models::lenet5;
    use kiln::nn::serialize::load;
    use kiln::nn::Module;
    let dev = Device::shared().unwrap();
    let model = lenet5(&dev, 0).unwrap();
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/lenet_reference.safetensors");
    let report = load(&path, &model.named_parameters(), true).unwrap();
    assert_eq!(report, Default::default());
    for (k, (name, p)) in model.named_parameters().iter().enumerate() {
        let got = p.to_vec().unwrap();
        for (i, v) in got.iter().enumerate().step_by(37) {
            let want = ((i + k) as f64).sin() / 10.0;
            assert!(
                (*v as f64 - want).abs() <= 1e-7,
                "{name}[{i}]: {v} vs {want}"
            );
        }
    }
}
