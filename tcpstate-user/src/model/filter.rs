//! Which transitions the user asked for, with no command-line types in it (the cli
//! builds it). Filters combine with AND, repeated values of one filter with OR.

use tcpstate_common::{
    filter::{family_passes, pid_passes, ports_pass, states_pass, user_family},
    state, Event,
};

use crate::model::{
    container::{CgroupPrefix, ContainerPrefix},
    events::TcpState,
    sockets::Lingering,
};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// 4 or 6 (IPv4-mapped IPv6 counts as 4); `None`: either.
    pub family: Option<u8>,
    /// Local or remote port.
    pub ports: Vec<u16>,
    pub lports: Vec<u16>,
    pub rports: Vec<u16>,
    /// Owner (trace, hist) or fd holder (linger); an unknown one never matches.
    pub pids: Vec<u32>,
    /// Kernel state numbers the old or new state must be (`trace --state`).
    pub states: Vec<u8>,
    /// `--netns`: the socket's namespace inode.
    pub netns: Vec<u32>,
    /// `--container`: prefixes of the container id (of the socket's cgroup, or the
    /// fd holder's).
    pub containers: Vec<ContainerPrefix>,
    /// `--cgroup`: v2 path prefixes.
    pub cgroups: Vec<CgroupPrefix>,
}

impl Filter {
    /// The same filter, also keeping transitions whose old or new state is in `states`.
    pub fn with_states(mut self, states: &[TcpState]) -> Self {
        self.states = states.iter().map(|s| s.number() as u8).collect();
        self
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
            && self.netns.is_empty()
            && !self.by_cgroup()
    }

    /// Whether `--container` or `--cgroup` is given (matched by cgroup identity).
    pub fn by_cgroup(&self) -> bool {
        !self.containers.is_empty() || !self.cgroups.is_empty()
    }

    /// The container and cgroup filters on a cgroup path and its container id; both
    /// kinds must match when both are given.
    pub fn matches_cgroup(&self, path: Option<&str>, container_id: Option<&str>) -> bool {
        (self.containers.is_empty() || self.containers.iter().any(|c| c.matches(container_id)))
            && (self.cgroups.is_empty()
                || path.is_some_and(|p| self.cgroups.iter().any(|c| c.matches(p))))
    }

    /// The namespace filter (0: unknown, never matches a list).
    pub fn matches_netns(&self, netns: u32) -> bool {
        pid_passes(&self.netns, self.netns.len(), netns)
    }

    pub fn matches(&self, ev: &Event) -> bool {
        let fam = user_family(ev.family, &ev.saddr, &ev.daddr);
        self.matches_endpoints(fam, ev.sport, ev.dport)
            && pid_passes(&self.pids, self.pids.len(), ev.pid)
            && states_pass(self.state_mask(), ev.oldstate.into(), ev.newstate.into())
            && self.matches_netns(ev.netns)
    }

    /// The `--state` list as the probe's bit mask (0 = any).
    fn state_mask(&self) -> u32 {
        self.states.iter().fold(0, |m, &s| m | state::bit(s.into()))
    }
}

