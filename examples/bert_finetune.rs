//! Contrastive fine-tuning of all-MiniLM-L6-v2 as sentence-transformers trains it
//! (MultipleNegativesRankingLoss: in-batch negatives, cosine similarities scaled by 20,
//! cross-entropy), on pairs of consecutive lines of tiny Shakespeare: a line and the next line
//! of the same speech (speaker names and blank lines skipped), from the first 90% of the text
//! (the character models' training part). Before and after, held-out next-line retrieval: for
//! lines of the last 10%, is the next line the most similar of 64 candidates (the next lines of
//! 64 pairs that share no line)? AdamW with
//! linear warm-up and decay; optional frozen lower layers and mixed precision. The result is
//! saved as a Hugging Face folder that transformers and sentence-transformers load. Ends with
//! one JSON line.
//!
//! ```text
//! cargo run --release --features hf --example bert_finetune                    # minutes on lavapipe
//! cargo run --release --features hf --example bert_finetune -- --preset gpu
//! python -c "from sentence_transformers import SentenceTransformer as S; \
//!            print(S('runs/bert_finetune').encode(['To be, or not to be']).shape)"
//! ```
use anyhow::{ensure, Context, Result};
use clap::{Parser, ValueEnum};
use kiln::device::Device;
use kiln::graph::autocast_f16_when;
use kiln::hf::{BertModel, Tokenizer};
use kiln::nn::schedule::Schedule;
use kiln::nn::{no_grad, AdamW, Module, Tensor};
use kiln::ops::random::Rng;
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum)]
enum Preset {
    /// Minutes on a software adapter: 20 steps of 32 pairs at learning rate 2e-4, texts cut to
    /// 32 tokens, 4 x 64 held-out queries.
    Small,
    /// A real GPU: 1,000 steps of 64 pairs at learning rate 5e-5, 64 tokens, 16 x 64 held-out
    /// queries.
    Gpu,
}

#[derive(Parser)]
#[command(about = "Fine-tune MiniLM on next-line pairs of tiny Shakespeare")]
struct Args {
    /// Size of the run.
    #[arg(long, value_enum, default_value_t = Preset::Small)]
    preset: Preset,
    /// Optimizer steps (default from the preset).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    steps: Option<u64>,
    /// Pairs per step (default from the preset).
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..=4096))]
    batch: Option<u64>,
    /// Peak learning rate (AdamW, weight decay 0.01, 10% linear warm-up, then linear decay;
    /// default from the preset).
    #[arg(long, value_parser = positive_f32)]
    lr: Option<f32>,
    /// Freeze the embeddings and this many lower encoder layers.
    #[arg(long, default_value_t = 0)]
    freeze_layers: usize,
    /// Mixed precision: f16 matmuls with f32 sums, master weights and gradients.
    #[arg(long)]
    f16: bool,
    /// The model folder (default: all-MiniLM-L6-v2 in the cache scripts/setup.sh fills).
    #[arg(long)]
    model: Option<PathBuf>,
    /// The text.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/tinyshakespeare/input.txt"))]
    data: PathBuf,
    /// Where to save the fine-tuned Hugging Face folder.
    #[arg(long, default_value = "runs/bert_finetune")]
    out: PathBuf,
    /// Seed of the pair order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Held-out retrieval every N steps as well as before and after (default: halfway).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    eval_every: Option<u64>,
    /// Folder for history.csv and history.svg: the training loss and held-out top-1 at each
    /// evaluation (default: beside --out).
    #[arg(long)]
    report: Option<PathBuf>,
}

/// A finite number above 0 (the learning rate), refused at parse time otherwise.
fn positive_f32(s: &str) -> std::result::Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("must be a finite number above 0, got {v}"));
    }
    Ok(v)
}

/// (line, next line of the same speech) for the lines of `text`.
fn pairs(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut prev: Option<&str> = None;
    for line in text.lines().map(str::trim) {
        // A blank line ends a speech; "ROMEO:" names the next speaker.
        let speaker = line.ends_with(':') && line.split_whitespace().count() <= 3;
        if line.is_empty() || speaker {
            prev = None;
            continue;
        }
        if let Some(p) = prev {
            out.push((p.to_string(), line.to_string()));
        }
        prev = Some(line);
    }
    out
}

/// Normalised embeddings of `texts`, 64 at a time, without gradients.
fn embed(model: &BertModel, tok: &Tokenizer, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(64) {
        let b = tok.encode_batch(chunk)?;
        let e = no_grad(|| model.sentence_embeddings(&b))?.to_vec()?;
        let dim = e.len() / chunk.len();
        out.extend(e.chunks(dim).map(<[f32]>::to_vec));
    }
    Ok(out)
}

