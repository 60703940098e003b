//! Command line: subcommands, flags and their value parsers, and the conversions from
//! them into the model (the model knows nothing of clap).

use std::time::Duration;

use clap::{builder::PossibleValue, Args, Parser, Subcommand};
use tcpstate_common::{BY_CONTAINER, BY_NONE, BY_PROCESS, BY_RADDR, BY_RPORT, FILTER_MAX};

use crate::model::{
    container::{self, CgroupPrefix, ContainerPrefix},
    doctor::Thresholds,
    events::TcpState,
    filter::Filter,
    histogram::Unit,
};

/// TCP state transitions with their true owning process, from an eBPF probe on
/// `sock:inet_sock_set_state`.
#[derive(Debug, Parser)]
#[command(name = "tcpstate", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Diagnostics on stderr, the probe's own included (default off; RUST_LOG is
    /// honoured too, e.g. RUST_LOG=debug).
    #[arg(long, global = true, value_enum, value_name = "LEVEL")]
    pub log_level: Option<LogLevel>,
    /// Options of `trace`, the default command.
    #[command(flatten)]
    pub trace: TraceArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print every TCP state transition, one line each, until Ctrl-C (the default).
    Trace(TraceArgs),
    /// Sockets stuck in a state (CLOSE_WAIT by default), grouped by the process that
    /// holds them, with fd, age and growth; refreshed every --interval.
    Linger(LingerArgs),
    /// Histograms of the time sockets spend in each state, TIME_WAIT included.
    ///
    /// Counts and max are exact: every state, TIME_WAIT included, is aggregated in
    /// the kernel. Percentiles come from log-linear buckets (16 per power of two) and
    /// are within 3.1% of the true value. TIME_WAIT starts when the closing socket
    /// hands over to a timewait socket and ends, to the nanosecond, when that
    /// socket's timer fires (`expired`) or a new connection takes its 4-tuple
    /// (`reused`); one that goes any other way (a reset, `ss -K`, no timewait socket
    /// made) is counted `unseen` 66 s after the hand-over, without a duration. The
    /// TIME_WAIT gauge drops a killed one at once (its timer deleted early).
    /// Sockets whose history began before tcpstate started are not counted.
    Hist(HistArgs),
    /// A Prometheus exporter: time-in-state histograms, TIME_WAIT ends and
    /// destinations, CLOSE_WAIT sockets by holding process, accept queues by
    /// listener holder, and tcpstate's own losses, on GET /metrics (text format 0.0.4, or OpenMetrics when asked).
    Serve(ServeArgs),
    /// Look at every network namespace for a few seconds and print findings, most
    /// severe first, each with its evidence and what to do. Topics: close_wait,
    /// not_accepted, listen_queue, time_wait, fin_wait2, dead_held, keepalive, losses.
    /// Exit status: 0 nothing above info, 1 a warning or critical finding, 2 bad
    /// input, 3 could not check (missing privilege or kernel feature, said on stderr).
    Doctor(DoctorArgs),
    /// A live screen, refreshed every --interval: one row per process (or container)
    /// holding TCP sockets, sorted by CLOSE_WAIT, with growth, oldest age, fd
    /// headroom and what the program did wrong; Enter opens a process (its sockets,
    /// a sparkline of its CLOSE_WAIT count, its transitions). Needs a terminal: for
    /// scripts use `linger`, for monitoring `serve`.
    Top(TopArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<LogLevel> for log::LevelFilter {
    fn from(l: LogLevel) -> Self {
        match l {
            LogLevel::Off => log::LevelFilter::Off,
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    /// The owning process (for TIME_WAIT: the one that closed first).
    Process,
    /// The remote port.
    Rport,
    /// The remote address.
    Raddr,
    /// The socket's container (from the cgroup that created it; host sockets: `-`).
    Container,
}

#[derive(Debug, Clone, Args)]
pub struct HistArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// State to report (repeatable; default: every state seen, and TIME_WAIT).
    #[arg(long = "state", value_name = "S", value_parser = parse_state)]
    pub states: Vec<TcpState>,
    /// Print and reset every D (default: one report at exit).
    #[arg(long, value_name = "D", value_parser = parse_positive_duration, allow_hyphen_values = true)]
    pub interval: Option<Duration>,
    /// Run for D, then report.
    #[arg(long, value_name = "D", value_parser = parse_positive_duration, allow_hyphen_values = true)]
    pub duration: Option<Duration>,
    /// One histogram per process, remote port or remote address.
    #[arg(long, value_enum)]
    pub by: Option<By>,
    /// Unit of the distribution rows.
    #[arg(long, value_enum, default_value = "us")]
    pub unit: Unit,
    /// One JSON object per state (and key) per report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct LingerArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// State to report (repeatable; default CLOSE_WAIT). FIN_WAIT2, SYN_RECV,
    /// LAST_ACK... work too; TIME_WAIT is `tcpstate hist`'s.
    #[arg(long = "state", value_name = "S", value_parser = parse_linger_state)]
    pub states: Vec<TcpState>,
    /// Only sockets in the state for at least D.
    #[arg(long, value_name = "D", default_value = "5s", value_parser = parse_duration, allow_hyphen_values = true)]
    pub min_age: Duration,
    /// Report every D.
    #[arg(long, value_name = "D", default_value = "2s", value_parser = parse_positive_duration, allow_hyphen_values = true)]
    pub interval: Duration,
    /// Run for D, then print one final report.
    #[arg(long, value_name = "D", value_parser = parse_positive_duration, allow_hyphen_values = true)]
    pub duration: Option<Duration>,
    /// List every socket (the table shows the 3 oldest per process).
    #[arg(long)]
    pub all: bool,
    /// JSON lines: a `linger_report` per state, then a `linger` object per process.
    #[arg(long)]
    pub json: bool,
    /// Exit with status 1 when the final report lists any socket (for CI and health
    /// checks).
    #[arg(long)]
    pub fail_if_any: bool,
}

/// `top --by`: what a row stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TopBy {
    /// The process holding the sockets.
    Process,
    /// The holder's container (host processes: one `-` row).
    Container,
}

#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Refresh every D.
    #[arg(long, value_name = "D", default_value = "1s", value_parser = parse_top_interval, allow_hyphen_values = true)]
    pub interval: Duration,
    /// One row per process or per container.
    #[arg(long, value_enum, default_value = "process")]
    pub by: TopBy,
}

