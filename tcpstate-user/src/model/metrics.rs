//! `serve`'s model: what one scrape shows, as plain data. The linger reports folded
//! into bounded series (at most `top` groups per state, the rest summed under
//! `comm="other"`, so totals stay exact), the kernel's histograms converted to a
//! small set of Prometheus buckets aligned with the kernel's, and the container
//! identity of a process's group as labels.

use std::{collections::HashMap, net::IpAddr};

use tcpstate_common::{hist_bucket_low, HIST_BUCKETS};

use crate::model::{
    events::TcpState,
    hist::{EndedCounts, Gauge},
    histogram::Histogram,
    holders::Comm,
    linger::Report,
    summary::Summary,
};

/// The comm label of the series that sums every group past the top N.
pub const OTHER: &str = "other";

/// Which container and pod a process belongs to. Empty for host processes (an empty
/// label is no label to Prometheus).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    pub container_id: String,
    pub pod_namespace: String,
    pub pod_name: String,
}

/// A group's container identity as labels (empty for host processes and orphans),
/// from the holder's cgroup identity that the command filled in.
pub fn identity(ident: &crate::model::container::Ident) -> Identity {
    let s = |v: Option<&str>| v.unwrap_or_default().to_string();
    Identity {
        container_id: s(ident.container_id.as_deref()),
        pod_namespace: s(ident.pod.as_ref().map(|p| p.namespace.as_str())),
        pod_name: s(ident.pod.as_ref().map(|p| p.name.as_str())),
    }
}

/// The labels of one lingering series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupLabels {
    pub state: TcpState,
    /// The holder's name, raw (views escape it); `None`: the `other` fold.
    pub comm: Option<Comm>,
    pub identity: Identity,
    /// Only with `--pid-labels`; `None` for orphans and the fold.
    pub pid: Option<u32>,
}

/// One lingering series: sockets held by a group, its oldest, and the fullest fd
/// table among its processes.
#[derive(Debug, Clone, PartialEq)]
pub struct LingerSeries {
    pub labels: GroupLabels,
    pub sockets: u64,
    pub oldest_ns: u64,
    /// Of `sockets`: everything the peer sent, FIN included, was read (close() is
    /// missing), and those waiting in a listener's accept queue.
    pub eof_read: u64,
    pub not_accepted: u64,
    /// Open fds over the soft RLIMIT_NOFILE, the maximum over the group's processes
    /// (`None`: no process, or unreadable).
    pub fd_usage: Option<f64>,
}

impl LingerSeries {
    fn absorb(&mut self, o: &LingerSeries) {
        self.sockets += o.sockets;
        self.oldest_ns = self.oldest_ns.max(o.oldest_ns);
        self.eof_read += o.eof_read;
        self.not_accepted += o.not_accepted;
        self.fd_usage = max_opt(self.fd_usage, o.fd_usage);
    }
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Folds linger reports into series: one per (state, comm, identity[, pid]), at most
/// `top` per state by socket count (ties by labels), the rest summed into one
/// `comm="other"` series per state. `fd_usage(pid)` gives a process's fd ratio.
pub fn fold_lingering(
    reports: &[Report],
    top: usize,
    pid_labels: bool,
    mut fd_usage: impl FnMut(u32) -> Option<f64>,
) -> Vec<LingerSeries> {
    let mut out = Vec::new();
    for r in reports {
        let mut by: HashMap<GroupLabels, LingerSeries> = HashMap::new();
        for g in &r.groups {
            if g.sockets.is_empty() {
                continue;
            }
            let labels = GroupLabels {
                state: r.state,
                comm: Some(g.comm),
                identity: identity(&g.ident),
                pid: if pid_labels { g.pid } else { None },
            };
            let s = LingerSeries {
                labels: labels.clone(),
                sockets: g.sockets.len() as u64,
                oldest_ns: g.sockets.iter().map(|s| s.age_ns).max().unwrap_or(0),
                eof_read: g
                    .sockets
                    .iter()
                    .filter(|s| s.facts.is_some_and(|f| f.eof_read))
                    .count() as u64,
                not_accepted: g.diagnosis.never_accepted as u64,
                fd_usage: g.pid.and_then(&mut fd_usage),
            };
            by.entry(labels).and_modify(|e| e.absorb(&s)).or_insert(s);
        }
        let mut series: Vec<LingerSeries> = by.into_values().collect();
        series.sort_by(|a, b| b.sockets.cmp(&a.sockets).then(a.labels.cmp(&b.labels)));
        if series.len() > top {
            let rest = series.split_off(top);
            let mut other = LingerSeries {
                labels: GroupLabels {
                    state: r.state,
                    comm: None,
                    identity: Identity::default(),
                    pid: None,
                },
                sockets: 0,
                oldest_ns: 0,
                eof_read: 0,
                not_accepted: 0,
                fd_usage: None,
            };
            for s in &rest {
                other.absorb(s);
            }
            series.push(other);
        }
        out.extend(series);
    }
    out
}

/// TIME_WAIT sockets to one destination (`None`: the fold of all past the top N).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestSeries {
    pub dest: Option<(IpAddr, u16)>,
    pub sockets: u64,
}

