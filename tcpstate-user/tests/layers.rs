//! The userspace crate's layers depend only downwards: probe < model < render < cli <
//! cmd < main. Each file's `crate::X` paths (in `use` lines, `use crate::{..}` blocks
//! and inline paths, test code included) are checked against its own layer, and
//! clap stays in cli.rs and main.rs. A source check, so it needs no privileges.

use std::{fs, path::Path};

const LAYERS: [&str; 6] = ["probe", "model", "render", "cli", "cmd", "main"];

fn rank(layer: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == layer)
}

/// The first-level module names a source file reaches with `crate::`.
fn crate_paths(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(block) = rest.strip_prefix('{') {
            // `crate::{a::b, c, d::{e, f}}`: the names at depth 1.
            let (mut depth, mut item_start) = (1, true);
            for (j, ch) in block.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            rest = &block[j..];
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if item_start && depth == 1 && (c.is_ascii_alphabetic() || c == '_') => {
                        let name: String = block[j..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        out.push(name);
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).expect("reading the source tree") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn layers_depend_only_downwards() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 10, "found only {} source files", files.len());
    let mut bad = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel.iter().next().unwrap().to_string_lossy();
        let layer = top.trim_end_matches(".rs");
        let Some(me) = rank(layer) else {
            bad.push(format!("{}: not in a layer ({LAYERS:?})", rel.display()));
            continue;
        };
        let text = fs::read_to_string(f).unwrap();
        for used in crate_paths(&text) {
            match rank(&used) {
                Some(r) if r <= me => {}
                Some(_) => bad.push(format!("{}: {layer} uses crate::{used}", rel.display())),
                None => bad.push(format!("{}: crate::{used} is no layer", rel.display())),
            }
        }
        if !matches!(layer, "cli" | "main") && text.contains("clap") {
            bad.push(format!("{}: names clap outside cli/main", rel.display()));
        }
    }
    assert!(bad.is_empty(), "layering violations:\n{}", bad.join("\n"));
}

#[test]
fn the_path_parser_sees_blocks_and_inline_paths() {
    let src = "use crate::{\n    model::{a, b},\n    render::x,\n};\nfn f() { crate::probe::g(); }";
    assert_eq!(crate_paths(src), ["model", "render", "probe"]);
    // A planted upward use is found.
    assert_eq!(crate_paths("use crate::cmd::session;"), ["cmd"]);
}
