//! `cargo xtask bench [--rounds N] [--secs S] [--json] [--soak D]`: what tcpstate costs
//! the traced workload, side by side with no tracer and with an in-kernel bpftrace
//! count, in interleaved rounds (baseline, then every tracer in a rotated order), each
//! run starting without the previous runs' TIME_WAIT sockets; a tracer's ratio is to
//! the baseline interpolated between the baselines around it, so that machine drift
//! hits every variant alike. Medians are reported.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

const BPFTRACE_COUNT: &str =
    "tracepoint:sock:inet_sock_set_state /args->protocol == 6/ { @transitions = count(); }";

struct Variant {
    name: &'static str,
    /// tcpstate arguments; `None` = baseline; `Some([])` with `bpftrace` = reference.
    args: Option<Vec<String>>,
    bpftrace: bool,
    /// Where stdout goes: a file on tmpfs, or /dev/null.
    stdout_file: bool,
}

#[derive(Default, Clone, Debug)]
struct Sample {
    /// TCP transitions the workload made while the tracer ran (10 per connection).
    transitions: u64,
    conns_per_s: f64,
    ratio: f64,
    events: u64,
    events_per_s: f64,
    lost: u64,
    /// `trace`'s count of transitions the kernel handed to its probe (soak only).
    probe_calls: u64,
    cpu_ms: f64,
    peak_rss_kib: u64,
    rss_kib: u64,
    startup_ms: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs the churn generator for `secs`: (connections, connections per second).
fn churn(tcpkit: &Path, ports: &[u16], secs: f64) -> Result<(u64, f64)> {
    let mut cmd = Command::new(tcpkit);
    cmd.arg("churn").arg("--addr");
    for (i, p) in ports.iter().enumerate() {
        cmd.arg(format!("127.0.0.{}:{p}", i + 1));
    }
    let out = cmd.args(["--secs", &secs.to_string()]).output()?;
    if !out.status.success() {
        bail!("churn failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let after = |word: &str| {
        text.split_whitespace()
            .skip_while(|w| *w != word)
            .nth(1)
            .and_then(|r| r.parse::<f64>().ok())
    };
    let conns = after("conns").context("churn printed no count")?;
    let rate = after("rate").context("churn printed no rate")?;
    Ok((conns as u64, rate))
}

struct Running {
    child: Child,
    started: Instant,
    startup_ms: f64,
    /// CPU time (ns, /proc/PID/schedstat) once attached: startup is not part of
    /// the per-transition cost.
    cpu_at_attach_ns: u64,
    stderr: BufReader<std::process::ChildStderr>,
}

fn start_tracer(bin: &Path, v: &Variant, out_file: &Path) -> Result<Running> {
    let started = Instant::now();
    let mut cmd = if v.bpftrace {
        let mut c = Command::new("bpftrace");
        c.args(["-e", BPFTRACE_COUNT]);
        c
    } else {
        let mut c = Command::new(bin);
        c.args(v.args.as_ref().unwrap());
        c
    };
    let stdout = if v.stdout_file {
        Stdio::from(std::fs::File::create(out_file)?)
    } else if v.bpftrace {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", v.name))?;
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    if v.bpftrace {
        // bpftrace says "Attaching 1 probe..." on stdout once attached.
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line)?;
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = out.read_to_string(&mut sink);
        });
    } else {
        let mut line = String::new();
        loop {
            line.clear();
            if stderr.read_line(&mut line)? == 0 {
                bail!("{} exited before attaching", v.name);
            }
            if line.contains("probe attached") {
                break;
            }
        }
    }
    Ok(Running {
        startup_ms: started.elapsed().as_secs_f64() * 1e3,
        cpu_at_attach_ns: cpu_ns(child.id()),
        child,
        started,
        stderr,
    })
}

