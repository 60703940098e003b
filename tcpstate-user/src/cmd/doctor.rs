//! `tcpstate doctor`: an fd walk, `--duration` of waiting, then a second fd walk
//! (linger's holders and diagnosis, CLOSE_WAIT and dead sockets; the CLOSE_WAIT
//! sockets the second walk holds and the first did not are the growth) and, inside every network namespace, its TIME_WAIT and FIN_WAIT2 sockets
//! (sock_diag), sysctls and `/proc/net/netstat`; the model's rules turn that into
//! findings, the view prints them. Exit status: see `cli::Command::Doctor`.

use std::{
    collections::HashMap,
    io::{self, Write},
};

use tcpstate_common::{state, Event, FdRecord, ITER_ACCEPT_QUEUE, SOCK_KEEPOPEN, SOCK_LINGER};

use crate::{
    cli::DoctorArgs,
    cmd::session::{Consumer, Session},
    model::{
        container::identify_process,
        doctor::{
            close_wait, dead_held, fin_wait2, keepalive, linger_zero, listen_queue, losses,
            not_accepted, sort, time_wait, Finding, KeepSock, Listener, Namespace, Netstat,
            Outcome, Sysctls, Who,
        },
        events::{addr, unmap, TcpState},
        filter::Filter,
        holders::{Comm, Holders},
        linger::{build, set_fd_headroom, Backlog, Clocks, Facts},
        sockets::SocketTable,
    },
    probe::{cgroups, netns, netstat, procfs, ring::monotonic_ns, sockdiag, LoadOptions},
    render::{
        doctor::{finding_json, finding_text, summary_json, summary_text},
        format::comm_text,
    },
};

struct Watch {
    table: SocketTable,
}

impl Consumer for Watch {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.table.apply(ev);
        Ok(())
    }
}

/// A namespace's own view, read from inside it (a thread `setns()`'d into it).
/// `fw2_held`: cookies of FIN_WAIT2 sockets some fd holds (sorted).
fn read_namespace(inode: u32, fw2_held: &[u64]) -> io::Result<Namespace> {
    let sysctls = Sysctls {
        ip_local_port_range: netstat::port_range(),
        tcp_keepalive_time: netstat::sysctl1("ipv4/tcp_keepalive_time"),
        tcp_tw_reuse: netstat::sysctl1("ipv4/tcp_tw_reuse"),
        tcp_max_tw_buckets: netstat::sysctl1("ipv4/tcp_max_tw_buckets"),
        tcp_fin_timeout: netstat::sysctl1("ipv4/tcp_fin_timeout"),
        tcp_max_orphans: netstat::sysctl1("ipv4/tcp_max_orphans"),
        somaxconn: netstat::sysctl1("core/somaxconn"),
    };
    let mut ns = Namespace::new(inode, sysctls, listen_counters());
    let tw = state::TIME_WAIT as u8;
    sockdiag::for_each_tcp(1 << state::TIME_WAIT | 1 << state::FIN_WAIT2, |s| {
        if s.state == tw {
            ns.add_time_wait(unmap(s.saddr), s.sport, unmap(s.daddr), s.dport);
        } else if fw2_held.binary_search(&s.cookie).is_err() {
            // Orphaned: closed by its process (FIN_WAIT2 minisockets included).
            ns.fin_wait2_orphans += 1;
        }
    })?;
    Ok(ns)
}

/// This thread's namespace's `ListenOverflows` / `ListenDrops`.
fn listen_counters() -> Option<Netstat> {
    netstat::tcp_ext(&["ListenOverflows", "ListenDrops"]).map(|v| Netstat {
        listen_overflows: v[0],
        listen_drops: v[1],
    })
}

/// Every namespace: tasks', mounts' and those of the walked sockets (`sockets`:
/// namespace -> a (pid, fd) holding one of its sockets).
fn discover(sockets: &HashMap<u32, (u32, u32)>) -> netns::Discovered {
    let mut found = netns::discover();
    for (&inode, &(pid, fd)) in sockets {
        found.add_socket(inode, pid, fd);
    }
    found
}

