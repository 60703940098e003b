//! `cargo xtask bench`: what tcpstate costs the traced workload, side by side with no
//! tracer, the references and a peer, in interleaved rounds (baseline, then every
//! tracer in a rotated order), each run starting without the previous runs'
//! TIME_WAIT sockets; a tracer's conn/s ratio is to the baseline interpolated between
//! the baselines around it, so that machine drift hits every variant alike.
//!
//! conn/s ratios move by +-10% between runs here, so each run also measures the cost
//! per TCP transition: the BPF programs' run time (`kernel.bpf_stats_enabled`,
//! [`bpfstats`]) and the tracer's own CPU, each divided by the workload's
//! transitions, and compares the sum with references measured in the same round:
//! bpftrace's in-kernel count, and an empty and a counting tp_btf program (`calib`,
//! what dispatch alone costs). Then the taxes on processes a tracer does not trace
//! ([`tax`]) and, when asked, startup with many existing sockets ([`scale`]).
//! Medians are reported.
//!
//! Options: `--rounds N` (3), `--secs S` (5, of churn per run after a 1 s warm-up),
//! `--tax-secs S` (2; 0 skips the taxes), `--scale [N]` (100,000), `--tcpstate PATH`
//! (the tracer variants run that binary), `--compare PATH` (every tcpstate command of
//! that binary too, in the same rounds, rows marked `[compare]`: an old build against
//! a new one on the same churn),
//! `--calib-object PATH`, `--json`, `--soak D [--serve]`, `--rates LIST|none` (paced
//! rows, transitions/s: 1k,10k,100k).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{bail, Context, Result};

mod bpfstats;
mod rates;
mod report;
mod scale;
mod scrape;
mod soak;
mod tax;
mod tracer;

use tracer::{Cost, Kind, Tools};

pub struct Variant {
    pub name: String,
    pub kind: Kind,
}

impl Variant {
    pub fn is_tracer(&self) -> bool {
        !matches!(self.kind, Kind::Baseline)
    }
}

/// The references the per-transition costs are compared with, in every round.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ref {
    Bpftrace,
    CalibCount,
    CalibEmpty,
}

pub const REFS: [Ref; 3] = [Ref::Bpftrace, Ref::CalibCount, Ref::CalibEmpty];

#[derive(Default, Clone, Debug)]
pub struct Sample {
    pub round: usize,
    /// TCP transitions the workload made while the tracer ran (10 per connection).
    pub transitions: u64,
    pub conns_per_s: f64,
    pub ratio: f64,
    pub cost: Cost,
    /// Total ns per transition over each reference's, same round (NaN: none).
    pub vs: [f64; 3],
}

