//! Checkpoints: round trip, PyTorch names, corrupt/truncated/empty/wrong-architecture files, and
//! atomic writes that leave the previous file intact.

use kiln_graph::{Device, Tensor};
use kiln_nn::checkpoint::{load, read_metadata, save};
use kiln_nn::layers::{lenet5, Linear, Module, Sequential};
use kiln_ops::testing::Rng;
use std::path::PathBuf;

fn dev() -> Device {
    Device::shared().expect("a GPU or software Vulkan adapter (run scripts/setup.sh)")
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-ckpt-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn values(m: &dyn Module) -> Vec<Vec<f32>> {
    m.parameters().iter().map(|p| p.to_vec().unwrap()).collect()
}

#[test]
fn round_trip_and_bad_files() {
    let d = dev();
    let dir = tmpdir("rt");
    let path = dir.join("lenet.safetensors");
    let a = lenet5(&d, 1).unwrap();
    save(
        &path,
        &a.named_parameters(),
        &[("step".into(), "42".into())],
    )
    .unwrap();
    assert_eq!(read_metadata(&path).unwrap()["step"], "42");
    let b = lenet5(&d, 2).unwrap();
    assert_ne!(values(&a), values(&b));
    let report = load(&path, &b.named_parameters(), true).unwrap();
    assert_eq!(report, Default::default());
    assert_eq!(values(&a), values(&b));
    let x = Tensor::full(&d, &[2, 1, 28, 28], 0.3).unwrap();
    assert_eq!(
        a.forward(&x).unwrap().to_vec().unwrap(),
        b.forward(&x).unwrap().to_vec().unwrap()
    );

    let good = std::fs::read(&path).unwrap();
    // One flipped bit in the payload: the checksum catches it.
    let mut bad = good.clone();
    let last = bad.len() - 3;
    bad[last] ^= 1;
    let p2 = dir.join("flipped.safetensors");
    std::fs::write(&p2, &bad).unwrap();
    let e = load(&p2, &b.named_parameters(), true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("checksum") && e.contains("flipped.safetensors"),
        "{e}"
    );
    // Truncated and empty files.
    std::fs::write(&p2, &good[..good.len() / 2]).unwrap();
    assert!(load(&p2, &b.named_parameters(), true)
        .unwrap_err()
        .to_string()
        .contains("truncated"));
    std::fs::write(&p2, b"").unwrap();
    assert!(load(&p2, &b.named_parameters(), true)
        .unwrap_err()
        .to_string()
        .contains("empty"));
    assert!(load(
        &dir.join("missing.safetensors"),
        &b.named_parameters(),
        true
    )
    .is_err());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn wrong_architecture_strict_and_non_strict() {
    let d = dev();
    let dir = tmpdir("arch");
    let path = dir.join("lenet.safetensors");
    let lenet = lenet5(&d, 1).unwrap();
    save(&path, &lenet.named_parameters(), &[]).unwrap();
    // A LeNet with a new 5-class head: fc3 differs, the rest matches.
    let mut rng = Rng::new(5);
    let other = lenet5(&d, 3).unwrap();
    let mut named = other.named_parameters();
    named.retain(|(n, _)| !n.starts_with("fc3"));
    let head = Linear::new(&d, &mut rng, 84, 5, true).unwrap();
    named.push(("fc3.weight".into(), head.weight.clone()));
    named.push(("fc3.bias".into(), head.bias.clone().unwrap()));
    named.push(("extra.weight".into(), Tensor::full(&d, &[2], 0.0).unwrap()));
    let before = head.weight.to_vec().unwrap();
    let e = load(&path, &named, true).unwrap_err().to_string();
    assert!(
        e.contains("fc3.weight") && e.contains("[10, 84]") && e.contains("extra.weight"),
        "{e}"
    );
    let r = load(&path, &named, false).unwrap();
    assert_eq!(r.missing, vec!["extra.weight".to_string()]);
    assert!(
        r.mismatched.iter().any(|m| m.starts_with("fc3.weight")),
        "{r:?}"
    );
    assert!(r.unexpected.is_empty());
    // Matching tensors loaded, mismatched ones left alone.
    assert_eq!(
        named[0].1.to_vec().unwrap(),
        lenet.named_parameters()[0].1.to_vec().unwrap()
    );
    assert_eq!(head.weight.to_vec().unwrap(), before);
    // An MLP against the LeNet file: everything unexpected or missing.
    let mlp = Sequential::new().push(Linear::new(&d, &mut rng, 4, 2, true).unwrap());
    let r = load(&path, &mlp.named_parameters(), false).unwrap();
    assert_eq!(r.missing.len(), 2);
    assert_eq!(r.unexpected.len(), 10);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn failed_saves_leave_the_previous_file_intact() {
    let d = dev();
    let dir = tmpdir("atomic");
    let path = dir.join("model.safetensors");
    let a = lenet5(&d, 1).unwrap();
    save(&path, &a.named_parameters(), &[]).unwrap();
    let before = std::fs::read(&path).unwrap();
    // Block the temporary file's name so the write fails before the rename.
    let tmp = dir.join(format!(".model.safetensors.tmp-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let b = lenet5(&d, 2).unwrap();
    let e = save(&path, &b.named_parameters(), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("previous file left as it was"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // A missing directory is a clear error, and nothing is created.
    let e = save(
        &dir.join("no/such/dir/m.safetensors"),
        &a.named_parameters(),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("no/such/dir"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
