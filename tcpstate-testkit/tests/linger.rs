//! `tcpstate linger` against the real kernel: real processes hold real sockets in
//! CLOSE_WAIT; the report must name the holder and its fds, never the peer. Needs root;
//! run by `cargo xtask test`.

mod common;

use std::{collections::BTreeSet, process::Command, time::Duration};

use common::*;
use serde_json::Value;

/// Runs `linger --json` to completion and returns (linger objects, reports, summary).
fn linger_once(extra: &[&str]) -> (Vec<Value>, Vec<Value>, Value) {
    let mut args = vec!["linger", "--json", "--min-age", "0", "--duration", "1"];
    args.extend_from_slice(extra);
    let out = Command::new(tcpstate_bin()).args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    split(&String::from_utf8(out.stdout).unwrap())
}

fn split(out: &str) -> (Vec<Value>, Vec<Value>, Value) {
    let lines = json_lines(out);
    let sum = summary(&lines).clone();
    assert_eq!(sum["lost"], 0, "{sum}");
    let groups = lines
        .iter()
        .filter(|l| l["type"] == "linger")
        .cloned()
        .collect();
    let reports = lines
        .iter()
        .filter(|l| l["type"] == "linger_report")
        .cloned()
        .collect();
    (groups, reports, sum)
}

