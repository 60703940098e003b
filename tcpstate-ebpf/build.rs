//! Host-side build script of the kernel probe: BTF in the object, which the
//! socket-local storage map's BTF definition (`maps::SOCKS`) needs. A build script
//! rather than a config-file rustflag so that it applies however cargo is invoked
//! (xtask clears RUSTFLAGS), and only to the BPF target.
fn main() {
    if std::env::var("TARGET").is_ok_and(|t| t.starts_with("bpf")) {
        println!("cargo:rustc-link-arg=--btf");
    }
}
