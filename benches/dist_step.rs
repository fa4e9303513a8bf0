//! Data-parallel training steps through kiln::dist: LeNet-5 at a global batch of 64 (SGD with
//! momentum) and the small character Transformer (2 x 64, context 64) at a global batch of 16
//! (AdamW), at 1 and 2 processes, with PyTorch's 25 MiB buckets and with 64 KiB ones (several
//! buckets, so that all-reduces start while backward still runs). One JSON line per run: ms per
//! step, and its split as rank 0's host saw it: submitting the step's pieces, waiting for the
//! device, host copies (gradients from the mapped copies into the send buffer, combined values
//! back up), waiting for the all-reduce once every bucket is on its way, and the rest (the loop,
//! the device finishing after the last update); and the gradient bytes each process all-reduces
//! per step. Lines without kiln-dist (one process, one recorded plan per step) give the baseline:
//! steps queued back to back, and each step waited for before the next, as a data-parallel step
//! must be (its update needs every process's gradients).
//!
//! `cargo bench --features dist --bench dist_step` runs the baseline itself, then starts itself under
//! `mpirun -np 1` and `mpirun -np 2` (with scripts/mpirun.sh's `--oversubscribe --bind-to none`
//! and Open MPI's allow-run-as-root variables, for CI's root user) for the rest.
mod common;

use kiln::device::Device;
use kiln::dist::{launched_by_mpi, DdpConfig, Dist, DistributedDataParallel};
use kiln::graph::{StepPlan, Tensor};
use kiln::nn::init::Rng;
use kiln::nn::lenet::lenet5;
use kiln::nn::lm::{CharTransformer, LanguageModel, TransformerLmConfig};
use kiln::nn::{AdamW, Module, NnError, Optimizer, Sgd};
use std::process::Command;
use std::time::Instant;

const LENET_STEPS: usize = 30;
const TRANSFORMER_STEPS: usize = 10;
const GLOBAL_LENET: usize = 64;
const GLOBAL_TRANSFORMER: usize = 16;

/// A workload: its model and optimizer, and the loss of a batch of `n` examples, built from
/// fixed random data (the data stays in place: only the step is timed).
struct Workload {
    name: &'static str,
    model: Box<dyn Module>,
    opt: Optimizer,
    steps: usize,
    global: usize,
    kind: Kind,
}

enum Kind {
    Lenet,
    /// Context length.
    Transformer(usize),
}

fn workloads(dev: &Device) -> anyhow::Result<Vec<Workload>> {
    let lenet = lenet5(dev, 0)?;
    let opt = Sgd::new(0.01)
        .with_momentum(0.9)
        .init(dev, lenet.parameters())?;
    let cfg = TransformerLmConfig {
        vocab: 65,
        context: 64,
        d_model: 64,
        heads: 4,
        layers: 2,
        dropout: 0.0,
    };
    let lm = CharTransformer::new(dev, 0, &cfg)?;
    let lm_opt = AdamW::new(3e-4)
        .with_weight_decay(0.01)
        .init(dev, lm.parameters())?;
    Ok(vec![
        Workload {
            name: "lenet5",
            model: Box::new(lenet),
            opt,
            steps: LENET_STEPS,
            global: GLOBAL_LENET,
            kind: Kind::Lenet,
        },
        Workload {
            name: "char_transformer_2x64_ctx64",
            model: Box::new(lm),
            opt: lm_opt,
            steps: TRANSFORMER_STEPS,
            global: GLOBAL_TRANSFORMER,
            kind: Kind::Transformer(64),
        },
    ])
}

/// The batch of `n` examples and a closure computing its loss.
type LossFn<'a> = Box<dyn Fn() -> Result<Tensor, NnError> + 'a>;

fn loss_fn<'a>(
    dev: &Device,
    model: &'a dyn Module,
    kind: &Kind,
    n: usize,
) -> anyhow::Result<LossFn<'a>> {
    let mut rng = Rng::new(1);
    Ok(match *kind {
        Kind::Lenet => {
            let x = Tensor::from_f32(dev, &rng.vec(n * 784, -1.0, 1.0), &[n, 1, 28, 28])?;
            let labels: Vec<i32> = (0..n).map(|i| (i % 10) as i32).collect();
            let y = Tensor::from_i32(dev, &labels, &[n])?;
            Box::new(move || {
                model
                    .forward(&x)?
                    .cross_entropy(&y, None)
                    .map_err(Into::into)
            })
        }
        Kind::Transformer(t) => {
            let lm = model
                .as_any()
                .downcast_ref::<CharTransformer>()
                .ok_or_else(|| anyhow::anyhow!("not the Transformer"))?;
            let ids: Vec<i32> = (0..n * t).map(|_| rng.below(65) as i32).collect();
            let x = Tensor::from_i32(dev, &ids, &[n, t])?;
            let y = Tensor::from_i32(dev, &ids, &[n * t])?;
            Box::new(move || lm.logits(&x)?.cross_entropy(&y, None).map_err(Into::into))
        }
    })
}