fn group_fds(g: &Value) -> BTreeSet<u64> {
    g["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["fd"].as_u64().unwrap())
        .collect()
}

/// Server A accepts and never closes; client B closes. All of A's sockets are listed
/// under A with their real fds, none under B, started before or after the sockets
/// reached CLOSE_WAIT.
fn server_forgets_close(ip: &str, tracer_first: bool) {
    let port = free_port(ip);
    let p = port.to_string();
    let a = sock_addr(ip, port);
    let tracer = tracer_first.then(|| {
        Tracer::start(&[
            "linger",
            "--json",
            "--min-age",
            "0",
            "--duration",
            "4",
            "--port",
            &p,
        ])
    });
    let mut server = Kit::server(&a, "5", "hold");
    let mut client = Kit::client(&a, "5", "client-close", &[]);
    assert!(client.line().starts_with("done"));
    let held = fds(&server.line());
    assert_eq!(held.len(), 5);
    let (groups, _, _) = match tracer {
        Some(mut t) => {
            let (out, err, st) = t.stop_after_exit();
            assert!(st.success(), "{err:?}");
            split(&out)
        }
        None => linger_once(&["--port", &p]),
    };
    assert_eq!(groups.len(), 1, "{groups:?}");
    let g = &groups[0];
    assert_eq!(g["pid"], server.pid());
    assert_eq!(g["comm"], "tcpkit");
    assert_eq!(g["state"], "CLOSE_WAIT");
    assert_eq!(g["count"], 5);
    assert_eq!(group_fds(g), held, "the fds the server really holds");
    for s in g["sockets"].as_array().unwrap() {
        assert_eq!(s["saddr"], ip);
        assert_eq!(s["sport"], port);
        // Seen entering CLOSE_WAIT: exact age; found at startup: a lower bound.
        assert_eq!(s["age_is_lower_bound"], !tracer_first, "{s}");
    }
    assert_ne!(g["pid"], client.pid());
    client.finish();
    server.finish();
}

#[test]
fn holder_not_peer_ipv4_started_before() {
    server_forgets_close("127.0.0.1", true);
}

#[test]
fn holder_not_peer_ipv4_started_after() {
    server_forgets_close("127.0.0.1", false);
}

#[test]
fn holder_not_peer_ipv6_started_before() {
    server_forgets_close("::1", true);
}

#[test]
fn holder_not_peer_ipv6_started_after() {
    server_forgets_close("::1", false);
}

/// The mirror case: the server closes, the client never does; its sockets are listed
/// under the client.
#[test]
fn client_forgets_close_ipv4_and_ipv6() {
    for ip in ["127.0.0.1", "::1"] {
        let port = free_port(ip);
        let a = sock_addr(ip, port);
        let mut server = Kit::server(&a, "3", "server-close");
        let mut client = Kit::client(&a, "3", "hold", &[]);
        let held = fds(&client.line());
        assert_eq!(held.len(), 3);
        let (groups, _, _) = linger_once(&["--port", &port.to_string()]);
        assert_eq!(groups.len(), 1, "{groups:?}");
        assert_eq!(groups[0]["pid"], client.pid());
        assert_eq!(group_fds(&groups[0]), held);
        client.finish();
        server.finish();
    }
}

/// A socket that leaves CLOSE_WAIT is gone from the next report.
#[test]
fn closed_sockets_leave_the_report() {
    let port = free_port("127.0.0.1");
    let p = port.to_string();
    let a = sock_addr("127.0.0.1", port);
    let mut tracer = Tracer::start(&[
        "linger",
        "--json",
        "--min-age",
        "0",
        "--interval",
        "300ms",
        "--port",
        &p,
    ]);
    let mut server = Kit::server(&a, "4", "hold");
    let mut client = Kit::client(&a, "4", "client-close", &[]);
    assert!(client.line().starts_with("done"));
    assert_eq!(fds(&server.line()).len(), 4);
    std::thread::sleep(Duration::from_millis(900));
    let server_pid = server.pid();
    server.finish(); // closes them all: CLOSE_WAIT -> LAST_ACK
    client.finish();
    std::thread::sleep(Duration::from_millis(900));
    let (out, err, st) = tracer.stop();
    assert!(st.success(), "{err:?}");
    let lines = json_lines(&out);
    let reports: Vec<&Value> = lines
        .iter()
        .filter(|l| l["type"] == "linger_report")
        .collect();
    assert!(reports.len() >= 4, "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l["type"] == "linger" && l["pid"] == server_pid && l["count"] == 4),
        "{out}"
    );
    assert_eq!(reports.last().unwrap()["count"], 0, "{out}");
}

/// 100,000 sockets in CLOSE_WAIT, held by 6 server processes (this machine's hard fd
/// limit is 20,000 per process), all tracked and attributed with their real fds. The
/// clients half-close and keep their fds: orphaned client sockets beyond
/// tcp_max_orphans would be reset by the kernel, taking server sockets out of
/// CLOSE_WAIT.
#[test]
fn one_hundred_thousand_close_wait() {
    const PROCS: usize = 6;
    const TOTAL: usize = 100_000;
    let mut pairs = Vec::new();
    let mut lports = Vec::new();
    for i in 0..PROCS {
        let port = free_port("127.0.0.1");
        let a = sock_addr("127.0.0.1", port);
        let n = (TOTAL / PROCS + usize::from(i < TOTAL % PROCS)).to_string();
        let s = Kit::server(&a, &n, "hold");
        let c = Kit::client(&a, &n, "half-close", &[]);
        pairs.push((s, c, n));
        lports.push("--lport".to_string());
        lports.push(port.to_string());
    }
    let mut expected = Vec::new();
    for (s, c, n) in &mut pairs {
        assert!(c.line().starts_with("done"));
        let held = fds(&s.line());
        assert_eq!(held.len().to_string(), *n);
        expected.push((s.pid(), held));
    }
    let refs: Vec<&str> = lports.iter().map(String::as_str).collect();
    let (groups, reports, sum) = linger_once(&refs);
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0]["count"], TOTAL, "{}", reports[0]);
    assert_eq!(sum["untracked"], 0);
    assert_eq!(groups.len(), PROCS);
    for (pid, held) in &expected {
        let g = groups
            .iter()
            .find(|g| g["pid"] == *pid)
            .expect("group per server");
        assert_eq!(&group_fds(g), held);
    }
    for (s, c, _) in &mut pairs {
        c.finish();
        s.finish();
    }
}

#[test]
fn fail_if_any_exits_1_only_when_not_empty() {
    let port = free_port("127.0.0.1");
    let p = port.to_string();
    let st = Command::new(tcpstate_bin())
        .args([
            "linger",
            "--duration",
            "500ms",
            "--fail-if-any",
            "--port",
            &p,
        ])
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&st.stdout).contains("CLOSE_WAIT longer than 5s: 0 sockets"));
    let a = sock_addr("127.0.0.1", port);
    let mut server = Kit::server(&a, "1", "hold");
    let mut client = Kit::spawn(&["client", "--addr", &a, "--mode", "client-close"]);
    assert!(client.line().starts_with("done"));
    assert_eq!(fds(&server.line()).len(), 1);
    let st = Command::new(tcpstate_bin())
        .args([
            "linger",
            "--duration",
            "500ms",
            "--min-age",
            "0",
            "--fail-if-any",
            "--port",
            &p,
        ])
        .output()
        .unwrap();
    assert_eq!(st.status.code(), Some(1));
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(
        text.contains("CLOSE_WAIT longer than 0s: 1 socket in 1 process"),
        "{text}"
    );
    client.finish();
    server.finish();
}

