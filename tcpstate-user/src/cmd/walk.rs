//! The walks `linger`, `hist`, `serve` and `top` share, each written once: who holds
//! which socket (the fd scan, with the namespace and container filters that decide
//! by holder), and the TIME_WAIT sockets by destination in every namespace (the
//! probe's records, and a startup listing of older ones).

use std::{
    collections::{HashMap, HashSet},
    io,
    net::IpAddr,
};

use tcpstate_common::state;

use crate::{
    cmd::ident::Resolver,
    model::{
        events::{addr, family_of, unmap, TcpState},
        filter::Filter,
        hist::{Gauge, TW_UNSEEN_AFTER},
        holders::Holders,
        linger::{build, set_fd_headroom, Clocks, Report},
        sockets::{Lingering, SocketTable},
    },
    probe::{maps::WalkTally, netns, procfs, sockdiag, Probe},
};

/// `linger`'s reports for `states` from one fd walk, each group named (its holder's
/// container and pod): what `linger` prints and `top` folds into rows.
#[allow(clippy::too_many_arguments)]
pub fn reports(
    probe: &mut Probe,
    filter: &Filter,
    resolver: &mut Resolver,
    table: &SocketTable,
    states: &[TcpState],
    clk: &Clocks,
    min_age_ns: u64,
) -> io::Result<Vec<Report>> {
    let (mut holders, tally) = holders(probe, filter, resolver)?;
    let mut reports = build(table, &mut holders, states, clk, min_age_ns, filter);
    drop(holders);
    for g in reports.iter_mut().flat_map(|r| r.groups.iter_mut()) {
        if let Some(pid) = g.pid {
            g.ident = (*resolver.process(pid)).clone();
        }
    }
    set_fd_headroom(&mut reports, |pid| fd_info(&tally, pid));
    Ok(reports)
}

/// (soft fd limit, open fds) of a holder: the walk's own count, or /proc where the
/// kernel's BTF lacked what the probe reads them from.
pub fn fd_info(tally: &WalkTally, pid: u32) -> (Option<u64>, Option<u64>) {
    tally
        .fd_info(pid)
        .unwrap_or_else(|| (procfs::fd_limit(pid), procfs::fd_count(pid)))
}

/// Every socket's holder, from one fd scan. --netns, --container and --cgroup select
/// holders here (the fd walk crosses namespaces; a process's container is its
/// /proc/PID/cgroup).
pub fn holders(
    probe: &mut Probe,
    f: &Filter,
    resolver: &mut Resolver,
) -> io::Result<(Holders, WalkTally)> {
    let mut holders = Holders::default();
    resolver.forget_processes();
    resolver.refresh_filter(f, probe);
    let tally = probe.scan_fds(|r| {
        if f.matches_netns(r.netns)
            && (!f.by_cgroup() || {
                let i = resolver.process(r.pid);
                f.matches_cgroup(i.cgroup.as_deref(), i.container_id.as_deref())
            })
        {
            holders.add(r)
        }
    })?;
    holders.finish();
    Ok((holders, tally))
}

/// The size of a new namespace's ip_local_port_range (32768-60999, set by
/// inet_init_net()): what serve assumes for a namespace first seen after startup
/// until an fd walk reads its own range from one of its sockets (`WalkTally`).
pub const NEW_NETNS_PORT_RANGE: u64 = 60999 - 32768 + 1;

/// A TIME_WAIT socket older than the probe: counted until its timer's end.
#[derive(Debug, Clone, PartialEq)]
pub struct OldTimewait {
    pub netns: u32,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// When its timer fires (monotonic ns), from sock_diag's `idiag_expires`.
    pub until_ns: u64,
}

/// What `serve` reads inside each namespace once, at startup, while it may still
/// enter them: the TIME_WAIT sockets older than the probe, and each namespace's port
/// range. After that the probe alone sees TIME_WAIT: every hand-over to a timewait
/// socket and its end, keyed by namespace (`TWS`).
#[derive(Debug, Default)]
pub struct TimewaitSeed {
    pub old: Vec<OldTimewait>,
    pub port_ranges: HashMap<u32, u64>,
}