impl TopArgs {
    pub fn grouping(&self) -> crate::model::top::Grouping {
        match self.by {
            TopBy::Process => crate::model::top::Grouping::Process,
            TopBy::Container => crate::model::top::Grouping::Container,
        }
    }

    /// A screen needs a terminal on both sides: keys in, the screen out.
    pub fn check(&self) -> Result<(), String> {
        use std::io::IsTerminal;
        if !(std::io::stdout().is_terminal() && std::io::stdin().is_terminal()) {
            return Err(
                "tcpstate top needs a terminal (stdin and stdout are not one): \
                 use `tcpstate linger` for text or JSON reports, `tcpstate serve` for metrics"
                    .to_string(),
            );
        }
        Ok(())
    }
}

/// A refresh interval for `top`: 100ms to 1h (below that the screen only flickers,
/// and the fd walk would run flat out).
pub fn parse_top_interval(s: &str) -> Result<Duration, String> {
    let d = parse_positive_duration(s)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!("invalid interval '{s}': must be from 100ms to 1h"));
    }
    Ok(d)
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Address and port to serve on (loopback unless told otherwise).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9977", value_parser = parse_listen)]
    pub listen: std::net::SocketAddr,
    /// Prometheus exporter-toolkit web config (YAML): `tls_server_config` (cert_file,
    /// key_file) for HTTPS, `basic_auth_users` (user: bcrypt hash) for basic auth.
    #[arg(long, value_name = "FILE")]
    pub web_config: Option<std::path::PathBuf>,
    /// Groups (and TIME_WAIT destinations) with their own labels per state; the rest
    /// are summed under comm="other" (raddr="other"), so totals stay exact.
    #[arg(long, value_name = "N", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub top: u32,
    /// Add a `pid` label to the lingering series (one series per process: more
    /// series, for hosts with few processes).
    #[arg(long)]
    pub pid_labels: bool,
    /// Walk the fd tables and list TIME_WAIT sockets at most every D.
    #[arg(long, value_name = "D", default_value = "5s", value_parser = parse_positive_duration, allow_hyphen_values = true)]
    pub interval: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Watch for D before judging (long enough to see CLOSE_WAIT growth).
    #[arg(long, value_name = "D", default_value = "5s", value_parser = parse_positive_duration, allow_hyphen_values = true)]
    pub duration: Duration,
    /// One `finding` JSON object per line, then a `doctor_summary` line.
    #[arg(long)]
    pub json: bool,
    /// Only these network namespaces (inode, as `readlink /proc/PID/ns/net` prints;
    /// repeatable; default every one).
    #[arg(long = "netns", value_name = "INODE", value_parser = clap::value_parser!(u32).range(1..), allow_hyphen_values = true)]
    pub netns: Vec<u32>,
    /// close_wait: a process holding more than N CLOSE_WAIT sockets is a warning.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64), allow_hyphen_values = true)]
    pub close_wait_sockets: u64,
    /// close_wait: any CLOSE_WAIT socket older than D is a warning.
    #[arg(long, value_name = "D", default_value = "5m", value_parser = parse_duration, allow_hyphen_values = true)]
    pub close_wait_age: Duration,
    /// close_wait: a warning whose holder runs out of fds sooner than D at the growth
    /// seen (or already uses 90% of its fd limit) is critical.
    #[arg(long, value_name = "D", default_value = "1h", value_parser = parse_duration, allow_hyphen_values = true)]
    pub fd_eta_critical: Duration,
    /// time_wait: TIME_WAIT sockets using more than PCT% of a destination's local
    /// ports (ip_local_port_range) are a warning.
    #[arg(long, value_name = "PCT", default_value = "50", value_parser = parse_percent, allow_hyphen_values = true)]
    pub time_wait_warn: f64,
    /// time_wait: more than PCT% is critical.
    #[arg(long, value_name = "PCT", default_value = "90", value_parser = parse_percent, allow_hyphen_values = true)]
    pub time_wait_critical: f64,
    /// fin_wait2: more than N orphaned FIN_WAIT2 sockets in a namespace is a warning
    /// (critical from 90% of tcp_max_orphans).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64), allow_hyphen_values = true)]
    pub fin_wait2_sockets: u64,
    /// dead_held: a process holding more than N dead connections is a warning.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u64), allow_hyphen_values = true)]
    pub dead_held_sockets: u64,
    /// keepalive: ESTABLISHED connections idle (no data either way) for more than D,
    /// with keepalive off or at its 2-hour default, are reported (info).
    #[arg(long, value_name = "D", default_value = "10m", value_parser = parse_duration, allow_hyphen_values = true)]
    pub idle: Duration,
}

