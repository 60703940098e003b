//! `tcpstate linger`: sockets that stay in a state (CLOSE_WAIT by default) longer than
//! `--min-age`, grouped by the process that holds them, with fd, age and growth.
//!
//! Ages come from observed transitions ([`SocketTable`]); sockets already in the state
//! at startup are seeded from sock_diag with their age as a lower bound. Holders come
//! from a fresh scan of every fd table (the `task_file` iterator) at each report, so
//! fork-inherited and passed fds count, and a reused PID inherits nothing.

use std::{
    collections::{HashMap, VecDeque},
    fmt::Write as _,
    io::{self, BufWriter, Write},
    net::IpAddr,
    time::Duration,
};

use serde::Serialize;
use tcpstate_common::{Event, FdRecord, FLAG_STREAM};

use crate::{
    cli::LingerArgs,
    events::TcpState,
    filter::Filter,
    loader::{LoadOptions, Probe},
    output::{sanitize_comm, Clock},
    session::{monotonic_ns, Consumer, Session},
    sockdiag,
    sockets::{Lingering, SocketTable},
};

/// Most sockets tracked at once; beyond it sockets are counted as untracked.
const TABLE_CAPACITY: usize = 1 << 20;
/// Sockets listed per process in the table unless `--all`.
const SHOWN_PER_PROCESS: usize = 3;
/// RATE looks back this far.
const RATE_WINDOW_NS: u64 = 60_000_000_000;

/// Who holds a socket: the lowest pid (then fd) among its holders, and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub fd: u32,
    pub holders: u32,
}

/// An fd scan indexed by cookie; process names kept once per process, not per
/// socket (100k sockets held by a few processes is the case to be small for).
#[derive(Debug, Default)]
pub struct Holders {
    by_cookie: HashMap<u64, Holder>,
    comms: HashMap<u32, [u8; 16]>,
}

impl Holders {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            by_cookie: HashMap::with_capacity(n),
            comms: HashMap::new(),
        }
    }

    /// Adds one fd to the holders of its socket.
    pub fn add(&mut self, f: &FdRecord) {
        if f.cookie == 0 {
            return;
        }
        self.by_cookie
            .entry(f.cookie)
            .and_modify(|h| {
                if (f.pid, f.fd) < (h.pid, h.fd) {
                    h.pid = f.pid;
                    h.fd = f.fd;
                }
                h.holders += 1;
            })
            .or_insert(Holder {
                pid: f.pid,
                fd: f.fd,
                holders: 1,
            });
        self.comms.entry(f.pid).or_insert(f.comm);
    }

    pub fn get(&self, cookie: u64) -> Option<&Holder> {
        self.by_cookie.get(&cookie)
    }

    pub fn comm(&self, pid: u32) -> [u8; 16] {
        self.comms.get(&pid).copied().unwrap_or([0; 16])
    }
}

/// Indexes an fd scan by cookie.
#[cfg(test)]
pub fn holders(fds: &[FdRecord]) -> Holders {
    let mut m = Holders::default();
    for f in fds {
        m.add(f);
    }
    m
}

/// A socket in a report; its addresses stay in the [`SocketTable`].
#[derive(Debug, Clone, PartialEq)]
pub struct SockLine {
    pub cookie: u64,
    pub fd: Option<u32>,
    pub age_ns: u64,
    pub lower_bound: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// `None`: no process holds an fd for these sockets (orphaned).
    pub pid: Option<u32>,
    pub comm: String,
    /// Oldest first.
    pub sockets: Vec<SockLine>,
    pub rate_per_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub state: TcpState,
    pub min_age_ns: u64,
    /// Largest count first.
    pub groups: Vec<Group>,
}

impl Report {
    pub fn count(&self) -> usize {
        self.groups.iter().map(|g| g.sockets.len()).sum()
    }
}

