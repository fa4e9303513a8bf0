//! The program kiln-dist's MPI tests start, under `mpirun -np N` or alone as the one-process
//! reference. Not a tool for users: tests/mpi.rs drives it and compares what it writes.
//!
//! `dist_check MODE [--key value]... [--dp]`; every run writes, into `--out DIR`, one
//! `params.rankR.f32` file per process: the model's parameters (LeNet-5, PyTorch's order) after
//! every step or epoch, appended as raw little-endian f32, and `loss.rankR.txt`, a loss per line.
//!
//! - `steps`: a hand-written loop of `--steps` steps at global batch `--batch` over the
//!   distributed sampler's first epoch; with `--dp`, through `DistributedDataParallel` (and
//!   `--micro 2`: two micro-batches per process, the first under `no_sync`); without, the plain
//!   recorded step of a single process. Parameters after every step.
//! - `broadcast`: with `--dp`, each process builds its model from the seed `--seed + rank`, then
//!   broadcasts and takes one step. Parameters before the broadcast, after it and after the step.
//! - `fit`: `kiln_train::fit` (distributed with `--dp`) for `--epochs` over the first `--n`
//!   images; parameters after every epoch. `--save`/`--resume` a training checkpoint (written
//!   every epoch); `--fail-step S --fail-rank R --fail-mode error|kill|hang` makes rank R fail as
//!   step S begins.

use kiln_dist::{DdpConfig, Dist, DistributedDataParallel, DistributedSampler};
use kiln_graph::{Device, StepPlan, Tensor};
use kiln_nn::data::{gather_rows, Mnist};
use kiln_nn::lenet::lenet5;
use kiln_nn::loss::Loss;
use kiln_nn::{Adam, Sequential, Sgd};
use kiln_nn::{Module, NnError, Optimizer};
use kiln_train::checkpoint::{load_training, CheckpointConfig, RunSettings};
use kiln_train::{fit, ArrayDataset, FitConfig};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

type Error = Box<dyn std::error::Error>;

struct Args {
    mode: String,
    values: HashMap<String, String>,
    dp: bool,
}

impl Args {
    fn parse() -> Result<Args, Error> {
        let mut it = std::env::args().skip(1);
        let mode = it
            .next()
            .ok_or("usage: dist_check MODE [--key value]... [--dp]")?;
        let (mut values, mut dp) = (HashMap::new(), false);
        while let Some(k) = it.next() {
            let key = k.strip_prefix("--").ok_or(format!("not an option: {k}"))?;
            if key == "dp" {
                dp = true;
            } else {
                let v = it.next().ok_or(format!("--{key} needs a value"))?;
                values.insert(key.to_string(), v);
            }
        }
        Ok(Args { mode, values, dp })
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }
    fn num(&self, key: &str, default: usize) -> Result<usize, Error> {
        match self.get(key) {
            Some(v) => Ok(v
                .parse()
                .map_err(|_| format!("--{key} {v}: not a number"))?),
            None => Ok(default),
        }
    }
}

/// What a process writes: its parameters and losses, appended.
struct Dump {
    params: std::fs::File,
    loss: std::fs::File,
}

impl Dump {
    fn new(dir: &Path, rank: usize) -> Result<Dump, Error> {
        std::fs::create_dir_all(dir)?;
        Ok(Dump {
            params: std::fs::File::create(dir.join(format!("params.rank{rank}.f32")))?,
            loss: std::fs::File::create(dir.join(format!("loss.rank{rank}.txt")))?,
        })
    }
    fn params(&mut self, model: &dyn Module) -> Result<(), Error> {
        for p in model.parameters() {
            for v in p.to_vec()? {
                self.params.write_all(&v.to_le_bytes())?;
            }
        }
        Ok(())
    }
    fn loss(&mut self, loss: f32) -> Result<(), Error> {
        writeln!(self.loss, "{loss}")?;
        Ok(())
    }
}

fn optimizer(dev: &Device, model: &dyn Module, name: &str) -> Result<Optimizer, Error> {
    Ok(match name {
        "sgd" => Sgd::new(0.05)
            .with_momentum(0.9)
            .init(dev, model.parameters())?,
        "adam" => Adam::new(1e-3).init(dev, model.parameters())?,
        other => return Err(format!("--opt {other}: sgd or adam").into()),
    })
}

fn mnist(n: usize) -> Result<(Vec<f32>, Vec<i32>), Error> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
    let m = Mnist::load(&dir)?;
    if n > m.len() {
        return Err(format!("{n} images asked for, {} there", m.len()).into());
    }
    Ok(m.split(0..n)?)
}

