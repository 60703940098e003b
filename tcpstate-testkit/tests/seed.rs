//! Owners of sockets older than tcpstate, by each route the kernel allows (the
//! direct `seed_owners`, or `seed_index` + `seed_adopt` where the verifier refuses
//! it), and what a kernel that refuses an optional program gives: the command runs,
//! warns once, and says so in its summary (text and JSON).
//!
//! `TCPSTATE_TEST_REFUSE=prog,...` makes tcpstate load those programs against an
//! attach point that does not fit them, so the kernel's verifier refuses them for
//! real (the timer probe's refusal is simulated: see `probe::features`).

mod common;

use std::{process::Command, time::Duration};

use common::*;
use serde_json::Value;

/// `trace ARGS` with `TCPSTATE_TEST_REFUSE` set to `refuse` (when not empty).
fn tracer(args: &[&str], refuse: &str) -> Tracer {
    let mut cmd = Command::new(tcpstate_bin());
    cmd.args(args);
    if !refuse.is_empty() {
        cmd.env("TCPSTATE_TEST_REFUSE", refuse);
    }
    Tracer::spawn(cmd)
}

/// A listener that predates the tracer, with `before` connections already waiting
/// in its accept queue (ESTABLISHED, no fd) at startup and `after` more that arrive
/// once it runs; every client closes before the server accepts. Each connection's
/// ESTABLISHED -> CLOSE_WAIT runs in its client's context (softirq on loopback), so
/// only the seed can name the server: the queued ones from the accept-queue walk,
/// the later ones from the listener's record cloned into each.
fn listener_older_than_tracer(ip: &str, refuse: &str) {
    const BEFORE: usize = 5;
    const AFTER: usize = 4;
    let port = free_port(ip);
    let addr = sock_addr(ip, port);
    let all = (BEFORE + AFTER).to_string();
    let mut server = Kit::spawn(&["late-server", "--addr", &addr, "--conns", &all]);
    assert!(server.line().starts_with("ready"));
    let sp = server.pid();
    let mut queued = Kit::spawn(&[
        "connect-hold",
        "--addr",
        &addr,
        "--conns",
        &BEFORE.to_string(),
    ]);
    assert!(queued.line().starts_with("done"));
    let mut t = tracer(
        &[
            "trace",
            "--json",
            "--port",
            &port.to_string(),
            "--pid",
            &sp.to_string(),
        ],
        refuse,
    );
    let mut later = Kit::spawn(&[
        "connect-close",
        "--addr",
        &addr,
        "--conns",
        &AFTER.to_string(),
    ]);
    assert!(later.line().starts_with("done"));
    later.finish();
    queued.write_stdin(b"go\n");
    assert!(queued.line().starts_with("closed"));
    queued.finish();
    // Let the FINs arrive: every connection is in CLOSE_WAIT, still unaccepted.
    std::thread::sleep(Duration::from_millis(300));
    server.write_stdin(b"go\n");
    assert!(server.line().starts_with("accepted"));
    server.finish();
    let (out, err, status) = t.stop();
    assert!(status.success(), "{err:?}");
    assert!(
        !err.iter().any(|l| l.contains("warning")),
        "no degradation expected: {err:?}"
    );
    let lines = json_lines(&out);
    let s = summary(&lines);
    assert_eq!(s["lost"], 0, "{s}");
    assert_eq!(s["degraded"], serde_json::json!([]), "{s}");
    let ts = transitions(&lines);
    assert!(ts.iter().all(|t| t["pid"] == sp), "{out}");
    let cw: Vec<&&Value> = ts
        .iter()
        .filter(|t| t["old"] == "ESTABLISHED" && t["new"] == "CLOSE_WAIT")
        .collect();
    assert_eq!(cw.len(), BEFORE + AFTER, "{out}");
    assert!(cw.iter().all(|t| t["owner_from"] == "listener"), "{out}");
    let last_ack: Vec<&&Value> = ts.iter().filter(|t| t["new"] == "LAST_ACK").collect();
    assert_eq!(last_ack.len(), BEFORE + AFTER, "{out}");
    assert!(
        last_ack.iter().all(|t| t["owner_from"] == "socket"),
        "{out}"
    );
    // The queued ones: ESTABLISHED -> CLOSE_WAIT -> LAST_ACK -> CLOSE; the later
    // ones all 5 from LISTEN -> SYN_RECV; and the listener's own close.
    assert_eq!(ts.len(), 3 * BEFORE + 5 * AFTER + 1, "{out}");
}

