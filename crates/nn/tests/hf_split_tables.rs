//! Tensors larger than one storage binding. GPT-2 small's 50,257 x 768 word embedding (154 MB)
//! is over lavapipe's 128 MiB binding limit; here a GPT-2 with a 4,096 x 32 table (512 KiB)
//! runs on a device whose limit is lowered to 192 KiB (KILN_MAX_STORAGE_BINDING), so its table
//! lives in three blocks: lookups and their gradients, the tied head's logits, the loss, an
//! AdamW step, generation and saving must all give what the same model gives in one block on a
//! device with the full limit.
//!
//! One test in its own binary: it sets an environment variable before it creates its devices.

use kiln_graph::{Device, Tensor};
use kiln_nn::hf::{GenerationConfig, Gpt2Config, Gpt2LMHeadModel};
use kiln_nn::{AdamW, Module};
use kiln_ops::DType;

const LIMIT: u64 = 192 * 1024;

fn config() -> Gpt2Config {
    Gpt2Config::new(4096, 32, 32, 2, 4).with_dropout(0.0)
}

fn flat_grads(m: &Gpt2LMHeadModel) -> Vec<f32> {
    let mut v = m.wte().grad_to_vec().unwrap().unwrap();
    for (n, t) in m.named_parameters() {
        if !n.starts_with("transformer.wte") {
            v.extend(t.grad().unwrap().to_f32(t.device()).unwrap());
        }
    }
    v
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn a_table_over_the_binding_limit_trains_and_generates_in_blocks() {
    let full = Device::new().expect("a GPU or software Vulkan adapter (run scripts/setup.sh)");
    std::env::set_var("KILN_MAX_STORAGE_BINDING", LIMIT.to_string());
    let small = Device::new().unwrap();
    std::env::remove_var("KILN_MAX_STORAGE_BINDING");
    assert_eq!(small.limits().max_storage_buffer_binding_size, LIMIT);
    // The table cannot be one buffer there.
    let table_bytes = 4096 * 32 * 4;
    assert!(table_bytes > LIMIT);
    let err = small
        .alloc(table_bytes as usize / 4, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("max_storage_buffer_binding_size"), "{err}");

    let one = Gpt2LMHeadModel::new_random(&full, config(), 0.2, 11).unwrap();
    let split = Gpt2LMHeadModel::new_random(&small, config(), 0.2, 11).unwrap();
    assert_eq!(one.wte().blocks().len(), 1);
    let rows: Vec<usize> = split.wte().blocks().iter().map(|b| b.shape()[0]).collect();
    assert_eq!(rows, [1536, 1536, 1024]);
    assert_eq!(one.wte().to_vec().unwrap(), split.wte().to_vec().unwrap());

    // Ids in every block, repeated, both ends of the table.
    let ids: Vec<i32> = (0..32)
        .map(|i| (i * 997 + 5) % 4096)
        .chain([0, 4095])
        .take(32)
        .collect();
    // Logits of 8 positions (128 KiB: all 32 at once would exceed the limit themselves).
    let x1 = Tensor::from_i32(&full, &ids[..8], &[1, 8]).unwrap();
    let x2 = Tensor::from_i32(&small, &ids[..8], &[1, 8]).unwrap();
    let l1 = kiln_nn::no_grad(|| one.logits(&x1))
        .unwrap()
        .to_vec()
        .unwrap();
    let l2 = kiln_nn::no_grad(|| split.logits(&x2))
        .unwrap()
        .to_vec()
        .unwrap();
    assert!(
        max_diff(&l1, &l2) <= 1e-5,
        "logits differ by {}",
        max_diff(&l1, &l2)
    );

    // The loss (logits made a few rows at a time under the limit), gradients, an AdamW step.
    let mut opts = Vec::new();
    for m in [&one, &split] {
        let dev = m.wte().blocks()[0].device().clone();
        let opt = AdamW::new(1e-2).init(&dev, m.parameters()).unwrap();
        opts.push(opt);
    }
    let loss1 = one.lm_loss(&ids, 2).unwrap();
    let loss2 = split.lm_loss(&ids, 2).unwrap();
    let (a, b) = (loss1.item().unwrap(), loss2.item().unwrap());
    assert!((a - b).abs() <= 1e-5 * a.abs(), "loss {a} vs {b}");
    loss1.backward().unwrap();
    loss2.backward().unwrap();
    let (g1, g2) = (flat_grads(&one), flat_grads(&split));
    assert!(g1.iter().any(|v| *v != 0.0));
    assert!(
        max_diff(&g1, &g2) <= 1e-6,
        "gradients differ by {}",
        max_diff(&g1, &g2)
    );
    for o in &mut opts {
        o.step().unwrap();
    }
    let (w1, w2) = (one.wte().to_vec().unwrap(), split.wte().to_vec().unwrap());
    // Adam divides by sqrt(v): gradients equal to rounding move an update by rounding too.
    assert!(
        max_diff(&w1, &w2) <= 1e-5,
        "updated tables differ by {}",
        max_diff(&w1, &w2)
    );

    // Generation through the cache, block-wise head included.
    let g = GenerationConfig::greedy(12);
    assert_eq!(
        one.generate(&ids[..5], &g).unwrap(),
        split.generate(&ids[..5], &g).unwrap()
    );

    // Saved from blocks as one Hugging Face tensor, reloaded whole on the full device.
    let dir = std::env::temp_dir().join(format!("kiln-hf-split-{}", std::process::id()));
    split.save_folder(&dir, None).unwrap();
    let back = Gpt2LMHeadModel::from_folder(&full, &dir).unwrap();
    assert_eq!(back.wte().blocks().len(), 1);
    assert_eq!(back.wte().to_vec().unwrap(), w2);
    std::fs::remove_dir_all(&dir).unwrap();
}
