//! The shapes of kiln's benchmarks and examples that the limit-profile test (`ops/limits.rs`) plans
//! under every adapter profile; the standard-WGSL check (`tests/tint.rs`) plans them too, to
//! compile each chosen kernel with the override constants its launcher would pass.

use kiln_ops::attention::{self, AttnCall};
use kiln_ops::conv::{self, Conv2dSpec, ConvPass};
use kiln_ops::gemm::{self, GemmCall};
use kiln_ops::kernels::Planned;
use kiln_ops::{Device, OpError};

/// A Linear layer's three GEMMs at `rows` rows: y = x W^T, dx = dy W, dW = dy^T x (as
/// matmul_backward forms them), in f32 and, where `f16`, in f16 too.
pub fn linear(rows: usize, inp: usize, out: usize, f16: bool) -> Vec<GemmCall> {
    let mut v = Vec::new();
    for h in [false].into_iter().chain(f16.then_some(true)) {
        v.push(GemmCall::matmul(
            1, rows, out, inp, false, true, false, false, h,
        ));
        v.push(GemmCall::matmul(
            1, rows, inp, out, false, false, false, false, h,
        ));
        v.push(GemmCall::matmul(
            1, out, inp, rows, true, false, false, false, h,
        ));
    }
    v
}

/// Attention's batched products in the unfused reference path are not planned; the
/// Transformer's projections, feed-forward layers and head are.
pub fn transformer(
    batch: usize,
    context: usize,
    width: usize,
    vocab: usize,
    f16: bool,
) -> Vec<GemmCall> {
    let rows = batch * context;
    let mut v = linear(rows, width, width, f16); // q, k, v, out projections
    v.extend(linear(rows, width, 4 * width, f16));
    v.extend(linear(rows, 4 * width, width, f16));
    v.extend(linear(rows, width, vocab, f16));
    v
}

/// An LSTM layer: the input projection of every step at once, the recurrent product per step,
/// and their gradients (batch 1: generation).
pub fn lstm(batch: usize, steps: usize, inp: usize, hidden: usize) -> Vec<GemmCall> {
    let mut v = linear(batch * steps, inp, 4 * hidden, false);
    v.extend(linear(batch, hidden, 4 * hidden, false));
    v
}

pub fn gemm_shapes() -> Vec<(String, GemmCall)> {
    let mut all: Vec<(String, Vec<GemmCall>)> = Vec::new();
    // benches/matmul.rs: square f32 and f16.
    for n in [256, 512, 1024, 2048, 4096] {
        all.push((
            format!("bench matmul {n}"),
            vec![
                GemmCall::matmul(1, n, n, n, false, false, false, false, false),
                GemmCall::matmul(1, n, n, n, false, false, false, false, true),
            ],
        ));
    }
    for batch in [1, 64, 128, 256] {
        // LeNet-5's classifier, the MNIST MLP.
        let mut lenet = linear(batch, 400, 120, false);
        lenet.extend(linear(batch, 120, 84, false));
        lenet.extend(linear(batch, 84, 10, false));
        all.push((format!("lenet fc batch {batch}"), lenet));
        let mut mlp = linear(batch, 784, 256, false);
        mlp.extend(linear(batch, 256, 10, false));
        all.push((format!("mlp batch {batch}"), mlp));
    }
    // The character Transformer: small preset (2 x 64, context 64, batch 16), GPU preset (6 x
    // 384, context 256, batch 64, f16 under autocast), and batch 1 generation.
    all.push((
        "transformer small".into(),
        transformer(16, 64, 64, 65, false),
    ));
    all.push((
        "transformer gpu".into(),
        transformer(64, 256, 384, 65, true),
    ));
    all.push((
        "transformer gpu batch 1".into(),
        transformer(1, 1, 384, 65, true),
    ));
    // The character LSTM (2 x 128, embedding 64, context 32, batch 16), train_step's (2 x 256,
    // 100 steps, batch 64), generation at batch 1, the RNN example (2 x 32, 11 steps).
    let mut l = lstm(16, 32, 64, 128);
    l.extend(lstm(16, 32, 128, 128));
    l.extend(linear(16 * 32, 128, 65, false));
    all.push(("char lstm".into(), l));
    all.push(("lstm 2x256 batch 64".into(), lstm(64, 100, 256, 256)));
    all.push(("lstm batch 1".into(), lstm(1, 1, 256, 256)));
    all.push(("lstm 1024 batch 1".into(), lstm(1, 1, 1024, 1024)));
    all.push(("rnn example".into(), lstm(32, 11, 32, 32)));
    all.into_iter()
        .flat_map(|(name, calls)| calls.into_iter().map(move |c| (name.clone(), c)))
        .collect()
}

pub fn conv_shapes() -> Vec<(String, [usize; 4], [usize; 4], Conv2dSpec)> {
    let pad = |p| Conv2dSpec {
        padding: (p, p),
        ..Default::default()
    };
    let mut v = Vec::new();
    for batch in [1, 64, 256] {
        v.push((
            format!("lenet conv1 b{batch}"),
            [batch, 1, 28, 28],
            [6, 1, 5, 5],
            pad(2),
        ));
        v.push((
            format!("lenet conv2 b{batch}"),
            [batch, 6, 14, 14],
            [16, 6, 5, 5],
            pad(0),
        ));
    }
    for batch in [1, 2, 32] {
        v.push((
            format!("conv3x3_128 b{batch}"),
            [batch, 128, 56, 56],
            [128, 128, 3, 3],
            pad(1),
        ));
    }
    v
}