/// A percentage, 0 to 100.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("invalid percentage '{s}': expected a number from 0 to 100"))?;
    if !(0.0..=100.0).contains(&v) {
        return Err(format!("invalid percentage '{s}': must be from 0 to 100"));
    }
    Ok(v)
}

impl DoctorArgs {
    /// The model's thresholds.
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            close_wait_sockets: self.close_wait_sockets,
            close_wait_age_ns: self.close_wait_age.as_nanos() as u64,
            fd_eta_critical_s: self.fd_eta_critical.as_secs_f64(),
            time_wait_warn_pct: self.time_wait_warn,
            time_wait_critical_pct: self.time_wait_critical,
            fin_wait2_sockets: self.fin_wait2_sockets,
            dead_held_sockets: self.dead_held_sockets,
            idle_ns: self.idle.as_nanos() as u64,
        }
    }

    pub fn check(&self) -> Result<(), String> {
        if self.time_wait_critical < self.time_wait_warn {
            return Err(format!(
                "--time-wait-critical {} is below --time-wait-warn {}",
                self.time_wait_critical, self.time_wait_warn
            ));
        }
        Ok(())
    }
}

/// `ADDR:PORT` (IPv6 as `[::1]:9977`), port 1..=65535.
pub fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    let a: std::net::SocketAddr = s.parse().map_err(|_| {
        format!("invalid address '{s}': expected ADDR:PORT, e.g. 127.0.0.1:9977 or [::1]:9977 (ports 1-65535)")
    })?;
    if a.port() == 0 {
        return Err(format!("invalid address '{s}': port 0 (use 1-65535)"));
    }
    Ok(a)
}

