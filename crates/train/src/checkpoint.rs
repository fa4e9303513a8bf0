//! Training checkpoints: a model's parameters, the optimizer's state and step count, the dropout
//! generators' offsets, the history so far and the run's settings, in one safetensors file (see
//! [`kiln_nn::serialize`]: format version and a checksum over all of it, required on load), so a
//! run continues exactly where it stopped, and only with the settings it was started with.

use crate::error::{Result, TrainError};
use crate::history::{history_csv, parse_history_csv, EpochStats};
use kiln_nn::serialize::{save, PathLock, TensorFile};
use kiln_nn::{Module, Optimizer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const SETTING_PREFIX: &str = "kiln.setting.";

/// Where and how often `fit` writes training checkpoints, and the settings they record. Made by
/// [`CheckpointConfig::new`], which takes the path's lock: the run owns the path until the last
/// clone of this value is dropped.
#[derive(Clone, Debug)]
pub struct CheckpointConfig {
    /// The file (rewritten atomically each time).
    pub path: PathBuf,
    /// Write after every this many epochs (and after the last).
    pub every_epochs: usize,
    /// The run's settings, stored in every checkpoint and compared by [`load_training`].
    pub settings: RunSettings,
    _lock: Arc<PathLock>,
}

impl CheckpointConfig {
    /// Checkpoints to `path` every `every_epochs` epochs. Checks now, before any training, that the
    /// file can be written (its folder exists and is writable, it is not a folder) and takes an
    /// advisory lock on it, so that a second run saving to the same path fails here.
    pub fn new(path: impl Into<PathBuf>, every_epochs: usize) -> Result<CheckpointConfig> {
        let path = path.into();
        let lock = PathLock::acquire(&path)?;
        Ok(CheckpointConfig {
            path,
            every_epochs,
            settings: RunSettings::default(),
            _lock: Arc::new(lock),
        })
    }

    /// The same, recording `settings` in each checkpoint.
    pub fn with_settings(mut self, settings: RunSettings) -> CheckpointConfig {
        self.settings = settings;
        self
    }
}

/// The settings that shape a run (seed, batch size, learning rate, data size, epochs, model
/// sizes...), by name, as text. A checkpoint stores them; resuming with different ones would
/// silently continue a different run, so [`load_training`] refuses any difference it is not told
/// to accept.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunSettings(BTreeMap<String, String>);

impl RunSettings {
    /// No settings.
    pub fn new() -> RunSettings {
        RunSettings::default()
    }

    /// Adds (or replaces) a setting.
    pub fn with(mut self, name: &str, value: impl std::fmt::Display) -> RunSettings {
        self.0.insert(name.to_string(), value.to_string());
        self
    }

    /// A setting's value.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// The settings' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Every setting whose value differs between `self` (the current run) and `stored`, or that
    /// only one of them has: (name, stored value, current value).
    pub fn differences(
        &self,
        stored: &RunSettings,
    ) -> Vec<(String, Option<String>, Option<String>)> {
        let mut names: Vec<&String> = self.0.keys().chain(stored.0.keys()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter(|n| self.0.get(*n) != stored.0.get(*n))
            .map(|n| (n.clone(), stored.0.get(n).cloned(), self.0.get(n).cloned()))
            .collect()
    }
}

/// Saves everything needed to continue training exactly: the model's parameters, the optimizer's
/// state and step count (the schedule's position follows from it), the dropout generators'
/// offsets, the number of epochs done (the data order is a function of the seed and the epoch),
/// the history and the run's settings.
pub fn save_training(
    path: &Path,
    model: &dyn Module,
    opt: &Optimizer,
    history: &[EpochStats],
    settings: &RunSettings,
) -> Result<()> {
    let epochs_done = history.last().map_or(0, |h| h.epoch);
    let mut named = model.named_parameters();
    named.extend(opt.state_tensors());
    let offsets: Vec<String> = model.rng_offsets().iter().map(u32::to_string).collect();
    let mut meta = vec![
        ("kiln.kind".to_string(), "training".to_string()),
        ("kiln.epochs_done".to_string(), epochs_done.to_string()),
        ("kiln.optimizer_steps".to_string(), opt.steps().to_string()),
        ("kiln.rng_offsets".to_string(), offsets.join(",")),
        ("kiln.history".to_string(), history_csv(history)),
    ];
    meta.extend(
        settings
            .0
            .iter()
            .map(|(k, v)| (format!("{SETTING_PREFIX}{k}"), v.clone())),
    );
    Ok(save(path, &named, &meta)?)
}

/// What a training checkpoint restores besides the tensors.
#[derive(Clone, Debug)]
pub struct Resumed {
    /// Epochs done (evaluation points for the language-model loop): pass as
    /// `FitConfig::start_epoch`.
    pub epochs_done: usize,
    /// Their statistics: pass as `FitConfig::history` so reports cover the whole run.
    pub history: Vec<EpochStats>,
    /// The settings the checkpoint was written with.
    pub settings: RunSettings,
}

/// Restores a [`save_training`] checkpoint into `model` and `opt` (strictly: the same architecture
/// and optimizer). The whole file is verified and its settings compared with `expect` (the
/// current run's) before anything is changed: a setting that differs, or that only one side has,
/// is an error unless `overrides` names it (and a name in `overrides` that neither side has is an
/// error too, as it is most likely a typo).
pub fn load_training(
    path: &Path,
    model: &dyn Module,
    opt: &mut Optimizer,
    expect: &RunSettings,
    overrides: &[String],
) -> Result<Resumed> {
    let file = TensorFile::open(path)?;
    let meta = file.metadata();
    let err = |message: String| TrainError::File {
        path: path.display().to_string(),
        message,
    };
    let field = |k: &str| {
        meta.get(k)
            .ok_or_else(|| err(format!("not a training checkpoint: no {k}")))
    };
    let num = |k: &str| -> Result<u64> {
        let v = field(k)?;
        v.parse()
            .map_err(|_| err(format!("{k} is {v:?}, not a non-negative whole number")))
    };
    if field("kiln.kind")? != "training" {
        return Err(err(format!(
            "not a training checkpoint: kiln.kind is {:?}",
            meta["kiln.kind"]
        )));
    }
    let epochs = usize::try_from(num("kiln.epochs_done")?)
        .map_err(|_| err("kiln.epochs_done is too large".into()))?;
    let steps = num("kiln.optimizer_steps")?;
    let offsets: Vec<u32> = field("kiln.rng_offsets")?
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| err(format!("bad rng offset {s:?}"))))
        .collect::<Result<_>>()?;
    let history = meta
        .get("kiln.history")
        .map(|h| parse_history_csv(h))
        .unwrap_or_default();
    let stored = RunSettings(
        meta.iter()
            .filter_map(|(k, v)| {
                k.strip_prefix(SETTING_PREFIX)
                    .map(|n| (n.to_string(), v.clone()))
            })
            .collect(),
    );
    for o in overrides {
        if expect.get(o).is_none() && stored.get(o).is_none() {
            let known: Vec<&str> = expect.names().collect();
            return Err(err(format!(
                "--override {o}: no such setting (this run's settings: {})",
                known.join(", ")
            )));
        }
    }
    let differ: Vec<String> = expect
        .differences(&stored)
        .into_iter()
        .filter(|(n, _, _)| !overrides.contains(n))
        .map(|(n, was, now)| {
            format!(
                "{n}: {} in the checkpoint, {} now",
                was.as_deref().unwrap_or("not set"),
                now.as_deref().unwrap_or("not set")
            )
        })
        .collect();
    if !differ.is_empty() {
        return Err(err(format!(
            "was written by a run with other settings ({}); resume with the same ones, or accept a change with --override NAME",
            differ.join("; ")
        )));
    }
    let mut named = model.named_parameters();
    named.extend(opt.state_tensors());
    file.load_into(&named, true)?;
    opt.set_steps(steps);
    model.set_rng_offsets(&offsets)?;
    Ok(Resumed {
        epochs_done: epochs,
        history,
        settings: stored,
    })
}
