//! The per-socket lifetime table: which sockets are in the watched states now, since
//! when, and what the probe knows of them. Fed by transitions and by the startup
//! seed; plain Rust, unit-tested with synthetic sequences.

use std::{collections::HashMap, net::IpAddr};

use tcpstate_common::{state, Event};

use crate::{
    model::events::{addrs, display_family, family_of, unmap},
    probe::sockdiag::DiagSocket,
};

/// A socket sitting in one of the watched states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lingering {
    pub state: u8,
    /// Monotonic ns when it entered `state`; for seeded sockets, when tcpstate started.
    pub since_ns: u64,
    /// It was already in `state` when tcpstate started: its age is a lower bound.
    pub lower_bound: bool,
    pub family: u8,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
}

impl Lingering {
    /// A socket sock_diag found at startup, in the state since `since_ns` at the latest.
    pub fn seeded(s: &DiagSocket, since_ns: u64) -> Self {
        let (saddr, daddr) = (unmap(s.saddr), unmap(s.daddr));
        Lingering {
            state: s.state,
            since_ns,
            lower_bound: true,
            family: family_of(saddr, daddr),
            saddr,
            sport: s.sport,
            daddr,
            dport: s.dport,
        }
    }
}

/// Sockets in the watched states, by cookie (stable, never reused: a socket address
/// reused by the kernel is a new cookie, so a new history). Bounded: past `capacity`
/// new sockets are not tracked and are counted in `untracked`.
#[derive(Debug)]
pub struct SocketTable {
    watched: u32,
    capacity: usize,
    socks: HashMap<u64, Lingering>,
    pub untracked: u64,
}

impl SocketTable {
    /// `watched` has bit `1 << state` set for each state to track.
    pub fn new(watched: u32, capacity: usize) -> Self {
        Self {
            watched,
            capacity,
            socks: HashMap::new(),
            untracked: 0,
        }
    }

    pub fn is_watched(&self, st: u8) -> bool {
        st < 32 && self.watched & (1 << st) != 0
    }

    fn insert(&mut self, cookie: u64, l: Lingering) {
        if self.socks.len() >= self.capacity && !self.socks.contains_key(&cookie) {
            self.untracked += 1;
            return;
        }
        self.socks.insert(cookie, l);
    }

    /// Applies one transition: entering a watched state starts a new exact age,
    /// leaving it (or closing) forgets the socket.
    pub fn apply(&mut self, ev: &Event) {
        if ev.newstate as i32 != state::CLOSE && self.is_watched(ev.newstate) {
            let (saddr, daddr) = addrs(ev);
            self.insert(
                ev.cookie,
                Lingering {
                    state: ev.newstate,
                    since_ns: ev.ts_ns,
                    lower_bound: false,
                    family: display_family(ev),
                    saddr,
                    sport: ev.sport,
                    daddr,
                    dport: ev.dport,
                },
            );
        } else {
            self.socks.remove(&ev.cookie);
        }
    }

    /// A socket found in a watched state at startup; an observed transition, being
    /// exact, wins over it.
    pub fn seed(&mut self, cookie: u64, l: Lingering) {
        if self.is_watched(l.state) && !self.socks.contains_key(&cookie) {
            self.insert(
                cookie,
                Lingering {
                    lower_bound: true,
                    ..l
                },
            );
        }
    }

    pub fn get(&self, cookie: u64) -> Option<&Lingering> {
        self.socks.get(&cookie)
    }

    pub fn contains(&self, cookie: u64) -> bool {
        self.socks.contains_key(&cookie)
    }

    pub fn len(&self) -> usize {
        self.socks.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Lingering)> {
        self.socks.iter()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tcpstate_common::AF_INET;

    use super::*;
    use crate::model::events::tests::event;

    const CW: u32 = 1 << state::CLOSE_WAIT;

    fn ev(cookie: u64, old: i32, new: i32, ts: u64) -> Event {
        let mut e = event(AF_INET, old, new);
        e.cookie = cookie;
        e.ts_ns = ts;
        e
    }

    fn seeded(st: i32) -> Lingering {
        Lingering {
            state: st as u8,
            since_ns: 100,
            lower_bound: false,
            family: 4,
            saddr: Ipv4Addr::LOCALHOST.into(),
            sport: 1,
            daddr: Ipv4Addr::LOCALHOST.into(),
            dport: 2,
        }
    }

    #[test]
    fn enters_and_leaves_a_watched_state() {
        let mut t = SocketTable::new(CW, 10);
        t.apply(&ev(1, state::SYN_RECV, state::ESTABLISHED, 5));
        assert_eq!(t.len(), 0);
        t.apply(&ev(1, state::ESTABLISHED, state::CLOSE_WAIT, 7));
        let (_, l) = t.iter().next().unwrap();
        assert_eq!((l.since_ns, l.lower_bound), (7, false));
        t.apply(&ev(1, state::CLOSE_WAIT, state::LAST_ACK, 9));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn close_forgets_and_a_new_cookie_is_a_new_history() {
        let mut t = SocketTable::new(CW | (1 << state::FIN_WAIT2), 10);
        t.apply(&ev(1, state::ESTABLISHED, state::CLOSE_WAIT, 7));
        t.apply(&ev(1, state::CLOSE_WAIT, state::CLOSE, 8));
        assert_eq!(t.len(), 0);
        // Same address reused by the kernel: a different cookie, a fresh age.
        t.apply(&ev(2, state::ESTABLISHED, state::CLOSE_WAIT, 50));
        assert_eq!(t.iter().next().unwrap().1.since_ns, 50);
    }

    #[test]
    fn seeds_are_lower_bounds_and_lose_to_transitions() {
        let mut t = SocketTable::new(CW, 10);
        t.seed(3, seeded(state::CLOSE_WAIT));
        assert!(t.iter().next().unwrap().1.lower_bound);
        t.seed(4, seeded(state::ESTABLISHED));
        assert_eq!(t.len(), 1, "unwatched states are not seeded");
        t.apply(&ev(5, state::ESTABLISHED, state::CLOSE_WAIT, 1));
        t.seed(5, seeded(state::CLOSE_WAIT));
        let l = t.iter().find(|(c, _)| **c == 5).unwrap().1;
        assert!(!l.lower_bound, "an observed entry is exact");
    }

    #[test]
    fn seeded_sockets_are_unmapped() {
        let d = DiagSocket {
            cookie: 1,
            state: state::CLOSE_WAIT as u8,
            saddr: Ipv4Addr::LOCALHOST.to_ipv6_mapped().into(),
            sport: 80,
            daddr: Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped().into(),
            dport: 5000,
            expires_ms: 0,
        };
        let l = Lingering::seeded(&d, 9);
        assert_eq!((l.family, l.since_ns, l.lower_bound), (4, 9, true));
        assert_eq!(l.daddr.to_string(), "10.0.0.1");
    }

    #[test]
    fn bounded_and_counted() {
        let mut t = SocketTable::new(CW, 2);
        for c in 0..5 {
            t.apply(&ev(c, state::ESTABLISHED, state::CLOSE_WAIT, c));
        }
        assert_eq!(t.len(), 2);
        assert_eq!(t.untracked, 3);
        // Updating a tracked socket is not an eviction.
        t.apply(&ev(0, state::ESTABLISHED, state::CLOSE_WAIT, 9));
        assert_eq!(t.untracked, 3);
    }
}
