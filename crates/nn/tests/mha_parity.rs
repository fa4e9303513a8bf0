//! kiln's MultiHeadAttention against PyTorch's `nn.MultiheadAttention` on the same state dict
//! (tests/fixtures/hf/mha, made by scripts/fixtures/make_hf_fixtures.py in float64): outputs
//! without masks, with a key-padding mask, with additive and boolean attention masks, causal
//! self-attention, the head-averaged weights, and the gradients of every parameter and input.

use kiln_graph::{Device, Tensor};
use kiln_nn::transformer::{AttentionOptions, MultiHeadAttention, MultiHeadAttentionConfig};
use kiln_nn::Module;
use kiln_ops::numeric::{assert_close, to_f64};
use safetensors::{Dtype, SafeTensors};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/hf/mha")
        .join(name)
}

struct Golden(Vec<u8>);

impl Golden {
    fn read(name: &str) -> Golden {
        Golden(std::fs::read(fixture(name)).expect("fixture (committed in tests/fixtures/hf)"))
    }
    fn get(&self, name: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("golden has {name}"));
        (t.dtype(), t.shape().to_vec(), t.data().to_vec())
    }
    fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let (dt, shape, data) = self.get(name);
        assert_eq!(dt, Dtype::F32, "{name}");
        let v = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        (v, shape)
    }
    fn tensor(&self, dev: &Device, name: &str) -> Tensor {
        let (dt, shape, data) = self.get(name);
        let words = data.chunks_exact(4).map(|c| c.try_into().unwrap());
        match dt {
            Dtype::F32 => {
                let v: Vec<f32> = words.map(f32::from_le_bytes).collect();
                Tensor::from_f32(dev, &v, &shape).unwrap()
            }
            Dtype::I32 => {
                let v: Vec<i32> = words.map(i32::from_le_bytes).collect();
                Tensor::from_i32(dev, &v, &shape).unwrap()
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

/// Worst |got - want| over the tensor, after checking it within tolerance.
fn check(what: &str, got: &[f32], want: &[f32]) -> f64 {
    let want = to_f64(want);
    assert_close(what, got, &want, 1e-5, 1e-4);
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (*g as f64 - w).abs())
        .fold(0.0, f64::max);
    eprintln!("{what}: max |diff| {worst:.3e}");
    worst
}

fn model(dev: &Device) -> MultiHeadAttention {
    let mha = MultiHeadAttentionConfig::new(16, 4).init(dev).unwrap();
    let report = kiln_nn::serialize::load_unverified(
        &fixture("state.safetensors"),
        &mha.named_parameters(),
        true,
    )
    .unwrap();
    assert_eq!(report, Default::default());
    mha
}

#[test]
fn multihead_attention_matches_pytorch_with_every_mask() {
    let dev = Device::shared().expect("a GPU or software Vulkan adapter (run scripts/setup.sh)");
    let g = Golden::read("golden.safetensors");
    let mha = model(&dev);
    let q = g.tensor(&dev, "query");
    let k = g.tensor(&dev, "key");
    let v = g.tensor(&dev, "value");
    let kpm = g.tensor(&dev, "key_padding_mask");
    let float_mask = g.tensor(&dev, "attn_mask_float");
    let bool_mask = g.tensor(&dev, "attn_mask_bool");
    let causal_mask = g.tensor(&dev, "causal_mask");
    let run = |q: &Tensor, k: &Tensor, v: &Tensor, opts: AttentionOptions| {
        let (y, w) = mha.forward_with(q, k, v, &opts).unwrap();
        (y.to_vec().unwrap(), w.map(|w| w.to_vec().unwrap()))
    };
    let want = |name: &str| g.f32(name).0;
    let o = AttentionOptions::new;

    check("no mask", &run(&q, &k, &v, o()).0, &want("out_nomask"));
    check(
        "key padding (fused)",
        &run(&q, &k, &v, o().key_padding_mask(&kpm)).0,
        &want("out_kpm"),
    );
    let (y, w) = run(&q, &k, &v, o().key_padding_mask(&kpm).need_weights(true));
    check("key padding (explicit)", &y, &want("out_kpm"));
    let w = w.unwrap();
    check("averaged weights", &w, &want("attn_weights_kpm"));
    // Masked keys get exactly zero weight, as in PyTorch.
    let (_, shape) = g.f32("attn_weights_kpm");
    let s = shape[2];
    for (i, wv) in w.iter().enumerate() {
        let (b, j) = (i / (shape[1] * s), i % s);
        if (b == 0 && j >= 5) || (b == 1 && (j == 3 || j == 6)) {
            assert_eq!(*wv, 0.0, "weight of masked key {j} in batch {b}");
        }
    }
    check(
        "float mask + key padding",
        &run(
            &q,
            &k,
            &v,
            o().attn_mask(&float_mask).key_padding_mask(&kpm),
        )
        .0,
        &want("out_kpm_float_mask"),
    );
    check(
        "bool mask + key padding",
        &run(&q, &k, &v, o().attn_mask(&bool_mask).key_padding_mask(&kpm)).0,
        &want("out_kpm_bool_mask"),
    );
    check(
        "causal self-attention (fused)",
        &run(&q, &q, &q, AttentionOptions::causal()).0,
        &want("out_causal_self"),
    );
    check(
        "causal self-attention (boolean mask)",
        &run(&q, &q, &q, o().attn_mask(&causal_mask)).0,
        &want("out_causal_self"),
    );
    let (_, per_head) = run(
        &q,
        &k,
        &v,
        o().need_weights(true).average_attn_weights(false),
    );
    assert_eq!(per_head.unwrap().len(), 2 * 4 * 5 * 7);
    // A mask of the wrong shape is an error naming what it expected.
    let err = mha
        .forward_with(&q, &k, &v, &o().attn_mask(&causal_mask))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("[5, 7]"), "{err}");
}

#[test]
fn multihead_attention_gradients_match_pytorch() {
    let dev = Device::shared().unwrap();
    let g = Golden::read("golden.safetensors");
    let kpm = g.tensor(&dev, "key_padding_mask");
    let lw = g.tensor(&dev, "loss_weight");
    // The fused kernel's backward, then the explicit path's (asked for the weights).
    for need_weights in [false, true] {
        let mha = model(&dev);
        let inputs: Vec<Tensor> = ["query", "key", "value"]
            .iter()
            .map(|n| g.tensor(&dev, n).requires_grad_(true).unwrap())
            .collect();
        let opts = AttentionOptions::new()
            .key_padding_mask(&kpm)
            .need_weights(need_weights);
        let (y, _) = mha
            .forward_with(&inputs[0], &inputs[1], &inputs[2], &opts)
            .unwrap();
        let loss = y.mul(&lw).unwrap().sum_all().unwrap();
        check(
            &format!("loss (weights {need_weights})"),
            &loss.to_vec().unwrap(),
            &g.f32("loss").0,
        );
        loss.backward().unwrap();
        let mut named = mha.named_parameters();
        for (n, t) in ["query", "key", "value"].iter().zip(&inputs) {
            named.push((n.to_string(), t.clone()));
        }
        for (name, t) in named {
            let got = t.grad().unwrap().to_f32(&dev).unwrap();
            check(
                &format!("grad.{name} (weights {need_weights})"),
                &got,
                &g.f32(&format!("grad.{name}")).0,
            );
        }
    }
}
