//! The shape of the source tree, checked from its own `crate::` paths: the import graph among
//! top-level modules has no cycle, no stage reaches up into `server` or `api`, and the store
//! imports no stage (records belong to the store's model; stages call the store, never back).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that start things or face the operator; everything else is below them.
const TOP: &[&str] = &["server", "api", "cli", "bench", "testkit"];
/// Who may import a top module: `server` starts the API; the CLI starts the server; only the
/// bench uses the test kit.
const MAY_IMPORT_TOP: &[(&str, &[&str])] = &[
    ("server", &["cli"]),
    ("api", &["server", "cli"]),
    ("cli", &[]),
    ("bench", &["cli"]),
    ("testkit", &["bench"]),
];
/// The stages the store must not know about.
const STAGES: &[&str] = &[
    "smtp", "pipeline", "notify", "actions", "server", "api", "cli", "bench", "testkit",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Top-level module -> the top-level modules its files name through `crate::`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a component");
        let top = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        // Code only: a comment that mentions `crate::x` (an intra-doc link, a remark) is not a
        // dependency. Cutting each line at `//` also cuts a string holding `//`, which can only
        // hide an edge written after a URL on the same line.
        let text: String = std::fs::read_to_string(&file)
            .expect("read source")
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let entry = edges.entry(top.clone()).or_default();
        for (i, _) in text.match_indices("crate::") {
            // `inbound::crate::x` cannot occur; a preceding identifier char means another path
            // (e.g. `$crate::`), which we skip.
            if text[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == '$') {
                continue;
            }
            let name: String = text[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !name.is_empty() && name != top {
                entry.insert(name);
            }
        }
    }
    edges
}

#[test]
fn top_level_modules_import_each_other_without_a_cycle() {
    let g = graph();
    // Depth-first search with colours; a grey node reached again closes a cycle.
    fn visit<'a>(
        n: &'a str,
        g: &'a BTreeMap<String, BTreeSet<String>>,
        colour: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match colour.get(n) {
            Some(1) => {
                let start = path.iter().position(|p| *p == n).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            Some(2) => return None,
            _ => {}
        }
        colour.insert(n, 1);
        path.push(n);
        for m in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, g, colour, path) {
                return Some(c);
            }
        }
        path.pop();
        colour.insert(n, 2);
        None
    }
    let mut colour = BTreeMap::new();
    for n in g.keys() {
        let mut path = Vec::new();
        if let Some(cycle) = visit(n, &g, &mut colour, &mut path) {
            panic!(
                "import cycle among top-level modules: {}",
                cycle.join(" -> ")
            );
        }
    }
}

#[test]
fn no_stage_imports_server_api_or_cli() {
    let g = graph();
    let mut wrong = Vec::new();
    for (from, tos) in &g {
        for to in tos {
            if !TOP.contains(&to.as_str()) {
                continue;
            }
            let allowed = MAY_IMPORT_TOP
                .iter()
                .find(|(t, _)| t == to)
                .map(|(_, who)| who.contains(&from.as_str()))
                .unwrap_or(false);
            if !allowed {
                wrong.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports that reach up: {wrong:?}");
}

#[test]
fn the_store_imports_no_stage() {
    let g = graph();
    let wrong: Vec<_> = g
        .get("store")
        .into_iter()
        .flatten()
        .filter(|m| STAGES.contains(&m.as_str()))
        .collect();
    assert!(wrong.is_empty(), "store imports stages: {wrong:?}");
}

/// Files that do one job stay short enough to read whole: a source file over this many lines
/// must say why at its top, in a module-doc line starting with `//! Long file:`.
const MAX_LINES_WITHOUT_REASON: usize = 800;

#[test]
fn long_files_say_why_they_are_long() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut unexplained = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read source");
        let lines = text.lines().count();
        let explained = text
            .lines()
            .take_while(|l| l.starts_with("//!") || l.trim().is_empty())
            .any(|l| l.starts_with("//! Long file:"));
        if lines > MAX_LINES_WITHOUT_REASON && !explained {
            unexplained.push(format!("{} ({lines} lines)", file.display()));
        }
    }
    assert!(
        unexplained.is_empty(),
        "over {MAX_LINES_WITHOUT_REASON} lines without a `//! Long file:` reason at the top: {unexplained:?}"
    );
}

/// The storage engine stays behind the store's domain operations: no file outside `src/store/`
/// names a sled type or a tree of the database (code only, comments aside), so a second backend
/// changes the store and nothing above it.
#[test]
fn the_storage_engine_stays_inside_the_store() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut leaks = Vec::new();
    for file in files {
        if file.starts_with(src.join("store")) {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read source");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("sled::") || code.contains("TreeId") {
                leaks.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "storage engine outside src/store/: {leaks:?}"
    );
}
