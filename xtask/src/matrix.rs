//! The kernel matrix: `cargo xtask test` runs the privileged kernel tests on the
//! machine's own kernel and, in QEMU, on each Debian kernel of [`KERNELS`], and fails
//! if any test fails on any of them.
//!
//! - Kernels come from Debian's registry (`apt-get download` of the flavour's
//!   meta-package's image, with a private apt state under `target/kernels/apt/`, so
//!   the machine's own sources do not matter), cached under `target/kernels/ID/`.
//! - The guest is an initramfs (`target/kernels/guest.cpio`): busybox, `ip` and
//!   `ss` with their libraries, `tcpstate`, `tcpkit` (at the path the tests were
//!   built with) and the test binaries, and an `/init` that mounts what the tests
//!   need (proc, sys, devtmpfs, tmpfs, cgroup2), brings up `lo`, runs
//!   [`GUEST_TESTS`] and powers off. Networking is loopback only.
//! - QEMU runs under TCG (nested KVM dies with "KVM internal error" on this kind of
//!   machine), 2 vCPUs, its serial console on stdout, which is parsed for libtest's
//!   per-test lines. TCG is ~5-10x slower than the host: timings there mean nothing,
//!   only behaviour does.

use std::{
    collections::BTreeMap,
    env, fs,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::cpio::Cpio;

/// A kernel of the matrix, fetched from Debian's registry.
pub struct Kernel {
    /// What `--kernels` calls it.
    pub id: &'static str,
    /// Where it comes from, for the report.
    pub what: &'static str,
    /// The flavour's meta-package; its image dependency is the kernel booted.
    pub meta: &'static str,
    /// apt `sources.list` lines of its suites.
    pub sources: &'static [&'static str],
}

const BOOKWORM: &[&str] = &[
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
];

pub const KERNELS: &[Kernel] = &[
    Kernel {
        id: "6.1",
        what: "Debian 12 bookworm",
        meta: "linux-image-cloud-amd64",
        sources: BOOKWORM,
    },
    Kernel {
        id: "6.12",
        what: "Debian 12 bookworm (6.12)",
        meta: "linux-image-6.12-cloud-amd64",
        sources: BOOKWORM,
    },
    Kernel {
        id: "newest",
        what: "Debian 13 trixie-backports",
        meta: "linux-image-cloud-amd64",
        sources: &["deb http://deb.debian.org/debian trixie-backports main"],
    },
];

/// What `--kernels` takes: `host` (the machine's own kernel, every test) and the
/// ids of [`KERNELS`].
pub fn parse_kernels(list: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for k in list.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        if k == "all" {
            out.push("host".to_string());
            out.extend(KERNELS.iter().map(|k| k.id.to_string()));
        } else if k == "host" || KERNELS.iter().any(|x| x.id == k) {
            out.push(k.to_string());
        } else {
            bail!(
                "--kernels: unknown kernel {k:?} (known: all, host, {})",
                KERNELS.iter().map(|k| k.id).collect::<Vec<_>>().join(", ")
            );
        }
    }
    out.dedup();
    if out.is_empty() {
        bail!("--kernels: no kernel named");
    }
    Ok(out)
}

