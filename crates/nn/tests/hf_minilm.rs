//! The real all-MiniLM-L6-v2 (sentence-transformers) against transformers and
//! sentence-transformers (tests/fixtures/hf/minilm, float64 goldens): token ids, last hidden
//! states (<= 1e-4) and normalised embeddings (<= 2e-5).
//!
//! The model folder comes from scripts/setup.sh --tests (scripts/fetch-minilm.sh) into the cache
//! `kiln_nn::hf::models_dir()` names. Without it this test FAILS, naming that step: CI runs setup
//! first, so a missing model is a broken setup, not a reason to skip.

mod common;

use common::{check_abs, dev, fixture, Golden};
use kiln_nn::hf::{BertModel, Tokenizer};

#[test]
fn minilm_matches_transformers_and_sentence_transformers() {
    let dir = kiln_nn::hf::minilm_dir().unwrap_or_else(|e| panic!("{e}"));
    // The file scripts/fetch-minilm.sh checks by SHA-256 has this size.
    let size = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .len();
    assert_eq!(
        size,
        90_868_376,
        "{}: not the expected all-MiniLM-L6-v2 weights",
        dir.display()
    );
    let dev = dev();
    let g = Golden::read(&fixture("minilm/golden.safetensors"));
    let sentences: Vec<String> = serde_json::from_str(&g.metadata("sentences")).unwrap();
    let refs: Vec<&str> = sentences.iter().map(String::as_str).collect();

    let model = BertModel::from_folder(&dev, &dir).unwrap();
    let tok = Tokenizer::for_model(&dir, model.config().vocab_size, model.max_length()).unwrap();
    // sentence-transformers' max_seq_length, not the file's 128 padding.
    assert_eq!(tok.max_length(), Some(256));
    let b = tok.encode_batch(&refs).unwrap();
    assert_eq!(b.input_ids, g.i32("input_ids"), "token ids");
    assert_eq!(b.attention_mask, g.i32("attention_mask"));
    assert_eq!(b.token_type_ids, g.i32("token_type_ids"));
    assert_eq!(
        tok.encode(refs[0], true).unwrap(),
        [101, 1037, 2158, 2003, 5983, 1037, 3538, 1997, 7852, 1012, 102]
    );

    let h = kiln_nn::no_grad(|| model.forward_batch(&b)).unwrap();
    check_abs(
        "last_hidden_state",
        &h.to_vec().unwrap(),
        &g.f32("last_hidden_state"),
        1e-4,
    );
    let e = kiln_nn::no_grad(|| model.sentence_embeddings(&b)).unwrap();
    check_abs(
        "embeddings",
        &e.to_vec().unwrap(),
        &g.f32("embeddings"),
        2e-5,
    );
}
