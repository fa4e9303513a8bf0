//! Data-parallel training against one process, under `mpirun -np 2` on the default adapter.
//!
//! Each test starts `dist_check` (src/bin/dist_check.rs) under `mpirun` and alone, and compares
//! the parameters the runs write after every step. Open MPI's allow-run-as-root variables are set
//! here, for CI's root user; `--oversubscribe` lets two processes run on fewer cores.
//!
//! Tolerance. The two-process run computes each gradient as the weighted sum of two half-batch
//! means where the one-process run takes one mean over the batch: the same numbers added in
//! another order. Float32 rounding of such a sum differs by about `eps * sqrt(terms)` relative
//! (eps = 6e-8; 64 examples, and the matmul and convolution sums inside each), so a gradient
//! element differs by ~1e-7 of its size, and a parameter by lr times that per step, compounded
//! by momentum over the steps: observed at most 5e-8 after 20 SGD steps. SGD runs must agree
//! within `1e-6 + 1e-5 |p|` on every element after every step (20x the largest observed
//! difference), while the smallest real error (a sum instead of a mean, one example swapped for
//! another, a bucket not reduced) moves parameters by 1e-4 or more.
//!
//! Adam divides every gradient element by its own running RMS, so an element whose gradient is a
//! near-cancelling sum (|g| ~ 1e-9 from terms of 1e-3) turns the same rounding difference into an
//! update difference of up to the learning rate times its relative error, whatever its size:
//! observed 1e-4 (0.1 lr) on a few elements after 20 steps, and an L2 norm of the difference
//! 1.5e-4 of how far the parameters moved. Adam runs must agree within one update (`lr`) on every
//! element, and the difference's L2 norm must stay below 1e-3 of how far the parameters moved; a
//! data or reduction error moves most elements by about lr per step, and the norm with them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// LeNet-5's parameter count: the length of one dump.
const PARAMS: usize = 61_706;

/// One MPI job at a time: two processes already fill CI's two cores, and a watchdog test needs
/// its processes to be the only ones late.
static JOBS: Mutex<()> = Mutex::new(());

fn helper() -> &'static str {
    env!("CARGO_BIN_EXE_dist_check")
}

