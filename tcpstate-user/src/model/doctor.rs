//! `tcpstate doctor`'s rules: from linger's reports (CLOSE_WAIT and dead sockets by
//! holder, with the diagnosis), each network namespace's TIME_WAIT and FIN_WAIT2
//! sockets, sysctls and `/proc/net/netstat` counters, and tcpstate's own losses, to
//! findings with a severity, evidence and advice. Pure: every input is plain data, so
//! each rule and each threshold's boundary is unit-tested.
//!
//! Topics: `close_wait`, `not_accepted`, `listen_queue`, `time_wait`, `fin_wait2`, `dead_held`,
//! `keepalive`, `losses`. `keepalive` reports sockets configured with SO_LINGER(0)
//! (they reset on close), not resets seen: a reset sent by SO_LINGER(0) cannot be told
//! from any other reset by the state transitions alone.

use std::{collections::HashMap, net::IpAddr};

use serde_json::{json, Value};

use crate::model::{
    linger::{Backlog, Group},
    summary::Summary,
};

/// How bad a finding is; ordered, most severe last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// What a finding is about (the documented list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Topic {
    CloseWait,
    NotAccepted,
    ListenQueue,
    TimeWait,
    FinWait2,
    DeadHeld,
    Keepalive,
    Losses,
}

impl Topic {
    pub fn name(self) -> &'static str {
        match self {
            Topic::CloseWait => "close_wait",
            Topic::NotAccepted => "not_accepted",
            Topic::ListenQueue => "listen_queue",
            Topic::TimeWait => "time_wait",
            Topic::FinWait2 => "fin_wait2",
            Topic::DeadHeld => "dead_held",
            Topic::Keepalive => "keepalive",
            Topic::Losses => "losses",
        }
    }
}

/// The rules' thresholds (each settable by a `doctor` flag). Counts and ages are
/// "more than": exactly at the threshold is still fine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// A process holding more than this many CLOSE_WAIT sockets: warning.
    pub close_wait_sockets: u64,
    /// Any CLOSE_WAIT socket older than this: warning.
    pub close_wait_age_ns: u64,
    /// A close_wait finding whose holder runs out of fds sooner than this (at the
    /// growth seen), or already uses 90% of its fd limit: critical.
    pub fd_eta_critical_s: f64,
    /// TIME_WAIT using more than this percentage of a destination's local ports:
    /// warning; more than `time_wait_critical_pct`: critical.
    pub time_wait_warn_pct: f64,
    pub time_wait_critical_pct: f64,
    /// A namespace with more than this many orphaned FIN_WAIT2 sockets: warning.
    pub fin_wait2_sockets: u64,
    /// A process holding more than this many dead connections: warning.
    pub dead_held_sockets: u64,
    /// keepalive: an ESTABLISHED connection idle (no data either way) for more than
    /// this, without keepalive or with it at the 2-hour default, is reported (info).
    pub idle_ns: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            close_wait_sockets: 100,
            close_wait_age_ns: 300 * 1_000_000_000,
            fd_eta_critical_s: 3600.0,
            time_wait_warn_pct: 50.0,
            time_wait_critical_pct: 90.0,
            fin_wait2_sockets: 100,
            dead_held_sockets: 0,
            idle_ns: 600 * 1_000_000_000,
        }
    }
}

/// Fd usage from which a holder is about to fail ("Too many open files").
const FD_USAGE_CRITICAL: f64 = 0.9;

/// Who holds what a finding is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Who {
    pub pid: Option<u32>,
    /// Escaped for display (the view's `comm_text`).
    pub comm: Option<String>,
    /// `None`: a host process (or unknown).
    pub container_id: Option<String>,
}

/// One finding: plain data, rendered as a text block or a JSON line.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub severity: Severity,
    pub topic: Topic,
    pub who: Who,
    pub netns: Option<u32>,
    pub sockets: u64,
    /// Of `sockets`, those read to the end (close_wait only).
    pub eof_read_sockets: Option<u64>,
    pub summary: String,
    /// Ordered (name, value) pairs; every one checkable with ss, sysctl or
    /// /proc/net/netstat.
    pub evidence: Vec<(&'static str, Value)>,
    pub advice: String,
    /// What the evidence cannot tell.
    pub caveat: Option<String>,
}

/// A namespace's sysctls that the rules quote (`None`: unreadable).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sysctls {
    pub ip_local_port_range: Option<(u16, u16)>,
    /// Seconds (`net.ipv4.tcp_keepalive_time`).
    pub tcp_keepalive_time: Option<i64>,
    pub tcp_tw_reuse: Option<i64>,
    pub tcp_max_tw_buckets: Option<i64>,
    pub tcp_fin_timeout: Option<i64>,
    pub tcp_max_orphans: Option<i64>,
    /// `net.core.somaxconn`: the cap on a listen() backlog (`__sys_listen()`).
    pub somaxconn: Option<i64>,
}

/// `TcpExt` counters of a namespace's `/proc/net/netstat` (since it was created).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Netstat {
    pub listen_overflows: u64,
    pub listen_drops: u64,
}

impl Netstat {
    /// The change from `start` to `self` (counters only grow; a reset reads 0).
    pub fn since(self, start: Netstat) -> Netstat {
        Netstat {
            listen_overflows: self.listen_overflows.saturating_sub(start.listen_overflows),
            listen_drops: self.listen_drops.saturating_sub(start.listen_drops),
        }
    }
}

/// A listener at the end of the run (its own fd record), with its drops at the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub fd: u32,
    pub netns: u32,
    pub saddr: IpAddr,
    pub sport: u16,
    /// `sk_ack_backlog` / `sk_max_ack_backlog`.
    pub len: u32,
    pub max: u32,
    /// `sk_drops` at the end and at the start of the run (`None`: not read, or the
    /// listener did not exist at the start).
    pub drops: Option<u32>,
    pub drops_start: Option<u32>,
}

/// (local address, remote address, remote port): a TIME_WAIT destination.
pub type Dest = (IpAddr, IpAddr, u16);

/// What one network namespace holds, as its own dumps and files say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Namespace {
    pub inode: u32,
    pub sysctls: Sysctls,
    pub netstat: Option<Netstat>,
    /// The counters at the start of the run (`None`: not read then).
    pub netstat_start: Option<Netstat>,
    /// Every TIME_WAIT socket.
    pub time_wait: u64,
    /// TIME_WAIT sockets whose local port is in `ip_local_port_range` (connect()'s
    /// ephemeral ports), per destination.
    pub tw_dests: HashMap<Dest, u64>,
    /// FIN_WAIT2 sockets no fd holds (closed by the application, waiting for the
    /// peer's FIN), minisockets included.
    pub fin_wait2_orphans: u64,
}

