//! The library's layers point one way. Reads every `src/**/*.rs` file
//! (relative to the package, so it runs in the published package too),
//! resolves each `crate::`/`super::` path outside comments to the
//! top-level module it names, and fails on an edge the layering forbids:
//!
//! - `hal` never uses `engine` (the engine is built on the HAL);
//! - `engine` never uses `drivers` (drivers implement the engine's traits);
//! - `mm` uses neither `engine` nor `drivers`, and neither uses `mm`
//!   (page tables and copy engines are independent halves);
//! - no library file names the kernel (`dmaengine_boot`, `boot`);
//! - no module imports a test module (`...::tests::...`): shared fakes
//!   and fixtures live in their own modules.

use std::fs;
use std::path::{Path, PathBuf};

/// (user layer, used layer) pairs that must not occur.
const FORBIDDEN: &[(&str, &str)] = &[
    ("hal", "engine"),
    ("engine", "drivers"),
    ("mm", "engine"),
    ("mm", "drivers"),
    ("engine", "mm"),
    ("drivers", "mm"),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable src directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file under `src/` (`lib.rs` is the root, `x/mod.rs`
/// is `x`).
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The code of a line, without its comment (doc links may name any layer:
/// they build no dependency).
fn code(line: &str) -> &str {
    line.find("//").map_or(line, |i| &line[..i])
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules a line of `module` names through `crate::` or
/// `super::` paths (a `crate::{a, b}` group names each of `a`, `b`).
fn layers_named(module: &[String], line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    loop {
        let (at, is_crate) = match (rest.find("crate::"), rest.find("super::")) {
            (Some(c), Some(s)) if s < c => (s, false),
            (Some(c), _) => (c, true),
            (None, Some(s)) => (s, false),
            (None, None) => break,
        };
        // `dmaengine_crate::` or `my_super::` are other names.
        let preceded = rest[..at]
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        let mut tail = &rest[at..];
        let mut path: Vec<String> = Vec::new();
        if is_crate {
            tail = &tail["crate::".len()..];
        } else {
            path = module.to_vec();
            while let Some(t) = tail.strip_prefix("super::") {
                path.pop();
                tail = t;
            }
        }
        if !preceded {
            if let Some(group) = tail.strip_prefix('{').filter(|_| path.is_empty()) {
                let mut depth = 0;
                let mut start = true;
                for (j, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => start = true,
                        c if start && !c.is_whitespace() => {
                            found.push(ident_at(&group[j..]).to_string());
                            start = false;
                        }
                        _ => {}
                    }
                }
            } else if let Some(first) = path.first() {
                found.push(first.clone());
            } else {
                found.push(ident_at(tail).to_string());
            }
        }
        rest = &rest[at + 7..];
    }
    found
}

fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src").to_path_buf();
        let shown = format!("src/{}", rel.to_string_lossy().replace('\\', "/"));
        let module = module_of(&rel);
        let layer = module.first().cloned().unwrap_or_default();
        let text = fs::read_to_string(&file).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            let line = code(line);
            let at = format!("{shown}:{}: {}", n + 1, line.trim());
            if line.contains("dmaengine_boot") || line.contains("crate::boot") {
                bad.push(format!("{at}: the library names the kernel"));
            }
            let imports = line.trim_start().starts_with("use ")
                || line.trim_start().starts_with("pub use ")
                || line.trim_start().starts_with("pub(crate) use ");
            if imports && (line.contains("::tests::") || line.contains("::tests;")) {
                bad.push(format!("{at}: imports a test module"));
            }
            for used in layers_named(&module, line) {
                let forbidden = FORBIDDEN.contains(&(layer.as_str(), used.as_str()));
                if forbidden {
                    bad.push(format!("{at}: {layer} -> {used}"));
                }
            }
        }
    }
    bad
}

#[test]
fn library_layers_point_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(bad.is_empty(), "layer rules broken:\n{}", bad.join("\n"));
}

#[test]
fn the_reader_sees_each_kind_of_path() {
    let hal = ["hal".to_string()];
    assert_eq!(
        layers_named(&hal, "use crate::engine::DmaError;"),
        ["engine"]
    );
    assert_eq!(
        layers_named(&hal, "use crate::{engine::X, sync::Y};"),
        ["engine", "sync"]
    );
    assert_eq!(layers_named(&hal, "use super::engine::X;"), ["engine"]);
    assert_eq!(layers_named(&hal, "use super::Dma;"), ["Dma"]);
    let pool = ["hal".to_string(), "pool".to_string()];
    assert_eq!(layers_named(&pool, "use super::DmaAddr;"), ["hal"]);
    assert!(layers_named(&hal, "x: my_crate::engine").is_empty());
    assert_eq!(code("use a; // crate::engine"), "use a; ");
}

/// Rooms that hold one thing: no library file (tests aside) grows past 600
/// lines, where a file starts to hold several.
#[test]
fn no_library_file_is_over_600_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut long: Vec<String> = files
        .iter()
        .filter(|f| {
            let rel = f.strip_prefix(&src).expect("under src");
            !rel.components().any(|c| c.as_os_str() == "tests")
                && !rel.to_string_lossy().contains("tests.rs")
        })
        .filter_map(|f| {
            let lines = fs::read_to_string(f).expect("readable").lines().count();
            (lines > 600).then(|| format!("{}: {lines} lines", f.display()))
        })
        .collect();
    long.sort();
    assert!(
        long.is_empty(),
        "files over 600 lines:\n{}",
        long.join("\n")
    );
}
