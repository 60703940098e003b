//! Workloads that make no TCP transitions, for the bench's taxes: what a tracer costs
//! processes it does not trace.

use std::{
    net::UdpSocket,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

/// getppid() for `secs`: (calls, seconds). The cheapest system call there is, so a
/// syscall tracepoint's slow path (`syscall_trace_enter()` on every call of every
/// task) shows as a large fraction of it.
pub fn syscalls(secs: f64) -> (u64, f64) {
    let start = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    let mut n = 0u64;
    while start.elapsed() < limit {
        for _ in 0..4096 {
            // SAFETY: getppid has no preconditions.
            unsafe { libc::getppid() };
        }
        n += 4096;
    }
    (n, start.elapsed().as_secs_f64())
}

/// Timer-wheel timers, as many as `threads` threads can make expire in `secs`:
/// (expired, seconds). Each thread waits on a UDP socket that never receives, with
/// SO_RCVTIMEO of 1 us: `sock_set_timeout()` rounds that up to one jiffy, and the
/// wait (`schedule_timeout()`) arms a `timer_list` timer that fires,
/// `call_timer_fn()` tracing `timer:timer_expire_entry`. (nanosleep, timerfd, poll
/// and epoll use hrtimers, which that tracepoint never sees.)
pub fn timers(secs: f64, threads: u32) -> Result<(u64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| -> Result<_> {
            let sock = UdpSocket::bind("127.0.0.1:0").context("binding a UDP socket")?;
            sock.set_read_timeout(Some(Duration::from_micros(1)))?;
            let stop = stop.clone();
            Ok(std::thread::spawn(move || {
                let mut buf = [0u8; 1];
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if sock.recv(&mut buf).is_err() {
                        n += 1; // timed out: one timer expired
                    }
                }
                n
            }))
        })
        .collect::<Result<_>>()?;
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let n = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
    Ok((n, start.elapsed().as_secs_f64()))
}
