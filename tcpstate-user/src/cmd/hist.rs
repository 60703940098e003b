//! `tcpstate hist`: how long sockets spend in each state, TIME_WAIT included.
//!
//! Everything is aggregated in the kernel (exact counts whatever the load; see
//! `add_sample` in tcpstate-ebpf), TIME_WAIT included: the probe records each
//! hand-over to a timewait socket (FIN_WAIT2/CLOSING->CLOSE), and ends it when the
//! socket's timer fires (timer_expire_entry) or a new connection takes its 4-tuple.
//! At each report this reads the histograms, sweeps candidates whose end the probe
//! could not see, and counts the gauge from the probe's open candidates (plus the
//! TIME_WAIT sockets older than the probe, listed once at startup).

use std::{
    io::{self, BufWriter, Write},
    time::Duration,
};

use tcpstate_common::{
    Event, BY_CONTAINER, BY_NONE, FLAG_HIST, FLAG_OWNERS, FLAG_TIMEWAIT, FLAG_TRACK,
};

use crate::{
    cli::HistArgs,
    cmd::session::{Consumer, Session},
    model::{
        events::{StateNum, TcpState},
        filter::Filter,
        hist::{Gauge, Interval},
    },
    probe::{netns, procfs, ring::monotonic_ns, LoadOptions, Probe, HIST_SETTLE},
    render::{
        clock::Clock,
        hist::HistView,
        summary::{summary_text, write_summary_json},
    },
};

use crate::model::hist::TW_UNSEEN_AFTER;

struct Hist<W: Write> {
    args: HistArgs,
    by: u32,
    filter: Filter,
    want_tw: bool,
    current: Interval,
    /// Latest TIME_WAIT listing.
    gauge: Gauge,
    /// Candidates still in TIME_WAIT at the last sweep.
    tw_open: u64,
    /// The generation the probe switched to in [`Consumer::prepare_interval`].
    next_gen: Option<u32>,
    clock: Clock,
    out: W,
    /// TIME_WAIT sockets older than the probe (listed once, inside each namespace);
    /// the probe's records cover the rest, in every namespace, including those made
    /// later or kept alive only by a socket.
    tw_seed: crate::cmd::walk::TimewaitSeed,
    own_netns: u32,
    /// Keeps the probe's cgroup filter map current (`--container`, `--cgroup`).
    resolver: crate::cmd::ident::Resolver,
}

impl<W: Write> Hist<W> {
    /// Candidates whose end the probe could not see, and the TIME_WAIT gauge.
    fn sweep_timewait(&mut self, probe: &mut Probe) -> io::Result<()> {
        let now = monotonic_ns();
        let (open, unseen) = probe.sweep_timewaits(now, TW_UNSEEN_AFTER.as_nanos() as u64)?;
        self.tw_open = open;
        self.current.add_unseen(self.by, &unseen, procfs::comm);
        self.gauge.clear();
        let gauges = crate::cmd::walk::timewait_from_probe(
            probe,
            &self.filter,
            &mut self.tw_seed,
            self.own_netns,
            now,
        )?;
        for (_, g) in &gauges {
            self.gauge.absorb(g);
        }
        Ok(())
    }

    fn wanted(&self, st: u8) -> bool {
        self.args.states.is_empty() || self.args.states.iter().any(|s| s.number() == i32::from(st))
    }

    /// Reads the interval the probe closed in [`Consumer::prepare_interval`] and
    /// prints it.
    fn report(&mut self, probe: &mut Probe) -> io::Result<()> {
        let next = match self.next_gen.take() {
            Some(g) => g,
            None => probe.next_hist_gen()?,
        };
        let hists = probe.take_hists(next)?;
        self.current.add_kernel(self.by, &hists, procfs::comm);
        drop(hists);
        if self.want_tw {
            self.sweep_timewait(probe)?;
        }
        self.resolver.refresh_filter(&self.filter, probe);
        let now = monotonic_ns();
        let mut iv = std::mem::take(&mut self.current);
        if self.by == BY_CONTAINER {
            // Cached per cgroup id: one hierarchy lookup per new cgroup.
            let r = &mut self.resolver;
            iv.by_container(|id| r.cgroup(id).container_id.clone());
        }
        let mut time = String::new();
        self.clock.utc_rfc3339(now, &mut time);
        let mut view = HistView::new(self.args.json, self.args.unit);
        view.header(self.args.interval.is_some(), &time);
        for ((st, key), h) in &iv.kernel_sorted(|st| self.wanted(st)) {
            view.one(&StateNum(*st).to_string(), key, h, None, &time)?;
        }
        if self.want_tw {
            for (key, (h, e)) in &iv.tw_sorted() {
                view.one("TIME_WAIT", key, h, Some(*e), &time)?;
            }
            view.gauge(&self.gauge, &time)?;
        }
        self.out.write_all(view.bytes())?;
        self.out.flush()
    }
}

