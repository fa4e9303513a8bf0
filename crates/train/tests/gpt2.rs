//! GPT-2 trained with the recipe of kiln_train::gpt against transformers + torch.optim.AdamW
//! (tests/fixtures/gpt2_train, from scripts/fixtures/make_gpt2_train_fixtures.py, float64
//! references): 20 steps of a 2-layer model from one initial state dict on one fixed sequence of
//! batches, AdamW with weight decay on the matrices, clipping, warm-up and cosine decay; every
//! step's loss and gradient norm within 1e-4 relative, and every final parameter tensor within
//! 1e-4 relative; the same accumulating two micro-batches per step. Activation checkpointing
//! gives the same run; a run stopped at step 10 and resumed from its checkpoint ends equal to the
//! uninterrupted run, bit for bit; the padded vocabulary takes no probability mass.

use kiln_graph::{Device, Tensor};
use kiln_nn::hf::{Gpt2Config, Gpt2LMHeadModel};
use kiln_nn::shards::{inputs_and_targets, TokenDataset, TokenLoader};
use kiln_nn::{Module, Optimizer};
use kiln_train::checkpoint::{load_training, save_training, RunSettings};
use kiln_train::gpt::{decay_groups, AccumulatedStep, GptAdamW};
use safetensors::{Dtype, SafeTensors};
use std::path::PathBuf;

fn dev() -> Device {
    Device::shared().expect("a GPU or software Vulkan adapter (run scripts/setup.sh)")
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/gpt2_train")
        .join(name)
}

/// golden.safetensors: float32 and int64 tensors, numbers in the metadata.
struct Golden(Vec<u8>);

impl Golden {
    fn read() -> Golden {
        let p = fixture("golden.safetensors");
        Golden(std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
    }
    fn f32(&self, name: &str) -> Vec<f32> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("no {name}"));
        assert_eq!(t.dtype(), Dtype::F32, "{name}");
        t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
    fn i64_as_i32(&self, name: &str) -> Vec<i32> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st.tensor(name).unwrap();
        assert_eq!(t.dtype(), Dtype::I64, "{name}");
        t.data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as i32)
            .collect()
    }
    fn num(&self, key: &str) -> f64 {
        let (_, meta) = SafeTensors::read_metadata(&self.0).unwrap();
        meta.metadata().as_ref().unwrap()[key].parse().unwrap()
    }
}

/// max |got - want| / max |want|, asserted under `tol`.
fn check_rel(what: &str, got: &[f32], want: &[f32], tol: f64) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    assert!(got.iter().all(|g| g.is_finite()), "{what}: non-finite");
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - *w as f64).abs())
        .fold(0.0, f64::max);
    let scale = want.iter().map(|w| w.abs() as f64).fold(0.0, f64::max);
    let rel = worst / scale.max(1e-30);
    assert!(
        rel <= tol,
        "{what}: relative difference {rel:.3e} > {tol:.0e}"
    );
    rel
}

/// What a run produced: per-step loss and gradient norm, and the final named parameters.
struct Run {
    losses: Vec<f32>,
    norms: Vec<f32>,
    lrs: Vec<f32>,
    params: Vec<(String, Vec<f32>)>,
}

fn recipe(g: &Golden) -> GptAdamW {
    let steps = g.num("steps") as u64;
    GptAdamW::new(g.num("peak_lr") as f32, g.num("warmup_steps") as u64, steps)
        .with_betas(0.9, 0.95)
        .with_eps(g.num("eps") as f32)
        .with_weight_decay(g.num("weight_decay") as f32)
        .with_clip_grad_norm(Some(g.num("clip_grad_norm") as f32))
        .with_min_lr_ratio(g.num("min_lr_ratio") as f32)
}

/// Steps `from..to` of the golden batches with `micro` micro-batches per step.
fn steps(
    dev: &Device,
    model: &Gpt2LMHeadModel,
    opt: &mut Optimizer,
    batches: &[i32],
    micro: usize,
    range: std::ops::Range<usize>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (b, t) = (4, 32);
    let rows = b / micro;
    let x = Tensor::from_i32(dev, &vec![0; rows * t], &[rows, t]).unwrap();
    let y = Tensor::from_i32(dev, &vec![0; rows * t], &[rows, t]).unwrap();
    let mut step = AccumulatedStep::new(micro).unwrap();
    let (mut losses, mut norms, mut lrs) = (Vec::new(), Vec::new(), Vec::new());
    for s in range {
        lrs.push(opt.lr());
        let w = &batches[s * b * (t + 1)..(s + 1) * b * (t + 1)];
        step.run(
            dev,
            opt,
            &mut |m| {
                let part = &w[m * rows * (t + 1)..(m + 1) * rows * (t + 1)];
                let (xs, ys) = inputs_and_targets(part, t);
                x.copy_from_slice(&xs)?;
                y.copy_from_slice(&ys)?;
                model.advance_rng()?;
                Ok(())
            },
            &mut || Ok(model.lm_loss_from(&x, &y)?),
        )
        .unwrap();
        losses.push(step.loss().unwrap().to_f32(dev).unwrap()[0]);
        let sq = step.grad_norm_sq(opt).unwrap().to_f32(dev).unwrap()[0];
        norms.push(sq.sqrt());
    }
    (losses, norms, lrs)
}

