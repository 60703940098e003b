//! The two walks `linger`, `serve` and `top` share, each written once: who holds
//! which socket (the fd scan, with the namespace and container filters that decide
//! by holder), and the TIME_WAIT sockets by destination in every namespace.

use std::{collections::HashMap, io};

use tcpstate_common::state;

use crate::{
    cmd::ident::Resolver,
    model::{
        events::{family_of, unmap},
        filter::Filter,
        hist::Gauge,
        holders::Holders,
        sockets::{Lingering, SocketTable},
    },
    probe::{netns, procfs, sockdiag, Probe},
};

/// Every socket's holder, from one fd scan. --netns, --container and --cgroup select
/// holders here (the fd walk crosses namespaces; a process's container is its
/// /proc/PID/cgroup).
pub fn holders(probe: &mut Probe, f: &Filter, resolver: &mut Resolver) -> io::Result<Holders> {
    let mut holders = Holders::default();
    resolver.forget_processes();
    resolver.refresh_filter(f, probe);
    probe.scan_fds(|r| {
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
    Ok(holders)
}

/// TIME_WAIT sockets by destination, per namespace inode (sorted), each with its own
/// port range. TIME_WAIT sockets have no fd: dumped inside every namespace, each with
/// its own ip_local_port_range (a /proc/sys/net file shows the opener's namespace,
/// net_ctl_header_lookup()): read on the scan's thread, inside the namespace. `own`:
/// our own namespace's inode.
pub fn timewait_gauges(
    filter: &Filter,
    registry: &mut netns::Registry,
    own: u32,
) -> io::Result<Vec<(u32, Gauge)>> {
    let mut gauges: HashMap<u32, Gauge> = HashMap::new();
    if filter.matches_netns(own) {
        gauges.insert(own, Gauge::new(procfs::local_port_range()));
    }
    let add = |g: &mut Gauge, s: &sockdiag::DiagSocket| {
        let daddr = unmap(s.daddr);
        if filter.matches_endpoints(family_of(unmap(s.saddr), daddr), s.sport, s.dport) {
            g.add(daddr, s.dport);
        }
    };
    registry.add_discovered(netns::discover());
    let scan = registry.scan(1 << state::TIME_WAIT, |ns, s| {
        if filter.matches_netns(ns.inode) {
            let g = gauges
                .entry(ns.inode)
                .or_insert_with(|| Gauge::new(procfs::local_port_range()));
            add(g, s);
        }
    });
    log::debug!("TIME_WAIT scan: {scan:?}");
    if let Some(g) = gauges.get_mut(&own) {
        // Our own namespace needs no setns: dump it here if entering it failed.
        if scan.failed.iter().any(|(i, _)| *i == own) {
            *g = Gauge::new(procfs::local_port_range());
            sockdiag::for_each_tcp(1 << state::TIME_WAIT, |s| add(g, s))?;
        }
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
