//! The bench's output: the table the README's Overhead section shows (or one JSON
//! object with everything), the paced rows, the taxes, the scale row, and each of
//! issue 21's targets met or missed with the measured figure.

use std::path::Path;

use serde_json::{json, Value};

use super::PROFILED;
use super::{
    median,
    rates::RateRow,
    scale::Scale,
    tax::{TaxRow, TAX_COMMANDS},
    tracer::Kind,
    Sample, Variant, REFS,
};

pub struct Results<'a> {
    pub tcpstate: &'a Path,
    pub variants: &'a [Variant],
    pub samples: &'a [Vec<Sample>],
    pub syscall: &'a [TaxRow],
    pub timer: Option<&'a TaxRow>,
    pub scale: Option<&'a Scale>,
    pub rates: &'a [RateRow],
}

/// The kernel the bench ran on: its figures hold for that build only.
fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn rate_json(r: &RateRow) -> Value {
    json!({
        "transitions_per_s": r.target,
        "variant": r.variant,
        "made_per_s": num(r.made, 0),
        "bpf_ns_per_transition": num(r.bpf_ns, 1),
        "cpu_ns_per_transition": num(r.cpu_ns, 1),
        "total_ns_per_transition": num(r.total_ns(), 1),
        "cpu_pct_of_core": num(r.cpu_pct, 2),
        "vs_bpftrace": num(r.vs_bpftrace, 2),
    })
}

/// A figure rounded to `digits` decimals, or null when it was not measured.
fn num(v: f64, digits: i32) -> Value {
    if v.is_finite() {
        let m = 10f64.powi(digits);
        json!((v * m).round() / m)
    } else {
        Value::Null
    }
}

fn variant_row(v: &Variant, s: &[Sample]) -> Value {
    let m = |f: &dyn Fn(&Sample) -> f64| median(s.iter().map(f).collect());
    let tracer = v.is_tracer();
    let tcpstate = matches!(v.kind, Kind::Tcpstate { .. });
    let opt = |x: f64, d: i32| if tracer { num(x, d) } else { Value::Null };
    // Per-program figures, by name, over the rounds.
    let mut names: Vec<String> = Vec::new();
    for x in s {
        for p in &x.cost.progs {
            if !names.contains(&p.name) {
                names.push(p.name.clone());
            }
        }
    }
    let programs: Vec<Value> = names
        .iter()
        .map(|n| {
            let get = |x: &Sample| x.cost.progs.iter().find(|p| &p.name == n).cloned();
            json!({
                "name": n,
                "ns_per_run": num(m(&|x| get(x).map_or(f64::NAN, |p| p.run_time_ns as f64 / p.run_cnt.max(1) as f64)), 1),
                "runs_per_transition": num(m(&|x| get(x).map_or(f64::NAN, |p| p.run_cnt as f64 / x.transitions.max(1) as f64)), 4),
                "ns_per_transition": num(m(&|x| get(x).map_or(f64::NAN, |p| p.run_time_ns as f64 / x.transitions.max(1) as f64)), 1),
            })
        })
        .collect();
    let cpu_per_tr = m(&|x| x.cpu_ns_per_tr());
    json!({
        "variant": v.name,
        "conn_per_s": m(&|x| x.conns_per_s).round() as u64,
        "ratio": num(m(&|x| x.ratio), 3),
        "events_per_s": if tcpstate { num(m(&|x| x.cost.events as f64 / x.cost.alive_s), 0) } else { Value::Null },
        "lost": if tcpstate { json!(s.iter().map(|x| x.cost.lost).max().unwrap_or(0)) } else { Value::Null },
        "cpu_ms_attached": opt(m(&|x| x.cost.cpu_ns as f64 / 1e6), 1),
        // ms per million transitions is ns per transition: both keys, one figure.
        "cpu_ms_per_million_transitions": opt(cpu_per_tr, 1),
        "cpu_ns_per_transition": opt(cpu_per_tr, 1),
        "cpu_ns_per_event": if tcpstate { num(m(&|x| if x.cost.events > 0 { x.cost.cpu_ns as f64 / x.cost.events as f64 } else { f64::NAN }), 1) } else { Value::Null },
        "bpf_ns_per_transition": opt(m(&|x| x.bpf_ns_per_tr()), 1),
        "total_ns_per_transition": opt(m(&|x| x.total_ns_per_tr()), 1),
        "vs_bpftrace": opt(m(&|x| x.vs[0]), 2),
        "vs_calib_count": opt(m(&|x| x.vs[1]), 2),
        "vs_calib_empty": opt(m(&|x| x.vs[2]), 2),
        "programs": if tracer { json!(programs) } else { Value::Null },
        "peak_rss_kib": if tracer { json!(m(&|x| x.cost.peak_rss_kib as f64) as u64) } else { Value::Null },
        "rss_at_end_kib": if tracer { json!(m(&|x| x.cost.rss_kib as f64) as u64) } else { Value::Null },
        "startup_ms": opt(m(&|x| x.cost.startup_ms), 0),
        // serve's: every round's scrapes, and the slowest.
        "scrapes": if s.iter().any(|x| x.cost.scrapes.is_some()) {
            json!({
                "count": s.iter().filter_map(|x| x.cost.scrapes.as_ref()).map(|c| c.count).sum::<u64>(),
                "failed": s.iter().filter_map(|x| x.cost.scrapes.as_ref()).map(|c| c.failed).sum::<u64>(),
                "max_ms": num(s.iter().filter_map(|x| x.cost.scrapes.as_ref()).map(|c| c.max_ms).fold(0.0, f64::max), 1),
            })
        } else { Value::Null },
    })
}

