//! What every example shares, so each behaves the same: flag value parsers that refuse bad values
//! at parse time (zero sizes, NaN or infinite rates, fractions outside their range), the
//! checkpoint and report options (checked before any training: a path that cannot be written, or
//! that another run is saving to, fails at once), and the closing JSON line, written by serde_json
//! (a non-finite figure is `null` and an error exit, never `NaN`).
//!
//! Each example compiles this file in with `#[path = "common/mod.rs"] mod common;` and uses the
//! parts that fit it.
#![allow(dead_code)]
use anyhow::{bail, Context, Result};
use kiln::nn::{Module, Optimizer};
use kiln::train::checkpoint::{load_training, CheckpointConfig, Resumed, RunSettings};
use kiln::train::lm_train::LmConfig;
use kiln::train::{EpochStats, FitConfig};
use std::path::{Path, PathBuf};

// ---- value parsers (clap `value_parser = common::NAME`) ----

/// A count of at least 1 (sizes, epochs, steps).
pub fn positive(s: &str) -> Result<usize, String> {
    let v: usize = s
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    if v == 0 {
        return Err("must be at least 1".into());
    }
    Ok(v)
}

/// A finite number above 0 (learning rates, temperatures).
pub fn positive_f32(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(format!("must be a finite number above 0, got {v}"));
    }
    Ok(v)
}

/// A finite number in [0, 1] (weights of a mix).
pub fn unit(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("must be in [0, 1], got {v}"));
    }
    Ok(v)
}

/// A finite number in [0, 1) (fractions removed).
pub fn fraction(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(0.0..1.0).contains(&v) {
        return Err(format!("must be in [0, 1), got {v}"));
    }
    Ok(v)
}

/// A percentile in (0, 100].
pub fn percentile(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|_| format!("{s:?} is not a number"))?;
    if !(v > 0.0 && v <= 100.0) {
        return Err(format!("must be in (0, 100], got {v}"));
    }
    Ok(v)
}

// ---- checkpoints and reports ----

/// `--save`, `--save-every`, `--resume`, `--override`, `--out`, `--finite-check-every`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Write a training checkpoint here at the end (safetensors: PyTorch names, optimizer state,
    /// the run's settings). Its folder must exist; no other run may be saving to it.
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Also write it every N epochs (every N evaluations for the language models; needs --save).
    #[arg(long, value_parser = positive)]
    pub save_every: Option<usize>,
    /// Continue from a training checkpoint written by --save, with the same settings.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Accept this setting differing from the checkpoint's on --resume (repeat or separate with
    /// commas: --override epochs,lr).
    #[arg(long = "override", value_name = "NAME", value_delimiter = ',')]
    pub overrides: Vec<String>,
    /// Directory for history.csv and history.svg (created if missing; default: beside --save).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Check parameters and optimizer state for NaN and infinities every N steps (default: where
    /// the loss is read); 1 names the exact step a value went bad.
    #[arg(long, value_parser = positive)]
    pub finite_check_every: Option<usize>,
}

/// A run's checkpoint and report options, checked: the checkpoint path is writable and locked,
/// the report folder exists and is writable.
pub struct Run {
    args: RunArgs,
    settings: RunSettings,
    checkpoint: Option<CheckpointConfig>,
    out: Option<PathBuf>,
}

impl RunArgs {
    /// Checks the options before anything else happens: `--save-every` and `--override` need what
    /// they refer to; the checkpoint's folder exists and is writable and no other run is saving to
    /// the same path (its lock is held from now until the run ends); the report folder can be
    /// created and written. `settings` are the run's (seed, sizes, rates...), stored in every
    /// checkpoint and compared on `--resume`.
    pub fn start(&self, settings: RunSettings) -> Result<Run> {
        if self.save_every.is_some() && self.save.is_none() {
            bail!("--save-every needs --save PATH");
        }
        if !self.overrides.is_empty() && self.resume.is_none() {
            bail!("--override needs --resume PATH");
        }
        if let Some(path) = &self.resume {
            anyhow::ensure!(path.is_file(), "--resume {}: no such file", path.display());
        }
        let checkpoint = match &self.save {
            Some(path) => Some(
                CheckpointConfig::new(path, usize::MAX)
                    .with_context(|| format!("--save {}", path.display()))?
                    .with_settings(settings.clone()),
            ),
            None => None,
        };
        let out = self.out.clone().or_else(|| {
            self.save
                .as_ref()
                .map(|p| p.parent().unwrap_or(Path::new("")).to_path_buf())
                .map(|p| {
                    if p.as_os_str().is_empty() {
                        ".".into()
                    } else {
                        p
                    }
                })
        });
        if let Some(dir) = &out {
            writable_dir(dir).with_context(|| format!("--out {}", dir.display()))?;
        }
        Ok(Run {
            args: self.clone(),
            settings,
            checkpoint,
            out,
        })
    }
}