/// A listener some process holds, from the fd walk's own record of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldListener {
    pub pid: u32,
    pub comm: Comm,
    pub identity: Identity,
    pub cookie: u64,
    pub netns: u32,
    pub laddr: IpAddr,
    pub lport: u16,
    /// `sk_ack_backlog` / `sk_max_ack_backlog`.
    pub len: u32,
    pub max: u32,
}

/// The labels of one accept-queue series; `None` comm: the `other` fold (and then
/// no netns, address or port either).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerLabels {
    pub comm: Option<Comm>,
    pub identity: Identity,
    pub pid: Option<u32>,
    pub netns: Option<u32>,
    pub laddr: Option<IpAddr>,
    pub lport: Option<u16>,
}

/// One accept-queue series: queued connections and the queue's limit, summed over
/// the distinct listeners (SO_REUSEPORT) that share its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSeries {
    pub labels: ListenerLabels,
    pub length: u64,
    pub limit: u64,
}

/// Folds held listeners into series by (holder, netns, address, port), at most
/// `top` of them by queue length (ties by labels), the rest summed under
/// `comm="other"`. A listener held by several processes of one series (a
/// pre-fork server's inherited fd) counts once.
pub fn fold_listeners(ls: &[HeldListener], top: usize, pid_labels: bool) -> Vec<ListenerSeries> {
    let mut by: HashMap<ListenerLabels, (Vec<u64>, ListenerSeries)> = HashMap::new();
    for l in ls {
        let labels = ListenerLabels {
            comm: Some(l.comm),
            identity: l.identity.clone(),
            pid: pid_labels.then_some(l.pid),
            netns: Some(l.netns),
            laddr: Some(l.laddr),
            lport: Some(l.lport),
        };
        let e = by.entry(labels.clone()).or_insert_with(|| {
            (
                Vec::new(),
                ListenerSeries {
                    labels,
                    length: 0,
                    limit: 0,
                },
            )
        });
        if !e.0.contains(&l.cookie) {
            e.0.push(l.cookie);
            e.1.length += u64::from(l.len);
            e.1.limit += u64::from(l.max);
        }
    }
    let mut series: Vec<ListenerSeries> = by.into_values().map(|(_, s)| s).collect();
    series.sort_by(|a, b| b.length.cmp(&a.length).then(a.labels.cmp(&b.labels)));
    if series.len() > top {
        let rest = series.split_off(top);
        series.push(ListenerSeries {
            labels: ListenerLabels {
                comm: None,
                identity: Identity::default(),
                pid: None,
                netns: None,
                laddr: None,
                lport: None,
            },
            length: rest.iter().map(|s| s.length).sum(),
            limit: rest.iter().map(|s| s.limit).sum(),
        });
    }
    series
}

