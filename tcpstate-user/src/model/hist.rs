//! `hist`'s model: one interval's histograms by (state, `--by` key), TIME_WAIT's
//! with how each socket's TIME_WAIT ended, built from what the probe read.

use std::{collections::HashMap, net::IpAddr};

use serde::Serialize;
use tcpstate_common::{
    hist_addr, state, Hist, HistKey, TwKey, TwLive, BY_CONTAINER, BY_PROCESS, BY_RADDR, BY_RPORT,
    HIST_TW_REUSED,
};

use crate::model::{
    events::{addr, TcpState},
    histogram::Histogram,
    holders::{clean_comm, Comm},
};

/// The `--by` key of a histogram.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    None,
    /// Owner pid (0: unknown) and its name, raw (views escape it).
    Process(u32, Comm),
    Rport(u16),
    Raddr(IpAddr),
    /// A socket's cgroup id, as the probe keys it; [`Interval::by_container`] turns
    /// it into [`Key::Container`].
    Cgroup(u64),
    /// A container id (`None`: a host socket, or a cgroup not found).
    Container(Option<String>),
}

impl Key {
    /// The key of a sample, as the probe keys it (`BY_*`): for --by process `addr`
    /// holds the owner's comm as the probe saw it, or is empty, and then the name is
    /// looked up now (the process may be gone by the report: `lookup` says `?`).
    /// The one place that decides whether `addr` is a comm or an address.
    pub fn of(
        by: u32,
        pid: u32,
        port: u16,
        family: u16,
        addr_or_comm: &[u8; 16],
        lookup: impl FnOnce(u32) -> Comm,
    ) -> Key {
        match by {
            BY_PROCESS => Key::Process(
                pid,
                if pid == 0 {
                    [0; 16]
                } else if addr_or_comm[0] != 0 {
                    clean_comm(addr_or_comm)
                } else {
                    lookup(pid)
                },
            ),
            BY_RPORT => Key::Rport(port),
            BY_RADDR => Key::Raddr(addr(family, addr_or_comm)),
            BY_CONTAINER => Key::Cgroup(u64::from_le_bytes(
                addr_or_comm[..8].try_into().unwrap_or_default(),
            )),
            _ => Key::None,
        }
    }
}

/// How TIME_WAIT sockets ended.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct EndedCounts {
    /// Their timer fired after TCP_TIMEWAIT_LEN.
    pub expired: u64,
    /// A new connection took the 4-tuple (tcp_tw_reuse, or a new SYN).
    pub reused: u64,
    /// Neither, seen when the timer should long have fired: a reset or kill in
    /// TIME_WAIT, or a hand-over that made no timewait socket (tcp_max_tw_buckets).
    /// Their end time is unknown, so they are not in the histogram.
    pub unseen: u64,
}

/// One interval's histograms.
#[derive(Debug, Default)]
pub struct Interval {
    pub kernel: HashMap<(u8, Key), Histogram>,
    pub tw: HashMap<Key, (Histogram, EndedCounts)>,
}

impl Interval {
    /// Adds the probe's histograms (summed over CPUs).
    pub fn add_kernel(
        &mut self,
        by: u32,
        hists: &[(HistKey, Hist)],
        mut lookup: impl FnMut(u32) -> Comm,
    ) {
        for (k, h) in hists {
            let key = Key::of(by, k.pid, k.rport(), k.raddr_family(), &k.addr, &mut lookup);
            let h = Histogram::from(h);
            if k.state == state::TIME_WAIT as u32 || k.state == HIST_TW_REUSED {
                let (th, e) = self.tw.entry(key).or_default();
                th.merge(&h);
                if k.state == HIST_TW_REUSED {
                    e.reused += h.count;
                } else {
                    e.expired += h.count;
                }
            } else {
                self.kernel
                    .entry((k.state as u8, key))
                    .or_default()
                    .merge(&h);
            }
        }
    }

    /// Counts TIME_WAIT candidates whose end the probe could not see.
    pub fn add_unseen(
        &mut self,
        by: u32,
        unseen: &[(TwKey, TwLive)],
        mut lookup: impl FnMut(u32) -> Comm,
    ) {
        for (k, v) in unseen {
            let addr = hist_addr(by, &v.comm, &k.daddr);
            let key = Key::of(by, v.pid, k.dport, k.family, addr, &mut lookup);
            self.tw.entry(key).or_default().1.unseen += 1;
        }
    }

