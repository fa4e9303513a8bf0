//! Embeds every `shaders/*.wgsl` file in the binary, registered by its file stem, and turns each
//! shader's `const NAME: u32 = Nu;` declarations into Rust constants (`shaders::consts::<stem>`),
//! so op codes shared by Rust and WGSL are written once, in the shader.
//!
//! A line `// kiln:include NAME.wgsl` is replaced by `shaders/parts/NAME.wgsl`: one set of
//! kernels built as two modules that differ in a helper (a subgroup reduction and a
//! workgroup-memory one), since a module that mentions a subgroup built-in cannot even be created
//! on an adapter without subgroups. Parts are not registered alone; every registered module,
//! parts expanded, is validated by naga in the registry's tests.
use std::{env, fs, path::Path, path::PathBuf};

/// `src` with each `// kiln:include NAME` line replaced by `parts/NAME`'s text.
fn expand(dir: &Path, name: &str, src: &str) -> String {
    let mut out = String::new();
    for line in src.lines() {
        if let Some(part) = line.trim().strip_prefix("// kiln:include ") {
            let path = dir.join("parts").join(part.trim());
            let text = fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{name}.wgsl includes {}: {e}", path.display()));
            assert!(
                !text.contains("// kiln:include"),
                "{}: parts do not include others",
                path.display()
            );
            println!("cargo:rerun-if-changed=../../shaders/parts/{}", part.trim());
            out += &text;
        } else {
            out += line;
            out.push('\n');
        }
    }
    out
}

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
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let mut out = String::from("/// Every embedded shader: (name, WGSL source).\npub static SHADERS: &[(&str, &str)] = &[\n");
    for p in &entries {
        let name = p.file_stem().unwrap().to_str().expect("UTF-8 shader name");
        println!("cargo:rerun-if-changed=../../shaders/{name}.wgsl");
        let src = fs::read_to_string(p).expect("read a shader");
        if src.contains("// kiln:include") {
            // The expanded module lives in OUT_DIR; the rerun lines above follow its parts.
            let file = format!("{name}.expanded.wgsl");
            fs::write(out_dir.join(&file), expand(&dir, name, &src)).unwrap();
            out += &format!(
                "    ({name:?}, include_str!(concat!(env!(\"OUT_DIR\"), \"/{file}\"))),\n"
            );
        } else {
            out += &format!(
                "    ({name:?}, include_str!(concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/../../shaders/{name}.wgsl\"))),\n"
            );
        }
    }
    out += "];\n";
    let mut table = String::from("/// Every shader's `const NAME: u32 = N;` declarations: (shader, name, value).\npub static CONSTS: &[(&str, &str, u32)] = &[\n");
    out += "/// The `const NAME: u32 = N;` declarations of every shader, by shader.\npub mod consts {\n";
    for p in &entries {
        let name = p.file_stem().unwrap().to_str().unwrap();
        let src = expand(&dir, name, &fs::read_to_string(p).expect("read a shader"));
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
    fs::write(out_dir.join("shaders.rs"), out).unwrap();
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