/// Builds one report per state from the table, the holders and the filters.
pub fn build(
    table: &SocketTable,
    holders: &Holders,
    states: &[TcpState],
    now_ns: u64,
    min_age_ns: u64,
    filter: &Filter,
) -> Vec<Report> {
    let mut per_state: Vec<HashMap<Option<u32>, Group>> = vec![HashMap::new(); states.len()];
    for (cookie, l) in table.iter() {
        let Some(si) = states.iter().position(|s| s.number() == i32::from(l.state)) else {
            continue;
        };
        let age_ns = now_ns.saturating_sub(l.since_ns);
        if age_ns < min_age_ns {
            continue;
        }
        let h = holders.get(*cookie);
        if !filter.matches_socket(l, h.map(|h| h.pid)) {
            continue;
        }
        let key = h.map(|h| h.pid);
        let g = per_state[si].entry(key).or_insert_with(|| Group {
            pid: key,
            comm: h.map_or_else(String::new, |h| {
                let mut s = String::new();
                sanitize_comm(&holders.comm(h.pid), &mut s);
                s
            }),
            sockets: Vec::new(),
            rate_per_s: None,
        });
        g.sockets.push(SockLine {
            cookie: *cookie,
            fd: h.map(|h| h.fd),
            age_ns,
            lower_bound: l.lower_bound,
        });
    }
    states
        .iter()
        .zip(per_state)
        .map(|(state, groups)| {
            let mut groups: Vec<Group> = groups.into_values().collect();
            for g in &mut groups {
                g.sockets.sort_by(|a, b| {
                    b.age_ns
                        .cmp(&a.age_ns)
                        .then(a.fd.cmp(&b.fd))
                        .then(a.cookie.cmp(&b.cookie))
                });
            }
            groups.sort_by(|a, b| {
                b.sockets
                    .len()
                    .cmp(&a.sockets.len())
                    .then(a.pid.cmp(&b.pid))
            });
            Report {
                state: *state,
                min_age_ns,
                groups,
            }
        })
        .collect()
}

/// Counts per (state, process) over the last minute of reports, for RATE.
#[derive(Debug, Default)]
pub struct Rates {
    history: HashMap<GroupKey, VecDeque<(u64, usize)>>,
}

/// (state, holder pid, holder comm): a reused pid with another name is another group.
type GroupKey = (TcpState, Option<u32>, String);

impl Rates {
    /// Records this report's counts and fills in each group's rate: the change in
    /// count per second since the oldest report of the last minute. A group that was
    /// absent from an earlier report counted 0 then.
    pub fn update(&mut self, reports: &mut [Report], now_ns: u64) {
        for r in reports.iter_mut() {
            for g in &mut r.groups {
                let key = (r.state, g.pid, g.comm.clone());
                let h = self.history.entry(key).or_default();
                h.push_back((now_ns, g.sockets.len()));
            }
        }
        // Groups that vanished: record 0 so that shrinking shows.
        for ((state, pid, comm), h) in self.history.iter_mut() {
            let present = reports.iter().any(|r| {
                r.state == *state && r.groups.iter().any(|g| g.pid == *pid && g.comm == *comm)
            });
            if !present && h.back().is_some_and(|&(t, _)| t != now_ns) {
                h.push_back((now_ns, 0));
            }
            // Keep one sample at or beyond the window as the baseline.
            while h.len() >= 2 && now_ns.saturating_sub(h[1].0) >= RATE_WINDOW_NS {
                h.pop_front();
            }
        }
        self.history.retain(|_, h| h.iter().any(|&(_, c)| c > 0));
        for r in reports.iter_mut() {
            for g in &mut r.groups {
                let key = (r.state, g.pid, g.comm.clone());
                g.rate_per_s = self.history.get(&key).and_then(|h| {
                    let (t0, c0) = *h.front()?;
                    let (t1, c1) = *h.back()?;
                    (t1 > t0).then(|| (c1 as f64 - c0 as f64) / ((t1 - t0) as f64 / 1e9))
                });
            }
        }
    }
}

