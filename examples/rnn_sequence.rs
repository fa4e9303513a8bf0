//! The seed's nn.RNN model: a 2-layer tanh RNN (batch_first) whose last step feeds a linear head,
//! learning whether a 0/1 sequence holds more ones than zeros. Ends with one JSON line.
use anyhow::Result;

#[path = "common/mod.rs"]
mod common;

use clap::Parser;
use kiln::device::Device;
use kiln::nn::init::Rng;
use kiln::nn::rnn::{majority_task, Cell, LastStepClassifier, RecurrentConfig};
use kiln::nn::{Adam, Module};
use kiln::train::checkpoint::RunSettings;
use kiln::train::{ArrayDataset, Compiled, FitConfig, Loss};

#[derive(Parser)]
#[command(about = "A 2-layer RNN learns whether a 0/1 sequence is mostly ones")]
struct Args {
    /// Sequence length (odd lengths have no ties).
    #[arg(long, default_value_t = 11, value_parser = common::positive)]
    length: usize,
    /// Passes over the 2,000 training sequences.
    #[arg(long, default_value_t = 12, value_parser = common::positive)]
    epochs: usize,
    /// Hidden units per layer.
    #[arg(long, default_value_t = 32, value_parser = common::positive)]
    hidden: usize,
    #[command(flatten)]
    run: common::RunArgs,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let run = a.run.start(
        RunSettings::new()
            .with("length", a.length)
            .with("epochs", a.epochs)
            .with("hidden", a.hidden),
    )?;
    let dev = Device::new()?;
    let mut rng = Rng::new(0);
    let (x, y) = majority_task(2000, a.length, &mut rng);
    let (tx, ty) = majority_task(500, a.length, &mut rng);
    let model = LastStepClassifier::new_with(
        &dev,
        &mut rng,
        &RecurrentConfig::new(Cell::RnnTanh, 1, a.hidden).with_num_layers(2),
        2,
    )?;
    let opt = Adam::new(1e-2).init(&dev, model.parameters())?;
    let mut net = Compiled::compile(&dev, model, opt, Loss::CrossEntropy);
    let shape = [a.length, 1];
    let (train, test) = (
        ArrayDataset::classes(&x, &shape, &y),
        ArrayDataset::classes(&tx, &shape, &ty),
    );
    let mut cfg = FitConfig::default()
        .with_epochs(a.epochs)
        .with_batch_size(64)
        .with_validation(&test)
        .with_callback(|s| {
            eprintln!(
                "epoch {:2}  loss {:.4}  held-out accuracy {:.3}",
                s.epoch,
                s.train_loss,
                s.val_accuracy.unwrap_or(0.0)
            )
        });
    run.prepare(&net.model, &mut net.optimizer, &mut cfg)?;
    let hist = net.fit(&train, cfg)?;
    run.finish(&hist)?;
    let (loss, acc) = net.evaluate(&test)?;
    let secs: f64 = hist.iter().map(|s| s.train_seconds).sum();
    common::JsonLine::new("rnn_sequence")
        .set("task", format!("majority of {} bits", a.length))
        .num("test_accuracy", acc.unwrap_or(f32::NAN) as f64, 4)
        .num("test_loss", loss as f64, 4)
        .set("target_accuracy", 0.9)
        .set("epochs", a.epochs)
        .num("train_seconds", secs, 1)
        .print()
}