fn main() -> anyhow::Result<()> {
    if launched_by_mpi() {
        return child();
    }
    let dev = Device::new()?;
    for mut w in workloads(&dev)? {
        let loss = loss_fn(&dev, w.model.as_ref(), &w.kind, w.global)?;
        let (plan, l) = StepPlan::record(&dev, || {
            let l = loss()?;
            l.backward()?;
            w.opt.step()?;
            Ok::<_, NnError>(l)
        })?;
        drop(loss);
        for _ in 0..2 {
            w.opt.replay(&plan)?;
        }
        dev.wait()?;
        // Steps queued back to back (the loop fit runs), then each waited for, as a data-parallel
        // step must: its update needs every process's gradients.
        for waited in [false, true] {
            let t0 = Instant::now();
            for _ in 0..w.steps {
                w.opt.prepare_replay()?;
                if waited {
                    let t = dev.read_async(&l.array().buf)?;
                    plan.replay()?;
                    t.wait::<f32>()?;
                } else {
                    plan.replay()?;
                }
            }
            dev.wait()?;
            common::JsonLine::bench("dist_step")
                .set("model", w.name)
                .set("processes", 1)
                .set("kiln_dist", false)
                .set("each_step_waited", waited)
                .set("global_batch", w.global)
                .num(
                    "ms_per_step",
                    t0.elapsed().as_secs_f64() * 1e3 / w.steps as f64,
                    2,
                )
                .set("adapter", dev.adapter().name.clone())
                .print()?;
        }
    }
    let me = std::env::current_exe()?;
    for (np, bucket) in [(1, 25 << 20), (2, 25 << 20), (2, 64 << 10)] {
        let status = Command::new("mpirun")
            // As scripts/mpirun.sh: bound to one core, a process starves lavapipe.
            .args([
                "-np",
                &np.to_string(),
                "--oversubscribe",
                "--bind-to",
                "none",
            ])
            .arg(&me)
            .arg(bucket.to_string())
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
            .status()?;
        anyhow::ensure!(status.success(), "mpirun -np {np}: {status}");
    }
    Ok(())
}

/// One process of `mpirun -np N`: the data-parallel steps, reported by rank 0.
fn child() -> anyhow::Result<()> {
    let dist = Dist::init(kiln::dist::DEFAULT_TIMEOUT)?;
    let result = (|| -> anyhow::Result<()> {
        let bucket_bytes: usize = std::env::args()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("bucket bytes"))?
            .parse()?;
        let dev = dist.device(None)?;
        for mut w in workloads(&dev)? {
            let share = kiln::train::parallel::Share::of(w.global, dist.rank(), dist.size());
            let loss = loss_fn(&dev, w.model.as_ref(), &w.kind, share.len)?;
            let mut ddp = DistributedDataParallel::new(&dist, &dev, DdpConfig { bucket_bytes });
            ddp.broadcast(w.model.as_ref(), &mut w.opt)?;
            let id = ddp.record(&w.opt, false, &*loss)?;
            ddp.step(&mut w.opt, id, share.weight())?;
            for _ in 0..2 {
                ddp.step(&mut w.opt, id, share.weight())?;
            }
            dev.wait()?;
            dist.barrier("the start of the timed steps");
            ddp.reset_times();
            let t0 = Instant::now();
            for _ in 0..w.steps {
                ddp.step(&mut w.opt, id, share.weight())?;
            }
            dev.wait()?;
            let ms = t0.elapsed().as_secs_f64() * 1e3 / w.steps as f64;
            let t = ddp.times();
            let per = |s: f64| s * 1e3 / t.steps.max(1) as f64;
            let split = per(t.submit) + per(t.compute) + per(t.copies) + per(t.allreduce);
            if dist.is_root() {
                common::JsonLine::bench("dist_step")
                    .set("model", w.name)
                    .set("processes", dist.size())
                    .set("kiln_dist", true)
                    .set("global_batch", w.global)
                    .set("bucket_kib", bucket_bytes >> 10)
                    .set("buckets", ddp.bucket_sizes().len())
                    .num("ms_per_step", ms, 2)
                    .num("submit_ms", per(t.submit), 2)
                    .num("device_wait_ms", per(t.compute), 2)
                    .num("host_copies_ms", per(t.copies), 2)
                    .num("allreduce_wait_ms", per(t.allreduce), 2)
                    .num("other_ms", (ms - split).max(0.0), 2)
                    .set("allreduce_bytes_per_step", t.bytes / t.steps.max(1))
                    .set("adapter", dev.adapter().name.clone())
                    .print()?;
            }
        }
        Ok(())
    })();
    if let Err(e) = &result {
        dist.fail(&format!("{e:#}"));
    }
    result
}
