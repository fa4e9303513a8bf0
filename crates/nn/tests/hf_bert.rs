//! The tiny random BERT of tests/fixtures/hf/tiny_bert against transformers (float64 goldens):
//! token ids from tokenizer.json, hidden states, pooling, gradients of every parameter; a
//! fine-tuned folder saved and reloaded bit for bit; and the inputs that must fail clearly.

mod common;

use common::{check_abs, check_rel, dev, fixture, scratch, Golden};
use kiln_graph::Tensor;
use kiln_nn::hf::bert::{mean_pooling, normalize};
use kiln_nn::hf::{BertModel, Tokenizer};
use kiln_nn::NnError;
use kiln_nn::{AdamW, Module};
use std::path::Path;

fn golden() -> Golden {
    Golden::read(&fixture("tiny_bert/golden.safetensors"))
}

fn sentences(g: &Golden) -> Vec<String> {
    serde_json::from_str(&g.metadata("sentences")).unwrap()
}

/// The golden batch: ids and mask from the tokenizer, token types set by hand in the fixture.
fn batch(g: &Golden, tok: &Tokenizer) -> kiln_nn::hf::Batch {
    let s = sentences(g);
    let refs: Vec<&str> = s.iter().map(String::as_str).collect();
    let mut b = tok.encode_batch(&refs).unwrap();
    b.token_type_ids = g.i32("token_type_ids");
    b
}

#[test]
fn tiny_bert_matches_transformers() {
    let dev = dev();
    let dir = fixture("tiny_bert");
    let g = golden();
    let model = BertModel::from_folder(&dev, &dir).unwrap();
    let tok = Tokenizer::for_model(&dir, model.config().vocab_size, model.max_length()).unwrap();
    let b = batch(&g, &tok);
    assert_eq!(b.input_ids, g.i32("input_ids"), "token ids");
    assert_eq!(b.attention_mask, g.i32("attention_mask"), "attention mask");
    assert_eq!([b.batch_size, b.seq_len], [3, 24]);

    let h = model.forward_batch(&b).unwrap();
    check_rel(
        "last_hidden_state",
        &h.to_vec().unwrap(),
        &g.f32("last_hidden_state"),
        1e-4,
    );
    let pooled = mean_pooling(&h, &b).unwrap();
    check_rel(
        "mean_pooled",
        &pooled.to_vec().unwrap(),
        &g.f32("mean_pooled"),
        1e-4,
    );
    let n = normalize(&pooled).unwrap();
    check_abs(
        "normalized",
        &n.to_vec().unwrap(),
        &g.f32("normalized"),
        2e-5,
    );
    let p = model.pooler_output(&h).unwrap();
    check_rel(
        "pooler_output",
        &p.to_vec().unwrap(),
        &g.f32("pooler_output"),
        1e-4,
    );
    let emb = model.sentence_embeddings(&b).unwrap();
    assert_eq!(emb.to_vec().unwrap(), n.to_vec().unwrap());

    // loss = sum(h * W); gradients of every parameter (padding row and pooler exactly 0).
    let lw = Tensor::from_f32(&dev, &g.f32("loss_weight"), &g.shape("loss_weight")).unwrap();
    let loss = h.mul(&lw).unwrap().sum_all().unwrap();
    check_rel("loss", &loss.to_vec().unwrap(), &g.f32("loss"), 1e-5);
    loss.backward().unwrap();
    let named = model.named_parameters();
    assert_eq!(named.len(), 39);
    let mut worst = 0.0f64;
    for (name, t) in &named {
        let want = g.f32(&format!("grad.{name}"));
        let got = match t.grad() {
            Some(gr) => gr.to_f32(&dev).unwrap(),
            None => vec![0.0; t.numel()],
        };
        if name.starts_with("pooler") {
            assert!(got.iter().all(|v| *v == 0.0), "{name} gets no gradient");
            continue;
        }
        if name.ends_with("self.key.bias") {
            // Exactly 0 in exact arithmetic (a key bias shifts a query's scores by one constant,
            // which softmax ignores): both sides hold rounding noise, compared absolutely.
            check_abs(&format!("grad.{name}"), &got, &want, 1e-5);
            continue;
        }
        worst = worst.max(check_rel(&format!("grad.{name}"), &got, &want, 1e-4));
    }
    eprintln!("worst relative gradient difference: {worst:.3e}");
    let wg = named[0].1.grad().unwrap().to_f32(&dev).unwrap();
    assert!(
        wg[..32].iter().all(|v| *v == 0.0),
        "padding row 0 gets no gradient"
    );
}