#[test]
fn listener_older_than_tracer_ipv4() {
    listener_older_than_tracer("127.0.0.1", "");
}

#[test]
fn listener_older_than_tracer_ipv6() {
    listener_older_than_tracer("::1", "");
}

/// The same through the two-step route (`seed_index` + `seed_adopt`), forced by
/// refusing `seed_owners`: on kernels where the direct route loads, this is the only
/// test of the other.
#[test]
fn listener_older_than_tracer_two_step_ipv4() {
    listener_older_than_tracer("127.0.0.1", "seed_owners");
}

#[test]
fn listener_older_than_tracer_two_step_ipv6() {
    listener_older_than_tracer("::1", "seed_owners");
}

/// Both seed routes refused: trace runs, warns once, and its summary names the
/// degradation; owners it cannot know are unknown (null), never the peer.
#[test]
fn refused_seed_degrades_and_says_so() {
    let port = free_port("127.0.0.1");
    let addr = sock_addr("127.0.0.1", port);
    let mut server = Kit::spawn(&["late-server", "--addr", &addr, "--conns", "3"]);
    assert!(server.line().starts_with("ready"));
    let refuse = "seed_owners,seed_index";
    let mut t = tracer(&["trace", "--json", "--port", &port.to_string()], refuse);
    let mut client = Kit::spawn(&["connect-close", "--addr", &addr, "--conns", "3"]);
    assert!(client.line().starts_with("done"));
    let cp = client.pid();
    client.finish();
    std::thread::sleep(Duration::from_millis(300));
    server.write_stdin(b"go\n");
    assert!(server.line().starts_with("accepted"));
    server.finish();
    let (out, err, status) = t.stop();
    assert!(status.success(), "{err:?}");
    let lines = json_lines(&out);
    let s = summary(&lines);
    assert_eq!(s["degraded"], serde_json::json!(["owner_seed"]), "{s}");
    assert_eq!(s["lost"], 0, "{s}");
    let ts = transitions(&lines);
    let cw: Vec<&&Value> = ts
        .iter()
        .filter(|t| t["old"] == "ESTABLISHED" && t["new"] == "CLOSE_WAIT")
        .collect();
    assert_eq!(cw.len(), 3, "{out}");
    // The listener predates tcpstate: without the seed its children have no owner
    // until the server's own close; in the client's softirq it is unknown, not cp.
    assert!(
        cw.iter().all(|t| t["pid"].is_null() && t["pid"] != cp),
        "{out}"
    );

    // The warning came before "attached" (Tracer::spawn kept it); run once more to
    // read every stderr line: exactly one warning, naming what is lost.
    let out = Command::new(tcpstate_bin())
        .args(["trace", "--duration", "1"])
        .env("TCPSTATE_TEST_REFUSE", refuse)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("owners of sockets older than tcpstate: unknown"),
        "{err}"
    );
    // The text summary says it too.
    assert!(
        err.lines()
            .last()
            .is_some_and(|l| l.contains("degraded: owner_seed")),
        "{err}"
    );
}

/// The TIME_WAIT timer probe refused: hist still runs, warns once and reports
/// `time_wait_expiry` in its JSON summary.
#[test]
fn refused_timer_probe_degrades_hist() {
    let out = Command::new(tcpstate_bin())
        .args(["hist", "--json", "--duration", "1", "--state", "TIME_WAIT"])
        .env("TCPSTATE_TEST_REFUSE", "tw_timer_expire")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains("TIME_WAIT expiries not seen"), "{err}");
    let lines = json_lines(&String::from_utf8_lossy(&out.stdout));
    let s = summary(&lines);
    assert_eq!(
        s["degraded"],
        serde_json::json!(["time_wait_expiry"]),
        "{s}"
    );
}

/// A core program refused (here linger's fd walk): the command stops at once with
/// one line naming the kernel feature it needs and since which kernel it exists.
#[test]
fn refused_core_program_stops_with_one_line() {
    let out = Command::new(tcpstate_bin())
        .args(["linger", "--duration", "1"])
        .env("TCPSTATE_TEST_REFUSE", "task_sockets")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("task_sockets") && err.contains("task_file BPF iterator (Linux 5.8)"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
}