/// A state named twice, adjacent or not and in any case, gets one report: one
/// `linger_report` per state, and the held socket in it once.
#[test]
fn repeated_state_reports_once() {
    let port = free_port("127.0.0.1");
    let p = port.to_string();
    let a = sock_addr("127.0.0.1", port);
    let mut server = Kit::server(&a, "1", "hold");
    let mut client = Kit::client(&a, "1", "client-close", &[]);
    assert!(client.line().starts_with("done"));
    let held = fds(&server.line());
    assert_eq!(held.len(), 1);
    for states in [
        &["CLOSE_WAIT", "CLOSE_WAIT"][..],
        &["CLOSE_WAIT", "FIN_WAIT2", "close_wait"][..],
    ] {
        let (groups, reports, _) =
            linger_once(&[&["--port", &p][..], &state_args(states)].concat());
        let names: Vec<&str> = reports
            .iter()
            .map(|r| r["state"].as_str().unwrap())
            .collect();
        let mut want = vec!["CLOSE_WAIT"];
        if states.contains(&"FIN_WAIT2") {
            want.push("FIN_WAIT2");
        }
        assert_eq!(
            names, want,
            "one report per state for {states:?}: {reports:?}"
        );
        assert_eq!(reports[0]["count"], 1, "{reports:?}");
        let cw: Vec<&Value> = groups
            .iter()
            .filter(|g| g["state"] == "CLOSE_WAIT")
            .collect();
        assert_eq!(cw.len(), 1, "{groups:?}");
        assert_eq!(cw[0]["pid"], server.pid());
        assert_eq!(group_fds(cw[0]), held);
    }
    client.finish();
    server.finish();
}

#[test]
fn bad_values_exit_2() {
    assert_usage_errors(&[
        (&["linger", "--min-age", "-1"], "--min-age"),
        (&["linger", "--interval", "0"], "--interval"),
        (&["linger", "--state", "WAITING"], "WAITING"),
        (&["linger", "--state", "TIME_WAIT"], "TIME_WAIT"),
        (&["linger", "--duration", "0"], "--duration"),
        (&["linger", "--min-age", "5parsecs"], "parsecs"),
        (&["linger", "--by", "process"], "--by"),
        (&["linger", "--pid", "0"], "--pid"),
    ]);
}

// --- issue 13: why sockets linger -------------------------------------------------

/// A tcpkit process started through a command (e.g. inside a network namespace).
struct Proc {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn start(ns: Option<&str>, args: &[&str]) -> Proc {
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, TCPKIT]);
                c
            }
            None => Command::new(TCPKIT),
        };
        let mut child = cmd
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start tcpkit");
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        Proc { child, out }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        std::io::BufRead::read_line(&mut self.out, &mut l).unwrap();
        l.trim_end().to_string()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs a short-lived tcpkit to completion.
    fn run(ns: Option<&str>, args: &[&str]) {
        let mut p = Proc::start(ns, args);
        let st = p.child.wait().unwrap();
        assert!(st.success(), "tcpkit {args:?}: {st}");
    }
}

/// `leak-server` on `a`, started and listening; returns it and its `held`/
/// `listening` line.
fn leak_server(ns: Option<&str>, a: &str, conns: &str, behave: &str) -> Proc {
    let mut p = Proc::start(
        ns,
        &[
            "leak-server",
            "--addr",
            a,
            "--conns",
            conns,
            "--behave",
            behave,
        ],
    );
    assert!(p.line().starts_with("ready"), "leak-server did not start");
    p
}

/// A network namespace with `lo` up, deleted on drop (so even when a test fails).
struct Netns(String);

