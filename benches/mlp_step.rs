//! Training-step time of an MNIST-sized MLP (784-256-10, batch 128, Adam): eager (graph built
//! every step) against replay (recorded once), with dispatches and submissions per step.
//! One JSON line per mode.
use kiln::device::Device;
use kiln::graph::{StepPlan, Tensor};
use kiln::nn::init::Rng;
use kiln::nn::{Adam, LinearConfig, Module, Relu, Sequential};
use kiln::nn::{NnError, Optimizer};
use std::time::Instant;

mod common;

fn model(dev: &Device) -> Result<Sequential, NnError> {
    let mut r = Rng::new(0);
    Ok(Sequential::new()
        .push(LinearConfig::new(784, 256).init_with(dev, &mut r)?)
        .push(Relu)
        .push(LinearConfig::new(256, 10).init_with(dev, &mut r)?))
}

fn main() -> anyhow::Result<()> {
    let dev = Device::new()?;
    let steps = if dev.adapter().is_software { 20 } else { 200 };
    let mut r = Rng::new(1);
    let xs = r.vec(128 * 784, -1.0, 1.0);
    let ys: Vec<i32> = (0..128).map(|_| r.below(10) as i32).collect();
    for mode in ["eager", "replay"] {
        let m = model(&dev)?;
        let mut opt = Adam::new(1e-3).init(&dev, m.parameters())?;
        let x = Tensor::from_f32(&dev, &xs, &[128, 784])?;
        let y = Tensor::from_i32(&dev, &ys, &[128])?;
        let step_once = |opt: &mut Optimizer| -> Result<Tensor, NnError> {
            let loss = m.forward(&x)?.cross_entropy(&y, None)?;
            loss.backward()?;
            opt.step()?;
            Ok(loss)
        };
        // Warm-up: compile every pipeline, record the plan.
        let (plan, loss) = StepPlan::record(&dev, || step_once(&mut opt))?;
        dev.wait()?;
        let c0 = dev.counters();
        let t0 = Instant::now();
        let mut loss = loss;
        for _ in 0..steps {
            x.copy_from_slice(&xs)?;
            if mode == "eager" {
                opt.zero_grad();
                loss = step_once(&mut opt)?;
                dev.flush()?;
            } else {
                opt.replay(&plan)?;
            }
        }
        dev.wait()?;
        let secs = t0.elapsed().as_secs_f64();
        let c1 = dev.counters();
        common::JsonLine::bench("mlp_step")
            .set("mode", mode)
            .num("ms_per_step", secs * 1e3 / steps as f64, 3)
            .num("samples_per_s", 128.0 * steps as f64 / secs, 0)
            .num(
                "dispatches_per_step",
                (c1.dispatches - c0.dispatches) as f64 / steps as f64,
                1,
            )
            .num(
                "submissions_per_step",
                (c1.submissions - c0.submissions) as f64 / steps as f64,
                2,
            )
            .num("loss", loss.item()? as f64, 4)
            .set("adapter", dev.adapter().name.clone())
            .print()?;
    }
    Ok(())
}