impl Sample {
    pub fn bpf_ns_per_tr(&self) -> f64 {
        self.cost.bpf_ns() as f64 / self.transitions.max(1) as f64
    }
    pub fn cpu_ns_per_tr(&self) -> f64 {
        self.cost.cpu_ns as f64 / self.transitions.max(1) as f64
    }
    pub fn total_ns_per_tr(&self) -> f64 {
        self.bpf_ns_per_tr() + self.cpu_ns_per_tr()
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Ctrl-C or SIGTERM ends the bench between runs, through the same cleanup as an
/// error (tracers stopped, bpf_stats_enabled restored), instead of killing xtask.
fn catch_signals() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Installs a Debian package when `path` is missing, saying so; false if it cannot.
fn ensure_package(path: &str, package: &str, what: &str) -> bool {
    if Path::new(path).exists() {
        return true;
    }
    eprintln!("xtask bench: installing the Debian package {package} ({what}; missing)");
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok || !Path::new(path).exists() {
        eprintln!("xtask bench: warning: could not install {package} (try `apt-get update` first)");
        return false;
    }
    true
}

/// bpftrace and tcpstates attach classic tracepoints, which need tracefs (tcpstate
/// mounts it itself; the peers do not).
fn ensure_tracefs() {
    if Path::new("/sys/kernel/tracing/events").is_dir() {
        return;
    }
    eprintln!("xtask bench: mounting tracefs at /sys/kernel/tracing (for bpftrace and tcpstates)");
    let _ = Command::new("mount")
        .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
        .status();
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

/// A port free on 127.0.0.1..4, below the ephemeral range: a port from that range
/// can be taken by any connect() on the host (other tests hold ~100k of them at
/// times) between the check here and the churn's bind.
pub fn free_port() -> Result<u16> {
    let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (from, span) = (
        low.saturating_sub(12_000).max(1024),
        low.saturating_sub(1024).min(12_000),
    );
    // Start somewhere different each call (time and pid), then walk.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    for k in 0..span as u32 {
        let p = from + (seed.wrapping_add(k.wrapping_mul(7919)) % span.max(1) as u32) as u16;
        let free = (1..=4).all(|i| {
            std::net::TcpListener::bind(("127.0.0.".to_string() + &i.to_string(), p)).is_ok()
        });
        if free {
            return Ok(p);
        }
    }
    bail!("no free port below the ephemeral range")
}

pub struct Options {
    pub rounds: usize,
    pub secs: f64,
    pub tax_secs: f64,
    pub json: bool,
    pub soak: Option<f64>,
    /// The soak with `serve` too.
    pub soak_serve: bool,
    pub scale: Option<u64>,
    pub tcpstate: Option<PathBuf>,
    pub compare: Option<PathBuf>,
    pub calib: Option<PathBuf>,
    /// Also run `trace --json` without each part of the probe (`--profile`).
    pub profile: bool,
    /// Paced rows, in transitions per second (`--rates`; empty: none).
    pub rates: Vec<u64>,
}

fn parse_options(args: &[String], calib: Option<&Path>) -> Result<Options> {
    let mut o = Options {
        rounds: 3,
        secs: 5.0,
        tax_secs: 2.0,
        json: false,
        soak: None,
        soak_serve: false,
        scale: None,
        tcpstate: None,
        compare: None,
        calib: calib.map(Path::to_path_buf),
        profile: false,
        rates: vec![1_000, 10_000, 100_000],
    };
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => o.rounds = it.next().context("--rounds N")?.parse()?,
            "--secs" => o.secs = it.next().context("--secs S")?.parse()?,
            "--tax-secs" => o.tax_secs = it.next().context("--tax-secs S")?.parse()?,
            "--json" => o.json = true,
            "--profile" => o.profile = true,
            "--serve" => o.soak_serve = true,
            "--rates" => o.rates = parse_rates(it.next().context("--rates LIST|none")?)?,
            "--soak" => o.soak = Some(parse_secs(it.next().context("--soak D")?)?),
            "--scale" => {
                let n = it
                    .peek()
                    .and_then(|n| n.replace([',', '_'], "").parse().ok());
                if n.is_some() {
                    it.next();
                }
                o.scale = Some(n.unwrap_or(100_000));
            }
            "--tcpstate" => o.tcpstate = Some(it.next().context("--tcpstate PATH")?.into()),
            "--compare" => o.compare = Some(it.next().context("--compare PATH")?.into()),
            "--calib-object" => o.calib = Some(it.next().context("--calib-object PATH")?.into()),
            other => bail!("bench: unknown argument {other}"),
        }
    }
    if o.soak_serve && o.soak.is_none() {
        bail!("bench: --serve is a part of the soak: --soak D --serve");
    }
    if o.rounds == 0 {
        bail!("bench: --rounds must be at least 1");
    }
    if o.rounds < 3 {
        eprintln!(
            "xtask bench: warning: fewer than 3 rounds: the figures are single runs, not medians"
        );
    }
    Ok(o)
}

/// `calib`: the calibration object built from the ebpf crate, None if it has no
/// such binary yet.
pub fn bench(bin: &Path, tcpkit: &Path, calib: Option<&Path>, args: &[String]) -> Result<()> {
    let o = parse_options(args, calib)?;
    let bin = o.tcpstate.as_deref().unwrap_or(bin);
    catch_signals();
    ensure_tracefs();
    if !ensure_package("/usr/sbin/bpftool", "bpftool", "per-program BPF run time") {
        bail!("bench: bpftool is needed to read the BPF programs' run time");
    }
    if let Some(d) = o.soak {
        return soak::run(bin, tcpkit, d, o.soak_serve);
    }
    let _stats = bpfstats::StatsGuard::enable()?;
    let tools = Tools {
        tcpstate: bin,
        tcpkit,
        calib: o.calib.as_deref(),
        out_file: PathBuf::from("/dev/shm/tcpstate-bench.jsonl"),
    };
    let result = run_all(&tools, &o);
    let _ = std::fs::remove_file(&tools.out_file);
    result
}

/// The command the per-part profile takes apart.
pub const PROFILED: &str = "trace --json > tmpfs";