/// Reads CPU time and memory (VmHWM: wait4's ru_maxrss would also count the pre-exec
/// fork of xtask), then SIGINT and the summary.
fn stop_tracer(mut r: Running, v: &Variant, out_file: &Path) -> Result<Sample> {
    let alive = r.started.elapsed().as_secs_f64();
    let hwm = proc_status_kib(r.child.id(), "VmHWM:");
    let attached_cpu_ms = cpu_ns(r.child.id()).saturating_sub(r.cpu_at_attach_ns) as f64 / 1e6;
    let rss = proc_status_kib(r.child.id(), "VmRSS:");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(r.child.id() as i32, libc::SIGINT) };
    r.child.wait()?;
    let mut err = String::new();
    let _ = r.stderr.read_to_string(&mut err);
    let mut probe_calls = 0;
    let (events, lost) = if v.bpftrace {
        (0, 0)
    } else if v.stdout_file {
        let text = std::fs::read_to_string(out_file).unwrap_or_default();
        let last = text.lines().last().unwrap_or_default();
        let j: serde_json::Value = serde_json::from_str(last).unwrap_or_default();
        probe_calls = j["probe_calls"].as_u64().unwrap_or(0);
        (
            j["events"].as_u64().unwrap_or(0),
            j["lost"].as_u64().unwrap_or(0),
        )
    } else {
        let num_before = |word: &str| -> u64 {
            err.lines()
                .filter(|l| l.starts_with("tcpstate: ") && l.contains(" events,"))
                .filter_map(|l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    w.iter()
                        .position(|x| x.trim_end_matches(',') == word)
                        .and_then(|i| w.get(i - 1)?.parse().ok())
                })
                .next()
                .unwrap_or(0)
        };
        (num_before("events"), num_before("lost"))
    };
    Ok(Sample {
        events,
        events_per_s: events as f64 / alive,
        lost,
        probe_calls,
        cpu_ms: attached_cpu_ms,
        peak_rss_kib: hwm,
        rss_kib: rss,
        startup_ms: r.startup_ms,
        ..Default::default()
    })
}