pub fn attention_shapes() -> Vec<(String, AttnCall)> {
    vec![
        (
            "bench attention gpu".into(),
            AttnCall::new(8, 12, 1024, 1024, 64),
        ),
        (
            "bench attention soft".into(),
            AttnCall::new(1, 2, 256, 256, 64),
        ),
        ("transformer small".into(), AttnCall::new(16, 4, 64, 64, 16)),
        ("transformer gpu".into(), AttnCall::new(64, 6, 256, 256, 64)),
        (
            "transformer gpu batch 1".into(),
            AttnCall::new(1, 6, 1, 256, 64),
        ),
        ("head_dim 128".into(), AttnCall::new(2, 4, 512, 512, 128)),
        ("head_dim 1".into(), AttnCall::new(1, 1, 7, 7, 1)),
        // Under autocast: f16 operands.
        (
            "bench attention gpu f16".into(),
            AttnCall::new(8, 12, 1024, 1024, 64).with_f16(true),
        ),
        (
            "transformer gpu f16".into(),
            AttnCall::new(64, 6, 256, 256, 64).with_f16(true),
        ),
        (
            "head_dim 128 f16".into(),
            AttnCall::new(2, 4, 512, 512, 128).with_f16(true),
        ),
    ]
}

/// Column reductions (bias, LayerNorm and abs-max gradients): the Transformer's [B * T, width]
/// columns, LeNet's and the MLP's biases, a whole tensor's abs-max, as (outer, len, inner).
pub fn colsum_shapes() -> Vec<(usize, usize, usize)> {
    vec![
        (1, 64 * 256, 384),
        (1, 64 * 256, 1536),
        (1, 16 * 64, 64),
        (1, 64, 120),
        (1, 128, 256),
        (1, 1 << 20, 1),
        (1, 1, 384),
    ]
}

/// Parameters per optimizer group: LeNet's ten, a Transformer's 76.
pub fn optim_groups() -> Vec<usize> {
    vec![10, 76]
}

/// Every shape above planned on `dev` (under its policy's profile), named for messages: GEMMs,
/// each convolution's three passes, LeNet's pooling, column reductions, optimizer groups,
/// attention, the row kernels.
pub fn plan_all(dev: &Device) -> Vec<(String, Result<Planned, OpError>)> {
    let mut out = Vec::new();
    for (what, call) in gemm_shapes() {
        out.push((format!("{what} {call:?}"), gemm::plan(dev, &call)));
    }
    for (what, xs, ws, spec) in conv_shapes() {
        for pass in [ConvPass::Forward, ConvPass::InputGrad, ConvPass::WeightGrad] {
            let r = conv::plan(dev, pass, xs, ws, &spec);
            out.push((format!("{what} {pass:?}"), r));
        }
    }
    for batch in [1, 64, 256] {
        for xs in [[batch, 6, 28, 28], [batch, 16, 10, 10]] {
            let spec = kiln_ops::pool::Pool2dSpec::square(2);
            out.push((
                format!("lenet pool {xs:?}"),
                kiln_ops::pool::plan(dev, xs, &spec),
            ));
        }
    }
    for (outer, len, inner) in colsum_shapes() {
        let call = kiln_ops::reduce::ColsumCall {
            outer,
            len,
            inner,
            mean: false,
        };
        let what = format!("reduction {outer}x{len}x{inner}");
        out.push((what, kiln_ops::reduce::plan(dev, &call)));
    }
    for params in optim_groups() {
        let call = kiln_ops::optim::OptimCall {
            params,
            quads: true,
        };
        let what = format!("optimizer group of {params}");
        out.push((what, kiln_ops::optim::plan(dev, &call)));
    }
    for (what, call) in attention_shapes() {
        out.push((what, attention::plan(dev, &call)));
    }
    // Row kernels: LeNet's and the character models' classes, GPT-2's width and vocabulary
    // (padded and not), batch 1 and training batches of rows. (Where the array alone is over one
    // binding, as 8,192 rows of GPT-2's vocabulary are on Apple's 1 GiB or WebGPU's 128 MiB,
    // nothing that makes it runs either.)
    for rows in [1, 64, 2048, 8192] {
        for (cols, vec4) in [
            (10, false),
            (65, false),
            (384, true),
            (768, true),
            (50257, false),
            (50304, true),
        ] {
            if !dev.adapter_profile().fits_binding((rows * cols * 4) as u64) {
                continue;
            }
            for op in kiln_ops::rows::RowOp::ALL {
                let call = kiln_ops::rows::RowCall {
                    op,
                    rows,
                    cols,
                    vec4,
                };
                let what = format!("{op:?} [{rows}, {cols}] vec4={vec4}");
                out.push((what, kiln_ops::rows::planned(dev, &call)));
            }
        }
    }
    out
}