impl Netns {
    fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).status();
        let ok = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name}");
        let ns = Netns(name.to_string());
        let up = Command::new("ip")
            .args(["netns", "exec", name, "ip", "link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(up.success());
        ns
    }

    /// The namespace's inode, as `readlink /proc/PID/ns/net` names it.
    fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", self.0))
            .unwrap()
            .ino()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn sockets(g: &Value) -> &Vec<Value> {
    g["sockets"].as_array().unwrap()
}

/// The soft RLIMIT_NOFILE and open fds of `pid`, read from /proc as a user would.
fn proc_fds(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let soft = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    (soft, fds)
}

/// A server that reads nothing and never closes, found after the fact: the FIN is
/// unread (not everything read), no data left, and the age is the real time since
/// the peer's FIN (from the kernel's last-ACK time), not the time since tcpstate
/// started. Its fd limit and count match /proc.
#[test]
fn reads_nothing_real_age_and_fd_headroom_ipv4() {
    let port = free_port("127.0.0.1");
    let a = sock_addr("127.0.0.1", port);
    let mut server = leak_server(None, &a, "3", "read-nothing");
    Proc::run(None, &["leak-client", "--addr", &a, "--conns", "3"]);
    let held = fds(&server.line());
    let fin = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let (groups, _, _) = linger_once(&["--lport", &port.to_string()]);
    let since_fin_ms = fin.elapsed().as_millis() as f64;
    assert_eq!(groups.len(), 1, "{groups:?}");
    let g = &groups[0];
    assert_eq!(g["pid"], server.pid());
    assert_eq!(group_fds(g), held);
    for s in sockets(g) {
        assert_eq!(s["eof_read"], false, "{s}");
        assert_eq!(s["unread_bytes"], 0, "{s}");
        assert_eq!(s["accepted"], true, "{s}");
        assert_eq!(s["age_is_lower_bound"], true, "{s}");
        let age = s["age_ms"].as_f64().unwrap();
        // tcpstate ran ~1-2 s of the >= 4 s since the FIN.
        assert!(
            age >= since_fin_ms - 1000.0 - 1000.0 && age >= 3000.0,
            "{age} vs {since_fin_ms}: {s}"
        );
        assert!(age <= since_fin_ms + 1000.0, "{age} vs {since_fin_ms}");
    }
    assert_eq!(g["diagnosis"]["stopped_reading"], 3, "{g}");
    let (limit, open) = proc_fds(server.pid());
    assert_eq!(g["fd_limit"], limit);
    assert_eq!(g["fds"], open);
    assert_eq!(g["fd_exhaustion_s"], Value::Null, "not growing");
}

/// A server that reads to EOF and never closes: everything read (IPv6).
#[test]
fn reads_to_eof_never_closes_ipv6() {
    let port = free_port("::1");
    let a = sock_addr("::1", port);
    let mut server = leak_server(None, &a, "2", "read-eof");
    Proc::run(
        None,
        &["leak-client", "--addr", &a, "--conns", "2", "--send", "10"],
    );
    let held = fds(&server.line());
    let (groups, _, _) = linger_once(&["--lport", &port.to_string()]);
    assert_eq!(groups.len(), 1, "{groups:?}");
    let g = &groups[0];
    assert_eq!(g["pid"], server.pid());
    assert_eq!(group_fds(g), held);
    for s in sockets(g) {
        assert_eq!(s["eof_read"], true, "{s}");
        assert_eq!(s["unread_bytes"], 0, "{s}");
        assert_eq!(s["saddr"], "::1");
    }
    assert_eq!(g["diagnosis"]["read_all_never_closed"], 2, "{g}");
}

/// A client sends 100 bytes that the server never reads.
#[test]
fn unread_bytes_are_counted_ipv4() {
    let port = free_port("127.0.0.1");
    let a = sock_addr("127.0.0.1", port);
    let mut server = leak_server(None, &a, "1", "read-nothing");
    Proc::run(None, &["leak-client", "--addr", &a, "--send", "100"]);
    server.line();
    let (groups, _, _) = linger_once(&["--lport", &port.to_string()]);
    assert_eq!(groups.len(), 1, "{groups:?}");
    let s = &sockets(&groups[0])[0];
    assert_eq!(s["unread_bytes"], 100, "{s}");
    assert_eq!(s["eof_read"], false, "{s}");
}

/// A server that listens and never accepts, inside a network namespace: its 5
/// connections wait in CLOSE_WAIT in the accept queue with no fd; all are listed
/// under the server with the listener's fd, none as orphaned, with the namespace.
#[test]
fn never_accepted_in_a_network_namespace() {
    let ns = Netns::new(&format!("tcpstate-linger-{}", std::process::id()));
    let a = "127.0.0.1:18080";
    let mut server = leak_server(Some(&ns.0), a, "0", "no-accept");
    let lfd: u64 = server
        .line()
        .strip_prefix("listening fd ")
        .unwrap()
        .parse()
        .unwrap();
    Proc::run(Some(&ns.0), &["leak-client", "--addr", a, "--conns", "5"]);
    std::thread::sleep(Duration::from_millis(200));
    let (groups, _, _) = linger_once(&["--lport", "18080"]);
    assert_eq!(groups.len(), 1, "none orphaned: {groups:?}");
    let g = &groups[0];
    assert_eq!(g["pid"], server.pid());
    assert_eq!(g["count"], 5);
    for s in sockets(g) {
        assert_eq!(s["accepted"], false, "{s}");
        assert_eq!(s["fd"], Value::Null, "{s}");
        assert_eq!(s["listener_fd"], lfd, "{s}");
        assert_eq!(s["netns"], ns.inode(), "{s}");
    }
    assert_eq!(g["diagnosis"]["never_accepted"], 5, "{g}");
    let l = &g["listeners"][0];
    assert_eq!(l["listener_fd"], lfd);
    assert_eq!(l["accept_queue"], 5);
    assert!(l["accept_queue_max"].as_u64().unwrap() >= 5, "{l}");
    drop(server);
}

/// The classic leaky echo server (IPv6): it answers one request per connection and
/// goes back to accept() without reading again or closing. Diagnosed as "stopped
/// reading", with its real fds and exact ages (seen entering CLOSE_WAIT).
#[test]
fn leaky_echo_server_stopped_reading_ipv6() {
    let port = free_port("::1");
    let p = port.to_string();
    let a = sock_addr("::1", port);
    let mut tracer = Tracer::start(&[
        "linger",
        "--json",
        "--min-age",
        "0",
        "--duration",
        "4",
        "--port",
        &p,
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    let mut server = leak_server(None, &a, "3", "echo-leak");
    Proc::run(
        None,
        &[
            "leak-client",
            "--addr",
            &a,
            "--conns",
            "3",
            "--send",
            "10",
            "--reply",
        ],
    );
    let held = fds(&server.line());
    let (out, err, st) = tracer.stop_after_exit();
    assert!(st.success(), "{err:?}");
    let (groups, _, _) = split(&out);
    assert_eq!(groups.len(), 1, "{groups:?}");
    let g = &groups[0];
    assert_eq!(g["pid"], server.pid());
    assert_eq!(group_fds(g), held);
    assert_eq!(g["diagnosis"]["stopped_reading"], 3, "{g}");
    for s in sockets(g) {
        assert_eq!(s["age_is_lower_bound"], false, "{s}");
        assert!(s["age_ms"].as_f64().unwrap() < 4000.0, "{s}");
        assert_eq!(s["eof_read"], false);
    }
    assert!(g["growth_per_s"].as_f64().unwrap() > 0.0, "{g}");
    assert!(g["fd_exhaustion_s"].as_f64().is_some(), "{g}");
}

/// A connection reset by its peer while the server keeps its fd: a dead connection,
/// in state CLOSE with ECONNRESET, shown by `--state CLOSE`.
#[test]
fn reset_connection_still_held_shows_under_state_close() {
    let port = free_port("127.0.0.1");
    let a = sock_addr("127.0.0.1", port);
    let mut server = leak_server(None, &a, "1", "read-nothing");
    Proc::run(None, &["leak-client", "--addr", &a, "--reset"]);
    let held = fds(&server.line());
    let (groups, reports, _) = linger_once(&["--state", "CLOSE", "--lport", &port.to_string()]);
    assert_eq!(reports[0]["state"], "CLOSE");
    assert_eq!(groups.len(), 1, "{groups:?}");
    let g = &groups[0];
    assert_eq!(g["pid"], server.pid());
    assert_eq!(group_fds(g), held);
    assert_eq!(sockets(g)[0]["sk_err"], libc::ECONNRESET, "{g}");
    assert_eq!(g["diagnosis"]["dead"], 1);
}
