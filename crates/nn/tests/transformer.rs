//! Multi-head attention and an encoder layer against CPU compositions of their equations.

use kiln_graph::{Device, Tensor};
use kiln_nn::transformer::{
    sinusoidal_positions, Activation, AttentionOptions, MultiHeadAttentionConfig,
    TransformerLayerConfig,
};
use kiln_nn::Module;
use kiln_ops::numeric::{assert_close, finite_diff, to_f64};
use kiln_ops::random::Rng;

fn dev() -> Device {
    Device::shared().expect("a GPU or software Vulkan adapter (run scripts/setup.sh)")
}

fn linear(x: &[f64], w: &[f64], b: &[f64], rows: usize, inp: usize, out: usize) -> Vec<f64> {
    (0..rows * out)
        .map(|ro| {
            b[ro % out]
                + (0..inp)
                    .map(|k| x[ro / out * inp + k] * w[ro % out * inp + k])
                    .sum::<f64>()
        })
        .collect()
}

/// [B, T, E] -> [B, H, T, D] and back.
fn split(x: &[f64], b: usize, t: usize, h: usize, d: usize) -> Vec<f64> {
    let mut o = vec![0.0; x.len()];
    for bi in 0..b {
        for ti in 0..t {
            for hi in 0..h {
                for di in 0..d {
                    o[((bi * h + hi) * t + ti) * d + di] = x[(bi * t + ti) * h * d + hi * d + di];
                }
            }
        }
    }
    o
}

fn merge(x: &[f64], b: usize, t: usize, h: usize, d: usize) -> Vec<f64> {
    let mut o = vec![0.0; x.len()];
    for bi in 0..b {
        for ti in 0..t {
            for hi in 0..h {
                for di in 0..d {
                    o[(bi * t + ti) * h * d + hi * d + di] = x[((bi * h + hi) * t + ti) * d + di];
                }
            }
        }
    }
    o
}

/// MultiheadAttention's parameters (in_proj_weight, in_proj_bias, out_proj.weight,
/// out_proj.bias) as q, k, v, out (weight then bias each), the order `cpu_mha` takes.
fn unpack_mha(p: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let e = p[3].len();
    let mut v = Vec::new();
    for i in 0..3 {
        v.push(p[0][i * e * e..(i + 1) * e * e].to_vec());
        v.push(p[1][i * e..(i + 1) * e].to_vec());
    }
    v.push(p[2].clone());
    v.push(p[3].clone());
    v
}

/// MHA on the CPU from its parameters in order (q, k, v, out; weight then bias).
fn cpu_mha(
    p: &[Vec<f64>],
    x: &[f64],
    b: usize,
    t: usize,
    e: usize,
    h: usize,
    causal: bool,
) -> Vec<f64> {
    let d = e / h;
    let proj = |i: usize| {
        split(
            &linear(x, &p[2 * i], &p[2 * i + 1], b * t, e, e),
            b,
            t,
            h,
            d,
        )
    };
    let o = kiln_ops::attention::cpu::attention(
        &proj(0),
        &proj(1),
        &proj(2),
        h,
        t,
        t,
        d,
        causal,
        None,
        1.0 / (d as f64).sqrt(),
    );
    linear(&merge(&o, b, t, h, d), &p[6], &p[7], b * t, e, e)
}

