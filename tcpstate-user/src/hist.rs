//! `tcpstate hist`: how long sockets spend in each state, TIME_WAIT included.
//!
//! Everything is aggregated in the kernel (exact counts whatever the load; see
//! `add_sample` in tcpstate-ebpf), TIME_WAIT included: the probe records each
//! hand-over to a timewait socket (FIN_WAIT2/CLOSING->CLOSE), and ends it when the
//! socket's timer fires (timer_expire_entry) or a new connection takes its 4-tuple.
//! Userspace reads the histograms at each report, sweeps candidates whose end the
//! probe could not see, and lists TIME_WAIT sockets once per report for the gauge.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{self, BufWriter, Write},
    net::IpAddr,
    time::Duration,
};

use serde::Serialize;
use tcpstate_common::{
    state, Event, TwKey, TwLive, BY_NONE, BY_PROCESS, BY_RADDR, BY_RPORT, FILTER_MAX, FLAG_HIST,
    FLAG_OWNERS, FLAG_TIMEWAIT, FLAG_TRACK, HIST_TW_REUSED,
};

use crate::{
    cli::{By, HistArgs},
    events::{StateNum, TcpState},
    filter::Filter,
    histogram::{fmt_ns, ms, BucketJson, Histogram, Unit},
    linger::thousands,
    loader::{LoadOptions, Probe},
    output::{sanitize_comm, Clock},
    session::{monotonic_ns, Consumer, Session},
    sockdiag,
};

/// A candidate still recorded this long after its hand-over ended unseen: its timer
/// would have fired by now. TCP_TIMEWAIT_LEN is 60 s, and the timer wheel rounds a
/// 60 s timer up by up to one granule of its level: 512 jiffies at HZ=100 and 250
/// (5.1 s and 2 s), 4096 at HZ=1000 (4.1 s).
const TW_UNSEEN_AFTER: Duration = Duration::from_secs(66);

/// The `--by` key of a histogram.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    None,
    Process(u32, String),
    Rport(u16),
    Raddr(IpAddr),
}

impl Key {
    fn text(&self) -> String {
        match self {
            Key::None => String::new(),
            Key::Process(0, _) => " [owner unknown]".into(),
            Key::Process(p, c) => format!(" [pid {p} {c}]"),
            Key::Rport(p) => format!(" [rport {p}]"),
            Key::Raddr(a) => format!(" [raddr {a}]"),
        }
    }
    fn json(&self) -> Option<serde_json::Value> {
        match self {
            Key::None => None,
            Key::Process(0, _) => Some(serde_json::json!({"pid": null, "comm": null})),
            Key::Process(p, c) => Some(serde_json::json!({"pid": p, "comm": c})),
            Key::Rport(p) => Some(serde_json::json!(p)),
            Key::Raddr(a) => Some(serde_json::json!(a.to_string())),
        }
    }
}

fn comm_text(comm: &[u8]) -> String {
    let mut s = String::new();
    sanitize_comm(comm, &mut s);
    s
}

fn proc_comm(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/comm"))
        .map(|b| comm_text(b.strip_suffix(b"\n").unwrap_or(&b)))
        .unwrap_or_else(|_| "?".into())
}

/// How TIME_WAIT sockets ended.
#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct EndedCounts {
    /// Their timer fired after TCP_TIMEWAIT_LEN.
    pub expired: u64,
    /// A new connection took the 4-tuple (tcp_tw_reuse, or a new SYN).
    pub reused: u64,
    /// Neither, seen when the timer should long have fired: a reset or kill in
    /// TIME_WAIT, or a hand-over that made no timewait socket (tcp_max_tw_buckets).
    /// Their end time is unknown, so they are not in the histogram.
    pub unseen: u64,
}

#[derive(Debug, Default)]
struct Interval {
    kernel: HashMap<(u8, Key), Histogram>,
    tw: HashMap<Key, (Histogram, EndedCounts)>,
}

struct Hist<W: Write> {
    args: HistArgs,
    by: u32,
    filter: Filter,
    want_tw: bool,
    current: Interval,
    /// Latest TIME_WAIT listing, for the gauge: (daddr, dport) -> count.
    gauge: HashMap<(IpAddr, u16), u64>,
    gauge_total: u64,
    port_range: u64,
    /// Candidates still in TIME_WAIT at the last sweep.
    tw_open: u64,
    last_report_ns: u64,
    clock: Clock,
    out: W,
}