fn tax_json(t: &TaxRow) -> Value {
    json!({
        "command": t.command,
        "rate_without": num(t.rate_without, 0),
        "rate_with": num(t.rate_with, 0),
        "slowdown_pct": num(t.slowdown_pct, 2),
        "bpf_ns": num(t.bpf_ns, 1),
        "timer_prog_ns_per_run": num(t.ns_per_run, 1),
    })
}

fn scale_json(s: &Scale) -> Value {
    json!({
        "sockets": s.sockets,
        "setup_s": num(s.setup_s, 1),
        "trace_attach_ms": num(s.trace_attach_ms, 0),
        "trace_peak_rss_kib_first_2s": s.trace_peak_rss_kib,
        "trace_cpu_ms_first_2s": num(s.trace_cpu_ms_2s, 0),
        "trace_busy_ms": num(s.trace_busy_ms, 0),
        "linger_wall_ms": num(s.linger_wall_ms, 0),
        "linger_peak_rss_kib": s.linger_peak_rss_kib,
        "linger_count": s.linger_count,
        "linger_bytes_per_socket": num(s.linger_peak_rss_kib as f64 * 1024.0 / s.sockets.max(1) as f64, 0),
        "serve_attach_ms": num(s.serve_attach_ms, 0),
        "serve_scrape_ms": num(s.serve_scrape_ms, 1),
        "serve_scrape_max_ms": num(s.serve_scrape_max_ms, 1),
        "serve_series": s.serve_series,
        "serve_peak_rss_kib": s.serve_peak_rss_kib,
        "top_first_screen_ms": num(s.top_first_screen_ms, 0),
        "top_cpu_pct": num(s.top_cpu_pct, 2),
        "top_busy_cpu_pct": num(s.top_busy_cpu_pct, 2),
        "top_peak_rss_kib": s.top_peak_rss_kib,
        "top_close_wait": s.top_close_wait,
    })
}

