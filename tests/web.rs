//! kiln trains in the browser: `examples/web` is built for wasm32 (`examples/web/build.sh`:
//! cargo, then wasm-bindgen) and driven in headless Chromium (Debian's package, through
//! `scripts/web/drive.mjs`: playwright-core over the DevTools protocol). With WebGPU
//! (SwiftShader's adapter on a machine without a GPU) the page must train LeNet-5 for a fixed
//! number of steps to a held-out accuracy above a stated bound and classify held-out digits drawn
//! on its canvas; without a WebGPU adapter it must say so. A missing browser, Node.js package,
//! wasm target or wasm-bindgen fails the test, naming `./scripts/setup.sh --tests`.
//!
//! The figures (steps per second, accuracy) are printed; timings are not asserted.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Images trained on (one epoch at batch 64: 125 steps) and the bound on held-out accuracy.
/// Natively the same run (lenet_mnist --train-size 8000 --epochs 1) reaches about 95%.
const TRAIN_SIZE: usize = 8000;
const BATCH: usize = 64;
const MIN_ACCURACY: f64 = 0.90;

fn setup_hint(what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what}: run ./scripts/setup.sh --tests")
}

fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if !Path::new("/usr/bin/chromium").exists() {
        return Err(setup_hint("Chromium (/usr/bin/chromium) is missing"));
    }
    if !root
        .join("scripts/web/node_modules/playwright-core/package.json")
        .exists()
    {
        return Err(setup_hint("playwright-core is missing from scripts/web"));
    }
    // The page's own target directory: this test's is locked by the cargo that runs it.
    let target = std::env::current_exe()?
        .ancestors()
        .nth(3)
        .map(|t| t.join("web-wasm"))
        .ok_or_else(|| anyhow::anyhow!("no target directory above the test binary"))?;
    let built = Command::new(root.join("examples/web/build.sh"))
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .map_err(|e| anyhow::anyhow!("examples/web/build.sh: {e}"))?;
    if !built.success() {
        return Err(setup_hint(&format!(
            "building the page (examples/web/build.sh) failed ({built})"
        )));
    }
    let out = Command::new("node")
        .arg(root.join("scripts/web/drive.mjs"))
        .arg(&root)
        .arg(TRAIN_SIZE.to_string())
        .arg("1")
        .arg(BATCH.to_string())
        .output()
        .map_err(|e| setup_hint(&format!("running node: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let runs: Vec<Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let find = |kind: &str| {
        runs.iter().find(|r| r["kind"] == kind).ok_or_else(|| {
            anyhow::anyhow!(
                "drive.mjs reported no {kind} run ({}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    let trained = find("trained")?;
    let missing = find("no_webgpu")?;
    let steps = TRAIN_SIZE.div_ceil(BATCH) as u64;
    let accuracy = trained["accuracy"].as_f64().unwrap_or(f64::NAN);
    println!(
        "web: LeNet-5 in headless Chromium on {}: {} steps at batch {BATCH} in {} s ({} steps/s), \
         held-out accuracy {accuracy:.4}, {} of {} held-out digits drawn on the canvas classified \
         right",
        trained["adapter"],
        trained["steps"],
        trained["seconds"],
        trained["steps_per_second"],
        trained["canvas_correct"],
        trained["canvas_total"]
    );
    println!("web: without WebGPU the page says: {}", missing["shown"]);
    let mut failed = Vec::new();
    if trained["state"] != "done" {
        failed.push(format!("the training page ended in {trained}"));
    }
    if trained["steps"].as_u64() != Some(steps) {
        failed.push(format!("{} steps, expected {steps}", trained["steps"]));
    }
    if accuracy.is_nan() || accuracy < MIN_ACCURACY {
        failed.push(format!(
            "held-out accuracy {accuracy}, expected at least {MIN_ACCURACY}"
        ));
    }
    if trained["losses"].as_u64().unwrap_or(0) < 10 {
        failed.push(format!("{} losses plotted", trained["losses"]));
    }
    if trained["canvas_correct"].as_u64().unwrap_or(0) < 16 {
        failed.push(format!(
            "{} of 20 canvas digits right, expected at least 16",
            trained["canvas_correct"]
        ));
    }
    let shown = missing["shown"].as_str().unwrap_or("");
    if missing["state"] != "no-webgpu" || !shown.contains("WebGPU is not available") {
        failed.push(format!("without WebGPU the page ended in {missing}"));
    }
    println!(
        "{} passed, {} failed",
        (failed.is_empty()) as u32,
        (!failed.is_empty()) as u32
    );
    anyhow::ensure!(failed.is_empty(), "{}", failed.join("; "));
    Ok(())
}
