//! Events as the model sees them: TCP states (names and numbers), and the rules for a
//! transition's addresses (IPv4-mapped IPv6 shows as IPv4), family and duration.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use tcpstate_common::{state, Event, AF_INET, AF_INET6, PREV_UNKNOWN};

/// A TCP state, as numbered in the kernel's `include/net/tcp_states.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    BoundInactive,
}

const ALL: [(TcpState, i32, &str); 13] = [
    (TcpState::Established, state::ESTABLISHED, "ESTABLISHED"),
    (TcpState::SynSent, state::SYN_SENT, "SYN_SENT"),
    (TcpState::SynRecv, state::SYN_RECV, "SYN_RECV"),
    (TcpState::FinWait1, state::FIN_WAIT1, "FIN_WAIT1"),
    (TcpState::FinWait2, state::FIN_WAIT2, "FIN_WAIT2"),
    (TcpState::TimeWait, state::TIME_WAIT, "TIME_WAIT"),
    (TcpState::Close, state::CLOSE, "CLOSE"),
    (TcpState::CloseWait, state::CLOSE_WAIT, "CLOSE_WAIT"),
    (TcpState::LastAck, state::LAST_ACK, "LAST_ACK"),
    (TcpState::Listen, state::LISTEN, "LISTEN"),
    (TcpState::Closing, state::CLOSING, "CLOSING"),
    (TcpState::NewSynRecv, state::NEW_SYN_RECV, "NEW_SYN_RECV"),
    (
        TcpState::BoundInactive,
        state::BOUND_INACTIVE,
        "BOUND_INACTIVE",
    ),
];

impl TcpState {
    pub fn name(self) -> &'static str {
        ALL[self as usize].2
    }
    pub fn number(self) -> i32 {
        ALL[self as usize].1
    }
}

impl TryFrom<i32> for TcpState {
    type Error = i32;
    fn try_from(n: i32) -> Result<Self, i32> {
        ALL.iter()
            .find(|(_, v, _)| *v == n)
            .map(|(s, _, _)| *s)
            .ok_or(n)
    }
}

impl FromStr for TcpState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let up = s.trim().to_ascii_uppercase();
        ALL.iter()
            .find(|(_, _, name)| *name == up)
            .map(|(st, _, _)| *st)
            .ok_or_else(|| {
                let names: Vec<&str> = ALL.iter().map(|(_, _, n)| *n).collect();
                format!("unknown TCP state '{s}' (one of {})", names.join(", "))
            })
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// A kernel state number that may be unknown to this build: prints as `UNKNOWN(n)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateNum(pub u8);

impl StateNum {
    pub fn state(self) -> Option<TcpState> {
        TcpState::try_from(i32::from(self.0)).ok()
    }
}

impl fmt::Display for StateNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.state() {
            Some(s) => f.pad(s.name()),
            None => f.pad(&format!("UNKNOWN({})", self.0)),
        }
    }
}

/// Local and remote addresses of an event; IPv4-mapped IPv6 addresses become IPv4.
pub fn addrs(ev: &Event) -> (IpAddr, IpAddr) {
    (addr(ev.family, &ev.saddr), addr(ev.family, &ev.daddr))
}

/// The one IPv4-mapped test (`::ffff:a.b.c.d`, RFC 4291 2.5.5.2) every view uses.
#[inline]
pub fn is_v4_mapped(b: &[u8; 16]) -> bool {
    b[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]
}

/// An address from the probe; IPv4-mapped IPv6 becomes IPv4.
pub fn addr(family: u16, bytes: &[u8; 16]) -> IpAddr {
    match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        AF_INET6 => unmap(IpAddr::V6(Ipv6Addr::from(*bytes))),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    }
}

/// IPv4-mapped IPv6 becomes IPv4 (for addresses from sock_diag).
pub fn unmap(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) if is_v4_mapped(&v6.octets()) => {
            let o = v6.octets();
            IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
        }
        a => a,
    }
}

/// The family a user sees for a pair of (unmapped) addresses: 4 if both are IPv4.
pub fn family_of(saddr: IpAddr, daddr: IpAddr) -> u8 {
    match (saddr, daddr) {
        (IpAddr::V4(_), IpAddr::V4(_)) => 4,
        _ => 6,
    }
}

/// The family a user sees: 4 for IPv4 and IPv4-mapped IPv6 sockets, else 6.
pub fn display_family(ev: &Event) -> u8 {
    let (s, d) = addrs(ev);
    family_of(s, d)
}

/// Time spent in the old state, in milliseconds, when known.
pub fn prev_ms(ev: &Event) -> Option<f64> {
    (ev.prev_ns != PREV_UNKNOWN).then(|| ev.prev_ns as f64 / 1e6)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Built field by field on a zeroed record, so it does not depend on fields the
    /// model never reads.
    pub fn event(family: u16, old: i32, new: i32) -> Event {
        // SAFETY: Event is plain old data; all zeros is a valid value.
        let mut e: Event = unsafe { std::mem::zeroed() };
        e.ts_ns = 1;
        e.prev_ns = PREV_UNKNOWN;
        e.cookie = 42;
        e.sport = 1;
        e.dport = 2;
        e.family = family;
        e.oldstate = old as u8;
        e.newstate = new as u8;
        e
    }

    #[test]
    fn state_names_round_trip() {
        for (st, n, name) in ALL {
            assert_eq!(TcpState::try_from(n), Ok(st));
            assert_eq!(st.name(), name);
            assert_eq!(st.number(), n);
            assert_eq!(name.to_lowercase().parse::<TcpState>(), Ok(st));
        }
        assert!("CLOSED_WAIT".parse::<TcpState>().is_err());
        assert_eq!(StateNum(99).to_string(), "UNKNOWN(99)");
        assert_eq!(format!("{:<12}|", StateNum(8)), "CLOSE_WAIT  |");
    }

    #[test]
    fn mapped_addresses_print_as_ipv4() {
        let mut ev = event(AF_INET6, state::CLOSE, state::SYN_SENT);
        ev.saddr = Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().octets();
        ev.daddr = Ipv6Addr::LOCALHOST.octets();
        let (s, d) = addrs(&ev);
        assert_eq!(s.to_string(), "127.0.0.1");
        assert_eq!(d.to_string(), "::1");
        let mut v4 = event(AF_INET, state::CLOSE, state::SYN_SENT);
        v4.saddr[..4].copy_from_slice(&[10, 0, 0, 5]);
        assert_eq!(addrs(&v4).0.to_string(), "10.0.0.5");
        assert_eq!(display_family(&v4), 4);
        assert_eq!(prev_ms(&v4), None);
        v4.prev_ns = 1_532_104_000;
        assert_eq!(prev_ms(&v4), Some(1532.104));
    }

    #[test]
    fn one_mapped_rule_for_every_source() {
        let m: IpAddr = Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().into();
        assert_eq!(unmap(m).to_string(), "10.1.2.3");
        assert_eq!(unmap(Ipv6Addr::LOCALHOST.into()).to_string(), "::1");
        // ::a.b.c.d (IPv4-compatible, deprecated) is not mapped.
        let compat: IpAddr = "::10.1.2.3".parse().unwrap();
        assert_eq!(unmap(compat), compat);
        assert!(is_v4_mapped(&Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets()));
        assert_eq!(family_of(unmap(m), Ipv4Addr::LOCALHOST.into()), 4);
    }
}
