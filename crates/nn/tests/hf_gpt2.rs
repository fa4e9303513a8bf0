//! The tiny random GPT-2 of tests/fixtures/hf/tiny_gpt2 against transformers (float64 goldens):
//! token ids from its byte-level BPE tokenizer.json, logits, the LM loss, gradients of every
//! parameter (the tied head's included), greedy generation token for token with and without the
//! key/value cache; sampling from a seed; the Hub's naming layout and f16/bf16 files; a saved
//! folder reloaded bit for bit.

mod common;

use common::{check_rel, dev, fixture, scratch, Golden};
use kiln_graph::{no_grad, Tensor};
use kiln_nn::hf::{GenerationConfig, Gpt2LMHeadModel, Tokenizer};
use kiln_nn::{AdamW, Module};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

fn golden() -> Golden {
    Golden::read(&fixture("tiny_gpt2/golden.safetensors"))
}

fn model() -> Gpt2LMHeadModel {
    Gpt2LMHeadModel::from_folder(&dev(), &fixture("tiny_gpt2")).unwrap()
}

#[test]
fn tiny_gpt2_matches_transformers() {
    let dev = dev();
    let g = golden();
    let m = model();
    let dir = fixture("tiny_gpt2");
    let tok = Tokenizer::for_model(&dir, m.config().vocab_size, m.config().n_positions).unwrap();
    let texts: Vec<String> = serde_json::from_str(&g.metadata("texts")).unwrap();
    let ids: Vec<i32> = texts
        .iter()
        .flat_map(|t| tok.encode(t, true).unwrap())
        .collect();
    assert_eq!(ids, g.i32("input_ids"), "BPE token ids");
    let prompt = tok.encode(&g.metadata("gen_prompt_text"), true).unwrap();
    assert_eq!(prompt, g.i32("gen_prompt"));

    let x = Tensor::from_i32(&dev, &ids, &[2, 16]).unwrap();
    let logits = no_grad(|| m.logits(&x)).unwrap();
    assert_eq!(logits.shape(), [2, 16, 512]);
    check_rel("logits", &logits.to_vec().unwrap(), &g.f32("logits"), 1e-4);

    let loss = m.lm_loss(&ids, 2).unwrap();
    check_rel("loss", &loss.to_vec().unwrap(), &g.f32("loss"), 1e-5);
    loss.backward().unwrap();
    let named = m.named_parameters();
    assert_eq!(named.len(), 28);
    let mut worst = 0.0f64;
    for (name, t) in &named {
        let got = t.grad().unwrap().to_f32(&dev).unwrap();
        worst = worst.max(check_rel(
            &format!("grad.{name}"),
            &got,
            &g.f32(&format!("grad.{name}")),
            1e-4,
        ));
    }
    eprintln!("worst relative gradient difference: {worst:.3e}");
}

