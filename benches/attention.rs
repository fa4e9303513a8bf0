//! Fused causal attention throughput (GFLOP/s from GPU timestamps where available), forward and
//! forward + backward: batch 8, 12 heads, sequence 1024, head_dim 64 (batch 1, 2 heads, sequence
//! 256 on software adapters, named in the line). FLOPs count the causal half only: forward
//! 2 * 2 * B*H*T*T*D / 2, backward 2.5 times that, as flash-attention reports do.
//! Run: cargo bench --bench attention. PyTorch on the same shapes: benches/pytorch/attention.py.
use kiln::device::Device;
use kiln::ops::attention::{self, AttentionSpec};
use kiln::ops::{Array, OpError};

mod common;

fn main() -> anyhow::Result<()> {
    let dev = Device::new()?;
    let soft = dev.adapter().is_software;
    let (b, h, t, d) = if soft {
        (1, 2, 256, 64)
    } else {
        (8, 12, 1024, 64)
    };
    let reps = if soft { 2 } else { 20 };
    let shape = [b, h, t, d];
    let mut rng = kiln::nn::init::Rng::new(3);
    let n = b * h * t * d;
    let q = Array::from_f32(&dev, &rng.vec(n, -1.0, 1.0), &shape)?;
    let k = Array::from_f32(&dev, &rng.vec(n, -1.0, 1.0), &shape)?;
    let v = Array::from_f32(&dev, &rng.vec(n, -1.0, 1.0), &shape)?;
    let dout = Array::from_f32(&dev, &rng.vec(n, -1.0, 1.0), &shape)?;
    let spec = AttentionSpec {
        causal: true,
        scale: None,
    };
    let fwd_flops = 2.0 * (b * h * t * t * d) as f64;
    let forward = || attention::attention(&dev, &q, &k, &v, None, &spec).map(|_| ());
    let both = || {
        let (_, saved) = attention::attention(&dev, &q, &k, &v, None, &spec)?;
        attention::attention_backward(&dev, &q, &k, &v, None, &spec, &saved, &dout).map(|_| ())
    };
    type Work<'a> = &'a dyn Fn() -> Result<(), OpError>;
    let passes: [(&str, f64, Work); 2] = [
        ("forward", fwd_flops, &forward),
        ("forward_backward", 3.5 * fwd_flops, &both),
    ];
    for (pass, flops, work) in passes {
        let tm = common::time_reps(&dev, reps, work)?;
        common::JsonLine::bench("attention")
            .set("pass", pass)
            .set("shape", shape.to_vec())
            .set("causal", true)
            .num("gflops", flops * reps as f64 / tm.seconds / 1e9, 2)
            .num("ms_per_call", tm.seconds * 1e3 / reps as f64, 3)
            .set("timing", format!("{:?}", tm.source))
            .set("adapter", dev.adapter().name.clone())
            .print()?;
    }
    Ok(())
}