/// The tests each guest kernel runs, by test binary: together they exercise every
/// program (both `inet_sock_set_state` programs, `tw_timer_expire`, `tw_timer_cancel`,
/// `task_sockets`,
/// both seed routes), every map, and each kernel-version branch (kernel BTF mapped
/// or read; LISTEN -> SYN_RECV deferred before 6.15 or not), IPv4 and IPv6, in
/// namespaces, and each command (`trace`, `linger`, `hist`, `serve`, `doctor`, `top`). The
/// host runs every test.
pub const GUEST_TESTS: &[(&str, &[&str])] = &[
    (
        "trace",
        &[
            "exact_ten_per_connection_ipv4",
            "exact_ten_per_connection_ipv6",
            "server_closes_first_ipv6",
            "reset_ipv4",
            "churn_is_exact_and_nothing_is_lost",
            "filters_state_family_and_pid",
            "late_accept_shows_close_wait_owned_by_the_listener_ipv4",
            "late_accept_shows_close_wait_owned_by_the_listener_ipv6",
            "prefork_child_owns_what_it_closes_ipv4",
            "bad_values_exit_2_with_one_line",
        ],
    ),
    ("seed", &[]),
    (
        "linger",
        &[
            "holder_not_peer_ipv4_started_before",
            "holder_not_peer_ipv6_started_after",
            "reads_nothing_real_age_and_fd_headroom_ipv4",
            "never_accepted_in_a_network_namespace",
            "reset_connection_still_held_shows_under_state_close",
        ],
    ),
    (
        "hist",
        &[
            "counts_equal_transitions_under_churn",
            "time_wait_lifetimes_per_closing_process",
            "time_wait_ended_by_reuse",
        ],
    ),
    (
        "containers",
        &[
            "linger_netns_before_ipv6",
            "same_port_two_namespaces",
            "hist_gauge_counts_other_namespaces",
            "hist_gauge_drops_time_waits_of_an_exited_namespace",
            "namespace_kept_alive_by_sockets_alone",
        ],
    ),
    ("serve", &["scrape_answers_with_every_family"]),
    (
        "doctor",
        &[
            "stopped_reading_and_never_accepted_in_a_namespace",
            "quiet_namespace_exits_0",
            "listen_queue_full_host_ipv4",
            "listen_queue_full_in_a_namespace",
        ],
    ),
    ("pipe", &["trace_head_exits_without_further_traffic"]),
    (
        "top",
        &["leaking_process_first_ipv4", "leaking_process_first_ipv6"],
    ),
];

/// Programs the guest needs besides busybox, (guest path, host path): the tests run
/// `ip`, `ss` and `sh`. The shell is the host's dash: busybox's runs its own applets
/// before any program on PATH (`exec ip ...` would run busybox's `ip`).
const GUEST_COMMANDS: &[(&str, &str)] = &[
    ("/usr/bin/ip", "/usr/bin/ip"),
    ("/usr/bin/ss", "/usr/bin/ss"),
    // tests/top.rs runs `tcpstate top` in a tmux pane.
    ("/usr/bin/tmux", "/usr/bin/tmux"),
    ("/bin/sh", "/usr/bin/dash"),
];
const BUSYBOX: &str = "/bin/busybox";
/// Data files (or directories of them) copied as they are: tmux refuses to start
/// without a UTF-8 locale (glibc's C.UTF-8 is a file, not built in) and looks up
/// its panes' terminal, `screen`.
const GUEST_DATA: &[&str] = &["/usr/lib/locale/C.utf8", "/lib/terminfo/s/screen"];

/// How long one guest may take before it is killed.
const GUEST_TIMEOUT: Duration = Duration::from_secs(25 * 60);

/// One kernel's outcome.
pub struct Outcome {
    pub id: String,
    pub release: String,
    pub package: String,
    /// tcpstate's own line on what this kernel gave it (`kernel features: ...`).
    pub features: String,
    pub passed: usize,
    /// Failed tests (`binary::test` in a guest).
    pub failed: Vec<String>,
    /// Why the run as a whole failed (no boot, a crash, a timeout), if it did.
    pub error: Option<String>,
    pub secs: f64,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.passed > 0 && self.failed.is_empty()
    }

    pub fn new(id: &str) -> Outcome {
        Outcome {
            id: id.to_string(),
            release: String::new(),
            package: String::new(),
            features: String::new(),
            passed: 0,
            failed: Vec::new(),
            error: None,
            secs: 0.0,
        }
    }
}

fn kernels_dir(root: &Path) -> PathBuf {
    root.join("target/kernels")
}