/// A folder for one run's files, removed when dropped.
struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch(name: &str) -> Scratch {
    let d = std::env::temp_dir().join(format!("kiln-dist-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

/// Runs `cmd`, ending it (and, through mpirun, its processes) if it outlives `limit`.
fn run_within(mut cmd: Command, limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {cmd:?}: {e} (Open MPI missing? run scripts/setup.sh)")
        });
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            // mpirun passes SIGTERM on to its processes; SIGKILL would orphan them.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} still ran after {limit:?}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (out, start.elapsed())
}

fn mpirun(np: usize, args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-np", &np.to_string(), "--oversubscribe", helper()])
        .args(args)
        .args(["--dp"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c
}

fn alone(args: &[&str]) -> Command {
    let mut c = Command::new(helper());
    c.args(args);
    for v in kiln_dist::LAUNCHER_VARIABLES {
        c.env_remove(v);
    }
    c
}

/// Runs a job that must succeed; returns its standard error.
fn ok(cmd: Command) -> String {
    let _one = JOBS.lock().unwrap_or_else(|e| e.into_inner());
    let (out, _) = run_within(cmd, Duration::from_secs(300));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{:?}\n{err}", out.status);
    err
}

/// The dumps of one process: one parameter vector per step (or epoch).
fn dumps(dir: &Path, rank: usize) -> Vec<Vec<f32>> {
    let bytes = std::fs::read(dir.join(format!("params.rank{rank}.f32"))).unwrap();
    let v: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(v.len() % PARAMS, 0);
    v.chunks(PARAMS).map(<[f32]>::to_vec).collect()
}

/// Every element of every step within `atol + rtol |want|`; reports the worst.
fn assert_steps_close(what: &str, got: &[Vec<f32>], want: &[Vec<f32>], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: steps");
    for (s, (g, w)) in got.iter().zip(want).enumerate() {
        let (i, excess) = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b).abs() - (atol + rtol * b.abs()))
            .enumerate()
            .fold((0, f32::MIN), |m, (i, e)| if e > m.1 { (i, e) } else { m });
        assert!(
            excess <= 0.0,
            "{what}: step {s}, parameter {i}: {} vs {} (tolerance {atol} + {rtol} |p|)",
            g[i],
            w[i]
        );
    }
}

/// The one-process reference of the hand-written loop, shared by the tests that compare with it.
fn reference(opt: &str) -> Vec<Vec<f32>> {
    static SGD: OnceLock<Vec<Vec<f32>>> = OnceLock::new();
    static ADAM: OnceLock<Vec<Vec<f32>>> = OnceLock::new();
    let cell = if opt == "sgd" { &SGD } else { &ADAM };
    cell.get_or_init(|| {
        let dir = scratch(&format!("ref-{opt}"));
        ok(alone(&[
            "steps",
            "--opt",
            opt,
            "--out",
            dir.to_str().unwrap(),
        ]));
        dumps(&dir, 0)
    })
    .clone()
}

/// Two processes at batch 32 each through DistributedDataParallel, against one at batch 64.
fn two_against_one(opt: &str, extra: &[&str]) -> (Vec<Vec<f32>>, Vec<Vec<f32>>, String) {
    let want = reference(opt);
    let dir = scratch(&format!("dp-{opt}{}", extra.join("")));
    let mut args = vec!["steps", "--opt", opt, "--out", dir.to_str().unwrap()];
    args.extend(extra);
    let err = ok(mpirun(2, &args));
    let (r0, r1) = (dumps(&dir, 0), dumps(&dir, 1));
    // Both processes apply the same update to the same values: identical, not merely close.
    assert!(r0 == r1, "the two processes' parameters differ");
    assert_eq!(r0.len(), 20);
    (r0, want, err)
}

#[test]
fn two_processes_match_one_with_sgd_every_step() {
    let (got, want, err) = two_against_one("sgd", &[]);
    assert_steps_close("SGD", &got, &want, 1e-6, 1e-5);
    // 8 KiB buckets cut LeNet's gradients in several, so the overlapped path is what ran.
    let line = err.lines().find(|l| l.starts_with("buckets")).unwrap();
    assert!(line.matches(',').count() >= 2, "{line}");
}

#[test]
fn one_process_through_ddp_is_bitwise_the_plain_recorded_step() {
    // World size 1: the same sums in the same order, so the cut-up replay, the host round trip
    // of the gradients (weight 1, a sum over one process) and the separate update plan must
    // reproduce the plain step exactly, bit for bit, at every step.
    let want = reference("sgd");
    let dir = scratch("dp-np1");
    ok(mpirun(1, &["steps", "--out", dir.to_str().unwrap()]));
    assert!(
        dumps(&dir, 0) == want,
        "DDP at one process differs from the plain step"
    );
}

#[test]
fn two_processes_match_one_with_adam_every_step() {
    let (got, want, _) = two_against_one("adam", &[]);
    let lr = 1e-3;
    assert_steps_close("Adam", &got, &want, lr, 0.0);
    let start = lenet_init();
    let (g, w) = (got.last().unwrap(), want.last().unwrap());
    let diff = l2(g.iter().zip(w).map(|(a, b)| a - b));
    let moved = l2(w.iter().zip(&start).map(|(a, b)| a - b));
    assert!(
        diff <= 1e-3 * moved,
        "difference {diff}, distance moved {moved}"
    );
}

#[test]
fn gradient_accumulation_with_no_sync_matches_one_process() {
    // Each process: two micro-batches of 16, the first under no_sync.
    let (got, want, _) = two_against_one("sgd", &["--micro", "2"]);
    assert_steps_close("SGD, no_sync", &got, &want, 1e-6, 1e-5);
}

fn l2(v: impl Iterator<Item = f32>) -> f32 {
    v.map(|x| (x as f64).powi(2)).sum::<f64>().sqrt() as f32
}

/// LeNet-5's initial parameters from seed 0 (what the broadcast test dumps first on rank 0).
fn lenet_init() -> Vec<f32> {
    broadcast_dumps().0[0].clone()
}

/// Rank 0's and rank 1's dumps.
type RankDumps = (Vec<Vec<f32>>, Vec<Vec<f32>>);

fn broadcast_dumps() -> &'static RankDumps {
    static DUMPS: OnceLock<RankDumps> = OnceLock::new();
    DUMPS.get_or_init(|| {
        let dir = scratch("broadcast");
        ok(mpirun(2, &["broadcast", "--out", dir.to_str().unwrap()]));
        (dumps(&dir, 0), dumps(&dir, 1))
    })
}