#[test]
fn multi_head_attention_matches_its_equations() {
    let d = dev();
    let mut rng = Rng::new(3);
    let (b, t, e, h) = (2, 5, 8, 2);
    let mha = MultiHeadAttentionConfig::new(e, h)
        .init_with(&d, &mut rng)
        .unwrap();
    let names: Vec<String> = mha.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "in_proj_weight",
            "in_proj_bias",
            "out_proj.weight",
            "out_proj.bias"
        ]
    );
    // PyTorch's initialisation: zero biases, xavier-uniform in_proj (bound sqrt(6 / (E + 3E))).
    let named = mha.named_parameters();
    assert!(named[1].1.to_vec().unwrap().iter().all(|v| *v == 0.0));
    assert!(named[3].1.to_vec().unwrap().iter().all(|v| *v == 0.0));
    let bound = (6.0 / (4 * e) as f32).sqrt();
    let w = named[0].1.to_vec().unwrap();
    assert!(w.iter().all(|v| v.abs() <= bound) && w.iter().any(|v| v.abs() > bound / 2.0));
    // Non-zero biases, so their paths are checked too.
    for i in [1, 3] {
        let n = named[i].1.numel();
        named[i].1.copy_from_slice(&rng.vec(n, -0.5, 0.5)).unwrap();
    }
    let p: Vec<Vec<f64>> = unpack_mha(
        &named
            .iter()
            .map(|(_, t)| to_f64(&t.to_vec().unwrap()))
            .collect::<Vec<_>>(),
    );
    let x = rng.vec(b * t * e, -1.0, 1.0);
    let xt = Tensor::from_f32(&d, &x, &[b, t, e]).unwrap();
    for causal in [false, true] {
        let opts = AttentionOptions::new().is_causal(causal);
        let y = mha.forward_with(&xt, &xt, &xt, &opts).unwrap().0;
        assert_close(
            &format!("mha causal={causal}"),
            &y.to_vec().unwrap(),
            &cpu_mha(&p, &to_f64(&x), b, t, e, h, causal),
            1e-5,
            1e-4,
        );
    }
    let e = MultiHeadAttentionConfig::new(10, 3)
        .init(&d)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("embed_dim 10 is not divisible by num_heads 3"),
        "{e}"
    );
}

