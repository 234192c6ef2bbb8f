//! The layer check: every top-level module of `src/` sits in one layer and
//! imports only from the layers below it (production code: comments and
//! `#[cfg(test)]` modules do not count). `docs/design.md`, "Layers", says
//! what each layer holds and why.
//!
//! ```text
//! api  <-  testing  <-  policy, pki, verify  <-  state  <-  controller, webhook, publish, exchange
//!      <-  runtime  <-  check, inspect, status  <-  main
//! ```

use std::{collections::BTreeSet, path::Path};

const LAYERS: &[&[&str]] = &[
    &["api"],
    // The test kit (feature `testing`): builders of the API types and fake
    // API servers, below everything that tests with it.
    &["testing"],
    &["policy", "pki", "verify"],
    &["state"],
    &["controller", "webhook", "publish", "exchange"],
    &["runtime"],
    &["check", "inspect", "status"],
];

/// Imports within a layer that are part of the design: verification and the
/// policy's seals are built on the credential primitives.
const SIDEWAYS: &[(&str, &str)] = &[("verify", "pki"), ("policy", "pki")];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|ms| ms.contains(&module))
}

/// The production part of a source file: up to its `#[cfg(test)]` module,
/// without comment lines.
fn production(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") && lines.peek().is_some_and(|next| next.trim_start().starts_with("mod ")) {
            break;
        }
        if !t.starts_with("//") {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The top-level modules a source file names: `crate::x` paths, and the
/// first segment of each item of a `use crate::{...}` group.
fn imports(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect::<String>();
    let mut found = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let (mut depth, mut item) = (0, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(ident(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            found.insert(ident(item.trim()));
        } else {
            found.insert(ident(rest));
        }
    }
    found.retain(|m| !m.is_empty());
    found
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src readable") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// What goes up or sideways in the tree at `src`.
fn violations(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    sources(src, &mut files);
    files.sort();
    let mut bad = Vec::new();
    for path in files {
        let rel = path.strip_prefix(src).expect("under src");
        let first = rel.components().next().expect("a component").as_os_str().to_string_lossy().into_owned();
        let top = first.strip_suffix(".rs").unwrap_or(&first).to_string();
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(own) = layer(&top) else {
            bad.push(format!("{}: module `{top}` has no layer in tests/layers.rs", path.display()));
            continue;
        };
        let text = std::fs::read_to_string(&path).expect("source readable");
        for m in imports(&production(&text)) {
            if m == top || SIDEWAYS.contains(&(top.as_str(), m.as_str())) {
                continue;
            }
            match layer(&m) {
                Some(theirs) if theirs > own => {
                    bad.push(format!("{}: `{top}` imports `{m}`, a layer above", path.display()))
                }
                Some(theirs) if theirs == own => {
                    bad.push(format!("{}: `{top}` imports `{m}` in its own layer", path.display()))
                }
                _ => {}
            }
        }
    }
    bad
}

#[test]
fn no_module_imports_from_its_own_layer_or_above() {
    let bad = violations(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    assert!(bad.is_empty(), "imports against the layers (docs/design.md, \"Layers\"):\n{}", bad.join("\n"));
}

#[test]
fn the_check_finds_an_import_from_above_a_sideways_one_and_an_unplaced_module() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |path: &str, text: &str| {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    };
    write("api/mod.rs", "use crate::state::Shared;\n");
    write("state/mod.rs", "// crate::runtime in a comment is no import\nuse crate::{api::X, pki};\n");
    write(
        "controller/mod.rs",
        "use crate::{\n    api::{names::{A, B}, C},\n    webhook::pods,\n};\n#[cfg(test)]\nmod tests {\n    use crate::runtime::run;\n}\n",
    );
    write("gadget.rs", "use crate::api::X;\n");
    let bad = violations(dir.path());
    let has = |needle: &str| bad.iter().any(|b| b.contains(needle));
    assert!(has("`api` imports `state`, a layer above"), "{bad:?}");
    assert!(has("`controller` imports `webhook` in its own layer"), "{bad:?}");
    assert!(has("module `gadget` has no layer"), "{bad:?}");
    assert_eq!(bad.len(), 3, "comments, test modules and downward imports are not flagged: {bad:?}");
}
