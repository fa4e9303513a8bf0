//! Progress bars for training loops (indicatif), shown only where standard error is a terminal so
//! CI logs get the callers' plain lines instead.

/// A bar for one epoch of `steps` steps, or None where `wanted` is false or standard error is not
/// a terminal.
pub(crate) fn progress_bar(
    wanted: bool,
    steps: usize,
    epoch: usize,
    epochs: usize,
) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !wanted || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(steps as u64);
    let style = indicatif::ProgressStyle::with_template(&format!(
        "epoch {epoch}/{epochs} {{bar:30}} {{pos}}/{{len}} {{msg}}"
    ))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}