impl Namespace {
    pub fn new(inode: u32, sysctls: Sysctls, netstat: Option<Netstat>) -> Self {
        Namespace {
            inode,
            sysctls,
            netstat,
            ..Default::default()
        }
    }

    /// The counters' change during the run, when both readings exist.
    pub fn netstat_delta(&self) -> Option<Netstat> {
        Some(self.netstat?.since(self.netstat_start?))
    }

    /// Counts a TIME_WAIT socket; only an ephemeral local port costs a destination
    /// one of its ports (a server's TIME_WAIT sits on its listening port).
    pub fn add_time_wait(&mut self, saddr: IpAddr, sport: u16, daddr: IpAddr, dport: u16) {
        self.time_wait += 1;
        if let Some((lo, hi)) = self.sysctls.ip_local_port_range {
            if (lo..=hi).contains(&sport) {
                *self.tw_dests.entry((saddr, daddr, dport)).or_default() += 1;
            }
        }
    }
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `leaky-api (pid 4242, host, netns 4026531840)`.
fn naming(who: &Who, netns: Option<u32>) -> String {
    let mut s = match (&who.comm, who.pid) {
        (Some(c), Some(p)) => format!("{c} (pid {p}"),
        (None, Some(p)) => format!("pid {p} ("),
        _ => "no process (".to_string(),
    };
    if who.pid.is_some() {
        s.push_str(", ");
    }
    match &who.container_id {
        Some(c) => s.push_str(&format!("container {}", &c[..c.len().min(12)])),
        None => s.push_str("host"),
    }
    if let Some(n) = netns {
        s.push_str(&format!(", netns {n}"));
    }
    s.push(')');
    s
}

fn fmt_secs(s: f64) -> String {
    if s < 90.0 {
        format!("{s:.0}s")
    } else if s < 5400.0 {
        format!("{:.0}m", s / 60.0)
    } else {
        format!("{:.1}h", s / 3600.0)
    }
}

pub const ADVICE_READ_ALL: &str = "read() returned 0 (the peer closed) and the socket was never closed: close it when read() returns 0 and on every error path (a try/finally, defer or RAII guard around each connection).";
pub const ADVICE_STOPPED_READING: &str = "the peer's FIN (and maybe data) is unread: find the code path that stopped reading this connection (a handler that returned after one request, a blocked or leaked worker), read until EOF and close.";
pub const ADVICE_NEVER_ACCEPTED: &str = "connections wait in the listener's accept queue and nobody calls accept(): accept faster (more workers, a non-blocking accept loop) or shed load; a stuck accept loop is the usual cause.";
pub const ADVICE_FD_STOPGAP: &str =
    "Raising the fd limit (LimitNOFILE, ulimit -n) only buys time; it fixes nothing.";
pub const ADVICE_TIME_WAIT: &str = "this host closes first and opens a new connection per request: reuse connections (HTTP keep-alive, a connection pool in the client) on the side that closes actively; net.ipv4.tcp_tw_reuse=1 lets connect() reuse a TIME_WAIT port safely (timestamps); widen ip_local_port_range or add local/destination addresses for more 4-tuples. tcp_tw_recycle is gone since Linux 4.12: it broke clients behind NAT (per-host timestamps) and must not be looked for.";
pub const ADVICE_FIN_WAIT2: &str = "the application closed these connections and the peers never sent their FIN: the peers leak (their side is in CLOSE_WAIT) or vanished; net.ipv4.tcp_fin_timeout bounds how long each waits, and beyond tcp_max_orphans the kernel resets orphans (\"too many orphaned sockets\").";
pub const ADVICE_DEAD_HELD: &str = "the connection is gone (reset or timed out, sk_err says which) but the process keeps its fd: close the socket on every error (ECONNRESET, ETIMEDOUT, EPIPE) instead of dropping the error.";
pub const ADVICE_LOSSES: &str = "tcpstate itself missed transitions or could not track sockets: findings built on them may undercount. Rerun; if it persists, report it with `tcpstate trace --duration 10 --json | tail -1`.";

/// A CLOSE_WAIT group (linger's report, one holder) -> its finding.
pub fn close_wait(g: &Group, who: &Who, th: &Thresholds) -> Option<Finding> {
    let n = g.sockets.len() as u64;
    if n == 0 || g.pid.is_none() {
        return None;
    }
    let d = &g.diagnosis;
    let oldest = &g.sockets[0];
    let netns = oldest.facts.map(|f| f.netns);
    let mut sev = Severity::Info;
    let mut why = Vec::new();
    if n > th.close_wait_sockets {
        sev = Severity::Warning;
        why.push(format!("more than {} sockets", th.close_wait_sockets));
    }
    if oldest.age_ns > th.close_wait_age_ns {
        sev = Severity::Warning;
        why.push(format!(
            "older than {}",
            fmt_secs(th.close_wait_age_ns as f64 / 1e9)
        ));
    }
    if d.never_accepted > 0 {
        sev = Severity::Warning;
        why.push("never accepted".to_string());
    }
    let usage = match (g.fds, g.fd_limit) {
        (Some(f), Some(l)) if l > 0 => Some(f as f64 / l as f64),
        _ => None,
    };
    if sev >= Severity::Warning
        && (g.fd_exhaustion_s.is_some_and(|s| s < th.fd_eta_critical_s)
            || usage.is_some_and(|u| u >= FD_USAGE_CRITICAL))
    {
        sev = Severity::Critical;
        why.push("fds about to run out".to_string());
    }
    let mut causes = Vec::new();
    let mut advice = Vec::new();
    for (count, text, adv) in [
        (
            d.read_all_never_closed,
            "read it all, never closed",
            ADVICE_READ_ALL,
        ),
        (d.stopped_reading, "stopped reading", ADVICE_STOPPED_READING),
        (d.never_accepted, "never accepted", ADVICE_NEVER_ACCEPTED),
    ] {
        if count > 0 {
            causes.push(format!("{text} ({count})"));
            advice.push(adv);
        }
    }
    let age = format!(
        "{}{}",
        if oldest.lower_bound { ">=" } else { "" },
        fmt_secs(oldest.age_ns as f64 / 1e9)
    );
    let mut summary = format!(
        "{} holds {} in CLOSE_WAIT, oldest {age}",
        naming(who, netns),
        plural(n, "socket", "sockets"),
    );
    if !causes.is_empty() {
        summary.push_str(&format!(": {}", causes.join(", ")));
    }
    if let Some(eta) = g.fd_exhaustion_s {
        summary.push_str(&format!("; fds run out in ~{}", fmt_secs(eta)));
    }
    let mut evidence = vec![
        ("read_all_never_closed", json!(d.read_all_never_closed)),
        ("stopped_reading", json!(d.stopped_reading)),
        ("never_accepted", json!(d.never_accepted)),
        ("oldest_s", json!(oldest.age_ns as f64 / 1e9)),
        ("oldest_is_lower_bound", json!(oldest.lower_bound)),
        ("growth_per_s", json!(g.growth_per_s)),
        ("fds", json!(g.fds)),
        ("fd_limit", json!(g.fd_limit)),
        ("fd_exhaustion_s", json!(g.fd_exhaustion_s)),
        (
            "local",
            json!(endpoints(g.sockets.iter().map(|s| (s.saddr, s.sport)))),
        ),
    ];
    if !why.is_empty() {
        evidence.push(("because", json!(why.join(", "))));
    }
    let mut advice = advice.join(" ");
    if g.fd_limit.is_some() {
        advice.push(' ');
        advice.push_str(ADVICE_FD_STOPGAP);
    }
    Some(Finding {
        severity: sev,
        topic: Topic::CloseWait,
        who: who.clone(),
        netns,
        sockets: n,
        eof_read_sockets: Some(d.read_all_never_closed as u64),
        summary,
        evidence,
        advice: advice.trim().to_string(),
        caveat: oldest.lower_bound.then(|| {
            "ages of sockets older than this run are lower bounds (the last ACK received)"
                .to_string()
        }),
    })
}

/// Up to 4 distinct `addr:port` strings, most common first (evidence for `ss`).
pub fn endpoints(it: impl Iterator<Item = (IpAddr, u16)>) -> Vec<String> {
    let mut m: HashMap<(IpAddr, u16), u64> = HashMap::new();
    for e in it {
        *m.entry(e).or_default() += 1;
    }
    let mut v: Vec<_> = m.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.into_iter()
        .take(4)
        .map(|((a, p), _)| match a {
            IpAddr::V6(_) => format!("[{a}]:{p}"),
            IpAddr::V4(_) => format!("{a}:{p}"),
        })
        .collect()
}

/// A listener whose accept queue holds dead (CLOSE_WAIT) connections.
pub fn not_accepted(b: &Backlog, who: &Who, ns: Option<&Namespace>) -> Finding {
    let full = b.max > 0 && b.len >= b.max;
    let sev = if full {
        Severity::Critical
    } else {
        Severity::Warning
    };
    let listener = match b.saddr {
        IpAddr::V6(_) => format!("[{}]:{}", b.saddr, b.sport),
        IpAddr::V4(_) => format!("{}:{}", b.saddr, b.sport),
    };
    let mut summary = format!(
        "{} never accepts on {listener} (fd {}): {} dead in its accept queue, {}/{} queued",
        naming(who, Some(b.netns)),
        b.listener_fd,
        plural(b.count as u64, "connection", "connections"),
        b.len,
        b.max
    );
    if full {
        summary.push_str(" (full: new connections are dropped)");
    }
    let mut evidence = vec![
        ("listener", json!(listener)),
        ("listener_fd", json!(b.listener_fd)),
        ("dead_queued", json!(b.count)),
        ("backlog", json!(b.len)),
        ("backlog_limit", json!(b.max)),
    ];
    let st = ns.and_then(Namespace::netstat_delta);
    evidence.push(("ListenOverflows", json!(st.map(|s| s.listen_overflows))));
    evidence.push(("ListenDrops", json!(st.map(|s| s.listen_drops))));
    Finding {
        severity: sev,
        topic: Topic::NotAccepted,
        who: who.clone(),
        netns: Some(b.netns),
        sockets: b.count as u64,
        eof_read_sockets: None,
        summary,
        evidence,
        advice: ADVICE_NEVER_ACCEPTED.to_string(),
        caveat: Some(CAVEAT_NAMESPACE_COUNTERS.to_string()),
    }
}

const CAVEAT_NAMESPACE_COUNTERS: &str =
    "ListenOverflows/ListenDrops are the change during this run, for every listener in the namespace";
pub const ADVICE_LISTEN_QUEUE: &str = "the accept queue is full and new connections are dropped: the process is not calling accept() fast enough (blocked, too few workers), or the backlog is too small for its bursts. Check the backlog passed to listen() and net.core.somaxconn (the cap on it).";

fn endpoint(a: IpAddr, p: u16) -> String {
    match a {
        IpAddr::V6(_) => format!("[{a}]:{p}"),
        IpAddr::V4(_) => format!("{a}:{p}"),
    }
}

/// A listener whose accept queue is full: `sk_acceptq_is_full()` is
/// `sk_ack_backlog > sk_max_ack_backlog`, so listen(fd, 4) fills at 5/4. Below that,
/// nothing (a quiet listener is no finding).
pub fn listen_queue(l: &Listener, who: &Who, ns: Option<&Namespace>) -> Option<Finding> {
    if l.len <= l.max {
        return None;
    }
    let listener = endpoint(l.saddr, l.sport);
    let st = ns.and_then(Namespace::netstat_delta);
    let own = match (l.drops, l.drops_start) {
        (Some(e), Some(s)) => Some(e.wrapping_sub(s)),
        _ => None,
    };
    let mut summary = format!(
        "{} does not accept on {listener} (fd {}): accept queue full, {}/{}",
        naming(who, Some(l.netns)),
        l.fd,
        l.len,
        l.max
    );
    if let Some(o) = st.map(|s| s.listen_overflows).filter(|o| *o > 0) {
        summary.push_str(&format!(
            "; {} in the namespace during the run",
            plural(o, "listen overflow", "listen overflows")
        ));
    }
    let evidence = vec![
        ("listener", json!(listener)),
        ("listener_fd", json!(l.fd)),
        ("queue", json!(format!("{}/{}", l.len, l.max))),
        ("backlog", json!(l.len)),
        ("backlog_limit", json!(l.max)),
        ("ListenOverflows", json!(st.map(|s| s.listen_overflows))),
        ("ListenDrops", json!(st.map(|s| s.listen_drops))),
        ("listener_drops", json!(own)),
        ("somaxconn", json!(ns.and_then(|n| n.sysctls.somaxconn))),
    ];
    Some(Finding {
        severity: Severity::Warning,
        topic: Topic::ListenQueue,
        who: who.clone(),
        netns: Some(l.netns),
        sockets: u64::from(l.len),
        eof_read_sockets: None,
        summary,
        evidence,
        advice: ADVICE_LISTEN_QUEUE.to_string(),
        caveat: Some(
            "ListenOverflows/ListenDrops are the change during this run for every listener in the namespace; listener_drops is this listener's own (sk_drops)"
                .to_string(),
        ),
    })
}

/// The local ports connect() can pick from.
pub fn range_size(r: (u16, u16)) -> u64 {
    u64::from(r.0.abs_diff(r.1)) + 1
}

/// TIME_WAIT pressure per destination of one namespace.
pub fn time_wait(ns: &Namespace, th: &Thresholds) -> Vec<Finding> {
    let Some(range) = ns.sysctls.ip_local_port_range else {
        return Vec::new();
    };
    let size = range_size(range);
    let mut out = Vec::new();
    let mut dests: Vec<_> = ns.tw_dests.iter().collect();
    dests.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (&(laddr, raddr, rport), &n) in dests {
        let pct = n as f64 * 100.0 / size as f64;
        let sev = if pct > th.time_wait_critical_pct {
            Severity::Critical
        } else if pct > th.time_wait_warn_pct {
            Severity::Warning
        } else {
            continue;
        };
        let dest = match raddr {
            IpAddr::V6(_) => format!("[{raddr}]:{rport}"),
            IpAddr::V4(_) => format!("{raddr}:{rport}"),
        };
        let sc = ns.sysctls;
        out.push(Finding {
            severity: sev,
            topic: Topic::TimeWait,
            who: Who::default(),
            netns: Some(ns.inode),
            sockets: n,
            eof_read_sockets: None,
            summary: format!(
                "{n} TIME_WAIT sockets from {laddr} to {dest} (netns {}) use {pct:.0}% of the {size} local ports ({}-{}): new connections to it will fail with EADDRNOTAVAIL",
                ns.inode, range.0, range.1
            ),
            evidence: vec![
                ("local_address", json!(laddr.to_string())),
                ("destination", json!(dest)),
                ("time_wait_sockets", json!(n)),
                ("ip_local_port_range", json!([range.0, range.1])),
                ("local_ports", json!(size)),
                ("port_use_pct", json!(pct)),
                ("time_wait_in_namespace", json!(ns.time_wait)),
                ("tcp_tw_reuse", json!(sc.tcp_tw_reuse)),
                ("tcp_max_tw_buckets", json!(sc.tcp_max_tw_buckets)),
            ],
            advice: ADVICE_TIME_WAIT.to_string(),
            caveat: Some(
                "TIME_WAIT sockets have no owner: the process that closed them is not named (tcpstate hist --by process --state TIME_WAIT names it for new ones)"
                    .to_string(),
            ),
        });
    }
    out
}

/// Orphaned FIN_WAIT2 sockets of one namespace.
pub fn fin_wait2(ns: &Namespace, th: &Thresholds) -> Option<Finding> {
    let n = ns.fin_wait2_orphans;
    if n <= th.fin_wait2_sockets {
        return None;
    }
    let max = ns.sysctls.tcp_max_orphans;
    let sev = if max.is_some_and(|m| m > 0 && n as f64 >= m as f64 * FD_USAGE_CRITICAL) {
        Severity::Critical
    } else {
        Severity::Warning
    };
    Some(Finding {
        severity: sev,
        topic: Topic::FinWait2,
        who: Who::default(),
        netns: Some(ns.inode),
        sockets: n,
        eof_read_sockets: None,
        summary: format!(
            "{n} orphaned FIN_WAIT2 sockets in netns {} wait for their peers' FIN (tcp_fin_timeout {}s, tcp_max_orphans {})",
            ns.inode,
            opt(ns.sysctls.tcp_fin_timeout),
            opt(max)
        ),
        evidence: vec![
            ("orphaned_fin_wait2", json!(n)),
            ("tcp_fin_timeout", json!(ns.sysctls.tcp_fin_timeout)),
            ("tcp_max_orphans", json!(max)),
        ],
        advice: ADVICE_FIN_WAIT2.to_string(),
        caveat: None,
    })
}

fn opt(v: Option<i64>) -> String {
    v.map_or_else(|| "?".to_string(), |v| v.to_string())
}

/// Dead connections (state CLOSE) a process still holds an fd for.
pub fn dead_held(g: &Group, who: &Who, th: &Thresholds) -> Option<Finding> {
    let n = g.diagnosis.dead as u64;
    if n == 0 || g.pid.is_none() {
        return None;
    }
    let sev = if n > th.dead_held_sockets {
        Severity::Warning
    } else {
        Severity::Info
    };
    let netns = g.sockets.iter().find_map(|s| s.facts.map(|f| f.netns));
    let errors: Vec<Value> = g
        .diagnosis
        .errors
        .iter()
        .map(|(e, c)| json!({"sk_err": e, "sockets": c}))
        .collect();
    Some(Finding {
        severity: sev,
        topic: Topic::DeadHeld,
        who: who.clone(),
        netns,
        sockets: n,
        eof_read_sockets: None,
        summary: format!(
            "{} holds {} whose connection is gone (reset or timed out)",
            naming(who, netns),
            plural(n, "dead socket", "dead sockets")
        ),
        evidence: vec![
            ("errors", Value::Array(errors)),
            ("fds", json!(g.fds)),
            ("fd_limit", json!(g.fd_limit)),
        ],
        advice: ADVICE_DEAD_HELD.to_string(),
        caveat: Some("a socket whose error the process is about to read looks the same".into()),
    })
}

/// tcpstate's own losses during the run.
pub fn losses(s: &Summary) -> Option<Finding> {
    if s.lost == 0 && s.untracked == 0 {
        return None;
    }
    Some(Finding {
        severity: Severity::Warning,
        topic: Topic::Losses,
        who: Who::default(),
        netns: None,
        sockets: s.untracked,
        eof_read_sockets: None,
        summary: format!(
            "tcpstate lost {} transitions and could not track {} sockets during this check",
            s.lost, s.untracked
        ),
        evidence: vec![
            ("lost", json!(s.lost)),
            ("lost_ringbuf", json!(s.lost_ringbuf)),
            ("lost_skipped", json!(s.lost_skipped)),
            ("lost_read", json!(s.lost_read)),
            ("lost_transit", json!(s.lost_transit)),
            ("untracked", json!(s.untracked)),
        ],
        advice: ADVICE_LOSSES.to_string(),
        caveat: None,
    })
}

/// `TCP_KEEPALIVE_TIME`: the kernel's default `tcp_keepalive_time` (include/net/tcp.h).
pub const KEEPALIVE_DEFAULT_S: u64 = 7200;

/// An fd-held socket as the keepalive rules see it (from the fd walk).
#[derive(Debug, Clone, PartialEq)]
pub struct KeepSock {
    pub state: u8,
    /// Since the last data sent or received (`max(lsndtime, lrcvtime)`), ms.
    pub idle_ms: u64,
    /// SO_KEEPALIVE (`SOCK_KEEPOPEN` in `sk_flags`).
    pub keepalive: bool,
    /// The socket's own TCP_KEEPIDLE in seconds; `None`: the namespace's
    /// `tcp_keepalive_time` (`keepalive_time_when()`).
    pub keepidle_s: Option<u64>,
    /// SO_LINGER with linger 0 (`SOCK_LINGER`, `sk_lingertime` 0): close() resets.
    pub linger0: bool,
    pub daddr: IpAddr,
    pub dport: u16,
}

/// Why an idle connection counts: keepalive off, or on at the 2-hour default (or
/// longer). `None`: keepalive probes come sooner, or the socket is not idle enough.
/// An unreadable sysctl is taken as the kernel default.
pub fn idle_reason(
    s: &KeepSock,
    ns_keepalive_s: Option<i64>,
    th: &Thresholds,
) -> Option<&'static str> {
    if s.state != tcpstate_common::state::ESTABLISHED as u8
        || s.idle_ms.saturating_mul(1_000_000) <= th.idle_ns
    {
        return None;
    }
    if !s.keepalive {
        return Some("no_keepalive");
    }
    let eff = s
        .keepidle_s
        .or(ns_keepalive_s.and_then(|v| u64::try_from(v).ok()))
        .unwrap_or(KEEPALIVE_DEFAULT_S);
    (eff >= KEEPALIVE_DEFAULT_S).then_some("keepalive_default")
}