fn run(micro: usize, checkpointing: bool) -> Run {
    let dev = dev();
    let g = Golden::read();
    let mut model = Gpt2LMHeadModel::from_folder(&dev, &fixture("init")).unwrap();
    model.train();
    model.set_gradient_checkpointing(checkpointing);
    let mut opt = recipe(&g).init(&dev, &model).unwrap();
    let batches = g.i64_as_i32("batches");
    let (losses, norms, lrs) = steps(&dev, &model, &mut opt, &batches, micro, 0..20);
    let params = model
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.to_vec().unwrap()))
        .collect();
    Run {
        losses,
        norms,
        lrs,
        params,
    }
}

fn against_pytorch(r: &Run, prefix: &str) {
    let g = Golden::read();
    check_rel(
        "learning rates",
        &r.lrs,
        &g.f32(&format!("{prefix}lrs")),
        1e-6,
    );
    for (i, (l, w)) in r
        .losses
        .iter()
        .zip(g.f32(&format!("{prefix}losses")))
        .enumerate()
    {
        check_rel(&format!("{prefix}loss at step {i}"), &[*l], &[w], 1e-4);
    }
    let worst = check_rel(
        &format!("{prefix}gradient norms"),
        &r.norms,
        &g.f32(&format!("{prefix}grad_norms")),
        1e-4,
    );
    eprintln!("{prefix}gradient norms: worst relative difference {worst:.2e}");
    let mut worst = 0.0f64;
    for (name, v) in &r.params {
        worst = worst.max(check_rel(
            &format!("{prefix}{name} after 20 steps"),
            v,
            &g.f32(&format!("{prefix}params.{name}")),
            1e-4,
        ));
    }
    eprintln!(
        "{prefix}losses {:.4} -> {:.4}; parameters: worst relative difference {worst:.2e}",
        r.losses[0], r.losses[19]
    );
    assert!(r.losses[19] < r.losses[0] - 1.0, "the run learns");
}

#[test]
fn twenty_steps_follow_pytorch_whole_batches_and_accumulated() {
    let whole = run(1, false);
    against_pytorch(&whole, "");
    let accum = run(2, false);
    against_pytorch(&accum, "accum.");
    // Two code paths: the accumulated run sums micro-batches in another order.
    assert!(
        whole
            .params
            .iter()
            .zip(&accum.params)
            .any(|(a, b)| a.1 != b.1),
        "accumulation ran the whole-batch step"
    );
}

#[test]
fn activation_checkpointing_changes_nothing() {
    let plain = run(2, false);
    let ckpt = run(2, true);
    for (a, b) in plain.losses.iter().zip(&ckpt.losses) {
        assert!((a - b).abs() <= 1e-6 * a.abs(), "loss {a} vs {b}");
    }
    let mut identical = true;
    for ((n, a), (_, b)) in plain.params.iter().zip(&ckpt.params) {
        identical &= a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        check_rel(&format!("{n} with checkpointing"), b, a, 1e-6);
    }
    eprintln!("checkpointed run bit for bit equal: {identical}");
}

