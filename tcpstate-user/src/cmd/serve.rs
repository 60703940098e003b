//! `tcpstate serve`: a Prometheus exporter. One probe load aggregates time in state
//! in the kernel (`hist`'s machinery, TIME_WAIT included: read at each scrape and
//! added up, never reset); an fd walk at most every `--interval` (`linger`'s model:
//! the socket table, holders, reports) gives the CLOSE_WAIT sockets by holding
//! process, and a TIME_WAIT listing their destinations. Nothing is streamed: the
//! probe sends no events at all.
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

use std::{
    cell::RefCell,
    collections::HashMap,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tcpstate_common::{state, BY_NONE, FLAG_HIST, FLAG_OWNERS, FLAG_TIMEWAIT, FLAG_TRACK};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    cli::ServeArgs,
    cmd::session::Session,
    model::{
        events::{family_of, unmap, TcpState},
        filter::Filter,
        hist::{Gauge, Interval, Key},
        holders::Holders,
        linger::build,
        metrics::{fold_destinations, fold_lingering, LingerSeries, Snapshot},
        sockets::{Lingering, SocketTable},
    },
    probe::{procfs, ring::monotonic_ns, sockdiag, LoadOptions, HIST_SETTLE},
    render::{
        prometheus::{render, Format},
        summary::summary_text,
    },
};

/// A TIME_WAIT candidate still recorded this long after its hand-over ended unseen
/// (as `hist`'s TW_UNSEEN_AFTER: 60 s plus the timer wheel's rounding).
const TW_UNSEEN_AFTER: Duration = Duration::from_secs(66);

/// Most CLOSE_WAIT sockets one walk tracks.
const TABLE_CAPACITY: usize = 1 << 20;

struct Collector {
    session: Session,
    filter: Filter,
    top: usize,
    pid_labels: bool,
    /// Every histogram since start, TIME_WAIT's with how each ended.
    total: Interval,
    /// When a walk first saw each CLOSE_WAIT socket (monotonic ns).
    first_seen: HashMap<u64, u64>,
    /// Sockets a walk could not track (table full).
    untracked: u64,
    lingering: Vec<LingerSeries>,
    gauge: Gauge,
    tws_open: u64,
    netns: u64,
    kernel: String,
}

impl Collector {
    /// The fd walk and the TIME_WAIT listing.
    fn walk(&mut self) -> std::io::Result<()> {
        let now = monotonic_ns();
        let cw = 1u32 << state::CLOSE_WAIT;
        let mut table = SocketTable::new(cw, TABLE_CAPACITY);
        let mut seen = HashMap::with_capacity(self.first_seen.len());
        let old = &self.first_seen;
        sockdiag::for_each_tcp(cw, |s| {
            let since = old.get(&s.cookie).copied().unwrap_or(now);
            seen.insert(s.cookie, since);
            table.seed(s.cookie, Lingering::seeded(s, since));
        })?;
        self.first_seen = seen;
        self.untracked = table.untracked;
        let mut holders = Holders::with_capacity(table.len());
        self.session.probe.scan_fds(|f| {
            if table.contains(f.cookie) {
                holders.add(f);
            }
        })?;
        let reports = build(
            &table,
            &holders,
            &[TcpState::CloseWait],
            now,
            0,
            &self.filter,
        );
        drop((table, holders));
        let mut usage: HashMap<u32, Option<f64>> = HashMap::new();
        self.lingering = fold_lingering(&reports, self.top, self.pid_labels, |pid| {
            *usage.entry(pid).or_insert_with(|| procinfo::fd_usage(pid))
        });

        self.gauge.clear();
        self.gauge.port_range = procfs::local_port_range();
        let (gauge, filter) = (&mut self.gauge, &self.filter);
        sockdiag::for_each_tcp(1 << state::TIME_WAIT, |s| {
            let daddr = unmap(s.daddr);
            if filter.matches_endpoints(family_of(unmap(s.saddr), daddr), s.sport, s.dport) {
                gauge.add(daddr, s.dport);
            }
        })
    }

