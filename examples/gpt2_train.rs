//! Trains GPT-2 as llm.c does: token shards, AdamW with GPT-2's parameter groups, clipping, warm-up
//! and cosine decay, gradient accumulation to a total batch in tokens, and one line per step with
//! the loss, learning rate, gradient norm, time, tokens per second and MFU; then a sample and one
//! JSON line.
//!
//! ```text
//! cargo run --release --features hf,dist --example gpt2_train -- --preset small      # minutes on lavapipe
//! cargo run --release --features hf,dist --example gpt2_train                        # GPT-2 small (124M)
//! cargo run --release --features hf,dist --example gpt2_train -- --preset gpu --steps 20
//! cargo run --release --features hf,dist --example gpt2_train -- --model DIR         # continue a Hugging Face GPT-2
//! cargo run --release --features hf,dist --example gpt2_train -- prepare --data FILE --out DIR   # shards only
//! mpirun -np 2 target/release/examples/gpt2_train --preset small --distributed
//! ```
//!
//! Data: a text (tiny Shakespeare by default) is tokenised once into llm.c's uint16 shards
//! (`train.bin`, `val.bin`: the first 90% and the last 10% of the text) with the model folder's
//! `tokenizer.json`, a `--tokenizer` file, or else a byte-level BPE that the `tokenizers` library's
//! trainer fits to the text (kept beside the shards). Windows of context + 1 tokens are dealt out
//! in a seeded order per epoch; under `--distributed` each process takes its own micro-batches.
//!
//! Vocabulary padding: the word embedding (and so the tied head's matmul) is padded from the true
//! vocabulary to a multiple of 128 rows (`--pad-vocab`; GPT-2's 50,257 becomes 50,304 = 393 x 128,
//! as llm.c pads it), so the head runs on whole tiles; the padded columns are cut off before the
//! softmax, never take probability, stay zero, and a saved Hugging Face folder has the true table.
//!
//! MFU: model FLOPs per token as llm.c counts them, 6 N + 6 L C T (N parameters, padding included;
//! L layers, C width, T context), times tokens per second, over the adapter's peak (f32, or f16
//! with `--f16`) from kiln's table of known GPUs; `null` where the peak is unknown (lavapipe).
use anyhow::{bail, ensure, Context, Result};

#[path = "common/mod.rs"]
mod common;
#[path = "common/dist.rs"]
mod dist_args;

use clap::{Parser, Subcommand, ValueEnum};
use kiln::dist::{Dist, DistributedDataParallel};
use kiln::graph::{autocast_f16_when, no_grad, Device, Tensor};
use kiln::hf::{GenerationConfig, Gpt2Config, Gpt2LMHeadModel, Tokenizer};
use kiln::nn::shards::{inputs_and_targets, write_shard, TokenDataset, TokenLoader};
use kiln::nn::Module;
use kiln::train::checkpoint::{save_training, RunSettings};
use kiln::train::finite::FiniteWatch;
use kiln::train::gpt::{gpt_flops_per_token, mfu, AccumulatedStep, GptAdamW};
use kiln::train::lm_train::LmConfig;
use kiln::train::EpochStats;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Preset {
    /// GPT-2 small (124M): 12 layers, 12 heads, width 768, context 1,024, vocabulary 50,257;
    /// micro-batch 4, no accumulation, 50 steps.
    Gpt2,
    /// Minutes on a software adapter: 4 layers, 4 heads, width 128, context 128, a 2,048-token BPE;
    /// micro-batch 8, 300 steps.
    Small,
    /// A real GPU, as llm.c's GPT-2 small run: micro-batch 16 x 1,024 tokens accumulating to
    /// 524,288 tokens a step, learning rate 6e-4, 700 warm-up steps of 19,073.
    Gpu,
}

/// The shape and the run a preset stands for, before flags override it.
struct Shape {
    n_layer: usize,
    n_head: usize,
    n_embd: usize,
    context: usize,
    vocab: usize,
    batch: usize,
    total_tokens: Option<usize>,
    steps: usize,
    warmup: usize,
    lr: f32,
    dropout: f32,
}