/// Creates `dir` if missing and proves a file can be written in it.
pub fn writable_dir(dir: &Path) -> Result<()> {
    anyhow::ensure!(
        !dir.exists() || dir.is_dir(),
        "{} is a file, not a folder",
        dir.display()
    );
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let probe = dir.join(format!(".kiln-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("{} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

impl Run {
    fn resume(&self, model: &dyn Module, opt: &mut Optimizer) -> Result<Option<Resumed>> {
        let Some(path) = &self.args.resume else {
            return Ok(None);
        };
        let r = load_training(path, model, opt, &self.settings, &self.args.overrides)
            .with_context(|| format!("--resume {}", path.display()))?;
        Ok(Some(r))
    }

    /// Restores the checkpoint when resuming, and sets the checkpoint, the start epoch, the
    /// earlier history and the finite checks in `cfg`.
    pub fn prepare(
        &self,
        model: &dyn Module,
        opt: &mut Optimizer,
        cfg: &mut FitConfig<'_>,
    ) -> Result<()> {
        if let Some(r) = self.resume(model, opt)? {
            anyhow::ensure!(
                r.epochs_done <= cfg.epochs,
                "--resume {}: {} epochs are done already, more than --epochs {} (ask for at least {} to continue)",
                self.args.resume.as_ref().map_or(String::new(), |p| p.display().to_string()),
                r.epochs_done,
                cfg.epochs,
                r.epochs_done
            );
            eprintln!(
                "resumed after epoch {} (step {})",
                r.epochs_done,
                opt.steps()
            );
            cfg.start_epoch = r.epochs_done;
            cfg.history = r.history;
        }
        cfg.checkpoint = self.checkpoint.clone().map(|mut c| {
            c.every_epochs = self.args.save_every.unwrap_or(cfg.epochs);
            c
        });
        if let Some(k) = self.args.finite_check_every {
            cfg.finite_check_every = k;
        }
        Ok(())
    }

    /// The same for the language-model loop (checkpoints every N evaluations).
    pub fn prepare_lm(
        &self,
        model: &dyn Module,
        opt: &mut Optimizer,
        cfg: &mut LmConfig,
    ) -> Result<()> {
        if let Some(r) = self.resume(model, opt)? {
            anyhow::ensure!(
                opt.steps() as usize <= cfg.steps,
                "--resume: {} steps are done already, more than --steps {} (ask for at least {} to continue)",
                opt.steps(),
                cfg.steps,
                opt.steps()
            );
            eprintln!("resumed at step {}", opt.steps());
            cfg.history = r.history;
        }
        cfg.checkpoint = self.checkpoint.clone().map(|mut c| {
            c.every_epochs = self.args.save_every.unwrap_or(usize::MAX);
            c
        });
        if let Some(k) = self.args.finite_check_every {
            cfg.finite_check_every = k;
        }
        Ok(())
    }

    /// Writes history.csv and history.svg where asked (rows by epoch).
    pub fn finish(&self, history: &[EpochStats]) -> Result<()> {
        self.finish_by(history, "epoch")
    }

    /// The same with rows named by `x` (`step` for the language models' evaluation points).
    pub fn finish_by(&self, history: &[EpochStats], x: &str) -> Result<()> {
        if let Some(path) = &self.args.save {
            eprintln!("saved {}", path.display());
        }
        if let Some(dir) = &self.out {
            kiln::train::report::write_reports_by(dir, history, x)?;
            eprintln!("wrote {0}/history.csv and {0}/history.svg", dir.display());
        }
        Ok(())
    }
}

// ---- the closing JSON line ----

#[path = "json.rs"]
mod json;
pub use json::JsonLine;