    /// Reads the kernel's aggregates, adds them to the totals, renders everything.
    async fn scrape(&mut self, fmt: Format) -> std::io::Result<String> {
        let started = Instant::now();
        let probe = &mut self.session.probe;
        let next = probe.next_hist_gen()?;
        tokio::time::sleep(HIST_SETTLE).await;
        let hists = probe.take_hists(next)?;
        self.total.add_kernel(BY_NONE, &hists, |_| [0; 16]);
        let (open, unseen) =
            probe.sweep_timewaits(monotonic_ns(), TW_UNSEEN_AFTER.as_nanos() as u64)?;
        self.tws_open = open;
        self.total.add_unseen(BY_NONE, &unseen, |_| [0; 16]);

        let mut durations: Vec<(TcpState, _)> = self
            .total
            .kernel
            .iter()
            .filter_map(|((st, _), h)| Some((TcpState::try_from(i32::from(*st)).ok()?, h.clone())))
            .collect();
        let tw = self.total.tw.get(&Key::None).cloned().unwrap_or_default();
        if tw.0.count > 0 {
            durations.push((TcpState::TimeWait, tw.0));
        }
        durations.sort_by_key(|(s, _)| *s);
        let snap = Snapshot {
            durations,
            tw_ended: tw.1,
            lingering: self.lingering.clone(),
            netns: self.netns,
            tw_dests: fold_destinations(&self.gauge, self.top),
            port_range: self.gauge.port_range,
            summary: self.session.summary(None, self.untracked),
            maps: vec![(tcpstate_common::names::TWS, self.tws_open)],
            scrape_seconds: started.elapsed().as_secs_f64(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            kernel: self.kernel.clone(),
        };
        Ok(render(&snap, fmt, self.pid_labels))
    }
}

/// Scrapes one at a time: the probe's generation switch is not shared.
struct Shared(tokio::sync::Mutex<Collector>);

impl http::Metrics for Shared {
    async fn scrape(&self, fmt: Format) -> Result<String, String> {
        self.0
            .lock()
            .await
            .scrape(fmt)
            .await
            .map_err(|e| e.to_string())
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
    // Owners only for --pid (the accept probe, and tracefs); the lingering groups
    // come from the fd walk's holders.
    let owners = !filter.pids.is_empty();
    let opts = LoadOptions {
        flags: FLAG_HIST | FLAG_TRACK | FLAG_TIMEWAIT | if owners { FLAG_OWNERS } else { 0 },
        hist_by: BY_NONE,
        filter: filter.kernel(),
        // Nothing is streamed.
        ring_bytes: 16 << 10,
        hist_keys: 1,
        ..LoadOptions::default()
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let session = Session::start(
        &format!("serving {scheme}://{}/metrics", args.listen),
        &opts,
        false,
    )?;
    let kept = caps::drop_unneeded().context("dropping capabilities")?;
    eprintln!(
        "tcpstate: capabilities kept: {} (fd walks and fd counts); TLS {}, basic auth {}",
        caps::names(kept).join(", "),
        if tls.is_some() { "on" } else { "off" },
        if auth.enabled() { "on" } else { "off" },
    );
    let mut collector = Collector {
        session,
        filter,
        top: args.top as usize,
        pid_labels: args.pid_labels,
        total: Interval::default(),
        first_seen: HashMap::new(),
        untracked: 0,
        lingering: Vec::new(),
        gauge: Gauge::new(procfs::local_port_range()),
        tws_open: 0,
        netns: procinfo::netns_inode(),
        kernel: procinfo::kernel_release(),
    };
    collector.walk().context("the first fd walk")?;
    let shared = Rc::new(Shared(tokio::sync::Mutex::new(collector)));
    let failed: Rc<RefCell<Option<std::io::Error>>> = Rc::default();

    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            let mut walk = tokio::time::interval(args.interval);
            walk.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            walk.tick().await;
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
                    _ = walk.tick() => {
                        if let Err(e) = shared.0.lock().await.walk() {
                            *failed.borrow_mut() = Some(e);
                            break;
                        }
                    }
                    _ = int.recv() => break,
                    _ = term.recv() => break,
                }
            }
        })
        .await;
    if let Some(e) = failed.take() {
        return Err(anyhow::Error::new(e).context("fd walk"));
    }
    let c = shared.0.lock().await;
    eprintln!("{}", summary_text(&c.session.summary(None, c.untracked)));
    Ok(())
}
