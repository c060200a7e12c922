//! The architecture's invariants that a compiler alone does not check:
//! the decision core depends on no server crate, and the server crate's
//! modules import each other without a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// `cargo tree -p healthgate-core` lists no I/O or server crate.
#[test]
fn the_core_depends_on_no_server_crate() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["tree", "-p", "healthgate-core", "-e", "normal", "--prefix", "none", "--offline"])
        .current_dir(workspace())
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8(out.stdout).expect("utf-8");
    assert!(tree.contains("ed25519-dalek"), "not the core's tree:\n{tree}");
    for banned in ["tokio", "hyper", "redb", "prometheus"] {
        let hit = tree.lines().find(|l| l.starts_with(&format!("{banned} v")));
        assert!(hit.is_none(), "healthgate-core depends on {banned}: {hit:?}");
    }
}

/// The module (as `a::b`) a source file under `gateway/src` defines.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src").with_extension("");
    let parts: Vec<String> = rel.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    match parts.as_slice() {
        [only] if only == "lib" || only == "main" => String::new(),
        _ => parts.join("::"),
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every `crate::a::b::...` path in a file, resolved to the longest known
/// module it names (`use crate::a::{b, c}` counts as `a`: coarser, never
/// missing an edge).
fn imports(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let path: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
        let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        for n in (1..=segs.len()).rev() {
            let m = segs[..n].join("::");
            if modules.contains(&m) {
                out.insert(m);
                break;
            }
        }
    }
    out
}

/// No two modules of the server crate import each other, directly or
/// through others: layers stay layers. A parent's `mod` line is not an
/// import, and a child may use its parent (the parent's type it extends).
#[test]
fn the_server_modules_have_no_import_cycle() {
    let src = workspace().join("gateway/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).filter(|m| !m.is_empty()).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let me = module_of(&src, f);
        if me.is_empty() {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("read source");
        // Tests may reach anywhere; only the product's imports form layers.
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        let mut to = imports(text, &modules);
        to.retain(|m| m != &me && !me.starts_with(&format!("{m}::")));
        graph.insert(me, to);
    }
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(2) => return None,
            Some(1) => {
                let from = path.iter().position(|p| p == m).unwrap_or(0);
                let mut cycle = path[from..].to_vec();
                cycle.push(m.to_owned());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(m.to_owned(), 1);
        path.push(m.to_owned());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, graph, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(m.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in graph.keys() {
        if let Some(cycle) = visit(m, &graph, &mut state, &mut Vec::new()) {
            panic!("import cycle between server modules: {}", cycle.join(" -> "));
        }
    }
    assert!(graph.len() >= 20, "found only {} modules", graph.len());
}

/// The same graph, coarser: the layers (top-level modules) import each
/// other without a cycle either.
#[test]
fn the_server_layers_have_no_import_cycle() {
    let src = workspace().join("gateway/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).filter(|m| !m.is_empty()).collect();
    let top = |m: &str| m.split("::").next().unwrap_or("").to_owned();
    let mut edges: BTreeSet<(String, String)> = BTreeSet::new();
    for f in &files {
        let me = module_of(&src, f);
        if me.is_empty() {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("read source");
        let text = text.split("#[cfg(test)]").next().unwrap_or("");
        for m in imports(text, &modules) {
            if top(&m) != top(&me) {
                edges.insert((top(&me), top(&m)));
            }
        }
    }
    for (a, b) in &edges {
        assert!(!edges.contains(&(b.clone(), a.clone())), "layers {a} and {b} import each other; edges: {edges:?}");
    }
}
