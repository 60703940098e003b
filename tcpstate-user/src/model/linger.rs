//! The linger report: sockets that stay in a watched state longer than `--min-age`,
//! grouped by the process that holds them (oldest first), each group's RATE, and
//! the diagnosis: what the program did wrong (per socket, from the kernel's own
//! counters) and how long until it runs out of fds. Plain data: the views render it.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
};

use tcpstate_common::{state, FdRecord, FD_NONE};

use crate::model::{
    events::{addr, family_of, TcpState},
    filter::Filter,
    holders::{Comm, Holder, Holders},
    sockets::SocketTable,
};

/// RATE, and the growth behind the fd ETA, look back this far.
const RATE_WINDOW_NS: u64 = 60_000_000_000;

/// What the fd walk read of a socket (absent for a socket no process holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// false: waiting in the accept queue of the listener at `listener_fd`.
    pub accepted: bool,
    pub listener_fd: Option<u32>,
    /// Everything the peer sent, FIN included, was consumed.
    pub eof_read: bool,
    /// Data bytes not read yet (a FIN not counted).
    pub unread_bytes: u32,
    /// Milliseconds since the last data sent (`lsndtime`, `ss -i` lastsnd).
    pub last_send_ms: u64,
    /// Milliseconds since the last data received (`icsk_ack.lrcvtime`, lastrcv).
    pub last_recv_ms: u64,
    /// Milliseconds since the last acceptable ACK (`rcv_tstamp`, lastack).
    pub last_ack_ms: u64,
    /// `sk_err` (an errno), 0 if none.
    pub sk_err: i32,
    /// Network namespace inode.
    pub netns: u32,
    /// The listener's accept queue length and limit, for a queued connection.
    pub accept_queue: Option<(u32, u32)>,
}

/// A socket in a report.
#[derive(Debug, Clone, PartialEq)]
pub struct SockLine {
    pub cookie: u64,
    pub fd: Option<u32>,
    pub age_ns: u64,
    pub lower_bound: bool,
    pub state: u8,
    pub family: u8,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub facts: Option<Facts>,
}

/// Why a socket lingers, as far as the kernel's counters tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// CLOSE_WAIT, everything read (read() returned 0, or would): close() is missing.
    ReadAllNeverClosed,
    /// CLOSE_WAIT with the FIN (and maybe data) unread: nobody reads this socket.
    StoppedReading,
    /// In a listener's accept queue: nobody calls accept().
    NeverAccepted,
    /// CLOSE with an fd still open: the connection is gone (reset, timeout).
    Dead,
    /// Nothing to say (another state, or no fd walk record).
    Unknown,
}

/// A listener whose queue holds some of a group's sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    pub listener_fd: u32,
    pub netns: u32,
    /// The queued connections' local address and port: the listener's.
    pub saddr: IpAddr,
    pub sport: u16,
    /// Of this report's sockets, how many wait in this queue.
    pub count: usize,
    /// `sk_ack_backlog` / `sk_max_ack_backlog`.
    pub len: u32,
    pub max: u32,
}

/// Per group: how many sockets each cause explains, and the queues involved.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Diagnosis {
    pub read_all_never_closed: usize,
    pub stopped_reading: usize,
    pub never_accepted: usize,
    pub dead: usize,
    pub backlogs: Vec<Backlog>,
    /// sk_err values of dead sockets, with counts, most frequent first.
    pub errors: Vec<(i32, usize)>,
}

impl Diagnosis {
    fn add(&mut self, s: &SockLine) {
        match cause(s) {
            Cause::ReadAllNeverClosed => self.read_all_never_closed += 1,
            Cause::StoppedReading => self.stopped_reading += 1,
            Cause::Dead => {
                self.dead += 1;
                let e = s.facts.map_or(0, |f| f.sk_err);
                match self.errors.iter_mut().find(|(v, _)| *v == e) {
                    Some(x) => x.1 += 1,
                    None => self.errors.push((e, 1)),
                }
            }
            Cause::NeverAccepted => {
                self.never_accepted += 1;
                let f = s.facts.expect("queued sockets have facts");
                let lfd = f.listener_fd.unwrap_or(FD_NONE);
                let (len, max) = f.accept_queue.unwrap_or((0, 0));
                match self
                    .backlogs
                    .iter_mut()
                    .find(|b| b.listener_fd == lfd && b.netns == f.netns)
                {
                    Some(b) => b.count += 1,
                    None => self.backlogs.push(Backlog {
                        listener_fd: lfd,
                        netns: f.netns,
                        saddr: s.saddr,
                        sport: s.sport,
                        count: 1,
                        len,
                        max,
                    }),
                }
            }
            Cause::Unknown => {}
        }
    }
}

