//! A run's history: one row of figures per epoch (or per evaluation point), as CSV text that
//! checkpoints carry and reports write.

/// One epoch's figures.
#[derive(Clone, Debug)]
pub struct EpochStats {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean of the training losses read back during the epoch.
    pub train_loss: f32,
    /// Held-out loss, when validation data was given.
    pub val_loss: Option<f32>,
    /// Held-out accuracy, for classification losses with validation data.
    pub val_accuracy: Option<f32>,
    /// Seconds spent training (evaluation excluded).
    pub train_seconds: f64,
    /// Training examples per second.
    pub samples_per_second: f64,
    /// Steps skipped for a non-finite loss (among those read back), with `skip_nonfinite`.
    pub skipped_steps: usize,
}

/// `epoch,train_loss,val_loss,val_accuracy,train_seconds,samples_per_second`, one row per epoch.
pub fn history_csv(history: &[EpochStats]) -> String {
    history_csv_by(history, "epoch")
}

/// The same with another name for the first column (`step` for language models, whose rows are
/// evaluation points).
pub fn history_csv_by(history: &[EpochStats], x: &str) -> String {
    let mut s = format!("{x},train_loss,val_loss,val_accuracy,train_seconds,samples_per_second\n");
    let opt = |v: Option<f32>| v.map(|x| x.to_string()).unwrap_or_default();
    for h in history {
        s += &format!(
            "{},{},{},{},{:.3},{:.1}\n",
            h.epoch,
            h.train_loss,
            opt(h.val_loss),
            opt(h.val_accuracy),
            h.train_seconds,
            h.samples_per_second
        );
    }
    s
}

/// Parses [`history_csv`] back (resuming keeps the earlier epochs in the reports).
pub fn parse_history_csv(text: &str) -> Vec<EpochStats> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let opt = |s: &str| s.parse::<f32>().ok();
            Some(EpochStats {
                epoch: f.first()?.parse().ok()?,
                train_loss: f.get(1)?.parse().ok()?,
                val_loss: opt(f.get(2)?),
                val_accuracy: opt(f.get(3)?),
                train_seconds: f.get(4)?.parse().ok()?,
                samples_per_second: f.get(5)?.parse().ok()?,
                skipped_steps: 0,
            })
        })
        .collect()
}