impl<W: Write> Hist<W> {
    /// `addr`: the remote address, or for --by process the owner's comm as the probe
    /// saw it (the process may be gone by the report).
    fn key(&self, pid: u32, port: u16, family: u16, addr: &[u8; 16]) -> Key {
        match self.by {
            BY_PROCESS => Key::Process(
                pid,
                if pid == 0 {
                    String::new()
                } else if addr[0] != 0 {
                    comm_text(addr)
                } else {
                    proc_comm(pid)
                },
            ),
            BY_RPORT => Key::Rport(port),
            BY_RADDR => Key::Raddr(crate::events::addr(family, addr)),
            _ => Key::None,
        }
    }

    /// Candidates whose end the probe could not see, and the TIME_WAIT gauge.
    fn sweep_timewait(&mut self, probe: &mut Probe) -> io::Result<()> {
        let now = monotonic_ns();
        let (open, unseen) = probe.sweep_timewaits(now, TW_UNSEEN_AFTER.as_nanos() as u64)?;
        self.tw_open = open;
        for (k, v) in unseen {
            let (k, v): (TwKey, TwLive) = (k, v);
            let addr = if self.by == BY_PROCESS {
                v.comm
            } else {
                k.daddr
            };
            let key = self.key(v.pid, k.dport, k.family, &addr);
            self.current.tw.entry(key).or_default().1.unseen += 1;
        }
        self.gauge.clear();
        self.gauge_total = 0;
        let (gauge, total, filter) = (&mut self.gauge, &mut self.gauge_total, &self.filter);
        sockdiag::for_each_tcp(1 << state::TIME_WAIT, |s| {
            let fam = if s.daddr.is_ipv4() { 4 } else { 6 };
            if filter.matches_endpoints(fam, s.sport, s.dport) {
                *gauge.entry((s.daddr, s.dport)).or_default() += 1;
                *total += 1;
            }
        })
    }

    fn read_kernel(&mut self, probe: &mut Probe) -> io::Result<()> {
        for (k, h) in probe.take_hists()? {
            // The probe keeps the family in `port` for --by raddr.
            let key = self.key(k.pid, k.port as u16, k.port as u16, &k.addr);
            if k.state == state::TIME_WAIT as u32 || k.state == HIST_TW_REUSED {
                let (th, e) = self.current.tw.entry(key).or_default();
                th.merge(&h);
                if k.state == HIST_TW_REUSED {
                    e.reused += h.count;
                } else {
                    e.expired += h.count;
                }
            } else {
                self.current
                    .kernel
                    .entry((k.state as u8, key))
                    .or_default()
                    .merge(&h);
            }
        }
        Ok(())
    }

    fn wanted(&self, st: u8) -> bool {
        self.args.states.is_empty() || self.args.states.iter().any(|s| s.number() == i32::from(st))
    }