/// Filters shared by every command. All filters combine with AND; repeated ones with OR.
#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct FilterArgs {
    /// IPv4 only.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// IPv6 only.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// Local or remote port (repeatable).
    #[arg(long = "port", value_name = "P", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,
    /// Local port (repeatable).
    #[arg(long = "lport", value_name = "P", value_parser = clap::value_parser!(u16).range(1..))]
    pub lports: Vec<u16>,
    /// Remote port (repeatable).
    #[arg(long = "rport", value_name = "P", value_parser = clap::value_parser!(u16).range(1..))]
    pub rports: Vec<u16>,
    /// Owning process id (repeatable); sockets whose owner is unknown never match.
    #[arg(long = "pid", value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pids: Vec<u32>,
    /// Network namespace by inode, as `readlink /proc/PID/ns/net` prints it (repeatable).
    #[arg(long = "netns", value_name = "INODE", value_parser = parse_netns)]
    pub netns: Vec<u32>,
    /// Container id or a prefix of one, like docker (repeatable).
    #[arg(long = "container", value_name = "ID", value_parser = parse_container)]
    pub containers: Vec<ContainerPrefix>,
    /// cgroup v2 path prefix from the hierarchy's root, by whole components (repeatable).
    #[arg(long = "cgroup", value_name = "PATH", value_parser = parse_cgroup)]
    pub cgroups: Vec<CgroupPrefix>,
}

fn parse_netns(s: &str) -> Result<u32, String> {
    container::parse_netns(s).map_err(|e| e.to_string())
}

fn parse_container(s: &str) -> Result<ContainerPrefix, String> {
    ContainerPrefix::parse(s).map_err(|e| e.to_string())
}

fn parse_cgroup(s: &str) -> Result<CgroupPrefix, String> {
    CgroupPrefix::parse(s).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Keep transitions whose old or new state is S (repeatable; kernel names such as
    /// CLOSE_WAIT, SYN_SENT; case-insensitive).
    #[arg(long = "state", value_name = "S", value_parser = parse_state)]
    pub states: Vec<TcpState>,
    /// One JSON object per line instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Stop after D (`10`, `10s`, `500ms`, `2m`, `1h`), then print the summary.
    #[arg(long, value_name = "D", value_parser = parse_positive_duration)]
    pub duration: Option<Duration>,
    /// Full-width IPv6 address columns.
    #[arg(short = 'w', long)]
    pub wide: bool,
}

/// Parses `10`, `10s`, `500ms`, `2m`, `1h`, `1.5s`; a bare number means seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration '{s}': expected e.g. 10, 10s, 500ms, 2m"))?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" => 1e-6,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(format!(
                "invalid duration '{s}': unknown unit '{unit}' (use ms, s, m or h)"
            ))
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(format!("invalid duration '{s}': too large"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Like [`parse_duration`], but zero is refused.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("invalid duration '{s}': must be greater than 0"));
    }
    Ok(d)
}

