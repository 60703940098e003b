//! `tcpstate hist`: how long sockets spend in each state, TIME_WAIT included.
//!
//! Every state but TIME_WAIT is aggregated in the kernel (exact counts whatever the
//! load; see `add_sample` in tcpstate-ebpf). TIME_WAIT comes from [`TimeWaits`]: the
//! probe reports hand-overs and reuses, sock_diag polls every second see the timewait
//! sockets live and die.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::{self, BufWriter, Write},
    net::IpAddr,
    time::Duration,
};

use serde::Serialize;
use tcpstate_common::{
    state, Event, BY_NONE, BY_PROCESS, BY_RADDR, BY_RPORT, EV_TW_CANDIDATE, EV_TW_REUSED,
    FILTER_MAX, FLAG_HIST, FLAG_TIMEWAIT,
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
    timewait::{Ended, Sample, Sighting, TimeWaits},
};

/// How often TIME_WAIT sockets are listed at most (the end-time resolution of
/// resets). A dump costs in proportion to all TIME_WAIT sockets on the host, so the
/// period stretches to keep dumping under 1/POLL_BUDGET of one CPU.
const TW_POLL: Duration = Duration::from_secs(1);
const POLL_BUDGET: u64 = 100;

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

#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct EndedCounts {
    pub expired: u64,
    pub reused: u64,
    pub reset: u64,
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
    tw: TimeWaits,
    want_tw: bool,
    current: Interval,
    /// Latest TIME_WAIT dump, for the gauge: (daddr, dport) -> count.
    gauge: HashMap<(IpAddr, u16), u64>,
    gauge_total: u64,
    port_range: u64,
    last_report_ns: u64,
    next_poll_ns: u64,
    /// Current poll period, and the longest one since the last report (the
    /// resolution of this report's reset times).
    poll_ns: u64,
    worst_poll_ns: u64,
    clock: Clock,
    out: W,
}

impl<W: Write> Hist<W> {
    fn tw_key(&self, s: &Sample) -> Key {
        match self.by {
            BY_PROCESS => Key::Process(s.origin.pid, comm_text(&s.origin.comm)),
            BY_RPORT => Key::Rport(s.origin.dport),
            BY_RADDR => Key::Raddr(crate::events::addr(s.origin.family, &s.origin.daddr)),
            _ => Key::None,
        }
    }

    fn record_tw(&mut self, s: Sample) {
        let key = self.tw_key(&s);
        let (h, e) = self.current.tw.entry(key).or_default();
        h.record_ns(s.dur_ns);
        match s.ended {
            Ended::Expired => e.expired += 1,
            Ended::Reused => e.reused += 1,
            Ended::Reset => e.reset += 1,
        }
    }

    fn poll_timewait(&mut self, probe: &mut Probe) -> io::Result<()> {
        let dump_ns = monotonic_ns();
        let socks = sockdiag::dump_tcp(1 << state::TIME_WAIT)?;
        let now = monotonic_ns();
        self.poll_ns = (TW_POLL.as_nanos() as u64).max(POLL_BUDGET * (now - dump_ns));
        self.worst_poll_ns = self.worst_poll_ns.max(self.poll_ns);
        self.next_poll_ns = dump_ns + self.poll_ns;
        let seen: Vec<Sighting> = socks
            .iter()
            .map(|s| Sighting {
                cookie: s.cookie,
                expires_ms: s.expires_ms,
            })
            .collect();
        let (samples, forget) = self.tw.poll(&seen, dump_ns, now);
        for s in samples {
            self.record_tw(s);
        }
        probe.forget_timewaits(&forget);
        self.gauge.clear();
        self.gauge_total = 0;
        for s in &socks {
            let fam = if s.daddr.is_ipv4() { 4 } else { 6 };
            let ok = self.filter.matches_endpoints(fam, s.sport, s.dport);
            if ok {
                *self.gauge.entry((s.daddr, s.dport)).or_default() += 1;
                self.gauge_total += 1;
            }
        }
        Ok(())
    }

