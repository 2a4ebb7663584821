//! The library's layering, checked on the source: every module of `src/` may refer (outside
//! comments) only to modules of its own layer or of the layers below it, in the order of
//! `LAYERS`. The CLI (`src/main.rs`) sits on top and may use everything. A change that makes a
//! lower layer reach up (an env that takes the whole `Config`, a trainer that reaches into
//! evaluation) fails here with the file, the line and the two layers.

use std::path::Path;

/// Bottom to top. Modules on one line share a layer.
const LAYERS: &[&[&str]] = &[
    &["error", "rng", "atomic", "profile"],
    &["data"],
    &["features"],
    &["market"],
    &["priors"],
    &["costs"],
    &["reward"],
    &["env"],
    &["agents"],
    &["train"],
    &["sl"],
    &["config"],
    &["run"],
    &["eval"],
    &["ablate"],
    &["validate"],
    &["bench"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The top-level module a file of `src/` belongs to (`src/env/cpu.rs` -> `env`).
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

/// `crate::<name>` references on a line, comments stripped.
fn crate_refs(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or("");
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        let name: String = after
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(name);
        }
        rest = after;
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_module_refers_to_a_layer_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut checked = 0;
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let module = module_of(rel).unwrap();
        if module == "main" || module == "lib" {
            continue;
        }
        let own = layer_of(&module)
            .unwrap_or_else(|| panic!("src/{}: module `{module}` is in no layer", rel.display()));
        checked += 1;
        let text = std::fs::read_to_string(f).unwrap();
        let mut in_block_comment = false;
        for (i, line) in text.lines().enumerate() {
            // `/*! ... */` and `/* ... */` blocks are documentation, not code.
            if in_block_comment {
                in_block_comment = !line.contains("*/");
                continue;
            }
            if line.trim_start().starts_with("/*") {
                in_block_comment = !line.contains("*/");
                continue;
            }
            for name in crate_refs(line) {
                // Crate-root re-exports (`crate::Result`, `crate::Error`, ...) live in `error`.
                let target = match name.as_str() {
                    "Result" | "Error" | "ErrorKind" => "error",
                    "Config" => "config",
                    n => n,
                };
                if let Some(l) = layer_of(target)
                    && l > own
                {
                    violations.push(format!(
                        "src/{}:{}: `{module}` (layer {own}) refers to `crate::{name}` (layer {l})",
                        rel.display(),
                        i + 1
                    ));
                }
            }
        }
    }
    assert!(checked > 40, "only {checked} files checked");
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_checker_sees_a_reference_upward() {
    assert_eq!(
        crate_refs("use crate::config::Config; // crate::eval"),
        ["config"]
    );
    assert_eq!(
        crate_refs("/// see [`crate::eval::X`]"),
        Vec::<String>::new()
    );
    assert!(layer_of("env") < layer_of("config"));
}