#[test]
fn encoder_layer_post_and_pre_norm_with_gradients() {
    let d = dev();
    let (b, t, e, h, ff) = (2, 4, 8, 2, 12);
    for norm_first in [false, true] {
        let mut rng = Rng::new(9);
        let cfg = TransformerLayerConfig::new(e, h)
            .with_dim_feedforward(ff)
            .with_dropout(0.0)
            .with_activation(Activation::Gelu)
            .with_norm_first(norm_first);
        let layer = cfg.init_encoder_with(&d, &mut rng).unwrap();
        let named = layer.named_parameters();
        let raw: Vec<Vec<f64>> = named
            .iter()
            .map(|(_, t)| to_f64(&t.to_vec().unwrap()))
            .collect();
        // q, k, v, out (8), linear1, linear2 (4), norm1, norm2 (4).
        let mut p = unpack_mha(&raw[..4]);
        p.extend(raw[4..].iter().cloned());
        let x = rng.vec(b * t * e, -1.0, 1.0);
        let cpu = |p: &[Vec<f64>]| {
            let x = to_f64(&x);
            let ln =
                |v: &[f64], k: usize| kiln_ops::norm::cpu::layer_norm(v, e, &p[k], &p[k + 1], 1e-5);
            let ffn = |v: &[f64]| {
                let hdn: Vec<f64> = linear(v, &p[8], &p[9], b * t, e, ff)
                    .iter()
                    .map(|&z| {
                        kiln_ops::elementwise::cpu::unary(z, kiln_ops::elementwise::Unary::Gelu)
                    })
                    .collect();
                linear(&hdn, &p[10], &p[11], b * t, ff, e)
            };
            let add =
                |a: &[f64], c: &[f64]| a.iter().zip(c).map(|(u, v)| u + v).collect::<Vec<f64>>();
            if norm_first {
                let x1 = add(&x, &cpu_mha(&p[..8], &ln(&x, 12), b, t, e, h, false));
                add(&x1, &ffn(&ln(&x1, 14)))
            } else {
                let x1 = ln(&add(&x, &cpu_mha(&p[..8], &x, b, t, e, h, false)), 12);
                ln(&add(&x1, &ffn(&x1)), 14)
            }
        };
        let xt = Tensor::from_f32(&d, &x, &[b, t, e]).unwrap();
        let y = layer.forward(&xt).unwrap();
        assert_close(
            &format!("encoder layer norm_first={norm_first}"),
            &y.to_vec().unwrap(),
            &cpu(&p),
            1e-4,
            1e-3,
        );
        let w = rng.vec(b * t * e, -1.0, 1.0);
        y.mul(&Tensor::from_f32(&d, &w, &[b, t, e]).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        // The query projection (in_proj_weight's first E rows) sits deepest in the graph: check
        // its gradient.
        let f = |v: &[f64]| {
            let mut q = p.clone();
            q[0] = v.to_vec();
            cpu(&q)
                .iter()
                .zip(&w)
                .map(|(a, b)| a * *b as f64)
                .sum::<f64>()
        };
        let fd = finite_diff(f, &p[0], 1e-4);
        assert_close(
            &format!("encoder layer dq_proj norm_first={norm_first}"),
            &named[0].1.grad().unwrap().to_f32(&d).unwrap()[..e * e],
            &fd,
            2e-4,
            2e-3,
        );
    }
    let pe = sinusoidal_positions(3, 4);
    assert_eq!(pe[..4], [0.0, 1.0, 0.0, 1.0]);
    assert!((pe[4] - 1f32.sin()).abs() < 1e-6 && (pe[5] - 1f32.cos()).abs() < 1e-6);
}

#[test]
fn decoder_layer_is_causal_in_its_target_and_trains_every_parameter() {
    let d = dev();
    let mut rng = Rng::new(4);
    let cfg = TransformerLayerConfig::new(8, 2)
        .with_dim_feedforward(16)
        .with_dropout(0.0);
    let layer = cfg.init_decoder_with(&d, &mut rng).unwrap();
    let (b, t, s, e) = (2, 5, 3, 8);
    let mut x = rng.vec(b * t * e, -1.0, 1.0);
    let mem = Tensor::from_f32(&d, &rng.vec(b * s * e, -1.0, 1.0), &[b, s, e]).unwrap();
    let run = |x: &[f32]| {
        layer
            .forward_with(
                &Tensor::from_f32(&d, x, &[b, t, e]).unwrap(),
                &mem,
                &AttentionOptions::causal(),
                &AttentionOptions::new(),
            )
            .unwrap()
    };
    let before = run(&x).to_vec().unwrap();
    assert_eq!(before.len(), b * t * e);
    // Changing the last target position leaves earlier positions unchanged (causal self-attention).
    for bi in 0..b {
        for k in 0..e {
            x[(bi * t + t - 1) * e + k] += 1.0;
        }
    }
    let after = run(&x).to_vec().unwrap();
    for bi in 0..b {
        let (lo, hi) = (bi * t * e, (bi * t + t - 1) * e);
        assert_close(
            "earlier positions",
            &after[lo..hi],
            &to_f64(&before[lo..hi]),
            1e-6,
            1e-6,
        );
    }
    // Every parameter (self-attention, cross-attention, feed-forward, norms) gets a gradient.
    run(&x)
        .square()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, p) in layer.named_parameters() {
        let g = p.grad().unwrap_or_else(|| panic!("{name} has no gradient"));
        assert!(
            g.to_f32(&d).unwrap().iter().any(|v| *v != 0.0),
            "{name} gradient is all zero"
        );
    }
}

#[test]
fn simple_modules_match_their_ops() {
    use kiln_nn::{AvgPool2d, Gelu, Sigmoid, Softmax, Tanh};
    let d = dev();
    let x = Tensor::from_f32(&d, &[-1.0, 0.0, 0.5, 2.0], &[1, 1, 2, 2]).unwrap();
    let v = |t: Tensor| t.to_vec().unwrap();
    assert_eq!(v(Sigmoid.forward(&x).unwrap()), v(x.sigmoid().unwrap()));
    assert_eq!(v(Tanh.forward(&x).unwrap()), v(x.tanh().unwrap()));
    assert_eq!(v(Gelu.forward(&x).unwrap()), v(x.gelu().unwrap()));
    let s = v(Softmax.forward(&x).unwrap());
    assert!((s[0] + s[1] - 1.0).abs() < 1e-6);
    let pooled = AvgPool2d(kiln_ops::pool::Pool2dSpec::square(2))
        .forward(&x)
        .unwrap();
    assert_eq!(v(pooled), vec![0.375]);
}