/// tcpstate's commands, as the bench runs them (name, arguments, stdout to tmpfs).
const COMMANDS: &[(&str, &[&str], bool)] = &[
    ("trace --json > tmpfs", &["trace", "--json"], true),
    ("trace > /dev/null", &["trace"], false),
    ("linger", &["linger", "--interval", "1s"], false),
    ("hist", &["hist"], false),
    (SERVE, &["serve", "--listen", "127.0.0.1:{port}"], false),
];

/// `serve`'s row: always on, scraped every second (see `tracer::PORT`).
pub const SERVE: &str = "serve, scraped every 1 s";

fn variants(o: &Options) -> Vec<Variant> {
    let mut v = vec![Variant {
        name: "baseline (no tracer)".into(),
        kind: Kind::Baseline,
    }];
    // With --compare, each command of the other binary runs in the same rounds.
    let bins: Vec<(Option<&Path>, String)> = std::iter::once((None, String::new()))
        .chain(
            o.compare
                .as_deref()
                .map(|p| (Some(p), " [compare]".to_string())),
        )
        .collect();
    for (name, args, stdout_file) in COMMANDS {
        for (bin, suffix) in &bins {
            v.push(Variant {
                name: format!("{name}{suffix}"),
                kind: Kind::Tcpstate {
                    bin: bin.map(Path::to_path_buf),
                    args: args.iter().map(|x| x.to_string()).collect(),
                    stdout_file: *stdout_file,
                    env: Vec::new(),
                },
            });
        }
    }
    // The per-part profile: `trace --json` without each part of the probe (its
    // output is wrong then; only the programs' run time counts), and without all.
    if o.profile {
        let all = tcpstate_common::skip::ALL
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(",");
        let parts = tcpstate_common::skip::ALL
            .iter()
            .map(|(n, _)| n.to_string())
            .chain(std::iter::once(all));
        for part in parts {
            let label = if part.contains(',') {
                "every part"
            } else {
                part.as_str()
            };
            v.push(Variant {
                name: format!("{PROFILED} without {label}"),
                kind: Kind::Tcpstate {
                    bin: None,
                    args: vec!["trace".into(), "--json".into()],
                    stdout_file: true,
                    env: vec![("TCPSTATE_PROFILE_SKIP".into(), part.clone())],
                },
            });
        }
    }
    if ensure_package(
        "/usr/bin/bpftrace",
        "bpftrace",
        "the in-kernel count reference",
    ) {
        v.push(Variant {
            name: "bpftrace count (in-kernel)".into(),
            kind: Kind::Bpftrace,
        });
    } else {
        eprintln!("xtask bench: skipping the bpftrace reference: bpftrace is not installed");
    }
    match &o.calib {
        Some(p) if p.exists() => {
            v.push(Variant {
                name: "calib_empty (tp_btf)".into(),
                kind: Kind::Calib("calib_empty"),
            });
            v.push(Variant {
                name: "calib_count (tp_btf)".into(),
                kind: Kind::Calib("calib_count"),
            });
        }
        Some(p) => eprintln!(
            "xtask bench: skipping the calib_empty and calib_count references: {} does not exist",
            p.display()
        ),
        None => eprintln!(
            "xtask bench: skipping the calib_empty and calib_count references: the ebpf crate \
             has no `calib` binary yet (the kernel branch adds it; or pass --calib-object PATH)"
        ),
    }
    if ensure_package(tracer::TCPSTATES, "libbpf-tools", "the tcpstates peer") {
        v.push(Variant {
            name: "libbpf-tools tcpstates".into(),
            kind: Kind::Tcpstates,
        });
    } else {
        eprintln!("xtask bench: skipping the tcpstates peer: libbpf-tools is not installed");
    }
    v
}