/// `17m03s`, `5.2s`, `2h05m`, `3d04h`.
pub fn fmt_age(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    if s < 60 {
        format!("{:.1}s", ns as f64 / 1e9)
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else {
        format!("{}d{:02}h", s / 86_400, s / 3600 % 24)
    }
}

/// `1,203`
pub fn thousands(n: usize) -> String {
    let d = n.to_string();
    let mut out = String::new();
    for (i, c) in d.chars().enumerate() {
        if i > 0 && (d.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `10.0.0.5:8080`, `[::1]:8080`.
pub fn endpoint(a: IpAddr, p: u16) -> String {
    std::net::SocketAddr::new(a, p).to_string()
}

fn age_text(ns: u64, lower_bound: bool) -> String {
    format!("{}{}", if lower_bound { ">=" } else { "" }, fmt_age(ns))
}

/// The human report.
pub fn render_table(r: &Report, table: &SocketTable, all: bool, time: &str, out: &mut String) {
    let n = r.count();
    let procs = r.groups.iter().filter(|g| g.pid.is_some()).count();
    let _ = write!(
        out,
        "{} longer than {}: {} socket{}",
        r.state,
        fmt_min_age(r.min_age_ns),
        thousands(n),
        if n == 1 { "" } else { "s" }
    );
    if n > 0 {
        let _ = write!(
            out,
            " in {} process{}",
            thousands(procs),
            if procs == 1 { "" } else { "es" }
        );
        if r.groups.iter().any(|g| g.pid.is_none()) {
            out.push_str(" (and orphaned ones)");
        }
    }
    let _ = writeln!(out, " at {time}");
    if n == 0 {
        return;
    }
    let _ = writeln!(
        out,
        "{:<7} {:<16} {:>8}  {:<10} {:<10} RATE",
        "PID", "COMM", "SOCKETS", "OLDEST", "NEWEST"
    );
    for g in &r.groups {
        let (oldest, newest) = (g.sockets.first().unwrap(), g.sockets.last().unwrap());
        let rate = g
            .rate_per_s
            .map_or_else(|| "-".to_string(), |r| format!("{r:+.1}/s"));
        let (pid, comm) = match g.pid {
            Some(p) => (p.to_string(), g.comm.as_str()),
            None => ("-".to_string(), "(orphaned)"),
        };
        let _ = writeln!(
            out,
            "{pid:<7} {comm:<16} {:>8}  {:<10} {:<10} {rate}",
            thousands(g.sockets.len()),
            age_text(oldest.age_ns, oldest.lower_bound),
            age_text(newest.age_ns, newest.lower_bound),
        );
        let shown = if all {
            g.sockets.len()
        } else {
            SHOWN_PER_PROCESS
        };
        for s in g.sockets.iter().take(shown) {
            let Some(l) = table.get(s.cookie) else {
                continue;
            };
            let fd = s.fd.map_or_else(|| "-".to_string(), |f| f.to_string());
            let _ = writeln!(
                out,
                "   fd {fd:<5} {} -> {}   age {}",
                endpoint(l.saddr, l.sport),
                endpoint(l.daddr, l.dport),
                age_text(s.age_ns, s.lower_bound)
            );
        }
        if g.sockets.len() > shown {
            let _ = writeln!(
                out,
                "   ... ({} more; --all to list)",
                thousands(g.sockets.len() - shown)
            );
        }
    }
}

fn fmt_min_age(ns: u64) -> String {
    let d = Duration::from_nanos(ns);
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[derive(Serialize)]
struct ReportJson<'a> {
    r#type: &'static str,
    time: &'a str,
    state: &'static str,
    min_age_ms: f64,
    count: usize,
    processes: usize,
}

#[derive(Serialize)]
struct GroupJson<'a> {
    r#type: &'static str,
    time: &'a str,
    state: &'static str,
    pid: Option<u32>,
    comm: Option<&'a str>,
    count: usize,
    oldest_ms: f64,
    oldest_is_lower_bound: bool,
    rate_per_s: Option<f64>,
}

#[derive(Serialize)]
struct SockJson<'a> {
    sock: &'a str,
    fd: Option<u32>,
    saddr: IpAddr,
    sport: u16,
    daddr: IpAddr,
    dport: u16,
    age_ms: f64,
    age_is_lower_bound: bool,
}

/// One `linger_report` line per state, then one `linger` line per process with every
/// socket, streamed into `out` (a whole report of 100k sockets is never in memory).
pub fn render_json<W: Write>(
    r: &Report,
    table: &SocketTable,
    time: &str,
    out: &mut W,
) -> io::Result<()> {
    let head = ReportJson {
        r#type: "linger_report",
        time,
        state: r.state.name(),
        min_age_ms: r.min_age_ns as f64 / 1e6,
        count: r.count(),
        processes: r.groups.iter().filter(|g| g.pid.is_some()).count(),
    };
    serde_json::to_writer(&mut *out, &head)?;
    out.write_all(b"\n")?;
    let mut line = Vec::new();
    let mut sock = String::new();
    for g in &r.groups {
        let oldest = g.sockets.first();
        let j = GroupJson {
            r#type: "linger",
            time,
            state: r.state.name(),
            pid: g.pid,
            comm: g.pid.map(|_| g.comm.as_str()),
            count: g.sockets.len(),
            oldest_ms: oldest.map_or(0.0, |s| s.age_ns as f64 / 1e6),
            oldest_is_lower_bound: oldest.is_some_and(|s| s.lower_bound),
            rate_per_s: g.rate_per_s,
        };
        // The group's fields, then `"sockets":[...]` appended inside its braces.
        line.clear();
        serde_json::to_writer(&mut line, &j)?;
        line.pop();
        line.extend_from_slice(b",\"sockets\":[");
        out.write_all(&line)?;
        for (i, s) in g.sockets.iter().enumerate() {
            let Some(l) = table.get(s.cookie) else {
                continue;
            };
            if i > 0 {
                out.write_all(b",")?;
            }
            sock.clear();
            let _ = write!(sock, "{}", s.cookie);
            serde_json::to_writer(
                &mut *out,
                &SockJson {
                    sock: &sock,
                    fd: s.fd,
                    saddr: l.saddr,
                    sport: l.sport,
                    daddr: l.daddr,
                    dport: l.dport,
                    age_ms: s.age_ns as f64 / 1e6,
                    age_is_lower_bound: s.lower_bound,
                },
            )?;
        }
        out.write_all(b"]}\n")?;
    }
    Ok(())
}

struct Linger<W: Write> {
    args: LingerArgs,
    filter: Filter,
    table: SocketTable,
    rates: Rates,
    clock: Clock,
    out: W,
    last_nonempty: bool,
}

impl<W: Write> Linger<W> {
    fn report(&mut self, probe: &mut Probe) -> io::Result<()> {
        // Only the sockets the table tracks: the host may hold many more.
        let mut holders = Holders::with_capacity(self.table.len());
        let table = &self.table;
        probe.scan_fds(|f| {
            if table.contains(f.cookie) {
                holders.add(f);
            }
        })?;
        let now = monotonic_ns();
        let mut reports = build(
            &self.table,
            &holders,
            &self.args.states,
            now,
            self.args.min_age.as_nanos() as u64,
            &self.filter,
        );
        self.rates.update(&mut reports, now);
        self.last_nonempty = reports.iter().any(|r| r.count() > 0);
        let mut time = String::new();
        drop(holders);
        if self.args.json {
            self.clock.utc_rfc3339(now, &mut time);
            for r in &reports {
                render_json(r, &self.table, &time, &mut self.out)?;
            }
        } else {
            self.clock.local_hms(now, &mut time);
            let mut text = String::new();
            for r in &reports {
                render_table(r, &self.table, self.args.all, &time, &mut text);
                text.push('\n');
            }
            self.out.write_all(text.as_bytes())?;
        }
        self.out.flush()
    }
}

impl<W: Write> Consumer for Linger<W> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.table.apply(ev);
        Ok(())
    }
    fn interval(&mut self, probe: &mut Probe) -> io::Result<()> {
        self.report(probe)
    }
}