#[test]
fn decoder_layer_honours_norm_first_and_both_masks() {
    let d = dev();
    let (b, t, s, e) = (2, 4, 3, 8);
    let mut rng = Rng::new(21);
    let x = Tensor::from_f32(&d, &rng.vec(b * t * e, -1.0, 1.0), &[b, t, e]).unwrap();
    let mem = Tensor::from_f32(&d, &rng.vec(b * s * e, -1.0, 1.0), &[b, s, e]).unwrap();
    // Batch 1 ignores target position 3 and memory position 2.
    let tpad = Tensor::from_i32(&d, &[0, 0, 0, 0, 0, 0, 0, 1], &[b, t]).unwrap();
    let mpad = Tensor::from_i32(&d, &[0, 0, 0, 0, 0, 1], &[b, s]).unwrap();
    let tgt_opts = AttentionOptions::causal().key_padding_mask(&tpad);
    let mem_opts = AttentionOptions::new().key_padding_mask(&mpad);
    let mut outs = Vec::new();
    for norm_first in [false, true] {
        let layer = TransformerLayerConfig::new(e, 2)
            .with_dim_feedforward(16)
            .with_dropout(0.0)
            .with_layer_norm_eps(1e-6)
            .with_norm_first(norm_first)
            .init_decoder_with(&d, &mut Rng::new(5))
            .unwrap();
        let y = layer
            .forward_with(&x, &mem, &tgt_opts, &mem_opts)
            .unwrap()
            .to_vec()
            .unwrap();
        // The same equations from the layer's parameters and its attention modules.
        let p: std::collections::HashMap<String, Tensor> =
            layer.named_parameters().into_iter().collect();
        let ln = |v: &Tensor, i: usize| {
            v.layer_norm(
                &p[&format!("norm{i}.weight")],
                &p[&format!("norm{i}.bias")],
                1e-6,
            )
            .unwrap()
        };
        let sa = |v: &Tensor| layer.self_attn.forward_with(v, v, v, &tgt_opts).unwrap().0;
        let ca = |v: &Tensor| {
            layer
                .multihead_attn
                .forward_with(v, &mem, &mem, &mem_opts)
                .unwrap()
                .0
        };
        let ff = |v: &Tensor| {
            let h = v
                .reshape(&[b * t, e])
                .unwrap()
                .linear(&p["linear1.weight"], Some(&p["linear1.bias"]))
                .unwrap()
                .relu()
                .unwrap()
                .linear(&p["linear2.weight"], Some(&p["linear2.bias"]))
                .unwrap();
            h.reshape(&[b, t, e]).unwrap()
        };
        let want = if norm_first {
            let h = x.add(&sa(&ln(&x, 1))).unwrap();
            let h = h.add(&ca(&ln(&h, 2))).unwrap();
            h.add(&ff(&ln(&h, 3))).unwrap()
        } else {
            let h = ln(&x.add(&sa(&x)).unwrap(), 1);
            let h = ln(&h.add(&ca(&h)).unwrap(), 2);
            ln(&h.add(&ff(&h)).unwrap(), 3)
        };
        assert_close(
            &format!("decoder norm_first={norm_first}"),
            &y,
            &to_f64(&want.to_vec().unwrap()),
            1e-6,
            1e-6,
        );
        outs.push(y);
    }
    assert!(
        outs[0]
            .iter()
            .zip(&outs[1])
            .any(|(a, b)| (a - b).abs() > 1e-3),
        "pre-norm and post-norm layers gave the same output"
    );
    // A padded memory position does not reach the output: change it, nothing moves.
    let layer = TransformerLayerConfig::new(e, 2)
        .with_dropout(0.0)
        .init_decoder_with(&d, &mut Rng::new(6))
        .unwrap();
    let before = layer.forward_with(&x, &mem, &tgt_opts, &mem_opts).unwrap();
    let mut mv = mem.to_vec().unwrap();
    for k in 0..e {
        mv[(s + 2) * e + k] += 3.0;
    }
    let mem2 = Tensor::from_f32(&d, &mv, &[b, s, e]).unwrap();
    let after = layer.forward_with(&x, &mem2, &tgt_opts, &mem_opts).unwrap();
    assert_close(
        "memory key padding",
        &after.to_vec().unwrap(),
        &to_f64(&before.to_vec().unwrap()),
        1e-6,
        1e-6,
    );
}