fn run_quiet(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The kernel image of `k`, fetched and extracted once (then cached).
fn fetch(root: &Path, k: &Kernel) -> Result<(PathBuf, String)> {
    let dir = kernels_dir(root).join(k.id);
    let image = dir.join("vmlinuz");
    let pkg_file = dir.join("package");
    if image.exists() && dir.join("modules").is_dir() {
        if let Ok(pkg) = fs::read_to_string(&pkg_file) {
            return Ok((image, pkg.trim().to_string()));
        }
    }
    fs::create_dir_all(&dir)?;
    let apt = kernels_dir(root).join("apt").join(k.id);
    for d in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(apt.join(d))?;
    }
    let sources = apt.join("sources.list");
    let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
    let lines: Vec<String> = k
        .sources
        .iter()
        .map(|l| l.replacen("deb ", &format!("deb [signed-by={keyring}] "), 1))
        .collect();
    fs::write(&sources, lines.join("\n") + "\n")?;
    let opts = |c: &mut Command| {
        c.arg("-o")
            .arg(format!("Dir::Etc::SourceList={}", sources.display()))
            .args(["-o", "Dir::Etc::SourceParts=/dev/null"])
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", apt.join("lists").display()))
            .arg("-o")
            .arg(format!("Dir::Cache={}", apt.join("cache").display()))
            .args([
                "-o",
                "APT::Architectures=amd64",
                "-o",
                "Debug::NoLocking=1",
                "-o",
                "APT::Sandbox::User=root",
            ]);
    };
    eprintln!(
        "xtask: fetching kernel {} ({}: {}) from Debian's registry (first run only)",
        k.id, k.what, k.meta
    );
    let mut c = Command::new("apt-get");
    opts(&mut c);
    run_quiet(c.args(["-qq", "update"]), "apt-get update (kernel matrix)")?;
    let mut c = Command::new("apt-cache");
    opts(&mut c);
    let deps = run_quiet(c.args(["depends", k.meta]), "apt-cache depends")?;
    let pkg = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|d| d.starts_with("linux-image-"))
        .with_context(|| format!("{}: no linux-image dependency in {deps:?}", k.meta))?
        .trim()
        .to_string();
    let x = dir.join("x");
    let _ = fs::remove_dir_all(&x);
    let download = |name: &str| -> Result<PathBuf> {
        let mut c = Command::new("apt-get");
        opts(&mut c);
        run_quiet(
            c.current_dir(&dir).args(["-qq", "download", name]),
            "apt-get download",
        )?;
        let deb = fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.extension().is_some_and(|e| e == "deb")
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}_")))
            })
            .with_context(|| format!("no .deb of {name} downloaded"))?;
        run_quiet(
            Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x),
            "dpkg-deb -x",
        )?;
        Ok(deb)
    };
    let deb = download(&pkg)?;
    // Since 7.x the image package holds no image: it depends on linux-binary-ABI
    // (vmlinuz) and linux-modules-ABI.
    let depends = run_quiet(
        Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Depends"),
        "dpkg-deb -f",
    )?;
    let mut debs = vec![deb.clone()];
    for d in depends.split(',') {
        let name = d.split_whitespace().next().unwrap_or_default();
        if name.starts_with("linux-binary-") || name.starts_with("linux-modules-") {
            debs.push(download(name)?);
        }
    }
    let boot = find_file(&x, &|n| n.starts_with("vmlinuz-") || n == "vmlinuz")
        .with_context(|| format!("{pkg} and its linux-binary/linux-modules have no vmlinuz"))?;
    fs::copy(&boot, &image)?;
    // The modules the tests need that Debian builds as modules (sock_diag's inet
    // handlers: `ss`, and tcpstate's listings in each namespace). A real system loads
    // them on first use (request_module -> modprobe); the guest has no modprobe, so
    // its init loads them, in this order.
    let mods = dir.join("modules");
    let _ = fs::remove_dir_all(&mods);
    fs::create_dir_all(&mods)?;
    for (i, name) in GUEST_MODULES.iter().enumerate() {
        let found = find_module(&x, name).with_context(|| format!("{pkg} has no module {name}"))?;
        let data = decompressed(&found)?;
        fs::write(mods.join(format!("{i:02}-{name}.ko")), data)?;
    }
    let version = deb
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let _ = fs::remove_dir_all(&x);
    for d in debs {
        let _ = fs::remove_file(&d);
    }
    fs::write(&pkg_file, &version)?;
    Ok((image, version))
}