    fn read_kernel(&mut self, probe: &mut Probe) -> io::Result<()> {
        for (k, h) in probe.take_hists()? {
            let key = match self.by {
                BY_PROCESS => Key::Process(
                    k.pid,
                    if k.pid == 0 {
                        String::new()
                    } else {
                        proc_comm(k.pid)
                    },
                ),
                BY_RPORT => Key::Rport(k.port as u16),
                // The probe keeps the family in `port` for --by raddr.
                BY_RADDR => Key::Raddr(crate::events::addr(k.port as u16, &k.addr)),
                _ => Key::None,
            };
            self.current
                .kernel
                .entry((k.state as u8, key))
                .or_default()
                .merge(&h);
        }
        Ok(())
    }

    fn wanted(&self, st: u8) -> bool {
        self.args.states.is_empty() || self.args.states.iter().any(|s| s.number() == i32::from(st))
    }

    fn report(&mut self, probe: &mut Probe) -> io::Result<()> {
        self.read_kernel(probe)?;
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
        self.worst_poll_ns = self.poll_ns;
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
                #[serde(skip_serializing_if = "Option::is_none")]
                end_resolution_ms: Option<u64>,
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
                end_resolution_ms: ended.map(|_| self.worst_poll_ns / 1_000_000),
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
                "; ended early: {} reused, {} reset; end resolution {}",
                thousands(e.reused as usize),
                thousands(e.reset as usize),
                fmt_ns(self.worst_poll_ns)
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
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        if ev.flags & EV_TW_REUSED != 0 {
            if let Some(s) = self.tw.reused(ev.cookie, ev.ts_ns) {
                self.record_tw(s);
            }
        } else if ev.flags & EV_TW_CANDIDATE != 0 {
            self.tw.candidate(ev);
        }
        Ok(())
    }

    fn interval(&mut self, probe: &mut Probe) -> io::Result<()> {
        if self.want_tw {
            self.poll_timewait(probe)?;
        }
        if let Some(iv) = self.args.interval {
            if monotonic_ns().saturating_sub(self.last_report_ns) + 50_000_000
                >= iv.as_nanos() as u64
            {
                self.report(probe)?;
            }
        }
        Ok(())
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
    let opts = LoadOptions {
        flags: FLAG_HIST | if want_tw { FLAG_TIMEWAIT } else { 0 },
        hist_by: by,
        filter: filter.kernel(),
        ..LoadOptions::default()
    };
    let mut session = Session::start("aggregating time in state", &opts, true)?;
    let now = monotonic_ns();
    let mut hist = Hist {
        by,
        filter,
        tw: TimeWaits::default(),
        want_tw,
        current: Interval::default(),
        gauge: HashMap::new(),
        gauge_total: 0,
        port_range: local_port_range(),
        last_report_ns: now,
        next_poll_ns: now,
        poll_ns: TW_POLL.as_nanos() as u64,
        worst_poll_ns: TW_POLL.as_nanos() as u64,
        clock: Clock::new(),
        out: BufWriter::new(io::stdout().lock()),
        args,
    };
    let duration = hist.args.duration;
    let result = session.run(&mut hist, duration, Some(TW_POLL)).await;
    result?;
    if hist.args.interval.is_none() {
        if hist.want_tw {
            hist.poll_timewait(&mut session.probe)?;
        }
        hist.report(&mut session.probe)?;
    }
    let summary = session.final_summary();
    if hist.args.json {
        crate::output::write_summary_json(&mut hist.out, &summary)?;
    } else {
        hist.out.flush()?;
        eprintln!(
            "{}; {} TIME_WAIT still open (not counted), {} FIN_WAIT2/CLOSING->CLOSE were not TIME_WAIT",
            crate::output::summary_text(&summary),
            hist.tw.pending(),
            hist.tw.not_timewait
        );
    }
    Ok(())
}
