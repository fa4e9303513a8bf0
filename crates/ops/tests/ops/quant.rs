//! Quantized layers: int8 products and layers, f16 weights.

use crate::common::{arr, dev, expect_err};
use kiln_ops::conv::Conv2dSpec;
use kiln_ops::numeric::assert_close;
use kiln_ops::random::Rng;
use kiln_ops::OpError;

#[test]
fn int8_matmul_is_exact() {
    use kiln_ops::int8;
    let d = dev();
    let mut r = Rng::new(51);
    for (n, m, k) in [(1, 1, 1), (3, 5, 7), (16, 10, 84), (7, 13, 400)] {
        let (xq, _) = int8::quantize_tensor(&r.vec(n * k, -2.0, 2.0), 2.0);
        let (wq, _) = int8::quantize_rows(&r.vec(m * k, -0.5, 0.5), m, k);
        let (xb, wb) = (
            d.upload(&int8::pack_rows(&xq, k)).unwrap(),
            d.upload(&int8::pack_rows(&wq, k)).unwrap(),
        );
        let acc = d
            .download::<i32>(&int8::matmul_i8(&d, &xb, &wb, n, m, k).unwrap())
            .unwrap();
        assert_eq!(
            acc,
            int8::cpu_matmul_i8(&xq, &wq, n, m, k),
            "exact integer sums for {n}x{m}x{k}"
        );
    }
    let bad = d.upload(&[0u32; 3]).unwrap();
    expect_err(
        int8::matmul_i8(&d, &bad, &bad, 2, 2, 8),
        "got 3 x u32 and 3 x u32",
    );
    // Extremes survive packing: -127 * -127 * K.
    let q = vec![-127i8; 8];
    let b = d.upload(&int8::pack_rows(&q, 8)).unwrap();
    assert_eq!(
        d.download::<i32>(&int8::matmul_i8(&d, &b, &b, 1, 1, 8).unwrap())
            .unwrap(),
        vec![127 * 127 * 8]
    );
}

/// Linear and conv geometries with odd sizes, padding, stride and dilation.
fn quant_layers() -> Vec<(kiln_ops::int8::LayerGeom, usize)> {
    use kiln_ops::int8::LayerGeom;
    let spec = |s, p, dl| Conv2dSpec {
        stride: (s, s),
        padding: (p, p),
        dilation: (dl, dl),
    };
    vec![
        (LayerGeom::linear("t", &[1, 1], &[1, 1]).unwrap(), 1),
        (LayerGeom::linear("t", &[7, 13], &[5, 13]).unwrap(), 13),
        (LayerGeom::linear("t", &[16, 400], &[10, 400]).unwrap(), 400),
        (
            LayerGeom::conv("t", &[2, 1, 8, 8], &[6, 1, 5, 5], spec(1, 2, 1)).unwrap(),
            25,
        ),
        (
            LayerGeom::conv("t", &[3, 3, 7, 9], &[5, 3, 3, 3], spec(2, 1, 2)).unwrap(),
            27,
        ),
    ]
}