    fn report(&mut self, probe: &mut Probe) -> io::Result<()> {
        self.read_kernel(probe)?;
        if self.want_tw {
            self.sweep_timewait(probe)?;
        }
        let now = monotonic_ns();
        let iv = std::mem::take(&mut self.current);
        let mut time = String::new();
        self.clock.utc_rfc3339(now, &mut time);
        let unit = self.args.unit;
        let mut text = String::new();
        let mut json = Vec::new();
        let mut kernel: Vec<_> = iv
            .kernel
            .into_iter()
            .filter(|((st, _), _)| self.wanted(*st))
            .collect();
        kernel.sort_by(|((sa, ka), ha), ((sb, kb), hb)| {
            TcpState::try_from(i32::from(*sa))
                .ok()
                .cmp(&TcpState::try_from(i32::from(*sb)).ok())
                .then(hb.count.cmp(&ha.count))
                .then(ka.cmp(kb))
        });
        if !self.args.json {
            let _ = writeln!(
                text,
                "time in state, {} at {}:",
                if self.args.interval.is_some() {
                    "this interval"
                } else {
                    "since start"
                },
                time
            );
        }
        for ((st, key), h) in &kernel {
            let name = StateNum(*st).to_string();
            self.one(&name, key, h, None, unit, &time, &mut text, &mut json)?;
        }
        if self.want_tw {
            let mut tw: Vec<_> = iv.tw.into_iter().collect();
            tw.sort_by(|(ka, (ha, _)), (kb, (hb, _))| hb.count.cmp(&ha.count).then(ka.cmp(kb)));
            if tw.is_empty() {
                tw.push((Key::None, Default::default()));
            }
            for (key, (h, e)) in &tw {
                self.one(
                    "TIME_WAIT",
                    key,
                    h,
                    Some(*e),
                    unit,
                    &time,
                    &mut text,
                    &mut json,
                )?;
            }
            self.render_gauge(&time, &mut text, &mut json)?;
        }
        self.out.write_all(if self.args.json {
            &json
        } else {
            text.as_bytes()
        })?;
        self.out.flush()?;
        self.last_report_ns = now;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn one(
        &self,
        state: &str,
        key: &Key,
        h: &Histogram,
        ended: Option<EndedCounts>,
        unit: Unit,
        time: &str,
        text: &mut String,
        json: &mut Vec<u8>,
    ) -> io::Result<()> {
        let (p50, p90, p99) = (h.quantile_ns(0.5), h.quantile_ns(0.9), h.quantile_ns(0.99));
        if self.args.json {
            #[derive(Serialize)]
            struct J<'a> {
                r#type: &'static str,
                time: &'a str,
                state: &'a str,
                #[serde(skip_serializing_if = "Option::is_none")]
                key: Option<serde_json::Value>,
                unit: &'static str,
                count: u64,
                p50_ms: Option<f64>,
                p90_ms: Option<f64>,
                p99_ms: Option<f64>,
                max_ms: Option<f64>,
                buckets: Vec<BucketJson>,
                #[serde(skip_serializing_if = "Option::is_none")]
                ended: Option<EndedCounts>,
            }
            let j = J {
                r#type: "hist",
                time,
                state,
                key: key.json(),
                unit: unit.name(),
                count: h.count,
                p50_ms: ms(p50),
                p90_ms: ms(p90),
                p99_ms: ms(p99),
                max_ms: ms((h.count > 0).then_some(h.max_ns)),
                buckets: h
                    .log2_rows(unit)
                    .into_iter()
                    .map(|(lo, hi, count)| BucketJson { lo, hi, count })
                    .collect(),
                ended,
            };
            serde_json::to_writer(&mut *json, &j)?;
            json.push(b'\n');
            return Ok(());
        }
        let _ = write!(
            text,
            "\n{state}{} (n={}",
            key.text(),
            thousands(h.count as usize)
        );
        if h.count > 0 {
            let _ = write!(
                text,
                ", p50 {}, p90 {}, p99 {}, max {}",
                fmt_ns(p50.unwrap_or(0)),
                fmt_ns(p90.unwrap_or(0)),
                fmt_ns(p99.unwrap_or(0)),
                fmt_ns(h.max_ns)
            );
        }
        if let Some(e) = ended {
            let _ = write!(
                text,
                "; ended: {} expired, {} reused, {} unseen",
                thousands(e.expired as usize),
                thousands(e.reused as usize),
                thousands(e.unseen as usize),
            );
        }
        text.push_str(")\n");
        if h.count > 0 {
            h.render_rows(unit, text);
        }
        Ok(())
    }

    fn render_gauge(&self, time: &str, text: &mut String, json: &mut Vec<u8>) -> io::Result<()> {
        let mut top: Vec<_> = self.gauge.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        top.truncate(5);
        if self.args.json {
            let dests: Vec<serde_json::Value> = top
                .iter()
                .map(|((a, p), c)| {
                    serde_json::json!({"daddr": a.to_string(), "dport": p, "count": c,
                        "share_of_ports": **c as f64 / self.port_range as f64})
                })
                .collect();
            serde_json::to_writer(
                &mut *json,
                &serde_json::json!({"type": "timewait_gauge", "time": time,
                    "count": self.gauge_total, "port_range": self.port_range,
                    "destinations": dests}),
            )?;
            json.push(b'\n');
            return Ok(());
        }
        let _ = write!(
            text,
            "TIME_WAIT now: {}",
            thousands(self.gauge_total as usize)
        );
        for ((a, p), c) in top {
            let ep = crate::linger::endpoint(*a, *p);
            let _ = write!(
                text,
                "; {ep} {} of {} local ports ({:.1}%)",
                thousands(*c as usize),
                thousands(self.port_range as usize),
                *c as f64 * 100.0 / self.port_range as f64
            );
        }
        text.push('\n');
        Ok(())
    }
}

