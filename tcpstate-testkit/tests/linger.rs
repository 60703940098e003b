//! `tcpstate linger` against the real kernel: real processes hold real sockets in
//! CLOSE_WAIT; the report must name the holder and its fds, never the peer. Needs root;
//! run by `cargo xtask test`.

mod common;

use std::{collections::BTreeSet, process::Command, time::Duration};

use common::*;
use serde_json::Value;

fn addr(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

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
    let a = addr(ip, port);
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
        let a = addr(ip, port);
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
    let a = addr("127.0.0.1", port);
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
        let a = addr("127.0.0.1", port);
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
    let a = addr("127.0.0.1", port);
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
    let a = addr("127.0.0.1", port);
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
