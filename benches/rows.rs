//! Row kernels: cross-entropy forward + backward over a language model's vocabulary (50,257
//! classes), beside one element-wise pass chain over the same elements
//! (`x.affine().square().sum_all()`: two full passes that read and write, and a reduction), and
//! softmax and layer norm forward + backward. GPU timestamps where available. Rows: 8,192 on
//! GPUs (GPT-2's B 8 x T 1024), 512 on software adapters; layer norm over [rows, 768].
//! Run: cargo bench --bench rows.
use kiln::device::Device;
use kiln::graph::Tensor;
use kiln::ops::{norm, softmax, Array, OpError};

mod common;

fn main() -> anyhow::Result<()> {
    let dev = Device::new()?;
    let soft = dev.adapter().is_software;
    let rows = if soft { 512 } else { 8192 };
    let reps = if soft { 3 } else { 20 };
    let vocab = 50257;
    let mut rng = kiln::nn::init::Rng::new(5);
    let x = Array::from_f32(&dev, &rng.vec(rows * vocab, -4.0, 4.0), &[rows, vocab])?;
    let labels: Vec<i32> = (0..rows).map(|i| (i * 7919 % vocab) as i32).collect();
    let y = Array::from_i32(&dev, &labels, &[rows])?;
    let one = Array::from_f32(&dev, &[1.0], &[1])?;
    let xent = || {
        let ce = softmax::cross_entropy(&dev, &x, &y, None)?;
        softmax::cross_entropy_backward(&dev, &ce, &one).map(|_| ())
    };
    let xt = Tensor::from_f32(&dev, &rng.vec(rows * vocab, -4.0, 4.0), &[rows, vocab])?;
    let chain = || xt.affine(0.5, 1.0)?.square()?.sum_all().map(|_| ());
    let sm = || {
        let s = softmax::softmax(&dev, &x, false)?;
        softmax::softmax_backward(&dev, &s, &x, false).map(|_| ())
    };
    let width = 768;
    let h = Array::from_f32(&dev, &rng.vec(rows * width, -2.0, 2.0), &[rows, width])?;
    let g = Array::from_f32(&dev, &rng.vec(width, 0.5, 1.5), &[width])?;
    let b = Array::from_f32(&dev, &rng.vec(width, -0.5, 0.5), &[width])?;
    let ln = || {
        let (_, saved) = norm::layer_norm(&dev, &h, &g, &b, 1e-5)?;
        norm::layer_norm_backward(&dev, &h, &g, &saved, &h).map(|_| ())
    };
    let big = (rows * vocab) as f64;
    let lines: [(&str, Vec<usize>, f64, f64); 4] = [
        (
            "cross_entropy_fwd_bwd",
            vec![rows, vocab],
            time(&dev, reps, &xent)?,
            3.0 * big,
        ),
        (
            "affine_square_sum",
            vec![rows, vocab],
            time(&dev, reps, &chain)?,
            5.0 * big,
        ),
        (
            "softmax_fwd_bwd",
            vec![rows, vocab],
            time(&dev, reps, &sm)?,
            6.0 * big,
        ),
        (
            "layer_norm_fwd_bwd",
            vec![rows, width],
            time(&dev, reps, &ln)?,
            7.0 * (rows * width) as f64,
        ),
    ];
    for (op, shape, ms, floats) in lines {
        common::JsonLine::bench("rows")
            .set("op", op)
            .set("shape", shape)
            .num("ms_per_call", ms, 3)
            // Bytes each pass must at least move (reads and writes of f32), per second.
            .num("gb_per_s", floats * 4.0 / (ms * 1e-3) / 1e9, 2)
            .set("adapter", dev.adapter().name.clone())
            .print()?;
    }
    Ok(())
}

fn time(dev: &Device, reps: usize, work: &dyn Fn() -> Result<(), OpError>) -> anyhow::Result<f64> {
    let t = common::time_reps(dev, reps, work)?;
    Ok(t.seconds * 1e3 / reps as f64)
}