#[test]
fn greedy_generation_matches_with_and_without_the_cache() {
    let g = golden();
    let m = model();
    let prompt = g.i32("gen_prompt");
    let want = g.i32("gen_greedy");
    let cached = m.generate(&prompt, &GenerationConfig::greedy(20)).unwrap();
    assert_eq!(cached, want, "greedy tokens with the cache");
    let full = m
        .generate(&prompt, &GenerationConfig::greedy(20).without_cache())
        .unwrap();
    assert_eq!(full, want, "greedy tokens without the cache");

    // The cached step's logits are the full recomputation's.
    let mut cache = m.new_cache().unwrap();
    let a = m.prefill(&mut cache, &prompt).unwrap();
    let b = m.next_logits_full(&prompt).unwrap();
    check_rel("prefill logits", &a, &b, 1e-5);
    let step = m.decode_step(&mut cache, want[0]).unwrap();
    let mut seq = prompt.clone();
    seq.push(want[0]);
    check_rel(
        "decode-step logits",
        &step,
        &m.next_logits_full(&seq).unwrap(),
        1e-5,
    );
    assert_eq!(cache.len(), prompt.len() + 1);

    // Sampling: the same seed gives the same tokens, with or without the cache.
    let s = GenerationConfig::sample(12, 0.8, 20, 7);
    let s1 = m.generate(&prompt, &s).unwrap();
    assert_eq!(s1, m.generate(&prompt, &s.clone().without_cache()).unwrap());
    let others: Vec<Vec<i32>> = (8..12)
        .map(|seed| {
            m.generate(&prompt, &GenerationConfig::sample(12, 0.8, 20, seed))
                .unwrap()
        })
        .collect();
    assert!(others.iter().any(|o| *o != s1), "seeds change the samples");
    // top_k = 1 is greedy whatever the temperature.
    let k1 = m
        .generate(&prompt, &GenerationConfig::sample(20, 5.0, 1, 3))
        .unwrap();
    assert_eq!(k1, want);
    // Stopping at a token: generation ends right after its first occurrence.
    let k = (2..want.len())
        .find(|&k| !want[..k].contains(&want[k]))
        .unwrap();
    let stop = m
        .generate(
            &prompt,
            &GenerationConfig::greedy(20).stop_at(Some(want[k])),
        )
        .unwrap();
    assert_eq!(stop, want[..=k]);

    // Past n_positions (64): refused before anything runs.
    let msg = m
        .generate(&prompt, &GenerationConfig::greedy(60))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("n_positions"), "{msg}");
    let msg = m
        .generate(&[600], &GenerationConfig::greedy(1))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("600"), "{msg}");
}

