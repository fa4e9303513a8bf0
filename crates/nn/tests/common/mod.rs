//! Fixture access and comparisons shared by the Hugging Face tests.
#![allow(dead_code)]

use kiln_graph::Device;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

pub fn dev() -> Device {
    Device::shared().expect("a GPU or software Vulkan adapter (run scripts/setup.sh)")
}

/// tests/fixtures/hf/<name>.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/hf")
        .join(name)
}

/// A fresh scratch folder under the system's temporary directory.
pub fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kiln-hf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A golden safetensors file (F32, I64 and I32 tensors, string metadata).
pub struct Golden(Vec<u8>);

impl Golden {
    pub fn read(path: &Path) -> Golden {
        Golden(std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
    }
    fn view(&self, name: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("golden has no {name}"));
        (t.dtype(), t.shape().to_vec(), t.data().to_vec())
    }
    pub fn names(&self) -> Vec<String> {
        let st = SafeTensors::deserialize(&self.0).unwrap();
        st.names().into_iter().map(str::to_string).collect()
    }
    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.view(name).1
    }
    pub fn f32(&self, name: &str) -> Vec<f32> {
        let (dt, _, d) = self.view(name);
        assert_eq!(dt, Dtype::F32, "{name}");
        d.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
    /// I64 or I32 values as i32.
    pub fn i32(&self, name: &str) -> Vec<i32> {
        let (dt, _, d) = self.view(name);
        match dt {
            Dtype::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as i32)
                .collect(),
            Dtype::I32 => d
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            other => panic!("{name}: {other:?}"),
        }
    }
    pub fn metadata(&self, key: &str) -> String {
        let (_, meta) = SafeTensors::read_metadata(&self.0).unwrap();
        meta.metadata().as_ref().unwrap()[key].clone()
    }
}

/// Max |got - want| and that over max |want| (the tensor's relative error).
pub fn diffs(got: &[f32], want: &[f32]) -> (f64, f64) {
    assert_eq!(got.len(), want.len(), "lengths");
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - *w as f64).abs())
        .fold(0.0, f64::max);
    let scale = want.iter().map(|w| w.abs() as f64).fold(0.0, f64::max);
    (worst, if scale > 0.0 { worst / scale } else { worst })
}

/// Asserts max |got - want| <= tol and prints it.
pub fn check_abs(what: &str, got: &[f32], want: &[f32], tol: f64) -> f64 {
    let (worst, rel) = diffs(got, want);
    eprintln!("{what}: max |diff| {worst:.3e} (relative {rel:.3e})");
    assert!(
        got.iter().all(|g| g.is_finite()),
        "{what}: non-finite values"
    );
    assert!(worst <= tol, "{what}: max |diff| {worst:.3e} > {tol:.0e}");
    worst
}

/// Asserts max |got - want| / max |want| <= tol (or, for an all-zero want, max |got| <= tol)
/// and prints it.
pub fn check_rel(what: &str, got: &[f32], want: &[f32], tol: f64) -> f64 {
    let (worst, rel) = diffs(got, want);
    eprintln!("{what}: max |diff| {worst:.3e}, relative {rel:.3e}");
    assert!(
        got.iter().all(|g| g.is_finite()),
        "{what}: non-finite values"
    );
    assert!(
        rel <= tol,
        "{what}: relative difference {rel:.3e} > {tol:.0e}"
    );
    rel
}
