//! One tracing session, shared by every command: signals, load and attach, the startup
//! seed, the event loop, and the loss counters at the end.
//!
//! Event path: the probe writes [`Event`]s into the ring buffer and wakes us only when
//! a batch has piled up; we also drain on a short timer. Each drain decodes records in
//! place and hands them to the command's [`Consumer`], then lets it flush once.

use std::{
    io,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tcpstate_common::Event;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, Signal, SignalKind},
};

use crate::{
    events::decode,
    loader::{LoadOptions, Probe},
    output::Summary,
    sockdiag,
};

/// Longest time an event waits in the ring buffer when the host is quiet.
const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// Every TCP state bit, for sock_diag.
pub const ALL_STATES: u32 = 0xfff;

/// What a command does with events.
pub trait Consumer {
    fn event(&mut self, ev: &Event) -> io::Result<()>;
    /// After each drained batch.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Every `interval`, if the command has one.
    fn interval(&mut self, _probe: &mut Probe) -> io::Result<()> {
        Ok(())
    }
}

pub struct Session {
    pub probe: Probe,
    ring: Option<RingBuf<MapData>>,
    int: Signal,
    term: Signal,
    pub summary: Summary,
    /// CLOCK_MONOTONIC ns when the probe was attached (the kernel's event clock).
    pub attached_ns: u64,
    /// The probe's count of submitted events, read just before the final drain.
    emitted: u64,
}

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Session {
    /// Installs signal handlers (so a signal right after "attached" still ends with a
    /// summary), loads and attaches the probe, then seeds owners of existing sockets.
    /// `seed_owners`: tell the probe who owns existing sockets (for commands that
    /// print the probe's owner; `linger` scans fds itself at each report).
    pub fn start(what: &str, opts: &LoadOptions, seed_owners: bool) -> anyhow::Result<Session> {
        let int = signal(SignalKind::interrupt())?;
        let term = signal(SignalKind::terminate())?;
        let started = Instant::now();
        let (mut probe, ring) = Probe::load(opts)?;
        let attached_ns = monotonic_ns();
        if probe.mounted_tracefs {
            eprintln!("tcpstate: mounted tracefs at {}", crate::tracefs::TRACEFS);
        }
        eprintln!(
            "tcpstate: probe attached in {} ms; {what} (Ctrl-C to stop)",
            started.elapsed().as_millis()
        );
        if seed_owners {
            seed_existing(&mut probe);
        }
        Ok(Session {
            probe,
            ring: Some(ring),
            int,
            term,
            summary: Summary::default(),
            attached_ns,
            emitted: 0,
        })
    }

    /// Runs until a signal or `duration`, calling `c.interval` every `interval`.
    pub async fn run<C: Consumer>(
        &mut self,
        c: &mut C,
        duration: Option<Duration>,
        interval: Option<Duration>,
    ) -> io::Result<()> {
        let ring = self.ring.take().expect("run once");
        // SAFETY: the ring buffer's fd is owned by `ring`, which the AsyncFd owns and
        // keeps open until it is dropped.
        let mut ring = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
        let mut tick = tokio::time::interval(DRAIN_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut report = tokio::time::interval(interval.unwrap_or(Duration::from_secs(3600)));
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        report.tick().await; // the first tick is immediate
        let deadline = duration.map(|d| tokio::time::Instant::now() + d);
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
                    drain(guard.get_inner_mut(), c, &mut self.summary)?;
                    guard.clear_ready();
                }
                _ = tick.tick() => drain(ring.get_mut(), c, &mut self.summary)?,
                _ = report.tick(), if interval.is_some() => {
                    drain(ring.get_mut(), c, &mut self.summary)?;
                    c.interval(&mut self.probe)?;
                }
                _ = self.int.recv() => break,
                _ = self.term.recv() => break,
                _ = &mut stop => break,
            }
        }
        // Whatever the probe wrote before we stopped still counts. Everything it
        // had submitted when `emitted` was read is in the ring now, so the final
        // drain must receive at least that many.
        self.emitted = self.probe.counters().emitted;
        drain(ring.get_mut(), c, &mut self.summary)
    }

    /// The summary with the probe's loss counters.
    pub fn final_summary(&mut self) -> Summary {
        let c = self.probe.counters();
        let s = &mut self.summary;
        s.lost_ringbuf = c.ringbuf_full;
        // Timer runs the kernel skipped would be TIME_WAIT expiries never seen.
        s.lost_skipped = c.set_state_skipped.saturating_sub(c.set_state_recovered) + c.tw_skipped;
        s.recovered = c.set_state_recovered;
        s.lost_read = c.read_failed;
        // Submitted by the probe but never read here (decoded or not): should be 0.
        s.lost_transit = self.emitted.saturating_sub(s.events + s.bad_records);
        s.hist_spilled = c.hist_spilled;
        s.lost = s.lost_ringbuf + s.lost_skipped + s.lost_read + s.lost_transit;
        s.untracked += c.table_full + c.tw_untracked;
        // Everything received passed the probe's filters; `trace` narrows this further.
        s.shown = s.events;
        s.accept_unresolved = c.accept_unresolved + c.accept_skipped;
        s.probe_calls = c.probe_calls;
        *s
    }
}

fn drain<C: Consumer>(
    ring: &mut RingBuf<MapData>,
    c: &mut C,
    summary: &mut Summary,
) -> io::Result<()> {
    while let Some(item) = ring.next() {
        let Some(ev) = decode(&item) else {
            summary.bad_records += 1;
            continue;
        };
        drop(item);
        summary.events += 1;
        c.event(&ev)?;
    }
    c.flush()
}

/// Sockets that predate the probe: learn their owners from the fds that refer to them.
/// sock_diag first, because dumping a socket gives it a cookie (`sock_gen_cookie`),
/// which the fd scan then reads.
fn seed_existing(probe: &mut Probe) {
    if let Err(e) = sockdiag::for_each_tcp(ALL_STATES, |_| {}) {
        eprintln!(
            "tcpstate: warning: listing existing sockets failed ({e}); their owners stay unknown"
        );
        return;
    }
    if let Err(e) = probe.seed_owners() {
        eprintln!(
            "tcpstate: warning: scanning file descriptors failed ({e}); owners of existing sockets stay unknown"
        );
    }
}