/// Top-1 next-line retrieval among the 64 candidates of each group.
fn retrieval(model: &BertModel, tok: &Tokenizer, held: &[(String, String)]) -> Result<f64> {
    let mut hits = 0;
    for group in held.chunks(64) {
        let q: Vec<&str> = group.iter().map(|p| p.0.as_str()).collect();
        let c: Vec<&str> = group.iter().map(|p| p.1.as_str()).collect();
        let (eq, ec) = (embed(model, tok, &q)?, embed(model, tok, &c)?);
        for (i, e) in eq.iter().enumerate() {
            let score = |j: usize| e.iter().zip(&ec[j]).map(|(a, b)| a * b).sum::<f32>();
            let best = (0..ec.len())
                .max_by(|&a, &b| score(a).total_cmp(&score(b)))
                .unwrap();
            hits += usize::from(best == i);
        }
    }
    Ok(hits as f64 / held.len() as f64)
}

fn main() -> Result<()> {
    let a = Args::parse();
    let (steps, batch, max_len, groups) = match a.preset {
        Preset::Small => (20, 32, 32, 4),
        Preset::Gpu => (1000, 64, 64, 16),
    };
    let steps = a.steps.map_or(steps, |s| s as usize);
    let batch = a.batch.map_or(batch, |b| b as usize);
    let dir = match &a.model {
        Some(d) => d.clone(),
        None => kiln::hf::minilm_dir()?,
    };
    let dev = Device::new()?;
    eprintln!(
        "adapter: {} ({})",
        dev.adapter().name,
        dev.adapter().backend
    );
    let mut model =
        BertModel::from_folder(&dev, &dir).with_context(|| format!("loading {}", dir.display()))?;
    ensure!(
        a.freeze_layers <= model.config().num_hidden_layers,
        "--freeze-layers {} exceeds the model's {} layers",
        a.freeze_layers,
        model.config().num_hidden_layers
    );
    let tok = Tokenizer::for_model(&dir, model.config().vocab_size, max_len)?;

    // The character models' split: the first 90% of the characters train, the rest is held out.
    let text = std::fs::read_to_string(&a.data)
        .with_context(|| format!("reading {}", a.data.display()))?;
    let cut = text
        .char_indices()
        .nth(text.chars().count() * 9 / 10)
        .map_or(text.len(), |(i, _)| i);
    let train = pairs(&text[..cut]);
    // Held-out pairs share no line: consecutive pairs do ((a, b) then (b, c)), and a query
    // among its own candidates would always find itself.
    let mut used = std::collections::HashSet::new();
    let held: Vec<(String, String)> = pairs(&text[cut..])
        .into_iter()
        .filter(|(q, c)| {
            let fresh = !used.contains(q) && !used.contains(c);
            if fresh {
                used.insert(q.clone());
                used.insert(c.clone());
            }
            fresh
        })
        .take(64 * groups)
        .collect();
    ensure!(
        held.len() == 64 * groups,
        "only {} held-out pairs",
        held.len()
    );
    ensure!(train.len() >= batch, "only {} training pairs", train.len());
    eprintln!(
        "{} training pairs, {} held-out queries",
        train.len(),
        held.len()
    );

    let t_eval = std::time::Instant::now();
    let before = retrieval(&model, &tok, &held)?;
    let eval_secs = t_eval.elapsed().as_secs_f64();
    eprintln!(
        "held-out top-1 of 64 before: {:.1}% ({eval_secs:.0} s)",
        100.0 * before
    );

    model.train();
    for p in model.lower_parameters(a.freeze_layers) {
        p.requires_grad_(false)?;
    }
    let trainable: Vec<Tensor> = model
        .parameters()
        .into_iter()
        .filter(Tensor::requires_grad)
        .collect();
    let lr = a.lr.unwrap_or(match a.preset {
        Preset::Small => 2e-4,
        Preset::Gpu => 5e-5,
    });
    let mut opt = AdamW::new(lr)
        .with_weight_decay(0.01)
        .init(&dev, trainable)?;
    let warmup = (steps as u64 / 10).max(1);
    opt.set_schedule(Schedule::Warmup {
        steps: warmup,
        then: Box::new(Schedule::LinearDecay {
            from: warmup,
            total: steps as u64,
        }),
    });
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut rng = Rng::new(a.seed);
    let mut at = order.len();
    let labels = Tensor::from_i32(&dev, &(0..batch as i32).collect::<Vec<_>>(), &[batch])?;
    let (mut losses, mut step_secs) = (Vec::new(), Vec::new());
    let eval_every = a.eval_every.map_or((steps / 2).max(1), |e| e as usize);
    // (step, top-1) at each evaluation; history rows for the report.
    let mut curve = vec![(0usize, before)];
    let mut history: Vec<kiln::train::EpochStats> = Vec::new();
    let (mut since, mut since_secs) = (0usize, 0.0f64);
    let mut eval_total = 0.0f64;
    let t_train = std::time::Instant::now();
    for step in 0..steps {
        if at + batch > order.len() {
            // A new epoch in a new order (Fisher-Yates from the seed).
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
            at = 0;
        }
        let ids = &order[at..at + batch];
        at += batch;
        let t0 = std::time::Instant::now();
        // Anchors then positives in one batch: one forward pass.
        let texts: Vec<&str> = ids
            .iter()
            .map(|&i| train[i].0.as_str())
            .chain(ids.iter().map(|&i| train[i].1.as_str()))
            .collect();
        let b = tok.encode_batch(&texts)?;
        opt.zero_grad();
        let loss = autocast_f16_when(a.f16, || -> Result<Tensor> {
            let e = model.sentence_embeddings(&b)?;
            let (anchors, positives) = (e.slice(0, 0, batch)?, e.slice(0, batch, batch)?);
            // Cosine similarities (unit vectors) times sentence-transformers' scale 20.
            let scores = anchors
                .matmul_with(
                    &positives,
                    kiln::ops::matmul::Matmul::new().transpose_b(true),
                    None,
                )?
                .affine(20.0, 0.0)?;
            Ok(scores.cross_entropy(&labels, None)?)
        })?;
        loss.backward()?;
        opt.step()?;
        model.advance_rng()?;
        let l = loss.item()?;
        ensure!(l.is_finite(), "the loss became {l} at step {step}");
        losses.push(l);
        step_secs.push(t0.elapsed().as_secs_f64());
        if step % 5 == 0 || step + 1 == steps {
            eprintln!(
                "step {step:4}  loss {l:.4}  {:.2} s/step",
                step_secs.last().unwrap()
            );
        }
        since += 1;
        since_secs += step_secs.last().unwrap();
        let done = step + 1;
        if done.is_multiple_of(eval_every) || done == steps {
            let t0 = std::time::Instant::now();
            model.eval();
            let top1 = retrieval(&model, &tok, &held)?;
            model.train();
            eval_total += t0.elapsed().as_secs_f64();
            let mean = losses[losses.len() - since..].iter().sum::<f32>() / since as f32;
            eprintln!(
                "step {done:4}  loss {mean:.4} (mean since the last evaluation)  held-out top-1 of 64 {:.1}%",
                100.0 * top1
            );
            curve.push((done, top1));
            history.push(kiln::train::EpochStats {
                epoch: done,
                train_loss: mean,
                val_loss: None,
                val_accuracy: Some(top1 as f32),
                train_seconds: since_secs,
                samples_per_second: (since * batch) as f64 / since_secs.max(1e-9),
                skipped_steps: 0,
            });
            (since, since_secs) = (0, 0.0);
        }
    }
    // Training time without the evaluations made along the way.
    let train_secs = t_train.elapsed().as_secs_f64() - eval_total;
    model.eval();
    let after = curve.last().map_or(before, |c| c.1);
    eprintln!("held-out top-1 of 64 after: {:.1}%", 100.0 * after);
    let report = a
        .report
        .clone()
        .unwrap_or_else(|| a.out.with_extension("report"));
    kiln::train::report::write_reports_by(&report, &history, "step")?;
    eprintln!(
        "wrote {0}/history.csv and {0}/history.svg",
        report.display()
    );
    model.save_folder(&a.out, Some(&dir))?;
    eprintln!(
        "saved {} (transformers and sentence-transformers load it)",
        a.out.display()
    );
    // kiln's embeddings of a few held-out lines beside the folder, for
    // `scripts/fixtures/make_hf_fixtures.py check-folder OUT --expect FILE` (transformers must
    // give the same).
    let probe: Vec<&str> = held.iter().take(8).map(|p| p.0.as_str()).collect();
    let e = embed(&model, &tok, &probe)?;
    let check = a.out.with_extension("kiln-embeddings.safetensors");
    kiln::hf::weights::save_with_metadata(
        &check,
        &[("embeddings".into(), vec![e.len(), e[0].len()], e.concat())],
        &[("sentences".into(), serde_json::to_string(&probe)?)],
    )?;

    // The first step compiles pipelines: the median is the steady step time.
    let mut sorted = step_secs.clone();
    sorted.sort_by(f64::total_cmp);
    let first = &losses[..losses.len().min(5)];
    let last = &losses[losses.len().saturating_sub(5)..];
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    println!(
        "{}",
        serde_json::json!({
            "example": "bert_finetune",
            "model": dir.display().to_string(),
            "top1_of_64_before": before,
            "top1_of_64_after": after,
            "held_out_queries": held.len(),
            "steps": steps,
            "batch_pairs": batch,
            "lr": lr,
            "max_tokens": max_len,
            "freeze_layers": a.freeze_layers,
            "f16": a.f16,
            "loss_first5": mean(first),
            "loss_last5": mean(last),
            "median_step_seconds": sorted[sorted.len() / 2],
            "train_seconds": train_secs,
            "eval_seconds": eval_secs + eval_total,
            "top1_curve": curve,
            "loss_curve": history.iter().map(|h| (h.epoch, h.train_loss)).collect::<Vec<_>>(),
            "saved": a.out.display().to_string(),
            "kiln_embeddings": check.display().to_string(),
            "adapter": dev.adapter().name,
        })
    );
    Ok(())
}
