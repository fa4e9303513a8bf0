//! Multi-head attention and an encoder layer against CPU compositions of their equations.

use kiln_graph::{Device, Tensor};
use kiln_nn::transformer::{
    sinusoidal_positions, Activation, LayerConfig, MultiHeadAttention, TransformerEncoderLayer,
};
use kiln_nn::Module;
use kiln_ops::testing::{assert_close, finite_diff, to_f64, Rng};

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
    let mha = MultiHeadAttention::new(&d, &mut rng, e, h).unwrap();
    let names: Vec<String> = mha.named_parameters().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names[0], "q_proj.weight");
    assert_eq!(names[7], "out_proj.bias");
    let p: Vec<Vec<f64>> = mha
        .named_parameters()
        .iter()
        .map(|(_, t)| to_f64(&t.to_vec().unwrap()))
        .collect();
    let x = rng.vec(b * t * e, -1.0, 1.0);
    let xt = Tensor::from_f32(&d, &x, &[b, t, e]).unwrap();
    for causal in [false, true] {
        let y = mha.attend(&xt, &xt, &xt, None, causal).unwrap();
        assert_close(
            &format!("mha causal={causal}"),
            &y.to_vec().unwrap(),
            &cpu_mha(&p, &to_f64(&x), b, t, e, h, causal),
            1e-5,
            1e-4,
        );
    }
    assert!(MultiHeadAttention::new(&d, &mut rng, 10, 3).is_err());
}

#[test]
fn encoder_layer_post_and_pre_norm_with_gradients() {
    let d = dev();
    let (b, t, e, h, ff) = (2, 4, 8, 2, 12);
    for norm_first in [false, true] {
        let mut rng = Rng::new(9);
        let cfg = LayerConfig {
            d_model: e,
            heads: h,
            ff,
            dropout: 0.0,
            activation: Activation::Gelu,
            norm_first,
        };
        let layer = TransformerEncoderLayer::new(&d, &mut rng, &cfg).unwrap();
        let named = layer.named_parameters();
        let p: Vec<Vec<f64>> = named
            .iter()
            .map(|(_, t)| to_f64(&t.to_vec().unwrap()))
            .collect();
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
        // The query projection sits deepest in the graph: check its gradient.
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
            &named[0].1.grad().unwrap().to_f32(&d).unwrap(),
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
    use kiln_nn::transformer::TransformerDecoderLayer;
    let d = dev();
    let mut rng = Rng::new(4);
    let cfg = LayerConfig {
        d_model: 8,
        heads: 2,
        ff: 16,
        dropout: 0.0,
        activation: Activation::Relu,
        norm_first: false,
    };
    let layer = TransformerDecoderLayer::new(&d, &mut rng, &cfg).unwrap();
    let (b, t, s, e) = (2, 5, 3, 8);
    let mut x = rng.vec(b * t * e, -1.0, 1.0);
    let mem = Tensor::from_f32(&d, &rng.vec(b * s * e, -1.0, 1.0), &[b, s, e]).unwrap();
    let run = |x: &[f32]| {
        layer
            .decode(&Tensor::from_f32(&d, x, &[b, t, e]).unwrap(), &mem, None)
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
