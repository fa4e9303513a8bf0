//! Training reports: the history as CSV and a loss/accuracy plot as SVG (plotters), both written
//! atomically.

use crate::checkpoint::write_atomically;
use crate::train::EpochStats;
use crate::{NnError, Result};
use plotters::prelude::*;
use std::path::Path;

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

/// Writes `history.csv` and `history.svg` into `dir` (created if missing).
pub fn write_reports(dir: &Path, history: &[EpochStats]) -> Result<()> {
    write_reports_by(dir, history, "epoch")
}

/// The same with `x` naming the rows' first field (`epoch` or `step`).
pub fn write_reports_by(dir: &Path, history: &[EpochStats], x: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| NnError::Data {
        path: dir.display().to_string(),
        message: e.to_string(),
    })?;
    write_atomically(
        &dir.join("history.csv"),
        history_csv_by(history, x).as_bytes(),
    )?;
    write_atomically(
        &dir.join("history.svg"),
        plot_svg_by(history, x)?.as_bytes(),
    )
}

/// Training and validation loss (left) and validation accuracy (right) per epoch, as SVG text.
pub fn plot_svg(history: &[EpochStats]) -> Result<String> {
    plot_svg_by(history, "epoch")
}

/// The same with `x` labelling the horizontal axis.
pub fn plot_svg_by(history: &[EpochStats], x: &str) -> Result<String> {
    let mut svg = String::new();
    let fail = |e: String| NnError::Training(format!("plotting: {e}"));
    {
        let root = SVGBackend::with_string(&mut svg, (900, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
        let (left, right) = root.split_horizontally(450);
        let first = history.first().map_or(1, |h| h.epoch) as f32;
        let last = history.last().map_or(1, |h| h.epoch) as f32;
        let xs = first..last.max(first + 1.0);
        let losses = history
            .iter()
            .flat_map(|h| [Some(h.train_loss), h.val_loss])
            .flatten()
            .filter(|v| v.is_finite());
        let top = losses.fold(0.0f32, f32::max).max(1e-3) * 1.1;
        let mut chart = ChartBuilder::on(&left)
            .caption("loss", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(xs.clone(), 0f32..top)
            .map_err(|e| fail(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc(x)
            .draw()
            .map_err(|e| fail(e.to_string()))?;
        chart
            .draw_series(LineSeries::new(
                history.iter().map(|h| (h.epoch as f32, h.train_loss)),
                &BLUE,
            ))
            .map_err(|e| fail(e.to_string()))?
            .label("training")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLUE));
        chart
            .draw_series(LineSeries::new(
                history
                    .iter()
                    .filter_map(|h| h.val_loss.map(|v| (h.epoch as f32, v))),
                &RED,
            ))
            .map_err(|e| fail(e.to_string()))?
            .label("validation")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], RED));
        // Markers, so a single epoch still shows.
        let dots = history
            .iter()
            .map(|h| Circle::new((h.epoch as f32, h.train_loss), 3, BLUE.filled()));
        chart.draw_series(dots).map_err(|e| fail(e.to_string()))?;
        let dots = history.iter().filter_map(|h| {
            h.val_loss
                .map(|v| Circle::new((h.epoch as f32, v), 3, RED.filled()))
        });
        chart.draw_series(dots).map_err(|e| fail(e.to_string()))?;
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .draw()
            .map_err(|e| fail(e.to_string()))?;
        let mut acc = ChartBuilder::on(&right)
            .caption("validation accuracy", ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(xs, 0f32..1f32)
            .map_err(|e| fail(e.to_string()))?;
        acc.configure_mesh()
            .x_desc(x)
            .draw()
            .map_err(|e| fail(e.to_string()))?;
        acc.draw_series(LineSeries::new(
            history
                .iter()
                .filter_map(|h| h.val_accuracy.map(|v| (h.epoch as f32, v))),
            &RED,
        ))
        .map_err(|e| fail(e.to_string()))?;
        let dots = history.iter().filter_map(|h| {
            h.val_accuracy
                .map(|v| Circle::new((h.epoch as f32, v), 3, RED.filled()))
        });
        acc.draw_series(dots).map_err(|e| fail(e.to_string()))?;
        root.present().map_err(|e| fail(e.to_string()))?;
    }
    Ok(svg)
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
