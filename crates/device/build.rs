//! Embeds every `shaders/*.wgsl` file in the binary, registered by its file stem, and turns each
//! shader's `const NAME: u32 = Nu;` declarations into Rust constants (`shaders::consts::<stem>`),
//! so op codes shared by Rust and WGSL are written once, in the shader.
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
    let mut table = String::from("/// Every shader's `const NAME: u32 = N;` declarations: (shader, name, value).\npub static CONSTS: &[(&str, &str, u32)] = &[\n");
    out += "/// The `const NAME: u32 = N;` declarations of every shader, by shader.\npub mod consts {\n";
    for p in &entries {
        let name = p.file_stem().unwrap().to_str().unwrap();
        let src = fs::read_to_string(p).expect("read a shader");
        let consts: Vec<(String, String)> = src.lines().filter_map(u32_const).collect();
        if consts.is_empty() {
            continue;
        }
        out += &format!("    /// `{name}.wgsl`'s constants.\n    pub mod {name} {{\n");
        for (n, v) in consts {
            out += &format!(
                "        /// `{n}` in `{name}.wgsl`.\n        pub const {n}: u32 = {v};\n"
            );
            table += &format!("    ({name:?}, {n:?}, {v}),\n");
        }
        out += "    }\n";
    }
    out += "}\n";
    out += &table;
    out += "];\n";
    fs::write(
        PathBuf::from(env::var("OUT_DIR").unwrap()).join("shaders.rs"),
        out,
    )
    .unwrap();
}

/// `NAME` and `N` from a line `const NAME: u32 = Nu;` (module scope, upper-case name, a comment
/// after it allowed).
fn u32_const(line: &str) -> Option<(String, String)> {
    let line = line.split("//").next()?.trim_end();
    let rest = line.strip_prefix("const ")?;
    let (name, rest) = rest.split_once(':')?;
    let value = rest
        .trim()
        .strip_prefix("u32")?
        .trim()
        .strip_prefix('=')?
        .trim();
    let value = value.strip_suffix(';')?.trim().strip_suffix('u')?;
    let upper = |c: char| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_';
    (name.chars().all(upper) && value.chars().all(|c| c.is_ascii_digit()))
        .then(|| (name.to_string(), value.to_string()))
}