    /// Merges the [`Key::Cgroup`] keys into one [`Key::Container`] per container
    /// (`name`: cgroup id -> container id), so host cgroups share one key.
    pub fn by_container(&mut self, mut name: impl FnMut(u64) -> Option<String>) {
        let mut rekey = |k: Key| match k {
            Key::Cgroup(id) => Key::Container(name(id)),
            k => k,
        };
        for ((st, k), h) in std::mem::take(&mut self.kernel) {
            self.kernel.entry((st, rekey(k))).or_default().merge(&h);
        }
        for (k, (h, e)) in std::mem::take(&mut self.tw) {
            let (th, te) = self.tw.entry(rekey(k)).or_default();
            th.merge(&h);
            te.expired += e.expired;
            te.reused += e.reused;
            te.unseen += e.unseen;
        }
    }

    /// The non-TIME_WAIT histograms of the wanted states (`None`: all), by state,
    /// then largest count, then key.
    pub fn kernel_sorted(&mut self, wanted: impl Fn(u8) -> bool) -> Vec<((u8, Key), Histogram)> {
        let mut kernel: Vec<_> = std::mem::take(&mut self.kernel)
            .into_iter()
            .filter(|((st, _), _)| wanted(*st))
            .collect();
        kernel.sort_by(|((sa, ka), ha), ((sb, kb), hb)| {
            TcpState::try_from(i32::from(*sa))
                .ok()
                .cmp(&TcpState::try_from(i32::from(*sb)).ok())
                .then(hb.count.cmp(&ha.count))
                .then(ka.cmp(kb))
        });
        kernel
    }

    /// TIME_WAIT's histograms, largest count first; one empty one when none.
    pub fn tw_sorted(&mut self) -> Vec<(Key, (Histogram, EndedCounts))> {
        let mut tw: Vec<_> = std::mem::take(&mut self.tw).into_iter().collect();
        tw.sort_by(|(ka, (ha, _)), (kb, (hb, _))| hb.count.cmp(&ha.count).then(ka.cmp(kb)));
        if tw.is_empty() {
            tw.push((Key::None, Default::default()));
        }
        tw
    }
}

/// A TIME_WAIT candidate still recorded this long after its hand-over ended unseen:
/// its timer would have fired by now (`hist`, `serve` and `top` alike).
/// TCP_TIMEWAIT_LEN is 60 s, and the timer wheel rounds a 60 s timer up by up to one
/// granule of its level: 512 jiffies at HZ=100 and 250 (5.1 s and 2 s), 4096 at
/// HZ=1000 (4.1 s).
pub const TW_UNSEEN_AFTER: std::time::Duration = std::time::Duration::from_secs(66);

/// TIME_WAIT sockets now, by destination (from one sock_diag listing).
#[derive(Debug, Default)]
pub struct Gauge {
    by_dest: HashMap<(IpAddr, u16), u64>,
    pub total: u64,
    /// Size of the local port range: the most TIME_WAIT sockets one destination can
    /// hold from one local address.
    pub port_range: u64,
}

impl Gauge {
    pub fn new(port_range: u64) -> Self {
        Self {
            port_range,
            ..Default::default()
        }
    }

    pub fn clear(&mut self) {
        self.by_dest.clear();
        self.total = 0;
    }

    pub fn add(&mut self, daddr: IpAddr, dport: u16) {
        *self.by_dest.entry((daddr, dport)).or_default() += 1;
        self.total += 1;
    }

    /// Adds `other`'s sockets (another namespace's) to these.
    pub fn absorb(&mut self, other: &Gauge) {
        for (k, n) in &other.by_dest {
            *self.by_dest.entry(*k).or_default() += n;
        }
        self.total += other.total;
    }

    /// The `n` destinations with most sockets, then by address.
    pub fn top(&self, n: usize) -> Vec<((IpAddr, u16), u64)> {
        let mut top: Vec<_> = self.by_dest.iter().map(|(k, v)| (*k, *v)).collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        top.truncate(n);
        top
    }
}

impl From<&Hist> for Histogram {
    fn from(h: &Hist) -> Self {
        let mut out = Histogram::default();
        out.add(h);
        out
    }
}

#[cfg(test)]
mod tests {
    use tcpstate_common::{BY_NONE, HIST_BUCKETS};