/// Every namespace's listen counters now (the run's start), read from inside it.
fn start_counters(found: &netns::Discovered) -> HashMap<u32, Netstat> {
    let mut out = HashMap::new();
    for (inode, openers) in &found.namespaces {
        for o in openers {
            if let Ok(Some(c)) = netns::in_netns(*inode, o, listen_counters) {
                out.insert(*inode, c);
                break;
            }
        }
    }
    out
}

/// What the keepalive rules need of a held socket (jiffies to seconds at `hz`).
fn keep_sock(f: &FdRecord, hz: u32) -> KeepSock {
    let facts = Facts::of(f, hz);
    KeepSock {
        state: f.state,
        idle_ms: facts.last_send_ms.min(facts.last_recv_ms),
        keepalive: f.sk_flags & (1 << SOCK_KEEPOPEN) != 0,
        keepidle_s: (f.keepalive_time != 0).then(|| u64::from(f.keepalive_time / hz.max(1))),
        // `sock_setsockopt(SO_LINGER)`: l_onoff with l_linger 0 sets SOCK_LINGER and
        // sk_lingertime 0; tcp_close() then sends a RST (tcp_disconnect()).
        linger0: f.sk_flags & (1 << SOCK_LINGER) != 0 && f.lingertime == 0,
        daddr: unmap(addr(f.family, &f.daddr)),
        dport: f.dport,
    }
}

/// A process's container id, from its cgroup path (None for a host process).
fn container_of(pid: u32) -> Option<String> {
    let c = cgroups::read_proc_cgroup(pid).ok()?;
    identify_process(c.unified.as_deref(), &c.v1_refs())
        .0
        .container_id
}

