//! conv2d throughput (GFLOP/s from GPU timestamps where available): forward, input gradient and
//! weight gradient, one JSON line each, on LeNet's conv1 and conv2 at batch 256 and a 3x3 128->128 conv on
//! 56x56 at batch 32 (batch 2 on software adapters, named in the line).
//! Run: cargo bench --bench conv2d (KILN_CASE=lenet_conv2 runs one case). PyTorch on the same
//! shapes: benches/pytorch/conv2d.py.
use kiln::device::Device;
use kiln::ops::conv::{self, Conv2dSpec};
use kiln::ops::{Array, OpError};

mod common;

fn main() -> anyhow::Result<()> {
    let dev = Device::new()?;
    let soft = dev.adapter().is_software;
    let reps = if soft { 2 } else { 20 };
    // (name, x shape, w shape, padding)
    let cases = [
        ("lenet_conv1", [256, 1, 28, 28], [6, 1, 5, 5], 2),
        ("lenet_conv2", [256, 6, 14, 14], [16, 6, 5, 5], 0),
        (
            "conv3x3_128",
            [if soft { 2 } else { 32 }, 128, 56, 56],
            [128, 128, 3, 3],
            1,
        ),
    ];
    for (name, xs, ws, pad) in cases
        .into_iter()
        .filter(|c| std::env::var("KILN_CASE").map_or(true, |v| v == c.0))
    {
        let spec = Conv2dSpec {
            padding: (pad, pad),
            ..Default::default()
        };
        let x = Array::full(&dev, &xs, 0.5)?;
        let w = Array::full(&dev, &ws, 0.25)?;
        let y = conv::conv2d(&dev, &x, &w, None, &spec)?;
        let (oh, ow) = (y.shape[2], y.shape[3]);
        let flops = 2.0 * (xs[0] * ws[0] * oh * ow * ws[1] * ws[2] * ws[3]) as f64;
        let dy = Array::full(&dev, &y.shape, 1.0)?;
        type Work<'a> = Box<dyn Fn() -> Result<(), OpError> + 'a>;
        let passes: [(&str, Work); 3] = [
            (
                "forward",
                Box::new(|| conv::conv2d(&dev, &x, &w, None, &spec).map(|_| ())),
            ),
            (
                "backward_input",
                Box::new(|| conv::conv2d_backward_input(&dev, &dy, &w, &xs, &spec).map(|_| ())),
            ),
            (
                "backward_weight",
                Box::new(|| conv::conv2d_backward_weight(&dev, &dy, &x, &ws, &spec).map(|_| ())),
            ),
        ];
        for (pass, work) in passes {
            let t = common::time_reps(&dev, reps, work)?;
            common::JsonLine::bench("conv2d")
                .set("case", name)
                .set("pass", pass)
                .set("x", xs.to_vec())
                .set("w", ws.to_vec())
                .num("gflops", flops * reps as f64 / t.seconds / 1e9, 2)
                .num("ms_per_call", t.seconds * 1e3 / reps as f64, 3)
                .set("timing", format!("{:?}", t.source))
                .set("adapter", dev.adapter().name.clone())
                .print()?;
        }
    }
    Ok(())
}
