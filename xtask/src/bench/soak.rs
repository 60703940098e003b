//! `cargo xtask bench --soak D [--serve]`: a long churn with `trace` and `linger`
//! (and `serve`, scraped every second) attached, RSS every 10 s, then the exact
//! count, tracefs's own count of the tracepoint, whether each RSS stayed flat and,
//! with `serve`, whether the series went back to what they were before the churn.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{
    scrape::{gauge_series, scrape},
    tracer::{self, vm_rss_kib, Kind, Tools, PORT},
};

/// Churn for `secs` with `trace` and `linger` attached; RSS every 10 s; at the end,
/// the exact transition count and the loss counters, and tracefs's own count of the
/// tracepoint to tell a transition tcpstate lost from one the kernel never handed to
/// any BPF program.
pub fn run(bin: &Path, tcpkit: &Path, secs: f64, with_serve: bool) -> Result<()> {
    let port = super::free_port()?;
    let p = port.to_string();
    let out = PathBuf::from("/dev/shm/tcpstate-soak.jsonl");
    let trace_v = Kind::Tcpstate {
        bin: None,
        args: ["trace", "--json", "--port", &p].map(String::from).to_vec(),
        stdout_file: true,
        env: Vec::new(),
    };
    let linger_v = Kind::Tcpstate {
        bin: None,
        args: ["linger", "--interval", "10s", "--port", &p]
            .map(String::from)
            .to_vec(),
        stdout_file: false,
        env: Vec::new(),
    };
    let tools = Tools {
        tcpstate: bin,
        tcpkit,
        calib: None,
        out_file: out.clone(),
    };
    let serve_v = Kind::Tcpstate {
        bin: None,
        args: ["serve", "--listen", &format!("127.0.0.1:{PORT}")]
            .map(String::from)
            .to_vec(),
        stdout_file: false,
        env: Vec::new(),
    };
    let trace = tracer::start(&tools, &trace_v)?;
    // Right after trace's attachment, so that everything it counts trace could have
    // seen, and trace's probe saw everything it counts (serve's scrapes included).
    let kernel_count = TracefsCount::start()
        .map_err(|e| eprintln!("soak: warning: no tracefs cross-check ({e:#})"))
        .ok();
    let linger = tracer::start(&tools, &linger_v)?;
    let serve = if with_serve {
        Some(tracer::start(&tools, &serve_v)?)
    } else {
        None
    };
    // Series before the churn (the first scrape may wait for serve's first walk).
    let serve_addr = serve.as_ref().and_then(|s| s.listen.clone());
    let series_before = match &serve_addr {
        Some(a) => Some(gauge_series(&scrape(a)?.1)),
        None => None,
    };
    let mut churn_child = Command::new(tcpkit)
        .args([
            "churn",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--secs",
            &secs.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()?;
    println!(
        "{:>8} {:>14} {:>14} {:>14}",
        "ELAPSED", "TRACE RSS", "LINGER RSS", "SERVE RSS"
    );
    let start = Instant::now();
    // (elapsed s, trace, linger, serve RSS in KiB)
    let mut rss: Vec<(f64, [u64; 3])> = Vec::new();
    loop {
        if churn_child.try_wait()?.is_some() {
            break;
        }
        let now = [
            vm_rss_kib(trace.child.id()),
            vm_rss_kib(linger.child.id()),
            serve.as_ref().map_or(0, |s| vm_rss_kib(s.child.id())),
        ];
        let t = start.elapsed().as_secs_f64();
        println!(
            "{t:>7.0}s {:>10} KiB {:>10} KiB {:>10} KiB",
            now[0], now[1], now[2]
        );
        rss.push((t, now));
        std::thread::sleep(Duration::from_secs(10).min(Duration::from_secs_f64(secs.max(1.0))));
    }
    let mut text = String::new();
    churn_child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)?;
    let conns: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .context("churn printed no count")?;
    std::thread::sleep(Duration::from_millis(500));
    let fired = kernel_count.map(TracefsCount::stop).transpose()?;
    // Right after: serve's scrapes go on, and both counts must cover the same span.
    let t = tracer::stop(trace, &trace_v, &out)?;
    let mut flat = true;
    // RSS after the first tenth (warm-up: tables and buffers reach their size) against
    // the last sample.
    if let (Some(first), Some(last)) = (rss.iter().find(|(t, _)| *t >= secs / 10.0), rss.last()) {
        for (i, name) in ["trace", "linger", "serve"].iter().enumerate() {
            let (a, b) = (first.1[i] as f64, last.1[i] as f64);
            if a == 0.0 {
                continue;
            }
            let pct = (b / a - 1.0) * 100.0;
            let ok = pct.abs() <= 5.0;
            flat &= ok;
            println!(
                "soak: {name} RSS {a:.0} KiB at {:.0} s, {b:.0} KiB at {:.0} s: {pct:+.1}% ({})",
                first.0,
                last.0,
                if ok { "flat, within 5%" } else { "NOT flat" }
            );
        }
    }
    // With serve: the churn's series are gone once its sockets are (TIME_WAIT destroyed).
    let mut left_behind = 0i64;
    let mut serve_cost = None;
    if let (Some(s), Some(addr), Some(before)) = (serve, &serve_addr, series_before) {
        // The scraper's own connections to serve leave TIME_WAIT sockets too.
        let serve_port: u16 = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        super::kill_timewaits(&[port, serve_port]);
        // serve walks every --interval (5 s by default): after its next walk.
        std::thread::sleep(Duration::from_secs(7));
        let body = scrape(addr)?.1;
        let after = gauge_series(&body);
        // New series are left behind unless `ss` lists their sockets now: the
        // background scrapes go on, and each leaves a real TIME_WAIT socket on
        // serve's side (it closes first), a destination of its own.
        let left: Vec<&String> = after
            .difference(&before)
            .filter(|s| !time_wait_now(s, &body))
            .collect();
        left_behind = left.len() as i64;
        println!(
            "soak: serve: {} gauge series before the churn, {} after it \
             ({left_behind} new ones left behind{}{})",
            before.len(),
            after.len(),
            if left.is_empty() { "" } else { ": " },
            left.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        serve_cost = Some(tracer::stop(s, &serve_v, Path::new("/dev/null"))?);
    }
    let l = tracer::stop(linger, &linger_v, Path::new("/dev/null"))?;
    if let Some(c) = &serve_cost {
        let sc = c.scrapes.clone().unwrap_or_default();
        println!(
            "soak: serve scraped {} times, {} failed, slowest {:.1} ms; peak RSS {} KiB",
            sc.count, sc.failed, sc.max_ms, c.peak_rss_kib
        );
        if sc.failed > 0 {
            bail!("soak: serve scrapes failed");
        }
    }
    let _ = std::fs::remove_file(&out);
    let expected = conns * 10 + 2;
    println!(
        "soak: {conns} connections; trace saw {} transitions (expected {expected}), lost {}; \
         peak RSS trace {} KiB, linger {} KiB; linger lost {}",
        t.events, t.lost, t.peak_rss_kib, l.peak_rss_kib, l.lost
    );
    // Transitions the kernel fired the tracepoint for (tracefs) but never ran trace's
    // probe for, not even as a counted recursion miss: no BPF program can see those.
    // Counted over every TCP port, so other traffic on the host can only add to it:
    // the soak's host should run nothing else.
    let unhanded = fired.map(|f| f.saturating_sub(t.probe_calls));
    if let Some(f) = fired {
        println!(
            "soak: the tracepoint fired {f} times for TCP (tracefs); trace's probe was \
             called {} times{}",
            t.probe_calls,
            match unhanded {
                Some(0) | None => String::new(),
                Some(n) => format!(": the kernel ran no BPF program for {n} of them"),
            }
        );
    }
    let short = expected.saturating_sub(t.events);
    if t.lost != 0 || l.lost != 0 || t.events > expected || short > unhanded.unwrap_or(0) {
        bail!("soak: transitions were lost or miscounted");
    }
    if short > 0 {
        println!(
            "soak: {short} transitions short, all of them ones the kernel never handed to \
             the probe (README, Overhead)"
        );
    }
    if left_behind > 0 {
        bail!("soak: serve left {left_behind} series behind");
    }
    if !flat {
        bail!("soak: RSS grew or shrank by more than 5%");
    }
    Ok(())
}

/// Whether `series`, a `tcpstate_time_wait_sockets` one, has the value `ss` gives
/// for its destination now (in this namespace, where the soak runs).
fn time_wait_now(series: &str, body: &str) -> bool {
    let Some(labels) = series.strip_prefix("tcpstate_time_wait_sockets{") else {
        return false;
    };
    let label = |k: &str| {
        labels
            .split(&format!("{k}=\""))
            .nth(1)?
            .split('"')
            .next()
            .map(str::to_string)
    };
    let (Some(raddr), Some(rport)) = (label("raddr"), label("rport")) else {
        return false;
    };
    let Some(value) = body
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
    else {
        return false;
    };
    let dst = if raddr.contains(':') {
        format!("[{raddr}]:{rport}")
    } else {
        format!("{raddr}:{rport}")
    };
    let listed = Command::new("ss")
        .args(["-Htan", "state", "time-wait", "dst", &dst])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .unwrap_or(0);
    listed > 0 && listed as f64 == value
}

/// tracefs's own count of `sock/inet_sock_set_state` for TCP, in a tracefs instance of
/// its own. Its small per-CPU buffers overwrite old records; per CPU, `entries +
/// overrun` is every record written (`ring_buffer_entries_cpu`).
struct TracefsCount {
    dir: PathBuf,
}

impl TracefsCount {
    fn start() -> Result<Self> {
        let root = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.join("instances").is_dir())
            .context("tracefs is not mounted")?;
        let dir = root.join("instances/tcpstate-soak");
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let count = TracefsCount { dir };
        std::fs::write(count.dir.join("buffer_size_kb"), "64")?;
        std::fs::write(count.event().join("filter"), "protocol == 6")?;
        std::fs::write(count.event().join("enable"), "1")?;
        Ok(count)
    }

    fn event(&self) -> PathBuf {
        self.dir.join("events/sock/inet_sock_set_state")
    }

    fn stop(self) -> Result<u64> {
        std::fs::write(self.event().join("enable"), "0")?;
        let mut total = 0;
        for cpu in std::fs::read_dir(self.dir.join("per_cpu"))? {
            let stats = std::fs::read_to_string(cpu?.path().join("stats"))?;
            for line in stats.lines() {
                let field = |name: &str| {
                    line.strip_prefix(name)
                        .and_then(|v| v.trim().parse::<u64>().ok())
                };
                total += field("entries:").or_else(|| field("overrun:")).unwrap_or(0);
                if field("commit overrun:").is_some_and(|n| n > 0)
                    || field("dropped events:").is_some_and(|n| n > 0)
                {
                    bail!("tracefs dropped records: {line}");
                }
            }
        }
        Ok(total)
    }
}

impl Drop for TracefsCount {
    fn drop(&mut self) {
        let _ = std::fs::write(self.event().join("enable"), "0");
        let _ = std::fs::remove_dir(&self.dir);
    }
}
