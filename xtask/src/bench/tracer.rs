//! Starting a tracer, knowing when it is attached, and stopping it with what it cost:
//! its own CPU time (every thread's `/proc/PID/task/*/schedstat`), its memory, and
//! the kernel time of every BPF program it holds.

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{
    bpfstats::{self, ProgStat},
    scrape::{Scraper, Scrapes},
};

/// In a tracer's arguments: replaced by a free loopback port at each start.
pub const PORT: &str = "{port}";

/// The reference the issue defines: bpftrace counting transitions in a map, in the
/// kernel.
pub const BPFTRACE_COUNT: &str =
    "tracepoint:sock:inet_sock_set_state { @[args->oldstate, args->newstate] = count(); }";
pub const TCPSTATES: &str = "/usr/sbin/tcpstates";

#[derive(Clone, Debug)]
pub enum Kind {
    Baseline,
    /// tcpstate with these arguments; `stdout_file`: stdout to a file on tmpfs (JSON,
    /// whose last line is the summary), else /dev/null.
    Tcpstate {
        /// Another tcpstate binary than the bench's (`--compare`).
        bin: Option<PathBuf>,
        args: Vec<String>,
        stdout_file: bool,
        /// Extra environment (the per-part profile's `TCPSTATE_PROFILE_SKIP`).
        env: Vec<(String, String)>,
    },
    Bpftrace,
    /// `tcpkit calib` with this program of the calibration object.
    Calib(&'static str),
    /// Debian libbpf-tools' tcpstates, output to /dev/null.
    Tcpstates,
}

pub struct Tools<'a> {
    pub tcpstate: &'a Path,
    pub tcpkit: &'a Path,
    pub calib: Option<&'a Path>,
    pub out_file: PathBuf,
}

pub struct Running {
    pub child: Child,
    started: Instant,
    pub startup_ms: f64,
    /// CPU time once attached: startup is not part of the per-transition cost.
    cpu_at_attach_ns: u64,
    stderr: Option<BufReader<std::process::ChildStderr>>,
    progs: Vec<u32>,
    progs_at_attach: Vec<(u32, ProgStat)>,
    /// `serve`: scraped every second while it runs, as Prometheus would.
    scraper: Option<Scraper>,
    /// `serve`'s address, where its arguments had [`PORT`].
    pub listen: Option<String>,
}

/// What one run of a tracer cost.
#[derive(Default, Clone, Debug)]
pub struct Cost {
    pub alive_s: f64,
    pub events: u64,
    pub lost: u64,
    /// `trace`'s count of transitions the kernel handed to its probe.
    pub probe_calls: u64,
    pub cpu_ns: u64,
    pub peak_rss_kib: u64,
    pub rss_kib: u64,
    pub startup_ms: f64,
    pub progs: Vec<ProgStat>,
    /// `serve`'s scrapes during the run.
    pub scrapes: Option<Scrapes>,
}

impl Cost {
    pub fn bpf_ns(&self) -> u64 {
        self.progs.iter().map(|p| p.run_time_ns).sum()
    }
}