fn main() -> std::process::ExitCode {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dist_check: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let dist = if args.dp {
        let timeout = args
            .get("timeout")
            .and_then(|t| t.parse().ok())
            .map_or(kiln_dist::DEFAULT_TIMEOUT, Duration::from_secs_f64);
        match Dist::init(timeout) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("dist_check: {e}");
                return std::process::ExitCode::from(2);
            }
        }
    } else {
        None
    };
    match run(&args, dist.as_ref()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The others would wait for this process's part of the next collective: end the job.
        Err(e) => match &dist {
            Some(d) => d.fail(&e),
            None => {
                eprintln!("dist_check: {e}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

fn run(args: &Args, dist: Option<&Dist>) -> Result<(), Error> {
    let dev = match dist {
        Some(d) => d.device(None)?,
        None => Device::new()?,
    };
    let rank = dist.map_or(0, Dist::rank);
    let out = PathBuf::from(args.get("out").ok_or("--out DIR is required")?);
    let mut dump = Dump::new(&out, rank)?;
    let cfg = DdpConfig {
        bucket_bytes: args.num("bucket-kb", 8)? << 10,
    };
    let seed = args.num("seed", 0)? as u64;
    match args.mode.as_str() {
        "steps" => steps(args, dist, &dev, cfg, seed, &mut dump),
        "broadcast" => {
            let dist = dist.ok_or("broadcast needs --dp")?;
            let model = lenet5(&dev, seed + rank as u64)?;
            let mut opt = optimizer(&dev, &model, "sgd")?;
            dump.params(&model)?;
            let mut ddp = DistributedDataParallel::new(dist, &dev, cfg);
            ddp.broadcast(&model, &mut opt)?;
            dump.params(&model)?;
            let (x, y) = mnist(64)?;
            let share = kiln_train::parallel::Share::of(64, rank, dist.size());
            let xt = Tensor::from_f32(
                &dev,
                &x[share.start * 784..][..share.len * 784],
                &[share.len, 1, 28, 28],
            )?;
            let yt = Tensor::from_i32(&dev, &y[share.range()], &[share.len])?;
            let id = ddp.record(&opt, false, || -> Result<Tensor, NnError> {
                Ok(model.forward(&xt)?.cross_entropy(&yt, None)?)
            })?;
            dump.loss(ddp.step(&mut opt, id, share.weight())?)?;
            dump.params(&model)?;
            Ok(())
        }
        "fit" => fit_mode(args, dist, &dev, cfg, seed, &mut dump),
        other => Err(format!("unknown mode {other}").into()),
    }
}

/// The hand-written loop: the reference's one recorded step per batch, or DDP's.
fn steps(
    args: &Args,
    dist: Option<&Dist>,
    dev: &Device,
    cfg: DdpConfig,
    seed: u64,
    dump: &mut Dump,
) -> Result<(), Error> {
    let (n_steps, batch, micro) = (
        args.num("steps", 20)?,
        args.num("batch", 64)?,
        args.num("micro", 1)?,
    );
    let (x, y) = mnist(n_steps * batch)?;
    let model = lenet5(dev, seed)?;
    let mut opt = optimizer(dev, &model, args.get("opt").unwrap_or("sgd"))?;
    let (rank, world) = dist.map_or((0, 1), |d| (d.rank(), d.size()));
    let sampler = DistributedSampler::new(x.len() / 784, batch, seed, rank, world);
    let Some(dist) = dist else {
        // One process: forward, backward and update in one recorded plan.
        let mut rec: Option<(StepPlan, Tensor, Tensor, Tensor)> = None;
        for (idx, _) in sampler.epoch(1) {
            let (xb, yb) = (gather_rows(&x, 784, &idx), gather_rows(&y, 1, &idx));
            match &rec {
                Some((plan, xt, yt, loss)) => {
                    xt.copy_from_slice(&xb)?;
                    yt.copy_from_slice(&yb)?;
                    opt.replay(plan)?;
                    dump.loss(loss.item()?)?;
                }
                None => {
                    let xt = Tensor::from_f32(dev, &xb, &[idx.len(), 1, 28, 28])?;
                    let yt = Tensor::from_i32(dev, &yb, &[idx.len()])?;
                    let (plan, loss) = StepPlan::record(dev, || {
                        let loss = model.forward(&xt)?.cross_entropy(&yt, None)?;
                        loss.backward()?;
                        opt.step()?;
                        Ok::<_, NnError>(loss)
                    })?;
                    dump.loss(loss.item()?)?;
                    rec = Some((plan, xt, yt, loss));
                }
            }
            dump.params(&model)?;
        }
        return Ok(());
    };
    let mut ddp = DistributedDataParallel::new(dist, dev, cfg);
    ddp.broadcast(&model, &mut opt)?;
    let mut rec: Option<(usize, Tensor, Tensor)> = None;
    for (idx, share) in sampler.epoch(1) {
        if idx.len() % micro != 0 {
            return Err(format!(
                "{} examples do not split into {micro} micro-batches",
                idx.len()
            )
            .into());
        }
        let m = idx.len() / micro;
        let mut loss = 0.0;
        for (i, part) in idx.chunks(m).enumerate() {
            let (xb, yb) = (gather_rows(&x, 784, part), gather_rows(&y, 1, part));
            let id = match &rec {
                Some((id, xt, yt)) => {
                    xt.copy_from_slice(&xb)?;
                    yt.copy_from_slice(&yb)?;
                    *id
                }
                None => {
                    let xt = Tensor::from_f32(dev, &xb, &[m, 1, 28, 28])?;
                    let yt = Tensor::from_i32(dev, &yb, &[m])?;
                    let id = ddp.record(&opt, false, || -> Result<Tensor, NnError> {
                        Ok(model.forward(&xt)?.cross_entropy(&yt, None)?)
                    })?;
                    rec = Some((id, xt, yt));
                    id
                }
            };
            if i + 1 < micro {
                ddp.no_sync(id)?;
            } else {
                // Each micro-batch's gradient is its mean: the accumulated sum counts 1/micro.
                loss = ddp.step(&mut opt, id, share.weight() / micro as f32)?;
            }
        }
        dump.loss(loss)?;
        dump.params(&model)?;
    }
    if rank == 0 {
        eprintln!("buckets (elements): {:?}", ddp.bucket_sizes());
    }
    Ok(())
}

/// LeNet-5 that can fail as a given step begins (fit calls `advance_rng` before every step but
/// the first), in the way `--fail-mode` names.
struct Faulty {
    inner: Sequential,
    steps: AtomicUsize,
    fail_at: Option<usize>,
    mode: String,
}

impl Module for Faulty {
    fn forward(&self, x: &Tensor) -> kiln_nn::Result<Tensor> {
        self.inner.forward(x)
    }
    // The inner stack's layers, under their own names.
    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.inner.children()
    }
    fn children_mut(&mut self) -> Vec<(String, &mut dyn Module)> {
        self.inner.children_mut()
    }
    fn advance_rng(&self) -> kiln_nn::Result<()> {
        // The first step has no call: this is the step about to begin, counted from 1.
        let step = self.steps.fetch_add(1, Ordering::Relaxed) + 2;
        if Some(step) == self.fail_at {
            match self.mode.as_str() {
                "kill" => {
                    let _ = std::process::Command::new("kill")
                        .args(["-9", &std::process::id().to_string()])
                        .status();
                    std::thread::sleep(Duration::from_secs(3600));
                }
                "hang" => std::thread::sleep(Duration::from_secs(3600)),
                _ => {
                    return Err(NnError::Training(format!(
                        "injected fault as step {step} begins"
                    )))
                }
            }
        }
        self.inner.advance_rng()
    }
}

fn fit_mode(
    args: &Args,
    dist: Option<&Dist>,
    dev: &Device,
    cfg: DdpConfig,
    seed: u64,
    dump: &mut Dump,
) -> Result<(), Error> {
    let (n, batch, epochs) = (
        args.num("n", 256)?,
        args.num("batch", 64)?,
        args.num("epochs", 3)?,
    );
    let (x, y) = mnist(n)?;
    let rank = dist.map_or(0, Dist::rank);
    let fails_here = args.num("fail-rank", 1)? == rank;
    let model = Faulty {
        inner: lenet5(dev, seed)?,
        steps: AtomicUsize::new(0),
        fail_at: match (args.get("fail-step"), fails_here) {
            (Some(s), true) => Some(s.parse()?),
            _ => None,
        },
        mode: args.get("fail-mode").unwrap_or("error").to_string(),
    };
    let mut opt = optimizer(dev, &model, args.get("opt").unwrap_or("sgd"))?;
    let mut dumped: Result<(), Error> = Ok(());
    let mut on_epoch = |s: &kiln_train::EpochStats| {
        let r = dump.params(&model).and_then(|_| dump.loss(s.train_loss));
        if dumped.is_ok() {
            dumped = r;
        }
    };
    let mut fc = FitConfig {
        log_every: 1,
        progress: false,
        ..FitConfig::default()
            .with_epochs(epochs)
            .with_batch_size(batch)
            .with_seed(seed)
    };
    // The world size is not a setting: a checkpoint resumes under any number of processes.
    let settings = RunSettings::new()
        .with("n", n)
        .with("batch", batch)
        .with("opt", args.get("opt").unwrap_or("sgd"))
        .with("seed", seed);
    if let Some(path) = args.get("resume") {
        let r = load_training(Path::new(path), &model, &mut opt, &settings, &[])?;
        fc.start_epoch = r.epochs_done;
        fc.history = r.history;
        // The model counts steps from where the checkpoint stopped.
        model.steps.store(opt.steps() as usize, Ordering::Relaxed);
    }
    // Rank 0 alone writes, and alone takes the path's lock.
    if let (Some(p), 0) = (args.get("save"), rank) {
        fc.checkpoint = Some(CheckpointConfig::new(p, 1)?.with_settings(settings));
    }
    let data = ArrayDataset::classes(&x, &[1, 28, 28], &y);
    let mut ddp = dist.map(|d| DistributedDataParallel::new(d, dev, cfg));
    {
        let mut fc = fc.with_callback(&mut on_epoch);
        if let Some(ddp) = &mut ddp {
            fc = fc.with_distributed(ddp);
        }
        fit(dev, &model, &mut opt, Loss::CrossEntropy, &data, fc)?;
    }
    dumped
}
