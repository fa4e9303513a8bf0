//! Embeds every `shaders/*.wgsl` file in the binary, registered by its file stem.
use std::{env, fs, path::PathBuf};

fn main() {
    let dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap()).join("../../shaders");
    let dir = dir
        .canonicalize()
        .expect("shaders/ directory next to the workspace root");
    // Paths relative to the package, in both the rerun list and the includes: a target/
    // directory copied from another checkout then still follows this checkout's shaders.
    println!("cargo:rerun-if-changed=../../shaders");
    let mut entries: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("read shaders/")
        .map(|e| e.expect("shaders/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wgsl"))
        .collect();
    entries.sort();
    let mut out = String::from("/// Every embedded shader: (name, WGSL source).\npub static SHADERS: &[(&str, &str)] = &[\n");
    for p in &entries {
        let name = p.file_stem().unwrap().to_str().expect("UTF-8 shader name");
        println!("cargo:rerun-if-changed=../../shaders/{name}.wgsl");
        out += &format!(
            "    ({name:?}, include_str!(concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/../../shaders/{name}.wgsl\"))),\n"
        );
    }
    out += "];\n";
    fs::write(
        PathBuf::from(env::var("OUT_DIR").unwrap()).join("shaders.rs"),
        out,
    )
    .unwrap();
}