/// The `top` destinations with most TIME_WAIT sockets, then the rest summed (only
/// when there is a rest), so the series add up to the total.
pub fn fold_destinations(g: &Gauge, top: usize) -> Vec<DestSeries> {
    let tops = g.top(top);
    let shown: u64 = tops.iter().map(|(_, n)| n).sum();
    let mut out: Vec<DestSeries> = tops
        .into_iter()
        .map(|(d, n)| DestSeries {
            dest: Some(d),
            sockets: n,
        })
        .collect();
    if g.total > shown {
        out.push(DestSeries {
            dest: None,
            sockets: g.total - shown,
        });
    }
    out
}

/// Bounds of the Prometheus buckets in microseconds: 2^m and 1.5 * 2^m for m in
/// 3..=36 (8 us .. 28.6 h). Each is the lower bound of a kernel bucket (16 per power
/// of two), so the conversion is exact: 68 `le` series per state instead of 560.
pub fn bucket_bounds_us() -> Vec<u64> {
    (3..=36u32)
        .flat_map(|m| [1u64 << m, 3u64 << (m - 1)])
        .collect()
}

/// Cumulative (le seconds, count) pairs of a histogram on [`bucket_bounds_us`],
/// without +Inf (that is `count`). A kernel bucket [low(i), low(i+1)) counts for
/// every bound >= low(i+1): its samples are all below that.
pub fn to_prometheus_buckets(h: &Histogram) -> Vec<(f64, u64)> {
    let bounds = bucket_bounds_us();
    let mut out = Vec::with_capacity(bounds.len());
    let mut i = 0;
    let mut cum = 0u64;
    for b in bounds {
        // The last kernel bucket also holds everything beyond its range: +Inf only.
        while i + 1 < HIST_BUCKETS && hist_bucket_low(i + 1) <= b {
            cum += h.buckets[i];
            i += 1;
        }
        out.push((b as f64 / 1e6, cum));
    }
    out
}

/// One network namespace's TIME_WAIT destinations and `ip_local_port_range` size.
#[derive(Debug, Clone, Default)]
pub struct NetnsTimewait {
    /// The namespace's inode.
    pub netns: u64,
    pub dests: Vec<DestSeries>,
    pub port_range: u64,
}

/// Everything one scrape shows.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Time-in-state histograms since start, by state (TIME_WAIT's included).
    pub durations: Vec<(TcpState, Histogram)>,
    /// Transitions since start by (old, new) kernel state number.
    pub transitions: Vec<(u8, u8, u64)>,
    pub tw_ended: EndedCounts,
    pub lingering: Vec<LingerSeries>,
    /// Accept queues of held listeners (`fold_listeners`).
    pub listeners: Vec<ListenerSeries>,
    /// TIME_WAIT sockets and port range per network namespace.
    pub timewait: Vec<NetnsTimewait>,
    pub summary: Summary,
    /// (map name, entries, capacity).
    pub maps: Vec<(&'static str, u64, Option<u64>)>,
    pub scrape_seconds: f64,
    pub version: String,
    pub kernel: String,
}

