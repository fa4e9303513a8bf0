//! The seed models that run quickly, end to end on the default adapter.
use kiln::device::Device;

#[test]
fn rnn_sequence_model_learns_the_majority_task() {
    use kiln::nn::rnn::RecurrentConfig;
    use kiln::nn::rnn::{majority_task, Cell, LastStepClassifier};
    use kiln::nn::{Adam, Module};
    use kiln::ops::random::Rng;
    use kiln::train::{ArrayDataset, Compiled, FitConfig, Loss};
    let dev = Device::shared().unwrap();
    let mut rng = Rng::new(0);
    let (x, y) = majority_task(512, 7, &mut rng);
    let (tx, ty) = majority_task(256, 7, &mut rng);
    let model = LastStepClassifier::new_with(
        &dev,
        &mut rng,
        &RecurrentConfig::new(Cell::RnnTanh, 1, 16).with_num_layers(2),
        2,
    )
    .unwrap();
    let opt = Adam::new(1e-2).init(&dev, model.parameters()).unwrap();
    let mut net = Compiled::compile(&dev, model, opt, Loss::CrossEntropy);
    let shape = [7, 1];
    let cfg = FitConfig::default().with_epochs(6).with_batch_size(64);
    net.fit(&ArrayDataset::classes(&x, &shape, &y), cfg)
        .unwrap();
    let (loss, acc) = net
        .evaluate(&ArrayDataset::classes(&tx, &shape, &ty))
        .unwrap();
    // Stated bound: chance is 50%; 6 epochs reach well above 85%.
    assert!(
        acc.unwrap() > 0.85,
        "held-out accuracy {acc:?}, loss {loss}"
    );
}

