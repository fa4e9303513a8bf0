//! RNN, LSTM and GRU against a CPU implementation of PyTorch's equations, with gradients.

use kiln_graph::{Device, Tensor};
use kiln_nn::rnn::{Cell, RecurrentConfig};
use kiln_nn::Module;
use kiln_ops::numeric::{assert_close, finite_diff, to_f64};
use kiln_ops::random::Rng;

fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// PyTorch's equations, one layer: x [b, t, i] -> (outputs [b, t, h], h_n, c_n).
#[allow(clippy::too_many_arguments)]
fn cpu_layer(
    cell: Cell,
    x: &[f64],
    b: usize,
    t: usize,
    i: usize,
    hd: usize,
    w: &[&[f64]],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (w_ih, w_hh, b_ih, b_hh) = (w[0], w[1], w[2], w[3]);
    let gates = w_ih.len() / i;
    let mut out = vec![0.0; b * t * hd];
    let (mut hn, mut cn) = (vec![0.0; b * hd], vec![0.0; b * hd]);
    for bi in 0..b {
        let (mut h, mut c) = (vec![0.0; hd], vec![0.0; hd]);
        for s in 0..t {
            let xs = &x[(bi * t + s) * i..(bi * t + s + 1) * i];
            let xg: Vec<f64> = (0..gates)
                .map(|g| b_ih[g] + (0..i).map(|k| w_ih[g * i + k] * xs[k]).sum::<f64>())
                .collect();
            let hg: Vec<f64> = (0..gates)
                .map(|g| b_hh[g] + (0..hd).map(|k| w_hh[g * hd + k] * h[k]).sum::<f64>())
                .collect();
            let mut nh = vec![0.0; hd];
            for u in 0..hd {
                nh[u] = match cell {
                    Cell::RnnTanh => (xg[u] + hg[u]).tanh(),
                    Cell::RnnRelu => (xg[u] + hg[u]).max(0.0),
                    Cell::Lstm => {
                        let ig = sig(xg[u] + hg[u]);
                        let fg = sig(xg[hd + u] + hg[hd + u]);
                        let gg = (xg[2 * hd + u] + hg[2 * hd + u]).tanh();
                        let og = sig(xg[3 * hd + u] + hg[3 * hd + u]);
                        c[u] = fg * c[u] + ig * gg;
                        og * c[u].tanh()
                    }
                    Cell::Gru => {
                        let r = sig(xg[u] + hg[u]);
                        let z = sig(xg[hd + u] + hg[hd + u]);
                        let n = (xg[2 * hd + u] + r * hg[2 * hd + u]).tanh();
                        (1.0 - z) * n + z * h[u]
                    }
                };
            }
            h = nh;
            out[(bi * t + s) * hd..(bi * t + s + 1) * hd].copy_from_slice(&h);
        }
        hn[bi * hd..(bi + 1) * hd].copy_from_slice(&h);
        cn[bi * hd..(bi + 1) * hd].copy_from_slice(&c);
    }
    (out, hn, cn)
}

#[test]
fn recurrent_cells_match_pytorch_equations() {
    let d = Device::shared().expect("a GPU or software Vulkan adapter (run scripts/setup.sh)");
    let (b, t, i, hd, layers) = (2, 4, 3, 5, 2);
    for cell in [Cell::RnnTanh, Cell::RnnRelu, Cell::Lstm, Cell::Gru] {
        let mut rng = Rng::new(7);
        let net = RecurrentConfig::new(cell, i, hd)
            .with_num_layers(layers)
            .init_with(&d, &mut rng)
            .unwrap();
        let names: Vec<String> = net.named_parameters().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names[..4],
            ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
        );
        let params: Vec<Vec<f64>> = net
            .parameters()
            .iter()
            .map(|p| to_f64(&p.to_vec().unwrap()))
            .collect();
        let x = rng.vec(b * t * i, -1.0, 1.0);
        let xt = Tensor::from_f32(&d, &x, &[b, t, i]).unwrap();
        let run = net.run(&xt, None, None).unwrap();
        // Two layers on the CPU.
        let cpu = |params: &[Vec<f64>]| {
            let p0: Vec<&[f64]> = params[..4].iter().map(|v| &v[..]).collect();
            let p1: Vec<&[f64]> = params[4..].iter().map(|v| &v[..]).collect();
            let (o0, h0, c0) = cpu_layer(cell, &to_f64(&x), b, t, i, hd, &p0);
            let (o1, h1, c1) = cpu_layer(cell, &o0, b, t, hd, hd, &p1);
            (o1, [h0, h1], [c0, c1])
        };
        let (want, hn, cn) = cpu(&params);
        let what = format!("{cell:?}");
        assert_close(&what, &run.output.to_vec().unwrap(), &want, 1e-5, 1e-4);
        // h_n and c_n are [layers, B, H], as PyTorch returns them.
        assert_eq!(run.h_n.shape(), [layers, b, hd]);
        let flat = |v: &[Vec<f64>]| v.concat();
        assert_close(
            &format!("{what} h_n"),
            &run.h_n.to_vec().unwrap(),
            &flat(&hn),
            1e-5,
            1e-4,
        );
        match &run.c_n {
            Some(c_n) => {
                assert_eq!(cell, Cell::Lstm);
                assert_close(
                    &format!("{what} c_n"),
                    &c_n.to_vec().unwrap(),
                    &flat(&cn),
                    1e-5,
                    1e-4,
                );
            }
            None => assert_ne!(cell, Cell::Lstm),
        }
        // Gradients through time for the first layer's weights and both biases of a layer
        // (b_hh joins b_ih in the input projection except in GRU).
        let wv = rng.vec(b * t * hd, -1.0, 1.0);
        run.output
            .mul(&Tensor::from_f32(&d, &wv, &[b, t, hd]).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (k, name) in [
            (1, "weight_hh_l0"),
            (0, "weight_ih_l0"),
            (6, "bias_ih_l1"),
            (7, "bias_hh_l1"),
        ] {
            let f = |v: &[f64]| {
                let mut ps = params.clone();
                ps[k] = v.to_vec();
                cpu(&ps)
                    .0
                    .iter()
                    .zip(&wv)
                    .map(|(a, b)| a * *b as f64)
                    .sum::<f64>()
            };
            let fd = finite_diff(f, &params[k], 1e-5);
            let got = net.parameters()[k].grad().unwrap().to_f32(&d).unwrap();
            assert_close(&format!("{what} d{name}"), &got, &fd, 1e-4, 1e-3);
        }
    }
}
