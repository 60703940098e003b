//! `tcpstate serve`: a Prometheus exporter. One probe load aggregates time in state
//! in the kernel (`hist`'s machinery, TIME_WAIT included: read at each scrape and
//! added up, never reset); an fd walk at most every `--interval` (`linger`'s model:
//! the socket table, holders, reports) gives the CLOSE_WAIT sockets by holding
//! process, and the probe's TIME_WAIT records their destinations per namespace (no
//! namespace is entered after startup: CAP_SYS_ADMIN is dropped once attached).
//! Nothing is streamed: the probe sends no events at all.
//!
//! The probe keeps one state filter for everything it does, so streaming only
//! CLOSE_WAIT transitions while aggregating every state needs a probe change; until
//! then the CLOSE_WAIT sockets come from sock_diag at each walk, and their age is
//! counted from the walk that first saw them (a lower bound, off by at most one
//! interval).

mod caps;
mod http;
mod procinfo;
mod web;

use std::{cell::RefCell, collections::HashMap, rc::Rc, sync::Arc, time::Instant};

use anyhow::Context as _;
use tcpstate_common::{
    state, BY_NONE, FLAG_HIST, FLAG_OWNERS, FLAG_PAIRS, FLAG_TIMEWAIT, FLAG_TRACK,
    ITER_ACCEPT_QUEUE,
};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    cli::ServeArgs,
    cmd::session::Session,
    model::{
        events::{addr, family_of, unmap, TcpState},
        filter::Filter,
        hist::{Gauge, Interval, Key},
        holders::Holders,
        linger::{build, Clocks},
        metrics::{
            fold_destinations, fold_lingering, fold_listeners, identity, HeldListener,
            LingerSeries, ListenerSeries, NetnsTimewait, Snapshot,
        },
        sockets::{Lingering, SocketTable},
    },
    probe::{netns, procfs, ring::monotonic_ns, sockdiag, LoadOptions, HIST_SETTLE},
    render::{
        prometheus::{render, Format},
        summary::summary_text,
    },
};

use crate::model::hist::TW_UNSEEN_AFTER;

/// Most CLOSE_WAIT sockets one walk tracks.
const TABLE_CAPACITY: usize = 1 << 20;

/// The fd walk's inputs, moved to a blocking thread for each walk and back: at
/// 100k sockets a walk takes most of a second, which would stall every scrape on
/// the runtime's one thread.
struct Walker {
    filter: Filter,
    top: usize,
    pid_labels: bool,
    /// When a walk first saw each unheld CLOSE_WAIT socket (monotonic ns).
    first_seen: HashMap<u64, u64>,
    attached_ns: u64,
    hz: u32,
    /// The TIME_WAIT sockets older than the probe and each namespace's port range,
    /// read once at startup (the last time serve may enter a namespace).
    tw_seed: crate::cmd::walk::TimewaitSeed,
    /// serve's own namespace (its inode).
    own_netns: u32,
}

/// What the last walk found.
#[derive(Default)]
struct Walked {
    lingering: Vec<LingerSeries>,
    /// Held listeners' accept queues.
    listeners: Vec<ListenerSeries>,
    /// TIME_WAIT listings by namespace inode, each with its port range.
    gauges: Vec<(u32, Gauge)>,
    /// Sockets the walk could not track (table full).
    untracked: u64,
    /// TIME_WAIT candidates still open, and those that ended unseen (until the next
    /// scrape counts them).
    tws_open: u64,
    unseen: Vec<(tcpstate_common::TwKey, tcpstate_common::TwLive)>,
}

