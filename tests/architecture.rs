//! The module graph stays one-way: every module of `src/` uses only modules below it in
//! [`LAYERS`] (the order `src/lib.rs` and docs/architecture.md describe). A `use` of a module
//! above — the start of an import loop — fails here with the file and line.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top-level modules, lowest first.
const LAYERS: &[&str] = &[
    "clock", "ws", "protocol", "app", "runtime", "config", "logging", "metrics", "tls", "webhooks",
    "pusher", "hub", "worker", "session", "api", "console", "http", "server",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `crate::<module>` paths in the code of `text` (comments and unit-test modules left out),
/// with their line numbers.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let module: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            out.push((n + 1, module));
        }
    }
    out
}

#[test]
fn modules_use_only_modules_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut seen = BTreeSet::new();
    let mut upward = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .iter()
            .next()
            .unwrap()
            .to_string_lossy()
            .replace(".rs", "");
        if top == "lib" || top == "main" {
            continue;
        }
        let level = LAYERS
            .iter()
            .position(|l| *l == top)
            .unwrap_or_else(|| panic!("src/{top} is not in LAYERS: place it in the graph"));
        seen.insert(top.clone());
        let text = std::fs::read_to_string(&file).unwrap();
        for (line, module) in crate_paths(&text) {
            if module == top {
                continue;
            }
            let Some(used) = LAYERS.iter().position(|l| *l == module) else {
                continue;
            };
            if used > level {
                upward.push(format!("src/{}:{line}: {top} uses {module}", rel.display()));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "modules reach up the graph:\n{}",
        upward.join("\n")
    );
    let missing: Vec<_> = LAYERS.iter().filter(|l| !seen.contains(**l)).collect();
    assert!(
        missing.is_empty(),
        "LAYERS names modules that do not exist: {missing:?}"
    );
}

#[test]
fn the_check_sees_an_upward_use() {
    let text = "use crate::worker::Worker;\n// crate::server in a comment\nfn f() { crate::clock::now_ns(); }\n#[cfg(test)]\nuse crate::server;";
    let found: Vec<String> = crate_paths(text).into_iter().map(|(_, m)| m).collect();
    assert_eq!(found, ["worker", "clock"]);
}