/// Modules loaded in the guest before the tests (where the flavour builds them as
/// modules; `CONFIG_INET_DIAG=m` and `CONFIG_INET_TCP_DIAG=m` on Debian's).
const GUEST_MODULES: &[&str] = &["inet_diag", "tcp_diag"];

/// `NAME.ko`, `.ko.xz` or `.ko.zst` under `dir`.
fn find_module(dir: &Path, name: &str) -> Option<PathBuf> {
    find_file(dir, &|f| {
        [".ko", ".ko.xz", ".ko.zst"]
            .iter()
            .any(|ext| f.strip_suffix(ext) == Some(name))
    })
}

/// The first file under `dir` (depth first) whose name `matches`.
fn find_file(dir: &Path, matches: &dyn Fn(&str) -> bool) -> Option<PathBuf> {
    for e in fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() && !p.is_symlink() {
            if let Some(f) = find_file(&p, matches) {
                return Some(f);
            }
        } else if p.file_name().and_then(|f| f.to_str()).is_some_and(matches) {
            return Some(p);
        }
    }
    None
}

/// A module file's bytes, decompressed (busybox's insmod takes plain `.ko`).
fn decompressed(p: &Path) -> Result<Vec<u8>> {
    let tool = match p.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        _ => return Ok(fs::read(p)?),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(p)
        .output()
        .with_context(|| format!("running {tool}"))?;
    if !out.status.success() {
        bail!("{tool} -dc {} failed", p.display());
    }
    Ok(out.stdout)
}

/// This kernel's initramfs: the shared guest, then its own modules (the kernel
/// unpacks concatenated archives in order).
fn kernel_initrd(root: &Path, k: &Kernel, guest: &Path) -> Result<PathBuf> {
    let dir = kernels_dir(root).join(k.id);
    let out = dir.join("initrd.cpio");
    let mut f = std::io::BufWriter::new(fs::File::create(&out)?);
    std::io::copy(&mut fs::File::open(guest)?, &mut f)?;
    let mut c = Cpio::new(f);
    c.dir("/modules")?;
    let mut mods: Vec<PathBuf> = fs::read_dir(dir.join("modules"))?
        .flatten()
        .map(|e| e.path())
        .collect();
    mods.sort();
    for m in mods {
        let name = m
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        c.file(&format!("/modules/{name}"), 0o644, &fs::read(&m)?)?;
    }
    c.finish()?;
    Ok(out)
}

