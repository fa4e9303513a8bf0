//! Text generation with any Hugging Face GPT-2 folder (config.json, model.safetensors,
//! tokenizer.json): greedy or temperature/top-k sampling from a seed, through a key/value cache
//! (one position's work per token) or, with --no-cache, recomputing the whole sequence each step.
//! --compare runs both and reports tokens per second for each. Ends with one JSON line.
//!
//! ```text
//! cargo run --release --features hf --example generate -- --model path/to/gpt2 --prompt "ROMEO:" --max-new-tokens 50
//! cargo run --release --features hf --example generate -- --random-small --compare   # GPT-2 small's shape, random weights
//! ```
//!
//! Without --model it runs the tiny random GPT-2 of tests/fixtures/hf (its text is noise).
use anyhow::{Context, Result};
use clap::Parser;
use kiln::device::Device;
use kiln::hf::{GenerationConfig, Gpt2Config, Gpt2LMHeadModel, Tokenizer};
use std::path::PathBuf;

#[derive(Parser)]
#[command(about = "Generate text with a Hugging Face GPT-2")]
struct Args {
    /// A GPT-2 model folder.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/hf/tiny_gpt2"))]
    model: PathBuf,
    /// Instead of --model: GPT-2 small's shape (124M parameters) with random weights, prompted
    /// with token ids, to measure speed without a checkpoint.
    #[arg(long)]
    random_small: bool,
    /// The prompt.
    #[arg(long, default_value = "ROMEO:\nWhat light")]
    prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_new_tokens: u64,
    /// Always take the most likely token (otherwise sample).
    #[arg(long)]
    greedy: bool,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Sample among the k most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Recompute the whole sequence for every token instead of using the key/value cache.
    #[arg(long)]
    no_cache: bool,
    /// Generate with and without the cache and report both speeds.
    #[arg(long)]
    compare: bool,
}

fn main() -> Result<()> {
    let a = Args::parse();
    anyhow::ensure!(
        a.temperature > 0.0 && a.temperature.is_finite(),
        "--temperature must be positive, got {}",
        a.temperature
    );
    let dev = Device::new()?;
    eprintln!(
        "adapter: {} ({})",
        dev.adapter().name,
        dev.adapter().backend
    );
    let (model, tok, name) = if a.random_small {
        let c = Gpt2Config::default().with_dropout(0.0);
        let mut m = Gpt2LMHeadModel::new_random(&dev, c, 0.02, a.seed)?;
        kiln::nn::Module::eval(&mut m);
        (m, None, "random GPT-2 small".to_string())
    } else {
        let m = Gpt2LMHeadModel::from_folder(&dev, &a.model)
            .with_context(|| format!("loading {}", a.model.display()))?;
        let t = Tokenizer::for_model(&a.model, m.config().vocab_size, m.config().n_positions)?;
        (m, Some(t), a.model.display().to_string())
    };
    eprintln!(
        "{name}: {} layers, width {}, vocabulary {}, word embedding in {} block(s)",
        model.config().n_layer,
        model.config().n_embd,
        model.config().vocab_size,
        model.wte().blocks().len()
    );
    let prompt: Vec<i32> = match &tok {
        Some(t) => t.encode(&a.prompt, true)?,
        // Token ids of GPT-2's vocabulary for "ROMEO:\nWhat light" would mean nothing to random
        // weights: any ten ids do.
        None => (0..10).map(|i| 464 + 37 * i).collect(),
    };
    anyhow::ensure!(!prompt.is_empty(), "the prompt gave no tokens");
    let n = a.max_new_tokens as usize;
    let mut cfg = if a.greedy {
        GenerationConfig::greedy(n)
    } else {
        GenerationConfig::sample(n, a.temperature, a.top_k, a.seed)
    };
    cfg.use_cache = !a.no_cache;

    // One token first, so pipelines are compiled before the clock starts.
    model.generate(&prompt, &GenerationConfig::greedy(1))?;
    let mut runs = Vec::new();
    let modes = if a.compare {
        vec![true, false]
    } else {
        vec![cfg.use_cache]
    };
    let mut out = Vec::new();
    for cache in modes {
        let c = GenerationConfig {
            use_cache: cache,
            ..cfg.clone()
        };
        let t0 = std::time::Instant::now();
        let tokens = model.generate(&prompt, &c)?;
        let secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "{} tokens {} the cache: {:.2} tokens/s",
            tokens.len(),
            if cache { "with" } else { "without" },
            tokens.len() as f64 / secs
        );
        if !out.is_empty() && out != tokens {
            eprintln!("note: the two runs chose different tokens");
        }
        runs.push((cache, tokens.len(), secs));
        out = tokens;
    }
    let text = match &tok {
        Some(t) => {
            let all: Vec<i32> = prompt.iter().chain(&out).copied().collect();
            t.decode(&all, false)?
        }
        None => format!("{out:?}"),
    };
    println!("{text}");
    let speed = |cache: bool| runs.iter().find(|r| r.0 == cache).map(|r| r.1 as f64 / r.2);
    println!(
        "{}",
        serde_json::json!({
            "example": "generate",
            "model": name,
            "prompt_tokens": prompt.len(),
            "new_tokens": out.len(),
            "sampling": if a.greedy { "greedy" } else { "top_k" },
            "tokens_per_second_cache": speed(true),
            "tokens_per_second_no_cache": speed(false),
            "adapter": dev.adapter().name,
        })
    );
    Ok(())
}