impl Walker {
    /// The CLOSE_WAIT sockets by holder, and the TIME_WAIT listing. The probe is
    /// locked only to open the fd scan and read the TIME_WAIT records.
    fn walk(&mut self, session: &tokio::sync::Mutex<Session>) -> std::io::Result<Walked> {
        let t0 = Instant::now();
        let now = monotonic_ns();
        let cw = 1u32 << state::CLOSE_WAIT;
        // The fd walk keeps only CLOSE_WAIT sockets and listeners' queued connections
        // (`iter_states`), with each socket's kernel facts: ages from `rcv_tstamp`,
        // the eof/accept diagnosis. The TIME_WAIT candidates' sweep lists their whole
        // map: here, not at each scrape (unseen ones are only decided 66 s after their
        // hand-over anyway).
        let mut holders = Holders::default();
        let mut held = Vec::new();
        let listen = state::LISTEN as u8;
        let (scan, tws_open, unseen, gauges) = {
            let mut session = session.blocking_lock();
            // Opened under the lock, read after it: a scrape meanwhile reads the
            // histograms rather than waiting for the walk.
            let scan = session.probe.fd_scan()?;
            // TIME_WAIT by namespace and destination: the probe's records, no setns.
            let gauges = crate::cmd::walk::timewait_from_probe(
                &session.probe,
                &self.filter,
                &mut self.tw_seed,
                self.own_netns,
                monotonic_ns(),
            )?;
            let (open, unseen) = session
                .probe
                .sweep_timewaits(monotonic_ns(), TW_UNSEEN_AFTER.as_nanos() as u64)?;
            (scan, open, unseen, gauges)
        };
        // --netns, --container and --cgroup select holders (as `walk::holders`).
        let mut resolver = crate::cmd::ident::Resolver::new();
        let filter = &self.filter;
        let tally = scan.for_each(|f| {
            if !filter.matches_netns(f.netns)
                || filter.by_cgroup() && {
                    let i = resolver.process(f.pid);
                    !filter.matches_cgroup(i.cgroup.as_deref(), i.container_id.as_deref())
                }
            {
                return;
            }
            // Listeners' own records: their queue, for the listen_queue gauges, with
            // the port, family and pid filters that the sockets' series have too.
            if f.state == listen && f.queued == 0 {
                let laddr = unmap(addr(f.family, &f.saddr));
                if !filter.matches_listener(family_of(laddr, laddr), f.sport, f.pid) {
                    return;
                }
                held.push(HeldListener {
                    pid: f.pid,
                    comm: f.comm,
                    identity: Default::default(),
                    cookie: f.cookie,
                    netns: f.netns,
                    laddr,
                    lport: f.sport,
                    len: f.ack_backlog,
                    max: f.max_ack_backlog,
                });
            } else {
                holders.add(f);
            }
        })?;
        holders.finish();
        // CLOSE_WAIT sockets no fd or queue holds (orphans) come from sock_diag, aged
        // from the walk that first saw them.
        let mut table = SocketTable::new(cw, TABLE_CAPACITY);
        let mut seen = HashMap::new();
        let old = &self.first_seen;
        // They are this namespace's; no holder names a container (as `seed_unheld`).
        let orphans = filter.matches_netns(self.own_netns) && !filter.by_cgroup();
        sockdiag::for_each_tcp(cw, |s| {
            if orphans && holders.get(s.cookie).is_none() {
                let since = old.get(&s.cookie).copied().unwrap_or(now);
                seen.insert(s.cookie, since);
                table.seed(s.cookie, Lingering::seeded(s, since));
            }
        })?;
        self.first_seen = seen;
        let untracked = table.untracked;
        let clk = Clocks {
            now_ns: now,
            attached_ns: self.attached_ns,
            hz: self.hz,
        };
        let reports = build(
            &table,
            &mut holders,
            &[TcpState::CloseWait],
            &clk,
            0,
            &self.filter,
        );
        drop((table, holders));
        let mut reports = reports;
        // Container labels: each holder's /proc/PID/cgroup, once per walk.
        for g in reports.iter_mut().flat_map(|r| r.groups.iter_mut()) {
            if let Some(pid) = g.pid {
                g.ident = (*resolver.process(pid)).clone();
            }
        }
        for l in &mut held {
            l.identity = identity(&resolver.process(l.pid));
        }
        drop(resolver);
        let listeners = fold_listeners(&held, self.top, self.pid_labels);
        drop(held);
        let mut usage: HashMap<u32, Option<f64>> = HashMap::new();
        let lingering = fold_lingering(&reports, self.top, self.pid_labels, |pid| {
            *usage
                .entry(pid)
                .or_insert_with(|| match tally.fds.get(&pid) {
                    Some(c) => c.limit.filter(|&l| l > 0).map(|l| c.open as f64 / l as f64),
                    None => procinfo::fd_usage(pid),
                })
        });
        // Namespaces first seen after startup: their port range as the walk read it.
        for (ns, (lo, hi)) in &tally.port_ranges {
            self.tw_seed
                .port_ranges
                .entry(*ns)
                .or_insert(u64::from(hi.saturating_sub(*lo)) + 1);
        }
        drop(reports);

        log::debug!("fd walk took {:?}", t0.elapsed());
        Ok(Walked {
            lingering,
            listeners,
            gauges,
            untracked,
            tws_open,
            unseen,
        })
    }
}