pub const ADVICE_KEEPALIVE: &str = "nothing is sent on these connections, so if the peer vanishes (crash, power loss) or a NAT, firewall or load balancer on the path silently drops the idle flow (often after 5 to 60 minutes), this side never learns: the socket stays ESTABLISHED holding its fd, and the next write waits out retransmissions (tcp_retries2, ~15 min). Enable SO_KEEPALIVE with TCP_KEEPIDLE below the shortest idle timeout on the path (e.g. 60-300s), with TCP_KEEPINTVL/TCP_KEEPCNT, or lower net.ipv4.tcp_keepalive_time (it only applies to sockets with SO_KEEPALIVE); application pings or TCP_USER_TIMEOUT also work. An idle connection pool is fine if it validates or expires its connections.";
pub const ADVICE_LINGER0: &str = "close() on these sockets sends a RST instead of a FIN (SO_LINGER with l_linger 0): data not yet sent or not yet read is discarded and the peer sees ECONNRESET, so it loses data. It is often set to avoid TIME_WAIT, which connection reuse or net.ipv4.tcp_tw_reuse solve without losing data; drop it unless aborting is meant, or shutdown(SHUT_WR) and read to EOF before closing.";

/// One holder's idle ESTABLISHED connections in one namespace without useful
/// keepalive. Always info: an idle connection is a risk, not a fault.
pub fn keepalive(
    socks: &[KeepSock],
    who: &Who,
    netns: u32,
    ns_keepalive_s: Option<i64>,
    th: &Thresholds,
) -> Option<Finding> {
    let idle: Vec<(&KeepSock, &str)> = socks
        .iter()
        .filter_map(|s| idle_reason(s, ns_keepalive_s, th).map(|r| (s, r)))
        .collect();
    if idle.is_empty() {
        return None;
    }
    let n = idle.len() as u64;
    let off = idle.iter().filter(|(_, r)| *r == "no_keepalive").count() as u64;
    let longest = idle.iter().map(|(s, _)| s.idle_ms).max().unwrap_or(0) as f64 / 1000.0;
    let what = if off == n {
        "without keepalive".to_string()
    } else if off == 0 {
        "with keepalive at the 2-hour default".to_string()
    } else {
        format!(
            "without keepalive ({off}) or at its 2-hour default ({})",
            n - off
        )
    };
    Some(Finding {
        severity: Severity::Info,
        topic: Topic::Keepalive,
        who: who.clone(),
        netns: Some(netns),
        sockets: n,
        eof_read_sockets: None,
        summary: format!(
            "{} holds {} idle for more than {} {what}, longest {}",
            naming(who, Some(netns)),
            plural(n, "ESTABLISHED connection", "ESTABLISHED connections"),
            fmt_secs(th.idle_ns as f64 / 1e9),
            fmt_secs(longest)
        ),
        evidence: vec![
            ("no_keepalive", json!(off)),
            ("keepalive_default", json!(n - off)),
            ("longest_idle_s", json!((longest * 10.0).round() / 10.0)),
            ("idle_threshold_s", json!(th.idle_ns as f64 / 1e9)),
            ("tcp_keepalive_time", json!(ns_keepalive_s)),
            ("remote", json!(endpoints(idle.iter().map(|(s, _)| (s.daddr, s.dport))))),
        ],
        advice: ADVICE_KEEPALIVE.to_string(),
        caveat: Some(
            "idle is the time since the last data sent or received (ss -ti lastsnd/lastrcv; keepalive probes are not data); a socket with SO_KEEPALIVE shows timer:(keepalive,...) in ss -o"
                .to_string(),
        ),
    })
}

