//! Sentence embeddings with all-MiniLM-L6-v2 (or any BERT folder), as sentence-transformers
//! computes them: prints the cosine similarity table, then one JSON line with sentences per
//! second. `--bench N` times N passes over a batch of texts of a fixed length instead.
//!
//! ```text
//! cargo run --release --features hf --example embed -- "A man is eating food." "A man is eating bread." "The sky is blue."
//! cargo run --release --features hf --example embed -- --file sentences.txt
//! cargo run --release --features hf --example embed -- --bench 10          # batch 32 x 32 tokens
//! ```
//!
//! The model comes from scripts/setup.sh (all-MiniLM-L6-v2 into ~/.cache/kiln/models); kiln
//! never downloads anything itself.
use anyhow::{ensure, Context, Result};
use clap::Parser;
use kiln::device::Device;
use kiln::hf::{Batch, BertModel, Tokenizer};
use kiln::nn::no_grad;
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Embed sentences with a sentence-transformers BERT and compare them")]
struct Args {
    /// Sentences to embed (default: four examples).
    sentences: Vec<String>,
    /// Read the sentences from this file instead, one per line (blank lines skipped).
    #[arg(long)]
    file: Option<PathBuf>,
    /// A BERT model folder (default: all-MiniLM-L6-v2 in the cache scripts/setup.sh fills).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Sentences per forward pass.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096))]
    batch: u64,
    /// Benchmark: time this many passes over one batch of `--batch` texts of `--bench-tokens`
    /// tokens each (cut from tiny Shakespeare), after one untimed pass.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100000))]
    bench: Option<u64>,
    /// Tokens per text in --bench, [CLS] and [SEP] included.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(3..=512))]
    bench_tokens: u64,
}

fn main() -> Result<()> {
    let a = Args::parse();
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
    let model =
        BertModel::from_folder(&dev, &dir).with_context(|| format!("loading {}", dir.display()))?;
    let tok = Tokenizer::for_model(&dir, model.config().vocab_size, model.max_length())?;
    let batch = a.batch as usize;
    if let Some(iters) = a.bench {
        return bench(
            &dev,
            &model,
            &tok,
            batch,
            a.bench_tokens as usize,
            iters as usize,
            &dir,
        );
    }
    let sentences: Vec<String> = match &a.file {
        Some(f) => std::fs::read_to_string(f)
            .with_context(|| format!("reading {}", f.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        None if a.sentences.is_empty() => [
            "A man is eating a piece of bread.",
            "A man is eating food.",
            "The girl is carrying a baby.",
            "A monkey is playing drums.",
        ]
        .map(String::from)
        .to_vec(),
        None => a.sentences.clone(),
    };
    ensure!(!sentences.is_empty(), "no sentences to embed");

    let t0 = std::time::Instant::now();
    let mut emb: Vec<Vec<f32>> = Vec::with_capacity(sentences.len());
    let mut tokens = 0;
    for chunk in sentences.chunks(batch) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let b = tok.encode_batch(&refs)?;
        tokens += b.lengths().iter().sum::<usize>();
        if b.truncated > 0 {
            eprintln!("note: {} text(s) cut to {} tokens", b.truncated, b.seq_len);
        }
        let e = no_grad(|| model.sentence_embeddings(&b))?.to_vec()?;
        let dim = e.len() / chunk.len();
        emb.extend(e.chunks(dim).map(<[f32]>::to_vec));
    }
    let secs = t0.elapsed().as_secs_f64();

    // Cosine similarities (the embeddings have unit length: dot products).
    let n = sentences.len();
    let label = |i: usize| {
        let s = &sentences[i];
        let short: String = s.chars().take(40).collect();
        if short.len() < s.len() {
            format!("{short}...")
        } else {
            short
        }
    };
    println!("cosine similarity");
    for i in 0..n {
        let row: Vec<String> = (0..n)
            .map(|j| {
                format!(
                    "{:6.3}",
                    emb[i].iter().zip(&emb[j]).map(|(x, y)| x * y).sum::<f32>()
                )
            })
            .collect();
        println!("[{i:2}] {}  {}", row.join(" "), label(i));
    }
    println!(
        "{}",
        serde_json::json!({
            "example": "embed",
            "model": dir.display().to_string(),
            "sentences": n,
            "tokens": tokens,
            "dim": emb[0].len(),
            "seconds": secs,
            "sentences_per_second": n as f64 / secs,
            "adapter": dev.adapter().name,
        })
    );
    Ok(())
}

/// Times `iters` passes over `batch` texts of exactly `len` tokens.
fn bench(
    dev: &Device,
    model: &BertModel,
    tok: &Tokenizer,
    batch: usize,
    len: usize,
    iters: usize,
    dir: &std::path::Path,
) -> Result<()> {
    ensure!(
        len <= model.max_length(),
        "--bench-tokens {len} exceeds the model's {} positions",
        model.max_length()
    );
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/tinyshakespeare/input.txt"
    ))?;
    // Line by line: the tokenizer truncates each text to the model's length.
    let mut ids = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        ids.extend(tok.encode(line, false)?);
        if ids.len() >= batch * len {
            break;
        }
    }
    let (cls, sep) = (
        tok.token_to_id("[CLS]")
            .context("the tokenizer has no [CLS]")?,
        tok.token_to_id("[SEP]")
            .context("the tokenizer has no [SEP]")?,
    );
    let rows: Vec<Vec<i32>> = ids
        .chunks_exact(len - 2)
        .take(batch)
        .map(|c| [vec![cls], c.to_vec(), vec![sep]].concat())
        .collect();
    ensure!(
        rows.len() == batch,
        "the text gave only {} texts of {len} tokens",
        rows.len()
    );
    let b = Batch::from_ids(&rows, tok.pad_id())?;
    no_grad(|| model.sentence_embeddings(&b))?.to_vec()?; // pipelines compiled, buffers pooled
    let t0 = std::time::Instant::now();
    for _ in 0..iters {
        no_grad(|| model.sentence_embeddings(&b))?.to_vec()?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let sps = (iters * batch) as f64 / secs;
    eprintln!(
        "{batch} x {len} tokens: {:.1} ms per batch, {sps:.1} sentences/s",
        1e3 * secs / iters as f64
    );
    println!(
        "{}",
        serde_json::json!({
            "example": "embed",
            "bench": true,
            "model": dir.display().to_string(),
            "batch": batch,
            "tokens_per_text": len,
            "iterations": iters,
            "ms_per_batch": 1e3 * secs / iters as f64,
            "sentences_per_second": sps,
            "adapter": dev.adapter().name,
        })
    );
    Ok(())
}