fn params(m: &BertModel) -> Vec<(String, Vec<f32>)> {
    m.named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.to_vec().unwrap()))
        .collect()
}

#[test]
fn fine_tuned_folder_reloads_bit_for_bit() {
    let dev = dev();
    let src = fixture("tiny_bert");
    let g = golden();
    let mut model = BertModel::from_folder(&dev, &src).unwrap();
    model.train();
    let tok = Tokenizer::for_model(&src, model.config().vocab_size, 64).unwrap();
    let b = batch(&g, &tok);
    let before = params(&model);
    let mut opt = AdamW::new(1e-2).init(&dev, model.parameters()).unwrap();
    let loss = model.sentence_embeddings(&b).unwrap().sum_all().unwrap();
    loss.backward().unwrap();
    opt.step().unwrap();
    let after = params(&model);
    assert_ne!(before[3].1, after[3].1, "one step moved the weights");

    let out = scratch("bert-roundtrip");
    model.save_folder(&out, Some(&src)).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f} written");
    }
    let back = BertModel::from_folder(&dev, &out).unwrap();
    assert_eq!(back.config().hidden_size, model.config().hidden_size);
    let reloaded = params(&back);
    assert_eq!(reloaded.len(), after.len());
    for ((n, a), (m, c)) in after.iter().zip(&reloaded) {
        assert_eq!(n, m);
        assert!(
            a.iter().zip(c).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{n} changed in the round trip"
        );
    }
    // Unknown config fields survive, with the architecture named.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["initializer_range"], 0.2);
    assert_eq!(cfg["architectures"][0], "BertModel");
    model.eval();
    let e1 = model.sentence_embeddings(&b).unwrap().to_vec().unwrap();
    let e2 = back.sentence_embeddings(&b).unwrap().to_vec().unwrap();
    assert_eq!(e1, e2);
    std::fs::remove_dir_all(&out).unwrap();
}

/// A copy of tiny_bert with `edit` applied to its files.
fn broken_copy(name: &str, edit: impl FnOnce(&Path)) -> std::path::PathBuf {
    let d = scratch(name);
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture("tiny_bert").join(f), d.join(f)).unwrap();
    }
    edit(&d);
    d
}

