//! Cold start: time from the start of the process to the end of the first LeNet training step,
//! without and then with a pipeline cache saved to disk by the first run (where the adapter has
//! one, e.g. Vulkan). Runs itself twice as child processes; one JSON line per run.
use kiln::device::Device;
use kiln::graph::{StepPlan, Tensor};
use kiln::nn::lenet::lenet5;
use kiln::nn::{Module, NnError, Sgd};
use std::time::Instant;

mod common;

fn child(cache: &std::path::Path) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let dev = Device::new()?; // reads KILN_PIPELINE_CACHE when the file exists
    let model = lenet5(&dev, 0)?;
    let mut opt = Sgd::new(0.01)
        .with_momentum(0.9)
        .init(&dev, model.parameters())?;
    let x = Tensor::full(&dev, &[64, 1, 28, 28], 0.1)?;
    let y = Tensor::from_i32(&dev, &[3; 64], &[64])?;
    let (_plan, loss) = StepPlan::record(&dev, || {
        let loss = model.forward(&x)?.cross_entropy(&y, None)?;
        loss.backward()?;
        opt.step()?;
        Ok::<_, NnError>(loss)
    })?;
    loss.item()?;
    let secs = t0.elapsed().as_secs_f64();
    let had_cache = cache.exists();
    let saved = dev.save_pipeline_cache(cache)?;
    common::JsonLine::bench("cold_start")
        .set("model", "lenet5")
        .num("seconds_to_first_step", secs, 3)
        .set("pipeline_cache_loaded", had_cache)
        .set("pipelines_compiled", dev.counters().pipeline_misses)
        .set("cache_saved", saved)
        .set("adapter", dev.adapter().name.clone())
        .print()
}

fn main() -> anyhow::Result<()> {
    let cache = std::env::temp_dir().join(format!("kiln-cold-start-{}.bin", std::process::id()));
    if let Ok(path) = std::env::var("KILN_COLD_CHILD") {
        return child(std::path::Path::new(&path));
    }
    let _ = std::fs::remove_file(&cache);
    let exe = std::env::current_exe()?;
    for _ in 0..2 {
        let out = std::process::Command::new(&exe)
            .env("KILN_COLD_CHILD", &cache)
            .env("KILN_PIPELINE_CACHE", &cache)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    let _ = std::fs::remove_file(&cache);
    Ok(())
}