#[test]
fn broadcast_makes_differently_seeded_processes_identical() {
    // Rank r built its model from seed r; dumps: before the broadcast, after it, after step 0.
    let (r0, r1) = broadcast_dumps();
    assert_eq!((r0.len(), r1.len()), (3, 3));
    assert!(
        r0[0] != r1[0],
        "the seeds should have given different models"
    );
    assert!(
        r1[1] == r0[0],
        "rank 1 does not hold rank 0's parameters after the broadcast"
    );
    assert!(r0[1] == r0[0], "the broadcast changed rank 0's parameters");
    assert!(r0[2] == r1[2], "the processes differ after step 0");
    assert!(r0[2] != r0[1], "step 0 changed nothing");
}

#[test]
fn distributed_fit_matches_fit_with_uneven_shares_and_an_empty_one() {
    // 127 examples at batch 63: shares of 32 and 31, then a last batch of one example, which
    // leaves rank 1 without any. Parameters after each of 3 epochs.
    let args = ["fit", "--n", "127", "--batch", "63", "--epochs", "3"];
    let (one, two) = (scratch("fit-1"), scratch("fit-2"));
    ok(alone(
        &[&args[..], &["--out", one.to_str().unwrap()]].concat(),
    ));
    ok(mpirun(
        2,
        &[&args[..], &["--out", two.to_str().unwrap()]].concat(),
    ));
    let got = dumps(&two, 0);
    assert!(
        got == dumps(&two, 1),
        "the two processes' parameters differ"
    );
    assert_steps_close("distributed fit", &got, &dumps(&one, 0), 1e-6, 1e-5);
    // The combined loss the processes report is the one-process loss.
    let loss = |d: &Path, r: usize| std::fs::read_to_string(d.join(format!("loss.rank{r}.txt")));
    let (a, b) = (loss(&one, 0).unwrap(), loss(&two, 1).unwrap());
    for (x, y) in a.lines().zip(b.lines()) {
        let (x, y): (f32, f32) = (x.parse().unwrap(), y.parse().unwrap());
        assert!((x - y).abs() <= 1e-5 * x.abs(), "loss {x} vs {y}");
    }
}