#[test]
fn mnist_mlp_model_learns_in_two_epochs() {
    use kiln::nn::data::Mnist;
    use kiln::nn::{Adam, LinearConfig, Module, Relu, Sequential};
    use kiln::ops::random::Rng;
    use kiln::train::{ArrayDataset, Compiled, FitConfig, Loss};
    let dev = Device::shared().unwrap();
    let m = Mnist::load(&std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/mnist"))
        .unwrap();
    let (x, y) = m.split(0..1000).unwrap();
    let (tx, ty) = m.split(9000..9500).unwrap();
    let mut rng = Rng::new(0);
    let model = Sequential::new()
        .push(
            LinearConfig::new(784, 64)
                .init_with(&dev, &mut rng)
                .unwrap(),
        )
        .push(Relu)
        .push(LinearConfig::new(64, 10).init_with(&dev, &mut rng).unwrap());
    let opt = Adam::new(1e-3).init(&dev, model.parameters()).unwrap();
    let mut net = Compiled::compile(&dev, model, opt, Loss::CrossEntropy);
    let cfg = FitConfig::default().with_epochs(2).with_batch_size(64);
    net.fit(&ArrayDataset::classes(&x, &[784], &y), cfg)
        .unwrap();
    let (loss, acc) = net
        .evaluate(&ArrayDataset::classes(&tx, &[784], &ty))
        .unwrap();
    // Stated bounds: untrained loss is about 2.3; two epochs of 1,000 images reach loss < 0.8
    // and accuracy > 75%.
    assert!(
        loss < 0.8 && acc.unwrap() > 0.75,
        "loss {loss}, accuracy {acc:?}"
    );
}

#[test]
fn loads_a_lenet_written_by_the_reference_safetensors_library() {
    // tests/fixtures/make_lenet_safetensors.py wrote it with PyTorch's names (no kiln checksum):
    // a checked load refuses it, an explicitly unverified one reads it.
    use kiln::nn::lenet::lenet5;
    use kiln::nn::serialize::{load, load_unverified};
    use kiln::nn::Module;
    let dev = Device::shared().unwrap();
    let model = lenet5(&dev, 0).unwrap();
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/lenet_reference.safetensors");
    let e = load(&path, &model.named_parameters(), true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no `kiln.crc32` checksum"), "{e}");
    let report = load_unverified(&path, &model.named_parameters(), true).unwrap();
    assert_eq!(report, Default::default());
    for (k, (name, p)) in model.named_parameters().iter().enumerate() {
        let got = p.to_vec().unwrap();
        for (i, v) in got.iter().enumerate().step_by(37) {
            let want = ((i + k) as f64).sin() / 10.0;
            assert!(
                (*v as f64 - want).abs() <= 1e-7,
                "{name}[{i}]: {v} vs {want}"
            );
        }
    }
}

/// Bad arguments and inputs through the example binaries: each is refused with a clear message
/// naming what is wrong (most at parse time, before any device starts), never with a panic, and
/// never with exit code 0. `cargo test` builds the examples beside the test binary
/// (`target/<profile>/examples/NAME`); a run filtered to this test target alone does not, so
/// build them first (`cargo build --release --examples`).
mod bad_inputs {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn binary(name: &str) -> PathBuf {
        let exe = std::env::current_exe().unwrap();
        let p = exe
            .parent()
            .and_then(Path::parent)
            .unwrap()
            .join("examples")
            .join(name)
            .with_extension(std::env::consts::EXE_EXTENSION);
        assert!(
            p.is_file(),
            "{} is not built: run `cargo test` without a target filter, or `cargo build --examples` first",
            p.display()
        );
        p
    }

    struct Outcome {
        code: Option<i32>,
        stdout: String,
        stderr: String,
    }

    fn run(name: &str, args: &[&str]) -> Outcome {
        let out = Command::new(binary(name))
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let o = Outcome {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert!(
            !o.stderr.contains("panicked"),
            "{name} {args:?} panicked:\n{}",
            o.stderr
        );
        o
    }

    /// Refused with an error (exit 1 or clap's 2), the message holding `needle`.
    fn refused(name: &str, args: &[&str], needle: &str) -> Outcome {
        let o = run(name, args);
        assert!(
            matches!(o.code, Some(1) | Some(2)),
            "{name} {args:?} exited {:?}:\n{}\n{}",
            o.code,
            o.stdout,
            o.stderr
        );
        assert!(
            o.stderr.contains(needle),
            "{name} {args:?}: expected {needle:?} in:\n{}",
            o.stderr
        );
        o
    }

    fn ok(name: &str, args: &[&str]) -> serde_json::Value {
        let o = run(name, args);
        assert_eq!(o.code, Some(0), "{name} {args:?}:\n{}", o.stderr);
        last_json(&o.stdout)
    }

    fn last_json(stdout: &str) -> serde_json::Value {
        let line = stdout.lines().last().unwrap_or("");
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-bad-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn zero_negative_and_non_finite_flags_are_refused_at_parse_time() {
        let t = "--teacher=/nonexistent";
        for (name, args, flag) in [
            ("lenet_mnist", &["--batch-size", "0"][..], "--batch-size"),
            ("lenet_mnist", &["--epochs", "0"], "--epochs"),
            ("lenet_mnist", &["--train-size=-5"], "--train-size"),
            ("lenet_mnist", &["--lr", "NaN"], "--lr"),
            ("lenet_mnist", &["--lr", "inf"], "--lr"),
            ("lenet_mnist", &["--lr=-0.1"], "--lr"),
            ("lenet_mnist", &["--save-every", "0"], "--save-every"),
            ("mnist_mlp", &["--epochs", "0"], "--epochs"),
            ("rnn_sequence", &["--epochs", "0"], "--epochs"),
            ("rnn_sequence", &["--length", "0"], "--length"),
            ("quantize", &["--epochs", "0"], "--epochs"),
            ("quantize", &["--calibration", "0"], "--calibration"),
            ("quantize", &["--percentile", "0"], "--percentile"),
            ("distill", &[t, "--train-size", "0"], "--train-size"),
            ("distill", &[t, "--train-size", "10"], "--train-size"),
            ("distill", &[t, "--temperature", "0"], "--temperature"),
            ("distill", &[t, "--temperature", "NaN"], "--temperature"),
            ("distill", &[t, "--alpha", "NaN"], "--alpha"),
            ("distill", &[t, "--alpha", "2"], "--alpha"),
            ("char_lstm", &["--steps", "0"], "--steps"),
            ("char_lstm", &["--hidden", "0"], "--hidden"),
            ("char_lstm", &["--context", "0"], "--context"),
            ("char_transformer", &["--steps", "0"], "--steps"),
            ("linear_regression", &["--steps", "0"], "--steps"),
            ("linear_regression", &["--lr", "NaN"], "--lr"),
            ("prune", &["--model=x", "--sparsity", "1"], "--sparsity"),
            ("finetune", &["--model=x", "--epochs", "0"], "--epochs"),
            ("custom_op", &["--epochs", "0"], "--epochs"),
            ("device_info", &["--bogus"], "--bogus"),
        ] {
            let o = refused(name, args, flag);
            assert_eq!(o.code, Some(2), "{name} {args:?}: clap's usage error");
        }
        let o = run("device_info", &["--help"]);
        assert_eq!(o.code, Some(0));
        assert!(o.stdout.contains("Usage"), "{}", o.stdout);
    }

    #[test]
    fn unwritable_outputs_fail_before_training() {
        let dir = tmpdir("paths");
        let file = dir.join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let missing = dir.join("no/such/folder/m.safetensors");
        for (args, needle) in [
            (
                vec!["--save".to_string(), missing.display().to_string()],
                "does not exist",
            ),
            (
                vec!["--save".to_string(), dir.display().to_string()],
                "is a directory",
            ),
            (
                vec!["--save".to_string(), "/proc/kiln.safetensors".into()],
                "cannot be written",
            ),
            (
                vec!["--out".to_string(), file.display().to_string()],
                "is a file",
            ),
            (vec!["--save-every".to_string(), "1".into()], "needs --save"),
            (
                vec!["--resume".to_string(), missing.display().to_string()],
                "no such file",
            ),
        ] {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            refused("lenet_mnist", &args, needle);
        }
        // A path another run is saving to (this process holds its lock).
        let taken = dir.join("taken.safetensors");
        let _lock = kiln::nn::serialize::PathLock::acquire(&taken).unwrap();
        refused(
            "lenet_mnist",
            &["--save", &taken.display().to_string()],
            &format!(
                "another run is saving to this path (process {})",
                std::process::id()
            ),
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_data_and_images_are_refused() {
        let dir = tmpdir("data");
        refused(
            "distill",
            &["--teacher=/nonexistent", "--train-size", "10000"],
            "would train on held-out images",
        );
        refused(
            "lenet_mnist",
            &["--train-size", "9000", "--epochs", "1"],
            "leaves fewer than 2000",
        );
        for (name, bytes, needle) in [
            ("zero.pgm", &b"P5 0 28 255\n"[..], "at least 1"),
            (
                "wrap.pgm",
                b"P5 4294967296 4294967296 255\n\x00",
                "overflows",
            ),
            ("short.pgm", b"P5 28 28 255\n\x00\x00", "needs 784 bytes"),
        ] {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            refused(
                "predict",
                &["--model=/nonexistent", "--pgm", &p.display().to_string()],
                needle,
            );
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    /// The first seed model (its loop lives in the example): slope and intercept learned.
    #[test]
    fn linear_regression_learns_slope_and_intercept() {
        let line = ok("linear_regression", &["--steps", "300", "--lr", "0.1"]);
        let (w, b) = (line["w"].as_f64().unwrap(), line["b"].as_f64().unwrap());
        assert!((w - 3.0).abs() < 0.05 && (b - 2.0).abs() < 0.05, "{line}");
        // The noise is N(0, 0.1^2): the fitted MSE sits near 0.01.
        assert!(line["final_loss"].as_f64().unwrap() < 0.02, "{line}");
    }

    #[test]
    fn a_diverging_fit_prints_null_and_fails() {
        let o = refused(
            "linear_regression",
            &["--lr", "10", "--steps", "60"],
            "non-finite",
        );
        let line = last_json(&o.stdout);
        assert!(line["w"].is_null() && line["b"].is_null(), "{line}");
        let line = ok("linear_regression", &["--steps", "5"]);
        assert_eq!(line["example"], "linear_regression");
        assert!(line["w"].is_number(), "{line}");
        assert_eq!(ok("device_info", &[])["example"], "device_info");
    }

    #[test]
    fn checkpoints_resume_only_as_they_were_written() {
        use kiln::nn::lenet::lenet5;
        use kiln::nn::Module;
        let dir = tmpdir("resume");
        let a = dir.join("a.safetensors");
        let b = dir.join("b.safetensors");
        let (a_s, b_s) = (a.display().to_string(), b.display().to_string());
        let tiny = ["--train-size", "64", "--batch-size", "64"];
        let with = |extra: &[&str]| -> Vec<String> {
            tiny.iter()
                .chain(extra)
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
        };
        fn args(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        let first = ok(
            "lenet_mnist",
            &args(&with(&["--epochs", "1", "--save", &a_s])),
        );
        assert_eq!(first["epochs"], 1);
        // Another seed or size is refused, naming it.
        refused(
            "lenet_mnist",
            &args(&with(&["--epochs", "1", "--resume", &a_s, "--seed", "1"])),
            "seed: 0 in the checkpoint, 1 now",
        );
        refused(
            "lenet_mnist",
            &args(&with(&["--epochs", "2", "--resume", &a_s])),
            "epochs: 1 in the checkpoint, 2 now",
        );
        // Accepted when named, and then the report counts every epoch.
        let more = ok(
            "lenet_mnist",
            &args(&with(&[
                "--epochs",
                "2",
                "--resume",
                &a_s,
                "--override",
                "epochs",
                "--save",
                &b_s,
            ])),
        );
        assert_eq!(more["epochs"], 2);
        // Fewer epochs than are done: an error, not the later epoch's figures labelled 1.
        refused(
            "lenet_mnist",
            &args(&with(&[
                "--epochs",
                "1",
                "--resume",
                &b_s,
                "--override",
                "epochs",
            ])),
            "2 epochs are done already",
        );
        // A flipped byte anywhere, metadata included, is refused by predict and by --resume.
        let good = std::fs::read(&a).unwrap();
        let bad = dir.join("flipped.safetensors");
        let bad_s = bad.display().to_string();
        for at in [20, good.len() / 2, good.len() - 1] {
            let mut v = good.clone();
            v[at] ^= 0x10;
            std::fs::write(&bad, &v).unwrap();
            refused(
                "predict",
                &["--model", &bad_s, "--index", "8000"],
                "data file",
            );
            refused(
                "lenet_mnist",
                &args(&with(&["--epochs", "1", "--resume", &bad_s])),
                "--resume",
            );
        }
        // NaN weights are refused on load, naming the tensor.
        let d = kiln::device::Device::shared().unwrap();
        let m = lenet5(&d, 0).unwrap();
        let (name, w) = &m.named_parameters()[0];
        let mut v = w.to_vec().unwrap();
        v[5] = f32::NAN;
        w.copy_from_slice(&v).unwrap();
        let nan = dir.join("nan.safetensors");
        kiln::nn::serialize::save(&nan, &m.named_parameters(), &[]).unwrap();
        refused(
            "predict",
            &["--model", &nan.display().to_string(), "--index", "8000"],
            &format!("`{name}` holds non-finite values"),
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    /// gpt2_train: bad shapes and batches refused with the flag named; a tiny run through the
    /// example (its own BPE, shards, two micro-batches, dropout, checkpointed blocks) stopped
    /// after step 2 and resumed ends with the same parameters and optimizer state, bit for bit,
    /// as the run that was not stopped.
    #[test]
    fn gpt2_train_refuses_bad_shapes_and_resumes_bit_for_bit() {
        for (args, flag) in [
            (&["--steps", "0"][..], "--steps"),
            (&["--dropout", "1"], "--dropout"),
            (&["--batch-size", "0"], "--batch-size"),
            (&["--lr", "NaN"], "--lr"),
        ] {
            let o = refused("gpt2_train", args, flag);
            assert_eq!(o.code, Some(2), "{args:?}: clap's usage error");
        }
        let dir = tmpdir("gpt2");
        let shards = dir.join("shards").display().to_string();
        let tiny = [
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
            "--batch-size",
            "2",
            "--total-batch-tokens",
            "64",
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--eval-batches",
            "1",
            "--sample-tokens",
            "4",
            "--dropout",
            "0.1",
            "--checkpoint-activations",
            "--shards",
            &shards,
        ];
        // The tiny run's flags, with `extra` flags' values replacing the same flags' or added.
        let with = |extra: &[&str]| -> Vec<String> {
            let mut v: Vec<String> = tiny.iter().map(|s| s.to_string()).collect();
            let mut i = 0;
            while i < extra.len() {
                let flag = extra[i];
                let value = extra.get(i + 1).filter(|x| !x.starts_with("--"));
                match (v.iter().position(|x| x == flag), value) {
                    (Some(at), Some(val)) => v[at + 1] = val.to_string(),
                    (_, val) => {
                        v.push(flag.to_string());
                        v.extend(val.map(|x| x.to_string()));
                    }
                }
                i += 1 + usize::from(value.is_some());
            }
            v
        };
        fn args(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        refused(
            "gpt2_train",
            &args(&with(&["--n-head", "3"])),
            "--n-head 3 does not divide --n-embd 32",
        );
        refused(
            "gpt2_train",
            &args(&with(&["--total-batch-tokens", "48"])),
            "--total-batch-tokens 48 is not a multiple of batch size 2 x context 16",
        );
        let p = |n: &str| dir.join(n).display().to_string();
        let (a, b, c) = (p("a.safetensors"), p("b.safetensors"), p("c.safetensors"));
        let whole = ok("gpt2_train", &args(&with(&["--save", &a])));
        assert_eq!(whole["micro_batches"], 2, "{whole}");
        assert_eq!(
            (whole["vocab"].as_u64(), whole["padded_vocab"].as_u64()),
            (Some(300), Some(384))
        );
        assert!(
            whole["mfu"].is_null() || whole["mfu"].is_number(),
            "{whole}"
        );
        for key in [
            "first_loss",
            "final_loss",
            "val_loss",
            "tokens_per_second",
            "bytes_per_parameter",
        ] {
            assert!(
                whole[key].as_f64().is_some_and(|v| v > 0.0),
                "{key}: {whole}"
            );
        }
        assert!(
            whole["memory_peak_bytes"].as_u64().is_some_and(|v| v > 0),
            "{whole}"
        );
        ok(
            "gpt2_train",
            &args(&with(&["--save", &b, "--stop-at", "2"])),
        );
        ok("gpt2_train", &args(&with(&["--resume", &b, "--save", &c])));
        let tensors = |f: &str| {
            let file = kiln::nn::serialize::TensorFile::open(std::path::Path::new(f)).unwrap();
            let mut v: Vec<(String, Vec<u8>)> = file
                .raw_tensors()
                .unwrap()
                .into_iter()
                .map(|(name, _, _, data)| (name, data))
                .collect();
            v.sort();
            v
        };
        let (want, got) = (tensors(&a), tensors(&c));
        assert_eq!(want.len(), got.len());
        for ((n, x), (_, y)) in want.iter().zip(&got) {
            assert!(x == y, "{n} differs after the resume");
        }
        // Another shape on --resume is refused, naming it.
        refused(
            "gpt2_train",
            &args(&with(&["--resume", &b, "--n-embd", "64"])),
            "n_embd: 32 in the checkpoint, 64 now",
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