pub async fn run(args: DoctorArgs) -> anyhow::Result<u8> {
    let th = args.thresholds();
    let cw = 1u32 << state::CLOSE_WAIT;
    // Nothing is streamed: on a busy host a stream of transitions can overflow, and
    // two walks tell the growth without one. The walk keeps CLOSE_WAIT, dead (CLOSE),
    // FIN_WAIT2 and ESTABLISHED (keepalive) sockets, listeners (their own queue
    // and drops: listen_queue) and listeners' queued connections.
    let opts = LoadOptions {
        flags: 0,
        iter_states: cw
            | 1 << state::CLOSE
            | 1 << state::FIN_WAIT2
            | 1 << state::ESTABLISHED
            | 1 << state::LISTEN,
        iter_flags: ITER_ACCEPT_QUEUE,
        ring_bytes: 1 << 20,
        fd_walk: true,
        ..LoadOptions::default()
    };
    let mut session = match Session::start("doctor: first walk", &opts, false) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tcpstate: could not check: {e:#}");
            return Ok(3);
        }
    };
    let want = |n: u32| args.netns.is_empty() || args.netns.contains(&n);
    let cw8 = state::CLOSE_WAIT as u8;
    let listen8 = state::LISTEN as u8;
    let drops = session.probe.has_sk_drops;
    if !drops {
        eprintln!("tcpstate: warning: this kernel's BTF has no sock.sk_drops: listeners' own drops are not shown");
    }
    let mut before = Vec::new();
    // Listeners' sk_drops at the start, by cookie.
    let mut drops_before: HashMap<u64, u32> = HashMap::new();
    // A socket per namespace: the way into those no task or mount names.
    let mut sockets: HashMap<u32, (u32, u32)> = HashMap::new();
    session.probe.scan_fds(|f| {
        if !want(f.netns) {
            return;
        }
        sockets.entry(f.netns).or_insert((f.pid, f.fd));
        if f.state == cw8 {
            before.push(f.cookie);
        } else if f.state == listen8 && f.queued == 0 {
            drops_before.insert(f.cookie, f.sk_drops);
        }
    })?;
    before.sort_unstable();
    let counters_before = start_counters(&discover(&sockets));
    // The run's changes count from here, not from the attach.
    eprintln!(
        "tcpstate: doctor watching for {:.1}s (counters read in {} namespaces)",
        args.duration.as_secs_f64(),
        counters_before.len()
    );
    // No transitions come (flags 0): the table stays empty, ages are lower bounds.
    let mut watch = Watch {
        table: SocketTable::new(cw, 1),
    };
    session.run(&mut watch, Some(args.duration), None).await?;
    let waited_s = (monotonic_ns() - session.attached_ns) as f64 / 1e9;

    let mut holders = Holders::default();
    let mut fw2_held = Vec::new();
    let fw2 = state::FIN_WAIT2 as u8;
    let est = state::ESTABLISHED as u8;
    let hz = procfs::hz().unwrap_or(250);
    // Per (pid, netns): the holder's name and its sockets the keepalive rules may
    // report (idle ESTABLISHED ones, and any set to SO_LINGER(0)).
    let mut keep: HashMap<(u32, u32), (Comm, Vec<KeepSock>)> = HashMap::new();
    // CLOSE_WAIT sockets new since the first walk, per holder.
    let mut grown: HashMap<u32, u64> = HashMap::new();
    let mut listeners: Vec<(u32, Comm, Listener)> = Vec::new();
    sockets.clear();
    session.probe.scan_fds(|f| {
        if !want(f.netns) {
            return;
        }
        sockets.entry(f.netns).or_insert((f.pid, f.fd));
        if f.state == listen8 && f.queued == 0 {
            listeners.push((
                f.pid,
                f.comm,
                Listener {
                    fd: f.fd,
                    netns: f.netns,
                    saddr: unmap(addr(f.family, &f.saddr)),
                    sport: f.sport,
                    len: f.ack_backlog,
                    max: f.max_ack_backlog,
                    drops: drops.then_some(f.sk_drops),
                    drops_start: drops_before.get(&f.cookie).copied().filter(|_| drops),
                },
            ));
            return;
        }
        if f.queued == 0 {
            let k = keep_sock(f, hz);
            if k.linger0 || (f.state == est && k.idle_ms.saturating_mul(1_000_000) > th.idle_ns) {
                keep.entry((f.pid, f.netns))
                    .or_insert_with(|| (f.comm, Vec::new()))
                    .1
                    .push(k);
            }
        }
        if f.state == est {
            // Only the keepalive rules look at live connections.
        } else if f.state == fw2 {
            fw2_held.push(f.cookie);
        } else {
            if f.state == cw8 && before.binary_search(&f.cookie).is_err() {
                *grown.entry(f.pid).or_default() += 1;
            }
            holders.add(f);
        }
    })?;
    holders.finish();
    fw2_held.sort_unstable();
    let clk = Clocks {
        now_ns: monotonic_ns(),
        attached_ns: session.attached_ns,
        hz,
    };
    let mut reports = build(
        &watch.table,
        &mut holders,
        &[TcpState::CloseWait, TcpState::Close],
        &clk,
        0,
        &Filter::default(),
    );
    drop(holders);
    // A socket held by several processes counts for each: an overestimate only there.
    for g in &mut reports[0].groups {
        if let Some(pid) = g.pid {
            let n = grown.get(&pid).copied().unwrap_or(0) as f64;
            g.growth_per_s = (waited_s > 0.0).then(|| n / waited_s);
        }
    }
    set_fd_headroom(&mut reports, |pid| {
        (procfs::fd_limit(pid), procfs::fd_count(pid))
    });

    // Every namespace, each read from inside it.
    let found = discover(&sockets);
    let mut inodes: Vec<u32> = found
        .namespaces
        .keys()
        .copied()
        .filter(|n| want(*n))
        .collect();
    inodes.sort_unstable();
    let mut spaces: HashMap<u32, Namespace> = HashMap::new();
    let mut failed = Vec::new();
    for inode in inodes {
        let mut err = None;
        for o in &found.namespaces[&inode] {
            match netns::in_netns(inode, o, || read_namespace(inode, &fw2_held)) {
                Ok(Ok(mut ns)) => {
                    ns.netstat_start = counters_before.get(&inode).copied();
                    spaces.insert(inode, ns);
                    err = None;
                    break;
                }
                Ok(Err(e)) => err = Some(e.to_string()),
                Err(netns::NsError::Gone(_)) => {}
                Err(e) => err = Some(e.to_string()),
            }
        }
        if let Some(e) = err {
            eprintln!("tcpstate: warning: network namespace {inode} not checked: {e}");
            failed.push((inode, e));
        }
    }

    let mut ids: HashMap<u32, Option<String>> = HashMap::new();
    let mut who = |pid: u32, comm: &Comm| Who {
        pid: Some(pid),
        comm: Some(comm_text(comm)),
        container_id: ids.entry(pid).or_insert_with(|| container_of(pid)).clone(),
    };
    let mut findings: Vec<Finding> = Vec::new();
    // Dead connections queued on a listener, CLOSE_WAIT or CLOSE: one finding each.
    let mut queues: Vec<(Who, Backlog)> = Vec::new();
    for (r, g) in reports
        .iter()
        .flat_map(|r| r.groups.iter().map(move |g| (r, g)))
    {
        let Some(pid) = g.pid else { continue };
        let w = who(pid, &g.comm);
        let f = if r.state == TcpState::CloseWait {
            close_wait(g, &w, &th)
        } else {
            dead_held(g, &w, &th)
        };
        findings.extend(f);
        for b in &g.diagnosis.backlogs {
            match queues.iter_mut().find(|(qw, q)| {
                qw.pid == w.pid && q.listener_fd == b.listener_fd && q.netns == b.netns
            }) {
                Some((_, q)) => q.count += b.count,
                None => queues.push((w.clone(), b.clone())),
            }
        }
    }
    for (w, b) in &queues {
        findings.push(not_accepted(b, w, spaces.get(&b.netns)));
    }
    // A full queue of live connections; one with dead ones is not_accepted's.
    for (pid, comm, l) in &listeners {
        let dup = queues
            .iter()
            .any(|(qw, q)| qw.pid == Some(*pid) && q.listener_fd == l.fd && q.netns == l.netns);
        if !dup {
            if let Some(f) = listen_queue(l, &who(*pid, comm), spaces.get(&l.netns)) {
                findings.push(f);
            }
        }
    }
    for ns in spaces.values() {
        findings.extend(time_wait(ns, &th));
        findings.extend(fin_wait2(ns, &th));
    }
    for ((pid, netns), (comm, socks)) in &keep {
        let w = who(*pid, comm);
        let ka = spaces.get(netns).and_then(|n| n.sysctls.tcp_keepalive_time);
        findings.extend(keepalive(socks, &w, *netns, ka, &th));
        findings.extend(linger_zero(socks, &w, *netns));
    }
    let summary = session.summary(None, watch.table.untracked);
    findings.extend(losses(&summary));
    sort(&mut findings);
    let mut outcome = Outcome::of(&findings);
    outcome.namespaces = spaces.len();
    outcome.namespaces_failed = failed;

    let mut out = io::BufWriter::new(io::stdout().lock());
    if args.json {
        for f in &findings {
            writeln!(out, "{}", finding_json(f))?;
        }
        writeln!(
            out,
            "{}",
            summary_json(&outcome, args.duration.as_secs_f64(), summary.lost)
        )?;
    } else {
        let mut text = String::new();
        for f in &findings {
            finding_text(f, &mut text);
            text.push('\n');
        }
        text.push_str(&summary_text(&outcome));
        text.push('\n');
        out.write_all(text.as_bytes())?;
    }
    out.flush()?;
    let status = outcome.exit_status();
    // Nothing to act on, but part of the host was not looked at: not a clean bill.
    if status == 0 && !outcome.namespaces_failed.is_empty() {
        return Ok(3);
    }
    Ok(status)
}