/// Runs a two-process fit in which rank 1 fails as step 6 begins (epoch 2 of 4 steps each):
/// the job must end, with a non-zero status, within `limit`.
fn failing_job(mode: &str, timeout_s: u32, limit: Duration) -> (String, Scratch, Duration) {
    let dir = scratch(&format!("fail-{mode}"));
    let ckpt = dir.join("ckpt.safetensors");
    let _one = JOBS.lock().unwrap_or_else(|e| e.into_inner());
    let (out, took) = run_within(
        mpirun(
            2,
            &[
                "fit",
                "--n",
                "256",
                "--batch",
                "64",
                "--epochs",
                "3",
                "--out",
                dir.to_str().unwrap(),
                "--save",
                ckpt.to_str().unwrap(),
                "--fail-step",
                "6",
                "--fail-mode",
                mode,
                "--timeout",
                &timeout_s.to_string(),
            ],
        ),
        limit + Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{mode}: the job succeeded:\n{err}");
    assert!(took <= limit, "{mode}: the job took {took:?}:\n{err}");
    (err, dir, took)
}

#[test]
fn a_failing_process_ends_the_job_and_its_checkpoint_resumes_under_one_and_two() {
    // An error in rank 1: it reports and aborts the job (MPI_Abort); rank 0, waiting in the
    // step's all-reduce, is ended by mpirun. Stated bound: 60 s (it takes about a second).
    let (err, dir, _) = failing_job("error", 300, Duration::from_secs(60));
    let ckpt = dir.join("ckpt.safetensors");
    assert!(
        err.contains("rank 1 of 2 failed: training: injected fault as step 6 begins"),
        "{err}"
    );
    // Rank 0 wrote the checkpoint of epoch 1 before the failure; it resumes under any number
    // of processes to what an uninterrupted run reaches.
    assert!(ckpt.exists(), "no checkpoint from epoch 1");
    let args = ["fit", "--n", "256", "--batch", "64", "--epochs", "3"];
    let (full, one, two) = (scratch("full"), scratch("resume-1"), scratch("resume-2"));
    let resume = ["--resume", ckpt.to_str().unwrap()];
    ok(mpirun(
        2,
        &[&args[..], &["--out", full.to_str().unwrap()]].concat(),
    ));
    ok(alone(
        &[&args[..], &resume, &["--out", one.to_str().unwrap()]].concat(),
    ));
    ok(mpirun(
        2,
        &[&args[..], &resume, &["--out", two.to_str().unwrap()]].concat(),
    ));
    // The resumed runs dump epochs 2 and 3; the uninterrupted one 1 to 3.
    let want = dumps(&full, 0)[1..].to_vec();
    assert_steps_close("resumed alone", &dumps(&one, 0), &want, 1e-6, 1e-5);
    assert_steps_close("resumed by two", &dumps(&two, 0), &want, 1e-6, 1e-5);
}

#[test]
fn a_killed_process_ends_the_job() {
    // SIGKILL leaves no message of its own: mpirun sees the death and ends the others.
    // Stated bound: 60 s.
    let (err, _, _) = failing_job("kill", 300, Duration::from_secs(60));
    assert!(err.contains("signal 9"), "{err}");
}

#[test]
fn a_hung_process_ends_the_job_through_the_watchdog() {
    // Rank 1 sleeps instead of taking step 6; rank 0's all-reduce waits for it until the
    // watchdog's timeout (10 s here), then aborts the job. Stated bound: the timeout plus 50 s.
    let (err, _, took) = failing_job("hang", 10, Duration::from_secs(60));
    assert!(
        err.contains("rank 0 of 2: the all-reduce of gradient bucket")
            && err.contains("did not complete within 10 s"),
        "{err}"
    );
    assert!(
        took >= Duration::from_secs(10),
        "ended before the timeout: {took:?}"
    );
}

#[test]
fn parallel_training_without_a_launcher_is_an_error_naming_mpirun() {
    let dir = scratch("no-launcher");
    let (out, _) = run_within(
        alone(&["steps", "--dp", "--out", dir.to_str().unwrap()]),
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("mpirun -np N"), "{err}");
}

#[test]
fn more_processes_than_the_batch_is_an_error() {
    // Two processes, batch 1: one of them would never have an example.
    let dir = scratch("too-many");
    let _one = JOBS.lock().unwrap_or_else(|e| e.into_inner());
    let (out, _) = run_within(
        mpirun(
            2,
            &[
                "fit",
                "--n",
                "8",
                "--batch",
                "1",
                "--out",
                dir.to_str().unwrap(),
            ],
        ),
        Duration::from_secs(120),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("2 processes need a batch size and a data set of at least 2 examples each"),
        "{err}"
    );
}