/// Issue 21's targets: (what, measured, met). Targets whose figure was not measured
/// are left out.
fn targets(rows: &[Value], r: &Results) -> Vec<(String, String, bool)> {
    let row = |name: &str| rows.iter().find(|x| x["variant"] == name);
    let f = |name: &str, key: &str| row(name).and_then(|x| x[key].as_f64());
    let mut t = Vec::new();
    let mut ratio = |name: &str, what: &str, max: f64| {
        if let Some(x) = f(name, "vs_bpftrace") {
            t.push((
                format!("{what} <= {max}x the bpftrace count"),
                format!("{x:.2}x"),
                x <= max,
            ));
        }
    };
    ratio("trace --json > tmpfs", "trace --json", 1.5);
    ratio("hist", "hist", 1.2);
    ratio("linger", "linger", 1.0);
    ratio(super::SERVE, "serve, always on", 1.5);
    if let (Some(a), Some(b)) = (
        f("trace --json > tmpfs", "total_ns_per_transition"),
        f("libbpf-tools tcpstates", "total_ns_per_transition"),
    ) {
        t.push((
            "trace --json >= 30x cheaper than tcpstates".into(),
            format!("{:.1}x", b / a),
            b / a >= 30.0,
        ));
    }
    if let Some(x) = f("trace --json > tmpfs", "cpu_ns_per_event") {
        t.push((
            "trace --json > tmpfs: tracer CPU <= 150 ns per event".into(),
            format!("{x:.0} ns"),
            x <= 150.0,
        ));
    }
    for name in ["trace --json > tmpfs", "trace > /dev/null"] {
        if let Some(x) = row(name).and_then(|x| x["lost"].as_u64()) {
            t.push((format!("{name}: 0 lost"), format!("{x} lost"), x == 0));
        }
    }
    for s in r.syscall {
        t.push((
            format!("syscall tax of {} within 3%", s.command),
            format!("{:+.1}%", s.slowdown_pct),
            s.slowdown_pct <= 3.0,
        ));
    }
    if let Some(x) = f("trace > /dev/null", "startup_ms") {
        t.push((
            "startup to attached, warm, <= 60 ms".into(),
            format!("{x:.0} ms"),
            x <= 60.0,
        ));
    }
    if let Some(s) = r.scale {
        let mib = s.trace_peak_rss_kib as f64 / 1024.0;
        let n = s.sockets;
        // The figures are for 500,000 sockets; scaled linearly to n.
        let k = n as f64 / 500_000.0;
        t.push((
            format!("{n} existing sockets: owners seeded in <= {:.2} s", 0.8 * k),
            format!("busy until {:.0} ms", s.trace_busy_ms),
            s.trace_busy_ms <= 800.0 * k,
        ));
        t.push((
            format!("{n} existing sockets: trace <= 32 MiB"),
            format!("{mib:.1} MiB"),
            mib <= 32.0,
        ));
        let per = s.linger_peak_rss_kib as f64 * 1024.0 / n.max(1) as f64;
        t.push((
            format!("{n} sockets: linger --duration 1 in <= {:.2} s", 2.0 * k),
            format!("{:.0} ms", s.linger_wall_ms),
            s.linger_wall_ms <= 2000.0 * k,
        ));
        t.push((
            format!("{n} sockets: linger <= 100 B per socket (peak RSS / sockets)"),
            format!("{per:.0} B"),
            per <= 100.0,
        ));
        // 50 ms at 100k, 250 ms at 500k: 50 ms + 0.5 us per socket beyond 100k.
        let limit = if n <= 100_000 {
            50.0
        } else {
            50.0 + (n - 100_000) as f64 * 0.0005
        };
        t.push((
            format!("{n} sockets: a serve scrape in <= {limit:.0} ms"),
            format!(
                "{:.1} ms (max {:.1})",
                s.serve_scrape_ms, s.serve_scrape_max_ms
            ),
            s.serve_scrape_max_ms <= limit,
        ));
        if n >= 100_000 {
            t.push((
                format!("{n} sockets: top's CPU < 2% of a core (issue 23), idle and with churn"),
                format!(
                    "{:.2}% idle, {:.2}% with churn",
                    s.top_cpu_pct, s.top_busy_cpu_pct
                ),
                s.top_cpu_pct < 2.0 && s.top_busy_cpu_pct < 2.0,
            ));
        }
    }
    t
}

