//! `tcpstate serve` scraped by a real Prometheus (Debian's `prometheus` 2.42, run by
//! the test with a temporary config and storage): PromQL must see the CLOSE_WAIT
//! sockets a leaking process holds, by its name, and nothing once it closed them;
//! the connections' SYN_SENT times; no loss. Over HTTPS with basic auth too. Needs
//! root; run by `cargo xtask test`.

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{free_port, tcpstate_bin, Kit, Tracer};
use serde_json::Value;

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "tcpstate-serve-{tag}-{}-{}",
            std::process::id(),
            free_port("127.0.0.1")
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A Prometheus scraping one target every second; killed and its storage removed
/// on drop, also when a test fails.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Prometheus {
    /// `scrape` is the YAML of one scrape config's target part (scheme, auth...).
    fn start(target: &str, extra: &str) -> Prometheus {
        let dir = TempDir::new("prom");
        let cfg = dir.0.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: tcpstate\n    static_configs:\n      - targets: ['{target}']\n{extra}"
            ),
        )
        .unwrap();
        let port = free_port("127.0.0.1");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (Debian package `prometheus`)");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// An instant query's result vector (empty on any error yet).
    fn query(&self, q: &str) -> Vec<Value> {
        let out = Command::new("curl")
            .args(["-s", "-G", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .arg("--data-urlencode")
            .arg(format!("query={q}"))
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v["data"]["result"].as_array().cloned())
            .unwrap_or_default()
    }

    /// The single value of `q`, once `want(value)` holds (None: no series), within
    /// 30 s; panics with the last result otherwise.
    fn wait_for(&self, q: &str, want: impl Fn(Option<f64>) -> bool) -> Option<f64> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.query(q);
            let v = match r.as_slice() {
                [] => None,
                [one] => one["value"][1].as_str().and_then(|s| s.parse().ok()),
                many => panic!("{q}: more than one series: {many:?}"),
            };
            if want(v) {
                return v;
            }
            if Instant::now() > deadline {
                panic!("{q}: still {v:?} after 30 s ({r:?})");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl` a URL: (HTTP status or 0 when there was no HTTP answer, headers, body).
fn curl(url: &str, extra: &[&str]) -> (u32, String, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", "-D", "-", "-k"])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or(("", ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// `tcpstate serve ARGS` on a free port; returns it and the address.
fn serve(args: &[&str]) -> (Tracer, String) {
    let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let mut all = vec!["serve", "--listen", &listen, "--interval", "1s"];
    all.extend_from_slice(args);
    (Tracer::start(&all), listen)
}

/// A leaking server named `comm` holding `n` sockets in CLOSE_WAIT on `port`.
fn leak(comm: &str, port: u16, n: u32) -> (Kit, Kit) {
    let a = format!("127.0.0.1:{port}");
    let n = n.to_string();
    let mut server = Kit::spawn(&[
        "--comm", comm, "server", "--addr", &a, "--conns", &n, "--mode", "hold",
    ]);
    assert!(server.line().starts_with("ready"));
    let mut client = Kit::client(&a, &n, "client-close", &[]);
    assert!(client.line().starts_with("done"));
    assert!(server.line().starts_with("held"));
    (server, client)
}

fn sigterm_exits_cleanly(mut t: Tracer) {
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(t.pid() as i32, libc::SIGTERM) };
    let st = t
        .exit_within(Duration::from_secs(5))
        .expect("exits on SIGTERM");
    assert!(st.success(), "{st}");
}

/// The promtool linter over one scrape.
fn promtool_check(metrics: &str) {
    let mut c = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn prometheus_sees_a_full_accept_queue_by_holder() {
    let port = free_port("127.0.0.1");
    let addr = format!("127.0.0.1:{port}");
    let (t, listen) = serve(&[]);
    let prom = Prometheus::start(&listen, "");
    // listen(fd, 4) and 10 connections never accepted: the queue holds backlog + 1.
    let mut server = Kit::spawn(&[
        "--comm",
        "lq-stuck",
        "backlog-server",
        "--addr",
        &addr,
        "--backlog",
        "4",
    ]);
    assert!(server.line().starts_with("listening fd"));
    let mut client = Kit::spawn(&["burst-client", "--addr", &addr, "--conns", "10"]);
    assert_eq!(client.line(), "connecting 10");
    let sel = format!("comm=\"lq-stuck\",laddr=\"127.0.0.1\",lport=\"{port}\"");
    let q = format!("tcpstate_listen_queue_length{{{sel}}}");
    assert_eq!(prom.wait_for(&q, |v| v == Some(5.0)), Some(5.0), "{q}");
    let q = format!("tcpstate_listen_queue_limit{{{sel}}}");
    assert_eq!(prom.wait_for(&q, |v| v == Some(4.0)), Some(4.0), "{q}");
    let q = format!("count(tcpstate_listen_queue_length{{{sel},netns!=\"\"}})");
    assert_eq!(prom.wait_for(&q, |v| v.is_some()), Some(1.0), "{q}");
    // Closed: the series goes away.
    client.finish();
    server.finish();
    let q = format!("tcpstate_listen_queue_length{{{sel}}}");
    assert_eq!(prom.wait_for(&q, |v| v.is_none()), None);
    sigterm_exits_cleanly(t);
}

/// Listeners' (laddr, lport) labels.
type Listeners = BTreeSet<(String, String)>;

/// The `tcpstate_listen_queue_*` series of each scrape's listeners: (laddr, lport).
fn listen_series(listen: &str, comm: &str) -> Listeners {
    let (st, body) = http_get(listen, "/metrics");
    assert_eq!(st, 200, "{body}");
    let label = |l: &str, k: &str| -> String {
        let from = l.find(&format!("{k}=\"")).expect(k) + k.len() + 2;
        l[from..].split('"').next().unwrap().to_string()
    };
    body.lines()
        .filter(|l| {
            l.starts_with("tcpstate_listen_queue_length{")
                && l.contains(&format!("comm=\"{comm}\""))
        })
        .map(|l| (label(l, "laddr"), label(l, "lport")))
        .collect()
}

/// `--port`, `--lport`, `--rport`, `-4`/`-6` and `--pid` select the listeners whose
/// accept queues are exported, as they select the sockets' series.
#[test]
fn listen_queue_series_follow_the_filters() {
    let (p4, p6) = (free_port("127.0.0.1"), free_port("::1"));
    let start = |addr: String| {
        let mut k = Kit::spawn(&[
            "--comm",
            "lq-filter",
            "backlog-server",
            "--addr",
            &addr,
            "--backlog",
            "4",
        ]);
        assert!(k.line().starts_with("listening fd"));
        k
    };
    let mut v4 = start(format!("127.0.0.1:{p4}"));
    let mut v6 = start(format!("[::1]:{p6}"));
    let (s4, s6) = (p4.to_string(), p6.to_string());
    let pid6 = v6.pid().to_string();
    let want4 = ("127.0.0.1".to_string(), s4.clone());
    let want6 = ("::1".to_string(), s6.clone());
    let cases: Vec<(Vec<&str>, Listeners)> = vec![
        (vec![], [want4.clone(), want6.clone()].into()),
        (vec!["--port", &s4], [want4.clone()].into()),
        (vec!["--lport", &s6], [want6.clone()].into()),
        (vec!["--rport", &s4], [].into()),
        (vec!["-4"], [want4.clone()].into()),
        (vec!["-6"], [want6.clone()].into()),
        (vec!["--pid", &pid6], [want6.clone()].into()),
    ];
    let serves: Vec<_> = cases.iter().map(|(a, _)| serve(a)).collect();
    for ((args, want), (_, listen)) in cases.iter().zip(&serves) {
        // The first walk may still be running: wait for the full answer, then hold it.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut got = listen_series(listen, "lq-filter");
        while got != *want && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(300));
            got = listen_series(listen, "lq-filter");
        }
        assert_eq!(&got, want, "serve {args:?}");
    }
    // Walked again (--interval 1s): the filtered-out listeners never appear.
    std::thread::sleep(Duration::from_millis(2500));
    for ((args, want), (_, listen)) in cases.iter().zip(&serves) {
        assert_eq!(&listen_series(listen, "lq-filter"), want, "serve {args:?}");
    }
    v4.finish();
    v6.finish();
    for (t, _) in serves {
        sigterm_exits_cleanly(t);
    }
}

#[test]
fn prometheus_sees_leaks_by_process_and_syn_sent_times() {
    let port = free_port("127.0.0.1");
    let p = port.to_string();
    let (t, listen) = serve(&["--port", &p]);
    let prom = Prometheus::start(&listen, "");
    let (mut server, mut client) = leak("leaky-cw", port, 5);

    let q = "tcpstate_lingering_sockets{state=\"close_wait\",comm=\"leaky-cw\"}";
    assert_eq!(prom.wait_for(q, |v| v == Some(5.0)), Some(5.0));
    // The 5 connections' SYN_SENT times (the port filter runs in the kernel).
    let q = "tcpstate_state_duration_seconds_count{state=\"syn_sent\"}";
    assert_eq!(prom.wait_for(q, |v| v == Some(5.0)), Some(5.0));
    let q = "tcpstate_state_duration_seconds_bucket{state=\"syn_sent\",le=\"+Inf\"}";
    assert_eq!(prom.wait_for(q, |v| v == Some(5.0)), Some(5.0));
    assert_eq!(
        prom.wait_for("sum(tcpstate_events_lost_total)", |v| v.is_some()),
        Some(0.0)
    );
    assert_eq!(
        prom.wait_for("up{job=\"tcpstate\"}", |v| v.is_some()),
        Some(1.0)
    );
    // `hold` reads nothing: the FIN is unread (not eof_read), and every one was accepted.
    let q = "tcpstate_lingering_eof_read_sockets{state=\"close_wait\",comm=\"leaky-cw\"}";
    assert_eq!(prom.wait_for(q, |v| v.is_some()), Some(0.0));
    let q = "tcpstate_lingering_not_accepted_sockets{state=\"close_wait\",comm=\"leaky-cw\"}";
    assert_eq!(prom.wait_for(q, |v| v.is_some()), Some(0.0));
    // Transitions by state pair, counted in the kernel after the port filter.
    for (old, new, n) in [
        ("close", "listen", 1.0),
        ("close", "syn_sent", 5.0),
        ("listen", "syn_recv", 5.0),
        ("established", "close_wait", 5.0),
    ] {
        let q = format!("tcpstate_transitions_total{{old_state=\"{old}\",new_state=\"{new}\"}}");
        assert_eq!(prom.wait_for(&q, |v| v == Some(n)), Some(n), "{q}");
    }
    let q = "tcpstate_process_fd_usage_ratio{comm=\"leaky-cw\"}";
    let ratio = prom.wait_for(q, |v| v.is_some()).unwrap();
    assert!(ratio > 0.0 && ratio < 1.0, "{ratio}");

    // Both formats, the page, the 404, and promtool's lint.
    let url = format!("http://{listen}");
    let (st, head, body) = curl(&format!("{url}/metrics"), &[]);
    assert_eq!(st, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    promtool_check(&body);
    let (st, head, body) = curl(
        &format!("{url}/metrics"),
        &["-H", "Accept: application/openmetrics-text;version=1.0.0"],
    );
    assert_eq!(st, 200);
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"));
    let (st, _, body) = curl(&format!("{url}/"), &[]);
    assert_eq!(st, 200);
    assert!(body.contains("href=\"/metrics\""));
    assert_eq!(curl(&format!("{url}/nope"), &[]).0, 404);

    // Closed: the series goes away.
    server.finish();
    client.finish();
    let q = "tcpstate_lingering_sockets{comm=\"leaky-cw\"}";
    assert_eq!(prom.wait_for(q, |v| v.is_none()), None);
    sigterm_exits_cleanly(t);
}

fn openssl_cert(dir: &Path) {
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl req -x509");
}

#[test]
fn https_with_basic_auth() {
    let dir = TempDir::new("tls");
    openssl_cert(&dir.0);
    let hash = bcrypt::hash("s3cret", 6).unwrap();
    let web = dir.0.join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\nbasic_auth_users:\n  prom: '{hash}'\n"
        ),
    )
    .unwrap();
    let port = free_port("127.0.0.1");
    let p = port.to_string();
    let (t, listen) = serve(&["--port", &p, "--web-config", web.to_str().unwrap()]);
    let url = format!("https://{listen}/metrics");

    let (st, head, _) = curl(&url, &[]);
    assert_eq!(st, 401, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: basic"),
        "{head}"
    );
    assert_eq!(curl(&url, &["-u", "prom:wrong"]).0, 401);
    assert_eq!(curl(&url, &["-u", "eve:s3cret"]).0, 401);
    assert_eq!(curl(&url, &["-u", "prom:s3cret"]).0, 200);
    // Plain HTTP gets no HTTP answer at all.
    assert_eq!(curl(&format!("http://{listen}/metrics"), &[]).0, 0);

    let prom = Prometheus::start(
        &listen,
        &format!(
            "    scheme: https\n    tls_config:\n      ca_file: {}\n    basic_auth:\n      username: prom\n      password: s3cret\n",
            dir.0.join("cert.pem").display()
        ),
    );
    let (mut server, mut client) = leak("tls-leak", port, 3);
    assert_eq!(
        prom.wait_for("up{job=\"tcpstate\"}", |v| v == Some(1.0)),
        Some(1.0)
    );
    let q = "tcpstate_lingering_sockets{comm=\"tls-leak\"}";
    assert_eq!(prom.wait_for(q, |v| v == Some(3.0)), Some(3.0));
    server.finish();
    client.finish();
    assert_eq!(prom.wait_for(q, |v| v.is_none()), None);
    sigterm_exits_cleanly(t);
}

/// A network namespace of the test's own, deleted on drop: there sock_diag lists
/// only the test's sockets, so totals can be checked exactly while other tests run.
struct Netns(String);

impl Netns {
    fn new() -> Netns {
        Netns::named("")
    }

    /// `tag` tells apart the namespaces of one test.
    fn named(tag: &str) -> Netns {
        let name = format!("tcpstate-serve{tag}-{}", std::process::id());
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }

    fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", self.0))
            .unwrap()
            .ino()
    }

    /// TIME_WAIT sockets in it, as `ss` lists them from inside.
    fn ss_time_wait(&self) -> usize {
        let out = self
            .cmd("ss")
            .args(["-Htan", "state", "time-wait"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).lines().count()
    }

    /// `conns` connections on `port` that the server closes first: its side of each
    /// waits in TIME_WAIT.
    fn time_waits(&self, port: u16, conns: u32) {
        let a = format!("127.0.0.1:{port}");
        let n = conns.to_string();
        let mut s = NsKit::spawn(
            self,
            &[
                "server",
                "--addr",
                &a,
                "--conns",
                &n,
                "--mode",
                "server-close",
            ],
        );
        assert!(s.line().starts_with("ready"));
        let mut c = NsKit::spawn(
            self,
            &[
                "client",
                "--addr",
                &a,
                "--conns",
                &n,
                "--mode",
                "server-close",
            ],
        );
        assert!(c.child.wait().unwrap().success());
        assert!(s.child.wait().unwrap().success());
    }

    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, prog]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// A tcpkit process in the namespace; killed on drop.
struct NsKit {
    child: Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl NsKit {
    fn spawn(ns: &Netns, args: &[&str]) -> NsKit {
        let mut child = ns
            .cmd(common::TCPKIT)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        NsKit { child, out }
    }

    fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        l
    }
}

impl Drop for NsKit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The capability sets of process `pid` (`CapEff`, `CapPrm`, `CapBnd`).
fn cap_sets(pid: u32) -> Vec<(String, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    ["CapEff:", "CapPrm:", "CapBnd:"]
        .iter()
        .map(|k| {
            let v = status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or_else(|| panic!("no {k} in {status}"));
            (k.to_string(), u64::from_str_radix(v.trim(), 16).unwrap())
        })
        .collect()
}

/// Whether any process is in the namespace `inode` now.
fn any_task_in(inode: u64) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|e| std::fs::metadata(e.path().join("ns/net")).is_ok_and(|m| m.ino() == inode))
}

/// After attaching, serve holds no CAP_SYS_ADMIN in any set, and still counts
/// TIME_WAIT exactly in three namespaces: one made before it started (its sockets
/// older than serve), one made after (a new pod, which serve can no longer enter),
/// and one that no process is in and no mount names, kept alive by sockets alone,
/// whose CLOSE_WAIT sockets are reported under their holder too. Checked with a real
/// Prometheus scrape and against `ss` inside each namespace.
#[test]
fn no_sys_admin_and_time_wait_in_every_namespace() {
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    let port = 23000 + (std::process::id() % 500) as u16;
    let before = Netns::named("-tw-before");
    before.time_waits(port, 3);
    let (t, listen) = serve(&[]);
    let pid = t.pid();
    // The drop follows the startup scan, just after "probe attached".
    let deadline = Instant::now() + Duration::from_secs(20);
    while cap_sets(pid).iter().any(|(_, v)| v & CAP_SYS_ADMIN != 0) {
        assert!(Instant::now() < deadline, "still: {:?}", cap_sets(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    let caps = cap_sets(pid);
    // Nor CAP_SYS_PTRACE (19) and CAP_DAC_READ_SEARCH (2): the fd walk counts fds.
    for (k, v) in &caps {
        assert_eq!(v & (CAP_SYS_ADMIN | 1 << 19 | 1 << 2), 0, "{k} {v:x}");
    }
    // What the walks still need is kept (CAP_BPF 39, CAP_PERFMON 38).
    assert_ne!(caps[0].1 & (1 << 38), 0, "{caps:?}");

    let after = Netns::named("-tw-after");
    after.time_waits(port, 4);
    let orphan = Netns::named("-tw-orphan");
    let orphan_ino = orphan.inode();
    let mut holder = Kit::spawn(&[
        "--comm",
        "ns-holder",
        "netns-hold",
        "--netns",
        &format!("/run/netns/{}", orphan.0),
        "--conns",
        "3",
        "--time-wait",
        "5",
    ]);
    assert!(holder.line().starts_with("ready"), "tcpkit netns-hold");
    assert_eq!(orphan.ss_time_wait(), 5);
    // Its bind mount gone and no task in it: only the sockets keep it alive.
    let st = Command::new("ip")
        .args(["netns", "delete", &orphan.0])
        .status()
        .unwrap();
    assert!(st.success());
    assert!(!any_task_in(orphan_ino), "a task is still in the namespace");
    assert_eq!(before.ss_time_wait(), 3);
    assert_eq!(after.ss_time_wait(), 4);

    let prom = Prometheus::start(&listen, "");
    eprintln!(
        "namespaces: before {} after {} orphan {orphan_ino}",
        before.inode(),
        after.inode()
    );
    for (ns, n) in [
        (before.inode(), 3.0),
        (after.inode(), 4.0),
        (orphan_ino, 5.0),
    ] {
        let q = format!("sum(tcpstate_time_wait_sockets{{netns=\"{ns}\"}})");
        assert_eq!(prom.wait_for(&q, |v| v == Some(n)), Some(n), "{q}");
        let q = format!("tcpstate_local_port_range_size{{netns=\"{ns}\"}}");
        assert!(prom.wait_for(&q, |v| v.is_some()).unwrap() > 0.0, "{q}");
    }
    let q = "tcpstate_lingering_sockets{state=\"close_wait\",comm=\"ns-holder\"}";
    assert_eq!(prom.wait_for(q, |v| v == Some(3.0)), Some(3.0));
    // Every family is still there, and nothing was lost.
    let (st, body) = http_get(&listen, "/metrics");
    assert_eq!(st, 200);
    for family in [
        "tcpstate_state_duration_seconds histogram",
        "tcpstate_time_wait_ended_total counter",
        "tcpstate_transitions_total counter",
        "tcpstate_lingering_sockets gauge",
        "tcpstate_process_fd_usage_ratio gauge",
        "tcpstate_time_wait_sockets gauge",
        "tcpstate_local_port_range_size gauge",
        "tcpstate_events_lost_total counter",
        "tcpstate_map_entries gauge",
    ] {
        assert!(body.contains(&format!("# TYPE {family}\n")), "{family}");
    }
    promtool_check(&body);
    assert_eq!(
        prom.wait_for("sum(tcpstate_events_lost_total)", |v| v.is_some()),
        Some(0.0)
    );
    holder.finish();
    sigterm_exits_cleanly(t);
}

/// The sum of one metric's samples whose labels include `label`.
fn metric_sum(body: &str, metric: &str, label: &str) -> Option<f64> {
    let v: Vec<f64> = body
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!v.is_empty()).then(|| v.iter().sum())
}

/// At scale, in two namespaces made after serve dropped CAP_SYS_ADMIN (it cannot
/// enter them): the TIME_WAIT gauge of each equals what `ss -tan state time-wait`
/// lists inside it, with nothing untracked. All within the kernel's 60 s TIME_WAIT,
/// so none has ended meanwhile.
#[test]
fn time_wait_gauges_equal_ss_at_scale() {
    let (na, nb) = (20_000u32, 12_000u32);
    let (t, listen) = serve(&[]);
    let port = 24000 + (std::process::id() % 500) as u16;
    let a = Netns::named("-scale-a");
    let b = Netns::named("-scale-b");
    let t0 = Instant::now();
    std::thread::scope(|s| {
        s.spawn(|| a.time_waits(port, na));
        s.spawn(|| b.time_waits(port, nb));
    });
    let made = t0.elapsed();
    // Fewer than made: a client reusing a port takes the server's TIME_WAIT socket
    // of that 4-tuple (tcp_timewait_state_process(), TCP_TW_SYN), as it would anyway.
    let (sa, sb) = (a.ss_time_wait() as u32, b.ss_time_wait() as u32);
    assert!(sa > na / 3 && sb > nb / 3, "ss: {sa} {sb}, after {made:?}");
    let (ia, ib) = (a.inode(), b.inode());
    let (la, lb) = (format!("netns=\"{ia}\""), format!("netns=\"{ib}\""));
    let got = |body: &str| {
        (
            metric_sum(body, "tcpstate_time_wait_sockets", &la),
            metric_sum(body, "tcpstate_time_wait_sockets", &lb),
        )
    };
    let want = (Some(f64::from(sa)), Some(f64::from(sb)));
    let mut body = String::new();
    while t0.elapsed() < Duration::from_secs(50) {
        let (st, b) = http_get(&listen, "/metrics");
        assert_eq!(st, 200, "{b}");
        body = b;
        if got(&body) == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        got(&body),
        want,
        "after {:?} (made in {made:?})",
        t0.elapsed()
    );
    let lost = metric_sum(&body, "tcpstate_events_lost_total", "reason=\"untracked\"");
    assert_eq!(lost, Some(0.0), "{body}");
    let entries = metric_sum(&body, "tcpstate_map_entries", "map=\"TWS\"").unwrap();
    let capacity = metric_sum(&body, "tcpstate_map_capacity", "map=\"TWS\"").unwrap();
    assert!(
        entries >= f64::from(sa + sb) && capacity >= 262144.0,
        "{entries} {capacity}"
    );
    let equal = t0.elapsed();
    // Their ends the timer never shows: `ss -K` in one namespace, and the other's
    // exit (inet_twsk_purge()); both delete the timers early (inet_twsk_deschedule_put()).
    // Seen within a walk or two, long before the 66 s sweep of unseen ends.
    let st = a
        .cmd("ss")
        .args(["-K", "-Htan", "state", "time-wait"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(a.ss_time_wait(), 0);
    let ib_name = b.0.clone();
    drop(b);
    assert!(!std::path::Path::new(&format!("/run/netns/{ib_name}")).exists());
    let gone = (None, None);
    while t0.elapsed() < Duration::from_secs(45) {
        body = http_get(&listen, "/metrics").1;
        if got(&body) == gone {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(got(&body), gone, "after {:?}", t0.elapsed());
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    eprintln!(
        "{sa} + {sb} TIME_WAIT of {} connections in two namespaces, made in {made:?}, gauges equal after {equal:?}, gone after ss -K and the namespace's exit at {:?}",
        na + nb,
        t0.elapsed()
    );
    sigterm_exits_cleanly(t);
}

#[test]
fn thirty_leakers_fold_into_top_twenty_and_other() {
    let ns = Netns::new();
    let listen = "127.0.0.1:9977";
    let mut cmd = ns.cmd(&tcpstate_bin());
    cmd.args(["serve", "--listen", listen, "--interval", "1s"]);
    let t = Tracer::spawn(cmd);
    let mut kits = Vec::new();
    let mut held = 0u64;
    for i in 0..30u32 {
        let a = format!("127.0.0.1:{}", 20000 + i);
        let n = (1 + i % 3).to_string();
        let name = format!("leak-{i:02}");
        let mut s = NsKit::spawn(
            &ns,
            &[
                "--comm", &name, "server", "--addr", &a, "--conns", &n, "--mode", "hold",
            ],
        );
        assert!(s.line().starts_with("ready"));
        let mut c = NsKit::spawn(
            &ns,
            &[
                "client",
                "--addr",
                &a,
                "--conns",
                &n,
                "--mode",
                "client-close",
            ],
        );
        assert!(c.line().starts_with("done"));
        assert!(s.line().starts_with("held"));
        held += u64::from(1 + i % 3);
        kits.push((s, c));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ns
            .cmd("curl")
            .args(["-s", "--max-time", "5"])
            .arg(format!("http://{listen}/metrics"))
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        let series: Vec<(String, u64)> = body
            .lines()
            .filter(|l| l.starts_with("tcpstate_lingering_sockets{"))
            .filter_map(|l| {
                let comm = l.split("comm=\"").nth(1)?.split('"').next()?;
                Some((comm.to_string(), l.rsplit(' ').next()?.parse().ok()?))
            })
            .collect();
        let total: u64 = series.iter().map(|(_, n)| n).sum();
        if total == held {
            let named = series.iter().filter(|(c, _)| c != "other").count();
            assert_eq!(named, 20, "{series:?}");
            assert!(series
                .iter()
                .all(|(c, _)| c.starts_with("leak-") || c == "other"));
            let other = series.iter().find(|(c, _)| c == "other").expect("other");
            // The 10 smallest groups hold one socket each.
            assert_eq!(other.1, 10, "{series:?}");
            promtool_check(&body);
            break;
        }
        assert!(Instant::now() < deadline, "{total} of {held}: {series:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(kits);
    sigterm_exits_cleanly(t);
}

#[test]
fn bad_input_is_refused_clearly() {
    for (args, names) in [
        (&["serve", "--listen", "nonsense"][..], "nonsense"),
        (&["serve", "--listen", "127.0.0.1:70000"], "70000"),
        (&["serve", "--top", "0"], "--top"),
    ] {
        let out = Command::new(tcpstate_bin()).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(names),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let dir = TempDir::new("bad");
    let bad = dir.0.join("bad.yml");
    std::fs::write(&bad, "basic_auth_users:\n  bob: plaintext\n").unwrap();
    let missing = dir.0.join("missing.yml");
    let bad_s = bad.to_str().unwrap();
    let missing_s = missing.to_str().unwrap();
    for (args, names) in [
        (vec!["serve", "--listen", &addr], addr.as_str()),
        (vec!["serve", "--web-config", bad_s], bad_s),
        (vec!["serve", "--web-config", missing_s], missing_s),
    ] {
        let out = Command::new(tcpstate_bin()).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(err.contains(names), "{args:?} should name {names}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
}

/// A plain HTTP/1.1 GET over loopback (no curl: the QEMU guests of the kernel
/// matrix have none): (status, body).
fn http_get(addr: &str, path: &str) -> (u32, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to serve");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or(("", ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    // hyper answers in chunks only for streamed bodies; ours has a length.
    (status, body.to_string())
}

/// One scrape has every metric family, a known leak's exact count under its
/// process name, nothing lost, and no degraded part on a kernel that has them all.
#[test]
fn scrape_answers_with_every_family() {
    let port = free_port("127.0.0.1");
    let (t, listen) = serve(&[]);
    let (_server, _client) = leak("scrape-leak", port, 3);
    // A namespace made after startup, with its own port range and no task in it: its
    // range comes from its held sockets' records (the kernel's `ip_local_ports`:
    // int[2] before 6.7, one packed u32 since).
    let alone = Netns::named("-range");
    let st = alone
        .cmd("sysctl")
        .args(["-qw", "net.ipv4.ip_local_port_range=40000 40100"])
        .status()
        .unwrap();
    assert!(st.success());
    let mut holder = Kit::spawn(&[
        "netns-hold",
        "--netns",
        &format!("/run/netns/{}", alone.0),
        "--conns",
        "1",
        "--time-wait",
        "1",
    ]);
    assert!(holder.line().starts_with("ready"), "tcpkit netns-hold");
    let range = format!("netns=\"{}\"", alone.inode());
    let st = Command::new("ip")
        .args(["netns", "delete", &alone.0])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        let (st, body) = http_get(&listen, "/metrics");
        assert_eq!(st, 200, "{body}");
        let count = body
            .lines()
            .find(|l| {
                l.starts_with("tcpstate_lingering_sockets{") && l.contains("comm=\"scrape-leak\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
        let ports = metric_sum(&body, "tcpstate_local_port_range_size", &range);
        if count == Some(3) && ports == Some(101.0) {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no 3 for scrape-leak or 101 ports for {range}: {body}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    for family in [
        "tcpstate_state_duration_seconds histogram",
        "tcpstate_time_wait_ended_total counter",
        "tcpstate_transitions_total counter",
        "tcpstate_lingering_sockets gauge",
        "tcpstate_lingering_oldest_seconds gauge",
        "tcpstate_process_fd_usage_ratio gauge",
        "tcpstate_listen_queue_length gauge",
        "tcpstate_listen_queue_limit gauge",
        "tcpstate_time_wait_sockets gauge",
        "tcpstate_local_port_range_size gauge",
        "tcpstate_events_lost_total counter",
        "tcpstate_degraded gauge",
        "tcpstate_probe_calls_total counter",
        "tcpstate_map_entries gauge",
        "tcpstate_scrape_duration_seconds gauge",
        "tcpstate_build_info gauge",
    ] {
        assert!(
            body.contains(&format!("# TYPE {family}\n")),
            "{family}: {body}"
        );
    }
    for l in body
        .lines()
        .filter(|l| l.starts_with("tcpstate_events_lost_total{"))
    {
        assert!(l.ends_with(" 0"), "{l}");
    }
    for l in body.lines().filter(|l| l.starts_with("tcpstate_degraded{")) {
        assert!(l.ends_with(" 0"), "{l}");
    }
    let (st, _) = http_get(&listen, "/nope");
    assert_eq!(st, 404);
    holder.finish();
    sigterm_exits_cleanly(t);
}