/// Attention masks (additive f32 and boolean i32, [Tq, Tk] and [B*H, Tq, Tk], with and without a
/// key-padding mask, causal or not) run through the fused kernel and give what the explicit
/// scores + softmax path gives (asked for the weights, the module takes it), gradients included.
/// Forcing an attention variant that refuses f32 operands makes the fused call fail and the
/// explicit one succeed: the masks really take the fused kernel.
#[test]
fn attention_masks_run_fused_and_match_the_explicit_path() {
    use kiln_ops::KernelPolicy;
    let d = dev();
    let mut rng = Rng::new(11);
    let (b, t, e, h) = (2, 5, 16, 4);
    let mha = MultiHeadAttentionConfig::new(e, h)
        .init_with(&d, &mut rng)
        .unwrap();
    let x = Tensor::from_f32(&d, &rng.vec(b * t * e, -1.0, 1.0), &[b, t, e])
        .unwrap()
        .requires_grad_(true)
        .unwrap();
    let lw = Tensor::from_f32(&d, &rng.vec(b * t * e, -1.0, 1.0), &[b, t, e]).unwrap();
    // Additive: random offsets and -inf on some keys (never a whole row); boolean: the same
    // positions as 1.
    let masked = |i: usize, j: usize| i % 2 == 1 && j.is_multiple_of(3) && j > 0;
    let float = |heads: usize| -> Vec<f32> {
        (0..heads * t * t)
            .map(|n| {
                let (i, j) = ((n / t) % t, n % t);
                if masked(i, j) || (heads > 1 && (n / (t * t)) % 3 == 1 && j == 4 && i < 4) {
                    f32::NEG_INFINITY
                } else {
                    (n % 7) as f32 * 0.1 - 0.3
                }
            })
            .collect()
    };
    let boolean = |heads: usize| -> Vec<i32> {
        (0..heads * t * t)
            .map(|n| {
                i32::from(masked((n / t) % t, n % t) || (heads > 1 && n % 11 == 3 && n % t != 0))
            })
            .collect()
    };
    let masks = [
        (
            "float [Tq, Tk]",
            Tensor::from_f32(&d, &float(1), &[t, t]).unwrap(),
        ),
        (
            "float [B*H, Tq, Tk]",
            Tensor::from_f32(&d, &float(b * h), &[b * h, t, t]).unwrap(),
        ),
        (
            "bool [Tq, Tk]",
            Tensor::from_i32(&d, &boolean(1), &[t, t]).unwrap(),
        ),
        (
            "bool [B*H, Tq, Tk]",
            Tensor::from_i32(&d, &boolean(b * h), &[b * h, t, t]).unwrap(),
        ),
    ];
    let kpm = Tensor::from_i32(&d, &[0, 0, 0, 0, 1, 0, 1, 0, 0, 0], &[b, t]).unwrap();
    let grads = |y: &Tensor| -> Vec<Vec<f32>> {
        mha.named_parameters()
            .iter()
            .for_each(|(_, p)| p.zero_grad());
        x.zero_grad();
        y.mul(&lw).unwrap().sum_all().unwrap().backward().unwrap();
        let mut g: Vec<Vec<f32>> = mha
            .named_parameters()
            .iter()
            .map(|(_, p)| p.grad().unwrap().to_f32(&d).unwrap())
            .collect();
        g.push(x.grad().unwrap().to_f32(&d).unwrap());
        g
    };
    let mut checked = 0;
    for (name, m) in &masks {
        for with_kpm in [false, true] {
            for causal in [false, true] {
                let mut opts = AttentionOptions::new().attn_mask(m).is_causal(causal);
                if with_kpm {
                    opts = opts.key_padding_mask(&kpm);
                }
                let what = format!("{name} kpm={with_kpm} causal={causal}");
                let fused = mha.forward_with(&x, &x, &x, &opts).unwrap();
                assert!(fused.1.is_none());
                let explicit = mha
                    .forward_with(&x, &x, &x, &opts.need_weights(true))
                    .unwrap();
                assert_close(
                    &what,
                    &fused.0.to_vec().unwrap(),
                    &to_f64(&explicit.0.to_vec().unwrap()),
                    1e-5,
                    1e-4,
                );
                let (gf, ge) = (grads(&fused.0), grads(&explicit.0));
                for (i, (a, w)) in gf.iter().zip(&ge).enumerate() {
                    assert_close(&format!("{what} grad {i}"), a, &to_f64(w), 1e-4, 1e-3);
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 16);
    // The fused kernel takes them: a forced variant that cannot run f32 operands refuses.
    let refusing = d.with_policy(KernelPolicy::default().force("attention", "flash_coop16"));
    let xr = Tensor::from_f32(&refusing, &x.to_vec().unwrap(), &[b, t, e]).unwrap();
    let mr = Tensor::from_f32(&refusing, &float(1), &[t, t]).unwrap();
    let mha_r = MultiHeadAttentionConfig::new(e, h).init(&refusing).unwrap();
    let opts = AttentionOptions::new().attn_mask(&mr);
    let Err(err) = mha_r.forward_with(&xr, &xr, &xr, &opts) else {
        panic!("the fused call must be refused");
    };
    assert!(err.to_string().contains("flash_coop16"), "{err}");
    assert!(mha_r
        .forward_with(&xr, &xr, &xr, &opts.need_weights(true))
        .is_ok());
}

/// A composite that declares its parts only: a `Sequential` body (a Linear, then a Dropout) and
/// a Linear head. Names, training mode, generators and freezing all come from the children.
struct Net {
    body: kiln_nn::Sequential,
    head: kiln_nn::Linear,
}

impl Module for Net {
    fn forward(&self, x: &Tensor) -> kiln_nn::Result<Tensor> {
        self.head.forward(&self.body.forward(x)?)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("body".into(), &self.body), ("head".into(), &self.head)]
    }
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        vec![
            ("body".into(), &mut self.body),
            ("head".into(), &mut self.head),
        ]
    }
}

#[test]
fn composite_names_training_rng_and_freeze_come_from_children() {
    let dev = dev();
    let mut rng = kiln_nn::init::Rng::new(5);
    let mut net = Net {
        body: kiln_nn::Sequential::new()
            .push_named(
                "fc1",
                kiln_nn::LinearConfig::new(64, 8)
                    .init_with(&dev, &mut rng)
                    .unwrap(),
            )
            .push_named(
                "drop",
                kiln_nn::DropoutConfig::new(0.5)
                    .with_seed(11)
                    .init(&dev)
                    .unwrap(),
            ),
        head: kiln_nn::LinearConfig::new(8, 3)
            .init_with(&dev, &mut rng)
            .unwrap(),
    };
    let got: Vec<(String, Vec<usize>)> = net
        .named_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.shape().to_vec()))
        .collect();
    let want = [
        ("body.fc1.weight", vec![8, 64]),
        ("body.fc1.bias", vec![8]),
        ("head.weight", vec![3, 8]),
        ("head.bias", vec![3]),
    ];
    assert_eq!(got.len(), 4);
    for ((n, s), (wn, ws)) in got.iter().zip(&want) {
        assert_eq!((n.as_str(), s), (*wn, ws));
    }
    let numel: usize = net.parameters().iter().map(|t| t.numel()).sum();
    assert_eq!(numel, 8 * 64 + 8 + 3 * 8 + 3);

    // The dropout inside the body: 0 or 2 (1 / (1 - p)) while training, the identity in eval.
    let ones = Tensor::full(&dev, &[16, 8], 1.0).unwrap();
    let dropout = |net: &Net| {
        let (_, drop) = net.body.layers().nth(1).unwrap();
        drop.forward(&ones).unwrap().to_vec().unwrap()
    };
    let count = |v: &[f32], x: f32| v.iter().filter(|&&y| y == x).count();
    let trained = dropout(&net);
    assert_eq!(count(&trained, 0.0) + count(&trained, 2.0), 128);
    assert!((32..=96).contains(&count(&trained, 0.0)), "{trained:?}");
    net.eval();
    assert_eq!(count(&dropout(&net), 1.0), 128);
    net.train();
    let again = dropout(&net);
    assert_eq!(count(&again, 0.0) + count(&again, 2.0), 128);

    // One generator, reached through the body; offsets move and restore.
    let start = net.rng_offsets();
    assert_eq!(start.len(), 1);
    net.advance_rng().unwrap();
    assert_ne!(net.rng_offsets(), start);
    assert_eq!(net.set_rng_offsets(&start).unwrap(), 1);
    assert_eq!(net.rng_offsets(), start);

    // Freezing the body leaves the head trainable: gradients reach the head only.
    net.body.freeze().unwrap();
    let needs: Vec<bool> = net.parameters().iter().map(|t| t.requires_grad()).collect();
    assert_eq!(needs, [false, false, true, true]);
    let x = Tensor::full(&dev, &[2, 64], 0.5).unwrap();
    net.forward(&x)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let grads: Vec<bool> = net
        .parameters()
        .iter()
        .map(|t| t.grad().is_some())
        .collect();
    assert_eq!(grads, [false, false, true, true]);
    net.freeze().unwrap();
    assert_eq!(
        net.parameters()
            .iter()
            .filter(|t| t.requires_grad())
            .count(),
        0
    );
    net.unfreeze().unwrap();
    assert_eq!(
        net.parameters()
            .iter()
            .filter(|t| t.requires_grad())
            .count(),
        4
    );
}

