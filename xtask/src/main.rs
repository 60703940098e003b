//! xtask (host side, developer tooling): builds the kernel probe with the BPF
//! toolchain, installing that toolchain when it is missing, then builds, runs and
//! tests tcpstate.
//!
//! `cargo xtask run [-- ARGS]`, `cargo xtask test`, `cargo xtask build [--debug]`,
//! `cargo xtask build-ebpf`, `cargo xtask setup`, `cargo xtask bench`,
//! `cargo xtask dist`, `cargo xtask test-dist`.

use std::{
    collections::BTreeMap,
    env,
    ffi::OsString,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

mod bench;
mod cpio;
mod dist;
mod matrix;

/// Debian packages that provide a rustc whose LLVM matches bpf-linker's, with a
/// prebuilt `core` for bpfel-unknown-none (rustup's nightly has no rust-src here).
const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
];
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const BPF_CORE: &str = "/usr/lib/rustlib/bpfel-unknown-none/lib";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_TARGET: &str = "bpfel-unknown-none";

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: cargo xtask <command>\n\
         \n  run [--debug] [-- ARGS]  build everything and run `tcpstate ARGS` (root needed)\
         \n  test [--kernels LIST]    install what is missing, build, run every test here and on\
         \n                           each kernel of the QEMU matrix (LIST: all, host, 6.1,\
         \n                           6.12, newest; default all) (root needed)\
         \n  build [--debug]          build the probe and the tcpstate binary\
         \n  build-ebpf               build only the kernel probe\
         \n  setup                    install the BPF toolchain and bpf-linker if missing\
         \n  dist                     target/dist/tcpstate_<version>_<arch>.deb and its .tar.gz\
         \n  test-dist                build them; check their files, man pages, deploy/ (root)\
         \n  bench [--rounds N] [--secs S] [--tax-secs S] [--scale [N]] [--tcpstate PATH]\
         \n        [--compare PATH] [--calib-object PATH] [--json] [--profile] [--rates LIST|none]\
         \n        [--soak D [--serve]]\
         \n                           overhead on a loopback churn, side by side (root needed)"
    );
    std::process::exit(2)
}

fn run() -> Result<ExitCode> {
    let mut args = env::args_os().skip(1);
    let cmd = args.next().and_then(|a| a.into_string().ok());
    let rest: Vec<OsString> = args.collect();
    let root = workspace_root()?;
    env::set_current_dir(&root)?;
    match cmd.as_deref() {
        Some("setup") => {
            setup()?;
            Ok(ExitCode::SUCCESS)
        }
        Some("build-ebpf") => {
            let obj = build_ebpf()?;
            println!("{}", obj.display());
            Ok(ExitCode::SUCCESS)
        }
        Some("build") => {
            let release = !rest.iter().any(|a| a == "--debug");
            let bin = build_user(release)?;
            println!("{}", bin.display());
            Ok(ExitCode::SUCCESS)
        }
        Some("run") => {
            let (flags, tool_args) = split_dashdash(&rest);
            let release = !flags.iter().any(|a| a == "--debug");
            let bin = build_user(release)?;
            exec_tool(&bin, tool_args)
        }
        Some("test") => test(&rest),
        Some("dist") => dist::dist().map(|_| ExitCode::SUCCESS),
        Some("test-dist") => dist::test_dist().map(|_| ExitCode::SUCCESS),
        Some("bench") => {
            if !is_root() {
                bail!("the benchmark loads BPF programs: run it as root");
            }
            let (_, calib) = build_ebpf_all()?;
            ensure_tmux()?;
            let bin = build_user(true)?;
            let mut cmd = host_cargo();
            cmd.args([
                "build",
                "--quiet",
                "--release",
                "--package",
                "tcpstate-testkit",
                "--bin",
                "tcpkit",
            ]);
            let tcpkit = cargo_artifact(&mut cmd, "tcpstate-testkit", "tcpkit")?;
            let rest: Vec<String> = rest
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            bench::bench(&bin, &tcpkit, calib.as_deref(), &rest)?;
            Ok(ExitCode::SUCCESS)
        }
        _ => usage(),
    }
}

