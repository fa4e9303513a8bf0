//! Training checkpoints: a model's parameters, the optimizer's state and step count, the dropout
//! generators' offsets and the history so far, in one safetensors file (see
//! [`kiln_nn::serialize`]), so a run continues exactly where it stopped.

use crate::history::{history_csv, parse_history_csv, EpochStats};
use crate::{Result, TrainError};
use kiln_nn::serialize::{load, read_metadata, save};
use kiln_nn::{Module, Optimizer};
use std::path::Path;

/// Where and how often `fit` writes training checkpoints.
#[derive(Clone, Debug)]
pub struct CheckpointConfig {
    /// The file (rewritten atomically each time).
    pub path: std::path::PathBuf,
    /// Write after every this many epochs (and after the last).
    pub every_epochs: usize,
}

/// Saves everything needed to continue training exactly: the model's parameters, the optimizer's
/// state and step count (the schedule's position follows from it), the dropout generators'
/// offsets and the number of epochs done (the data order is a function of the seed and the epoch).
pub fn save_training(
    path: &Path,
    model: &dyn Module,
    opt: &Optimizer,
    history: &[EpochStats],
) -> Result<()> {
    let epochs_done = history.last().map_or(0, |h| h.epoch);
    let mut named = model.named_parameters();
    named.extend(opt.state_tensors());
    let offsets: Vec<String> = model.rng_offsets().iter().map(u32::to_string).collect();
    let meta = [
        ("kiln.kind".to_string(), "training".to_string()),
        ("kiln.epochs_done".to_string(), epochs_done.to_string()),
        ("kiln.optimizer_steps".to_string(), opt.steps().to_string()),
        ("kiln.rng_offsets".to_string(), offsets.join(",")),
        ("kiln.history".to_string(), history_csv(history)),
    ];
    Ok(save(path, &named, &meta)?)
}

/// What a training checkpoint restores besides the tensors.
#[derive(Clone, Debug)]
pub struct Resumed {
    /// Epochs done: pass as `FitConfig::start_epoch`.
    pub epochs_done: usize,
    /// Their statistics: pass as `FitConfig::history` so reports cover the whole run.
    pub history: Vec<EpochStats>,
}

/// Restores a [`save_training`] checkpoint into `model` and `opt` (strictly: the same architecture
/// and optimizer).
pub fn load_training(path: &Path, model: &dyn Module, opt: &mut Optimizer) -> Result<Resumed> {
    let meta = read_metadata(path)?;
    let err = |message: String| TrainError::File {
        path: path.display().to_string(),
        message,
    };
    let field = |k: &str| {
        meta.get(k)
            .ok_or_else(|| err(format!("not a training checkpoint: no {k}")))
    };
    let num = |k: &str| -> Result<u64> {
        field(k)?
            .parse()
            .map_err(|_| err(format!("{k} is not a number")))
    };
    let epochs = num("kiln.epochs_done")? as usize;
    let steps = num("kiln.optimizer_steps")?;
    let offsets: Vec<u32> = field("kiln.rng_offsets")?
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| err("bad rng offset".into())))
        .collect::<Result<_>>()?;
    let mut named = model.named_parameters();
    named.extend(opt.state_tensors());
    load(path, &named, true)?;
    opt.set_steps(steps);
    model.set_rng_offsets(&offsets)?;
    let history = meta
        .get("kiln.history")
        .map(|h| parse_history_csv(h))
        .unwrap_or_default();
    Ok(Resumed {
        epochs_done: epochs,
        history,
    })
}