/// The states `linger` can watch: the probe never reports TIME_WAIT (nor
/// NEW_SYN_RECV), so their sockets could be seeded but never seen to leave.
pub fn check_states(states: &[TcpState]) -> Result<(), String> {
    for s in states {
        match s {
            TcpState::TimeWait | TcpState::NewSynRecv => {
                return Err(format!(
                    "--state {s}: the kernel never reports sockets entering or leaving {s} \
                     (see `tcpstate hist --state TIME_WAIT`)"
                ))
            }
            TcpState::Close => {
                return Err("--state CLOSE: closed sockets do not linger".to_string())
            }
            _ => {}
        }
    }
    Ok(())
}

pub async fn run(mut args: LingerArgs) -> anyhow::Result<bool> {
    if args.states.is_empty() {
        args.states.push(TcpState::CloseWait);
    }
    args.states.dedup();
    let watched = args.states.iter().fold(0u32, |m, s| m | (1 << s.number()));
    let filter = Filter::new(&args.filter, &[]);
    // Ports, family and states filter in the probe; --pid stays here, where the holder
    // (not the probe's owner) decides.
    let mut kfilter = filter.kernel();
    kfilter.n_pids = 0;
    // Only transitions into or out of a watched state matter to the table.
    kfilter.states = watched;
    // No per-socket records nor owners in the probe: holders come from the fd scan
    // at each report, so the probe only forwards the watched transitions.
    let opts = LoadOptions {
        filter: kfilter,
        flags: FLAG_STREAM,
        // 2 of a connection's 10 transitions: 1 MiB holds ~11k events.
        ring_bytes: 1 << 20,
        ..LoadOptions::default()
    };
    let mut session = Session::start(
        &format!(
            "watching {} longer than {}",
            args.states
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", "),
            fmt_min_age(args.min_age.as_nanos() as u64)
        ),
        &opts,
        false,
    )?;
    let mut linger = Linger {
        filter,
        table: SocketTable::new(watched, TABLE_CAPACITY),
        rates: Rates::default(),
        clock: Clock::new(),
        out: BufWriter::with_capacity(256 << 10, io::stdout().lock()),
        last_nonempty: false,
        args,
    };
    // Sockets already in a watched state: their age counts from now, as a lower bound.
    sockdiag::for_each_tcp(watched, |s| {
        linger.table.seed(
            s.cookie,
            Lingering {
                state: s.state,
                since_ns: session.attached_ns,
                lower_bound: true,
                family: if matches!((s.saddr, s.daddr), (IpAddr::V4(_), IpAddr::V4(_))) {
                    4
                } else {
                    6
                },
                saddr: unmap(s.saddr),
                sport: s.sport,
                daddr: unmap(s.daddr),
                dport: s.dport,
            },
        );
    })?;
    let (duration, interval) = (linger.args.duration, linger.args.interval);
    // With --duration: one final report; otherwise one every --interval.
    let periodic = if duration.is_some() {
        None
    } else {
        Some(interval)
    };
    let result = session.run(&mut linger, duration, periodic).await;
    result?;
    if duration.is_some() {
        linger.report(&mut session.probe)?;
    }
    let mut summary = session.final_summary();
    summary.untracked += linger.table.untracked;
    if linger.args.json {
        crate::output::write_summary_json(&mut linger.out, &summary)?;
    } else {
        linger.out.flush()?;
        eprintln!("{}", crate::output::summary_text(&summary));
    }
    Ok(linger.last_nonempty)
}

