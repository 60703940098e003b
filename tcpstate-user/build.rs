//! Embeds the kernel probe built by `cargo xtask build-ebpf`, whose path xtask passes in
//! `TCPSTATE_BPF_OBJECT`. Without it (plain `cargo build`/`clippy`, which must not need
//! the BPF toolchain) an empty object is embedded and the binary says how to build it.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=TCPSTATE_BPF_OBJECT");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let dest = out.join("tcpstate.bpf.o");
    match env::var_os("TCPSTATE_BPF_OBJECT") {
        Some(src) => {
            let src = PathBuf::from(src);
            println!("cargo:rerun-if-changed={}", src.display());
            fs::copy(&src, &dest).unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
        }
        None => fs::write(&dest, b"").expect("writing the empty BPF object placeholder"),
    }
}