fn run_all(tools: &Tools, o: &Options) -> Result<()> {
    let variants = variants(o);
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect::<Result<_>>()?;
    eprintln!(
        "xtask bench: {} rounds x {} variants, {} s of churn each after a 1 s warm-up; tracers: {}",
        o.rounds,
        variants.len(),
        o.secs,
        tools.tcpstate.display()
    );
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    let mut can_reset = true;
    let mut run = |i: usize, round: usize| -> Result<Sample> {
        check_interrupted()?;
        let v = &variants[i];
        // Every run starts with none of the earlier runs' TIME_WAIT sockets: with
        // them, connect() searches longer for a free port, or once
        // tcp_max_tw_buckets is reached skips TIME_WAIT altogether, and later runs of
        // a round would be measured on a different workload.
        if can_reset {
            can_reset = kill_timewaits(&ports);
        }
        let tracer = if v.is_tracer() {
            Some(tracer::start(tools, &v.kind)?)
        } else {
            None
        };
        let (warm, _) = churn(tools.tcpkit, &ports, 1.0)?; // warm-up
        let (conns, rate) = churn(tools.tcpkit, &ports, o.secs)?;
        let cost = match tracer {
            Some(t) => tracer::stop(t, &v.kind, &tools.out_file)?,
            None => Cost::default(),
        };
        let s = Sample {
            round,
            transitions: (warm + conns) * 10,
            conns_per_s: rate,
            cost,
            ..Default::default()
        };
        eprintln!(
            "  round {} {:<32} {:>9.0} conn/s {:>8.0} ns/transition",
            round + 1,
            v.name,
            rate,
            s.total_ns_per_tr()
        );
        Ok(s)
    };
    // Each round: the baseline, then the tracers in an order rotated every round (so
    // no tracer always runs right after the baseline); one more baseline closes the
    // last round. A tracer's ratio is to the baseline interpolated at its place
    // between the baselines around it, which cancels the machine's slow drift.
    let n = variants.len();
    let mut placed: Vec<(usize, usize, Sample)> = Vec::new(); // (place, variant, sample)
    let mut bases = Vec::new();
    for round in 0..=o.rounds {
        let b = run(0, round)?;
        bases.push(b.conns_per_s);
        if round == o.rounds {
            break;
        }
        samples[0].push(Sample { ratio: 1.0, ..b });
        for k in 1..n {
            let i = 1 + (k - 1 + round) % (n - 1);
            let s = run(i, round)?;
            placed.push((k, i, s));
        }
    }
    for (k, i, mut s) in placed {
        let w = k as f64 / n as f64;
        let base = bases[s.round] * (1.0 - w) + bases[s.round + 1] * w;
        s.ratio = s.conns_per_s / base;
        samples[i].push(s);
    }
    // Each sample's total against the references' totals of the same round.
    let ref_index = |r: Ref| {
        variants.iter().position(|v| match (&v.kind, r) {
            (Kind::Bpftrace, Ref::Bpftrace) => true,
            (Kind::Calib(p), Ref::CalibCount) => *p == "calib_count",
            (Kind::Calib(p), Ref::CalibEmpty) => *p == "calib_empty",
            _ => false,
        })
    };
    let ref_totals: Vec<Vec<f64>> = REFS
        .iter()
        .map(|r| {
            (0..o.rounds)
                .map(|round| {
                    ref_index(*r)
                        .and_then(|i| samples[i].iter().find(|s| s.round == round))
                        .map_or(f64::NAN, Sample::total_ns_per_tr)
                })
                .collect()
        })
        .collect();
    for (v, ss) in variants.iter().zip(samples.iter_mut()) {
        if !v.is_tracer() {
            continue;
        }
        for s in ss.iter_mut() {
            for (j, totals) in ref_totals.iter().enumerate() {
                s.vs[j] = s.total_ns_per_tr() / totals[s.round];
            }
        }
    }
    let rates = rates::run(tools, &variants, &ports, &o.rates, o.rounds, o.secs)?;
    let (syscall, timer) = if o.tax_secs > 0.0 {
        eprintln!("xtask bench: syscall tax (getppid loop) and timer tax (timer-wheel loop)");
        (
            tax::syscall_tax(tools, o.rounds, o.tax_secs)?,
            Some(tax::timer_tax(tools, o.rounds, o.tax_secs)?),
        )
    } else {
        (Vec::new(), None)
    };
    let scale = match o.scale {
        Some(n) => {
            kill_timewaits(&ports);
            Some(scale::run(tools.tcpstate, tools.tcpkit, n)?)
        }
        None => None,
    };
    report::report(
        &report::Results {
            tcpstate: tools.tcpstate,
            variants: &variants,
            samples: &samples,
            syscall: &syscall,
            timer: timer.as_ref(),
            scale: scale.as_ref(),
            rates: &rates,
        },
        o.json,
    );
    Ok(())
}

/// `1k,10k,100k` or `none`.
fn parse_rates(s: &str) -> Result<Vec<u64>> {
    if s == "none" {
        return Ok(Vec::new());
    }
    s.split(',')
        .map(|r| {
            let (n, mult) = match r.strip_suffix('k') {
                Some(n) => (n, 1000.0),
                None => (r, 1.0),
            };
            match n.parse::<f64>() {
                Ok(v) if v * mult >= 10.0 => Ok((v * mult) as u64),
                _ => bail!("--rates: bad rate {r:?} (transitions/s, at least 10, e.g. 1k,10k)"),
            }
        })
        .collect()
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