/// The cause of one socket's lingering.
pub fn cause(s: &SockLine) -> Cause {
    let Some(f) = s.facts else {
        return Cause::Unknown;
    };
    if !f.accepted {
        return Cause::NeverAccepted;
    }
    match i32::from(s.state) {
        state::CLOSE => Cause::Dead,
        state::CLOSE_WAIT if f.eof_read => Cause::ReadAllNeverClosed,
        state::CLOSE_WAIT => Cause::StoppedReading,
        _ => Cause::Unknown,
    }
}

/// (eof_read, unread_bytes) from the Recv-Q (`rcv_nxt - copied_seq`). In the states
/// after a FIN arrived the FIN takes one sequence number, which the read that
/// reaches it consumes (`tcp_recvmsg_locked()`, `found_fin_ok`): 0 is everything
/// read, 1 only the FIN unread, 1 + N with N data bytes unread. Elsewhere the
/// Recv-Q is data only and there is no EOF to have read.
pub fn eof_and_unread(st: u8, recv_q: u32) -> (bool, u32) {
    match i32::from(st) {
        state::CLOSE_WAIT | state::LAST_ACK | state::CLOSING => {
            (recv_q == 0, recv_q.saturating_sub(1))
        }
        _ => (false, recv_q),
    }
}

/// Milliseconds from jiffies `then` to `now` (both the kernel's 32-bit
/// `tcp_jiffies32`): the difference is taken modulo 2^32, so one wrap of the
/// counter between them is harmless (at HZ 250 it wraps every 198 days). A
/// timestamp a little ahead of `now` (written while the walk read it) counts as 0.
pub fn jiffies_ms(now: u32, then: u32, hz: u32) -> u64 {
    let d = now.wrapping_sub(then);
    if d > i32::MAX as u32 || hz == 0 {
        return 0;
    }
    u64::from(d) * 1000 / u64::from(hz)
}

/// The age of a socket that was in its state before tcpstate saw it enter: at
/// least the time since tcpstate started, and at least the time since its last
/// acceptable ACK (the FIN that moved it to CLOSE_WAIT was one; later ACKs only
/// move `rcv_tstamp` forward, so this stays a lower bound).
pub fn lower_bound_age_ns(last_ack_ms: u64, since_start_ns: u64) -> u64 {
    since_start_ns.max(last_ack_ms.saturating_mul(1_000_000))
}

/// Seconds until `fds` reaches `limit` at `growth` fds per second; `None` when not
/// growing (or unknown).
pub fn exhaustion_s(fds: u64, limit: u64, growth_per_s: Option<f64>) -> Option<f64> {
    let g = growth_per_s?;
    (g > 0.0).then(|| limit.saturating_sub(fds) as f64 / g)
}

/// What a report is built against: the clocks, and the kernel's tick rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clocks {
    /// Monotonic now.
    pub now_ns: u64,
    /// When tcpstate started watching (monotonic).
    pub attached_ns: u64,
    /// The kernel's HZ (jiffies per second).
    pub hz: u32,
}