/// The shared libraries `bin` loads (as `ldd` resolves them), and its interpreter.
fn libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = run_quiet(Command::new("ldd").arg(bin), "ldd")?;
    Ok(out
        .lines()
        .filter_map(|l| {
            // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
            // "/lib64/ld-linux-x86-64.so.2 (0x...)"
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// The guest's `/init`: mounts, loopback, each test binary with its tests, power off.
fn init_script(tcpstate: &str, tests: &[(String, String)]) -> String {
    let mut s = format!(
        "#!/bin/busybox sh\n\
         export TCPSTATE_BIN={tcpstate} CI=1 HOME=/root RUST_BACKTRACE=0\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/usr/sbin:/usr/bin:/sbin:/bin LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sys /sys\n\
         mount -t devtmpfs dev /dev\n\
         mkdir -p /dev/pts && mount -t devpts devpts /dev/pts\n\
         mount -t tmpfs tmp /tmp\n\
         mount -t tmpfs run /run\n\
         mkdir -p /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup\n\
         for m in /modules/*.ko; do insmod \"$m\" || echo \"MATRIX-WARN insmod $m failed\"; done\n\
         ip link set lo up\n\
         ulimit -n 65536\n\
         echo \"MATRIX-KERNEL $(uname -r)\"\n\
         echo \"MATRIX-FEATURES $($TCPSTATE_BIN hist --state TIME_WAIT --by process --duration 1 --log-level info 2>&1 | grep -o 'kernel features: .*')\"\n\
         rc=0\n",
    );
    for (name, guest_path) in tests {
        let filter = GUEST_TESTS
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| *t)
            .unwrap_or_default();
        let args = if filter.is_empty() {
            String::new()
        } else {
            format!(" --exact {}", filter.join(" "))
        };
        s.push_str(&format!(
            "echo MATRIX-BIN {name}\n{guest_path} --test-threads=2{args} || rc=1\n"
        ));
    }
    s.push_str("echo \"MATRIX-DONE $rc\"\nsync\npoweroff -f\n");
    s
}

/// Builds the guest's initramfs from the test binaries (`tests`: name -> host path).
pub fn build_guest(
    root: &Path,
    tcpstate: &Path,
    tcpkit: &Path,
    tests: &BTreeMap<String, PathBuf>,
) -> Result<PathBuf> {
    let out = kernels_dir(root).join("guest.cpio");
    fs::create_dir_all(kernels_dir(root))?;
    let mut c = Cpio::new(std::io::BufWriter::new(fs::File::create(&out)?));
    for d in [
        "proc", "sys", "dev", "tmp", "run", "root", "etc", "bin", "sbin",
    ] {
        c.dir(d)?;
    }
    c.file(
        "/etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    c.file("/etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")?;
    let mut elves: Vec<(String, PathBuf)> = vec![
        (BUSYBOX.to_string(), PathBuf::from(BUSYBOX)),
        (path_str(tcpstate), tcpstate.to_path_buf()),
        (path_str(tcpkit), tcpkit.to_path_buf()),
    ];
    for (guest, host) in GUEST_COMMANDS {
        elves.push((guest.to_string(), PathBuf::from(host)));
    }
    let mut guest_tests = Vec::new();
    for (name, _) in GUEST_TESTS {
        let host = tests
            .get(*name)
            .with_context(|| format!("no test binary {name}"))?;
        let guest = format!("/tests/{name}");
        elves.push((guest.clone(), host.clone()));
        guest_tests.push((name.to_string(), guest));
    }
    let mut libs = std::collections::BTreeSet::new();
    for (guest, host) in &elves {
        let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        c.file(guest, 0o755, &data)?;
        if host != Path::new(BUSYBOX) {
            libs.extend(libraries(host)?);
        }
    }
    for lib in libs {
        let data = fs::read(&lib).with_context(|| format!("reading {}", lib.display()))?;
        c.file(&path_str(&lib), 0o755, &data)?;
    }
    for d in GUEST_DATA {
        copy_tree(&mut c, Path::new(d))?;
    }
    c.file(
        "/init",
        0o755,
        init_script(&path_str(tcpstate), &guest_tests).as_bytes(),
    )?;
    c.finish()?;
    Ok(out)
}

/// `path` (a file, or a directory with everything under it) at the same path.
fn copy_tree<W: Write>(c: &mut Cpio<W>, path: &Path) -> Result<()> {
    // The real file behind a symlink (terminfo entries are often links).
    let meta = fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.is_dir() {
        c.dir(&path_str(path))?;
        let mut entries: Vec<_> = fs::read_dir(path)?.collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            copy_tree(c, &e.path())?;
        }
    } else {
        c.file(&path_str(path), 0o644, &fs::read(path)?)?;
    }
    Ok(())
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Boots `k` with the guest and collects every test's result.
pub fn run_kernel(root: &Path, k: &Kernel, guest: &Path) -> Outcome {
    let started = Instant::now();
    let mut o = Outcome::new(k.id);
    let (image, package, initrd) =
        match fetch(root, k).and_then(|(i, p)| Ok((i, p, kernel_initrd(root, k, guest)?))) {
            Ok(x) => x,
            Err(e) => {
                o.error = Some(format!("{e:#}"));
                return o;
            }
        };
    o.package = package;
    eprintln!(
        "xtask: kernel {}: booting {} in QEMU (TCG) with {} tests",
        k.id,
        o.package,
        GUEST_TESTS.len()
    );
    let log_path = kernels_dir(root).join(k.id).join("console.log");
    let mut log = fs::File::create(&log_path).ok();
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-m",
            "2048",
            "-smp",
            "2",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&image)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            o.error = Some(format!("cannot start qemu-system-x86_64: {e}"));
            return o;
        }
    };
    let pid = child.id();
    // The watchdog: a guest that hangs is killed.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if rx.recv_timeout(GUEST_TIMEOUT).is_err() {
            // SAFETY: plain kill(2) of our child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            return true;
        }
        false
    });
    let mut done = None;
    let mut bin = String::new();
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
        let line = String::from_utf8_lossy(&line).replace('\r', "");
        if let Some(f) = log.as_mut() {
            let _ = writeln!(f, "{line}");
        }
        if let Some(r) = line.strip_prefix("MATRIX-KERNEL ") {
            o.release = r.trim().to_string();
        } else if let Some(b) = line.strip_prefix("MATRIX-BIN ") {
            bin = b.trim().to_string();
        } else if let Some(f) = line.strip_prefix("MATRIX-FEATURES ") {
            o.features = f.trim().trim_start_matches("kernel features: ").to_string();
        } else if let Some(w) = line.strip_prefix("MATRIX-WARN ") {
            eprintln!("xtask: kernel {}: {w}", k.id);
        } else if let Some(rc) = line.strip_prefix("MATRIX-DONE ") {
            done = rc.trim().parse::<i32>().ok();
        } else if let Some((name, result)) = test_line(&line) {
            let passed = result == "ok";
            eprintln!(
                "xtask: kernel {}: {bin}::{name} ... {}",
                k.id,
                if passed { "ok" } else { "FAILED" }
            );
            if passed {
                o.passed += 1;
            } else {
                o.failed.push(format!("{bin}::{name}"));
            }
        }
    }
    let _ = child.wait();
    let _ = tx.send(());
    let killed = watchdog.join().unwrap_or(false);
    o.secs = started.elapsed().as_secs_f64();
    if killed {
        o.error = Some(format!(
            "timed out after {} s (console: {})",
            GUEST_TIMEOUT.as_secs(),
            log_path.display()
        ));
    } else if done.is_none() {
        o.error = Some(format!(
            "the guest stopped before its tests ended (console: {})",
            log_path.display()
        ));
    } else if done != Some(0) && o.failed.is_empty() {
        o.error = Some(format!(
            "a test binary failed without a failing test (console: {})",
            log_path.display()
        ));
    }
    o
}

