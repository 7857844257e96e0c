//! The boot kernel's folders depend on each other one way only: the
//! platform at the bottom, the glue a kernel would copy above it, then the
//! apps, the benchmarks, the examples and the tests. Checked by reading the
//! `crate::` paths of `boot/src`, so no QEMU is needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("boot/src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The folders, each its own name, and the short names the crate root
/// gives their modules (`use platform::{apic, ...};` in `main.rs`), each
/// mapped to its folder.
fn owners(src: &Path) -> BTreeMap<String, String> {
    let main = std::fs::read_to_string(src.join("main.rs")).expect("main.rs");
    let mut owner = BTreeMap::new();
    for entry in std::fs::read_dir(src).expect("boot/src is readable") {
        let folder = entry.expect("a directory entry").path();
        if !folder.is_dir() {
            continue;
        }
        let name = folder.file_name().unwrap().to_string_lossy().into_owned();
        let imports = paths_after(&main, &format!("use {name}::"));
        for module in imports.into_iter().chain([name.clone()]) {
            owner.insert(module, name.clone());
        }
    }
    owner
}

/// The first identifiers after each `crate::` in `text`.
fn crate_names(text: &str) -> Vec<String> {
    paths_after(text, "crate::")
}

/// The first identifiers after each `prefix` in `text`, looking inside
/// `{...}` groups (nested groups included) for their first segments.
fn paths_after(text: &str, prefix: &str) -> Vec<String> {
    let mut names = Vec::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    for (at, _) in text.match_indices(prefix) {
        let rest = &text[at + prefix.len()..];
        let Some(group) = rest.strip_prefix('{') else {
            names.push(ident(rest));
            continue;
        };
        // Split the group's top level on commas; each item's first segment.
        let mut depth = 0;
        let mut item = String::new();
        for c in group.chars() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    names.push(ident(item.trim()));
                    item.clear();
                    continue;
                }
                _ => {}
            }
            item.push(c);
        }
        names.push(ident(item.trim()));
    }
    names
}

/// Which folder or module uses which, from the `crate::` paths of every
/// file below the root. With `modules`, a module the crate root names (say
/// `platform::time`) is its own node; otherwise each folder is one node.
fn dependencies(src: &Path, modules: bool) -> BTreeMap<String, BTreeSet<String>> {
    let owner = owners(src);
    let mut files = Vec::new();
    sources(src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let relative = file.strip_prefix(src).unwrap();
        let mut parts = relative.iter().map(|p| p.to_string_lossy().into_owned());
        let first = parts.next().expect("a file below src");
        // Files directly in src (main.rs) are the root, which may use all.
        let Some(second) = parts.next() else {
            continue;
        };
        let stem = second.trim_end_matches(".rs").to_string();
        let node = |name: String| -> Option<String> {
            let folder = owner.get(&name)?;
            Some(if modules && *folder != name {
                name
            } else {
                folder.clone()
            })
        };
        let from = node(stem.clone())
            .filter(|n| owner.get(&stem) == Some(&first) || *n == first)
            .unwrap_or(first.clone());
        let text = std::fs::read_to_string(file).expect("a source file");
        for to in crate_names(&text).into_iter().filter_map(node) {
            if to != from {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    edges
}

/// Panics naming the first cycle in `edges` (a depth-first search: a node
/// met again while on the path closes one).
fn assert_acyclic(what: &str, edges: &BTreeMap<String, BTreeSet<String>>) {
    fn visit(
        at: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        what: &str,
    ) {
        if let Some(start) = path.iter().position(|p| p == at) {
            panic!("boot/src {what} form a cycle: {:?} -> {at}", &path[start..]);
        }
        if !done.insert(at.to_string()) {
            return;
        }
        path.push(at.to_string());
        for next in edges.get(at).into_iter().flatten() {
            visit(next, edges, path, done, what);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for from in edges.keys() {
        visit(from, edges, &mut Vec::new(), &mut done, what);
    }
}

#[test]
fn boot_folders_and_modules_have_no_dependency_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../src");
    let folders = dependencies(&src, false);
    assert!(
        folders.contains_key("embed") && folders.contains_key("apps"),
        "the parse found the folders' uses: {folders:?}"
    );
    assert_acyclic("folders", &folders);
    let modules = dependencies(&src, true);
    assert!(
        modules
            .get("apic")
            .is_some_and(|uses| uses.contains("time")),
        "the parse found the modules' uses: {modules:?}"
    );
    assert_acyclic("modules", &modules);
}