/// tiny_gpt2's tensors as (name, dtype, shape, bytes).
fn tensors() -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(fixture("tiny_gpt2/model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect()
}

fn write(path: &Path, ts: &[(String, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView)> = ts
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    std::fs::write(path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

fn folder_with(name: &str, ts: &[(String, Dtype, Vec<usize>, Vec<u8>)]) -> std::path::PathBuf {
    let d = scratch(name);
    std::fs::copy(fixture("tiny_gpt2/config.json"), d.join("config.json")).unwrap();
    write(&d.join("model.safetensors"), ts);
    d
}

fn values(m: &Gpt2LMHeadModel) -> Vec<(String, Vec<f32>)> {
    m.named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.to_vec().unwrap()))
        .collect()
}

#[test]
fn hub_layout_half_precision_and_round_trip() {
    let dev = dev();
    let reference = values(&model());

    // The Hub's GPT2Model layout: no `transformer.` prefix, causal-mask buffers, and a stored
    // copy of the tied head.
    let mut hub: Vec<_> = tensors()
        .into_iter()
        .map(|(n, d, s, b)| (n.trim_start_matches("transformer.").to_string(), d, s, b))
        .collect();
    hub.push((
        "h.0.attn.bias".into(),
        Dtype::F32,
        vec![1, 1, 4, 4],
        vec![0; 64],
    ));
    let wte = hub.iter().find(|t| t.0 == "wte.weight").unwrap().clone();
    hub.push(("lm_head.weight".into(), wte.1, wte.2, wte.3));
    let d = folder_with("gpt2-hub", &hub);
    assert_eq!(
        values(&Gpt2LMHeadModel::from_folder(&dev, &d).unwrap()),
        reference
    );
    std::fs::remove_dir_all(&d).unwrap();

    // bf16 and f16 files are widened on load (values equal to the rounded f32s).
    for (dt, name) in [(Dtype::BF16, "bf16"), (Dtype::F16, "f16")] {
        let half: Vec<_> = tensors()
            .into_iter()
            .map(|(n, _, s, b)| {
                let out: Vec<u8> = b
                    .chunks_exact(4)
                    .flat_map(|c| {
                        let v = f32::from_le_bytes(c.try_into().unwrap());
                        match dt {
                            Dtype::BF16 => half::bf16::from_f32(v).to_le_bytes(),
                            _ => half::f16::from_f32(v).to_le_bytes(),
                        }
                    })
                    .collect();
                (n, dt, s, out)
            })
            .collect();
        let d = folder_with(&format!("gpt2-{name}"), &half);
        let m = Gpt2LMHeadModel::from_folder(&dev, &d).unwrap();
        for ((n, got), (_, want)) in values(&m).iter().zip(&reference) {
            for (a, b) in got.iter().zip(want) {
                let r = match dt {
                    Dtype::BF16 => half::bf16::from_f32(*b).to_f32(),
                    _ => half::f16::from_f32(*b).to_f32(),
                };
                assert_eq!(a.to_bits(), r.to_bits(), "{name} {n}");
            }
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    // A trained model saved and reloaded is bit for bit the same, without lm_head.weight.
    let mut m = model();
    m.train();
    let g = golden();
    let mut opt = AdamW::new(1e-2).init(&dev, m.parameters()).unwrap();
    m.lm_loss(&g.i32("input_ids"), 2)
        .unwrap()
        .backward()
        .unwrap();
    opt.begin_step().unwrap();
    opt.step().unwrap();
    let trained = values(&m);
    assert_ne!(trained, reference);
    let out = scratch("gpt2-roundtrip");
    m.save_folder(&out, Some(&fixture("tiny_gpt2"))).unwrap();
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let names = SafeTensors::deserialize(&bytes).unwrap().names().len();
    assert_eq!(names, 28, "no lm_head.weight: the head is tied");
    let back = Gpt2LMHeadModel::from_folder(&dev, &out).unwrap();
    for ((n, a), (_, b)) in trained.iter().zip(&values(&back)) {
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{n} changed in the round trip"
        );
    }
    assert!(out.join("tokenizer.json").is_file() && out.join("generation_config.json").is_file());
    std::fs::remove_dir_all(&out).unwrap();

    // A weights file with a layer the config does not have, and one without ln_f.
    let mut extra = tensors();
    extra.push((
        "transformer.h.2.ln_1.weight".into(),
        Dtype::F32,
        vec![32],
        vec![0; 128],
    ));
    extra.retain(|t| t.0 != "transformer.ln_f.bias");
    let d = folder_with("gpt2-extra", &extra);
    let msg = Gpt2LMHeadModel::from_folder(&dev, &d)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("missing 1 (transformer.ln_f.bias)")
            && msg.contains("unexpected 1 (transformer.h.2.ln_1.weight)")
            && msg.contains("n_layer = 2"),
        "{msg}"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// A byte-level BPE trained by the tokenizers library's trainer: at most the tokens asked for,
/// every text round-trips (bytes are its alphabet), `<|endoftext|>` is a token, the file reloads;
/// fewer than 257 tokens is refused.
#[test]
fn a_trained_byte_level_bpe_round_trips_any_text() {
    let dir = scratch("bpe");
    let text: String = std::fs::read_to_string(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../data/tinyshakespeare/input.txt"),
    )
    .unwrap()
    .chars()
    .take(20_000)
    .collect();
    let src = dir.join("text.txt");
    std::fs::write(&src, &text).unwrap();
    let out = dir.join("tokenizer.json");
    let tok = Tokenizer::train_byte_level_bpe(std::slice::from_ref(&src), 400, &out).unwrap();
    assert!(
        tok.vocab_size() <= 400 && tok.vocab_size() > 300,
        "{}",
        tok.vocab_size()
    );
    assert!(tok.token_to_id("<|endoftext|>").is_some());
    for s in [&text[..500], "Ça va? naïve café — 'tis 1115394 words!\n\n"] {
        let ids = tok.encode(s, false).unwrap();
        assert!(ids.iter().all(|&i| (i as usize) < tok.vocab_size()));
        assert_eq!(tok.decode(&ids, false).unwrap(), s, "round trip");
    }
    // Merges learnt: the training text takes fewer tokens than bytes.
    assert!(tok.encode(&text[..2000], false).unwrap().len() < 1500);
    let again = Tokenizer::from_file(&out).unwrap();
    assert_eq!(
        again.encode(&text[..300], false).unwrap(),
        tok.encode(&text[..300], false).unwrap()
    );
    let msg = Tokenizer::train_byte_level_bpe(&[src], 100, &dir.join("small.json"))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("at least 257 tokens"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}