    use super::*;

    fn comm(s: &[u8]) -> Comm {
        let mut c = [0; 16];
        c[..s.len()].copy_from_slice(s);
        c
    }

    #[test]
    fn comm_or_address() {
        let never = |_| panic!("no lookup");
        let k = Key::of(BY_PROCESS, 7, 0, 0, &comm(b"nginx"), never);
        assert_eq!(k, Key::Process(7, comm(b"nginx")));
        let k = Key::of(BY_PROCESS, 7, 0, 0, &[0; 16], |p| comm(&[b'0' + p as u8]));
        assert_eq!(k, Key::Process(7, comm(b"7")));
        assert_eq!(
            Key::of(BY_PROCESS, 0, 0, 0, &comm(b"x"), never),
            Key::Process(0, [0; 16])
        );
        let mut a = [0; 16];
        a[..4].copy_from_slice(&[10, 0, 0, 9]);
        let k = Key::of(BY_RADDR, 7, 2, tcpstate_common::AF_INET, &a, never);
        assert_eq!(k, Key::Raddr("10.0.0.9".parse().unwrap()));
        assert_eq!(Key::of(BY_RPORT, 7, 443, 2, &a, never), Key::Rport(443));
        assert_eq!(Key::of(BY_NONE, 7, 443, 2, &a, never), Key::None);
        let cg = tcpstate_common::hist_owner(BY_CONTAINER, &[0; 16], 77);
        assert_eq!(
            Key::of(BY_CONTAINER, 7, 443, 2, &cg, never),
            Key::Cgroup(77)
        );
    }

    #[test]
    fn cgroups_merge_by_container() {
        let h = |n| Hist {
            count: n,
            sum_ns: 0,
            max_ns: 0,
            buckets: [0; HIST_BUCKETS],
        };
        let key = |cg: u64| HistKey {
            state: state::CLOSE_WAIT as u32,
            addr: tcpstate_common::hist_owner(BY_CONTAINER, &[0; 16], cg),
            ..Default::default()
        };
        let mut iv = Interval::default();
        // Two host cgroups and one container's.
        iv.add_kernel(
            BY_CONTAINER,
            &[(key(1), h(1)), (key(2), h(2)), (key(3), h(4))],
            |_| [0; 16],
        );
        iv.by_container(|id| (id == 3).then(|| "abc".to_string()));
        let k = iv.kernel_sorted(|_| true);
        assert_eq!(k.len(), 2);
        assert_eq!(
            (&k[0].0 .1, k[0].1.count),
            (&Key::Container(Some("abc".into())), 4)
        );
        assert_eq!((&k[1].0 .1, k[1].1.count), (&Key::Container(None), 3));
    }

    #[test]
    fn gauge_tops() {
        let mut g = Gauge::new(100);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            g.add(b, 80);
        }
        g.add(a, 80);
        g.add(a, 81);
        assert_eq!(g.total, 5);
        assert_eq!(g.top(2), vec![((b, 80), 3), ((a, 80), 1)]);
        g.clear();
        assert_eq!((g.total, g.top(5).len()), (0, 0));
    }

    #[test]
    fn time_wait_ends_are_counted_by_kind() {
        let h = |n| Hist {
            count: n,
            sum_ns: 0,
            max_ns: 0,
            buckets: [0; HIST_BUCKETS],
        };
        let key = |st| HistKey {
            state: st,
            ..Default::default()
        };
        let mut iv = Interval::default();
        iv.add_kernel(
            BY_NONE,
            &[
                (key(state::TIME_WAIT as u32), h(3)),
                (key(HIST_TW_REUSED), h(2)),
                (key(state::CLOSE_WAIT as u32), h(5)),
            ],
            |_| [0; 16],
        );
        iv.add_unseen(BY_NONE, &[(TwKey::default(), TwLive::default())], |_| {
            [0; 16]
        });
        let tw = iv.tw_sorted();
        assert_eq!(tw.len(), 1);
        let (hist, ended) = &tw[0].1;
        assert_eq!(hist.count, 5);
        assert_eq!((ended.expired, ended.reused, ended.unseen), (3, 2, 1));
        let k = iv.kernel_sorted(|st| st == state::CLOSE_WAIT as u8);
        assert_eq!(k.len(), 1);
        assert_eq!(k[0].1.count, 5);
    }
}
