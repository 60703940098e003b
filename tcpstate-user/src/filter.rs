//! Which transitions the user asked for. Filters combine with AND, repeated values of
//! one filter with OR.

use tcpstate_common::Event;

use crate::{
    cli::FilterArgs,
    events::{display_family, TcpState},
    sockets::Lingering,
};

#[derive(Debug, Clone, Default)]
pub struct Filter {
    family: Option<u8>,
    ports: Vec<u16>,
    lports: Vec<u16>,
    rports: Vec<u16>,
    pids: Vec<u32>,
    states: Vec<u8>,
}

impl Filter {
    pub fn new(args: &FilterArgs, states: &[TcpState]) -> Self {
        Self {
            family: match (args.ipv4, args.ipv6) {
                (true, _) => Some(4),
                (_, true) => Some(6),
                _ => None,
            },
            ports: args.ports.clone(),
            lports: args.lports.clone(),
            rports: args.rports.clone(),
            pids: args.pids.clone(),
            states: states.iter().map(|s| s.number() as u8).collect(),
        }
    }

    /// No filter at all: every transition matches, and `trace` skips [`Self::matches`]
    /// (which decodes both addresses for the family).
    pub fn is_empty(&self) -> bool {
        self.family.is_none()
            && self.ports.is_empty()
            && self.lports.is_empty()
            && self.rports.is_empty()
            && self.pids.is_empty()
            && self.states.is_empty()
    }

    pub fn matches(&self, ev: &Event) -> bool {
        self.matches_endpoints(display_family(ev), ev.sport, ev.dport)
            && (self.pids.is_empty() || self.pids.contains(&ev.pid))
            && (self.states.is_empty()
                || self.states.contains(&ev.oldstate)
                || self.states.contains(&ev.newstate))
    }
}

impl Filter {
    /// The part of these filters the probe can apply itself (lists of at most
    /// `FILTER_MAX`; longer ones stay with userspace only). `--state` stays here.
    pub fn kernel(&self) -> tcpstate_common::Filter {
        use tcpstate_common::FILTER_MAX;
        let mut k = tcpstate_common::Filter {
            family: self.family.map_or(0, u32::from),
            states: self.states.iter().fold(0, |m, &s| m | (1u32 << (s & 31))),
            ..Default::default()
        };
        let fit16 = |src: &[u16], dst: &mut [u16; FILTER_MAX], n: &mut u32| {
            if src.len() <= FILTER_MAX {
                dst[..src.len()].copy_from_slice(src);
                *n = src.len() as u32;
            }
        };
        fit16(&self.ports, &mut k.ports, &mut k.n_ports);
        fit16(&self.lports, &mut k.lports, &mut k.n_lports);
        fit16(&self.rports, &mut k.rports, &mut k.n_rports);
        if self.pids.len() <= FILTER_MAX {
            k.pids[..self.pids.len()].copy_from_slice(&self.pids);
            k.n_pids = self.pids.len() as u32;
        }
        k
    }

    /// Family and port filters only (for sockets with no owner, e.g. TIME_WAIT).
    pub fn matches_endpoints(&self, family: u8, sport: u16, dport: u16) -> bool {
        let any = |set: &[u16], port: u16| set.is_empty() || set.contains(&port);
        self.family.is_none_or(|f| family == f)
            && (any(&self.ports, sport) || any(&self.ports, dport))
            && any(&self.lports, sport)
            && any(&self.rports, dport)
    }