impl Filter {
    /// The part of these filters the probe can apply itself (lists of at most
    /// `FILTER_MAX`; longer ones stay with userspace only). States go to the probe
    /// as a bit mask too, and userspace checks them again.
    pub fn kernel(&self) -> tcpstate_common::Filter {
        use tcpstate_common::FILTER_MAX;
        let mut k = tcpstate_common::Filter {
            family: self.family.map_or(0, u32::from),
            states: self.state_mask(),
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
        if self.netns.len() <= FILTER_MAX {
            k.netns[..self.netns.len()].copy_from_slice(&self.netns);
            k.n_netns = self.netns.len() as u32;
        }
        // The probe checks the `CGROUPS` map, which the command keeps filled.
        k.cgroups = u32::from(self.by_cgroup());
        k
    }

    /// Family and port filters only (for sockets with no owner, e.g. TIME_WAIT).
    pub fn matches_endpoints(&self, family: u8, sport: u16, dport: u16) -> bool {
        family_passes(self.family.map_or(0, u32::from), family)
            && ports_pass(
                (&self.ports, self.ports.len()),
                (&self.lports, self.lports.len()),
                (&self.rports, self.rports.len()),
                sport,
                dport,
            )
    }

    /// The same filters for a listener that `pid` holds: its local port for `--port`
    /// and `--lport`; it has no remote end, so an `--rport` list never matches.
    pub fn matches_listener(&self, family: u8, lport: u16, pid: u32) -> bool {
        self.matches_endpoints(family, lport, 0) && pid_passes(&self.pids, self.pids.len(), pid)
    }

    /// The same filters for a tracked socket, whose owner is the fd holder's pid.
    pub fn matches_socket(&self, l: &Lingering, pid: Option<u32>) -> bool {
        self.matches_endpoints(l.family, l.sport, l.dport)
            && pid_passes(&self.pids, self.pids.len(), pid.unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tcpstate_common::{state, AF_INET, AF_INET6};

    use super::*;
    use crate::model::events::tests::event;

    fn args() -> Filter {
        Filter::default()
    }

    impl Filter {
        /// As `Filter::new(args, states)` was, before the cli built filters.
        fn new(f: &Filter, states: &[TcpState]) -> Self {
            f.clone().with_states(states)
        }
    }

    #[test]
    fn empty_filter_keeps_all() {
        let f = Filter::new(&args(), &[]);
        assert!(f.is_empty());
        assert!(f.matches(&event(AF_INET, 7, 2)));
        for a in [
            Filter {
                family: Some(4),
                ..args()
            },
            Filter {
                family: Some(6),
                ..args()
            },
            Filter {
                ports: vec![1],
                ..args()
            },
            Filter {
                lports: vec![1],
                ..args()
            },
            Filter {
                rports: vec![1],
                ..args()
            },
            Filter {
                pids: vec![1],
                ..args()
            },
        ] {
            assert!(!Filter::new(&a, &[]).is_empty(), "{a:?}");
        }
        assert!(!Filter::new(&args(), &[TcpState::Listen]).is_empty());
    }

    #[test]
    fn listeners_by_local_port_family_and_pid() {
        let l = |a: Filter| a.matches_listener(6, 8080, 7);
        assert!(l(args()));
        for yes in [
            Filter {
                ports: vec![8080],
                ..args()
            },
            Filter {
                lports: vec![1, 8080],
                ..args()
            },
            Filter {
                pids: vec![7],
                ..args()
            },
            Filter {
                family: Some(6),
                ..args()
            },
        ] {
            assert!(l(yes.clone()), "{yes:?}");
        }
        for no in [
            Filter {
                ports: vec![80],
                ..args()
            },
            Filter {
                lports: vec![80],
                ..args()
            },
            // No remote end: a listener is not a connection to any port.
            Filter {
                rports: vec![8080],
                ..args()
            },
            Filter {
                pids: vec![8],
                ..args()
            },
            Filter {
                family: Some(4),
                ..args()
            },
        ] {
            assert!(!l(no.clone()), "{no:?}");
        }
    }

    #[test]
    fn ports_pids_states_and_family() {
        let mut ev = event(AF_INET, state::ESTABLISHED, state::CLOSE_WAIT);
        ev.sport = 8080;
        ev.dport = 50000;
        ev.pid = 7;
        let f = |a: Filter, s: &[TcpState]| Filter::new(&a, s).matches(&ev);
        assert!(f(
            Filter {
                ports: vec![1, 50000],
                ..args()
            },
            &[]
        ));
        assert!(!f(
            Filter {
                ports: vec![1],
                ..args()
            },
            &[]
        ));
        assert!(f(
            Filter {
                lports: vec![8080],
                ..args()
            },
            &[]
        ));
        assert!(!f(
            Filter {
                lports: vec![50000],
                ..args()
            },
            &[]
        ));
        assert!(f(
            Filter {
                rports: vec![50000],
                ..args()
            },
            &[]
        ));
        assert!(f(
            Filter {
                pids: vec![3, 7],
                ..args()
            },
            &[]
        ));
        assert!(!f(
            Filter {
                pids: vec![3],
                ..args()
            },
            &[]
        ));
        assert!(f(args(), &[TcpState::CloseWait]));
        assert!(f(args(), &[TcpState::Established]));
        assert!(!f(args(), &[TcpState::Listen]));
        assert!(f(
            Filter {
                family: Some(4),
                ..args()
            },
            &[]
        ));
        assert!(!f(
            Filter {
                family: Some(6),
                ..args()
            },
            &[]
        ));
        // AND across filters.
        assert!(!f(
            Filter {
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
            &Filter {
                family: Some(6),
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
            &Filter {
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
            &Filter {
                family: Some(4),
                ..args()
            },
            &[]
        )
        .matches(&ev));
        ev.daddr = std::net::Ipv6Addr::LOCALHOST.octets();
        assert!(Filter::new(
            &Filter {
                family: Some(6),
                ..args()
            },
            &[]
        )
        .matches(&ev));
    }
}
