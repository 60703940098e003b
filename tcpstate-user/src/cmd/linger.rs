//! `tcpstate linger`: sockets that stay in a state (CLOSE_WAIT by default) longer than
//! `--min-age`, grouped by the process that holds them, with fd, age and growth.
//!
//! Ages come from observed transitions (the model's `SocketTable`); sockets already
//! in the state at startup are seeded from sock_diag with their age as a lower bound.
//! Holders come from a fresh scan of every fd table (the `task_file` iterator) at
//! each report, so fork-inherited and passed fds count, and a reused PID inherits
//! nothing.

use std::io::{self, BufWriter, Write};

use tcpstate_common::{Event, FLAG_STREAM};

use crate::{
    cli::LingerArgs,
    cmd::session::{Consumer, Session},
    model::{
        events::TcpState,
        filter::Filter,
        holders::Holders,
        linger::{build, state_mask, watched_states, Rates},
        sockets::{Lingering, SocketTable},
    },
    probe::{ring::monotonic_ns, sockdiag, LoadOptions, Probe},
    render::{
        clock::Clock,
        format::fmt_min_age,
        linger::{render_json, render_table},
        summary::{summary_text, write_summary_json},
    },
};

/// Most sockets tracked at once; beyond it sockets are counted as untracked.
const TABLE_CAPACITY: usize = 1 << 20;

struct Linger<W: Write> {
    args: LingerArgs,
    states: Vec<TcpState>,
    filter: Filter,
    table: SocketTable,
    rates: Rates,
    clock: Clock,
    out: W,
    last_nonempty: bool,
}

impl<W: Write> Linger<W> {
    fn report(&mut self, probe: &mut Probe) -> io::Result<()> {
        // Only the sockets the table tracks: the host may hold many more.
        let mut holders = Holders::with_capacity(self.table.len());
        let table = &self.table;
        probe.scan_fds(|f| {
            if table.contains(f.cookie) {
                holders.add(f);
            }
        })?;
        let now = monotonic_ns();
        let mut reports = build(
            &self.table,
            &holders,
            &self.states,
            now,
            self.args.min_age.as_nanos() as u64,
            &self.filter,
        );
        self.rates.update(&mut reports, now);
        self.last_nonempty = reports.iter().any(|r| r.count() > 0);
        let mut time = String::new();
        drop(holders);
        if self.args.json {
            self.clock.utc_rfc3339(now, &mut time);
            for r in &reports {
                render_json(r, &self.table, &time, &mut self.out)?;
            }
        } else {
            self.clock.local_hms(now, &mut time);
            let mut text = String::new();
            for r in &reports {
                render_table(r, &self.table, self.args.all, &time, &mut text);
                text.push('\n');
            }
            self.out.write_all(text.as_bytes())?;
        }
        self.out.flush()
    }
}

impl<W: Write> Consumer for Linger<W> {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.table.apply(ev);
        Ok(())
    }
    fn interval(&mut self, probe: &mut Probe) -> io::Result<()> {
        self.report(probe)
    }
}

pub async fn run(args: LingerArgs) -> anyhow::Result<bool> {
    let states = watched_states(&args.states);
    let watched = state_mask(&states);
    let filter = args.filter.filter();
    // Ports, family and states filter in the probe; --pid stays here, where the holder
    // (not the probe's owner) decides.
    let mut kfilter = filter.kernel();
    kfilter.n_pids = 0;
    // Only transitions into or out of a watched state matter to the table.
    kfilter.states = watched;
    // No per-socket records nor owners in the probe: holders come from the fd scan
    // at each report, so the probe only forwards the watched transitions.
    let opts = LoadOptions {
        filter: kfilter,
        flags: FLAG_STREAM,
        // 2 of a connection's 10 transitions: 1 MiB holds ~11k events.
        ring_bytes: 1 << 20,
        ..LoadOptions::default()
    };
    let mut session = Session::start(
        &format!(
            "watching {} longer than {}",
            states
                .iter()
                .map(|s| s.name())
                .collect::<Vec<_>>()
                .join(", "),
            fmt_min_age(args.min_age.as_nanos() as u64)
        ),
        &opts,
        false,
    )?;
    let mut linger = Linger {
        states,
        filter,
        table: SocketTable::new(watched, TABLE_CAPACITY),
        rates: Rates::default(),
        clock: Clock::new(),
        out: BufWriter::with_capacity(256 << 10, io::stdout().lock()),
        last_nonempty: false,
        args,
    };
    // Sockets already in a watched state: their age counts from now, as a lower bound.
    sockdiag::for_each_tcp(watched, |s| {
        linger
            .table
            .seed(s.cookie, Lingering::seeded(s, session.attached_ns));
    })?;
    let (duration, interval) = (linger.args.duration, linger.args.interval);
    // With --duration: one final report; otherwise one every --interval.
    let periodic = if duration.is_some() {
        None
    } else {
        Some(interval)
    };
    session.run(&mut linger, duration, periodic).await?;
    if duration.is_some() {
        linger.report(&mut session.probe)?;
    }
    let summary = session.summary(None, linger.table.untracked);
    if linger.args.json {
        write_summary_json(&mut linger.out, &summary)?;
    } else {
        linger.out.flush()?;
        eprintln!("{}", summary_text(&summary));
    }
    Ok(linger.last_nonempty)
}