    /// The same filters for a tracked socket, whose owner is the fd holder's pid.
    pub fn matches_socket(&self, l: &Lingering, pid: Option<u32>) -> bool {
        self.matches_endpoints(l.family, l.sport, l.dport)
            && (self.pids.is_empty() || pid.is_some_and(|p| self.pids.contains(&p)))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tcpstate_common::{state, AF_INET, AF_INET6};

    use super::*;
    use crate::events::tests::event;

    fn args() -> FilterArgs {
        FilterArgs::default()
    }

    #[test]
    fn empty_filter_keeps_all() {
        let f = Filter::new(&args(), &[]);
        assert!(f.is_empty());
        assert!(f.matches(&event(AF_INET, 7, 2)));
        for a in [
            FilterArgs {
                ipv4: true,
                ..args()
            },
            FilterArgs {
                ipv6: true,
                ..args()
            },
            FilterArgs {
                ports: vec![1],
                ..args()
            },
            FilterArgs {
                lports: vec![1],
                ..args()
            },
            FilterArgs {
                rports: vec![1],
                ..args()
            },
            FilterArgs {
                pids: vec![1],
                ..args()
            },
        ] {
            assert!(!Filter::new(&a, &[]).is_empty(), "{a:?}");
        }
        assert!(!Filter::new(&args(), &[TcpState::Listen]).is_empty());
    }

    #[test]
    fn ports_pids_states_and_family() {
        let mut ev = event(AF_INET, state::ESTABLISHED, state::CLOSE_WAIT);
        ev.sport = 8080;
        ev.dport = 50000;
        ev.pid = 7;
        let f = |a: FilterArgs, s: &[TcpState]| Filter::new(&a, s).matches(&ev);
        assert!(f(
            FilterArgs {
                ports: vec![1, 50000],
                ..args()
            },
            &[]
        ));
        assert!(!f(
            FilterArgs {
                ports: vec![1],
                ..args()
            },
            &[]
        ));
        assert!(f(
            FilterArgs {
                lports: vec![8080],
                ..args()
            },
            &[]
        ));
        assert!(!f(
            FilterArgs {
                lports: vec![50000],
                ..args()
            },
            &[]
        ));
        assert!(f(
            FilterArgs {
                rports: vec![50000],
                ..args()
            },
            &[]
        ));
        assert!(f(
            FilterArgs {
                pids: vec![3, 7],
                ..args()
            },
            &[]
        ));
        assert!(!f(
            FilterArgs {
                pids: vec![3],
                ..args()
            },
            &[]
        ));
        assert!(f(args(), &[TcpState::CloseWait]));
        assert!(f(args(), &[TcpState::Established]));
        assert!(!f(args(), &[TcpState::Listen]));
        assert!(f(
            FilterArgs {
                ipv4: true,
                ..args()
            },
            &[]
        ));
        assert!(!f(
            FilterArgs {
                ipv6: true,
                ..args()
            },
            &[]
        ));
        // AND across filters.
        assert!(!f(
            FilterArgs {
                lports: vec![8080],
                pids: vec![3],
                ..args()
            },
            &[]
        ));
    }

    #[test]
    fn kernel_part() {
        let f = Filter::new(
            &FilterArgs {
                ipv6: true,
                lports: vec![80, 443],
                rports: (1..=9).collect(),
                ..args()
            },
            &[],
        );
        let k = f.kernel();
        assert_eq!(k.family, 6);
        assert_eq!((k.n_lports, k.lports[1]), (2, 443));
        assert_eq!(
            k.n_rports, 0,
            "too many for the probe: userspace filters them"
        );
        assert_eq!((k.n_ports, k.n_pids), (0, 0));
        assert_eq!(k.states, 0);
        let k = Filter::new(&args(), &[TcpState::CloseWait, TcpState::Listen]).kernel();
        assert_eq!(k.states, (1 << 8) | (1 << 10));
    }

    #[test]
    fn unknown_owner_never_matches_a_pid() {
        let ev = event(AF_INET, 7, 2);
        assert!(!Filter::new(
            &FilterArgs {
                pids: vec![1],
                ..args()
            },
            &[]
        )
        .matches(&ev));
    }

    #[test]
    fn mapped_ipv6_counts_as_ipv4() {
        let mut ev = event(AF_INET6, 7, 2);
        ev.saddr = Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets();
        ev.daddr = Ipv4Addr::LOCALHOST.to_ipv6_mapped().octets();
        assert!(Filter::new(
            &FilterArgs {
                ipv4: true,
                ..args()
            },
            &[]
        )
        .matches(&ev));
        ev.daddr = std::net::Ipv6Addr::LOCALHOST.octets();
        assert!(Filter::new(
            &FilterArgs {
                ipv6: true,
                ..args()
            },
            &[]
        )
        .matches(&ev));
    }
}