pub fn start(tools: &Tools, kind: &Kind) -> Result<Running> {
    let started = Instant::now();
    let mut listen = None;
    let mut cmd = match kind {
        Kind::Baseline => bail!("the baseline runs no tracer"),
        Kind::Tcpstate { bin, args, env, .. } => {
            let mut c = Command::new(bin.as_deref().unwrap_or(tools.tcpstate));
            for a in args {
                if a.contains(PORT) {
                    let a = a.replace(PORT, &super::free_port()?.to_string());
                    listen = Some(a.clone());
                    c.arg(a);
                } else {
                    c.arg(a);
                }
            }
            c.envs(env.iter().map(|(k, v)| (k, v)));
            c
        }
        Kind::Bpftrace => {
            let mut c = Command::new("bpftrace");
            c.args(["-e", BPFTRACE_COUNT]);
            c
        }
        Kind::Calib(prog) => {
            let mut c = Command::new(tools.tcpkit);
            c.arg("calib")
                .arg("--object")
                .arg(tools.calib.context("no calibration object")?)
                .args(["--program", prog]);
            c
        }
        Kind::Tcpstates => Command::new(TCPSTATES),
    };
    let stdout = match kind {
        Kind::Tcpstate {
            stdout_file: true, ..
        } => Stdio::from(std::fs::File::create(&tools.out_file)?),
        Kind::Bpftrace => Stdio::piped(),
        _ => Stdio::null(),
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let mut stderr = BufReader::new(child.stderr.take().context("stderr")?);
    let mut r = Running {
        child,
        started,
        startup_ms: 0.0,
        cpu_at_attach_ns: 0,
        stderr: None,
        progs: Vec::new(),
        progs_at_attach: Vec::new(),
        scraper: None,
        listen: listen.clone(),
    };
    match kind {
        Kind::Bpftrace => {
            // bpftrace says "Attaching 1 probe..." on stdout once attached.
            let mut out = BufReader::new(r.child.stdout.take().context("stdout")?);
            let mut line = String::new();
            out.read_line(&mut line)?;
            std::thread::spawn(move || {
                let mut sink = String::new();
                let _ = out.read_to_string(&mut sink);
            });
        }
        Kind::Tcpstates => {
            // Its output goes to /dev/null, so it cannot say when it is attached: wait
            // for the fd that the attachment makes (a BPF link or a perf event).
            let deadline = Instant::now() + Duration::from_secs(10);
            while !holds_attachment(r.child.id()) {
                if r.child.try_wait()?.is_some() || Instant::now() > deadline {
                    let mut err = String::new();
                    let _ = stderr.read_to_string(&mut err);
                    bail!("tcpstates did not attach: {}", err.trim());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        _ => {
            let marker = if matches!(kind, Kind::Calib(_)) {
                "attached"
            } else {
                "probe attached"
            };
            let mut line = String::new();
            loop {
                line.clear();
                if stderr.read_line(&mut line)? == 0 {
                    bail!("{kind:?} exited before attaching");
                }
                if line.contains(marker) {
                    break;
                }
            }
        }
    }
    // bpftrace prints its line before it loads anything: wait for the programs.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        r.progs = bpfstats::prog_ids_of(r.child.id());
        if !r.progs.is_empty() && holds_attachment(r.child.id()) {
            break;
        }
        if r.child.try_wait()?.is_some() || Instant::now() > deadline {
            bail!("{kind:?} holds no attached BPF program");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    r.startup_ms = started.elapsed().as_secs_f64() * 1e3;
    if matches!(kind, Kind::Bpftrace) {
        // Its perf events exist before the program is attached to them.
        std::thread::sleep(Duration::from_millis(100));
    }
    r.cpu_at_attach_ns = cpu_ns(r.child.id());
    r.stderr = Some(stderr);
    r.progs_at_attach = bpfstats::snapshot(&r.progs)?;
    r.scraper = listen.map(|addr| Scraper::start(addr, Duration::from_secs(1)));
    Ok(r)
}

fn holds_attachment(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|d| {
        d.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|t| {
                let t = t.to_string_lossy();
                t.contains("bpf_link") || t.contains("bpf-link") || t.contains("perf_event")
            })
        })
    })
}

/// Reads the BPF counters, CPU time and memory (VmHWM: wait4's ru_maxrss would also
/// count the pre-exec fork of xtask), then SIGINT and the summary.
pub fn stop(mut r: Running, kind: &Kind, out_file: &Path) -> Result<Cost> {
    let alive_s = r.started.elapsed().as_secs_f64();
    let scrapes = r.scraper.take().map(Scraper::stop);
    let after = bpfstats::snapshot(&r.progs)?;
    let pid = r.child.id();
    let hwm = proc_status_kib(pid, "VmHWM:");
    let cpu = cpu_ns(pid).saturating_sub(r.cpu_at_attach_ns);
    let rss = proc_status_kib(pid, "VmRSS:");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    r.child.wait()?;
    let mut err = String::new();
    if let Some(mut e) = r.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let mut cost = Cost {
        alive_s,
        cpu_ns: cpu,
        peak_rss_kib: hwm,
        rss_kib: rss,
        startup_ms: r.startup_ms,
        progs: bpfstats::delta(&r.progs_at_attach, &after),
        scrapes,
        ..Default::default()
    };
    match kind {
        Kind::Tcpstate {
            stdout_file: true, ..
        } => {
            let text = std::fs::read_to_string(out_file).unwrap_or_default();
            let last = text.lines().last().unwrap_or_default();
            let j: serde_json::Value = serde_json::from_str(last).unwrap_or_default();
            cost.probe_calls = j["probe_calls"].as_u64().unwrap_or(0);
            cost.events = j["events"].as_u64().unwrap_or(0);
            cost.lost = j["lost"].as_u64().unwrap_or(0);
        }
        Kind::Tcpstate { .. } => {
            let num_before = |word: &str| -> u64 {
                err.lines()
                    .filter(|l| l.starts_with("tcpstate: ") && l.contains(" events,"))
                    .filter_map(|l| {
                        let w: Vec<&str> = l.split_whitespace().collect();
                        w.iter()
                            .position(|x| x.trim_end_matches(',') == word)
                            .and_then(|i| w.get(i.checked_sub(1)?)?.parse().ok())
                    })
                    .next()
                    .unwrap_or(0)
            };
            cost.events = num_before("events");
            cost.lost = num_before("lost");
        }
        _ => {}
    }
    Ok(cost)
}

impl Drop for Running {
    /// A tracer left running by an error is stopped: SIGINT, then SIGKILL after 2 s.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on our own, not yet reaped, child.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Time every thread of the process has run on a CPU, in ns (the first field of
/// each /proc/PID/task/TID/schedstat; bpftrace and tokio may run several threads).
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| {
            std::fs::read_to_string(t.path().join("schedstat"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

pub fn vm_rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS:")
}
