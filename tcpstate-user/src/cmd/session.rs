//! One tracing session, shared by every command: signals, load and attach, the startup
//! seed, the event loop, and the summary at the end.
//!
//! Event path: the probe writes [`Event`]s into the ring buffer and wakes us only when
//! a batch has piled up; we also drain on a short timer. Each drain decodes records in
//! place and hands them to the command's [`Consumer`], then lets it flush once.

use std::{
    io,
    time::{Duration, Instant},
};

use tcpstate_common::Event;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, Signal, SignalKind},
};

use crate::{
    cmd::stdout,
    model::summary::{Received, Summary},
    probe::{
        ring::{event_of, monotonic_ns, Ring},
        seed::Route,
        LoadOptions, Probe,
    },
};

/// Longest time an event waits in the ring buffer when the host is quiet.
const DRAIN_EVERY: Duration = Duration::from_millis(100);

/// What a command does with events.
pub trait Consumer {
    fn event(&mut self, ev: &Event) -> io::Result<()>;
    /// After each drained batch.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Every `interval`, if the command has one, before [`Self::interval`]: starts
    /// what the probe must settle, and says how long to wait (without blocking the
    /// runtime) before [`Self::interval`].
    fn prepare_interval(&mut self, _probe: &mut Probe) -> io::Result<Option<Duration>> {
        Ok(None)
    }
    /// Every `interval`, if the command has one.
    fn interval(&mut self, _probe: &mut Probe) -> io::Result<()> {
        Ok(())
    }
    /// Checked after each drain: true ends the run as a signal would (`top`'s `q`).
    fn finished(&self) -> bool {
        false
    }
}

pub struct Session {
    pub probe: Probe,
    ring: Option<Ring>,
    int: Signal,
    term: Signal,
    received: Received,
    /// CLOCK_MONOTONIC ns when the probe was attached (the kernel's event clock).
    pub attached_ns: u64,
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
        let ring = Ring::new(ring, opts.ring_bytes)?;
        let attached_ns = monotonic_ns();
        // What this kernel refused, once: the command goes on without it.
        for f in probe.degraded().iter() {
            eprintln!("tcpstate: warning: {} (the kernel refused a program for it; `--log-level debug` shows why)", f.lost());
        }
        // Seeded before saying "attached": from then on every owner is known.
        let seeded = if seed_owners {
            seed_existing(&mut probe)
                .map(|n| format!(" (owners of {n} existing sockets seeded)"))
                .unwrap_or_default()
        } else {
            String::new()
        };
        eprintln!(
            "tcpstate: probe attached in {} ms{seeded}; {what} (Ctrl-C to stop)",
            started.elapsed().as_millis()
        );
        Ok(Session {
            probe,
            ring: Some(ring),
            int,
            term,
            received: Received::default(),
            attached_ns,
        })
    }

    /// Runs until a signal or `duration`, calling `c.interval` every `interval`. Ends
    /// with a `BrokenPipe` error as soon as the reader of stdout has gone.
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
        let gone = stdout::reader_gone();
        tokio::pin!(gone);
        // The probe's aya-log records, if it has a log map (read on wake-up).
        let mut logs = match self.probe.log_fd() {
            // SAFETY: the fd is the log map's, owned by the probe's logger, which
            // outlives this AsyncFd (dropped when `run` returns).
            Some(fd) => Some(
                unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
                    .map_err(|e| e.into_parts().1)?,
            ),
            None => None,
        };
        let r = &mut self.received;
        loop {
            tokio::select! {
                ready = ring.readable_mut() => {
                    let mut guard = ready?;
                    drain(guard.get_inner_mut(), c, r)?;
                    guard.clear_ready();
                }
                _ = tick.tick() => drain(ring.get_mut(), c, r)?,
                _ = report.tick(), if interval.is_some() => {
                    drain(ring.get_mut(), c, r)?;
                    if let Some(wait) = c.prepare_interval(&mut self.probe)? {
                        tokio::time::sleep(wait).await;
                    }
                    c.interval(&mut self.probe)?;
                }
                ready = async { logs.as_mut().expect("guarded").readable_mut().await },
                    if logs.is_some() =>
                {
                    let mut guard = ready?;
                    self.probe.flush_logs();
                    guard.clear_ready();
                }
                _ = &mut gone => return Err(io::ErrorKind::BrokenPipe.into()),
                _ = self.int.recv() => break,
                _ = self.term.recv() => break,
                _ = &mut stop => break,
            }
            if c.finished() {
                break;
            }
        }
        // Whatever the probe wrote before we stopped still counts. Everything it
        // had submitted when `emitted` was read is in the ring now, so the final
        // drain must receive at least that many.
        r.emitted = self.probe.counters().emitted;
        self.probe.flush_logs();
        drain(ring.get_mut(), c, r)
    }

    /// The summary: the probe's counters and ours. `shown`: what the command showed,
    /// if it filters further than the probe; `untracked`: sockets its own table
    /// could not hold.
    pub fn summary(&self, shown: Option<u64>, untracked: u64) -> Summary {
        Summary::from_counters(
            &self.probe.counters(),
            &Received {
                shown,
                untracked,
                ..self.received
            },
        )
    }
}

fn drain<C: Consumer>(ring: &mut Ring, c: &mut C, r: &mut Received) -> io::Result<()> {
    ring.drain(|rec| match event_of(rec) {
        Some(ev) => {
            r.events += 1;
            c.event(ev)
        }
        None => {
            r.bad_records += 1;
            Ok(())
        }
    })?;
    c.flush()
}

/// Sockets that predate the probe: the kernel gives each one some process holds an
/// fd for a record naming it (iterators; no sock_diag dump, no copy to userspace).
fn seed_existing(probe: &mut Probe) -> Option<usize> {
    if probe.seed_route() == Route::None {
        return None;
    }
    match probe.seed_owners() {
        Ok(s) => {
            for (inode, why) in &s.failed {
                eprintln!(
                    "tcpstate: warning: network namespace {inode} could not be entered ({why}); owners of its sockets older than tcpstate: unknown"
                );
            }
            Some(s.sockets)
        }
        Err(e) => {
            eprintln!(
                "tcpstate: warning: scanning file descriptors failed ({e}); owners of sockets older than tcpstate: unknown"
            );
            None
        }
    }
}