/// A model with dropout from scratch, a padded vocabulary, token shards through the loader,
/// accumulation and checkpointing: 20 steps straight, or 10, a checkpoint, a fresh process's
/// worth of objects, and 10 more.
#[test]
fn resume_at_step_ten_equals_an_uninterrupted_run_bit_for_bit() {
    let dev = dev();
    let text: Vec<u16> = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/tinyshakespeare/input.txt"),
    )
    .unwrap()
    .iter()
    .take(40_000)
    .map(|&b| b as u16 % 100)
    .collect();
    let context = 16;
    let data = TokenDataset::from_shards(vec![text], context).unwrap();
    let settings = RunSettings::new().with("test", "resume");
    let make = || {
        let config = Gpt2Config::new(100, context, 32, 2, 2).with_dropout(0.1);
        let mut m = Gpt2LMHeadModel::init_from_scratch(&dev, config, 0.02, 5).unwrap();
        m.pad_vocab(64).unwrap();
        m.set_gradient_checkpointing(true);
        let opt = GptAdamW::new(3e-3, 3, 20).init(&dev, &m).unwrap();
        (m, opt)
    };
    let train = |m: &Gpt2LMHeadModel, opt: &mut Optimizer, range: std::ops::Range<u64>| {
        let (micro, rows) = (2, 3);
        let mut loader = TokenLoader::new(data.len(), rows, micro, 11, 0, 1).unwrap();
        let x = Tensor::from_i32(&dev, &vec![0; rows * context], &[rows, context]).unwrap();
        let y = Tensor::from_i32(&dev, &vec![0; rows * context], &[rows, context]).unwrap();
        let mut step = AccumulatedStep::new(micro).unwrap();
        let mut losses = Vec::new();
        for s in range {
            step.run(
                &dev,
                opt,
                &mut |k| {
                    let (xs, ys) =
                        inputs_and_targets(&data.get_batch(&loader.indices(s, k))?, context);
                    x.copy_from_slice(&xs)?;
                    y.copy_from_slice(&ys)?;
                    if s > 0 || k > 0 {
                        m.advance_rng()?;
                    }
                    Ok(())
                },
                &mut || Ok(m.lm_loss_from(&x, &y)?),
            )
            .unwrap();
            losses.push(step.loss().unwrap().to_f32(&dev).unwrap()[0]);
        }
        losses
    };
    let values = |m: &Gpt2LMHeadModel, opt: &Optimizer| -> Vec<Vec<u32>> {
        let mut named = m.named_parameters();
        named.extend(opt.state_tensors());
        named
            .iter()
            .map(|(_, t)| t.to_vec().unwrap().iter().map(|v| v.to_bits()).collect())
            .collect()
    };

    let (m, mut opt) = make();
    let straight = train(&m, &mut opt, 0..20);
    let want = values(&m, &opt);
    assert!(straight[19] < straight[0], "{straight:?}");

    let path = std::env::temp_dir().join(format!(
        "kiln-gpt2-resume-{}.safetensors",
        std::process::id()
    ));
    let (m, mut opt) = make();
    let first = train(&m, &mut opt, 0..10);
    assert_eq!(first, straight[..10]);
    save_training(&path, &m, &opt, &[], &settings).unwrap();
    drop((m, opt));
    let (m, mut opt) = make();
    load_training(&path, &m, &mut opt, &settings, &[]).unwrap();
    assert_eq!(opt.steps(), 10);
    let rest = train(&m, &mut opt, 10..20);
    assert_eq!(rest, straight[10..], "losses after the resume");
    assert!(
        values(&m, &opt) == want,
        "parameters and optimizer state after 20 steps"
    );
    std::fs::remove_file(&path).unwrap();
}

/// The padded rows never take probability: with the table padded from 100 to 128 rows, the
/// scores, the loss and generation see 100 columns; the saved folder holds 100 rows; the padded
/// rows stay zero through training.
#[test]
fn padded_vocabulary_takes_no_probability() {
    let dev = dev();
    let config = Gpt2Config::new(100, 16, 32, 2, 2).with_dropout(0.0);
    let mut m = Gpt2LMHeadModel::init_from_scratch(&dev, config, 0.02, 3).unwrap();
    let ids: Vec<i32> = (0..16).map(|i| (i * 7) % 100).collect();
    let x = Tensor::from_i32(&dev, &ids[..15], &[1, 15]).unwrap();
    let y = Tensor::from_i32(&dev, &ids[1..], &[1, 15]).unwrap();
    let before = m.lm_loss_from(&x, &y).unwrap().item().unwrap();
    let logits = m.logits(&x).unwrap().to_vec().unwrap();
    m.pad_vocab(128).unwrap();
    assert_eq!((m.padded_vocab_size(), m.config().vocab_size), (128, 100));
    assert_eq!(m.wte().num_embeddings(), 128);
    let padded = m.logits(&x).unwrap();
    assert_eq!(padded.shape(), [1, 15, 100]);
    assert_eq!(padded.to_vec().unwrap(), logits, "the same scores");
    assert_eq!(
        m.lm_loss_from(&x, &y).unwrap().item().unwrap(),
        before,
        "the same loss"
    );
    // Weight decay and a few steps: the padded rows get no gradient and stay zero.
    let mut opt = GptAdamW::new(1e-2, 1, 5).init(&dev, &m).unwrap();
    for _ in 0..3 {
        opt.zero_grad();
        m.lm_loss_from(&x, &y).unwrap().backward().unwrap();
        opt.step().unwrap();
    }
    let table = m.wte().to_vec().unwrap();
    assert!(
        table[100 * 32..].iter().all(|&v| v == 0.0),
        "padded rows stay zero"
    );
    assert!(table[..100 * 32].iter().any(|&v| v != 0.0));
    let out = std::env::temp_dir().join(format!("kiln-gpt2-padded-{}", std::process::id()));
    m.save_folder(&out, None).unwrap();
    let back = Gpt2LMHeadModel::from_folder(&dev, &out).unwrap();
    assert_eq!(
        back.wte().num_embeddings(),
        100,
        "the saved table is unpadded"
    );
    assert_eq!(back.wte().to_vec().unwrap(), table[..100 * 32]);
    std::fs::remove_dir_all(&out).unwrap();
    let tokens = m
        .generate(
            &ids[..4],
            &kiln_nn::hf::GenerationConfig::sample(8, 2.0, 0, 1),
        )
        .unwrap();
    assert!(tokens.iter().all(|&t| (0..100).contains(&t)), "{tokens:?}");
    // The groups: matrices and embeddings decay, vectors do not.
    let (decay, no_decay) = decay_groups(&m.named_parameters());
    assert!(decay.iter().all(|t| t.shape().len() == 2));
    assert!(no_decay.iter().all(|t| t.shape().len() == 1));
    assert_eq!(decay.len() + no_decay.len(), m.parameters().len());
}