fn split_dashdash(args: &[OsString]) -> (&[OsString], &[OsString]) {
    match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[]),
    }
}

fn workspace_root() -> Result<PathBuf> {
    let dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("run me with `cargo xtask`")?);
    Ok(dir
        .parent()
        .context("xtask lives in the workspace")?
        .to_path_buf())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

pub(crate) fn status(cmd: &mut Command, what: &str) -> Result<()> {
    let st = cmd
        .status()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    if !st.success() {
        bail!("{what} failed ({st})");
    }
    Ok(())
}

/// tmux, for `tcpstate top` on a real terminal: tests/top.rs (here and in every guest
/// of the matrix) and the bench's `--scale` row.
fn ensure_tmux() -> Result<()> {
    if !Path::new("/usr/bin/tmux").exists() {
        eprintln!(
            "xtask: installing Debian's tmux to run `tcpstate top` in a terminal (first run only)"
        );
        apt_install(&["tmux"])?;
    }
    Ok(())
}

/// `apt-get update`, then installs `packages` (as root).
pub(crate) fn apt_install(packages: &[&str]) -> Result<()> {
    status(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update",
    )?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )
}

/// Installs the Debian BPF toolchain and bpf-linker when they are missing.
fn setup() -> Result<PathBuf> {
    if !(Path::new(DEBIAN_RUSTC).exists()
        && Path::new(DEBIAN_CARGO).exists()
        && Path::new(BPF_CORE).is_dir()
        && Path::new(LLVM_PREFIX).join("bin/llvm-config").exists())
    {
        if !is_root() {
            bail!(
                "the BPF toolchain is missing; install it as root with: apt-get install -y {}",
                APT_PACKAGES.join(" ")
            );
        }
        eprintln!(
            "xtask: installing the BPF toolchain from Debian (first run only): {}",
            APT_PACKAGES.join(" ")
        );
        apt_install(APT_PACKAGES)?;
    }
    let linker = cargo_home().join("bin/bpf-linker");
    let ok = Command::new(&linker)
        .arg("--version")
        .output()
        .map(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
        .unwrap_or(false);
    if !ok {
        eprintln!(
            "xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (first run only, about 2 minutes)"
        );
        let path = format!("{LLVM_PREFIX}/bin:{}", env::var("PATH").unwrap_or_default());
        status(
            Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                .args([
                    "install",
                    "bpf-linker",
                    "--version",
                    BPF_LINKER_VERSION,
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("PATH", path)
                .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX),
            "cargo install bpf-linker",
        )?;
    }
    Ok(linker)
}

/// Reads cargo's `--message-format=json` output for the executable of `bin` built
/// from `package`, instead of guessing paths under target/.
fn cargo_artifact(cmd: &mut Command, package: &str, bin: &str) -> Result<PathBuf> {
    cargo_artifacts(cmd, package, &[bin])?
        .remove(0)
        .with_context(|| format!("cargo reported no executable for {package}/{bin}"))
}

/// The executables of several bins of `package` from one cargo invocation (None for
/// a bin the package does not have).
fn cargo_artifacts(
    cmd: &mut Command,
    package: &str,
    bins: &[&str],
) -> Result<Vec<Option<PathBuf>>> {
    cmd.arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().context("starting cargo")?;
    let mut found = vec![None; bins.len()];
    for line in BufReader::new(child.stdout.take().context("cargo stdout")?).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let Some(i) = bins.iter().position(|b| msg["target"]["name"] == *b) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["package_id"].as_str().is_some_and(|id| {
                id.contains(&format!("/{package}#")) || id.contains(&format!("{package} "))
            })
        {
            if let Some(exe) = msg["executable"].as_str() {
                found[i] = Some(PathBuf::from(exe));
            }
        }
    }
    let st = child.wait()?;
    if !st.success() {
        bail!("cargo build of {package} failed ({st})");
    }
    Ok(found)
}

/// Builds the kernel probe with Debian's rustc (whose LLVM matches bpf-linker's).
fn build_ebpf() -> Result<PathBuf> {
    Ok(build_ebpf_all()?.0)
}

/// Every bin of the ebpf crate in one cargo run: the probe, and the bench's
/// calibration programs (`calib`; None while the crate has no such binary).
fn build_ebpf_all() -> Result<(PathBuf, Option<PathBuf>)> {
    let linker = setup()?;
    let path = format!(
        "{}:{}",
        linker.parent().context("bpf-linker dir")?.display(),
        env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(DEBIAN_CARGO);
    cmd.args([
        "build",
        "--quiet",
        "--package",
        "tcpstate-ebpf",
        "--release",
        "--target",
        BPF_TARGET,
    ])
    .env("RUSTC", DEBIAN_RUSTC)
    .env("RUSTC_BOOTSTRAP", "1")
    .env("PATH", path)
    .env_remove("RUSTC_WRAPPER")
    .env_remove("RUSTC_WORKSPACE_WRAPPER")
    .env_remove("RUSTFLAGS")
    .env_remove("CARGO_ENCODED_RUSTFLAGS");
    let mut found = cargo_artifacts(&mut cmd, "tcpstate-ebpf", &["tcpstate", "calib"])?;
    let calib = found.pop().flatten();
    let probe = found
        .pop()
        .flatten()
        .context("cargo reported no executable for tcpstate-ebpf/tcpstate")?;
    Ok((probe, calib))
}

fn host_cargo() -> Command {
    Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Builds `tcpstate` with the probe embedded; returns the binary's path.
fn build_user(release: bool) -> Result<PathBuf> {
    let obj = build_ebpf()?;
    let mut cmd = host_cargo();
    cmd.args([
        "build",
        "--quiet",
        "--package",
        "tcpstate-user",
        "--bin",
        "tcpstate",
    ])
    .env("TCPSTATE_BPF_OBJECT", &obj);
    if release {
        cmd.arg("--release");
    }
    cargo_artifact(&mut cmd, "tcpstate-user", "tcpstate")
}

fn exec_tool(bin: &Path, args: &[OsString]) -> Result<ExitCode> {
    let mut cmd = if is_root() {
        Command::new(bin)
    } else {
        eprintln!("xtask: tcpstate needs root (or CAP_BPF and CAP_PERFMON): running it with sudo");
        let mut c = Command::new("sudo");
        c.arg(bin);
        c
    };
    cmd.args(args);
    // Let Ctrl-C reach tcpstate (same process group) while we wait for its summary.
    let st = cmd.status().context("starting tcpstate")?;
    Ok(ExitCode::from(st.code().unwrap_or(1).clamp(0, 255) as u8))
}

/// Every test: formatting, lints, unit tests, the privileged kernel tests on this
/// machine's kernel, then the kernel matrix in QEMU (`--kernels LIST`: `host`, the
/// ids of `matrix::KERNELS`, or `all`, the default).
fn test(args: &[OsString]) -> Result<ExitCode> {
    let mut kernels = "all".to_string();
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = it.next() {
        match a.as_str() {
            "--kernels" => kernels = it.next().context("--kernels needs a list")?,
            _ => match a.strip_prefix("--kernels=") {
                Some(v) => kernels = v.to_string(),
                None => bail!("test: unknown argument {a:?} (takes --kernels LIST)"),
            },
        }
    }
    let kernels = matrix::parse_kernels(&kernels)?;
    if !is_root() {
        bail!("the kernel tests load BPF programs: run `sudo cargo xtask test` (or as root)");
    }
    let started = Instant::now();
    let obj = build_ebpf()?;
    // tests/serve.rs scrapes `tcpstate serve` with a real Prometheus and promtool.
    if !Path::new("/usr/bin/promtool").exists() {
        eprintln!("xtask: installing Debian's prometheus (with promtool) for the serve tests (first run only)");
        apt_install(&["prometheus"])?;
    }
    ensure_tmux()?;
    let guests: Vec<&'static matrix::Kernel> =
        kernels.iter().filter_map(|k| matrix::kernel(k)).collect();
    if !guests.is_empty() {
        matrix::ensure_tools(&workspace_root()?)?;
    }
    eprintln!("xtask: checking formatting and lints");
    status(
        host_cargo().args(["fmt", "--all", "--check"]),
        "cargo fmt --check",
    )?;
    status(
        host_cargo()
            .args([
                "clippy",
                "--quiet",
                "--workspace",
                "--release",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])
            .env("TCPSTATE_BPF_OBJECT", &obj),
        "cargo clippy",
    )?;
    let bin = build_user(true)?;
    let mut outcomes = Vec::new();
    if kernels.iter().any(|k| k == "host") {
        outcomes.push(host_tests(&obj, &bin)?);
    }
    if !guests.is_empty() {
        let (tests, tcpkit) = test_binaries(&obj, &bin)?;
        let root = workspace_root()?;
        let guest = matrix::build_guest(&root, &bin, &tcpkit, &tests)?;
        for k in guests {
            outcomes.push(matrix::run_kernel(&root, k, &guest));
        }
    }
    eprintln!("{}", matrix::report(&outcomes));
    eprintln!("xtask: test took {:.0} s", started.elapsed().as_secs_f64());
    if !outcomes.iter().all(matrix::Outcome::ok) {
        bail!("tests failed (see the kernel matrix above)");
    }
    Ok(ExitCode::SUCCESS)
}

/// Unit tests and every kernel test on this machine's kernel.
fn host_tests(obj: &Path, bin: &Path) -> Result<matrix::Outcome> {
    let started = Instant::now();
    eprintln!("xtask: running unit and kernel tests");
    let mut child = host_cargo()
        .args([
            "test",
            "--release",
            "--workspace",
            "--exclude",
            "tcpstate-ebpf",
            // Every test binary runs, so one failure does not hide the others.
            "--no-fail-fast",
        ])
        .env("TCPSTATE_BPF_OBJECT", obj)
        .env("TCPSTATE_BIN", bin)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    // Echo the output and add up every test binary's counts, so the run ends with one
    // total rather than the last binary's (often a doc-test run of 0).
    let mut o = matrix::Outcome::new("host");
    o.release = kernel_release();
    o.package = "(this machine)".into();
    o.features = matrix::host_features(bin);
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().context("cargo test stdout")?).lines() {
        let line = line?;
        println!("{line}");
        if let Some((name, "FAILED")) = matrix::test_line(&line) {
            o.failed.push(name.to_string());
        }
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .strip_suffix(word)?
                            .trim()
                            .rsplit(' ')
                            .next()?
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            passed += count("passed");
            failed += count("failed");
        }
    }
    let st = child.wait()?;
    println!("tests: {passed} passed, {failed} failed");
    o.passed = passed as usize;
    o.secs = started.elapsed().as_secs_f64();
    if !st.success() && o.failed.is_empty() {
        o.error = Some(format!("cargo test failed ({st})"));
    }
    Ok(o)
}

/// The kernel tests' executables by name (`tests/NAME.rs`) and tcpkit's, built as
/// `host_tests` builds them.
fn test_binaries(obj: &Path, bin: &Path) -> Result<(BTreeMap<String, PathBuf>, PathBuf)> {
    let mut cmd = host_cargo();
    cmd.args([
        "test",
        "--quiet",
        "--release",
        "--package",
        "tcpstate-testkit",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ])
    .env("TCPSTATE_BPF_OBJECT", obj)
    .env("TCPSTATE_BIN", bin)
    .stdout(Stdio::piped());
    let mut child = cmd.spawn().context("starting cargo test --no-run")?;
    let mut tests = BTreeMap::new();
    let mut tcpkit = None;
    for line in BufReader::new(child.stdout.take().context("cargo stdout")?).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line?) else {
            continue;
        };
        let (Some(name), Some(exe)) = (msg["target"]["name"].as_str(), msg["executable"].as_str())
        else {
            continue;
        };
        let kinds = msg["target"]["kind"].to_string();
        if kinds.contains("\"test\"") {
            tests.insert(name.to_string(), PathBuf::from(exe));
        } else if name == "tcpkit" && msg["profile"]["test"] == false {
            // The binary the tests run (CARGO_BIN_EXE_tcpkit), not its unit tests.
            tcpkit = Some(PathBuf::from(exe));
        }
    }
    if !child.wait()?.success() {
        bail!("building the kernel tests failed");
    }
    Ok((
        tests,
        tcpkit.context("cargo reported no tcpkit executable")?,
    ))
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