pub fn report(r: &Results, json_out: bool) {
    let rows: Vec<Value> = r
        .variants
        .iter()
        .zip(r.samples)
        .map(|(v, s)| variant_row(v, s))
        .collect();
    let targets = targets(&rows, r);
    if json_out {
        println!(
            "{}",
            json!({
                "type": "bench",
                "tcpstate": r.tcpstate.display().to_string(),
                "kernel": kernel(),
                "rounds": r.samples[0].len(),
                "references": REFS.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>(),
                "variants": rows,
                "rates": r.rates.iter().map(rate_json).collect::<Vec<_>>(),
                "syscall_tax": r.syscall.iter().map(tax_json).collect::<Vec<_>>(),
                "timer_tax": r.timer.map(tax_json),
                "scale": r.scale.map(scale_json),
                "profile": profile(&rows).iter().map(|(p, c, w)| json!({"part": p, "cost_ns": c, "ns_per_run_without": w})).collect::<Vec<_>>(),
                "targets": targets.iter().map(|(w, m, ok)| json!({"target": w, "measured": m, "met": ok})).collect::<Vec<_>>(),
            })
        );
        return;
    }
    println!("tracers: {}; kernel {}", r.tcpstate.display(), kernel());
    println!(
        "{:<32} {:>7} {:>6} {:>9} {:>5} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>10} {:>10} {:>8}",
        "VARIANT", "CONN/S", "RATIO", "EVENTS/S", "LOST", "BPF NS/TR", "CPU NS/TR", "NS/TR",
        "CPU/EV", "X BPFTR", "X COUNT", "X EMPTY", "PEAK RSS", "END RSS", "STARTUP"
    );
    let cell = |r: &Value, k: &str, d: usize, suffix: &str| match r[k].as_f64() {
        Some(x) => format!("{x:.d$}{suffix}"),
        None => "-".to_string(),
    };
    let mib = |r: &Value, k: &str| {
        r[k].as_u64()
            .map_or("-".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
    };
    for x in &rows {
        println!(
            "{:<32} {:>7} {:>6} {:>9} {:>5} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>10} {:>10} {:>8}",
            x["variant"].as_str().unwrap_or("?"),
            x["conn_per_s"],
            cell(x, "ratio", 3, ""),
            cell(x, "events_per_s", 0, ""),
            cell(x, "lost", 0, ""),
            cell(x, "bpf_ns_per_transition", 0, ""),
            cell(x, "cpu_ns_per_transition", 0, ""),
            cell(x, "total_ns_per_transition", 0, ""),
            cell(x, "cpu_ns_per_event", 0, ""),
            cell(x, "vs_bpftrace", 2, ""),
            cell(x, "vs_calib_count", 2, ""),
            cell(x, "vs_calib_empty", 2, ""),
            mib(x, "peak_rss_kib"),
            mib(x, "rss_at_end_kib"),
            cell(x, "startup_ms", 0, " ms"),
        );
    }
    println!("\nBPF programs (median over rounds): ns per run, runs per transition");
    for x in &rows {
        let Some(progs) = x["programs"].as_array() else {
            continue;
        };
        let list: Vec<String> = progs
            .iter()
            .map(|p| {
                format!(
                    "{} {} ns x{}",
                    p["name"].as_str().unwrap_or("?"),
                    cell(p, "ns_per_run", 0, ""),
                    cell(p, "runs_per_transition", 3, "")
                )
            })
            .collect();
        println!(
            "  {:<32} {}",
            x["variant"].as_str().unwrap_or("?"),
            list.join("; ")
        );
    }
    for x in rows.iter().filter(|x| !x["scrapes"].is_null()) {
        let c = &x["scrapes"];
        println!(
            "  {:<32} {} scrapes, {} failed, slowest {} ms",
            x["variant"].as_str().unwrap_or("?"),
            c["count"],
            c["failed"],
            c["max_ms"]
        );
    }
    let parts = profile(&rows);
    if !parts.is_empty() {
        println!(
            "\nPROBE PARTS ({PROFILED}'s primary program, ns per run: the full program's time \
             minus its time without the part, same rounds)"
        );
        for (part, cost, without) in &parts {
            println!("  {part:<24} {cost:>6.0} ns   (without it: {without:.0} ns per run)");
        }
    }
    if !r.rates.is_empty() {
        println!(
            "\n{:<10} {:<32} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7}",
            "PACED TR/S",
            "VARIANT",
            "MADE TR/S",
            "BPF NS/TR",
            "CPU NS/TR",
            "NS/TR",
            "X BPFTR",
            "CPU %"
        );
        for x in r.rates {
            println!(
                "{:<10} {:<32} {:>9.0} {:>9.0} {:>9.0} {:>7.0} {:>7.2} {:>6.2}%",
                x.target,
                x.variant,
                x.made,
                x.bpf_ns,
                x.cpu_ns,
                x.total_ns(),
                x.vs_bpftrace,
                x.cpu_pct
            );
        }
    }
    if !r.syscall.is_empty() {
        println!(
            "\n{:<32} {:>14} {:>14} {:>9}",
            "SYSCALL TAX (getppid loop)", "CALLS/S WITHOUT", "WITH", "SLOWDOWN"
        );
        for s in r.syscall {
            println!(
                "{:<32} {:>14.0} {:>14.0} {:>+8.1}%",
                s.command, s.rate_without, s.rate_with, s.slowdown_pct
            );
        }
        debug_assert_eq!(r.syscall.len(), TAX_COMMANDS.len());
    }
    if let Some(t) = r.timer {
        println!(
            "TIMER TAX of {} (timer-wheel loop): {:.0} timers/s without, {:.0} with ({:+.1}% time per timer); \
             its timer program {:.0} ns per run, {:.0} ns per timer of the loop",
            t.command, t.rate_without, t.rate_with, t.slowdown_pct, t.ns_per_run, t.bpf_ns
        );
    }
    if let Some(s) = r.scale {
        println!(
            "\nSCALE with {} CLOSE_WAIT sockets (made in {:.1} s): trace attached in {:.0} ms, \
             {:.1} MiB peak and {:.0} ms CPU in its first 2 s, busy until {:.0} ms; \
             linger --duration 1: {:.0} ms wall, {:.1} MiB peak, reported {}",
            s.sockets,
            s.setup_s,
            s.trace_attach_ms,
            s.trace_peak_rss_kib as f64 / 1024.0,
            s.trace_cpu_ms_2s,
            s.trace_busy_ms,
            s.linger_wall_ms,
            s.linger_peak_rss_kib as f64 / 1024.0,
            s.linger_count.map_or("?".to_string(), |n| n.to_string()),
        );
        println!(
            "  serve: attached in {:.0} ms; a scrape {:.1} ms (median of 5, max {:.1}), {} series, \
             {:.1} MiB peak",
            s.serve_attach_ms,
            s.serve_scrape_ms,
            s.serve_scrape_max_ms,
            s.serve_series,
            s.serve_peak_rss_kib as f64 / 1024.0
        );
        println!(
            "  top: first screen with the {} sockets in {:.0} ms; then {:.2}% of a core over {} s \
             left open with nothing moving, {:.2}% over {} s of {} connections/s, {:.1} MiB peak",
            s.top_close_wait.map_or("?".to_string(), |n| n.to_string()),
            s.top_first_screen_ms,
            s.top_cpu_pct,
            super::scale::TOP_IDLE_S,
            s.top_busy_cpu_pct,
            super::scale::TOP_BUSY_S,
            super::scale::TOP_BUSY_RATE,
            s.top_peak_rss_kib as f64 / 1024.0
        );
    }
    if !targets.is_empty() {
        println!("\nTARGETS (issue 21)");
        for (what, measured, ok) in &targets {
            println!(
                "  {:<6} {what}: {measured}",
                if *ok { "met" } else { "MISSED" }
            );
        }
    }
}

/// The per-part profile (`--profile`): (part, its cost, the primary's ns per run
/// without it), the full program first (its cost: its whole time per run).
fn profile(rows: &[Value]) -> Vec<(String, f64, f64)> {
    let primary = |x: &Value| -> Option<f64> {
        x["programs"]
            .as_array()?
            .iter()
            .find(|p| p["name"] == "inet_sock_set_state")?["ns_per_run"]
            .as_f64()
    };
    let Some(full) = rows
        .iter()
        .find(|x| x["variant"] == PROFILED)
        .and_then(primary)
    else {
        return Vec::new();
    };
    let prefix = format!("{PROFILED} without ");
    let mut out: Vec<(String, f64, f64)> = rows
        .iter()
        .filter_map(|x| {
            let part = x["variant"].as_str()?.strip_prefix(&prefix)?;
            let without = primary(x)?;
            Some((part.to_string(), full - without, without))
        })
        .collect();
    if !out.is_empty() {
        out.insert(0, ("full program".into(), full, 0.0));
    }
    out
}