/// One holder's sockets configured with SO_LINGER(0) in one namespace (info).
pub fn linger_zero(socks: &[KeepSock], who: &Who, netns: u32) -> Option<Finding> {
    let hits: Vec<&KeepSock> = socks.iter().filter(|s| s.linger0).collect();
    if hits.is_empty() {
        return None;
    }
    let n = hits.len() as u64;
    Some(Finding {
        severity: Severity::Info,
        topic: Topic::Keepalive,
        who: who.clone(),
        netns: Some(netns),
        sockets: n,
        eof_read_sockets: None,
        summary: format!(
            "{} holds {} set to reset on close (SO_LINGER, linger 0): data in flight is lost",
            naming(who, Some(netns)),
            plural(n, "socket", "sockets")
        ),
        evidence: vec![
            ("so_linger_zero", json!(n)),
            ("remote", json!(endpoints(hits.iter().map(|s| (s.daddr, s.dport))))),
        ],
        advice: ADVICE_LINGER0.to_string(),
        caveat: Some(
            "configured, not seen: the resets themselves cannot be told from others; only sockets still held are seen"
                .to_string(),
        ),
    })
}

/// Most severe first, then most sockets, then topic.
pub fn sort(findings: &mut [Finding]) {
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then(b.sockets.cmp(&a.sockets))
            .then(a.topic.cmp(&b.topic))
            .then(a.who.pid.cmp(&b.who.pid))
    });
}

