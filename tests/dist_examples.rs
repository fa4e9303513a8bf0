//! The training examples under `mpirun -np 2 ... --distributed`, against one process.
//!
//! `cargo test` builds the examples beside this test (`<target>/<profile>/examples/`); the runs
//! are small (a few steps). Open MPI's allow-run-as-root variables are set here, for CI's root
//! user. Runs are sequential: two processes already fill CI's two cores.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Mutex;

static JOBS: Mutex<()> = Mutex::new(());

fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // <target>/<profile>/deps/this-test -> <target>/<profile>/examples/name
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples (run the workspace's tests)",
        path.display()
    );
    path
}

fn run(mut cmd: Command) -> (Output, String, String) {
    let _one = JOBS.lock().unwrap_or_else(|e| e.into_inner());
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot start {cmd:?}: {e} (Open MPI missing? run scripts/setup.sh)")
    });
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "{cmd:?}: {:?}\n{e}", out.status);
    (out, o, e)
}

fn mpirun(np: usize, name: &str, args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-np", &np.to_string(), "--oversubscribe"])
        .arg(example(name))
        .args(args)
        .arg("--distributed")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c
}

fn alone(name: &str, args: &[&str]) -> Command {
    let mut c = Command::new(example(name));
    c.args(args);
    for v in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMI_RANK", "PMIX_RANK"] {
        c.env_remove(v);
    }
    c
}

/// The number after `"key":` in a JSON line.
fn field(json: &str, key: &str) -> f64 {
    let at = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no {key} in {json}"));
    let rest = &json[at + key.len() + 3..];
    let end = rest.find([',', '}']).unwrap();
    rest[..end].parse().unwrap()
}

/// The one JSON line a run prints (only rank 0 prints under --distributed).
fn json_line(stdout: &str) -> String {
    let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with('{')).collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    lines[0].to_string()
}

#[test]
fn lenet_mnist_trains_the_same_in_two_processes() {
    // 8 steps at batch 64; the loss and accuracy on the 2,000 held-out images printed with four
    // decimals: the runs differ only in float32 summation order (see crates/dist/tests/mpi.rs).
    let args = ["--train-size", "512", "--epochs", "1"];
    let (_, one, _) = run(alone("lenet_mnist", &args));
    let (_, two, _) = run(mpirun(2, "lenet_mnist", &args));
    let (one, two) = (json_line(&one), json_line(&two));
    assert_eq!(field(&one, "processes"), 1.0);
    assert_eq!(field(&two, "processes"), 2.0);
    for key in ["test_loss", "test_accuracy"] {
        let (a, b) = (field(&one, key), field(&two, key));
        assert!((a - b).abs() <= 1e-4, "{key}: {a} vs {b}\n{one}\n{two}");
    }
    assert!(field(&two, "dist_bytes_per_step") > 240_000.0, "{two}");
}

#[test]
fn char_transformer_trains_the_same_in_two_processes() {
    let args = ["--steps", "3"];
    let (_, one, _) = run(alone("char_transformer", &args));
    let (_, two, _) = run(mpirun(2, "char_transformer", &args));
    let (one, two) = (json_line(&one), json_line(&two));
    for key in ["train_loss", "val_loss_nats_per_char"] {
        let (a, b) = (field(&one, key), field(&two, key));
        assert!((a - b).abs() <= 1e-3, "{key}: {a} vs {b}\n{one}\n{two}");
    }
}

#[test]
fn gpt2_train_accumulates_the_same_in_two_processes() {
    // Four windows a step as two micro-batches: of two windows in one process, of one window in
    // each of two (the loader deals both the same windows in the same groups).
    let shards = std::env::temp_dir().join(format!("kiln-dist-gpt2-{}", std::process::id()));
    let shards = shards.display().to_string();
    let args = |batch: &'static str| -> Vec<String> {
        [
            "--preset",
            "small",
            "--n-layer",
            "1",
            "--n-head",
            "2",
            "--n-embd",
            "32",
            "--context",
            "16",
            "--vocab-size",
            "300",
            "--total-batch-tokens",
            "64",
            "--steps",
            "3",
            "--eval-every",
            "3",
            "--eval-batches",
            "1",
            "--sample-tokens",
            "0",
            "--dropout",
            "0",
            "--batch-size",
            batch,
            "--shards",
            &shards,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    fn as_str(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let (_, one, _) = run(alone("gpt2_train", &as_str(&args("2"))));
    let (_, two, _) = run(mpirun(2, "gpt2_train", &as_str(&args("1"))));
    let (one, two) = (json_line(&one), json_line(&two));
    assert_eq!(
        (field(&one, "micro_batches"), field(&two, "micro_batches")),
        (2.0, 2.0)
    );
    assert_eq!(field(&two, "processes"), 2.0);
    for key in ["first_loss", "final_loss", "val_loss"] {
        let (a, b) = (field(&one, key), field(&two, key));
        assert!((a - b).abs() <= 1e-3, "{key}: {a} vs {b}\n{one}\n{two}");
    }
    std::fs::remove_dir_all(&shards).ok();
}

#[test]
fn distributed_without_mpirun_is_an_error_naming_mpirun() {
    for name in ["lenet_mnist", "char_transformer", "gpt2_train"] {
        let _one = JOBS.lock().unwrap_or_else(|e| e.into_inner());
        let out = alone(name, &["--distributed"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} ran without a launcher");
        assert!(err.contains("mpirun -np N"), "{name}: {err}");
    }
}