#[test]
fn bad_inputs_fail_with_clear_errors() {
    let dev = dev();
    // A config whose hidden size disagrees with the weights: every mis-shaped tensor, and the
    // field, are named.
    let d = broken_copy("bert-hidden", |d| {
        let p = d.join("config.json");
        let t = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, t.replace("\"hidden_size\": 32", "\"hidden_size\": 64")).unwrap();
    });
    let err = BertModel::from_folder(&dev, &d).err().unwrap();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, NnError::Weights { .. }), "{msg}");
    assert!(
        msg.contains("config.json's hidden_size = 64 disagrees with the file's 32"),
        "{msg}"
    );
    assert!(msg.contains("embeddings.word_embeddings.weight"), "{msg}");
    std::fs::remove_dir_all(&d).unwrap();

    // Fewer layers in the config than in the file.
    let d = broken_copy("bert-layers", |d| {
        let p = d.join("config.json");
        let t = std::fs::read_to_string(&p).unwrap();
        std::fs::write(
            &p,
            t.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 1"),
        )
        .unwrap();
    });
    let msg = BertModel::from_folder(&dev, &d).err().unwrap().to_string();
    assert!(
        msg.contains("unexpected") && msg.contains("num_hidden_layers = 1"),
        "{msg}"
    );
    std::fs::remove_dir_all(&d).unwrap();

    // A truncated weights file.
    let d = broken_copy("bert-truncated", |d| {
        let p = d.join("model.safetensors");
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    });
    let msg = BertModel::from_folder(&dev, &d).err().unwrap().to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("truncated"),
        "{msg}"
    );
    std::fs::remove_dir_all(&d).unwrap();

    // A tokenizer.json from another model (GPT-2's 512-token BPE for a 1,000-word BERT).
    let d = broken_copy("bert-tokenizer", |d| {
        std::fs::copy(
            fixture("tiny_gpt2/tokenizer.json"),
            d.join("tokenizer.json"),
        )
        .unwrap();
    });
    let msg = Tokenizer::for_model(&d, 1000, 64)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("512 tokens") && msg.contains("vocab_size 1000"),
        "{msg}"
    );
    std::fs::remove_dir_all(&d).unwrap();

    // A missing folder names what it wanted.
    let msg = BertModel::from_folder(&dev, Path::new("/nonexistent/kiln-model"))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("/nonexistent/kiln-model"), "{msg}");

    // Text longer than the 64 positions: the tokenizer truncates (keeping [SEP]), and a batch
    // built past the limit is refused before anything reads out of bounds.
    let src = fixture("tiny_bert");
    let model = BertModel::from_folder(&dev, &src).unwrap();
    let tok = Tokenizer::for_model(&src, 1000, model.max_length()).unwrap();
    let long = "speak ".repeat(200);
    let b = tok.encode_batch(&[long.as_str(), "short"]).unwrap();
    assert_eq!((b.seq_len, b.truncated), (64, 1));
    assert_eq!(b.input_ids[63], tok.token_to_id("[SEP]").unwrap());
    let h = model.forward_batch(&b).unwrap();
    assert_eq!(h.shape(), [2, 64, 32]);
    let too_long = kiln_nn::hf::Batch::from_ids(&[vec![5; 65]], 0).unwrap();
    let msg = model.forward_batch(&too_long).err().unwrap().to_string();
    assert!(msg.contains("max_position_embeddings"), "{msg}");
    let bad_id = kiln_nn::hf::Batch::from_ids(&[vec![2, 1000, 3]], 0).unwrap();
    let msg = model.forward_batch(&bad_id).err().unwrap().to_string();
    assert!(msg.contains("1000") && msg.contains("input_ids"), "{msg}");
}

/// The dropout offsets (the embeddings', then three per layer) are what a training checkpoint
/// stores: restoring them repeats the same dropout masks.
#[test]
fn dropout_offsets_restore_the_same_masks() {
    let dev = dev();
    // The fixture trains without dropout (for its golden gradients); this copy drops 10%.
    let src = broken_copy("dropout", |d| {
        let cfg = d.join("config.json");
        let text = std::fs::read_to_string(&cfg).unwrap();
        let edited = text.replace(
            "\"hidden_dropout_prob\": 0.0",
            "\"hidden_dropout_prob\": 0.1",
        );
        assert_ne!(text, edited);
        std::fs::write(&cfg, edited).unwrap();
    });
    let g = golden();
    let mut model = BertModel::from_folder(&dev, &src).unwrap();
    model.train();
    let tok = Tokenizer::for_model(&src, model.config().vocab_size, 64).unwrap();
    let b = batch(&g, &tok);
    let saved = model.rng_offsets();
    assert_eq!(saved.len(), 1 + 3 * model.config().num_hidden_layers);
    let first = model.sentence_embeddings(&b).unwrap().to_vec().unwrap();
    model.advance_rng().unwrap();
    assert_ne!(model.rng_offsets(), saved);
    let moved = model.sentence_embeddings(&b).unwrap().to_vec().unwrap();
    assert_ne!(first, moved, "the next step's masks differ");
    assert_eq!(model.set_rng_offsets(&saved).unwrap(), saved.len());
    let again = model.sentence_embeddings(&b).unwrap().to_vec().unwrap();
    assert_eq!(first, again);
    std::fs::remove_dir_all(&src).unwrap();
}