pub fn parse_state(s: &str) -> Result<TcpState, String> {
    s.parse()
}

pub fn parse_linger_state(s: &str) -> Result<TcpState, String> {
    let st = parse_state(s)?;
    crate::model::linger::check_states(&[st])?;
    Ok(st)
}

impl clap::ValueEnum for Unit {
    fn value_variants<'a>() -> &'a [Self] {
        &[Unit::Us, Unit::Ms, Unit::S]
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.name()))
    }
}

impl FilterArgs {
    /// The model's filter (states are the command's to add).
    pub fn filter(&self) -> Filter {
        Filter {
            family: match (self.ipv4, self.ipv6) {
                (true, _) => Some(4),
                (_, true) => Some(6),
                _ => None,
            },
            ports: self.ports.clone(),
            lports: self.lports.clone(),
            rports: self.rports.clone(),
            pids: self.pids.clone(),
            states: Vec::new(),
            netns: self.netns.clone(),
            containers: self.containers.clone(),
            cgroups: self.cgroups.clone(),
        }
    }
}

impl HistArgs {
    /// The probe's `BY_*` key.
    pub fn by_code(&self) -> u32 {
        match self.by {
            None => BY_NONE,
            Some(By::Process) => BY_PROCESS,
            Some(By::Rport) => BY_RPORT,
            Some(By::Raddr) => BY_RADDR,
            Some(By::Container) => BY_CONTAINER,
        }
    }

    /// Whether the probe must learn owners (a key or a filter names them).
    pub fn needs_owners(&self) -> bool {
        self.by == Some(By::Process) || !self.filter.pids.is_empty()
    }

    /// What clap cannot check: `hist`'s filters run in the kernel, in lists of at
    /// most `FILTER_MAX`.
    pub fn check(&self) -> Result<(), String> {
        for (name, n) in [
            ("--port", self.filter.ports.len()),
            ("--lport", self.filter.lports.len()),
            ("--rport", self.filter.rports.len()),
            ("--pid", self.filter.pids.len()),
        ] {
            if n > FILTER_MAX {
                return Err(format!(
                    "hist filters in the kernel: at most {FILTER_MAX} values for {name} (got {n})"
                ));
            }
        }
        Ok(())
    }
}

impl ServeArgs {
    /// What clap cannot check: the histograms' filters run in the kernel, as `hist`'s.
    pub fn check(&self) -> Result<(), String> {
        HistArgs {
            filter: self.filter.clone(),
            states: Vec::new(),
            interval: None,
            duration: None,
            by: None,
            unit: Unit::Us,
            json: false,
        }
        .check()
    }
}

impl Cli {
    /// Checks that need more than one value at a time, before anything starts: a
    /// usage error is one line, and exit status 2, as clap's own.
    pub fn check(&self) -> Result<(), String> {
        // `trace`'s options at the top level belong to the default command only
        // (clap's args_conflicts_with_subcommands would refuse the global
        // --log-level before a subcommand too).
        if self.command.is_some() && self.trace != TraceArgs::default() {
            return Err(
                "options before a subcommand are trace's: put them after it (`tcpstate linger --port 80`)"
                    .to_string(),
            );
        }
        match &self.command {
            Some(Command::Hist(h)) => h.check(),
            Some(Command::Serve(s)) => s.check(),
            Some(Command::Doctor(d)) => d.check(),
            Some(Command::Top(t)) => t.check(),
            _ => Ok(()),
        }
    }
}