/// The loss terms of the summary, by name: `lost` is their sum.
pub fn loss_terms(s: &Summary) -> [(&'static str, u64); 4] {
    [
        ("ringbuf", s.lost_ringbuf),
        ("skipped", s.lost_skipped),
        ("read", s.lost_read),
        ("transit", s.lost_transit),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::linger::{Diagnosis, Facts, Group, SockLine};

    fn held(pid: u32, name: &str, cookie: u64, port: u16, len: u32) -> HeldListener {
        HeldListener {
            pid,
            comm: comm(name),
            identity: Identity::default(),
            cookie,
            netns: 4026531840,
            laddr: "127.0.0.1".parse().unwrap(),
            lport: port,
            len,
            max: 4,
        }
    }

    #[test]
    fn listeners_fold_past_top_and_count_a_shared_listener_once() {
        let ls = [
            // A pre-fork server: one listener, two holders.
            held(10, "web", 1, 80, 5),
            held(11, "web", 1, 80, 5),
            // SO_REUSEPORT: two listeners on one port add up.
            held(20, "api", 2, 81, 2),
            held(20, "api", 3, 81, 1),
            held(30, "db", 4, 82, 1),
            held(40, "idle", 5, 83, 0),
        ];
        let s = fold_listeners(&ls, 2, false);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].labels.comm, Some(comm("web")));
        assert_eq!((s[0].length, s[0].limit), (5, 4));
        assert_eq!(s[1].labels.lport, Some(81));
        assert_eq!((s[1].length, s[1].limit), (3, 8));
        assert_eq!(s[2].labels.comm, None);
        assert_eq!((s[2].length, s[2].limit), (1, 8));
        // With pid labels each holder is its own series.
        let s = fold_listeners(&ls, 10, true);
        assert_eq!(s.len(), 5);
        assert!(s.iter().all(|x| x.labels.pid.is_some()));
        assert!(fold_listeners(&[], 2, false).is_empty());
    }

    fn comm(s: &str) -> Comm {
        let mut c = [0; 16];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    /// `n` sockets; the first `eof` of them read to EOF, and (as the diagnosis says)
    /// `queued` waiting in an accept queue.
    fn group_with(pid: u32, name: &str, n: usize, age: u64, eof: usize, queued: usize) -> Group {
        let local = IpAddr::from([127, 0, 0, 1]);
        Group {
            pid: Some(pid),
            comm: comm(name),
            sockets: (0..n)
                .map(|i| SockLine {
                    cookie: i as u64,
                    fd: Some(i as u32),
                    age_ns: age + i as u64,
                    lower_bound: false,
                    state: tcpstate_common::state::CLOSE_WAIT as u8,
                    family: 4,
                    saddr: local,
                    sport: 8080,
                    daddr: local,
                    dport: 40000 + i as u16,
                    facts: Some(Facts {
                        accepted: true,
                        listener_fd: None,
                        eof_read: i < eof,
                        unread_bytes: 0,
                        last_send_ms: 0,
                        last_recv_ms: 0,
                        last_ack_ms: 0,
                        sk_err: 0,
                        netns: 4026531840,
                        accept_queue: None,
                    }),
                })
                .collect(),
            rate_per_s: None,
            growth_per_s: None,
            fd_limit: None,
            fds: None,
            fd_exhaustion_s: None,
            diagnosis: Diagnosis {
                never_accepted: queued,
                ..Diagnosis::default()
            },
            ident: Default::default(),
        }
    }

    fn group(pid: u32, name: &str, n: usize, age: u64) -> Group {
        group_with(pid, name, n, age, 0, 0)
    }

    #[test]
    fn diagnosis_counts_fold_with_their_groups() {
        let mut groups = vec![group_with(1, "leaky", 5, 10, 4, 0)];
        groups.extend((2..5).map(|p| group_with(p, &format!("q{p}"), 2, 1, 1, 2)));
        let s = fold_lingering(&[report(groups)], 1, false, |_| None);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].eof_read, s[0].not_accepted), (4, 0));
        // The folded `other` adds up its groups' counts.
        assert_eq!((s[1].sockets, s[1].eof_read, s[1].not_accepted), (6, 3, 6));
    }

    fn report(groups: Vec<Group>) -> Report {
        Report {
            state: TcpState::CloseWait,
            min_age_ns: 0,
            groups,
        }
    }

    #[test]
    fn top_n_then_other_and_totals_stay_exact() {
        let groups: Vec<Group> = (0..30)
            .map(|i| group(100 + i, &format!("leak{i:02}"), 1 + i as usize, 10))
            .collect();
        let total: usize = groups.iter().map(|g| g.sockets.len()).sum();
        let s = fold_lingering(&[report(groups)], 20, false, |p| Some(p as f64 / 1000.0));
        assert_eq!(s.len(), 21);
        assert_eq!(s.iter().map(|s| s.sockets).sum::<u64>(), total as u64);
        // Largest first; the 10 smallest (1..=10 sockets) are folded.
        assert_eq!(s[0].labels.comm, Some(comm("leak29")));
        let other = s.last().unwrap();
        assert_eq!(other.labels.comm, None);
        assert_eq!(other.sockets, (1..=10).sum::<u64>());
        assert_eq!(other.oldest_ns, 10 + 9);
        assert_eq!(other.fd_usage, Some(0.109));
        // At most N: no fold.
        let s = fold_lingering(&[report(vec![group(1, "a", 2, 0)])], 20, false, |_| None);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].fd_usage, None);
    }

    #[test]
    fn same_name_processes_share_a_series_unless_pid_labels() {
        let r = report(vec![group(1, "worker", 3, 50), group(2, "worker", 2, 90)]);
        let usage = |p| Some(if p == 1 { 0.5 } else { 0.25 });
        let s = fold_lingering(std::slice::from_ref(&r), 20, false, usage);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].sockets, s[0].oldest_ns), (5, 91));
        assert_eq!(s[0].fd_usage, Some(0.5));
        let s = fold_lingering(&[r], 20, true, usage);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].labels.pid, Some(1));
    }

    #[test]
    fn orphans_have_no_comm_nor_fd_usage() {
        let mut g = group(0, "", 4, 0);
        g.pid = None;
        let s = fold_lingering(&[report(vec![g])], 20, true, |_| panic!("no process"));
        assert_eq!(s[0].labels.comm, Some([0; 16]));
        assert_eq!((s[0].labels.pid, s[0].fd_usage), (None, None));
    }

    #[test]
    fn bounds_are_kernel_bucket_edges() {
        let bounds = bucket_bounds_us();
        assert_eq!(bounds.len(), 68);
        assert_eq!(&bounds[..4], &[8, 12, 16, 24]);
        for b in bounds {
            assert!(
                (0..HIST_BUCKETS).any(|i| hist_bucket_low(i) == b),
                "{b} us is not a kernel bucket edge"
            );
        }
    }

    #[test]
    fn bucket_conversion_is_exact_and_cumulative() {
        let mut h = Histogram::default();
        // 10 us; 16 us, whose kernel bucket [16, 17) us may hold values above 16 us,
        // so it counts from le=24us on; 60 s; and one beyond the bounds.
        for us in [10u64, 16, 60_000_000, 1 << 40] {
            h.record_ns(us * 1000);
        }
        let b = to_prometheus_buckets(&h);
        let at = |le: f64| b.iter().find(|(l, _)| *l == le).unwrap().1;
        assert_eq!(at(8e-6), 0);
        assert_eq!(at(12e-6), 1);
        assert_eq!(at(16e-6), 1);
        assert_eq!(at(24e-6), 2);
        // 60 s lies in [50.3 s, 67.1 s).
        assert_eq!(at(50.331648), 2);
        assert_eq!(at(67.108864), 3);
        // Beyond 2^36 us only +Inf (count) holds it.
        assert_eq!(b.last().unwrap().1, 3);
        assert_eq!(h.count, 4);
        assert!(b.windows(2).all(|w| w[0].1 <= w[1].1 && w[0].0 < w[1].0));
    }

    #[test]
    fn destinations_fold_past_the_top() {
        let mut g = Gauge::new(28232);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..5 {
            g.add(a, 80);
        }
        g.add(b, 80);
        g.add(b, 81);
        let d = fold_destinations(&g, 1);
        assert_eq!(
            d,
            vec![
                DestSeries {
                    dest: Some((a, 80)),
                    sockets: 5
                },
                DestSeries {
                    dest: None,
                    sockets: 2
                }
            ]
        );
        assert_eq!(fold_destinations(&g, 5).len(), 3);
    }
}
