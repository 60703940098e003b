//! Embeds the kernel probe built by `cargo xtask build-ebpf`, whose path xtask passes in
//! `TCPSTATE_BPF_OBJECT`.
//!
//! Without it, debug builds, `cargo test` and clippy (which must not need the BPF
//! toolchain) embed an empty object, and such a binary says how to build the real one.
//! A release build without it stops here instead: `cargo install --path tcpstate-user`
//! is, to a build script, the same build as `cargo build --release` (same profile,
//! same target dir, same fingerprint: cargo does not even rerun this script), so the
//! release profile is the only signal that it may ship, and a shipped binary that
//! only fails when run is what this prevents. `TCPSTATE_ALLOW_EMPTY_PROBE=1` allows
//! such a build on purpose; clippy (RUSTC_WORKSPACE_WRAPPER) never produces a binary.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=TCPSTATE_BPF_OBJECT");
    println!("cargo:rerun-if-env-changed=TCPSTATE_ALLOW_EMPTY_PROBE");
    println!("cargo:rerun-if-env-changed=RUSTC_WORKSPACE_WRAPPER");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let dest = out.join("tcpstate.bpf.o");
    match env::var_os("TCPSTATE_BPF_OBJECT") {
        Some(src) => {
            let src = PathBuf::from(src);
            println!("cargo:rerun-if-changed={}", src.display());
            fs::copy(&src, &dest).unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
        }
        None => {
            let release = env::var("PROFILE").is_ok_and(|p| p == "release");
            let allowed = env::var_os("TCPSTATE_ALLOW_EMPTY_PROBE").is_some_and(|v| v == "1");
            let lint_only = env::var_os("RUSTC_WORKSPACE_WRAPPER").is_some_and(|w| !w.is_empty());
            if release && !allowed && !lint_only {
                eprintln!(
                    "error: a release build of tcpstate needs the kernel probe, built with the BPF \
                     toolchain: use `cargo xtask build` (target/release/tcpstate) or `cargo xtask \
                     dist` (a .deb), not `cargo install` or `cargo build --release`. \
                     (TCPSTATE_ALLOW_EMPTY_PROBE=1 builds a binary without the probe, which \
                     cannot trace.)"
                );
                std::process::exit(1);
            }
            fs::write(&dest, b"").expect("writing the empty BPF object placeholder");
        }
    }
}
