//! `tcpstate trace`: every transition, one line each, until Ctrl-C, SIGTERM or
//! `--duration`, then the summary.
//!
//! Event path: the probe writes [`tcpstate_common::Event`]s into the ring buffer and
//! wakes us only when a batch has piled up; we also drain on a short timer. Each
//! drain decodes in place, filters, formats into reused buffers and flushes once.

use std::{
    io::{self, BufWriter, Write},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, Signal, SignalKind},
};

use crate::{
    cli::TraceArgs,
    events::{decode, TcpState},
    filter::Filter,
    loader::{LoadOptions, Probe},
    output::{Clock, Summary, TraceWriter},
};

/// Longest time an event waits in the ring buffer when the host is quiet.
const DRAIN_EVERY: Duration = Duration::from_millis(100);

pub async fn run(args: TraceArgs) -> anyhow::Result<()> {
    if args.states.contains(&TcpState::TimeWait) {
        eprintln!(
            "tcpstate: note: the kernel never reports TIME_WAIT in inet_sock_set_state \
             (tcp_time_wait() hands over to a timewait socket); --state TIME_WAIT matches nothing here"
        );
    }
    let filter = Filter::new(&args.filter, &args.states);
    // Before attaching: a SIGTERM right after "attached" must still end with a summary.
    let signals = Signals {
        int: signal(SignalKind::interrupt())?,
        term: signal(SignalKind::terminate())?,
    };
    let started = Instant::now();
    let (probe, ring) = Probe::load(&LoadOptions::default())?;
    if probe.mounted_tracefs {
        eprintln!("tcpstate: mounted tracefs at {}", crate::tracefs::TRACEFS);
    }
    eprintln!(
        "tcpstate: probe attached in {} ms; tracing TCP state transitions (Ctrl-C to stop)",
        started.elapsed().as_millis()
    );

    let stdout = io::stdout().lock();
    let mut out = TraceWriter::new(
        BufWriter::with_capacity(64 << 10, stdout),
        args.json,
        args.wide,
        Clock::new(),
    );
    let mut summary = Summary::default();
    let result = event_loop(&args, &filter, ring, signals, &mut out, &mut summary).await;
    let c = probe.counters();
    summary.lost_ringbuf = c.ringbuf_full;
    summary.lost_skipped = c.set_state_skipped.saturating_sub(c.set_state_recovered);
    summary.recovered = c.set_state_recovered;
    summary.lost_read = c.read_failed;
    summary.lost = summary.lost_ringbuf + summary.lost_skipped + summary.lost_read;
    summary.untracked = c.table_full;
    summary.accept_unresolved = c.accept_unresolved + c.accept_skipped;
    result?;
    out.summary(&summary)?;
    drop(probe);
    Ok(())
}

struct Signals {
    int: Signal,
    term: Signal,
}

async fn event_loop<W: Write>(
    args: &TraceArgs,
    filter: &Filter,
    ring: RingBuf<MapData>,
    mut signals: Signals,
    out: &mut TraceWriter<W>,
    summary: &mut Summary,
) -> io::Result<()> {
    out.header()?;
    // SAFETY: the ring buffer's fd is owned by `ring`, which the AsyncFd owns and keeps
    // open until it is dropped.
    let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let stop = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut guard = ready?;
                drain(guard.get_inner_mut(), filter, out, summary)?;
                guard.clear_ready();
            }
            _ = tick.tick() => drain(ring.get_mut(), filter, out, summary)?,
            _ = signals.int.recv() => break,
            _ = signals.term.recv() => break,
            _ = &mut stop => break,
        }
    }
    // Whatever the probe wrote before we stopped still counts.
    drain(ring.get_mut(), filter, out, summary)
}

fn drain<W: Write>(
    ring: &mut RingBuf<MapData>,
    filter: &Filter,
    out: &mut TraceWriter<W>,
    summary: &mut Summary,
) -> io::Result<()> {
    while let Some(item) = ring.next() {
        let Some(ev) = decode(&item) else {
            summary.bad_records += 1;
            continue;
        };
        drop(item);
        summary.events += 1;
        if filter.matches(&ev) {
            summary.shown += 1;
            out.transition(&ev)?;
        }
    }
    out.flush()
}