impl Preset {
    fn shape(self) -> Shape {
        match self {
            Preset::Gpt2 => Shape {
                n_layer: 12,
                n_head: 12,
                n_embd: 768,
                context: 1024,
                vocab: 50257,
                batch: 4,
                total_tokens: None,
                steps: 50,
                warmup: 5,
                lr: 6e-4,
                dropout: 0.0,
            },
            Preset::Small => Shape {
                n_layer: 4,
                n_head: 4,
                n_embd: 128,
                context: 128,
                vocab: 2048,
                batch: 8,
                total_tokens: None,
                steps: 300,
                warmup: 30,
                lr: 3e-3,
                dropout: 0.0,
            },
            Preset::Gpu => Shape {
                n_layer: 12,
                n_head: 12,
                n_embd: 768,
                context: 1024,
                vocab: 50257,
                batch: 16,
                total_tokens: Some(524_288),
                steps: 19_073,
                warmup: 700,
                lr: 6e-4,
                dropout: 0.0,
            },
        }
    }
}

/// Where the text, the tokenizer and the shards come from.
#[derive(clap::Args, Clone, Debug)]
struct DataArgs {
    /// The text to train on (tokenised into shards on first use).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/tinyshakespeare/input.txt"))]
    data: PathBuf,
    /// Folder of the shards (train.bin, val.bin) and the tokenizer.json that made them (default:
    /// runs/gpt2_train/<text>-<tokenizer>).
    #[arg(long)]
    shards: Option<PathBuf>,
    /// A tokenizer.json to tokenise with (default: the --model folder's, else a byte-level BPE
    /// trained on the text).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Fraction of the text held out for the validation shard (its end).
    #[arg(long, default_value_t = 0.1, value_parser = common::fraction)]
    val_fraction: f32,
}

#[derive(Subcommand)]
enum Command {
    /// Tokenises the text into train.bin and val.bin (llm.c's format) and exits.
    Prepare {
        #[command(flatten)]
        data: DataArgs,
        /// Tokens of the BPE to train when no tokenizer is given.
        #[arg(long, default_value_t = 50257, value_parser = common::positive)]
        vocab_size: usize,
    },
}

#[derive(Parser)]
#[command(
    about = "Train GPT-2 on token shards as llm.c does",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Model and run size (flags below override it).
    #[arg(long, value_enum, default_value_t = Preset::Gpt2)]
    preset: Preset,
    /// Continue from this Hugging Face GPT-2 folder (config.json, model.safetensors,
    /// tokenizer.json) instead of a new model; its shape wins over the shape flags.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Layers.
    #[arg(long, value_parser = common::positive)]
    n_layer: Option<usize>,
    /// Attention heads (must divide --n-embd).
    #[arg(long, value_parser = common::positive)]
    n_head: Option<usize>,
    /// Width.
    #[arg(long, value_parser = common::positive)]
    n_embd: Option<usize>,
    /// Context (tokens per window).
    #[arg(long, value_parser = common::positive)]
    context: Option<usize>,
    /// The model's vocabulary (a trained BPE gets at most this many tokens).
    #[arg(long, value_parser = common::positive)]
    vocab_size: Option<usize>,
    /// Pad the embedding's rows to a multiple of this (llm.c: 128; 1 leaves them).
    #[arg(long, default_value_t = 128, value_parser = common::positive)]
    pad_vocab: usize,
    /// Windows per micro-batch (per process).
    #[arg(long, value_parser = common::positive)]
    batch_size: Option<usize>,
    /// Tokens per optimizer step over all micro-batches and processes; a multiple of batch size
    /// x context x processes (default: one micro-batch per process).
    #[arg(long, value_parser = common::positive)]
    total_batch_tokens: Option<usize>,
    /// Optimizer steps.
    #[arg(long, value_parser = common::positive)]
    steps: Option<usize>,
    /// Peak learning rate.
    #[arg(long, value_parser = common::positive_f32)]
    lr: Option<f32>,
    /// Warm-up steps (default from the preset, at most a tenth of the steps).
    #[arg(long)]
    warmup_steps: Option<usize>,
    /// Final learning rate as a fraction of the peak.
    #[arg(long, default_value_t = 0.1, value_parser = common::unit)]
    min_lr_ratio: f32,
    /// AdamW weight decay of the matrices and embeddings.
    #[arg(long, default_value_t = 0.1, value_parser = common::unit)]
    weight_decay: f32,
    /// Clip the gradients' global norm to this.
    #[arg(long, default_value_t = 1.0, value_parser = common::positive_f32)]
    grad_clip: f32,
    /// Dropout after the embeddings, on attention and on each block's outputs.
    #[arg(long, value_parser = common::fraction)]
    dropout: Option<f32>,
    /// Mixed precision: f16 matmuls with f32 sums, master weights and gradients.
    #[arg(long)]
    f16: bool,
    /// Recompute each block's forward pass in the backward pass instead of keeping its
    /// activations.
    #[arg(long)]
    checkpoint_activations: bool,
    /// Held-out loss every N steps (and at the end).
    #[arg(long, value_parser = common::positive)]
    eval_every: Option<usize>,
    /// Held-out windows per evaluation, in batches of batch size x processes windows (the same
    /// windows at any number of processes; every process evaluates all of them).
    #[arg(long, default_value_t = 8, value_parser = common::positive)]
    eval_batches: usize,
    /// Tokens of the sample generated at the end (0: none).
    #[arg(long, default_value_t = 64)]
    sample_tokens: usize,
    /// Seed of the initialisation, the data order and the sample.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop after this step as if interrupted (writing the checkpoint where --save is given);
    /// --resume continues the same run.
    #[arg(long, value_parser = common::positive)]
    stop_at: Option<usize>,
    /// Where to save the trained model as a Hugging Face folder.
    #[arg(long)]
    save_model: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    run: common::RunArgs,
    #[command(flatten)]
    dist: dist_args::DistArgs,
}

