//! Helpers for the privileged integration tests: run the real `tcpstate` (path from
//! `TCPSTATE_BIN`, set by `cargo xtask test`) and real `tcpkit` workload processes.
#![allow(dead_code)]

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const TCPKIT: &str = env!("CARGO_BIN_EXE_tcpkit");

/// The tcpstate binary under test. Not set means the tests were not started by
/// `cargo xtask test`: fail loudly rather than skip.
pub fn tcpstate_bin() -> String {
    std::env::var("TCPSTATE_BIN")
        .expect("TCPSTATE_BIN is not set: run the kernel tests with `cargo xtask test`")
}

/// A port that was free a moment ago, on the given loopback address.
pub fn free_port(ip: &str) -> u16 {
    let l = TcpListener::bind((ip, 0)).expect("bind a free port");
    l.local_addr().unwrap().port()
}

pub struct Tracer {
    child: Child,
    stderr_lines: mpsc::Receiver<String>,
    stdout: Option<ChildStdout>,
}

impl Tracer {
    /// Starts `tcpstate ARGS` and waits until its probe is attached.
    pub fn start(args: &[&str]) -> Tracer {
        let mut cmd = Command::new(tcpstate_bin());
        cmd.args(args);
        Tracer::spawn(cmd)
    }

    /// Starts `cmd` (tcpstate, or a wrapper that execs it) with stdout and stderr
    /// piped, and waits until its probe is attached.
    pub fn spawn(mut cmd: Command) -> Tracer {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpstate");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut t = Tracer {
            stdout: child.stdout.take(),
            child,
            stderr_lines: rx,
        };
        let mut seen = Vec::new();
        loop {
            match t.stderr_lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.contains("probe attached") => break,
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = t.child.kill();
                    panic!("tcpstate did not attach; stderr: {seen:?}");
                }
            }
        }
        t
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Polls for its exit for up to `bound`; `None` if it still runs then.
    pub fn exit_within(&mut self, bound: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything it wrote to stderr after "probe attached"; call once it has exited
    /// (it blocks until the reader thread has seen the end of the pipe).
    pub fn stderr_rest(&mut self) -> Vec<String> {
        self.stderr_lines.iter().collect()
    }

    pub fn stdout(&mut self) -> ChildStdout {
        self.stdout.take().expect("stdout taken once")
    }

    /// Waits for it to exit by itself (`--duration`), then everything it printed.
    pub fn stop_after_exit(&mut self) -> (String, Vec<String>, ExitStatus) {
        let mut out = String::new();
        if let Some(mut s) = self.stdout.take() {
            s.read_to_string(&mut out).unwrap();
        }
        let status = self.child.wait().unwrap();
        (out, self.stderr_rest(), status)
    }

    /// SIGINT, then everything it printed: (stdout, stderr, status).
    pub fn stop(&mut self) -> (String, Vec<String>, ExitStatus) {
        // Let the 100 ms drain timer pass so nothing is in flight.
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.stop_after_exit()
    }
}

impl Drop for Tracer {
    /// A failed assertion must not leave a tracer running after the test.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each argument list must be refused before anything runs: exit status 2 and exactly
/// one line on stderr, `error: ...`, that names the problem (contains the case's
/// second string), no panic, nothing on stdout.
pub fn assert_usage_errors(cases: &[(&[&str], &str)]) {
    for (args, names) in cases {
        let out = Command::new(tcpstate_bin()).args(*args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line, got {err:?}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(
            err.contains(names),
            "{args:?}: should name {names:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// The number just before `word` in a text summary ("12 events, 0 lost (...)"),
/// as a whole number: "10 lost" gives 10, never a match for 0.
pub fn count_before(text: &str, word: &str) -> u64 {
    let at = text
        .find(&format!(" {word}"))
        .unwrap_or_else(|| panic!("no {word:?} in {text:?}"));
    let digits: String = text[..at]
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .filter(|c| *c != ',')
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number before {word:?} in {text:?}"))
}

/// `--state S` for each of `states`.
pub fn state_args<'a>(states: &[&'a str]) -> Vec<&'a str> {
    states.iter().flat_map(|s| ["--state", s]).collect()
}

/// Reads a tcpstate's stderr until its probe is attached.
pub fn wait_attached(err: &mut impl BufRead) {
    let mut line = String::new();
    while !line.contains("probe attached") {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "tcpstate exited before attaching"
        );
    }
}

/// Parses JSON lines; every line must be valid JSON.
pub fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

pub fn summary(lines: &[Value]) -> &Value {
    let s = lines.last().expect("some output");
    assert_eq!(s["type"], "summary", "last line is the summary");
    s
}

pub fn transitions(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|v| v["type"] == "transition").collect()
}

/// The fds in a `tcpkit ... hold` line ("... fds 4,5,6").
pub fn fds(line: &str) -> BTreeSet<u64> {
    let list = line.split(" fds ").nth(1).unwrap_or_default();
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

/// A tcpkit process.
pub struct Kit {
    pub child: Child,
    out: BufReader<ChildStdout>,
}

impl Drop for Kit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Kit {
    pub fn spawn(args: &[&str]) -> Kit {
        let mut child = Command::new(TCPKIT)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start tcpkit");
        let out = BufReader::new(child.stdout.take().unwrap());
        Kit { child, out }
    }

    /// `tcpkit server`, once it listens.
    pub fn server(addr: &str, conns: &str, mode: &str) -> Kit {
        let mut k = Kit::spawn(&["server", "--addr", addr, "--conns", conns, "--mode", mode]);
        assert!(k.line().starts_with("ready"), "tcpkit server did not start");
        k
    }

    /// `tcpkit client` with optional extra arguments.
    pub fn client(addr: &str, conns: &str, mode: &str, extra: &[&str]) -> Kit {
        let mut args = vec!["client", "--addr", addr, "--conns", conns, "--mode", mode];
        args.extend_from_slice(extra);
        Kit::spawn(&args)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        l.trim_end().to_string()
    }

    /// Closes its stdin (which ends `hold` modes) and waits for success.
    pub fn finish(&mut self) {
        drop(self.child.stdin.take());
        let st = self.child.wait().unwrap();
        assert!(st.success(), "tcpkit failed: {st}");
    }

    pub fn write_stdin(&mut self, b: &[u8]) {
        self.child.stdin.as_mut().unwrap().write_all(b).unwrap();
    }
}

/// `tcpkit churn`: `conns` loopback connections to 127.0.0.1:`port`, as fast as
/// possible (client closes first); panics if it fails.
pub fn churn(port: u16, conns: impl ToString) {
    let out = Command::new(TCPKIT)
        .args(["churn", "--addr", &format!("127.0.0.1:{port}"), "--conns"])
        .arg(conns.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// `IP:PORT`, bracketing an IPv6 address.
pub fn sock_addr(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// Runs server and client processes for `conns` connections in `mode`.
/// Returns (server pid, client pid).
pub fn run_pair(ip: &str, port: u16, conns: u32, mode: &str) -> (u32, u32) {
    let addr = sock_addr(ip, port);
    let n = conns.to_string();
    let mut server = Kit::server(&addr, &n, mode);
    let mut client = Kit::client(&addr, &n, mode, &[]);
    assert!(client.line().starts_with("done"));
    let (sp, cp) = (server.pid(), client.pid());
    client.finish();
    server.finish();
    (sp, cp)
}
