//! Command-line options the training examples share: checkpoints, resuming and reports.
// Each example uses the half that fits its training loop (fit or train_lm).
#![allow(dead_code)]
use anyhow::{Context, Result};
use kiln::nn::{Module, Optimizer};
use kiln::train::checkpoint::{load_training, CheckpointConfig, Resumed};
use kiln::train::{EpochStats, FitConfig};
use std::path::PathBuf;

/// `--save`, `--save-every`, `--resume`, `--out`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Write a training checkpoint here at the end (safetensors: PyTorch names, optimizer state).
    #[arg(long)]
    pub save: Option<PathBuf>,
    /// Also write it every N epochs (needs --save).
    #[arg(long)]
    pub save_every: Option<usize>,
    /// Continue from a training checkpoint written by --save.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Directory for history.csv and history.svg (default: beside --save, if given).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

impl RunArgs {
    /// Restores a checkpoint when resuming, and sets the checkpoint path, the start epoch and the
    /// earlier history in `cfg`.
    pub fn prepare(
        &self,
        model: &dyn Module,
        opt: &mut Optimizer,
        cfg: &mut FitConfig,
    ) -> Result<()> {
        anyhow::ensure!(
            self.save_every.is_none() || self.save.is_some(),
            "--save-every needs --save PATH"
        );
        if let Some(path) = &self.resume {
            let Resumed {
                epochs_done,
                history,
            } = load_training(path, model, opt).context("resuming")?;
            eprintln!(
                "resumed {} after epoch {epochs_done} (step {})",
                path.display(),
                opt.steps()
            );
            cfg.start_epoch = epochs_done;
            cfg.history = history;
        }
        cfg.checkpoint = self.save.clone().map(|path| CheckpointConfig {
            path,
            every_epochs: self.save_every.unwrap_or(cfg.epochs),
        });
        Ok(())
    }

    /// The same for the language-model loop (checkpoints every N evaluations).
    pub fn prepare_lm(
        &self,
        model: &dyn Module,
        opt: &mut Optimizer,
        cfg: &mut kiln::train::lm::LmConfig,
    ) -> Result<()> {
        anyhow::ensure!(
            self.save_every.is_none() || self.save.is_some(),
            "--save-every needs --save PATH"
        );
        if let Some(path) = &self.resume {
            let Resumed { history, .. } = load_training(path, model, opt).context("resuming")?;
            eprintln!("resumed {} at step {}", path.display(), opt.steps());
            cfg.history = history;
        }
        cfg.checkpoint = self.save.clone().map(|path| CheckpointConfig {
            path,
            every_epochs: self.save_every.unwrap_or(usize::MAX),
        });
        Ok(())
    }

    /// Writes history.csv and history.svg where asked (rows by epoch).
    pub fn finish(&self, history: &[EpochStats]) -> Result<()> {
        self.finish_by(history, "epoch")
    }

    /// The same with rows named by `x` (`step` for the language models' evaluation points).
    pub fn finish_by(&self, history: &[EpochStats], x: &str) -> Result<()> {
        if let Some(path) = &self.save {
            eprintln!("saved {}", path.display());
        }
        let out = self.out.clone().or_else(|| {
            self.save
                .as_ref()
                .and_then(|p| p.parent())
                .map(|p| p.to_path_buf())
        });
        if let Some(dir) = out {
            kiln::train::report::write_reports_by(&dir, history, x)?;
            eprintln!("wrote {0}/history.csv and {0}/history.svg", dir.display());
        }
        Ok(())
    }
}