fn main() -> Result<()> {
    let a = Args::parse();
    if let Some(Command::Prepare { data, vocab_size }) = &a.command {
        let dir = shard_dir(data, None, *vocab_size);
        let (tok, train, val) = prepare(data, None, *vocab_size, &dir)?;
        println!(
            "{}",
            serde_json::json!({
                "example": "gpt2_train",
                "prepared": dir.display().to_string(),
                "tokenizer_vocab": tok.vocab_size(),
                "train_tokens": train,
                "val_tokens": val,
            })
        );
        return Ok(());
    }
    let dist = a.dist.init()?;
    dist_args::run(dist.as_ref(), || train(&a, dist.as_ref()))
}

/// The default shard folder: the text's name and the tokenizer's.
fn shard_dir(d: &DataArgs, model: Option<&Path>, vocab: usize) -> PathBuf {
    if let Some(s) = &d.shards {
        return s.clone();
    }
    let stem = d
        .data
        .file_stem()
        .map_or("text".into(), |s| s.to_string_lossy().to_string());
    let text = if stem == "input" {
        d.data
            .parent()
            .and_then(|p| p.file_name())
            .map_or(stem.clone(), |p| p.to_string_lossy().to_string())
    } else {
        stem
    };
    let tok = match (&d.tokenizer, model) {
        (Some(t), _) => format!("tok-{:08x}", crc(&t.display().to_string())),
        (None, Some(m)) => format!("model-{:08x}", crc(&m.display().to_string())),
        (None, None) => format!("bpe{vocab}"),
    };
    PathBuf::from("runs/gpt2_train").join(format!("{text}-{tok}"))
}