fn unmap(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tcpstate_common::{state, AF_INET};

    use super::*;
    use crate::{cli::FilterArgs, events::tests::event};

    const S: u64 = 1_000_000_000;

    fn table() -> SocketTable {
        let mut t = SocketTable::new(1 << state::CLOSE_WAIT, 100);
        for (cookie, ts, port) in [(1, 1, 50001), (2, 5, 50002), (3, 9, 50003), (4, 2, 50004)] {
            let mut e = event(AF_INET, state::ESTABLISHED, state::CLOSE_WAIT);
            e.cookie = cookie;
            e.ts_ns = ts * S;
            e.saddr[..4].copy_from_slice(&[10, 0, 0, 5]);
            e.daddr[..4].copy_from_slice(&[10, 0, 0, 9]);
            e.sport = 8080;
            e.dport = port;
            t.apply(&e);
        }
        t.seed(
            9,
            Lingering {
                state: state::CLOSE_WAIT as u8,
                since_ns: 0,
                lower_bound: true,
                family: 4,
                saddr: Ipv4Addr::LOCALHOST.into(),
                sport: 1,
                daddr: Ipv4Addr::LOCALHOST.into(),
                dport: 2,
            },
        );
        t
    }

    fn holder(pid: u32, fd: u32, comm: &[u8]) -> FdRecord {
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm);
        FdRecord {
            cookie: 0,
            pid,
            fd,
            comm: c,
            state: 8,
            _pad: [0; 7],
        }
    }

    /// Holders from (cookie, fd record) pairs.
    fn held(list: &[(u64, FdRecord)]) -> Holders {
        let recs: Vec<FdRecord> = list
            .iter()
            .map(|(c, f)| FdRecord { cookie: *c, ..*f })
            .collect();
        holders(&recs)
    }

    #[test]
    fn groups_by_holder_oldest_first_and_min_age() {
        let t = table();
        let h = held(&[
            (1, holder(4242, 37, b"leaky")),
            (2, holder(4242, 38, b"leaky")),
            (3, holder(4242, 39, b"leaky")),
            (9, holder(917, 5, b"python3")),
        ]);
        // Socket 4 has no holder: orphaned.
        let f = Filter::new(&FilterArgs::default(), &[]);
        let r = build(&t, &h, &[TcpState::CloseWait], 10 * S, 2 * S, &f);
        assert_eq!(r.len(), 1);
        let r = &r[0];
        // Socket 3 is 1 s old: under min-age.
        assert_eq!(r.count(), 4);
        assert_eq!(r.groups[0].pid, Some(4242));
        let ages: Vec<u64> = r.groups[0].sockets.iter().map(|s| s.age_ns / S).collect();
        assert_eq!(ages, vec![9, 5]);
        assert_eq!(r.groups[0].sockets[0].fd, Some(37));
        // Ties on count sort by pid, orphans (None) first.
        assert_eq!(r.groups[1].pid, None);
        assert_eq!(r.groups[2].pid, Some(917));
        assert!(r.groups[2].sockets[0].lower_bound);
        assert_eq!(r.groups[2].sockets[0].age_ns, 10 * S);
    }

    #[test]
    fn pid_filter_uses_the_holder() {
        let t = table();
        let h = held(&[(1, holder(4242, 37, b"leaky"))]);
        let f = Filter::new(
            &FilterArgs {
                pids: vec![4242],
                ..Default::default()
            },
            &[],
        );
        let r = build(&t, &h, &[TcpState::CloseWait], 10 * S, 0, &f);
        assert_eq!(r[0].count(), 1);
        let f = Filter::new(
            &FilterArgs {
                rports: vec![50002],
                ..Default::default()
            },
            &[],
        );
        let r = build(&t, &h, &[TcpState::CloseWait], 10 * S, 0, &f);
        assert_eq!(r[0].count(), 1);
        assert_eq!(r[0].groups[0].pid, None);
    }

    #[test]
    fn lowest_pid_holds_shared_sockets() {
        let mk = |pid, fd| FdRecord {
            cookie: 7,
            pid,
            fd,
            comm: [0; 16],
            state: 8,
            _pad: [0; 7],
        };
        let h = holders(&[mk(20, 4), mk(10, 9), mk(10, 3)]);
        let h = h.get(7).unwrap();
        assert_eq!((h.pid, h.fd, h.holders), (10, 3, 3));
    }

    #[test]
    fn rates_over_the_last_minute() {
        let mk = |n: usize| Report {
            state: TcpState::CloseWait,
            min_age_ns: 0,
            groups: vec![Group {
                pid: Some(1),
                comm: "a".into(),
                sockets: vec![
                    SockLine {
                        cookie: 0,
                        fd: None,
                        age_ns: 0,
                        lower_bound: false,
                    };
                    n
                ],
                rate_per_s: None,
            }],
        };
        let mut rates = Rates::default();
        let mut r = vec![mk(10)];
        rates.update(&mut r, 0);
        assert_eq!(r[0].groups[0].rate_per_s, None, "one sample: no rate yet");
        let mut r = vec![mk(20)];
        rates.update(&mut r, 5 * S);
        assert_eq!(r[0].groups[0].rate_per_s, Some(2.0));
        // 70 s later the first sample has left the window; the 5 s one is the baseline.
        let mut r = vec![mk(20)];
        rates.update(&mut r, 70 * S);
        assert_eq!(r[0].groups[0].rate_per_s, Some(0.0));
        // A group that vanished counts 0 now; it reappears with a negative rate.
        let mut empty = vec![Report {
            groups: vec![],
            ..mk(0)
        }];
        rates.update(&mut empty, 72 * S);
        let mut r = vec![mk(5)];
        rates.update(&mut r, 74 * S);
        assert_eq!(r[0].groups[0].rate_per_s, Some((5.0 - 20.0) / 69.0));
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_age(5_200_000_000), "5.2s");
        assert_eq!(fmt_age(1023 * S), "17m03s");
        assert_eq!(fmt_age(7500 * S), "2h05m");
        assert_eq!(fmt_age(90_000 * S), "1d01h");
        assert_eq!(thousands(1203), "1,203");
        assert_eq!(thousands(100_000), "100,000");
        assert_eq!(thousands(7), "7");
    }

    #[test]
    fn table_and_json_render() {
        let t = table();
        let mut list: Vec<(u64, FdRecord)> = (1..=3)
            .map(|c| (c, holder(4242, 36 + c as u32, b"leaky-api")))
            .collect();
        list.push((9, holder(917, 5, b"python3")));
        let h = held(&list);
        let f = Filter::new(&FilterArgs::default(), &[]);
        let r = build(&t, &h, &[TcpState::CloseWait], 10 * S, 0, &f);
        let mut s = String::new();
        render_table(&r[0], &t, false, "12:00:00", &mut s);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines[0],
            "CLOSE_WAIT longer than 0s: 5 sockets in 2 processes (and orphaned ones) at 12:00:00"
        );
        assert!(lines[2].starts_with("4242    leaky-api               3  9.0s       1.0s"));
        assert!(lines[3].contains("fd 37    10.0.0.5:8080 -> 10.0.0.9:50001   age 9.0s"));
        assert!(s.contains("917     python3                 1  >=10.0s"));
        assert!(s.contains("-       (orphaned)              1"), "{s}");
        let mut j = Vec::new();
        render_json(&r[0], &t, "T", &mut j).unwrap();
        let v: Vec<serde_json::Value> = String::from_utf8(j)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(v[0]["type"], "linger_report");
        assert_eq!(v[0]["count"], 5);
        assert_eq!(v[1]["type"], "linger");
        assert_eq!(v[1]["pid"], 4242);
        assert_eq!(v[1]["count"], 3);
        assert_eq!(v[1]["oldest_ms"], 9000.0);
        assert_eq!(v[1]["sockets"][0]["fd"], 37);
        assert_eq!(v[1]["sockets"][0]["sock"], "1");
        assert_eq!(v[1]["sockets"][0]["age_is_lower_bound"], false);
        let orphan = v
            .iter()
            .find(|x| x["pid"].is_null() && x["type"] == "linger");
        assert_eq!(orphan.unwrap()["comm"], serde_json::Value::Null);
    }

    #[test]
    fn unwatchable_states_are_refused() {
        assert!(check_states(&[TcpState::TimeWait]).is_err());
        assert!(check_states(&[TcpState::Close]).is_err());
        assert!(check_states(&[TcpState::FinWait2, TcpState::SynRecv]).is_ok());
    }
}
