//! Capabilities instead of root, as the README promises: each command that needs no
//! tracefs runs as an unprivileged user with exactly CAP_BPF and CAP_PERFMON (ambient,
//! through util-linux's `setpriv`), and fails with a message naming them without.
//! Needs root (to create the user); run by `cargo xtask test`.

mod common;

use std::{
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Command, Output},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
    time::Duration,
};

use common::*;
use serde_json::Value;

/// CAP_PERFMON (38) and CAP_BPF (39), as /proc/PID/status prints them.
const BPF_AND_PERFMON: &str = "000000c000000000";

/// useradd and userdel lock /etc/passwd; tests in this binary take turns.
static PASSWD: Mutex<()> = Mutex::new(());

/// Runs a user-database command, retrying while another process holds its lock
/// (exit status 10 for useradd/userdel: cannot lock the password file).
fn passwd_cmd(cmd: &str, args: &[&str]) -> std::process::ExitStatus {
    let _turn = PASSWD.lock().unwrap_or_else(|e| e.into_inner());
    let mut tries = 0;
    loop {
        let st = Command::new(cmd)
            .args(args)
            .status()
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
        tries += 1;
        if st.code() != Some(10) || tries == 20 {
            return st;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A system user with no home and no login shell, deleted on drop (even when the test
/// fails). A new name per test: parallel tests and other test runs do not collide.
struct TempUser {
    name: String,
}

impl TempUser {
    fn new() -> TempUser {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tcpst-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let st = passwd_cmd("useradd", &["-M", "-r", "-s", "/usr/sbin/nologin", &name]);
        assert!(st.success(), "useradd {name}: {st}");
        TempUser { name }
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        let st = passwd_cmd("userdel", &[&self.name]);
        if !st.success() {
            eprintln!("userdel {}: {st}", self.name);
        }
    }
}

/// A copy of $TCPSTATE_BIN in a fresh directory any user can enter and execute from
/// (the worktree's target/ may not be), removed on drop.
struct BinCopy {
    dir: PathBuf,
    bin: PathBuf,
}

impl BinCopy {
    fn new() -> BinCopy {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tcpstate-caps-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let copy = BinCopy {
            bin: dir.join("tcpstate"),
            dir,
        };
        let mode = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(&copy.dir, mode.clone()).unwrap();
        std::fs::copy(tcpstate_bin(), &copy.bin).expect("copy TCPSTATE_BIN");
        std::fs::set_permissions(&copy.bin, mode).unwrap();
        copy
    }
}

impl Drop for BinCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An unprivileged user and a tcpstate it can run.
struct Unprivileged {
    // Drop order: the files go before the user.
    copy: BinCopy,
    user: TempUser,
}

impl Unprivileged {
    /// Also checks the harness itself: `setpriv` gives that user exactly CAP_BPF and
    /// CAP_PERFMON with the caps, and nothing without.
    fn new() -> Unprivileged {
        assert!(
            which("setpriv"),
            "setpriv (util-linux) is missing: install util-linux to run these tests"
        );
        let u = Unprivileged {
            copy: BinCopy::new(),
            user: TempUser::new(),
        };
        for (caps, want) in [(true, BPF_AND_PERFMON), (false, "0000000000000000")] {
            let out = u
                .command("cat", caps)
                .arg("/proc/self/status")
                .output()
                .unwrap();
            let status = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{out:?}");
            let field = |f: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(f))
                    .map(str::trim)
                    .unwrap_or_else(|| panic!("no {f} in {status}"))
                    .to_string()
            };
            assert_eq!(field("CapEff:"), want, "caps {caps}: {status}");
            assert_eq!(field("CapPrm:"), want, "caps {caps}: {status}");
            assert!(!field("Uid:").starts_with("0\t"), "{status}");
        }
        u
    }

    /// `prog` run as the user, with CAP_BPF and CAP_PERFMON as ambient capabilities
    /// (`caps`) or none, from the copy's directory.
    fn command(&self, prog: &str, caps: bool) -> Command {
        let mut c = Command::new("setpriv");
        let u = &self.user.name;
        c.args(["--reuid", u, "--regid", u, "--clear-groups"]);
        if caps {
            c.args([
                "--inh-caps",
                "+bpf,+perfmon",
                "--ambient-caps",
                "+bpf,+perfmon",
            ]);
        }
        c.arg("--").arg(prog).current_dir(&self.copy.dir);
        c
    }

    /// The copied tcpstate with `args`, as the user.
    fn tcpstate(&self, caps: bool, args: &[&str]) -> Command {
        let mut c = self.command(self.copy.bin.to_str().unwrap(), caps);
        c.args(args);
        c
    }

    /// Without the capabilities, the same command must fail, saying which are missing.
    fn assert_refused_without_caps(&self, args: &[&str]) {
        let out = self.tcpstate(false, args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} ran without capabilities");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("CAP_BPF") && err.contains("CAP_PERFMON"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

fn which(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).exists()))
        .unwrap_or(false)
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `linger`: the task_file iterator finds the holder of a CLOSE_WAIT socket (a root
/// process) for a user with only CAP_BPF and CAP_PERFMON.
#[test]
fn linger_with_capabilities_only() {
    let u = Unprivileged::new();
    let port = free_port("127.0.0.1");
    let p = port.to_string();
    let a = format!("127.0.0.1:{port}");
    let mut server = Kit::server(&a, "1", "hold");
    let mut client = Kit::client(&a, "1", "client-close", &[]);
    assert!(client.line().starts_with("done"));
    assert_eq!(fds(&server.line()).len(), 1);
    let args = [
        "linger",
        "--json",
        "--min-age",
        "0",
        "--duration",
        "1",
        "--port",
        &p,
    ];
    let out = u.tcpstate(true, &args).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let lines = json_lines(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(summary(&lines)["lost"], 0, "{lines:?}");
    let reports: Vec<&Value> = lines
        .iter()
        .filter(|l| l["type"] == "linger_report")
        .collect();
    assert_eq!(reports.len(), 1, "{lines:?}");
    assert_eq!(reports[0]["count"], 1, "{lines:?}");
    let groups: Vec<&Value> = lines.iter().filter(|l| l["type"] == "linger").collect();
    assert_eq!(groups.len(), 1, "{lines:?}");
    assert_eq!(groups[0]["pid"], server.pid(), "{lines:?}");
    u.assert_refused_without_caps(&args);
    client.finish();
    server.finish();
}

/// `hist` (no `--by process`, no `--pid`: no owners, so no accept probe): exact counts
/// for a user with only CAP_BPF and CAP_PERFMON.
#[test]
fn hist_with_capabilities_only() {
    const N: u64 = 20;
    let u = Unprivileged::new();
    let port = free_port("127.0.0.1");
    let p = port.to_string();
    let args = [
        "hist",
        "--json",
        "--duration",
        "2",
        "--port",
        &p,
        "--state",
        "SYN_SENT",
        "--state",
        "FIN_WAIT1",
        "--state",
        "TIME_WAIT",
    ];
    let mut t = Tracer::spawn(u.tcpstate(true, &args));
    churn(port, N);
    let (out, err, st) = t.stop_after_exit();
    assert!(st.success(), "{err:?}");
    let lines = json_lines(&out);
    let sum = summary(&lines);
    assert_eq!(sum["lost"], 0, "{out}");
    // Every transition of the churn reached the probe (10 per connection).
    assert!(sum["probe_calls"].as_u64().unwrap() >= 10 * N, "{sum}");
    let count = |state: &str| {
        let h: Vec<&Value> = lines
            .iter()
            .filter(|l| l["type"] == "hist" && l["state"] == state)
            .collect();
        assert_eq!(h.len(), 1, "{state}: {out}");
        h[0]["count"].as_u64().unwrap()
    };
    assert_eq!(count("SYN_SENT"), N, "{out}");
    assert_eq!(count("FIN_WAIT1"), N, "{out}");
    // The client closes first: N TIME_WAITs begin, none ends within 2 s.
    assert_eq!(count("TIME_WAIT"), 0, "{out}");
    u.assert_refused_without_caps(&args);
}

/// `trace` attaches no classic tracepoint (accepted sockets inherit their listener's
/// record; no accept() hook): CAP_BPF and CAP_PERFMON are enough, tracefs is never
/// touched.
#[test]
fn trace_with_capabilities_only() {
    let u = Unprivileged::new();
    let port = free_port("127.0.0.1");
    let p = port.to_string();
    let args = ["trace", "--json", "--duration", "1", "--port", &p];
    let out = u.tcpstate(true, &args).output().unwrap();
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("tracefs"), "{err}");
    let lines = json_lines(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(lines.len(), 1, "only the summary: {lines:?}");
    assert_eq!(summary(&lines)["lost"], 0, "{lines:?}");
    u.assert_refused_without_caps(&args);
}