fn crc(s: &str) -> u32 {
    // FNV-1a: a short, stable name for a path.
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

/// Tokenises the text into `dir` (train.bin, val.bin, tokenizer.json) unless it is there
/// already; returns the tokenizer and the token counts.
fn prepare(
    d: &DataArgs,
    model: Option<&Path>,
    vocab: usize,
    dir: &Path,
) -> Result<(Tokenizer, usize, usize)> {
    let (train, val, tok_path) = (
        dir.join("train.bin"),
        dir.join("val.bin"),
        dir.join("tokenizer.json"),
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let source = d
        .tokenizer
        .clone()
        .or_else(|| model.map(|m| m.join("tokenizer.json")));
    let tok = if tok_path.is_file() {
        Tokenizer::from_file(&tok_path)?
    } else if let Some(src) = &source {
        std::fs::copy(src, &tok_path).with_context(|| format!("copying {}", src.display()))?;
        Tokenizer::from_file(&tok_path)?
    } else {
        eprintln!(
            "training a byte-level BPE of up to {vocab} tokens on {}",
            d.data.display()
        );
        Tokenizer::train_byte_level_bpe(std::slice::from_ref(&d.data), vocab, &tok_path)?
    };
    if train.is_file() && val.is_file() {
        let n =
            |p: &Path| std::fs::metadata(p).map(|m| (m.len() as usize).saturating_sub(1024) / 2);
        return Ok((tok, n(&train)?, n(&val)?));
    }
    ensure!(
        tok.vocab_size() <= vocab,
        "{}: {} tokens, more than the model's vocabulary of {vocab}",
        tok_path.display(),
        tok.vocab_size()
    );
    let text = std::fs::read_to_string(&d.data)
        .with_context(|| format!("reading {}", d.data.display()))?;
    let cut = text
        .char_indices()
        .nth(((text.chars().count() as f64) * (1.0 - d.val_fraction as f64)) as usize)
        .map_or(text.len(), |(i, _)| i);
    let t0 = Instant::now();
    let enc = |s: &str| -> Result<Vec<u32>> {
        Ok(tok
            .encode(s, false)?
            .into_iter()
            .map(|i| i as u32)
            .collect())
    };
    let (a, b) = (enc(&text[..cut])?, enc(&text[cut..])?);
    write_shard(&train, &a, vocab)?;
    write_shard(&val, &b, vocab)?;
    eprintln!(
        "wrote {} ({} tokens) and {} ({} tokens) in {:.1} s",
        train.display(),
        a.len(),
        val.display(),
        b.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok((tok, a.len(), b.len()))
}

fn train(a: &Args, dist: Option<&Dist>) -> Result<()> {
    let root = dist_args::is_root(dist);
    let (rank, world) = dist.map_or((0, 1), |d| (d.rank(), d.size()));
    let dev = a.dist.device(dist)?;
    let s = a.preset.shape();

    // The model: a Hugging Face folder, or a new GPT-2 of the preset's shape and the flags'.
    let mut model = match &a.model {
        Some(dir) => {
            let mut m = Gpt2LMHeadModel::from_folder(&dev, dir)
                .with_context(|| format!("--model {}", dir.display()))?;
            m.train();
            m
        }
        None => {
            let mut c = Gpt2Config::new(
                a.vocab_size.unwrap_or(s.vocab),
                a.context.unwrap_or(s.context),
                a.n_embd.unwrap_or(s.n_embd),
                a.n_layer.unwrap_or(s.n_layer),
                a.n_head.unwrap_or(s.n_head),
            )
            .with_dropout(a.dropout.unwrap_or(s.dropout));
            ensure!(
                c.n_embd.is_multiple_of(c.n_head),
                "--n-head {} does not divide --n-embd {}",
                c.n_head,
                c.n_embd
            );
            c.bos_token_id = None;
            c.eos_token_id = None;
            Gpt2LMHeadModel::init_from_scratch(&dev, c, 0.02, a.seed)?
        }
    };
    let config = model.config().clone();
    let t = a.context.unwrap_or(s.context).min(config.n_positions);
    let vocab = config.vocab_size;
    model.pad_vocab(a.pad_vocab)?;
    model.set_gradient_checkpointing(a.checkpoint_activations);

    // Data.
    let dir = shard_dir(&a.data, a.model.as_deref(), vocab);
    if root {
        prepare(&a.data, a.model.as_deref(), vocab, &dir)?;
    }
    if let Some(d) = dist {
        // The other processes read what rank 0 prepared.
        d.barrier("the shards");
    }
    let tok = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    let train_set = TokenDataset::open(&[dir.join("train.bin")], t, vocab)?;
    let val_set = TokenDataset::open(&[dir.join("val.bin")], t, vocab)?;

    // The batch: micro-batches of B windows, accumulated to the total.
    let b = a.batch_size.unwrap_or(s.batch);
    let per_micro = b * t * world;
    let total = a.total_batch_tokens.or(s.total_tokens).unwrap_or(per_micro);
    ensure!(
        total.is_multiple_of(per_micro),
        "--total-batch-tokens {total} is not a multiple of batch size {b} x context {t} x {world} processes = {per_micro}"
    );
    let micro = total / per_micro;
    let steps = a.steps.unwrap_or(s.steps);
    let warmup = a
        .warmup_steps
        .unwrap_or(s.warmup.min(steps / 10))
        .min(steps);
    let lr = a.lr.unwrap_or(s.lr);
    let eval_every = a.eval_every.unwrap_or((steps / 10).max(1));

    let settings = RunSettings::new()
        .with("model", "gpt2_train")
        .with(
            "source",
            a.model
                .as_ref()
                .map_or("scratch".into(), |p| p.display().to_string()),
        )
        .with("n_layer", config.n_layer)
        .with("n_head", config.n_head)
        .with("n_embd", config.n_embd)
        .with("context", t)
        .with("vocab", vocab)
        .with("pad_vocab", model.padded_vocab_size())
        .with("batch", b)
        .with("total_batch_tokens", total)
        .with("steps", steps)
        .with("warmup", warmup)
        .with("lr", lr)
        .with("min_lr_ratio", a.min_lr_ratio)
        .with("weight_decay", a.weight_decay)
        .with("grad_clip", a.grad_clip)
        .with("dropout", config.resid_pdrop)
        .with("seed", a.seed)
        .with("f16", a.f16)
        .with("data", dir.display());
    let run = dist_args::run_args(&a.run, dist).start(settings)?;

    let mut opt = GptAdamW::new(lr, warmup as u64, steps as u64)
        .with_min_lr_ratio(a.min_lr_ratio)
        .with_weight_decay(a.weight_decay)
        .with_clip_grad_norm(Some(a.grad_clip))
        .init(&dev, &model)?;
    // --save/--resume exactly as the other language models: the loop's settings travel in an
    // LmConfig.
    let mut lm = LmConfig::default()
        .with_batch(b)
        .with_steps(steps)
        .with_eval_every(eval_every)
        .with_eval_batches(a.eval_batches)
        .with_seed(a.seed);
    run.prepare_lm(&model, &mut opt, &mut lm)?;
    let done = opt.steps() as usize;

    let params: usize = model.parameters().iter().map(Tensor::numel).sum();
    let flops_per_token = gpt_flops_per_token(params, config.n_layer, config.n_embd, t);
    let profile = dev.adapter_profile();
    let peak = if a.f16 {
        profile.peak_f16_tflops
    } else {
        profile.peak_f32_tflops
    };
    if root {
        eprintln!(
            "adapter: {} ({}){}",
            dev.adapter().name,
            dev.adapter().backend,
            dist.map_or(String::new(), |d| format!(", {} processes", d.size()))
        );
        eprintln!(
            "GPT-2: {} layers, {} heads, width {}, context {t}, vocabulary {vocab} (padded to {}); {:.2}M parameters",
            config.n_layer,
            config.n_head,
            config.n_embd,
            model.padded_vocab_size(),
            params as f64 / 1e6
        );
        eprintln!(
            "data: {} training windows, {} held out; {} tokens a step = {micro} micro-batch{} of {b} x {t}{}",
            train_set.len(),
            val_set.len(),
            total,
            if micro == 1 { "" } else { "es" },
            if world > 1 { format!(" x {world} processes") } else { String::new() }
        );
        if done > 0 {
            eprintln!("resumed at step {done}");
        }
    }

    let mut loader = TokenLoader::new(train_set.len(), b, micro, a.seed, rank, world)?;
    let x = Tensor::from_i32(&dev, &vec![0; b * t], &[b, t])?;
    let y = Tensor::from_i32(&dev, &vec![0; b * t], &[b, t])?;
    let watch = FiniteWatch::new(&dev, &model, &opt)?;
    watch.check_now(&dev, "loading, before the first step")?;
    let mut history: Vec<EpochStats> = lm.history.clone();
    let mut accumulated = AccumulatedStep::new(micro)?;
    let mut ddp = dist.map(|d| DistributedDataParallel::new(d, &dev, a.dist.ddp()));
    let mut ddp_step: Option<usize> = None;
    if let Some(p) = ddp.as_mut() {
        p.broadcast(&model, &mut opt)?;
    }
    let forward = |model: &Gpt2LMHeadModel| -> kiln::train::Result<Tensor> {
        Ok(autocast_f16_when(a.f16, || model.lm_loss_from(&x, &y))?)
    };
    let mut first_loss: Option<f32> = None;
    let mut last_loss = f32::NAN;
    let mut val_loss: Option<f32> = None;
    let (mut since_loss, mut since_n, mut since_secs) = (0.0f64, 0usize, 0.0f64);
    let (mut timed_secs, mut timed_steps) = (0.0f64, 0usize);
    // Setup's leftovers (the unpadded table, uploads) go back to the driver; the high-water
    // mark is the training loop's.
    dev.wait()?;
    dev.trim_pool();
    dev.reset_peak_memory_stats();
    let t_run = Instant::now();
    for step in done..steps {
        let t0 = Instant::now();
        let lr_now = opt.lr();
        let mut batch_of = |m: usize| -> kiln::train::Result<()> {
            let w = train_set.get_batch(&loader.indices(step as u64, m))?;
            let (xs, ys) = inputs_and_targets(&w, t);
            x.copy_from_slice(&xs)?;
            y.copy_from_slice(&ys)?;
            // A fresh dropout mask for every micro-batch after the run's first.
            if step > 0 || m > 0 {
                model.advance_rng()?;
            }
            Ok(())
        };
        let loss = match ddp.as_mut() {
            None => {
                accumulated.run(&dev, &mut opt, &mut batch_of, &mut || forward(&model))?;
                accumulated.loss().context("a loss")?.to_f32(&dev)?[0]
            }
            Some(p) => {
                // Each process's micro-batches, gradients summed locally (no_sync) and combined
                // across processes at the last one; the mean loss over every micro-batch of every
                // process.
                let mut local = 0.0f32;
                for m in 0..micro {
                    batch_of(m)?;
                    let id = match ddp_step {
                        Some(id) => id,
                        None => {
                            let id = p.record(&opt, false, || forward(&model))?;
                            ddp_step = Some(id);
                            id
                        }
                    };
                    if m + 1 < micro {
                        p.no_sync(id)?;
                        local += p.loss(id).context("a loss")?.item()?;
                    } else {
                        let last = p.step(&mut opt, id, 1.0 / (world * micro) as f32)?;
                        let mut sum = [local as f64];
                        p.dist().sum(&mut sum, "the micro-batch losses");
                        local = (sum[0] / (world * micro) as f64) as f32 + last;
                    }
                }
                local
            }
        };
        ensure!(loss.is_finite(), "the loss became {loss} at step {step}");
        let k = lm.finite_check_every;
        if k > 0 && (step + 1).is_multiple_of(k) {
            watch.check_now(&dev, &format!("step {}", step + 1))?;
        }
        let norm = opt
            .grad_norm_sq()
            .map(|n| n.to_f32(&dev).map(|v| v[0].sqrt()))
            .transpose()?;
        let secs = t0.elapsed().as_secs_f64();
        // The first step compiles pipelines and records the plans: not counted in the speed.
        if step > done {
            timed_secs += secs;
            timed_steps += 1;
        }
        first_loss.get_or_insert(loss);
        last_loss = loss;
        since_loss += loss as f64;
        since_n += 1;
        since_secs += secs;
        let tps = total as f64 / secs;
        let m = mfu(flops_per_token, tps, peak);
        if root {
            eprintln!(
                "step {:5}/{steps} | loss {loss:.4} | lr {lr_now:.2e} | norm {} | {:.1} ms | {tps:.0} tok/s | MFU {}",
                step + 1,
                norm.map_or("-".into(), |n| format!("{n:.3}")),
                secs * 1e3,
                m.map_or("-".into(), |m| format!("{:.1}%", 100.0 * m))
            );
        }
        let s1 = step + 1;
        let stop = a.stop_at == Some(s1);
        if s1.is_multiple_of(eval_every) || s1 == steps || stop {
            let v = evaluate(
                &dev,
                &mut model,
                &val_set,
                b,
                t,
                a.eval_batches * world,
                a.f16,
            )?;
            val_loss = Some(v);
            if root {
                eprintln!("step {s1:5}/{steps} | held-out loss {v:.4}");
            }
            history.push(EpochStats {
                epoch: s1,
                train_loss: (since_loss / since_n.max(1) as f64) as f32,
                val_loss: Some(v),
                val_accuracy: None,
                train_seconds: since_secs,
                samples_per_second: (since_n * total) as f64 / since_secs.max(1e-9),
                skipped_steps: 0,
            });
            (since_loss, since_n, since_secs) = (0.0, 0, 0.0);
            if let (Some(c), true) = (&lm.checkpoint, root) {
                let evals = history.len();
                if evals.is_multiple_of(c.every_epochs.max(1)) || s1 == steps || stop {
                    save_training(&c.path, &model, &opt, &history, &c.settings)?;
                }
            }
        }
        if stop {
            if root {
                eprintln!("stopped after step {s1} (--stop-at)");
            }
            break;
        }
    }
    let train_secs = t_run.elapsed().as_secs_f64();
    let memory = dev.memory_stats();
    if !root {
        return Ok(());
    }
    run.finish_by(&history, "step")?;
    if let Some(out) = &a.save_model {
        model.save_folder(out, a.model.as_deref())?;
        std::fs::copy(dir.join("tokenizer.json"), out.join("tokenizer.json"))?;
        eprintln!("saved {} (transformers loads it)", out.display());
    }
    let sample = if a.sample_tokens > 0 {
        model.eval();
        let prompt = tok.encode("ROMEO:", false)?;
        let room = config.n_positions.saturating_sub(prompt.len());
        let n = a.sample_tokens.min(room);
        let ids = model.generate(&prompt, &GenerationConfig::sample(n, 0.8, 40, a.seed))?;
        // Ids the model has but the tokenizer does not (a vocabulary larger than it) are dropped.
        let known: Vec<i32> = prompt
            .iter()
            .chain(&ids)
            .copied()
            .filter(|&i| (i as usize) < tok.vocab_size())
            .collect();
        let text = tok.decode(&known, false)?;
        eprintln!("--- sample ---\n{text}\n---");
        text
    } else {
        String::new()
    };
    let tokens_per_second = if timed_steps > 0 {
        (timed_steps * total) as f64 / timed_secs
    } else {
        f64::NAN
    };
    let mut line = common::JsonLine::new("gpt2_train")
        .num("first_loss", first_loss.map_or(f64::NAN, f64::from), 4)
        .num("final_loss", last_loss as f64, 4)
        .num("val_loss", val_loss.map_or(f64::NAN, f64::from), 4)
        .num("tokens_per_second", tokens_per_second, 1)
        .num(
            "ms_per_step",
            1e3 * timed_secs / timed_steps.max(1) as f64,
            1,
        );
    line = match mfu(flops_per_token, tokens_per_second, peak) {
        Some(m) => line.num("mfu", m, 4),
        None => line.set("mfu", serde_json::Value::Null),
    };
    line.set("memory_peak_bytes", memory.peak_pool_bytes)
        .set("memory_peak_live_bytes", memory.peak_live_bytes)
        .num(
            "bytes_per_parameter",
            memory.peak_pool_bytes as f64 / params as f64,
            2,
        )
        .set("parameters", params)
        .set("n_layer", config.n_layer)
        .set("n_head", config.n_head)
        .set("n_embd", config.n_embd)
        .set("context", t)
        .set("vocab", vocab)
        .set("padded_vocab", model.padded_vocab_size())
        .set("batch", b)
        .set("micro_batches", micro)
        .set("total_batch_tokens", total)
        .set("steps", steps)
        .set("f16", a.f16)
        .set("checkpoint_activations", a.checkpoint_activations)
        .set("processes", world)
        .num("train_seconds", train_secs, 1)
        .set("sample", sample)
        .set("adapter", dev.adapter().name.clone())
        .print()
}

/// Mean held-out loss over the first `batches` micro-batches of the validation windows (in
/// order, wrapping), without gradients and without dropout.
fn evaluate(
    dev: &Device,
    model: &mut Gpt2LMHeadModel,
    val: &TokenDataset,
    b: usize,
    t: usize,
    batches: usize,
    f16: bool,
) -> Result<f32> {
    model.eval();
    let r = no_grad(|| -> Result<f32> {
        let mut sum = 0.0f64;
        for k in 0..batches {
            let idx: Vec<usize> = (0..b).map(|i| (k * b + i) % val.len()).collect();
            let (xs, ys) = inputs_and_targets(&val.get_batch(&idx)?, t);
            let x = Tensor::from_i32(dev, &xs, &[b, t])?;
            let y = Tensor::from_i32(dev, &ys, &[b, t])?;
            sum += autocast_f16_when(f16, || model.lm_loss_from(&x, &y))?.item()? as f64;
        }
        Ok((sum / batches as f64) as f32)
    });
    model.train();
    let v = r?;
    if !v.is_finite() {
        bail!("the held-out loss became {v}");
    }
    Ok(v)
}