/// libtest's `test NAME ... ok|FAILED|ignored` (not its summary line).
pub fn test_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("test ")?;
    let (name, result) = rest.rsplit_once(" ... ")?;
    let result = result.trim();
    matches!(result, "ok" | "FAILED" | "ignored").then_some((name.trim(), result))
}

/// The matrix's table: one line per kernel, then each failed test.
pub fn report(outcomes: &[Outcome]) -> String {
    let mut s = String::from("kernel matrix:\n");
    s.push_str(&format!(
        "{:<8} {:<28} {:<70} {:>6} {:>6} {:>5}\n",
        "KERNEL", "RELEASE", "PACKAGE", "PASSED", "FAILED", "SECS"
    ));
    for o in outcomes {
        s.push_str(&format!(
            "{:<8} {:<28} {:<70} {:>6} {:>6} {:>5.0}{}\n",
            o.id,
            o.release,
            o.package,
            o.passed,
            o.failed.len(),
            o.secs,
            if o.ok() { "" } else { "  FAILED" }
        ));
    }
    s.push_str("what each kernel gave tcpstate:\n");
    for o in outcomes {
        s.push_str(&format!("  {:<8} {}\n", o.id, o.features));
    }
    for o in outcomes {
        for t in &o.failed {
            s.push_str(&format!("  {}: {t} FAILED\n", o.id));
        }
        if let Some(e) = &o.error {
            s.push_str(&format!("  {}: {e}\n", o.id));
        }
    }
    s
}