impl<W: Write> Consumer for Hist<W> {
    /// The probe sends nothing to `hist`: everything is aggregated in the kernel.
    fn event(&mut self, _ev: &Event) -> io::Result<()> {
        Ok(())
    }

    fn prepare_interval(&mut self, probe: &mut Probe) -> io::Result<Option<Duration>> {
        self.next_gen = Some(probe.next_hist_gen()?);
        Ok(Some(HIST_SETTLE))
    }

    fn interval(&mut self, probe: &mut Probe) -> io::Result<()> {
        self.report(probe)
    }
}

/// How many histogram keys the probe preallocates. With a key: up to 1024, but at most ~64 MiB of
/// kernel memory on hosts with many CPUs (each key holds a 4.5 KiB histogram per CPU).
fn hist_keys(by: u32) -> u32 {
    let per_key = std::mem::size_of::<tcpstate_common::Hist>() as u64
        * aya::util::nr_cpus().map_or(1, |n| n as u64);
    match by {
        // The probe uses a per-CPU array instead (HIST_SPILL).
        BY_NONE => 1,
        _ => ((64 << 20) / per_key).clamp(64, 1024) as u32,
    }
}

/// Runs `hist`; `args` were checked by [`HistArgs::check`] before the runtime started.
pub async fn run(args: HistArgs) -> anyhow::Result<()> {
    let want_tw = args.states.is_empty() || args.states.contains(&TcpState::TimeWait);
    let filter = args.filter.filter();
    let by = args.by_code();
    // Owners only when a key or filter needs them: learning them costs the accept
    // probe and a task read per owner-context transition.
    let owners = args.needs_owners();
    let opts = LoadOptions {
        flags: FLAG_HIST
            | FLAG_TRACK
            | if owners { FLAG_OWNERS } else { 0 }
            | if want_tw { FLAG_TIMEWAIT } else { 0 },
        hist_by: by,
        filter: filter.kernel(),
        // Nothing is streamed to `hist`.
        ring_bytes: 16 << 10,
        hist_keys: hist_keys(by),
        ..LoadOptions::default()
    };
    let mut session = Session::start("aggregating time in state", &opts, owners)?;
    let mut hist = Hist {
        by,
        filter: filter.clone(),
        want_tw,
        current: Interval::default(),
        gauge: Gauge::new(procfs::local_port_range()),
        tw_open: 0,
        next_gen: None,
        clock: Clock::new(),
        out: BufWriter::new(io::stdout().lock()),
        tw_seed: if want_tw {
            crate::cmd::walk::TimewaitSeed::read(
                &filter,
                &mut netns::Registry::default(),
                procfs::netns_inode(),
                monotonic_ns(),
            )?
        } else {
            Default::default()
        },
        own_netns: procfs::netns_inode(),
        resolver: crate::cmd::ident::Resolver::new(),
        args,
    };
    hist.resolver
        .refresh_filter(&hist.filter, &mut session.probe);
    let duration = hist.args.duration;
    let interval = hist.args.interval;
    session.run(&mut hist, duration, interval).await?;
    if interval.is_none() {
        hist.next_gen = Some(session.probe.next_hist_gen()?);
        tokio::time::sleep(HIST_SETTLE).await;
        hist.report(&mut session.probe)?;
    }
    let summary = session.summary(None, 0);
    if hist.args.json {
        write_summary_json(&mut hist.out, &summary)?;
    } else {
        hist.out.flush()?;
        let c = session.probe.counters();
        eprintln!(
            "{}; TIME_WAIT: {} hand-overs, {} still open (not counted), {} expired in FIN_WAIT2 (orphans, not TIME_WAIT), {} ended early (killed, or taken by a new connection)",
            summary_text(&summary),
            c.tw_candidates,
            hist.tw_open,
            c.tw_not_timewait,
            c.tw_cancelled
        );
    }
    Ok(())
}
