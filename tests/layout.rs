//! The layout's rules, read from the sources: crates depend one way (device <- ops <- graph <-
//! nn <- train <- dist), and inside a crate no file imports one that imports it back (directly
//! or around a longer circle), counting an item the crate root re-exports as its module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ORDER: &[&str] = &[
    "kiln-device",
    "kiln-ops",
    "kiln-graph",
    "kiln-nn",
    "kiln-train",
    "kiln-dist",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn crate_dirs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").exists())
        .collect();
    v.sort();
    v
}

/// The `kiln-*` names under `[dependencies]` of a manifest.
fn kiln_dependencies(manifest: &str) -> Vec<String> {
    let mut in_deps = false;
    let mut out = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && line.starts_with("kiln-") {
            out.push(line.split(['.', ' ', '=']).next().unwrap().to_string());
        }
    }
    out
}

#[test]
fn crates_depend_one_way() {
    let dirs = crate_dirs();
    assert!(dirs.len() >= 5, "crates/ holds {dirs:?}");
    for dir in dirs {
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        let name = manifest
            .lines()
            .find_map(|l| l.strip_prefix("name = \""))
            .map(|l| l.trim_end_matches('"').to_string())
            .unwrap();
        let rank = ORDER
            .iter()
            .position(|c| *c == name)
            .unwrap_or_else(|| panic!("{name} has no place in the layout's order {ORDER:?}"));
        for dep in kiln_dependencies(&manifest) {
            let dep_rank = ORDER.iter().position(|c| *c == dep).unwrap();
            assert!(
                dep_rank < rank,
                "{name} depends on {dep}, which comes after it in {ORDER:?}"
            );
        }
    }
}

/// The items a crate root re-exports (`pub use module::{A, B}`, `pub(crate) use module::C`), by
/// the module they come from: `use crate::A` in a sibling imports `module` as surely as
/// `use crate::module::A` does.
fn reexports(lib: &str, modules: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let flat: String = lib.split_whitespace().collect::<Vec<_>>().join(" ");
    for (i, _) in flat.match_indices("use ") {
        let before = flat[..i].trim_end();
        if !(before.ends_with("pub") || before.ends_with("pub(crate)")) {
            continue;
        }
        let stmt = &flat[i + 4..flat[i..].find(';').map_or(flat.len(), |e| i + e)];
        let Some((module, items)) = stmt.split_once("::") else {
            continue;
        };
        if !modules.contains(module) {
            continue;
        }
        let items = items.trim().trim_start_matches('{').trim_end_matches('}');
        for item in items.split(',') {
            // `A`, `A as B` (the name used is B), `inner::C`.
            let item = item.trim();
            let name = item.rsplit(" as ").next().unwrap_or(item);
            let name = name.rsplit("::").next().unwrap_or(name).trim();
            if !name.is_empty() && name != "self" {
                out.insert(name.to_string(), module.to_string());
            }
        }
    }
    out
}

/// The sibling modules a source file names through `crate::` (paths and `use crate::{..}`
/// groups, items the crate root re-exports counted as their modules), test modules aside.
fn imports(
    src: &str,
    modules: &BTreeSet<String>,
    reexported: &BTreeMap<String, String>,
) -> BTreeSet<String> {
    let src = match src.find("#[cfg(test)]\nmod tests") {
        Some(i) => &src[..i],
        None => src,
    };
    // Comments aside: a doc link names an item without importing its module.
    let code: String = src
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let src = code.as_str();
    let mut out = BTreeSet::new();
    let mut add = |name: &str| {
        let name: String = name
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if modules.contains(&name) {
            out.insert(name);
        } else if let Some(m) = reexported.get(&name) {
            out.insert(m.clone());
        }
    };
    for (i, _) in src.match_indices("crate::") {
        let rest = &src[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find("};").unwrap_or(group.len())];
            for item in group.split(',') {
                add(item.trim());
            }
        } else {
            add(rest);
        }
    }
    out
}

fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            return Some(path[at..].to_vec());
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(files(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            v.push(p);
        }
    }
    v
}

#[test]
fn no_file_imports_one_that_imports_it_back() {
    for dir in crate_dirs() {
        let src = dir.join("src");
        // Top-level modules: a file `x.rs` or a directory `x/`.
        let module_of = |p: &Path| -> String {
            let rel = p.strip_prefix(&src).unwrap();
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            first.trim_end_matches(".rs").to_string()
        };
        let all = files(&src);
        let modules: BTreeSet<String> = all
            .iter()
            .map(|p| module_of(p))
            .filter(|m| m != "lib")
            .collect();
        let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
        let reexported = reexports(&lib, &modules);
        let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for p in &all {
            let m = module_of(p);
            if m == "lib" {
                continue;
            }
            let text = std::fs::read_to_string(p).unwrap();
            let deps = graph.entry(m.clone()).or_default();
            deps.extend(
                imports(&text, &modules, &reexported)
                    .into_iter()
                    .filter(|d| *d != m),
            );
        }
        if let Some(c) = circle(&graph) {
            panic!(
                "{}: modules import each other in a circle: {c:?}",
                dir.display()
            );
        }
    }
}

#[test]
fn the_circle_finder_finds_circles() {
    let modules: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let a = imports(
        "use crate::{b::X, Result};\nfn f() { crate::c::g() }",
        &modules,
        &BTreeMap::new(),
    );
    assert_eq!(a, ["b", "c"].iter().map(|s| s.to_string()).collect());
    // An item the crate root re-exports counts as an import of its module.
    let re = reexports(
        "pub use c::{Y, Z as W};\npub(crate) use b::{\n    inner::V,\n};\nuse a::Hidden;",
        &modules,
    );
    assert_eq!(re.get("W").map(String::as_str), Some("c"));
    assert_eq!(re.get("V").map(String::as_str), Some("b"));
    assert_eq!(re.get("Hidden"), None);
    let a = imports("use crate::{W, Result};", &modules, &re);
    assert_eq!(a, ["c"].iter().map(|s| s.to_string()).collect());
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), a);
    g.insert("b".to_string(), BTreeSet::new());
    g.insert("c".to_string(), ["b".to_string()].into());
    assert_eq!(circle(&g), None);
    g.get_mut("b").unwrap().insert("a".to_string());
    assert!(circle(&g).is_some());
}
