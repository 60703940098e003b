//! `tcpstate trace` against the real kernel: real loopback connections between real
//! processes, exact transition sequences and owners. Needs root; run by `cargo xtask test`.

mod common;

use std::{
    collections::BTreeMap,
    io::BufReader,
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

type Seq = Vec<(String, String)>;

/// Transitions grouped per socket, in order of arrival.
fn per_socket(ts: &[&Value]) -> BTreeMap<String, Vec<Value>> {
    let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for t in ts {
        m.entry(t["sock"].as_str().unwrap().to_string())
            .or_default()
            .push((*t).clone());
    }
    m
}

fn seq(evs: &[Value]) -> Seq {
    evs.iter()
        .map(|e| {
            (
                e["old"].as_str().unwrap().to_string(),
                e["new"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn s(pairs: &[(&str, &str)]) -> Seq {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// Owner of each transition: `Some(pid)` or `None` (null).
fn owners(evs: &[Value]) -> Vec<Option<u64>> {
    evs.iter().map(|e| e["pid"].as_u64()).collect()
}

/// Where each transition's owner came from: "socket", "listener" or "" (null).
fn owner_froms(evs: &[Value]) -> Vec<&str> {
    evs.iter()
        .map(|e| e["owner_from"].as_str().unwrap_or(""))
        .collect()
}

struct Expect {
    client: Seq,
    server: Seq,
}

const CLIENT_CLOSE: &[(&str, &str)] = &[
    ("CLOSE", "SYN_SENT"),
    ("SYN_SENT", "ESTABLISHED"),
    ("ESTABLISHED", "FIN_WAIT1"),
    ("FIN_WAIT1", "FIN_WAIT2"),
    ("FIN_WAIT2", "CLOSE"),
];
const PASSIVE_CLOSE: &[(&str, &str)] = &[
    ("ESTABLISHED", "CLOSE_WAIT"),
    ("CLOSE_WAIT", "LAST_ACK"),
    ("LAST_ACK", "CLOSE"),
];

fn expect(mode: &str) -> Expect {
    let client_open = s(&[("CLOSE", "SYN_SENT"), ("SYN_SENT", "ESTABLISHED")]);
    let server_open = s(&[("LISTEN", "SYN_RECV"), ("SYN_RECV", "ESTABLISHED")]);
    let active = s(&CLIENT_CLOSE[2..]);
    let passive = s(PASSIVE_CLOSE);
    let reset = s(&[("ESTABLISHED", "CLOSE")]);
    let join = |a: &Seq, b: &Seq| a.iter().chain(b).cloned().collect::<Seq>();
    match mode {
        "client-close" => Expect {
            client: join(&client_open, &active),
            server: join(&server_open, &passive),
        },
        "server-close" => Expect {
            client: join(&client_open, &passive),
            server: join(&server_open, &active),
        },
        "reset" => Expect {
            client: join(&client_open, &reset),
            server: join(&server_open, &reset),
        },
        _ => unreachable!(),
    }
}

/// Runs `conns` connections in `mode` between two processes on `ip` under a tracer
/// filtered to the port, and checks every transition and owner exactly.
fn exact_pair(ip: &str, mode: &str, conns: usize) {
    let port = free_port(ip);
    let mut tracer = Tracer::start(&["trace", "--json", "--port", &port.to_string()]);
    let (server, client) = run_pair(ip, port, conns as u32, mode);
    let (out, err, status) = tracer.stop();
    assert!(status.success(), "tcpstate failed: {status} {err:?}");
    let lines = json_lines(&out);
    let sum = summary(&lines);
    assert_eq!(sum["lost"], 0, "{sum}");
    let ts = transitions(&lines);
    let e = expect(mode);
    let per_conn = e.client.len() + e.server.len();
    assert_eq!(
        ts.len(),
        per_conn * conns + 2,
        "exactly {per_conn} transitions per connection plus the listener's two:\n{out}"
    );
    let (server, client) = (u64::from(server), u64::from(client));
    let fam = if ip.contains(':') { 6 } else { 4 };
    let (mut n_client, mut n_server, mut n_listener) = (0, 0, 0);
    for (sock, evs) in per_socket(&ts) {
        let sq = seq(&evs);
        let own = owners(&evs);
        for ev in &evs {
            assert_eq!(ev["family"], fam);
            assert_eq!(ev["saddr"], ip);
            // connect() picks the local port after CLOSE->SYN_SENT (tcp_v4_connect).
            if ev["new"] != "SYN_SENT" {
                assert_ne!(ev["sport"], 0, "{ev}");
            }
        }
        let from = owner_froms(&evs);
        if sq == s(&[("CLOSE", "LISTEN"), ("LISTEN", "CLOSE")]) {
            n_listener += 1;
            assert_eq!(own, vec![Some(server); 2], "listener {sock}");
            assert_eq!(from, vec!["socket"; 2], "listener {sock}");
        } else if sq[0].0 == "CLOSE" {
            n_client += 1;
            assert_eq!(sq, e.client, "client socket {sock}");
            // Learned at connect(), carried through softirq transitions, including
            // those that ran in the server's context on loopback.
            assert_eq!(
                own,
                vec![Some(client); sq.len()],
                "client socket {sock}: {evs:?}"
            );
            assert_eq!(from, vec!["socket"; sq.len()], "client socket {sock}");
            for ev in &evs {
                assert_eq!(ev["comm"], "tcpkit");
                assert_eq!(ev["daddr"], ip);
                assert_eq!(ev["dport"], port);
            }
        } else {
            n_server += 1;
            assert_eq!(sq, e.server, "server socket {sock}");
            // The listener's holder from the start (the child's record is cloned
            // from the listener's), never the client whose segments drove the
            // softirq transitions; "socket" from the server's own close() on.
            assert_eq!(
                own,
                vec![Some(server); sq.len()],
                "server socket {sock}: {evs:?}"
            );
            let closes = sq
                .iter()
                .position(|(o, n)| {
                    (o == "ESTABLISHED" && n == "FIN_WAIT1")
                        || (o == "CLOSE_WAIT" && n == "LAST_ACK")
                })
                .unwrap_or(sq.len());
            let mut want = vec!["listener"; closes];
            want.extend(vec!["socket"; sq.len() - closes]);
            assert_eq!(from, want, "server socket {sock}: {evs:?}");
            // Its own cookie and 4-tuple from LISTEN -> SYN_RECV on, on every kernel
            // (before 6.15 the probe defers that transition until they are set).
            for ev in &evs {
                assert_eq!(ev["sport"], port, "{ev}");
                assert_ne!(ev["dport"], 0, "{ev}");
                assert_eq!(ev["daddr"], ip, "{ev}");
            }
        }
        // Durations: unknown for a socket's first transition, measured afterwards.
        assert!(evs[0]["prev_ms"].is_null(), "{sock}");
        for ev in &evs[1..] {
            assert!(ev["prev_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{ev}");
        }
    }
    assert_eq!((n_client, n_server, n_listener), (conns, conns, 1));
}

/// 10N + 2 for N = 100 connections: each one's 5 + 5 transitions, exactly, and the
/// listener's two.
#[test]
fn exact_ten_per_connection_ipv4() {
    exact_pair("127.0.0.1", "client-close", 100);
}

#[test]
fn exact_ten_per_connection_ipv6() {
    exact_pair("::1", "client-close", 100);
}

#[test]
fn client_closes_first_ipv4() {
    exact_pair("127.0.0.1", "client-close", 5);
}

#[test]
fn client_closes_first_ipv6() {
    exact_pair("::1", "client-close", 5);
}

#[test]
fn server_closes_first_ipv4() {
    exact_pair("127.0.0.1", "server-close", 5);
}

#[test]
fn server_closes_first_ipv6() {
    exact_pair("::1", "server-close", 5);
}

#[test]
fn reset_ipv4() {
    exact_pair("127.0.0.1", "reset", 5);
}

#[test]
fn reset_ipv6() {
    exact_pair("::1", "reset", 5);
}

/// Under connection churn every transition arrives exactly once and the kernel skips
/// no run of the probe (the BTF tracepoint's recursion_misses stay at zero).
#[test]
fn churn_is_exact_and_nothing_is_lost() {
    const N: usize = 4000;
    let port = free_port("127.0.0.1");
    let mut tracer = Tracer::start(&["--json", "--port", &port.to_string()]);
    churn(port, N);
    let (out, err, status) = tracer.stop();
    assert!(status.success(), "{err:?}");
    let lines = json_lines(&out);
    let sum = summary(&lines);
    assert_eq!(sum["lost"], 0, "{sum}");
    assert_eq!(sum["lost_ringbuf"], 0, "{sum}");
    assert_eq!(sum["lost_skipped"], 0, "{sum}");
    assert_eq!(sum["untracked"], 0, "{sum}");
    let ts = transitions(&lines);
    assert_eq!(ts.len(), 10 * N + 2);
    // The probe was called for every one of them (and for other ports' transitions
    // on this host, which its filter dropped).
    let calls = sum["probe_calls"].as_u64().expect("probe_calls");
    assert!(calls >= ts.len() as u64, "{sum}");
    let socks = per_socket(&ts);
    assert_eq!(socks.len(), 2 * N + 1);
    let mut counts: BTreeMap<Seq, usize> = BTreeMap::new();
    for evs in socks.values() {
        *counts.entry(seq(evs)).or_default() += 1;
    }
    let e = expect("client-close");
    assert_eq!(counts.get(&e.client), Some(&N), "{counts:?}");
    assert_eq!(counts.get(&e.server), Some(&N), "{counts:?}");
}

/// A port free on both 127.0.0.1 and ::1.
fn free_port_v4_and_v6() -> u16 {
    loop {
        let p = free_port("127.0.0.1");
        if std::net::TcpListener::bind(("::1", p)).is_ok() {
            return p;
        }
    }
}

#[test]
fn filters_state_family_and_pid() {
    let port = free_port("127.0.0.1");
    let p = port.to_string();
    // A second port that carries one IPv6 connection, so that the family filters are
    // seen to keep something and to drop something.
    let port6 = free_port_v4_and_v6();
    let p6 = port6.to_string();
    let addr = format!("127.0.0.1:{port}");
    let mut server = Kit::server(&addr, "3", "client-close");
    let server_pid = server.pid();
    let sp = server_pid.to_string();
    let mut by_state = Tracer::start(&["trace", "--json", "--port", &p, "--state", "close_wait"]);
    let mut by_pid = Tracer::start(&["trace", "--json", "--port", &p, "--pid", &sp]);
    let both = ["trace", "--json", "--port", &p, "--port", &p6];
    let mut v6_only = Tracer::start(&[&both[..], &["-6"]].concat());
    let mut v4_only = Tracer::start(&[&both[..], &["-4"]].concat());
    let mut client = Kit::client(&addr, "3", "client-close", &[]);
    assert!(client.line().starts_with("done"));
    client.finish();
    server.finish();
    run_pair("::1", port6, 1, "client-close");

    let lines = json_lines(&by_state.stop().0);
    let ts = transitions(&lines);
    assert_eq!(ts.len(), 6, "into and out of CLOSE_WAIT, 3 times");
    assert!(ts
        .iter()
        .all(|t| t["old"] == "CLOSE_WAIT" || t["new"] == "CLOSE_WAIT"));

    let lines = json_lines(&by_pid.stop().0);
    let ts = transitions(&lines);
    // The listener's close (it listened before the tracer started; the startup seed
    // names its holder) + all 5 transitions per accepted socket (the listener's
    // holder from LISTEN -> SYN_RECV on).
    assert_eq!(ts.len(), 1 + 3 * 5, "{ts:?}");
    assert!(ts.iter().all(|t| t["pid"] == server_pid));

    // -6 drops the 3 IPv4 connections and keeps the IPv6 one on the other port:
    // 10 transitions plus its listener's two. Nothing traced at all fails here.
    let lines = json_lines(&v6_only.stop().0);
    let ts = transitions(&lines);
    assert_eq!(ts.len(), 10 + 2, "{ts:?}");
    assert!(ts.iter().all(|t| t["family"] == 6 && t["saddr"] == "::1"));
    assert_eq!(summary(&lines)["lost"], 0);

    // -4, the mirror: the 3 IPv4 connections and the listener's close, no IPv6.
    let lines = json_lines(&v4_only.stop().0);
    let ts = transitions(&lines);
    assert_eq!(ts.len(), 3 * 10 + 1, "{ts:?}");
    assert!(ts
        .iter()
        .all(|t| t["family"] == 4 && t["saddr"] == "127.0.0.1"));
    assert_eq!(summary(&lines)["lost"], 0);
}

/// A process name with escape bytes reaches neither the terminal raw nor breaks JSON.
#[test]
fn hostile_process_names_are_escaped() {
    let port = free_port("127.0.0.1");
    let p = port.to_string();
    let addr = format!("127.0.0.1:{port}");
    let mut table = Tracer::start(&["trace", "--port", &p]);
    let mut json = Tracer::start(&["trace", "--json", "--port", &p]);
    let mut server = Kit::spawn(&["server", "--addr", &addr, "--mode", "client-close"]);
    assert!(server.line().starts_with("ready"));
    let mut client = Kit::spawn(&[
        "--comm",
        "ev\u{1b}[2Jil\u{7}",
        "client",
        "--addr",
        &addr,
        "--mode",
        "client-close",
    ]);
    assert!(client.line().starts_with("done"));
    client.finish();
    server.finish();

    let (out, _, st) = table.stop();
    assert!(st.success());
    assert!(out.starts_with("TIME "), "{out}");
    assert!(!out.bytes().any(|b| b == 0x1b || b == 0x07), "{out:?}");
    assert!(out.contains("ev\\x1b[2Jil\\x07"), "{out}");

    let lines = json_lines(&json.stop().0);
    let names: Vec<&Value> = transitions(&lines)
        .into_iter()
        .filter(|t| t["sport"] != port && t["pid"].is_u64())
        .map(|t| &t["comm"])
        .collect();
    assert_eq!(names.len(), 5);
    assert!(names.iter().all(|n| *n == "ev\\x1b[2Jil\\x07"), "{names:?}");
}

#[test]
fn duration_and_sigterm_end_with_a_summary() {
    let start = Instant::now();
    let out = Command::new(tcpstate_bin())
        .args(["trace", "--json", "--duration", "700ms", "--port", "1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(start.elapsed() < Duration::from_secs(20));
    let lines = json_lines(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(lines.len(), 1);
    assert_eq!(summary(&lines)["lost"], 0);

    // Table mode: the summary goes to stderr, also on SIGTERM.
    let mut child = Command::new(tcpstate_bin())
        .args(["--port", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    wait_attached(&mut err);
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert!(st.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    // Nothing on port 1: a summary of exactly 0 events, 0 lost ("10 lost" fails).
    let line = rest
        .lines()
        .find(|l| l.contains(" events, "))
        .unwrap_or_else(|| panic!("no summary: {rest}"));
    assert_eq!(count_before(line, "events"), 0, "{line}");
    assert_eq!(count_before(line, "lost"), 0, "{line}");
}

#[test]
fn bad_values_exit_2_with_one_line() {
    assert_usage_errors(&[
        (&["--port", "0"], "--port"),
        (&["--port", "70000"], "--port"),
        (&["trace", "--duration", "abc"], "--duration"),
        (&["trace", "--duration", "0"], "--duration"),
        (&["trace", "--state", "SLEEPING"], "SLEEPING"),
        (&["--bogus"], "--bogus"),
        (&["-4", "-6"], "--ipv6"),
        (&["--pid", "0"], "--pid"),
        (&["--pid", "x"], "--pid"),
        (&["--lport", "0"], "--lport"),
        (&["--rport", "70000"], "--rport"),
        (&["trace", "--port", "1", "--port", "x"], "--port"),
        (&["trace", "--json", "--interval", "1s"], "--interval"),
        (&["--log-level", "loud"], "--log-level"),
        (&["linger", "--log-level", "loud"], "--log-level"),
    ]);
}

#[test]
fn without_privileges_says_which() {
    let out = Command::new(tcpstate_bin())
        .args(["--json", "--duration", "1"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("CAP_BPF") && err.contains("CAP_PERFMON") && err.contains("root"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
    assert!(out.stdout.is_empty());
}

/// A server that accepts late: its connections reach CLOSE_WAIT in the accept queue,
/// before any accept(). `trace --pid SERVER` still shows every ESTABLISHED ->
/// CLOSE_WAIT, owned by the server as the listener's holder, then the server's own
/// close() as "socket".
fn late_accept(ip: &str) {
    const N: usize = 6;
    let port = free_port(ip);
    let addr = sock_addr(ip, port);
    let mut server = Kit::spawn(&["late-server", "--addr", &addr, "--conns", &N.to_string()]);
    assert!(server.line().starts_with("ready"));
    let sp = server.pid();
    let mut tracer = Tracer::start(&[
        "trace",
        "--json",
        "--port",
        &port.to_string(),
        "--pid",
        &sp.to_string(),
    ]);
    let mut client = Kit::spawn(&["connect-close", "--addr", &addr, "--conns", &N.to_string()]);
    assert!(client.line().starts_with("done"));
    client.finish();
    // Let the FINs arrive: every connection is in CLOSE_WAIT, still unaccepted.
    std::thread::sleep(Duration::from_millis(200));
    server.write_stdin(b"go\n");
    assert!(server.line().starts_with("accepted"));
    server.finish();
    let (out, err, status) = tracer.stop();
    assert!(status.success(), "{err:?}");
    let lines = json_lines(&out);
    assert_eq!(summary(&lines)["lost"], 0);
    let ts = transitions(&lines);
    assert!(ts.iter().all(|t| t["pid"] == sp), "{out}");
    let cw: Vec<&&Value> = ts
        .iter()
        .filter(|t| t["old"] == "ESTABLISHED" && t["new"] == "CLOSE_WAIT")
        .collect();
    assert_eq!(cw.len(), N, "{out}");
    assert!(cw.iter().all(|t| t["owner_from"] == "listener"), "{out}");
    let last_ack: Vec<&&Value> = ts.iter().filter(|t| t["new"] == "LAST_ACK").collect();
    assert_eq!(last_ack.len(), N, "{out}");
    assert!(
        last_ack.iter().all(|t| t["owner_from"] == "socket"),
        "{out}"
    );
    // Each accepted socket's 5 transitions, and the listener's close (it listened
    // before the tracer started; the startup seed named its holder).
    assert_eq!(ts.len(), 5 * N + 1, "{out}");
}

#[test]
fn late_accept_shows_close_wait_owned_by_the_listener_ipv4() {
    late_accept("127.0.0.1");
}

#[test]
fn late_accept_shows_close_wait_owned_by_the_listener_ipv6() {
    late_accept("::1");
}

/// A prefork server: the parent listens, a forked child accepts and closes. Until
/// the child shows itself the owner is the listener's holder (the parent); the
/// child's close() transitions name the child.
fn prefork(ip: &str) {
    const N: usize = 4;
    let port = free_port(ip);
    let addr = sock_addr(ip, port);
    let mut tracer = Tracer::start(&["trace", "--json", "--port", &port.to_string()]);
    let mut server = Kit::spawn(&["prefork-server", "--addr", &addr, "--conns", &N.to_string()]);
    let ready = server.line();
    let parent = u64::from(server.pid());
    let child: u64 = ready
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{ready}"));
    // The client closes at once (the server sends no greeting).
    let mut client = Kit::spawn(&["connect-close", "--addr", &addr, "--conns", &N.to_string()]);
    assert!(client.line().starts_with("done"));
    client.finish();
    server.finish();
    let (out, err, status) = tracer.stop();
    assert!(status.success(), "{err:?}");
    let lines = json_lines(&out);
    assert_eq!(summary(&lines)["lost"], 0);
    let ts = transitions(&lines);
    let mut accepted = 0;
    for (sock, evs) in per_socket(&ts) {
        if evs[0]["old"] != "LISTEN" || evs[0]["new"] != "SYN_RECV" {
            continue;
        }
        accepted += 1;
        let sq = seq(&evs);
        assert_eq!(
            sq,
            s(&[
                ("LISTEN", "SYN_RECV"),
                ("SYN_RECV", "ESTABLISHED"),
                ("ESTABLISHED", "CLOSE_WAIT"),
                ("CLOSE_WAIT", "LAST_ACK"),
                ("LAST_ACK", "CLOSE"),
            ]),
            "{sock}"
        );
        let own = owners(&evs);
        assert_eq!(&own[..3], &[Some(parent); 3], "{sock}: {evs:?}");
        assert_eq!(&own[3..], &[Some(child); 2], "{sock}: {evs:?}");
        assert_eq!(
            owner_froms(&evs),
            vec!["listener", "listener", "listener", "socket", "socket"],
            "{sock}"
        );
    }
    assert_eq!(accepted, N, "{out}");
}

#[test]
fn prefork_child_owns_what_it_closes_ipv4() {
    prefork("127.0.0.1");
}

#[test]
fn prefork_child_owns_what_it_closes_ipv6() {
    prefork("::1");
}
