//! The names the loader looks up (`tcpstate_common::names`) against the probe: every
//! map, global and program must exist, so a renamed or forgotten one fails here, not
//! at load on a user's machine. (`#[map(name = ...)]` takes only a literal, so the
//! probe cannot use the constants itself.)
//!
//! Two checks. The source check always runs: plain `cargo test` at the root needs no
//! BPF toolchain (see the workspace's default-members), and it still compares the
//! names with the probe's source. The object check parses the object that
//! `cargo xtask test` built and passes in `TCPSTATE_BPF_OBJECT`. Without that variable
//! it fails whenever xtask or CI is running the tests (`TCPSTATE_BIN` or `CI` set), so
//! it cannot pass there without checking anything; in a plain `cargo test` on a
//! developer's machine, which has no object to check, it says so and passes.

use std::{fs, path::Path};

use aya_obj::Object;
use object::{Object as _, ObjectSection as _, ObjectSymbol as _};
use tcpstate_common::names;

/// Every `.rs` file of the probe crate, concatenated.
fn probe_source() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tcpstate-ebpf/src");
    let mut src = String::new();
    let mut dirs = vec![dir];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                src.push_str(&fs::read_to_string(&p).unwrap());
                src.push('\n');
            }
        }
    }
    src
}

/// The names in `#[map(name = "...")]` attributes.
fn source_maps(src: &str) -> Vec<&str> {
    // Legacy maps (`#[map]`) and BTF maps (a `.maps` static named by export_name).
    src.match_indices("#[map(name = \"")
        .chain(src.match_indices("#[unsafe(export_name = \""))
        .map(|(i, m)| {
            let rest = &src[i + m.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect()
}

#[test]
fn probe_source_defines_every_name() {
    let src = probe_source();
    assert!(src.len() > 1000, "the probe's source was not found");
    let defined = source_maps(&src);
    let listed: Vec<&str> = names::MAPS
        .iter()
        .chain(names::CALIB_MAPS)
        .copied()
        .collect();
    for m in &listed {
        assert!(
            defined.contains(m),
            "map {m} is in names but not in the probe"
        );
    }
    for m in &defined {
        assert!(
            listed.contains(m),
            "map {m} is in the probe but not in names::MAPS"
        );
    }
    for p in names::PROGRAMS.iter().chain(names::CALIB_PROGRAMS) {
        assert!(
            src.contains(&format!("pub fn {p}(")),
            "program {p} is in names but not in the probe"
        );
    }
    for g in names::GLOBALS {
        assert!(
            src.contains(&format!("static {g}:")),
            "global {g} is in names but not in the probe"
        );
    }
}

#[test]
fn probe_object_has_every_name() {
    let Some(path) = std::env::var_os("TCPSTATE_BPF_OBJECT") else {
        let asked = ["TCPSTATE_BIN", "CI"]
            .into_iter()
            .find(|v| std::env::var_os(v).is_some());
        if let Some(v) = asked {
            panic!(
                "TCPSTATE_BPF_OBJECT is not set although {v} is: the BPF object was not \
                 passed to the tests; run `cargo xtask test`"
            );
        }
        eprintln!(
            "probe_object_has_every_name: no BPF object to check (TCPSTATE_BPF_OBJECT unset); \
             only the source was checked. Run `cargo xtask test` to check the built object."
        );
        return;
    };
    let path = Path::new(&path);
    let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        data.len() > 4096 && data.starts_with(b"\x7fELF"),
        "{} is not a built probe ({} bytes): run `cargo xtask test`",
        path.display(),
        data.len()
    );
    let obj = Object::parse(&data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        !obj.programs.is_empty() && !obj.functions.is_empty(),
        "no programs in the object"
    );
    for m in names::MAPS.iter().chain(names::LOG_MAPS) {
        assert!(
            obj.maps.contains_key(*m),
            "map {m} is not in {}",
            path.display()
        );
    }
    for p in names::PROGRAMS {
        assert!(
            obj.programs.contains_key(*p),
            "program {p} is not in {}",
            path.display()
        );
    }
    // Globals are symbols in the object's read-only data (aya sets them by name).
    let elf = object::File::parse(&*data).unwrap();
    for g in names::GLOBALS.iter().chain(names::LOG_GLOBALS) {
        let sym = elf
            .symbol_by_name(g)
            .unwrap_or_else(|| panic!("global {g} is not in {}", path.display()));
        let section = sym
            .section_index()
            .and_then(|i| elf.section_by_index(i).ok());
        assert_eq!(
            section.and_then(|s| s.name().ok()),
            Some(".rodata"),
            "global {g} is not read-only data"
        );
    }
    // And nothing the loader would not know about (data sections aside).
    for m in obj.maps.keys().filter(|m| !m.starts_with('.')) {
        assert!(
            names::MAPS.contains(&m.as_str()) || names::LOG_MAPS.contains(&m.as_str()),
            "map {m} is not in names::MAPS"
        );
    }
    for p in obj.programs.keys() {
        assert!(
            names::PROGRAMS.contains(&p.as_str()),
            "program {p} is not in names::PROGRAMS"
        );
    }
}