/// `ss -K` on the churn's TIME_WAIT sockets; false (and a warning) if it cannot.
fn kill_timewaits(ports: &[u16]) -> bool {
    let filter = ports
        .iter()
        .map(|p| format!("dport = :{p} or sport = :{p}"))
        .collect::<Vec<_>>()
        .join(" or ");
    let ok = Command::new("ss")
        .args(["-K", "-Htan", "state", "time-wait"])
        .arg(format!("( {filter} )"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!(
            "xtask bench: warning: `ss -K` failed (kernel without CONFIG_INET_DIAG_DESTROY?); \
             TIME_WAIT sockets carry over between runs and favour the first of each round"
        );
    }
    ok
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub fn bench(bin: &Path, tcpkit: &Path, args: &[String]) -> Result<()> {
    let mut rounds = 3usize;
    let mut secs = 5.0f64;
    let mut json = false;
    let mut soak: Option<f64> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => rounds = it.next().context("--rounds N")?.parse()?,
            "--secs" => secs = it.next().context("--secs S")?.parse()?,
            "--json" => json = true,
            "--soak" => soak = Some(parse_secs(it.next().context("--soak D")?)?),
            other => bail!("bench: unknown argument {other}"),
        }
    }
    if rounds < 3 {
        bail!("bench: --rounds must be at least 3 (medians)");
    }
    if let Some(d) = soak {
        return run_soak(bin, tcpkit, d);
    }
    let tmp = PathBuf::from("/dev/shm/tcpstate-bench.jsonl");
    let s = |v: &[&str]| Some(v.iter().map(|x| x.to_string()).collect::<Vec<_>>());
    let have_bpftrace = Command::new("bpftrace")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut variants = vec![
        Variant {
            name: "baseline (no tracer)",
            args: None,
            bpftrace: false,
            stdout_file: false,
        },
        Variant {
            name: "trace --json > tmpfs",
            args: s(&["trace", "--json"]),
            bpftrace: false,
            stdout_file: true,
        },
        Variant {
            name: "trace > /dev/null",
            args: s(&["trace"]),
            bpftrace: false,
            stdout_file: false,
        },
        Variant {
            name: "linger",
            args: s(&["linger", "--interval", "1s"]),
            bpftrace: false,
            stdout_file: false,
        },
        Variant {
            name: "hist",
            args: s(&["hist"]),
            bpftrace: false,
            stdout_file: false,
        },
    ];
    if have_bpftrace {
        variants.push(Variant {
            name: "bpftrace count (in-kernel)",
            args: None,
            bpftrace: true,
            stdout_file: false,
        });
    } else {
        eprintln!("xtask bench: bpftrace is not installed; skipping the in-kernel reference (apt-get install bpftrace)");
    }
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect::<Result<_>>()?;
    eprintln!(
        "xtask bench: {rounds} rounds x {} variants, {secs} s of churn each after a 1 s warm-up",
        variants.len()
    );
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    let mut can_reset = true;
    let mut run = |i: usize, label: &str| -> Result<Sample> {
        let v = &variants[i];
        // Every run starts with none of the earlier runs' TIME_WAIT sockets: with
        // them, connect() searches longer for a free port, or once
        // tcp_max_tw_buckets is reached skips TIME_WAIT altogether, and later runs of
        // a round would be measured on a different workload.
        if can_reset {
            can_reset = kill_timewaits(&ports);
        }
        let tracer = if v.args.is_some() || v.bpftrace {
            Some(start_tracer(bin, v, &tmp)?)
        } else {
            None
        };
        let (warm, _) = churn(tcpkit, &ports, 1.0)?; // warm-up
        let (conns, rate) = churn(tcpkit, &ports, secs)?;
        let mut sample = match tracer {
            Some(t) => stop_tracer(t, v, &tmp)?,
            None => Sample::default(),
        };
        sample.transitions = (warm + conns) * 10;
        sample.conns_per_s = rate;
        eprintln!("  {label} {:<28} {:>9.0} conn/s", v.name, rate);
        Ok(sample)
    };
    // Each round: the baseline, then the tracers in an order rotated every round (so
    // no tracer always runs right after the baseline); one more baseline closes the
    // last round. A tracer's ratio is to the baseline interpolated at its place
    // between the baselines around it, which cancels the machine's slow drift.
    let n = variants.len();
    let mut placed: Vec<(usize, usize, usize, Sample)> = Vec::new(); // (round, place, variant, sample)
    let mut bases = Vec::new();
    for round in 0..=rounds {
        let b = run(0, &format!("round {}", round + 1))?;
        bases.push(b.conns_per_s);
        if round == rounds {
            break;
        }
        samples[0].push(Sample { ratio: 1.0, ..b });
        for k in 1..n {
            let i = 1 + (k - 1 + round) % (n - 1);
            let s = run(i, &format!("round {}", round + 1))?;
            placed.push((round, k, i, s));
        }
    }
    for (round, k, i, mut s) in placed {
        let w = k as f64 / n as f64;
        let base = bases[round] * (1.0 - w) + bases[round + 1] * w;
        s.ratio = s.conns_per_s / base;
        samples[i].push(s);
    }
    let _ = std::fs::remove_file(&tmp);
    report(&variants, &samples, json);
    Ok(())
}

