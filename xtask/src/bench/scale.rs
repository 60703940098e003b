//! `--scale N`: startup with N sockets already in CLOSE_WAIT (held by `tcpkit
//! close-wait`, ~10,000 per process): `trace`'s time to attached, then its CPU and
//! peak RSS over its first 2 s (seeding owners of existing sockets runs then), and
//! `linger --duration 1 --min-age 0`'s wall time, peak RSS and count, `serve`'s
//! scrape time, and `top`'s CPU share on a screen (a tmux pane) left open.

use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::tracer::{cpu_ns, proc_status_kib};

#[derive(Clone, Debug, Default)]
pub struct Scale {
    pub sockets: u64,
    pub setup_s: f64,
    pub trace_attach_ms: f64,
    pub trace_peak_rss_kib: u64,
    pub trace_cpu_ms_2s: f64,
    /// From start until trace's CPU use fell below half a core for good (its
    /// seeding), capped at 10 s; at least the time to attached (tcpstate seeds
    /// existing sockets' owners before it says "attached").
    pub trace_busy_ms: f64,
    pub linger_wall_ms: f64,
    pub linger_peak_rss_kib: u64,
    pub linger_count: Option<u64>,
    /// `serve`: time to attached, then a scrape's wall time (median and max of 5).
    pub serve_attach_ms: f64,
    pub serve_scrape_ms: f64,
    pub serve_scrape_max_ms: f64,
    pub serve_series: usize,
    pub serve_peak_rss_kib: u64,
    /// `top` in a 160x40 tmux pane: until its first screen shows the sockets, then
    /// its CPU as a share of one core over [`TOP_IDLE_S`] with nothing moving (two
    /// of its once-a-minute walks), then over [`TOP_BUSY_S`] with a churn of
    /// [`TOP_BUSY_RATE`] connections/s elsewhere (walks spaced by their cost), peak
    /// RSS, and the CLOSE_WAIT total its header showed.
    pub top_first_screen_ms: f64,
    pub top_cpu_pct: f64,
    pub top_busy_cpu_pct: f64,
    pub top_peak_rss_kib: u64,
    pub top_close_wait: Option<u64>,
}

pub const TOP_IDLE_S: u64 = 121;
pub const TOP_BUSY_S: u64 = 120;
pub const TOP_BUSY_RATE: u32 = 100;

/// A tcpstate run, killed if an error leaves it running.
struct Run(std::process::Child);