/// One walk on a blocking thread; the walker comes back with its result.
async fn walk_off_thread(
    mut w: Walker,
    session: Arc<tokio::sync::Mutex<Session>>,
) -> (Walker, std::io::Result<Walked>) {
    tokio::task::spawn_blocking(move || {
        let r = w.walk(&session);
        (w, r)
    })
    .await
    .expect("the walk does not panic")
}

/// Everything a scrape reads.
struct Shared {
    session: Arc<tokio::sync::Mutex<Session>>,
    /// Every histogram since start, TIME_WAIT's with how each ended. Its lock also
    /// makes scrapes take turns: the probe's generation switch is not shared.
    total: tokio::sync::Mutex<Interval>,
    walked: RefCell<Walked>,
    top: usize,
    pid_labels: bool,
    kernel: String,
}

impl Shared {
    /// Reads the kernel's aggregates, adds them to the totals, renders everything.
    async fn scrape_io(&self, fmt: Format) -> std::io::Result<String> {
        let started = Instant::now();
        let mut total = self.total.lock().await;
        let next = self.session.lock().await.probe.next_hist_gen()?;
        tokio::time::sleep(HIST_SETTLE).await;
        let mut session = self.session.lock().await;
        let hists = session.probe.take_hists(next)?;
        total.add_kernel(BY_NONE, &hists, |_| [0; 16]);
        let unseen = std::mem::take(&mut self.walked.borrow_mut().unseen);
        total.add_unseen(BY_NONE, &unseen, |_| [0; 16]);

        let mut durations: Vec<(TcpState, _)> = total
            .kernel
            .iter()
            .filter_map(|((st, _), h)| Some((TcpState::try_from(i32::from(*st)).ok()?, h.clone())))
            .collect();
        let tw = total.tw.get(&Key::None).cloned().unwrap_or_default();
        if tw.0.count > 0 {
            durations.push((TcpState::TimeWait, tw.0));
        }
        durations.sort_by_key(|(s, _)| *s);
        let walked = self.walked.borrow();
        let transitions = session.probe.transition_pairs()?;
        let snap = Snapshot {
            durations,
            transitions,
            tw_ended: tw.1,
            lingering: walked.lingering.clone(),
            listeners: walked.listeners.clone(),
            timewait: walked
                .gauges
                .iter()
                .map(|(ns, g)| NetnsTimewait {
                    netns: u64::from(*ns),
                    dests: fold_destinations(g, self.top),
                    port_range: g.port_range,
                })
                .collect(),
            summary: session.summary(None, walked.untracked),
            maps: vec![(
                tcpstate_common::names::TWS,
                walked.tws_open,
                session.probe.map_capacity(tcpstate_common::names::TWS),
            )],
            scrape_seconds: started.elapsed().as_secs_f64(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            kernel: self.kernel.clone(),
        };
        drop(walked);
        Ok(render(&snap, fmt, self.pid_labels))
    }
}

impl http::Metrics for Shared {
    async fn scrape(&self, fmt: Format) -> Result<String, String> {
        self.scrape_io(fmt).await.map_err(|e| e.to_string())
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // Everything that can be wrong with the command line or files, before the probe.
    let web = match &args.web_config {
        Some(p) => web::load(p)?,
        None => web::WebConfig::default(),
    };
    let tls = web.tls.as_ref().map(web::acceptor).transpose()?;
    let auth = Arc::new(web::Auth::new(web.users));
    let std_listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    std_listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;

    let filter = args.filter.filter();
    // Owners only for --pid; the lingering groups come from the fd walk's holders.
    let owners = !filter.pids.is_empty();
    let opts = LoadOptions {
        flags: FLAG_HIST
            | FLAG_TRACK
            | FLAG_TIMEWAIT
            | FLAG_PAIRS
            | if owners { FLAG_OWNERS } else { 0 },
        hist_by: BY_NONE,
        filter: filter.kernel(),
        // Nothing is streamed.
        ring_bytes: 16 << 10,
        hist_keys: 1,
        // CLOSE_WAIT sockets, listeners (their accept queue) and their queued ones.
        iter_states: 1 << state::CLOSE_WAIT | 1 << state::LISTEN,
        iter_flags: ITER_ACCEPT_QUEUE,
        fd_walk: true,
        ..LoadOptions::default()
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let session = Session::start(
        &format!("serving {scheme}://{}/metrics", args.listen),
        &opts,
        false,
    )?;
    // The last use of CAP_SYS_ADMIN: entering each namespace for the TIME_WAIT
    // sockets older than the probe and its port range. From here on the probe's
    // records cover TIME_WAIT, in namespaces made later too.
    let own_netns = crate::probe::procfs::netns_inode();
    let tw_seed = crate::cmd::walk::TimewaitSeed::read(
        &filter,
        &mut netns::Registry::default(),
        own_netns,
        monotonic_ns(),
    )?;
    let kept = caps::drop_unneeded(session.probe.counts_fds).context("dropping capabilities")?;
    eprintln!(
        "tcpstate: capabilities kept: {} (fd walks, fd counts); TLS {}, basic auth {}",
        caps::names(kept).join(", "),
        if tls.is_some() { "on" } else { "off" },
        if auth.enabled() { "on" } else { "off" },
    );
    let attached_ns = session.attached_ns;
    let session = Arc::new(tokio::sync::Mutex::new(session));
    let walker = Walker {
        filter,
        top: args.top as usize,
        pid_labels: args.pid_labels,
        first_seen: HashMap::new(),
        attached_ns,
        hz: procfs::hz().unwrap_or_else(|| {
            log::warn!("cannot tell the kernel's HZ; assuming 250");
            250
        }),
        tw_seed,
        own_netns,
    };
    let (mut walker, first) = walk_off_thread(walker, session.clone()).await;
    let shared = Rc::new(Shared {
        session,
        total: tokio::sync::Mutex::new(Interval::default()),
        walked: RefCell::new(first.context("the first fd walk")?),
        top: args.top as usize,
        pid_labels: args.pid_labels,
        kernel: procinfo::kernel_release(),
    });

    let local = tokio::task::LocalSet::new();
    let failed = local
        .run_until(async {
            // Walks every --interval, one at a time, off the runtime's thread.
            let walks = {
                let shared = shared.clone();
                tokio::task::spawn_local(async move {
                    let mut tick = tokio::time::interval(args.interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        let (w, r) = walk_off_thread(walker, shared.session.clone()).await;
                        walker = w;
                        let mut new = r?;
                        // Unseen ends a scrape has not counted yet stay counted.
                        let mut walked = shared.walked.borrow_mut();
                        new.unseen.append(&mut walked.unseen);
                        *walked = new;
                    }
                })
            };
            tokio::pin!(walks);
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((tcp, _)) = accepted else { continue };
                        let (m, a) = (shared.clone(), auth.clone());
                        match &tls {
                            Some(acc) => {
                                let acc = acc.clone();
                                tokio::task::spawn_local(async move {
                                    // A plain-HTTP client or a stalled one gets no answer.
                                    if let Ok(Ok(s)) = tokio::time::timeout(http::CLIENT_TIMEOUT, acc.accept(tcp)).await {
                                        http::connection(s, m, a).await;
                                    }
                                });
                            }
                            None => {
                                tokio::task::spawn_local(http::connection(tcp, m, a));
                            }
                        }
                    }
                    r = &mut walks => {
                        let e: std::io::Error = match r {
                            Ok(Err(e)) => e,
                            Ok(Ok(())) | Err(_) => std::io::Error::other("the walk task ended"),
                        };
                        return Some(e);
                    }
                    _ = int.recv() => return None,
                    _ = term.recv() => return None,
                }
            }
        })
        .await;
    if let Some(e) = failed {
        return Err(anyhow::Error::new(e).context("fd walk"));
    }
    let session = shared.session.lock().await;
    eprintln!(
        "{}",
        summary_text(&session.summary(None, shared.walked.borrow().untracked))
    );
    Ok(())
}
