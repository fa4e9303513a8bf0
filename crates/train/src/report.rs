//! Training reports: the history as CSV and a loss/accuracy plot as SVG (plotters), both written
//! atomically.

use crate::error::{Result, TrainError};
use crate::history::{history_csv_by, EpochStats};
use kiln_nn::serialize::write_atomically;
use plotters::prelude::*;
use std::path::Path;

/// Writes `history.csv` and `history.svg` into `dir` (created if missing).
pub fn write_reports(dir: &Path, history: &[EpochStats]) -> Result<()> {
    write_reports_by(dir, history, "epoch")
}

/// The same with `x` naming the rows' first field (`epoch` or `step`).
pub fn write_reports_by(dir: &Path, history: &[EpochStats], x: &str) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::File {
        path: dir.display().to_string(),
        message: e.to_string(),
    })?;
    write_atomically(
        &dir.join("history.csv"),
        history_csv_by(history, x).as_bytes(),
    )?;
    Ok(write_atomically(
        &dir.join("history.svg"),
        plot_svg_by(history, x)?.as_bytes(),
    )?)
}

/// Training and validation loss (left) and validation accuracy (right) per epoch, as SVG text.
pub fn plot_svg(history: &[EpochStats]) -> Result<String> {
    plot_svg_by(history, "epoch")
}

/// The same with `x` labelling the horizontal axis.
pub fn plot_svg_by(history: &[EpochStats], x: &str) -> Result<String> {
    let mut svg = String::new();
    let fail = |e: String| TrainError::Training(format!("plotting: {e}"));
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
