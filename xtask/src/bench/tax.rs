//! What a tracer costs processes it does not trace: an unrelated getppid() loop with
//! and without each command attached (a syscall tracepoint puts every task's every
//! system call on the slow path, `syscall_regfunc()`), and a timer-wheel loop with and
//! without `hist` (whose `timer_expire_entry` program runs on every expiring timer of
//! the host). Interleaved: without, with A, without, with B, ..., without; each "with"
//! is compared with the mean of the runs without on either side of it. The timer
//! loop's rate is bound by the tick (one jiffy per timer), so its slowdown stays
//! near 0 whatever the program costs: the timer tax is the program's ns per run
//! times the host's expiring timers per second, both printed.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

use super::{
    median,
    tracer::{self, Kind, Tools},
};

/// The commands whose syscall tax is measured (name, tcpstate arguments).
pub const TAX_COMMANDS: &[(&str, &[&str])] = &[
    ("trace", &["trace"]),
    ("linger", &["linger", "--interval", "1s"]),
    ("hist", &["hist"]),
    ("hist --by process", &["hist", "--by", "process"]),
];
const TIMER_THREADS: &str = "256";

#[derive(Clone, Debug)]
pub struct TaxRow {
    pub command: String,
    pub rate_without: f64,
    pub rate_with: f64,
    /// Time per call (or per timer) with, over without, minus 1, in %.
    pub slowdown_pct: f64,
    /// The tracer's BPF time per second of the run (ns/s); timer tax: its timer
    /// program's time per timer the loop made expire.
    pub bpf_ns: f64,
    /// Timer tax: the timer program's ns per run (NaN for the syscall tax).
    pub ns_per_run: f64,
}

/// Runs `tcpkit ARGS` and returns the number after `rate`.
fn loop_rate(tcpkit: &Path, args: &[&str]) -> Result<f64> {
    let out = Command::new(tcpkit).args(args).output()?;
    if !out.status.success() {
        bail!(
            "tcpkit {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "rate")
        .nth(1)
        .and_then(|r| r.parse().ok())
        .with_context(|| format!("tcpkit printed no rate: {text}"))
}

/// hist's program on `timer:timer_expire_entry` (the kernel keeps 15 bytes of a name).
const TIMER_PROG: &str = "tw_timer_expire";

/// One "with" run: (loop rate, BPF ns over the run, BPF runs, the loop's count);
/// `only`: count only the program of that name.
fn with_tracer(
    tools: &Tools,
    kind: &Kind,
    loop_args: &[&str],
    only: Option<&str>,
) -> Result<(f64, f64, f64, f64)> {
    let t = tracer::start(tools, kind)?;
    let started = std::time::Instant::now();
    let rate = loop_rate(tools.tcpkit, loop_args)?;
    let secs = started.elapsed().as_secs_f64();
    let cost = tracer::stop(t, kind, &tools.out_file)?;
    let progs = cost
        .progs
        .iter()
        .filter(|p| only.is_none_or(|n| p.name == n));
    let (ns, runs) = progs.fold((0, 0), |(ns, runs), p| {
        (ns + p.run_time_ns, runs + p.run_cnt)
    });
    Ok((rate, ns as f64, runs as f64, rate * secs))
}

/// `commands` interleaved with runs without, `rounds` times: one row per command.
fn interleaved(
    tools: &Tools,
    rounds: usize,
    commands: &[(&str, &[&str])],
    loop_args: &[&str],
    per_timer: bool,
) -> Result<Vec<TaxRow>> {
    // (without, with, bpf, ns per run)
    let mut rows: Vec<Vec<(f64, f64, f64, f64)>> = vec![Vec::new(); commands.len()];
    for _ in 0..rounds {
        super::check_interrupted()?;
        let mut before = loop_rate(tools.tcpkit, loop_args)?;
        for (i, (_, args)) in commands.iter().enumerate() {
            let kind = Kind::Tcpstate {
                bin: None,
                args: args.iter().map(|a| a.to_string()).collect(),
                stdout_file: false,
                env: Vec::new(),
            };
            let only = per_timer.then_some(TIMER_PROG);
            let (with, bpf_ns, runs, count) = with_tracer(tools, &kind, loop_args, only)?;
            let after = loop_rate(tools.tcpkit, loop_args)?;
            let bpf = if per_timer {
                bpf_ns / count.max(1.0)
            } else {
                bpf_ns / (count / with.max(1.0)).max(1e-9)
            };
            let per_run = if per_timer {
                bpf_ns / runs.max(1.0)
            } else {
                f64::NAN
            };
            rows[i].push(((before + after) / 2.0, with, bpf, per_run));
            before = after;
        }
    }
    Ok(commands
        .iter()
        .zip(rows)
        .map(|((name, _), r)| TaxRow {
            command: name.to_string(),
            rate_without: median(r.iter().map(|x| x.0).collect()),
            rate_with: median(r.iter().map(|x| x.1).collect()),
            slowdown_pct: median(r.iter().map(|x| (x.0 / x.1 - 1.0) * 100.0).collect()),
            bpf_ns: median(r.iter().map(|x| x.2).collect()),
            ns_per_run: median(r.iter().map(|x| x.3).collect()),
        })
        .collect())
}

pub fn syscall_tax(tools: &Tools, rounds: usize, secs: f64) -> Result<Vec<TaxRow>> {
    let d = secs.to_string();
    interleaved(
        tools,
        rounds,
        TAX_COMMANDS,
        &["syscall-loop", "--duration", &d],
        false,
    )
}

pub fn timer_tax(tools: &Tools, rounds: usize, secs: f64) -> Result<TaxRow> {
    let d = secs.to_string();
    let rows = interleaved(
        tools,
        rounds,
        &[("hist", &["hist"])],
        &["timer-loop", "--duration", &d, "--threads", TIMER_THREADS],
        true,
    )?;
    Ok(rows.into_iter().next().expect("one command"))
}