impl Drop for Run {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The holder of the sockets; stopping it (stdin closed, then wait) resets them all.
struct Holder(std::process::Child);

impl Drop for Holder {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

pub fn run(tcpstate: &Path, tcpkit: &Path, n: u64) -> Result<Scale> {
    let t0 = Instant::now();
    eprintln!("xtask bench: scale: making {n} CLOSE_WAIT sockets");
    let mut holder = Holder(
        Command::new(tcpkit)
            .args(["close-wait", "--count", &n.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let mut line = String::new();
    BufReader::new(holder.0.stdout.take().context("stdout")?).read_line(&mut line)?;
    if !line.starts_with("ready") {
        bail!("tcpkit close-wait failed (printed {line:?})");
    }
    let mut s = Scale {
        sockets: n,
        setup_s: t0.elapsed().as_secs_f64(),
        ..Default::default()
    };

    // trace: to attached, then 2 s (longer while it is still busy, up to 10 s).
    let started = Instant::now();
    let child = Command::new(tcpstate)
        .arg("trace")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut child = Run(child);
    let pid = child.0.id();
    let mut err = BufReader::new(child.0.stderr.take().context("stderr")?);
    loop {
        line.clear();
        if err.read_line(&mut line)? == 0 {
            bail!("trace exited before attaching");
        }
        if line.contains("probe attached") {
            break;
        }
    }
    s.trace_attach_ms = started.elapsed().as_secs_f64() * 1e3;
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = err.read_to_string(&mut sink);
    });
    let mut samples: Vec<(f64, u64)> = Vec::new(); // (ms since start, cpu ns)
    loop {
        let t = started.elapsed().as_secs_f64() * 1e3;
        samples.push((t, cpu_ns(pid)));
        if t >= 2000.0 && s.trace_peak_rss_kib == 0 {
            s.trace_peak_rss_kib = proc_status_kib(pid, "VmHWM:");
            s.trace_cpu_ms_2s = cpu_ns(pid) as f64 / 1e6;
        }
        if t >= 10_000.0 || (t >= 2000.0 && busy_until(&samples) < t - 300.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    s.trace_busy_ms = busy_until(&samples).max(s.trace_attach_ms);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    child.0.wait()?;

    // linger --duration 1: wall time, peak RSS (VmHWM polled until it exits).
    let started = Instant::now();
    let child = Command::new(tcpstate)
        .args(["linger", "--duration", "1s", "--min-age", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut child = Run(child);
    let pid = child.0.id();
    let mut out = child.0.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        text
    });
    while child.0.try_wait()?.is_none() {
        s.linger_peak_rss_kib = s.linger_peak_rss_kib.max(proc_status_kib(pid, "VmHWM:"));
        std::thread::sleep(Duration::from_millis(10));
    }
    s.linger_wall_ms = started.elapsed().as_secs_f64() * 1e3;
    let text = reader.join().unwrap_or_default();
    // "CLOSE_WAIT longer than 0s: N sockets in P processes at ...", the last report.
    s.linger_count = text
        .lines()
        .rfind(|l| l.starts_with("CLOSE_WAIT longer than"))
        .and_then(|l| {
            l.split(": ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .replace(',', "")
                .parse()
                .ok()
        });
    if s.linger_count.is_none() {
        eprintln!(
            "xtask bench: scale: linger printed no report: {:?}",
            &text[..text.len().min(300)]
        );
    }
    serve_scrapes(tcpstate, &mut s)?;
    top_cpu(tcpstate, tcpkit, &mut s)?;
    drop(holder);
    Ok(s)
}

/// `serve` with the sockets held: to attached, then 5 scrapes one second apart (the
/// first after its first fd walk is done), timed as Prometheus would see them.
fn serve_scrapes(tcpstate: &Path, s: &mut Scale) -> Result<()> {
    let addr = format!("127.0.0.1:{}", super::free_port()?);
    let started = Instant::now();
    let child = Command::new(tcpstate)
        .args(["serve", "--listen", &addr])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut child = Run(child);
    let pid = child.0.id();
    let mut err = BufReader::new(child.0.stderr.take().context("stderr")?);
    let mut line = String::new();
    loop {
        line.clear();
        if err.read_line(&mut line)? == 0 {
            bail!("serve exited before attaching");
        }
        if line.contains("probe attached") {
            break;
        }
    }
    s.serve_attach_ms = started.elapsed().as_secs_f64() * 1e3;
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = err.read_to_string(&mut sink);
    });
    // The first scrape may wait for the first walk; it is not one of the five.
    super::scrape::scrape(&addr)?;
    let mut times = Vec::new();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_secs(1));
        let (took, body) = super::scrape::scrape(&addr)?;
        times.push(took.as_secs_f64() * 1e3);
        s.serve_series = super::scrape::series(&body);
    }
    s.serve_peak_rss_kib = proc_status_kib(pid, "VmHWM:");
    s.serve_scrape_max_ms = times.iter().copied().fold(0.0, f64::max);
    s.serve_scrape_ms = super::median(times);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    child.0.wait()?;
    Ok(())
}

/// A tmux server of the bench's own, killed on drop.
struct Tmux(String);

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux")
            .args(["-L", &self.0, "-f", "/dev/null"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running tmux")?;
        if !out.status.success() {
            bail!("tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// `top` on a real terminal with the sockets held and nothing moving: what it costs
/// to leave the screen open.
fn top_cpu(tcpstate: &Path, tcpkit: &Path, s: &mut Scale) -> Result<()> {
    let tmux = Tmux(format!("tcpstate-bench-{}", std::process::id()));
    let started = Instant::now();
    tmux.cmd(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "40",
        &format!("exec {} top", tcpstate.display()),
    ])?;
    let pid: u32 = tmux
        .cmd(&["display", "-p", "-t", "top", "#{pane_pid}"])?
        .trim()
        .parse()
        .context("top's pid")?;
    // The header's "CLOSE_WAIT N" once the first walk has counted them.
    let close_wait = |screen: &str| -> Option<u64> {
        let l = screen.lines().find(|l| l.starts_with("ESTABLISHED "))?;
        let w: Vec<&str> = l.split_whitespace().collect();
        let i = w.iter().position(|x| *x == "CLOSE_WAIT")?;
        w.get(i + 1)?.replace(',', "").parse().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let screen = tmux.cmd(&["capture-pane", "-p", "-t", "top"])?;
        if let Some(n) = close_wait(&screen).filter(|&n| n >= s.sockets) {
            s.top_close_wait = Some(n);
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "top never showed the {} sockets; screen:\n{screen}",
                s.sockets
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    s.top_first_screen_ms = started.elapsed().as_secs_f64() * 1e3;
    let share = |t0: Instant, c0: u64| {
        cpu_ns(pid).saturating_sub(c0) as f64 / t0.elapsed().as_nanos() as f64 * 100.0
    };
    let (t0, c0) = (Instant::now(), cpu_ns(pid));
    std::thread::sleep(Duration::from_secs(TOP_IDLE_S));
    s.top_cpu_pct = share(t0, c0);
    eprintln!(
        "xtask bench: scale: top idle {:.2}% of a core; now with {TOP_BUSY_RATE} connections/s",
        s.top_cpu_pct
    );
    let (t0, c0) = (Instant::now(), cpu_ns(pid));
    let churn = Command::new(tcpkit)
        .args(["churn", "--addr", "127.0.0.1:0", "--secs"])
        .arg(TOP_BUSY_S.to_string())
        .arg("--rate")
        .arg(TOP_BUSY_RATE.to_string())
        .stdout(Stdio::null())
        .status()?;
    if !churn.success() {
        bail!("tcpkit churn failed: {churn}");
    }
    s.top_busy_cpu_pct = share(t0, c0);
    s.top_peak_rss_kib = proc_status_kib(pid, "VmHWM:");
    tmux.cmd(&["send-keys", "-t", "top", "q"])?;
    Ok(())
}

/// The time (ms) of the last 100 ms window in which the process used more than half
/// a core.
fn busy_until(samples: &[(f64, u64)]) -> f64 {
    let mut until = 0.0;
    for (i, &(t, c)) in samples.iter().enumerate() {
        if let Some(&(t0, c0)) = samples[..i].iter().rev().find(|(t0, _)| t - t0 >= 100.0) {
            if (c - c0) as f64 / 1e6 > (t - t0) * 0.5 {
                until = t;
            }
        }
    }
    until
}

#[cfg(test)]
mod tests {
    use super::busy_until;

    #[test]
    fn busy_until_is_the_last_window_over_half_a_core() {
        // 20 ms samples: a full core for 500 ms, then idle.
        let samples: Vec<(f64, u64)> = (0..60)
            .map(|i| {
                let t = i as f64 * 20.0;
                (t, (t.min(500.0) * 1e6) as u64)
            })
            .collect();
        let b = busy_until(&samples);
        assert!((500.0..=560.0).contains(&b), "{b}");
        assert_eq!(busy_until(&[(0.0, 0), (200.0, 0)]), 0.0);
    }
}