#[test]
fn transformer_stack_declares_layers_and_norm() {
    let dev = dev();
    let cfg = TransformerLayerConfig::new(8, 2)
        .with_dim_feedforward(16)
        .with_dropout(0.5)
        .with_attention_dropout(0.5);
    let mut rng = kiln_nn::init::Rng::new(3);
    let mut enc =
        kiln_nn::transformer::TransformerEncoder::new(&dev, &mut rng, &cfg, 2, true).unwrap();
    let names: Vec<String> = enc.named_parameters().into_iter().map(|(n, _)| n).collect();
    let layer = [
        "self_attn.in_proj_weight",
        "self_attn.in_proj_bias",
        "self_attn.out_proj.weight",
        "self_attn.out_proj.bias",
        "linear1.weight",
        "linear1.bias",
        "linear2.weight",
        "linear2.bias",
        "norm1.weight",
        "norm1.bias",
        "norm2.weight",
        "norm2.bias",
    ];
    let mut want: Vec<String> = (0..2)
        .flat_map(|i| layer.iter().map(move |n| format!("layers.{i}.{n}")))
        .collect();
    want.extend(["norm.weight".to_string(), "norm.bias".to_string()]);
    assert_eq!(names, want);
    // Per layer: in_proj 3*8*8 + 24, out_proj 64 + 8, linear1 128 + 16, linear2 128 + 8,
    // two norms 32; then the final norm 16.
    let numel: usize = enc.parameters().iter().map(|t| t.numel()).sum();
    assert_eq!(numel, 2 * 600 + 16);
    // Four generators a layer: attention, dropout1, dropout2, the feed-forward's dropout.
    assert_eq!(enc.rng_offsets().len(), 8);

    // eval() reaches the dropouts inside each layer: two runs agree and differ from training's.
    let x = Tensor::from_f32(
        &dev,
        &(0..48).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>(),
        &[2, 3, 8],
    )
    .unwrap();
    let train_y = enc.forward(&x).unwrap().to_vec().unwrap();
    enc.eval();
    let a = enc.forward(&x).unwrap().to_vec().unwrap();
    let b = enc.forward(&x).unwrap().to_vec().unwrap();
    assert_eq!(a, b);
    assert_ne!(a, train_y);
}