impl<W: Write> Consumer for Hist<W> {
    /// The probe sends nothing to `hist`: everything is aggregated in the kernel.
    fn event(&mut self, _ev: &Event) -> io::Result<()> {
        Ok(())
    }

    fn interval(&mut self, probe: &mut Probe) -> io::Result<()> {
        self.report(probe)
    }
}

/// How many histogram keys the probe preallocates. With a key: up to 1024, but at most ~64 MiB of
/// kernel memory on hosts with many CPUs (each key holds a 4.5 KiB histogram per CPU).
fn hist_keys(by: u32) -> u32 {
    let per_key = std::mem::size_of::<tcpstate_common::Hist>() as u64
        * aya::util::nr_cpus().map_or(1, |n| n as u64);
    match by {
        // The probe uses a per-CPU array instead (HIST_SPILL).
        BY_NONE => 1,
        _ => ((64 << 20) / per_key).clamp(64, 1024) as u32,
    }
}

fn local_port_range() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u64>().ok());
            Some(it.next()??.abs_diff(it.next()??) + 1)
        })
        .unwrap_or(28232)
}

pub async fn run(args: HistArgs) -> anyhow::Result<()> {
    for (name, n) in [
        ("--port", args.filter.ports.len()),
        ("--lport", args.filter.lports.len()),
        ("--rport", args.filter.rports.len()),
        ("--pid", args.filter.pids.len()),
    ] {
        if n > FILTER_MAX {
            clap::Error::raw(
                clap::error::ErrorKind::TooManyValues,
                format!("hist filters in the kernel: at most {FILTER_MAX} values for {name}\n"),
            )
            .exit();
        }
    }
    let want_tw = args.states.is_empty() || args.states.contains(&TcpState::TimeWait);
    let filter = Filter::new(&args.filter, &[]);
    let by = match args.by {
        None => BY_NONE,
        Some(By::Process) => BY_PROCESS,
        Some(By::Rport) => BY_RPORT,
        Some(By::Raddr) => BY_RADDR,
    };
    // Owners only when a key or filter needs them: learning them costs the accept
    // probe and a task read per owner-context transition.
    let owners = by == BY_PROCESS || !args.filter.pids.is_empty();
    let opts = LoadOptions {
        flags: FLAG_HIST
            | FLAG_TRACK
            | if owners { FLAG_OWNERS } else { 0 }
            | if want_tw { FLAG_TIMEWAIT } else { 0 },
        hist_by: by,
        filter: filter.kernel(),
        // Nothing is streamed to `hist`.
        ring_bytes: 16 << 10,
        hist_keys: hist_keys(by),
        ..LoadOptions::default()
    };
    let mut session = Session::start("aggregating time in state", &opts, owners)?;
    let mut hist = Hist {
        by,
        filter,
        want_tw,
        current: Interval::default(),
        gauge: HashMap::new(),
        gauge_total: 0,
        port_range: local_port_range(),
        tw_open: 0,
        last_report_ns: monotonic_ns(),
        clock: Clock::new(),
        out: BufWriter::new(io::stdout().lock()),
        args,
    };
    let duration = hist.args.duration;
    let interval = hist.args.interval;
    session.run(&mut hist, duration, interval).await?;
    if interval.is_none() {
        hist.report(&mut session.probe)?;
    }
    let summary = session.final_summary();
    if hist.args.json {
        crate::output::write_summary_json(&mut hist.out, &summary)?;
    } else {
        hist.out.flush()?;
        let c = session.probe.counters();
        eprintln!(
            "{}; TIME_WAIT: {} hand-overs, {} still open (not counted), {} expired in FIN_WAIT2 (orphans, not TIME_WAIT)",
            crate::output::summary_text(&summary),
            c.tw_candidates,
            hist.tw_open,
            c.tw_not_timewait
        );
    }
    Ok(())
}
