//! `tcpstate linger`: sockets that stay in a state (CLOSE_WAIT by default) longer than
//! `--min-age`, grouped by the process that holds them, with fd, age and growth.
//!
//! Ages come from observed transitions (the model's `SocketTable`); sockets already
//! in the state at startup have a lower bound, from the kernel's last-ACK time
//! (`rcv_tstamp`) or the time since start, whichever is larger. Holders, and what
//! each program did wrong, come from a fresh scan of every fd table (the
//! `task_file` iterator, which also lists listeners' unaccepted connections) at
//! each report, so fork-inherited and passed fds count, and a reused PID inherits
//! nothing. Orphaned sockets (no fd, no accept queue) are seeded from sock_diag.

use std::io::{self, BufWriter, Write};

use tcpstate_common::{state, Event, FLAG_STREAM, ITER_ACCEPT_QUEUE};

use crate::{
    cli::LingerArgs,
    cmd::{
        ident::Resolver,
        session::{Consumer, Session},
        walk,
    },
    model::{
        events::TcpState,
        filter::Filter,
        linger::{state_mask, watched_states, Clocks, Rates},
        sockets::SocketTable,
    },
    probe::{procfs, ring::monotonic_ns, LoadOptions, Probe},
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
    attached_ns: u64,
    hz: u32,
    resolver: Resolver,
    /// The table's CONTAINER column: a container filter, or a container at startup.
    container_column: bool,
}

impl<W: Write> Linger<W> {
    fn report(&mut self, probe: &mut Probe) -> io::Result<()> {
        // The probe keeps only sockets in the watched states (and listeners' queues).
        let now = monotonic_ns();
        let clk = Clocks {
            now_ns: now,
            attached_ns: self.attached_ns,
            hz: self.hz,
        };
        let mut reports = walk::reports(
            probe,
            &self.filter,
            &mut self.resolver,
            &self.table,
            &self.states,
            &clk,
            self.args.min_age.as_nanos() as u64,
        )?;
        self.rates.update(&mut reports, now);
        self.last_nonempty = reports.iter().any(|r| r.count() > 0);
        let mut time = String::new();
        if self.args.json {
            self.clock.utc_rfc3339(now, &mut time);
            for r in &reports {
                render_json(r, &time, &mut self.out)?;
            }
        } else {
            self.clock.local_hms(now, &mut time);
            let mut text = String::new();
            for r in &reports {
                render_table(r, self.args.all, self.container_column, &time, &mut text);
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
    // CLOSE sockets are no transitions' target to track (a socket is forgotten at
    // CLOSE): only the fd walk finds the dead ones still held.
    let tracked = watched & !(1 << state::CLOSE);
    let filter = args.filter.filter();
    // Ports, family and states filter in the probe; --pid stays here, where the holder
    // (not the probe's owner) decides.
    let mut kfilter = filter.kernel();
    kfilter.n_pids = 0;
    // Only transitions into or out of a watched state matter to the table.
    kfilter.states = tracked;
    // No per-socket records nor owners in the probe: holders come from the fd scan
    // at each report, so the probe only forwards the watched transitions.
    let opts = LoadOptions {
        filter: kfilter,
        // Watching CLOSE alone: no transitions at all (a mask of 0 would pass all).
        flags: if tracked == 0 { 0 } else { FLAG_STREAM },
        iter_states: watched,
        iter_flags: ITER_ACCEPT_QUEUE,
        // 2 of a connection's 10 transitions: 1 MiB holds ~11k events.
        ring_bytes: 1 << 20,
        fd_walk: true,
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
        table: SocketTable::new(tracked, TABLE_CAPACITY),
        rates: Rates::default(),
        clock: Clock::new(),
        out: BufWriter::with_capacity(256 << 10, io::stdout().lock()),
        last_nonempty: false,
        attached_ns: session.attached_ns,
        hz: procfs::hz().unwrap_or_else(|| {
            log::warn!("cannot tell the kernel's HZ; assuming 250");
            250
        }),
        container_column: false,
        resolver: Resolver::new(),
        args,
    };
    linger.container_column = linger.filter.by_cgroup() || linger.resolver.any_container();
    // Sockets already in a watched state that no fd (nor accept queue) holds: their
    // age counts from now, as a lower bound. Held ones need no entry: each report's
    // fd walk brings their lower bound (`rcv_tstamp`) itself, and 500k entries for
    // them would be most of tcpstate's memory.
    if tracked != 0 {
        walk::seed_unheld(
            &mut session.probe,
            &mut linger.table,
            &linger.filter,
            tracked,
            session.attached_ns,
        )?;
    }
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