#[test]
fn int8_layers_pack_exactly_and_dequantize_within_the_quantization_bound() {
    use kiln_ops::int8;
    let d = dev();
    let mut r = Rng::new(52);
    for (g, k) in quant_layers() {
        let x = r.vec(g.input_shape().iter().product(), -2.0, 2.0);
        let w = r.vec(g.m * k, -0.5, 0.5);
        let bias = r.vec(g.m, -1.0, 1.0);
        let xs = int8::scale_for(2.0);
        let xa = arr(&d, &x, &g.input_shape());
        // The GPU's int8 im2col equals the CPU's: same windows, same rounding (ties to even).
        let packed = int8::pack_input(&d, &xa, &g, xs).unwrap();
        let xq = int8::cpu_pack_input(&x, &g, xs);
        assert_eq!(
            d.download::<u32>(&packed).unwrap(),
            int8::pack_rows(&xq, k),
            "packed input {g:?}"
        );
        let (wq, ws) = int8::quantize_rows(&w, g.m, k);
        let (wb, wsb, bb) = (
            d.upload(&int8::pack_rows(&wq, k)).unwrap(),
            d.upload(&ws).unwrap(),
            d.upload(&bias).unwrap(),
        );
        let y = int8::layer_i8(&d, &xa, xs, &wb, &wsb, &bb, &g).unwrap();
        assert_eq!(y.shape, g.output_shape());
        let y = y.to_f32(&d).unwrap();
        // Exactly the integer sums, scaled: the CPU reference of the same arithmetic.
        let acc = int8::cpu_matmul_i8(&xq, &wq, g.rows(), g.m, k);
        let mut want = vec![0.0; y.len()];
        let mut exact = vec![0.0; y.len()];
        for row in 0..g.rows() {
            for m in 0..g.m {
                let o = g.out_index(row, m);
                want[o] = acc[row * g.m + m] as f64 * xs as f64 * ws[m] as f64 + bias[m] as f64;
                exact[o] = (0..k)
                    .map(|c| g.tap(&x, row, c) as f64 * w[m * k + c] as f64)
                    .sum::<f64>()
                    + bias[m] as f64;
            }
        }
        assert_close("dequantized", &y, &want, 1e-5, 1e-5);
        // Against the f32 layer, each product is off by at most half a step of each operand.
        let wmax = ws.iter().cloned().fold(0.0f32, f32::max) as f64;
        let tol = k as f64 * (2.0 * wmax / 2.0 + 0.5 * xs as f64 / 2.0 + wmax * xs as f64 / 4.0);
        assert_close("vs f32", &y, &exact, tol * 1.01, 0.0);
    }
}

#[test]
fn int8_bad_inputs_are_errors() {
    use kiln_ops::int8::{self, LayerGeom};
    let d = dev();
    expect_err(
        LayerGeom::linear("t", &[4, 3], &[2, 5]),
        "expected an input [batch, 5] for weight [2, 5], got [4, 3]",
    );
    expect_err(
        LayerGeom::conv("t", &[1, 2, 8, 8], &[4, 3, 3, 3], Conv2dSpec::default()),
        "got [1, 2, 8, 8]",
    );
    let e = LayerGeom::conv("t", &[1, 3, 2, 2], &[4, 3, 3, 3], Conv2dSpec::default())
        .err()
        .unwrap();
    assert!(matches!(e, OpError::Shape { .. }), "{e}");
    let g = LayerGeom::linear("t", &[2, 8], &[3, 8]).unwrap();
    let x = arr(&d, &[0.0; 18], &[2, 9]);
    expect_err(
        int8::pack_input(&d, &x, &g, 0.1),
        "expected input [2, 8], got [2, 9]",
    );
    let x = arr(&d, &[0.0; 16], &[2, 8]);
    expect_err(
        int8::pack_input(&d, &x, &g, 0.0),
        "positive and finite, got 0",
    );
    expect_err(
        int8::pack_input(&d, &x, &g, f32::NAN),
        "positive and finite, got NaN",
    );
}

#[test]
fn f16_weight_layers_match_the_cpu() {
    use kiln_ops::half;
    let d = dev();
    let mut r = Rng::new(53);
    assert!(
        half::supported(&d),
        "the adapter lacks SHADER_F16 (lavapipe and the H100 have it)"
    );
    for (g, k) in quant_layers() {
        let x = r.vec(g.input_shape().iter().product(), -2.0, 2.0);
        let w = half::to_f16(&r.vec(g.m * k, -0.5, 0.5));
        let bias = r.vec(g.m, -1.0, 1.0);
        let y = half::layer_f16w(
            &d,
            &arr(&d, &x, &g.input_shape()),
            &d.upload(&w).unwrap(),
            &d.upload(&bias).unwrap(),
            &g,
        )
        .unwrap();
        assert_eq!(y.shape, g.output_shape());
        assert_close(
            "f16 weights",
            &y.to_f32(&d).unwrap(),
            &half::cpu_layer_f16w(&x, &w, &bias, &g),
            1e-4,
            1e-4,
        );
        let short = d.upload(&w[1..]).unwrap();
        expect_err(
            half::layer_f16w(
                &d,
                &arr(&d, &x, &g.input_shape()),
                &short,
                &d.upload(&bias).unwrap(),
                &g,
            ),
            "layer_f16w: expected f16 weights of",
        );
    }
}
