//! `cargo xtask bench --soak D`: a long churn with `trace` and `linger` attached, RSS
//! every 10 s, then the exact count and tracefs's own count of the tracepoint.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::tracer::{self, vm_rss_kib, Kind, Tools};

/// Churn for `secs` with `trace` and `linger` attached; RSS every 10 s; at the end,
/// the exact transition count and the loss counters, and tracefs's own count of the
/// tracepoint to tell a transition tcpstate lost from one the kernel never handed to
/// any BPF program.
pub fn run(bin: &Path, tcpkit: &Path, secs: f64) -> Result<()> {
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
    let trace = tracer::start(&tools, &trace_v)?;
    let linger = tracer::start(&tools, &linger_v)?;
    // Inside trace's attachment, so that everything it counts trace could have seen.
    let kernel_count = TracefsCount::start()
        .map_err(|e| eprintln!("soak: warning: no tracefs cross-check ({e:#})"))
        .ok();
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
    println!("{:>8} {:>14} {:>14}", "ELAPSED", "TRACE RSS", "LINGER RSS");
    let start = Instant::now();
    loop {
        if churn_child.try_wait()?.is_some() {
            break;
        }
        println!(
            "{:>7.0}s {:>10} KiB {:>10} KiB",
            start.elapsed().as_secs_f64(),
            vm_rss_kib(trace.child.id()),
            vm_rss_kib(linger.child.id())
        );
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
    let t = tracer::stop(trace, &trace_v, &out)?;
    let l = tracer::stop(linger, &linger_v, Path::new("/dev/null"))?;
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
    Ok(())
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