impl Facts {
    /// From a walk record.
    pub fn of(r: &FdRecord, hz: u32) -> Self {
        let (eof_read, unread_bytes) =
            eof_and_unread(r.state, r.rcv_nxt.wrapping_sub(r.copied_seq));
        let queued = r.queued != 0;
        Facts {
            accepted: !queued,
            listener_fd: queued.then_some(r.listener_fd),
            eof_read,
            unread_bytes,
            last_send_ms: jiffies_ms(r.now_jiffies, r.lsndtime, hz),
            last_recv_ms: jiffies_ms(r.now_jiffies, r.lrcvtime, hz),
            last_ack_ms: jiffies_ms(r.now_jiffies, r.rcv_tstamp, hz),
            sk_err: r.sk_err,
            netns: r.netns,
            accept_queue: queued.then_some((r.ack_backlog, r.max_ack_backlog)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// `None`: no process holds an fd for these sockets (orphaned).
    pub pid: Option<u32>,
    /// The holder's name, raw (NUL-padded; zeros when orphaned): views escape it.
    pub comm: Comm,
    /// Oldest first.
    pub sockets: Vec<SockLine>,
    /// Change in count per second over the last minute of reports.
    pub rate_per_s: Option<f64>,
    /// Sockets per second that entered the state and are still held, over the last
    /// minute of transitions seen (so a single report has it): the leak rate.
    pub growth_per_s: Option<f64>,
    /// The holder's soft RLIMIT_NOFILE and open fds, when read.
    pub fd_limit: Option<u64>,
    pub fds: Option<u64>,
    /// Seconds until `fds` reaches `fd_limit` at `growth_per_s`; `None` when not
    /// growing.
    pub fd_exhaustion_s: Option<f64>,
    pub diagnosis: Diagnosis,
    /// The holder's cgroup and container (filled in by the command; all `None` for
    /// a host process or an orphaned group).
    pub ident: crate::model::container::Ident,
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

    /// Groups held by a process (not the orphaned one).
    pub fn processes(&self) -> usize {
        self.groups.iter().filter(|g| g.pid.is_some()).count()
    }
}

fn new_group(pid: Option<u32>, comm: Comm) -> Group {
    Group {
        pid,
        comm,
        sockets: Vec::new(),
        rate_per_s: None,
        growth_per_s: None,
        fd_limit: None,
        fds: None,
        fd_exhaustion_s: None,
        diagnosis: Diagnosis::default(),
        ident: Default::default(),
    }
}

/// A held socket's line: its age exact when the table saw it enter the state,
/// else a lower bound from the kernel's last-ACK time.
fn held_line(h: &Holder, table: &SocketTable, clk: &Clocks) -> SockLine {
    let r = &h.rec;
    let facts = Facts::of(r, clk.hz);
    let exact = table
        .get(r.cookie)
        .filter(|l| !l.lower_bound && l.state == r.state);
    let (age_ns, lower_bound) = match exact {
        Some(l) => (clk.now_ns.saturating_sub(l.since_ns), false),
        None => (
            lower_bound_age_ns(
                facts.last_ack_ms,
                clk.now_ns.saturating_sub(clk.attached_ns),
            ),
            true,
        ),
    };
    let (saddr, daddr) = (addr(r.family, &r.saddr), addr(r.family, &r.daddr));
    SockLine {
        cookie: r.cookie,
        fd: h.fd,
        age_ns,
        lower_bound,
        state: r.state,
        family: family_of(saddr, daddr),
        saddr,
        sport: r.sport,
        daddr,
        dport: r.dport,
        facts: Some(facts),
    }
}

/// Builds one report per state from the table (transitions seen, and the startup
/// seed), the holders (the fd walk, consumed) and the filters.
pub fn build(
    table: &SocketTable,
    holders: &mut Holders,
    states: &[TcpState],
    clk: &Clocks,
    min_age_ns: u64,
    filter: &Filter,
) -> Vec<Report> {
    let mut per_state: Vec<HashMap<Option<u32>, Group>> = vec![HashMap::new(); states.len()];
    // Entered during the window and still here, per (state, pid): the growth.
    let window_ns = clk
        .now_ns
        .saturating_sub(clk.attached_ns)
        .min(RATE_WINDOW_NS);
    let mut grown: HashMap<(usize, u32), usize> = HashMap::new();
    let pid_ok =
        |pid: Option<u32>| filter.pids.is_empty() || pid.is_some_and(|p| filter.pids.contains(&p));
    let state_of = |st: u8| states.iter().position(|s| s.number() == i32::from(st));
    // What the table knows and no fd refers to: orphaned.
    for (cookie, l) in table.iter() {
        let Some(si) = state_of(l.state) else {
            continue;
        };
        if holders.get(*cookie).is_some() {
            continue;
        }
        let age_ns = clk.now_ns.saturating_sub(l.since_ns);
        if age_ns < min_age_ns || !filter.matches_socket(l, None) {
            continue;
        }
        per_state[si]
            .entry(None)
            .or_insert_with(|| new_group(None, [0; 16]))
            .sockets
            .push(SockLine {
                cookie: *cookie,
                fd: None,
                age_ns,
                lower_bound: l.lower_bound,
                state: l.state,
                family: l.family,
                saddr: l.saddr,
                sport: l.sport,
                daddr: l.daddr,
                dport: l.dport,
                facts: None,
            });
    }
    // Then every held socket, the scan's records freed as they are used.
    holders.drain(|h, comm| {
        let Some(si) = state_of(h.rec.state) else {
            return;
        };
        let line = held_line(&h, table, clk);
        if !filter.matches_endpoints(line.family, line.sport, line.dport) || !pid_ok(Some(h.pid)) {
            return;
        }
        if !line.lower_bound && line.age_ns <= window_ns {
            *grown.entry((si, h.pid)).or_default() += 1;
        }
        if line.age_ns < min_age_ns {
            return;
        }
        per_state[si]
            .entry(Some(h.pid))
            .or_insert_with(|| new_group(Some(h.pid), comm))
            .sockets
            .push(line);
    });
    states
        .iter()
        .zip(per_state)
        .enumerate()
        .map(|(si, (state, groups))| {
            let mut groups: Vec<Group> = groups.into_values().collect();
            for g in &mut groups {
                g.sockets.sort_by(|a, b| {
                    b.age_ns
                        .cmp(&a.age_ns)
                        .then(a.fd.cmp(&b.fd))
                        .then(a.cookie.cmp(&b.cookie))
                });
                for s in &g.sockets {
                    g.diagnosis.add(s);
                }
                g.diagnosis
                    .errors
                    .sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                g.diagnosis
                    .backlogs
                    .sort_by_key(|b| (std::cmp::Reverse(b.count), b.listener_fd));
                if let Some(pid) = g.pid {
                    let n = grown.get(&(si, pid)).copied().unwrap_or(0);
                    g.growth_per_s = (window_ns > 0).then(|| n as f64 / (window_ns as f64 / 1e9));
                }
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

/// Fills in each process's fd headroom from `fd_info(pid)` = (soft RLIMIT_NOFILE,
/// open fds), and the time until the fds run out at the group's growth.
pub fn set_fd_headroom(
    reports: &mut [Report],
    mut fd_info: impl FnMut(u32) -> (Option<u64>, Option<u64>),
) {
    let mut seen: HashMap<u32, (Option<u64>, Option<u64>)> = HashMap::new();
    for r in reports.iter_mut() {
        for g in &mut r.groups {
            let Some(pid) = g.pid else {
                continue;
            };
            let (limit, fds) = *seen.entry(pid).or_insert_with(|| fd_info(pid));
            g.fd_limit = limit;
            g.fds = fds;
            g.fd_exhaustion_s = match (limit, fds) {
                (Some(l), Some(f)) => exhaustion_s(f, l, g.growth_per_s),
                _ => None,
            };
        }
    }
}

/// Counts per (state, process) over the last minute of reports, for RATE.
#[derive(Debug, Default)]
pub struct Rates {
    history: HashMap<GroupKey, VecDeque<(u64, usize)>>,
}

/// (state, holder pid, holder comm): a reused pid with another name is another group.
type GroupKey = (TcpState, Option<u32>, Comm);

impl Rates {
    /// Records this report's counts and fills in each group's rate: the change in
    /// count per second since the oldest report of the last minute. A group that was
    /// absent from an earlier report counted 0 then.
    pub fn update(&mut self, reports: &mut [Report], now_ns: u64) {
        for r in reports.iter_mut() {
            for g in &mut r.groups {
                let key = (r.state, g.pid, g.comm);
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
                let key = (r.state, g.pid, g.comm);
                g.rate_per_s = self.history.get(&key).and_then(|h| {
                    let (t0, c0) = *h.front()?;
                    let (t1, c1) = *h.back()?;
                    (t1 > t0).then(|| (c1 as f64 - c0 as f64) / ((t1 - t0) as f64 / 1e9))
                });
            }
        }
    }
}

/// The states `linger` can watch: the probe never reports TIME_WAIT (nor
/// NEW_SYN_RECV), so their sockets could be seeded but never seen to leave. CLOSE
/// means dead connections still held by an fd (the fd walk finds them).
pub fn check_states(states: &[TcpState]) -> Result<(), String> {
    for s in states {
        match s {
            TcpState::TimeWait | TcpState::NewSynRecv => {
                return Err(format!(
                    "--state {s}: the kernel never reports sockets entering or leaving {s} \
                     (see `tcpstate hist --state TIME_WAIT`)"
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The states to watch, each once, in the order the user first named them
/// (CLOSE_WAIT when none): `dedup()` alone kept non-adjacent repeats, and each
/// printed an empty duplicate report.
pub fn watched_states(states: &[TcpState]) -> Vec<TcpState> {
    if states.is_empty() {
        return vec![TcpState::CloseWait];
    }
    let mut seen = Vec::with_capacity(states.len());
    for s in states {
        if !seen.contains(s) {
            seen.push(*s);
        }
    }
    seen
}

/// `1 << state` for each state.
pub fn state_mask(states: &[TcpState]) -> u32 {
    states.iter().fold(0u32, |m, s| m | (1 << s.number()))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;

    use tcpstate_common::{state, FdRecord, AF_INET, AF_INET6};

    use super::*;
    use crate::model::{
        events::tests::event,
        holders::{holders, record},
        sockets::Lingering,
    };

    pub const S: u64 = 1_000_000_000;
    pub const HZ: u32 = 250;

    /// Clocks at `now` s, tcpstate started at 0.
    pub fn clk(now: u64) -> Clocks {
        Clocks {
            now_ns: now * S,
            attached_ns: 0,
            hz: HZ,
        }
    }

    pub fn table() -> SocketTable {
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

    /// A CLOSE_WAIT fd record of `pid` (10.0.0.5:8080 -> 10.0.0.9:50000+cookie),
    /// everything read, its last ACK `ack_s` seconds before the walk.
    pub fn holder(pid: u32, fd: u32, comm: &[u8]) -> FdRecord {
        let mut r = record(0, pid, fd, state::CLOSE_WAIT as u8);
        r.comm[..comm.len()].copy_from_slice(comm);
        r.family = AF_INET;
        r.saddr[..4].copy_from_slice(&[10, 0, 0, 5]);
        r.daddr[..4].copy_from_slice(&[10, 0, 0, 9]);
        r.sport = 8080;
        r.now_jiffies = 1000 * HZ;
        r.rcv_tstamp = r.now_jiffies;
        r.lsndtime = r.now_jiffies;
        r.lrcvtime = r.now_jiffies;
        r
    }

    /// Holders from (cookie, fd record) pairs.
    pub fn held(list: &[(u64, FdRecord)]) -> Holders {
        let recs: Vec<FdRecord> = list
            .iter()
            .map(|(c, f)| FdRecord {
                cookie: *c,
                dport: if f.dport == 0 {
                    50000 + *c as u16
                } else {
                    f.dport
                },
                ..*f
            })
            .collect();
        holders(&recs)
    }

    #[test]
    fn groups_by_holder_oldest_first_and_min_age() {
        let t = table();
        let mut h = held(&[
            (1, holder(4242, 37, b"leaky")),
            (2, holder(4242, 38, b"leaky")),
            (3, holder(4242, 39, b"leaky")),
            (9, holder(917, 5, b"python3")),
        ]);
        // Socket 4 has no holder: orphaned.
        let f = Filter::default();
        let r = build(&t, &mut h, &[TcpState::CloseWait], &clk(10), 2 * S, &f);
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
        assert!(r.groups[1].sockets[0].facts.is_none());
        assert_eq!(r.groups[2].pid, Some(917));
        assert!(r.groups[2].sockets[0].lower_bound);
        assert_eq!(r.groups[2].sockets[0].age_ns, 10 * S);
        // Three of 4242's sockets entered in the 10 s seen (one under min-age).
        assert_eq!(r.groups[0].growth_per_s, Some(0.3));
        assert_eq!(r.groups[2].growth_per_s, Some(0.0));
    }

    #[test]
    fn pid_filter_uses_the_holder() {
        let t = table();
        let mut h = held(&[(1, holder(4242, 37, b"leaky"))]);
        let f = Filter {
            pids: vec![4242],
            ..Default::default()
        };
        let r = build(&t, &mut h, &[TcpState::CloseWait], &clk(10), 0, &f);
        assert_eq!(r[0].count(), 1);
        // build() consumes the scan.
        let mut h = held(&[(1, holder(4242, 37, b"leaky"))]);
        let f = Filter {
            rports: vec![50002],
            ..Default::default()
        };
        let r = build(&t, &mut h, &[TcpState::CloseWait], &clk(10), 0, &f);
        assert_eq!(r[0].count(), 1);
        assert_eq!(r[0].groups[0].pid, None);
    }

    #[test]
    fn recv_queue_says_what_was_read() {
        let cw = state::CLOSE_WAIT as u8;
        assert_eq!(eof_and_unread(cw, 0), (true, 0));
        assert_eq!(eof_and_unread(cw, 1), (false, 0), "only the FIN unread");
        assert_eq!(eof_and_unread(cw, 101), (false, 100));
        assert_eq!(eof_and_unread(state::LAST_ACK as u8, 0), (true, 0));
        // No FIN came in these states: the queue is data only.
        assert_eq!(eof_and_unread(state::ESTABLISHED as u8, 0), (false, 0));
        assert_eq!(eof_and_unread(state::FIN_WAIT2 as u8, 7), (false, 7));
        assert_eq!(eof_and_unread(state::CLOSE as u8, 3), (false, 3));
        // rcv_nxt wrapped past copied_seq: still 1 + 100.
        let mut r = holder(1, 3, b"x");
        r.copied_seq = u32::MAX - 50;
        r.rcv_nxt = r.copied_seq.wrapping_add(101);
        let f = Facts::of(&r, HZ);
        assert_eq!((f.eof_read, f.unread_bytes), (false, 100));
    }

    #[test]
    fn jiffies_ages_handle_hz_and_wrap() {
        assert_eq!(jiffies_ms(1250, 1000, 250), 1000);
        assert_eq!(jiffies_ms(1100, 1000, 100), 1000);
        assert_eq!(jiffies_ms(2000, 1000, 1000), 1000);
        assert_eq!(jiffies_ms(1000, 1000, 300), 0);
        // The counter wrapped between the two: 240 + 10 jiffies.
        assert_eq!(jiffies_ms(9, u32::MAX - 240, 250), 1000);
        // A timestamp just ahead of now (written during the walk) is no age.
        assert_eq!(jiffies_ms(1000, 1002, 250), 0);
        assert_eq!(jiffies_ms(1000, 0, 0), 0, "unknown HZ");
    }

    #[test]
    fn preexisting_ages_are_lower_bounds() {
        // Quiet since its FIN 100 s ago, tcpstate up 3 s: 100 s.
        assert_eq!(lower_bound_age_ns(100_000, 3 * S), 100 * S);
        // ACKed since (it wrote, keepalive): never below the time since start.
        assert_eq!(lower_bound_age_ns(500, 3 * S), 3 * S);
        let t = SocketTable::new(1 << state::CLOSE_WAIT, 10);
        let mut r = holder(7, 4, b"old");
        r.rcv_tstamp = r.now_jiffies - 100 * HZ;
        let mut h = held(&[(5, r)]);
        let rep = build(
            &t,
            &mut h,
            &[TcpState::CloseWait],
            &clk(3),
            0,
            &Filter::default(),
        );
        let s = &rep[0].groups[0].sockets[0];
        assert_eq!((s.age_ns, s.lower_bound), (100 * S, true));
        assert_eq!(rep[0].groups[0].growth_per_s, Some(0.0), "nothing entered");
    }

    #[test]
    fn diagnosis_counts_each_cause() {
        let t = SocketTable::new(1 << state::CLOSE_WAIT | 1 << state::CLOSE, 10);
        let read_all = holder(7, 4, b"srv");
        let mut unread = holder(7, 5, b"srv");
        unread.rcv_nxt = 101;
        let mut fin_only = holder(7, 6, b"srv");
        fin_only.rcv_nxt = 1;
        let mut queued = holder(7, FD_NONE, b"srv");
        queued.queued = 1;
        queued.listener_fd = 3;
        queued.ack_backlog = 5;
        queued.max_ack_backlog = 128;
        let mut dead = holder(7, 8, b"srv");
        dead.state = state::CLOSE as u8;
        dead.sk_err = 104;
        let mut h = held(&[
            (1, read_all),
            (2, unread),
            (3, fin_only),
            (4, queued),
            (5, dead),
        ]);
        let f = Filter::default();
        let r = build(
            &t,
            &mut h,
            &[TcpState::CloseWait, TcpState::Close],
            &clk(10),
            0,
            &f,
        );
        let d = &r[0].groups[0].diagnosis;
        assert_eq!(
            (
                d.read_all_never_closed,
                d.stopped_reading,
                d.never_accepted,
                d.dead
            ),
            (1, 2, 1, 0)
        );
        assert_eq!(
            d.backlogs,
            vec![Backlog {
                listener_fd: 3,
                netns: 0,
                saddr: Ipv4Addr::new(10, 0, 0, 5).into(),
                sport: 8080,
                count: 1,
                len: 5,
                max: 128,
            }]
        );
        let q = r[0].groups[0]
            .sockets
            .iter()
            .find(|s| s.cookie == 4)
            .unwrap();
        assert_eq!(q.fd, None);
        let qf = q.facts.unwrap();
        assert_eq!((qf.accepted, qf.listener_fd), (false, Some(3)));
        let u = r[0].groups[0]
            .sockets
            .iter()
            .find(|s| s.cookie == 2)
            .unwrap();
        assert_eq!(u.facts.unwrap().unread_bytes, 100);
        let d = &r[1].groups[0].diagnosis;
        assert_eq!((d.dead, d.errors.clone()), (1, vec![(104, 1)]));
    }

    #[test]
    fn fd_exhaustion_from_growth() {
        assert_eq!(exhaustion_s(1230, 4096, Some(2.0)), Some(1433.0));
        assert_eq!(exhaustion_s(1230, 4096, Some(0.0)), None, "not growing");
        assert_eq!(exhaustion_s(1230, 4096, Some(-1.0)), None, "shrinking");
        assert_eq!(exhaustion_s(1230, 4096, None), None);
        assert_eq!(
            exhaustion_s(5000, 4096, Some(1.0)),
            Some(0.0),
            "already full"
        );
        let t = table();
        let mut h = held(&[
            (1, holder(4242, 37, b"leaky")),
            (2, holder(4242, 38, b"leaky")),
        ]);
        let mut r = build(
            &t,
            &mut h,
            &[TcpState::CloseWait],
            &clk(10),
            0,
            &Filter::default(),
        );
        set_fd_headroom(&mut r, |pid| {
            assert_eq!(pid, 4242);
            (Some(1024), Some(24))
        });
        let g = r[0].groups.iter().find(|g| g.pid == Some(4242)).unwrap();
        // Two sockets entered in 10 s: 0.2/s, 1000 fds to go.
        assert_eq!((g.fd_limit, g.fds), (Some(1024), Some(24)));
        assert_eq!(g.fd_exhaustion_s, Some(5000.0));
        let orphans = r[0].groups.iter().find(|g| g.pid.is_none()).unwrap();
        assert_eq!(orphans.fd_limit, None, "orphans have no process");
    }

    #[test]
    fn ipv6_records_keep_their_addresses() {
        let t = SocketTable::new(1 << state::CLOSE_WAIT, 10);
        let mut r = holder(7, 4, b"v6");
        r.family = AF_INET6;
        r.saddr = std::net::Ipv6Addr::LOCALHOST.octets();
        r.daddr = std::net::Ipv6Addr::LOCALHOST.octets();
        let mut h = held(&[(5, r)]);
        let rep = build(
            &t,
            &mut h,
            &[TcpState::CloseWait],
            &clk(1),
            0,
            &Filter::default(),
        );
        let s = &rep[0].groups[0].sockets[0];
        assert_eq!(
            (s.family, s.saddr),
            (6, std::net::Ipv6Addr::LOCALHOST.into())
        );
    }

    #[test]
    fn rates_over_the_last_minute() {
        let line = SockLine {
            cookie: 0,
            fd: None,
            age_ns: 0,
            lower_bound: false,
            state: state::CLOSE_WAIT as u8,
            family: 4,
            saddr: Ipv4Addr::LOCALHOST.into(),
            sport: 1,
            daddr: Ipv4Addr::LOCALHOST.into(),
            dport: 2,
            facts: None,
        };
        let mk = |n: usize| Report {
            state: TcpState::CloseWait,
            min_age_ns: 0,
            groups: vec![Group {
                sockets: vec![line.clone(); n],
                ..new_group(Some(1), *b"a\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0")
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
    fn unwatchable_states_are_refused() {
        assert!(check_states(&[TcpState::TimeWait]).is_err());
        assert!(check_states(&[TcpState::Close]).is_ok(), "dead connections");
        assert!(check_states(&[TcpState::FinWait2, TcpState::SynRecv]).is_ok());
    }

    #[test]
    fn repeated_states_are_watched_once_in_first_order() {
        use TcpState::*;
        assert_eq!(watched_states(&[]), vec![CloseWait]);
        assert_eq!(watched_states(&[CloseWait, CloseWait]), vec![CloseWait]);
        assert_eq!(
            watched_states(&[FinWait2, CloseWait, FinWait2, LastAck, CloseWait]),
            vec![FinWait2, CloseWait, LastAck]
        );
        assert_eq!(state_mask(&[CloseWait, LastAck]), (1 << 8) | (1 << 9));
    }
}