/// The kernel of `--kernels` with this id.
pub fn kernel(id: &str) -> Option<&'static Kernel> {
    KERNELS.iter().find(|k| k.id == id)
}

/// Installs QEMU and busybox when they are missing (as root). QEMU comes from
/// bookworm-backports: this kind of machine has qemu-utils from there, which the
/// bookworm qemu-system-x86 would remove.
pub fn ensure_tools(root: &Path) -> Result<()> {
    let on_path = |bin: &str| {
        Path::new(bin).exists()
            || env::var_os("PATH")
                .is_some_and(|p| env::split_paths(&p).any(|d| d.join(bin).exists()))
    };
    if !on_path(BUSYBOX) {
        eprintln!(
            "xtask: installing busybox-static for the kernel matrix's guests (first run only)"
        );
        crate::apt_install(&["busybox-static"])?;
    }
    if on_path("qemu-system-x86_64") {
        return Ok(());
    }
    eprintln!("xtask: installing qemu-system-x86 from bookworm-backports for the kernel matrix (first run only)");
    // The machine's own sources plus bookworm-backports, for this install only.
    let parts = kernels_dir(root).join("apt/system-parts");
    fs::create_dir_all(&parts)?;
    for e in fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = fs::copy(e.path(), parts.join(e.file_name()));
    }
    fs::write(
        parts.join("tcpstate-backports.list"),
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main\n",
    )?;
    let opt = format!("Dir::Etc::SourceParts={}", parts.display());
    crate::status(
        Command::new("apt-get").args(["-o", &opt, "update", "-qq"]),
        "apt-get update",
    )?;
    crate::status(
        Command::new("apt-get")
            .args([
                "-o",
                &opt,
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
            ])
            .args(["-t", "bookworm-backports", "qemu-system-x86"])
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install qemu-system-x86",
    )
}

/// tcpstate's `kernel features: ...` line on this machine's kernel.
pub fn host_features(tcpstate: &Path) -> String {
    Command::new(tcpstate)
        .args([
            "hist",
            "--state",
            "TIME_WAIT",
            "--by",
            "process",
            "--duration",
            "1",
        ])
        .args(["--log-level", "info"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .find_map(|l| Some(l.split_once("kernel features: ")?.1.to_string()))
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_are_parsed() {
        assert_eq!(parse_kernels("host").unwrap(), ["host"]);
        assert_eq!(parse_kernels("all").unwrap().len(), 1 + KERNELS.len());
        assert_eq!(parse_kernels("6.1, 6.12").unwrap(), ["6.1", "6.12"]);
        assert!(parse_kernels("5.4").is_err());
        assert!(parse_kernels("").is_err());
    }

    #[test]
    fn libtest_lines() {
        assert_eq!(test_line("test foo_bar ... ok"), Some(("foo_bar", "ok")));
        assert_eq!(test_line("test a::b ... FAILED"), Some(("a::b", "FAILED")));
        assert_eq!(test_line("test result: ok. 3 passed"), None);
        assert_eq!(test_line("running 3 tests"), None);
    }

    #[test]
    fn init_runs_each_binary_with_its_tests() {
        let s = init_script(
            "/x/tcpstate",
            &[
                ("trace".into(), "/tests/trace".into()),
                ("seed".into(), "/tests/seed".into()),
            ],
        );
        assert!(s.contains("export TCPSTATE_BIN=/x/tcpstate"));
        assert!(s.contains("/tests/trace --test-threads=2 --exact exact_ten_per_connection_ipv4"));
        assert!(s.contains("/tests/seed --test-threads=2 || rc=1"));
        assert!(s.ends_with("poweroff -f\n"));
    }
}
