//! Character language modelling: corpus, windows, and short training runs of both models.

use kiln_graph::Device;
use kiln_nn::lm::{
    generate, sample_windows, CharCorpus, CharLstm, CharTransformer, LanguageModel,
    TransformerLmConfig,
};
use kiln_nn::{Adam, Module};
use kiln_ops::random::Rng;
use kiln_train::lm_train::{evaluate_lm, train_lm, LmConfig};

fn dev() -> Device {
    Device::shared().expect("a GPU or software Vulkan adapter (run scripts/setup.sh)")
}

#[test]
fn corpus_split_encoding_and_windows() {
    let c = CharCorpus::from_text("hello world, hello kiln", 0.25).unwrap();
    assert_eq!(c.vocab(), 12); // ' ' , d e h i k l n o r w
    assert_eq!(c.train.len() + c.val.len(), 23);
    assert_eq!(c.decode(&c.encode("hello")), "hello");
    assert_eq!(
        c.encode("hello?").len(),
        5,
        "unknown characters are skipped"
    );
    let mut rng = Rng::new(1);
    let (x, y) = sample_windows(&c.train, 3, 4, &mut rng);
    assert_eq!((x.len(), y.len()), (12, 12));
    assert_eq!(x[1..4], y[..3], "targets are the inputs shifted by one");
    let e = CharCorpus::from_text("aaaa", 0.1)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("1 distinct characters: too few"), "{e}");
}

fn periodic() -> CharCorpus {
    CharCorpus::from_text(&"the cat sat on the mat. ".repeat(200), 0.1).unwrap()
}

fn train(model: &dyn LanguageModel, steps: usize, lr: f32) -> (f32, f32) {
    let d = dev();
    let c = periodic();
    let before = evaluate_lm(&d, model, &c.val, 8, 2, 7).unwrap();
    let mut opt = Adam::new(lr).init(&d, model.parameters()).unwrap();
    let cfg = LmConfig::default()
        .with_batch(8)
        .with_steps(steps)
        .with_eval_every(steps)
        .with_eval_batches(2)
        .with_seed(3);
    let hist = train_lm(&d, model, &mut opt, &c, &cfg, |_| {}).unwrap();
    (before, hist.last().unwrap().val_loss.unwrap())
}

#[test]
fn char_transformer_learns_a_periodic_text() {
    let d = dev();
    let c = periodic();
    let cfg = TransformerLmConfig {
        vocab: c.vocab(),
        context: 12,
        d_model: 16,
        heads: 2,
        layers: 1,
        dropout: 0.0,
    };
    let m = CharTransformer::new(&d, 1, &cfg).unwrap();
    let (before, after) = train(&m, 80, 1e-2);
    // ln(vocab = 12) = 2.48 untrained; a period-24 text is nearly deterministic given 12 characters.
    assert!(before > 2.0, "untrained {before}");
    assert!(after < 0.8, "trained val loss {after} (from {before})");
    let s = generate(&d, &m, &c, "the ", 10, 0.5, 0).unwrap();
    assert_eq!(s.chars().count(), 14);
}

#[test]
fn mixed_precision_transformer_learns_like_f32() {
    let d = dev();
    let c = periodic();
    let cfg = TransformerLmConfig {
        vocab: c.vocab(),
        context: 12,
        d_model: 16,
        heads: 2,
        layers: 1,
        dropout: 0.0,
    };
    let run = |mixed: bool| {
        let m = CharTransformer::new(&d, 1, &cfg).unwrap();
        let mut opt = Adam::new(1e-2).init(&d, m.parameters()).unwrap();
        let train_cfg = LmConfig {
            mixed_precision: mixed,
            ..LmConfig::default()
                .with_batch(8)
                .with_steps(80)
                .with_eval_every(80)
                .with_eval_batches(2)
                .with_seed(3)
        };
        let hist = train_lm(&d, &m, &mut opt, &c, &train_cfg, |_| {}).unwrap();
        let params: Vec<f32> = m
            .parameters()
            .iter()
            .flat_map(|p| p.to_vec().unwrap())
            .collect();
        (hist.last().unwrap().val_loss.unwrap(), params)
    };
    let (loss32, p32) = run(false);
    let (loss16, p16) = run(true);
    assert!(
        loss16 < 0.8,
        "mixed-precision val loss {loss16} (f32: {loss32})"
    );
    assert!(
        (loss16 - loss32).abs() < 0.1,
        "f16 {loss16} vs f32 {loss32}"
    );
    // The f16 rounding took effect: the trained weights are not the f32 run's.
    let moved = p32.iter().zip(&p16).filter(|(a, b)| a != b).count();
    assert!(
        moved > p32.len() / 2,
        "{moved} of {} weights differ",
        p32.len()
    );
}

#[test]
fn char_lstm_learns_a_periodic_text() {
    let d = dev();
    let c = periodic();
    let m = CharLstm::new(&d, 2, c.vocab(), 12, 8, 24, 1).unwrap();
    let (before, after) = train(&m, 80, 2e-2);
    assert!(before > 2.0, "untrained {before}");
    assert!(after < 1.2, "trained val loss {after} (from {before})");
}

#[test]
fn resumed_language_model_training_equals_an_uninterrupted_run() {
    use kiln_train::checkpoint::{load_training, CheckpointConfig};
    let d = dev();
    let c = periodic();
    let make = || CharLstm::new(&d, 2, c.vocab(), 12, 8, 16, 1).unwrap();
    let params = |m: &CharLstm| {
        m.parameters()
            .iter()
            .map(|p| p.to_vec().unwrap())
            .collect::<Vec<_>>()
    };
    let a = make();
    let mut oa = Adam::new(1e-2).init(&d, a.parameters()).unwrap();
    let full = train_lm(
        &d,
        &a,
        &mut oa,
        &c,
        &LmConfig::default()
            .with_batch(8)
            .with_steps(20)
            .with_eval_every(10)
            .with_eval_batches(1)
            .with_seed(5),
        |_| {},
    )
    .unwrap();
    let path =
        std::env::temp_dir().join(format!("kiln-lm-resume-{}.safetensors", std::process::id()));
    let b = make();
    let mut ob = Adam::new(1e-2).init(&d, b.parameters()).unwrap();
    let first = LmConfig {
        checkpoint: Some(CheckpointConfig::new(&path, 1).unwrap()),
        ..LmConfig::default()
            .with_batch(8)
            .with_steps(10)
            .with_eval_every(10)
            .with_eval_batches(1)
            .with_seed(5)
    };
    train_lm(&d, &b, &mut ob, &c, &first, |_| {}).unwrap();
    let r = make();
    let mut or = Adam::new(1e-2).init(&d, r.parameters()).unwrap();
    let resumed = load_training(&path, &r, &mut or, &Default::default(), &[]).unwrap();
    assert_eq!(or.steps(), 10);
    let rest = LmConfig {
        history: resumed.history,
        ..LmConfig::default()
            .with_batch(8)
            .with_steps(20)
            .with_eval_every(10)
            .with_eval_batches(1)
            .with_seed(5)
    };
    let hist = train_lm(&d, &r, &mut or, &c, &rest, |_| {}).unwrap();
    assert_eq!(params(&a), params(&r), "resumed parameters differ");
    assert_eq!(hist.iter().map(|h| h.epoch).collect::<Vec<_>>(), [10, 20]);
    assert_eq!(hist[1].val_loss, full[1].val_loss);
    std::fs::remove_file(&path).ok();
}