/// The whole check's outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub critical: usize,
    pub warning: usize,
    pub info: usize,
    pub namespaces: usize,
    /// Namespaces that could not be entered (inode, why).
    pub namespaces_failed: Vec<(u32, String)>,
}

impl Outcome {
    pub fn of(findings: &[Finding]) -> Outcome {
        let mut o = Outcome::default();
        for f in findings {
            match f.severity {
                Severity::Critical => o.critical += 1,
                Severity::Warning => o.warning += 1,
                Severity::Info => o.info += 1,
            }
        }
        o
    }

    /// Health-check status: 0 nothing above info, 1 a warning or critical finding.
    pub fn exit_status(&self) -> u8 {
        u8::from(self.critical + self.warning > 0)
    }

    pub fn worst(&self) -> Option<Severity> {
        if self.critical > 0 {
            Some(Severity::Critical)
        } else if self.warning > 0 {
            Some(Severity::Warning)
        } else if self.info > 0 {
            Some(Severity::Info)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tcpstate_common::state;

    use super::*;
    use crate::model::linger::{Diagnosis, Facts, SockLine};

    const S: u64 = 1_000_000_000;

    fn sock(age_s: u64, eof: bool) -> SockLine {
        SockLine {
            cookie: 1,
            fd: Some(4),
            age_ns: age_s * S,
            lower_bound: false,
            state: state::CLOSE_WAIT as u8,
            family: 4,
            saddr: Ipv4Addr::LOCALHOST.into(),
            sport: 8080,
            daddr: Ipv4Addr::LOCALHOST.into(),
            dport: 40000,
            facts: Some(Facts {
                accepted: true,
                listener_fd: None,
                eof_read: eof,
                unread_bytes: 0,
                last_send_ms: 0,
                last_recv_ms: 0,
                last_ack_ms: 0,
                sk_err: 0,
                netns: 4026531840,
                accept_queue: None,
            }),
        }
    }

    fn group(n: usize, age_s: u64) -> Group {
        Group {
            pid: Some(4242),
            comm: *b"leaky-api\0\0\0\0\0\0\0",
            sockets: (0..n).map(|_| sock(age_s, true)).collect(),
            rate_per_s: None,
            growth_per_s: Some(0.0),
            fd_limit: Some(1024),
            fds: Some(n as u64 + 3),
            fd_exhaustion_s: None,
            ident: Default::default(),
            diagnosis: Diagnosis {
                read_all_never_closed: n,
                ..Default::default()
            },
        }
    }

    fn who() -> Who {
        Who {
            pid: Some(4242),
            comm: Some("leaky-api".into()),
            container_id: None,
        }
    }

    #[test]
    fn close_wait_count_threshold_is_more_than() {
        let th = Thresholds::default();
        let f = close_wait(&group(100, 1), &who(), &th).unwrap();
        assert_eq!(f.severity, Severity::Info, "exactly 100: fine");
        let f = close_wait(&group(101, 1), &who(), &th).unwrap();
        assert_eq!(f.severity, Severity::Warning);
        assert_eq!((f.sockets, f.eof_read_sockets), (101, Some(101)));
        assert!(f
            .summary
            .contains("leaky-api (pid 4242, host, netns 4026531840)"));
        assert!(f.advice.contains("read() returns 0"), "{}", f.advice);
        assert!(close_wait(&group(0, 1), &who(), &th).is_none());
        let th = Thresholds {
            close_wait_sockets: 0,
            ..th
        };
        assert_eq!(
            close_wait(&group(1, 1), &who(), &th).unwrap().severity,
            Severity::Warning
        );
    }

    #[test]
    fn close_wait_age_threshold_is_older_than() {
        let th = Thresholds::default();
        assert_eq!(
            close_wait(&group(1, 300), &who(), &th).unwrap().severity,
            Severity::Info
        );
        let mut g = group(1, 300);
        g.sockets[0].age_ns += 1;
        assert_eq!(
            close_wait(&g, &who(), &th).unwrap().severity,
            Severity::Warning
        );
    }

    #[test]
    fn never_accepted_is_a_warning_and_fd_exhaustion_critical() {
        let th = Thresholds::default();
        let mut g = group(1, 1);
        g.diagnosis.read_all_never_closed = 0;
        g.diagnosis.never_accepted = 1;
        let f = close_wait(&g, &who(), &th).unwrap();
        assert_eq!(f.severity, Severity::Warning);
        assert!(f.advice.contains("accept"), "{}", f.advice);
        // Runs out within the hour (boundary: exactly 3600 s is not "sooner").
        let mut g = group(101, 1);
        g.fd_exhaustion_s = Some(3600.0);
        assert_eq!(
            close_wait(&g, &who(), &th).unwrap().severity,
            Severity::Warning
        );
        g.fd_exhaustion_s = Some(3599.0);
        let f = close_wait(&g, &who(), &th).unwrap();
        assert_eq!(f.severity, Severity::Critical);
        assert!(f.summary.contains("fds run out in ~60m"), "{}", f.summary);
        // 90% of the fd limit used (of 1000: 900).
        let mut g = group(101, 1);
        g.fd_limit = Some(1000);
        g.fds = Some(900);
        assert_eq!(
            close_wait(&g, &who(), &th).unwrap().severity,
            Severity::Critical
        );
        g.fds = Some(899);
        assert_eq!(
            close_wait(&g, &who(), &th).unwrap().severity,
            Severity::Warning
        );
        // Fd pressure alone, under every threshold, stays info.
        let mut g = group(5, 1);
        g.fds = Some(1024);
        assert_eq!(
            close_wait(&g, &who(), &th).unwrap().severity,
            Severity::Info
        );
    }

    #[test]
    fn stopped_reading_advice_and_lower_bound_caveat() {
        let mut g = group(2, 400);
        g.diagnosis.read_all_never_closed = 0;
        g.diagnosis.stopped_reading = 2;
        g.sockets[0].lower_bound = true;
        let f = close_wait(&g, &who(), &Thresholds::default()).unwrap();
        assert_eq!(f.eof_read_sockets, Some(0));
        assert!(f.advice.contains("stopped reading"), "{}", f.advice);
        assert!(f.summary.contains("oldest >=7m"), "{}", f.summary);
        assert!(f.caveat.is_some());
        let w = Who {
            container_id: Some("a".repeat(64)),
            ..who()
        };
        let f = close_wait(&g, &w, &Thresholds::default()).unwrap();
        assert!(
            f.summary.contains("container aaaaaaaaaaaa,"),
            "{}",
            f.summary
        );
    }

    fn ns(range: (u16, u16)) -> Namespace {
        let mut n = Namespace::new(
            4026532000,
            Sysctls {
                ip_local_port_range: Some(range),
                tcp_keepalive_time: Some(7200),
                tcp_tw_reuse: Some(2),
                tcp_max_tw_buckets: Some(262144),
                tcp_fin_timeout: Some(60),
                tcp_max_orphans: Some(1000),
                somaxconn: Some(4096),
            },
            Some(Netstat {
                listen_overflows: 13,
                listen_drops: 24,
            }),
        );
        // At the start: the findings show the change, 3 and 4.
        n.netstat_start = Some(Netstat {
            listen_overflows: 10,
            listen_drops: 20,
        });
        n
    }

    fn churn(n: &mut Namespace, count: u16, from: u16, dport: u16) {
        let a: IpAddr = Ipv4Addr::LOCALHOST.into();
        for p in from..from + count {
            n.add_time_wait(a, p, a, dport);
        }
    }

    #[test]
    fn time_wait_counts_only_ephemeral_local_ports() {
        // 40000-40099: 100 ports.
        let mut n = ns((40000, 40099));
        // Server side: its listening port 8080, many clients.
        let a: IpAddr = Ipv4Addr::LOCALHOST.into();
        for p in 40000..40100 {
            n.add_time_wait(a, 8080, a, p);
        }
        assert_eq!((n.time_wait, n.tw_dests.len()), (100, 0));
        assert!(time_wait(&n, &Thresholds::default()).is_empty());
    }

    #[test]
    fn time_wait_thresholds_are_more_than_half_and_ninety_percent() {
        let th = Thresholds::default();
        let mut n = ns((40000, 40099));
        churn(&mut n, 50, 40000, 9000);
        assert!(time_wait(&n, &th).is_empty(), "exactly half: fine");
        churn(&mut n, 1, 40050, 9000);
        let f = time_wait(&n, &th);
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].severity, f[0].sockets), (Severity::Warning, 51));
        assert!(f[0].summary.contains("100 local ports (40000-40099)"));
        assert!(f[0]
            .evidence
            .iter()
            .any(|(k, v)| *k == "tcp_tw_reuse" && *v == json!(2)));
        assert!(f[0].advice.contains("tcp_tw_recycle"));
        let mut n = ns((40000, 40099));
        churn(&mut n, 90, 40000, 9000);
        assert_eq!(time_wait(&n, &th)[0].severity, Severity::Warning);
        churn(&mut n, 1, 40090, 9000);
        assert_eq!(time_wait(&n, &th)[0].severity, Severity::Critical);
        // Other destinations count apart.
        churn(&mut n, 10, 40000, 9001);
        assert_eq!(time_wait(&n, &th).len(), 1);
        // No port range read: no finding.
        let mut n = Namespace::default();
        churn(&mut n, 10, 40000, 9000);
        assert!(time_wait(&n, &th).is_empty());
        assert_eq!(range_size((32768, 60999)), 28232);
    }

    #[test]
    fn fin_wait2_against_threshold_and_max_orphans() {
        let th = Thresholds::default();
        let mut n = ns((1, 2));
        n.fin_wait2_orphans = 100;
        assert!(fin_wait2(&n, &th).is_none());
        n.fin_wait2_orphans = 101;
        let f = fin_wait2(&n, &th).unwrap();
        assert_eq!(f.severity, Severity::Warning);
        assert!(f
            .summary
            .contains("tcp_fin_timeout 60s, tcp_max_orphans 1000"));
        n.fin_wait2_orphans = 900;
        assert_eq!(fin_wait2(&n, &th).unwrap().severity, Severity::Critical);
        n.fin_wait2_orphans = 899;
        assert_eq!(fin_wait2(&n, &th).unwrap().severity, Severity::Warning);
    }

    #[test]
    fn not_accepted_names_the_listener_and_counters() {
        let b = Backlog {
            listener_fd: 3,
            netns: 4026532000,
            saddr: Ipv4Addr::LOCALHOST.into(),
            sport: 18080,
            count: 5,
            len: 5,
            max: 128,
        };
        let n = ns((1, 2));
        let f = not_accepted(&b, &who(), Some(&n));
        assert_eq!((f.severity, f.sockets), (Severity::Warning, 5));
        assert!(f.summary.contains("leaky-api (pid 4242"), "{}", f.summary);
        assert!(
            f.summary.contains("127.0.0.1:18080 (fd 3)"),
            "{}",
            f.summary
        );
        assert!(f
            .evidence
            .iter()
            .any(|(k, v)| *k == "ListenOverflows" && *v == json!(3)));
        let full = Backlog { len: 128, ..b };
        assert_eq!(
            not_accepted(&full, &who(), None).severity,
            Severity::Critical
        );
        let one_short = Backlog { len: 127, ..b };
        assert_eq!(
            not_accepted(&one_short, &who(), None).severity,
            Severity::Warning
        );
    }

    fn listener(len: u32, max: u32) -> Listener {
        Listener {
            fd: 3,
            netns: 4026532000,
            saddr: "::1".parse().unwrap(),
            sport: 18080,
            len,
            max,
            drops: Some(17),
            drops_start: Some(11),
        }
    }

    fn ev<'a>(f: &'a Finding, k: &str) -> &'a Value {
        &f.evidence.iter().find(|(n, _)| *n == k).unwrap().1
    }

    #[test]
    fn listen_queue_full_is_more_than_the_backlog() {
        let n = ns((1, 2));
        // sk_acceptq_is_full(): 4/4 still takes one more; 5/4 drops.
        assert!(listen_queue(&listener(4, 4), &who(), Some(&n)).is_none());
        assert!(listen_queue(&listener(0, 4096), &who(), Some(&n)).is_none());
        let f = listen_queue(&listener(5, 4), &who(), Some(&n)).unwrap();
        assert_eq!(
            (f.severity, f.topic),
            (Severity::Warning, Topic::ListenQueue)
        );
        assert_eq!(f.sockets, 5);
        assert!(f.summary.contains("leaky-api (pid 4242"), "{}", f.summary);
        assert!(f.summary.contains("[::1]:18080 (fd 3)"), "{}", f.summary);
        assert!(f.summary.contains("5/4"), "{}", f.summary);
        assert!(f.summary.contains("3 listen overflows"), "{}", f.summary);
        assert_eq!(ev(&f, "queue"), &json!("5/4"));
        assert_eq!(ev(&f, "listener_fd"), &json!(3));
        assert_eq!(ev(&f, "ListenOverflows"), &json!(3));
        assert_eq!(ev(&f, "ListenDrops"), &json!(4));
        assert_eq!(ev(&f, "listener_drops"), &json!(6));
        assert_eq!(ev(&f, "somaxconn"), &json!(4096));
        assert!(f.advice.contains("accept()") && f.advice.contains("somaxconn"));
        // listen(fd, 0): one connection fills it.
        assert!(listen_queue(&listener(1, 0), &who(), Some(&n)).is_some());
    }

    #[test]
    fn listen_queue_deltas_need_both_readings() {
        let mut n = ns((1, 2));
        n.netstat_start = None;
        let mut l = listener(5, 4);
        l.drops_start = None;
        let f = listen_queue(&l, &who(), Some(&n)).unwrap();
        assert_eq!(ev(&f, "ListenOverflows"), &Value::Null);
        assert_eq!(ev(&f, "listener_drops"), &Value::Null);
        assert!(!f.summary.contains("overflow"), "{}", f.summary);
        let f = listen_queue(&listener(5, 4), &who(), None).unwrap();
        assert_eq!(ev(&f, "ListenDrops"), &Value::Null);
        // sk_drops is an atomic_t: a wrap is still the change.
        let mut l = listener(5, 4);
        (l.drops_start, l.drops) = (Some(u32::MAX), Some(1));
        let f = listen_queue(&l, &who(), Some(&n)).unwrap();
        assert_eq!(ev(&f, "listener_drops"), &json!(2));
        let a = Netstat {
            listen_overflows: 5,
            listen_drops: 5,
        };
        let b = Netstat {
            listen_overflows: 7,
            listen_drops: 4,
        };
        assert_eq!(
            b.since(a),
            Netstat {
                listen_overflows: 2,
                listen_drops: 0
            }
        );
    }

    #[test]
    fn dead_held_above_threshold() {
        let mut g = group(1, 1);
        g.diagnosis = Diagnosis {
            dead: 1,
            errors: vec![(libc::ECONNRESET, 1)],
            ..Default::default()
        };
        let th = Thresholds::default();
        let f = dead_held(&g, &who(), &th).unwrap();
        assert_eq!((f.severity, f.sockets), (Severity::Warning, 1));
        let th1 = Thresholds {
            dead_held_sockets: 1,
            ..th
        };
        assert_eq!(
            dead_held(&g, &who(), &th1).unwrap().severity,
            Severity::Info
        );
        g.diagnosis.dead = 0;
        assert!(dead_held(&g, &who(), &th).is_none());
    }

    fn ks(idle_s: u64, keepalive: bool, keepidle_s: Option<u64>) -> KeepSock {
        KeepSock {
            state: state::ESTABLISHED as u8,
            idle_ms: idle_s * 1000,
            keepalive,
            keepidle_s,
            linger0: false,
            daddr: Ipv4Addr::LOCALHOST.into(),
            dport: 5432,
        }
    }

    #[test]
    fn keepalive_idle_boundary_and_reasons() {
        let th = Thresholds {
            idle_ns: 600 * S,
            ..Thresholds::default()
        };
        // Exactly at the threshold is fine; one ms more counts.
        assert_eq!(idle_reason(&ks(600, false, None), Some(7200), &th), None);
        let mut s = ks(600, false, None);
        s.idle_ms += 1;
        assert_eq!(idle_reason(&s, Some(7200), &th), Some("no_keepalive"));
        // On, at the default (sysctl, or unreadable: the kernel default), or longer.
        assert_eq!(
            idle_reason(&ks(601, true, None), Some(7200), &th),
            Some("keepalive_default")
        );
        assert_eq!(
            idle_reason(&ks(601, true, None), None, &th),
            Some("keepalive_default")
        );
        assert_eq!(idle_reason(&ks(601, true, None), Some(7199), &th), None);
        // The socket's own TCP_KEEPIDLE wins over the sysctl, both ways.
        assert_eq!(idle_reason(&ks(601, true, Some(60)), Some(7200), &th), None);
        assert_eq!(
            idle_reason(&ks(601, true, Some(7200)), Some(60), &th),
            Some("keepalive_default")
        );
        // Only ESTABLISHED connections.
        let mut cw = ks(601, false, None);
        cw.state = state::CLOSE_WAIT as u8;
        assert_eq!(idle_reason(&cw, Some(7200), &th), None);
    }

    #[test]
    fn keepalive_finding_counts_and_is_info() {
        let th = Thresholds {
            idle_ns: S,
            ..Thresholds::default()
        };
        let socks = vec![
            ks(5, false, None),
            ks(9, true, None),
            ks(9, true, Some(30)),
            ks(0, false, None),
        ];
        let f = keepalive(&socks, &who(), 4026531840, Some(7200), &th).unwrap();
        assert_eq!(
            (f.topic, f.severity, f.sockets),
            (Topic::Keepalive, Severity::Info, 2)
        );
        assert_eq!(f.evidence[0], ("no_keepalive", json!(1)));
        assert_eq!(f.evidence[1], ("keepalive_default", json!(1)));
        assert_eq!(f.evidence[2], ("longest_idle_s", json!(9.0)));
        assert!(f.summary.contains("leaky-api (pid 4242"), "{}", f.summary);
        assert!(keepalive(&socks[2..], &who(), 1, Some(7200), &th).is_none());
        assert_eq!(Outcome::of(&[f]).exit_status(), 0);
    }

    #[test]
    fn linger_zero_is_reported_with_its_caveat() {
        let mut s = ks(0, true, Some(30));
        assert!(linger_zero(std::slice::from_ref(&s), &who(), 1).is_none());
        s.linger0 = true;
        let f = linger_zero(&[s.clone(), s], &who(), 1).unwrap();
        assert_eq!(
            (f.topic, f.severity, f.sockets),
            (Topic::Keepalive, Severity::Info, 2)
        );
        assert!(f.caveat.unwrap().contains("not seen"));
        assert!(f.advice.contains("loses data"));
    }

    #[test]
    fn losses_are_a_finding() {
        assert!(losses(&Summary::default()).is_none());
        let f = losses(&Summary {
            lost: 2,
            lost_ringbuf: 2,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(f.severity, Severity::Warning);
        assert!(losses(&Summary {
            untracked: 1,
            ..Default::default()
        })
        .is_some());
    }

    #[test]
    fn most_severe_first_and_exit_status() {
        let th = Thresholds::default();
        let mut v = vec![
            close_wait(&group(3, 1), &who(), &th).unwrap(),
            close_wait(&group(200, 1), &who(), &th).unwrap(),
        ];
        let mut n = ns((40000, 40099));
        churn(&mut n, 95, 40000, 9000);
        v.extend(time_wait(&n, &th));
        sort(&mut v);
        let sev: Vec<Severity> = v.iter().map(|f| f.severity).collect();
        assert_eq!(
            sev,
            vec![Severity::Critical, Severity::Warning, Severity::Info]
        );
        let o = Outcome::of(&v);
        assert_eq!((o.exit_status(), o.worst()), (1, Some(Severity::Critical)));
        let o = Outcome::of(&v[2..]);
        assert_eq!((o.exit_status(), o.worst()), (0, Some(Severity::Info)));
        assert_eq!(Outcome::of(&[]).worst(), None);
    }
}
