//! The linger report: sockets that stay in a watched state longer than `--min-age`,
//! grouped by the process that holds them (oldest first), and each group's RATE.

use std::collections::{HashMap, VecDeque};

use crate::model::{
    events::TcpState,
    filter::Filter,
    holders::{Comm, Holders},
    sockets::SocketTable,
};

/// RATE looks back this far.
const RATE_WINDOW_NS: u64 = 60_000_000_000;

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
    /// The holder's name, raw (NUL-padded; zeros when orphaned): views escape it.
    pub comm: Comm,
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

    /// Groups held by a process (not the orphaned one).
    pub fn processes(&self) -> usize {
        self.groups.iter().filter(|g| g.pid.is_some()).count()
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
            comm: h.map_or([0; 16], |h| holders.comm(h.pid)),
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

    use tcpstate_common::{state, FdRecord, AF_INET};

    use super::*;
    use crate::model::{events::tests::event, holders::holders, sockets::Lingering};

    pub const S: u64 = 1_000_000_000;

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

    pub fn holder(pid: u32, fd: u32, comm: &[u8]) -> FdRecord {
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
    pub fn held(list: &[(u64, FdRecord)]) -> Holders {
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
        let f = Filter::default();
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
        let f = Filter {
            pids: vec![4242],
            ..Default::default()
        };
        let r = build(&t, &h, &[TcpState::CloseWait], 10 * S, 0, &f);
        assert_eq!(r[0].count(), 1);
        let f = Filter {
            rports: vec![50002],
            ..Default::default()
        };
        let r = build(&t, &h, &[TcpState::CloseWait], 10 * S, 0, &f);
        assert_eq!(r[0].count(), 1);
        assert_eq!(r[0].groups[0].pid, None);
    }

    #[test]
    fn rates_over_the_last_minute() {
        let mk = |n: usize| Report {
            state: TcpState::CloseWait,
            min_age_ns: 0,
            groups: vec![Group {
                pid: Some(1),
                comm: *b"a\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
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
    fn unwatchable_states_are_refused() {
        assert!(check_states(&[TcpState::TimeWait]).is_err());
        assert!(check_states(&[TcpState::Close]).is_err());
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