/// Man pages and completions from these definitions (`cargo xtask dist`).
#[cfg(test)]
mod docs;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["abc", "", "-1", "10x", "1e400", "s", "1..2s"] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
        assert!(parse_positive_duration("0s").is_err());
        assert!(parse_positive_duration("1ms").is_ok());
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn trace_is_the_default() {
        let cli = Cli::try_parse_from(["tcpstate", "--port", "80", "--json"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.trace.filter.ports, vec![80]);
        assert!(cli.trace.json);
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            &["tcpstate", "--port", "0"][..],
            &["tcpstate", "--port", "70000"],
            &["tcpstate", "trace", "--duration", "abc"],
            &["tcpstate", "trace", "--state", "NOPE"],
            &["tcpstate", "--bogus"],
            &["tcpstate", "-4", "-6"],
            &["tcpstate", "linger", "--min-age", "-1"],
            &["tcpstate", "linger", "--interval", "0"],
            &["tcpstate", "linger", "--state", "BOGUS"],
            &["tcpstate", "linger", "--state", "TIME_WAIT"],
            &["tcpstate", "hist", "--state", "NOPE"],
            &["tcpstate", "hist", "--interval", "0"],
            &["tcpstate", "hist", "--unit", "parsecs"],
            &["tcpstate", "hist", "--by", "color"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} accepted");
        }
    }

    #[test]
    fn too_many_kernel_filter_values_are_refused_before_start() {
        let mut args = vec!["tcpstate", "hist"];
        for _ in 0..=FILTER_MAX {
            args.extend(["--port", "80"]);
        }
        let cli = Cli::try_parse_from(&args).unwrap();
        let err = cli.check().unwrap_err();
        assert!(err.contains("--port") && !err.contains('\n'), "{err}");
        args.truncate(args.len() - 2);
        assert!(Cli::try_parse_from(&args).unwrap().check().is_ok());
        // trace filters the rest in userspace: no limit.
        let mut args = vec!["tcpstate", "trace"];
        for _ in 0..=FILTER_MAX {
            args.extend(["--pid", "7"]);
        }
        assert!(Cli::try_parse_from(&args).unwrap().check().is_ok());
    }

    #[test]
    fn filters_and_hist_keys_into_the_model() {
        let cli = Cli::try_parse_from(["tcpstate", "-4", "--lport", "80", "--pid", "9"]).unwrap();
        let f = cli.trace.filter.filter();
        assert_eq!(f.family, Some(4));
        assert_eq!((f.lports, f.pids), (vec![80], vec![9]));
        let cli = Cli::try_parse_from(["tcpstate", "-6"]).unwrap();
        assert_eq!(cli.trace.filter.filter().family, Some(6));
        assert!(Cli::try_parse_from(["tcpstate"])
            .unwrap()
            .trace
            .filter
            .filter()
            .is_empty());
        let Some(Command::Hist(h)) = Cli::try_parse_from(["tcpstate", "hist", "--by", "process"])
            .unwrap()
            .command
        else {
            panic!("not hist")
        };
        assert_eq!(
            (h.by_code(), h.needs_owners(), h.unit),
            (BY_PROCESS, true, Unit::Us)
        );
        let Some(Command::Hist(h)) =
            Cli::try_parse_from(["tcpstate", "hist", "--by", "rport", "--unit", "ms"])
                .unwrap()
                .command
        else {
            panic!("not hist")
        };
        assert_eq!(
            (h.by_code(), h.needs_owners(), h.unit),
            (BY_RPORT, false, Unit::Ms)
        );
    }

    #[test]
    fn log_level_anywhere() {
        let cli = Cli::try_parse_from(["tcpstate", "--log-level", "debug"]).unwrap();
        assert_eq!(cli.log_level, Some(LogLevel::Debug));
        let cli = Cli::try_parse_from(["tcpstate", "linger", "--log-level", "warn"]).unwrap();
        assert_eq!(cli.log_level, Some(LogLevel::Warn));
        let cli = Cli::try_parse_from(["tcpstate", "--log-level", "info", "hist"]).unwrap();
        assert_eq!(cli.log_level, Some(LogLevel::Info));
        assert!(cli.check().is_ok());
        // Trace's options before another command are still refused.
        let cli = Cli::try_parse_from(["tcpstate", "--port", "80", "linger"]).unwrap();
        assert!(cli.check().is_err());
        assert!(Cli::try_parse_from(["tcpstate"])
            .unwrap()
            .log_level
            .is_none());
        assert!(Cli::try_parse_from(["tcpstate", "--log-level", "loud"]).is_err());
    }

    #[test]
    fn serve_defaults_and_bad_values() {
        let cli = Cli::try_parse_from(["tcpstate", "serve"]).unwrap();
        let Some(Command::Serve(s)) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(s.listen.to_string(), "127.0.0.1:9977");
        assert_eq!((s.top, s.interval), (20, Duration::from_secs(5)));
        assert!(!s.pid_labels && s.web_config.is_none());
        let cli = Cli::try_parse_from(["tcpstate", "serve", "--listen", "[::1]:80"]).unwrap();
        assert!(cli.check().is_ok());
        for args in [
            &["tcpstate", "serve", "--listen", "nonsense"][..],
            &["tcpstate", "serve", "--listen", "127.0.0.1:70000"],
            &["tcpstate", "serve", "--listen", "127.0.0.1:0"],
            &["tcpstate", "serve", "--listen", "127.0.0.1"],
            &["tcpstate", "serve", "--top", "0"],
            &["tcpstate", "serve", "--top", "-1"],
            &["tcpstate", "serve", "--interval", "0"],
        ] {
            let e = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn doctor_defaults_and_bad_thresholds() {
        let cli = Cli::try_parse_from(["tcpstate", "doctor"]).unwrap();
        let Some(Command::Doctor(d)) = cli.command else {
            panic!("not doctor")
        };
        assert_eq!(d.thresholds(), Thresholds::default());
        assert_eq!(d.duration, Duration::from_secs(5));
        for args in [
            &["tcpstate", "doctor", "--close-wait-sockets", "-1"][..],
            &["tcpstate", "doctor", "--close-wait-sockets", "many"],
            &["tcpstate", "doctor", "--close-wait-age", "-5m"],
            &["tcpstate", "doctor", "--time-wait-warn", "-1"],
            &["tcpstate", "doctor", "--time-wait-warn", "101"],
            &["tcpstate", "doctor", "--time-wait-critical", "x"],
            &["tcpstate", "doctor", "--duration", "0"],
            &["tcpstate", "doctor", "--netns", "-3"],
            &["tcpstate", "doctor", "--bogus"],
        ] {
            let e = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
        let cli = Cli::try_parse_from([
            "tcpstate",
            "doctor",
            "--time-wait-warn",
            "80",
            "--time-wait-critical",
            "70",
        ])
        .unwrap();
        assert!(cli.check().unwrap_err().contains("--time-wait-critical"));
        assert_eq!(parse_percent("50%"), Ok(50.0));
    }

    #[test]
    fn linger_defaults() {
        let cli = Cli::try_parse_from(["tcpstate", "linger"]).unwrap();
        let Some(Command::Linger(l)) = cli.command else {
            panic!("not linger")
        };
        assert_eq!(l.min_age, Duration::from_secs(5));
        assert_eq!(l.interval, Duration::from_secs(2));
        assert!(l.states.is_empty() && l.duration.is_none() && !l.fail_if_any);
    }

    #[test]
    fn states_and_repeats() {
        let cli = Cli::try_parse_from([
            "tcpstate",
            "trace",
            "--state",
            "close_wait",
            "--state",
            "LISTEN",
            "--pid",
            "7",
            "--pid",
            "9",
        ])
        .unwrap();
        let Some(Command::Trace(t)) = cli.command else {
            panic!("not trace")
        };
        assert_eq!(t.states, vec![TcpState::CloseWait, TcpState::Listen]);
        assert_eq!(t.filter.pids, vec![7, 9]);
    }
}
