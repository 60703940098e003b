//! Namespaces and containers against the real kernel: servers in network namespaces
//! made with `ip netns add`, processes moved into cgroups made under the v2 mount
//! that look like docker and Kubernetes ones. Everything made here is removed on
//! drop, so also when a test fails. Needs root; run by `cargo xtask test`.

mod common;

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    process::{Child, ChildStdout, Command, Stdio},
    time::Duration,
};

use common::*;
use serde_json::Value;

/// A network namespace with `lo` up, deleted on drop.
struct Netns(String);

impl Netns {
    /// `tag` must differ between the tests of this file (they run at once).
    fn new(tag: &str) -> Netns {
        let name = format!("tcpstate-ct-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        let ok = Command::new("ip").args(["netns", "add", &name]).status();
        assert!(ok.unwrap().success(), "ip netns add {name}");
        let ns = Netns(name);
        let up = Command::new("ip")
            .args(["netns", "exec", &ns.0, "ip", "link", "set", "lo", "up"])
            .status();
        assert!(up.unwrap().success());
        ns
    }

    fn inode(&self) -> u64 {
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

/// The cgroup v2 mount of this host (hybrid: `/sys/fs/cgroup/unified`).
fn v2_mount() -> PathBuf {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mi.lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2")
                .then(|| PathBuf::from(pre.split_whitespace().nth(4).unwrap()))
        })
        .expect("a cgroup2 mount")
}

/// A cgroup tree made by the test (`rel` below a top directory of its own), removed
/// on drop after killing whatever is still inside.
struct Cgroup {
    top: PathBuf,
    leaf: PathBuf,
    /// The leaf's path from the hierarchy's root.
    path: String,
}

impl Cgroup {
    fn new(tag: &str, rel: &str) -> Cgroup {
        let mount = v2_mount();
        let top_name = format!("tcpstate-ct-{tag}-{}.slice", std::process::id());
        let top = mount.join(&top_name);
        let leaf = top.join(rel);
        std::fs::create_dir_all(&leaf).unwrap();
        Cgroup {
            top,
            leaf,
            path: format!("/{top_name}/{rel}"),
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Deepest first; kill leftovers (cgroup.kill needs 5.14; fall back to procs).
        let mut dirs = Vec::new();
        let mut stack = vec![self.top.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
            dirs.push(d);
        }
        for d in dirs.iter().rev() {
            for pid in std::fs::read_to_string(d.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
            {
                if let Ok(p) = pid.parse::<i32>() {
                    // SAFETY: plain kill(2) of a process the test put there.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
        }
        for d in dirs.iter().rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// A tcpkit process, optionally inside a namespace and a cgroup (entered before it
/// execs, so its sockets are made there).
struct Proc {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Proc {
    fn start(ns: Option<&Netns>, cg: Option<&Cgroup>, args: &[&str]) -> Proc {
        let mut cmd = Command::new("sh");
        let mut script = String::new();
        if let Some(cg) = cg {
            script.push_str(&format!(
                "echo $$ > '{}/cgroup.procs' || exit 97; ",
                cg.leaf.display()
            ));
        }
        script.push_str("exec \"$@\"");
        cmd.args(["-c", &script, "sh"]);
        if let Some(ns) = ns {
            cmd.args(["ip", "netns", "exec", &ns.0]);
        }
        cmd.arg(TCPKIT).args(args);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start tcpkit");
        let out = BufReader::new(child.stdout.take().unwrap());
        Proc { child, out }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        l.trim_end().to_string()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn finish(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server that holds `n` accepted sockets in CLOSE_WAIT on `a` (its client closes):
/// (server, the fds it holds).
fn close_wait_server(
    ns: Option<&Netns>,
    cg: Option<&Cgroup>,
    a: &str,
    n: &str,
) -> (Proc, BTreeSet<u64>) {
    let mut server = Proc::start(
        ns,
        cg,
        &["server", "--addr", a, "--conns", n, "--mode", "hold"],
    );
    assert!(server.line().starts_with("ready"), "server did not start");
    let mut client = Proc::start(
        ns,
        None,
        &[
            "client",
            "--addr",
            a,
            "--conns",
            n,
            "--mode",
            "client-close",
        ],
    );
    assert!(client.line().starts_with("done"));
    client.finish();
    let held = fds(&server.line());
    (server, held)
}

/// TIME_WAIT sockets made after `hist` started, in a namespace that then exits:
/// `inet_twsk_purge()` deletes their timers early (no expiry fires), and the gauge
/// must drop them at its next report, not 66 s later when unseen ends are swept.
#[test]
fn hist_gauge_drops_time_waits_of_an_exited_namespace() {
    let ns = Netns::new("hx");
    let port = 22400 + (std::process::id() % 400) as u16;
    let p = port.to_string();
    let mut t = Tracer::start(&["hist", "--json", "--interval", "1s", "--lport", &p]);
    let started = std::time::Instant::now();
    server_close_time_waits(&ns, &sock_addr("127.0.0.1", port), "4");
    let mut out = BufReader::new(t.stdout());
    let mut gauge = |want: u64| {
        let mut seen = Vec::new();
        for _ in 0..20 {
            let mut l = String::new();
            assert!(out.read_line(&mut l).unwrap() > 0, "hist ended: {seen:?}");
            let v: Value = serde_json::from_str(&l).unwrap();
            if v["type"] == "timewait_gauge" {
                if v["count"] == want {
                    return;
                }
                seen.push(v["count"].clone());
            }
        }
        panic!("no gauge of {want}, only: {seen:?}");
    };
    gauge(4);
    drop(ns);
    gauge(0);
    // Before any unseen end could have been swept.
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// `conns` connections to `addr` in `ns` that the server closes first: its side of
/// each stays in TIME_WAIT.
fn server_close_time_waits(ns: &Netns, addr: &str, conns: &str) {
    let mode = ["--addr", addr, "--conns", conns, "--mode", "server-close"];
    let mut server = Proc::start(Some(ns), None, &[&["server"][..], &mode].concat());
    assert!(server.line().starts_with("ready"));
    let mut client = Proc::start(Some(ns), None, &[&["client"][..], &mode].concat());
    let _ = client.child.wait();
    let _ = server.child.wait();
}

fn run_json(args: &[&str]) -> Vec<Value> {
    let out = Command::new(tcpstate_bin()).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&String::from_utf8(out.stdout).unwrap())
}

fn groups(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l["type"] == "linger").collect()
}

fn group_fds(g: &Value) -> BTreeSet<u64> {
    g["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["fd"].as_u64().unwrap())
        .collect()
}

/// A server in a fresh namespace never closes accepted sockets: linger, started
/// after or before they reached CLOSE_WAIT, lists each under the server with its
/// real fd and the namespace's inode.
fn linger_in_netns(ip: &str, linger_first: bool) {
    let ns = Netns::new(&format!(
        "l{}{}",
        if linger_first { "b" } else { "a" },
        if ip.contains(':') { 6 } else { 4 }
    ));
    // Tests run at once and linger sees every namespace: a port per test.
    let port = 18000
        + (std::process::id() % 400) as u16
        + if linger_first { 500 } else { 0 }
        + if ip.contains(':') { 1000 } else { 0 };
    let a = sock_addr(ip, port);
    let p = port.to_string();
    let args = [
        "linger",
        "--json",
        "--min-age",
        "0",
        "--duration",
        "3",
        "--lport",
        &p,
    ];
    let tracer = linger_first.then(|| Tracer::start(&args));
    let (mut server, held) = close_wait_server(Some(&ns), None, &a, "3");
    assert_eq!(held.len(), 3);
    let lines = match tracer {
        Some(mut t) => {
            let (out, err, st) = t.stop_after_exit();
            assert!(st.success(), "{err:?}");
            json_lines(&out)
        }
        None => run_json(&args),
    };
    let g = groups(&lines);
    assert_eq!(g.len(), 1, "{lines:?}");
    assert_eq!(g[0]["pid"], server.pid());
    assert_eq!(group_fds(g[0]), held, "the server's real fds");
    for s in g[0]["sockets"].as_array().unwrap() {
        assert_eq!(s["netns"], ns.inode(), "{s}");
    }
    assert_eq!(g[0]["container_id"], Value::Null, "a host process");
    assert!(g[0].get("cgroup").is_some());
    server.finish();
}

#[test]
fn linger_netns_after_ipv4() {
    linger_in_netns("127.0.0.1", false);
}

#[test]
fn linger_netns_after_ipv6() {
    linger_in_netns("::1", false);
}

#[test]
fn linger_netns_before_ipv4() {
    linger_in_netns("127.0.0.1", true);
}

#[test]
fn linger_netns_before_ipv6() {
    linger_in_netns("::1", true);
}

/// Two servers in two namespaces on the same address and port: trace and linger
/// keep them apart by netns, and --netns selects one.
#[test]
fn same_port_two_namespaces() {
    let (na, nb) = (Netns::new("a"), Netns::new("b"));
    let a = "127.0.0.1:18443";
    let all = Tracer::start(&["trace", "--json", "--port", "18443"]);
    let only_a_inode = na.inode().to_string();
    let only_a = Tracer::start(&[
        "trace",
        "--json",
        "--port",
        "18443",
        "--netns",
        &only_a_inode,
    ]);
    let (mut sa, held_a) = close_wait_server(Some(&na), None, a, "2");
    let (mut sb, _) = close_wait_server(Some(&nb), None, a, "2");
    let netns_of = |mut t: Tracer| -> BTreeSet<u64> {
        let (out, err, st) = t.stop();
        assert!(st.success(), "{err:?}");
        let lines = json_lines(&out);
        transitions(&lines)
            .iter()
            .map(|e| e["netns"].as_u64().expect("netns on every transition"))
            .collect()
    };
    assert_eq!(
        netns_of(all),
        BTreeSet::from([na.inode(), nb.inode()]),
        "both namespaces, told apart"
    );
    assert_eq!(netns_of(only_a), BTreeSet::from([na.inode()]));
    let lines = run_json(&[
        "linger",
        "--json",
        "--min-age",
        "0",
        "--duration",
        "1",
        "--lport",
        "18443",
    ]);
    let g = groups(&lines);
    let pids: BTreeSet<u64> = g.iter().map(|g| g["pid"].as_u64().unwrap()).collect();
    assert_eq!(
        pids,
        BTreeSet::from([u64::from(sa.pid()), u64::from(sb.pid())])
    );
    let lines = run_json(&[
        "linger",
        "--json",
        "--min-age",
        "0",
        "--duration",
        "1",
        "--lport",
        "18443",
        "--netns",
        &only_a_inode,
    ]);
    let g = groups(&lines);
    assert_eq!(g.len(), 1, "{lines:?}");
    assert_eq!(g[0]["pid"], sa.pid());
    assert_eq!(group_fds(g[0]), held_a);
    sa.finish();
    sb.finish();
}

const DOCKER_ID: &str = "5e1f0c0ffee0d15ea5e5e1f0c0ffee0d15ea5e5e1f0c0ffee0d15ea5e5e1f0c0";

/// A process in `.../docker-<64 hex>.scope`, started after tcpstate: reported with
/// that container id and cgroup, selected by a 12-hex prefix; a host process has a
/// null container_id and is not selected.
#[test]
fn docker_scope_container() {
    let scope = format!("docker-{DOCKER_ID}.scope");
    let port = 20500 + (std::process::id() % 400) as u16;
    let a = sock_addr("127.0.0.1", port);
    let p = port.to_string();
    let selected = Tracer::start(&[
        "trace",
        "--json",
        "--port",
        &p,
        "--container",
        &DOCKER_ID[..12],
    ]);
    let all = Tracer::start(&["trace", "--json", "--port", &p]);
    // Made after tcpstate started: the kernel's filter map must learn it.
    let cg = Cgroup::new("docker", &scope);
    std::thread::sleep(Duration::from_millis(1500));
    let (mut server, held) = close_wait_server(None, Some(&cg), &a, "2");
    let lines = run_json(&[
        "linger",
        "--json",
        "--min-age",
        "0",
        "--duration",
        "1",
        "--lport",
        &p,
        "--container",
        &DOCKER_ID[..12],
    ]);
    let g = groups(&lines);
    assert_eq!(g.len(), 1, "{lines:?}");
    assert_eq!(g[0]["pid"], server.pid());
    assert_eq!(g[0]["container_id"], DOCKER_ID);
    assert_eq!(g[0]["cgroup"], cg.path.as_str());
    assert_eq!(group_fds(g[0]), held);
    let transitions_of = |mut t: Tracer| -> Vec<Value> {
        let (out, err, st) = t.stop();
        assert!(st.success(), "{err:?}");
        transitions(&json_lines(&out))
            .into_iter()
            .cloned()
            .collect()
    };
    let sel = transitions_of(selected);
    assert!(!sel.is_empty());
    for e in &sel {
        // The server's sockets (listener and accepted ones) were made in the scope.
        assert_eq!(e["container_id"], DOCKER_ID, "{e}");
        assert_eq!(e["cgroup"], cg.path.as_str(), "{e}");
    }
    let all = transitions_of(all);
    assert!(
        all.iter().any(|e| e["container_id"].is_null()),
        "the host client's sockets have no container"
    );
    assert!(all.len() > sel.len());
    server.finish();
}

/// A Kubernetes-style path gives pod_uid, and a /var/log/pods directory (made here)
/// the pod's namespace and name.
#[test]
fn pod_path_and_name() {
    let uid = "0c1d2e3f-4a5b-4c6d-8e7f-901a2b3c4d5e";
    let rel = format!(
        "kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{DOCKER_ID}.scope",
        uid.replace('-', "_")
    );
    let cg = Cgroup::new("pod", &rel);
    let logs = PathBuf::from("/var/log/pods");
    let made_logs = !logs.exists();
    let dir = logs.join(format!("shop_checkout-7d9f_{uid}"));
    std::fs::create_dir_all(&dir).unwrap();
    struct Cleanup(PathBuf, Option<PathBuf>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
            if let Some(l) = &self.1 {
                let _ = std::fs::remove_dir(l);
            }
        }
    }
    let _clean = Cleanup(dir, made_logs.then(|| logs.clone()));
    let port = 21000 + (std::process::id() % 400) as u16;
    let a = sock_addr("127.0.0.1", port);
    let (mut server, _) = close_wait_server(None, Some(&cg), &a, "1");
    let lines = run_json(&[
        "linger",
        "--json",
        "--min-age",
        "0",
        "--duration",
        "1",
        "--lport",
        &port.to_string(),
    ]);
    let g = groups(&lines);
    assert_eq!(g.len(), 1, "{lines:?}");
    assert_eq!(g[0]["pod_uid"], uid);
    assert_eq!(g[0]["pod_namespace"], "shop");
    assert_eq!(g[0]["pod_name"], "checkout-7d9f");
    assert_eq!(g[0]["container_id"], DOCKER_ID);
    server.finish();
}

#[test]
fn bad_identity_filters() {
    assert_usage_errors(&[
        (&["trace", "--netns", "abc"], "--netns"),
        (&["linger", "--container", ""], "--container"),
        (&["trace", "--cgroup", "kubepods"], "--cgroup"),
        (&["hist", "--by", "nonsense"], "nonsense"),
    ]);
}

/// TIME_WAIT sockets of another namespace (no fd holds them) count in hist's gauge,
/// and two namespaces' identical 4-tuples do not collide: both count.
#[test]
fn hist_gauge_counts_other_namespaces() {
    let (na, nb) = (Netns::new("ha"), Netns::new("hb"));
    let port = 22000 + (std::process::id() % 400) as u16;
    let a = sock_addr("127.0.0.1", port);
    for ns in [&na, &nb] {
        server_close_time_waits(ns, &a, "3");
    }
    let p = port.to_string();
    let lines = run_json(&["hist", "--json", "--duration", "1", "--lport", &p]);
    let g = lines
        .iter()
        .find(|l| l["type"] == "timewait_gauge")
        .expect("a gauge line");
    assert_eq!(g["count"], 6, "3 per namespace: {g}");
    let only_a = na.inode().to_string();
    let lines = run_json(&[
        "hist",
        "--json",
        "--duration",
        "1",
        "--lport",
        &p,
        "--netns",
        &only_a,
    ]);
    let g = lines
        .iter()
        .find(|l| l["type"] == "timewait_gauge")
        .expect("a gauge line");
    assert_eq!(g["count"], 3, "{g}");
}

/// `hist --by container`: a server in a docker scope and its host client's sockets
/// fall into two groups, the container's and the host's (null).
#[test]
fn hist_by_container() {
    let cg = Cgroup::new("hist", &format!("docker-{DOCKER_ID}.scope"));
    let port = 22500 + (std::process::id() % 400) as u16;
    let (a, p) = (sock_addr("127.0.0.1", port), port.to_string());
    let mut hist = Tracer::start(&[
        "hist",
        "--by",
        "container",
        "--json",
        "--duration",
        "3",
        "--port",
        &p,
    ]);
    let mut server = Proc::start(
        None,
        Some(&cg),
        &[
            "server",
            "--addr",
            &a,
            "--conns",
            "3",
            "--mode",
            "server-close",
        ],
    );
    assert!(server.line().starts_with("ready"));
    let mut client = Proc::start(
        None,
        None,
        &[
            "client",
            "--addr",
            &a,
            "--conns",
            "3",
            "--mode",
            "server-close",
        ],
    );
    let _ = client.child.wait();
    let _ = server.child.wait();
    let (out, err, st) = hist.stop_after_exit();
    assert!(st.success(), "{err:?}");
    let lines = json_lines(&out);
    let keys: BTreeSet<String> = lines
        .iter()
        .filter(|l| l["type"] == "hist" && l["state"] != "TIME_WAIT")
        .map(|l| l["key"]["container_id"].to_string())
        .collect();
    let want: BTreeSet<String> = [format!("\"{DOCKER_ID}\""), "null".to_string()].into();
    assert_eq!(keys, want, "{lines:?}");
}

/// A namespace that no task is in and no mount names, kept alive by its sockets
/// alone (tcpkit entered it, made them, went back and closed its handle): `hist`'s
/// TIME_WAIT gauge counts its TIME_WAIT sockets (from the probe's records, without
/// entering it), and `linger` its CLOSE_WAIT sockets under their holder.
#[test]
fn namespace_kept_alive_by_sockets_alone() {
    let ns = Netns::new("alone");
    let ino = ns.inode().to_string();
    let mut hist = Tracer::start(&[
        "hist",
        "--json",
        "--state",
        "TIME_WAIT",
        "--duration",
        "6",
        "--netns",
        &ino,
    ]);
    let mut holder = Kit::spawn(&[
        "--comm",
        "ns-alone",
        "netns-hold",
        "--netns",
        &format!("/run/netns/{}", ns.0),
        "--conns",
        "3",
        "--time-wait",
        "5",
    ]);
    assert!(holder.line().starts_with("ready"));
    let st = Command::new("ip")
        .args(["netns", "del", &ns.0])
        .status()
        .unwrap();
    assert!(st.success());
    let (out, err, st) = hist.stop_after_exit();
    assert!(st.success(), "{err:?}");
    let lines = json_lines(&out);
    let g = lines
        .iter()
        .rfind(|l| l["type"] == "timewait_gauge")
        .expect("a gauge line");
    assert_eq!(g["count"], 5, "{g}");
    let lines = run_json(&[
        "linger",
        "--json",
        "--min-age",
        "0",
        "--duration",
        "1",
        "--netns",
        &ino,
    ]);
    let gs = groups(&lines);
    assert_eq!(gs.len(), 1, "{lines:?}");
    assert_eq!(gs[0]["comm"], "ns-alone", "{}", gs[0]);
    assert_eq!(gs[0]["count"], 3, "{}", gs[0]);
    // doctor enters it by one of its sockets (the fd walk names a holder and fd):
    // its TIME_WAIT sockets, its sysctls and its port range are read from inside it.
    let out = Command::new(tcpstate_bin())
        .args([
            "doctor",
            "--json",
            "--duration",
            "1",
            "--time-wait-warn",
            "0",
        ])
        .args(["--netns", &ino])
        .output()
        .unwrap();
    let lines = json_lines(&String::from_utf8(out.stdout).unwrap());
    let sum = lines.last().expect("a summary");
    assert_eq!(sum["type"], "doctor_summary", "{sum}");
    assert_eq!(sum["namespaces"], 1, "{sum}");
    assert_eq!(sum["namespaces_failed"], serde_json::json!([]), "{sum}");
    let tw: Vec<&Value> = lines
        .iter()
        .filter(|l| l["type"] == "finding" && l["topic"] == "time_wait")
        .collect();
    assert_eq!(tw.len(), 1, "{lines:?}");
    assert_eq!(tw[0]["evidence"]["time_wait_sockets"], 5, "{}", tw[0]);
    assert_eq!(tw[0]["netns"].to_string(), ino, "{}", tw[0]);
    holder.finish();
}