impl TimewaitSeed {
    pub fn read(
        filter: &Filter,
        registry: &mut netns::Registry,
        own: u32,
        now_ns: u64,
    ) -> io::Result<TimewaitSeed> {
        let mut seed = TimewaitSeed::default();
        seed.port_ranges.insert(own, procfs::local_port_range());
        registry.add_discovered(netns::discover());
        let take = |ns: u32, s: &sockdiag::DiagSocket| {
            let daddr = unmap(s.daddr);
            (filter.matches_netns(ns)
                && filter.matches_endpoints(family_of(unmap(s.saddr), daddr), s.sport, s.dport))
            .then(|| OldTimewait {
                netns: ns,
                saddr: unmap(s.saddr),
                sport: s.sport,
                daddr,
                dport: s.dport,
                until_ns: now_ns + u64::from(s.expires_ms) * 1_000_000,
            })
        };
        let TimewaitSeed { old, port_ranges } = &mut seed;
        let scan = registry.scan(1 << state::TIME_WAIT, |ns, s| {
            // On the scan's thread, inside the namespace: its own /proc/sys.
            port_ranges
                .entry(ns.inode)
                .or_insert_with(procfs::local_port_range);
            old.extend(take(ns.inode, s));
        });
        log::debug!("TIME_WAIT seed scan: {scan:?}");
        if scan.failed.iter().any(|(i, _)| *i == own) {
            old.retain(|t| t.netns != own);
            sockdiag::for_each_tcp(1 << state::TIME_WAIT, |s| old.extend(take(own, s)))?;
        }
        Ok(seed)
    }
}

/// TIME_WAIT sockets by destination, per namespace inode (sorted), from the probe's
/// TIME_WAIT records (hand-overs not yet ended, none whose timer was detached, none
/// older than the 66 s cut-off) and the startup seed's older sockets until their
/// timers end. Needs no privilege beyond reading the probe's map: no namespace is
/// entered. An orphan's FIN_WAIT2 minisocket counts too: the kernel makes it
/// TIME_WAIT in place when the peer's FIN comes (tcp_timewait_state_process()),
/// which no tracepoint shows.
pub fn timewait_from_probe(
    probe: &crate::probe::Probe,
    filter: &Filter,
    seed: &mut TimewaitSeed,
    own: u32,
    now_ns: u64,
) -> io::Result<Vec<(u32, Gauge)>> {
    let range = |ranges: &HashMap<u32, u64>, ns: u32| {
        ranges.get(&ns).copied().unwrap_or(NEW_NETNS_PORT_RANGE)
    };
    let mut gauges: HashMap<u32, Gauge> = HashMap::new();
    if filter.matches_netns(own) {
        gauges.insert(own, Gauge::new(range(&seed.port_ranges, own)));
    }
    let ranges = &seed.port_ranges;
    // A socket that reached TIME_WAIT between the attach and the seed is in both.
    let mut live = HashSet::new();
    probe.timewaits(now_ns, TW_UNSEEN_AFTER.as_nanos() as u64, |k, _| {
        let (saddr, daddr) = (addr(k.family, &k.saddr), addr(k.family, &k.daddr));
        if !seed.old.is_empty() {
            live.insert((k.netns, saddr, k.sport, daddr, k.dport));
        }
        if filter.matches_netns(k.netns)
            && filter.matches_endpoints(family_of(saddr, daddr), k.sport, k.dport)
        {
            gauges
                .entry(k.netns)
                .or_insert_with(|| Gauge::new(range(ranges, k.netns)))
                .add(daddr, k.dport);
        }
    })?;
    seed.old.retain(|t| {
        t.until_ns > now_ns && !live.contains(&(t.netns, t.saddr, t.sport, t.daddr, t.dport))
    });
    for t in &seed.old {
        gauges
            .entry(t.netns)
            .or_insert_with(|| Gauge::new(range(ranges, t.netns)))
            .add(t.daddr, t.dport);
    }
    let mut gauges: Vec<(u32, Gauge)> = gauges.into_iter().collect();
    gauges.sort_unstable_by_key(|(ns, _)| *ns);
    Ok(gauges)
}

/// Sockets already in a `tracked` state that no fd (nor accept queue) holds: their
/// age counts from `attached_ns`, as a lower bound. Held ones need no entry: each
/// report's fd walk brings their lower bound (`rcv_tstamp`) itself, and 500k entries
/// for them would be most of tcpstate's memory.
pub fn seed_unheld(
    probe: &mut Probe,
    table: &mut SocketTable,
    filter: &Filter,
    tracked: u32,
    attached_ns: u64,
) -> io::Result<()> {
    let mut held = Vec::new();
    probe.scan_fds(|f| held.push(f.cookie))?;
    held.sort_unstable();
    // sock_diag lists only the caller's namespace: dump each one from inside it.
    // Orphans have no holder to name a container: a container filter drops them.
    let mut registry = netns::Registry::default();
    registry.add_discovered(netns::discover());
    let scan = registry.scan(tracked, |ns, s| {
        if filter.matches_netns(ns.inode)
            && !filter.by_cgroup()
            && held.binary_search(&s.cookie).is_err()
            && !table.contains(s.cookie)
        {
            table.seed(s.cookie, Lingering::seeded(s, attached_ns));
        }
    });
    log::debug!("namespace scan: {scan:?}");
    log::debug!(
        "{} sockets held at start, {} seeded unheld",
        held.len(),
        table.len()
    );
    Ok(())
}