fn report(variants: &[Variant], samples: &[Vec<Sample>], json: bool) {
    let rows: Vec<serde_json::Value> = variants
        .iter()
        .zip(samples)
        .map(|(v, s)| {
            let m = |f: fn(&Sample) -> f64| median(s.iter().map(f).collect());
            // Per million transitions of the workload: for hist most never leave the
            // kernel, so tcpstate's own event count would flatter nothing.
            let cpu_per_m = if v.args.is_some() || v.bpftrace {
                m(|x| x.cpu_ms / x.transitions.max(1) as f64 * 1e6)
            } else {
                f64::NAN
            };
            serde_json::json!({
                "variant": v.name,
                "conn_per_s": m(|x| x.conns_per_s).round() as u64,
                "ratio": (m(|x| x.ratio) * 1000.0).round() / 1000.0,
                "events_per_s": if v.args.is_some() { Some(m(|x| x.events_per_s).round() as u64) } else { None },
                "lost": if v.args.is_some() { Some(s.iter().map(|x| x.lost).max().unwrap_or(0)) } else { None },
                "cpu_ms_attached": if v.args.is_some() || v.bpftrace { Some((m(|x| x.cpu_ms) * 10.0).round() / 10.0) } else { None },
                "cpu_ms_per_million_transitions": if cpu_per_m.is_finite() { Some((cpu_per_m * 10.0).round() / 10.0) } else { None },
                "peak_rss_kib": if v.args.is_some() || v.bpftrace { Some(m(|x| x.peak_rss_kib as f64) as u64) } else { None },
                "rss_at_end_kib": if v.args.is_some() || v.bpftrace { Some(m(|x| x.rss_kib as f64) as u64) } else { None },
                "startup_ms": if v.args.is_some() || v.bpftrace { Some(m(|x| x.startup_ms).round() as u64) } else { None },
            })
        })
        .collect();
    if json {
        println!(
            "{}",
            serde_json::json!({"type": "bench", "rounds": samples[0].len(), "variants": rows})
        );
        return;
    }
    println!(
        "{:<28} {:>9} {:>7} {:>10} {:>6} {:>12} {:>10} {:>10} {:>9}",
        "VARIANT",
        "CONN/S",
        "RATIO",
        "EVENTS/S",
        "LOST",
        "CPU MS/M TR",
        "PEAK RSS",
        "END RSS",
        "STARTUP"
    );
    for r in &rows {
        let opt = |k: &str, suffix: &str| match &r[k] {
            serde_json::Value::Null => "-".to_string(),
            v => format!("{v}{suffix}"),
        };
        let mib = |k: &str| {
            r[k].as_u64()
                .map_or("-".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
        };
        println!(
            "{:<28} {:>9} {:>7} {:>10} {:>6} {:>12} {:>10} {:>10} {:>9}",
            r["variant"].as_str().unwrap(),
            r["conn_per_s"].as_f64().unwrap_or(0.0),
            format!("{:.3}", r["ratio"].as_f64().unwrap_or(f64::NAN)),
            opt("events_per_s", ""),
            opt("lost", ""),
            opt("cpu_ms_per_million_transitions", ""),
            mib("peak_rss_kib"),
            mib("rss_at_end_kib"),
            opt("startup_ms", " ms"),
        );
    }
}

fn parse_secs(s: &str) -> Result<f64> {
    let (n, mult) = if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s.strip_suffix('s').unwrap_or(s), 1.0)
    };
    let v: f64 = n.parse().with_context(|| format!("bad duration {s}"))?;
    if v <= 0.0 {
        bail!("duration must be positive: {s}");
    }
    Ok(v * mult)
}

/// Time the process has run on a CPU, in ns (first field of /proc/PID/schedstat).
fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn vm_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}

/// Churn for `secs` with `trace` and `linger` attached; RSS every 10 s; at the end,
/// the exact transition count and the loss counters, and tracefs's own count of the
/// tracepoint to tell a transition tcpstate lost from one the kernel never handed to
/// any BPF program.
fn run_soak(bin: &Path, tcpkit: &Path, secs: f64) -> Result<()> {
    let port = free_port()?;
    let p = port.to_string();
    let out = PathBuf::from("/dev/shm/tcpstate-soak.jsonl");
    let trace_v = Variant {
        name: "trace",
        args: Some(["trace", "--json", "--port", &p].map(String::from).to_vec()),
        bpftrace: false,
        stdout_file: true,
    };
    let linger_v = Variant {
        name: "linger",
        args: Some(
            ["linger", "--interval", "10s", "--port", &p]
                .map(String::from)
                .to_vec(),
        ),
        bpftrace: false,
        stdout_file: false,
    };
    let trace = start_tracer(bin, &trace_v, &out)?;
    let linger = start_tracer(bin, &linger_v, Path::new("/dev/null"))?;
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
    let t = stop_tracer(trace, &trace_v, &out)?;
    let l = stop_tracer(linger, &linger_v, Path::new("/dev/null"))?;
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
