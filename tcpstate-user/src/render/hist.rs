//! The hist views: bcc-style log2 histograms with count, percentiles and max, and
//! JSON lines (`hist` per state and key, `timewait_gauge`).

use std::{
    fmt::Write as _,
    io::{self},
};

use serde::Serialize;

use crate::{
    model::{
        hist::{EndedCounts, Gauge, Key},
        histogram::{Histogram, Unit},
    },
    render::format::{comm_text, endpoint, fmt_ns, ms, thousands},
};

fn key_text(k: &Key) -> String {
    match k {
        Key::None => String::new(),
        Key::Process(0, _) => " [owner unknown]".into(),
        Key::Process(p, c) => format!(" [pid {p} {}]", comm_text(c)),
        Key::Rport(p) => format!(" [rport {p}]"),
        Key::Raddr(a) => format!(" [raddr {a}]"),
        Key::Cgroup(id) => format!(" [cgroup id {id}]"),
        Key::Container(c) => format!(
            " [container {}]",
            c.as_deref().map_or("-", |c| &c[..c.len().min(12)])
        ),
    }
}

fn key_json(k: &Key) -> Option<serde_json::Value> {
    match k {
        Key::None => None,
        Key::Process(0, _) => Some(serde_json::json!({"pid": null, "comm": null})),
        Key::Process(p, c) => Some(serde_json::json!({"pid": p, "comm": comm_text(c)})),
        Key::Rport(p) => Some(serde_json::json!(p)),
        Key::Raddr(a) => Some(serde_json::json!(a.to_string())),
        Key::Cgroup(id) => Some(serde_json::json!({ "cgroup_id": id })),
        Key::Container(c) => Some(serde_json::json!({ "container_id": c })),
    }
}

#[derive(Serialize)]
struct BucketJson {
    lo: u64,
    hi: u64,
    count: u64,
}

/// Where a report goes: text, or JSON lines.
pub struct HistView {
    pub json: bool,
    pub unit: Unit,
    pub text: String,
    pub lines: Vec<u8>,
}

impl HistView {
    pub fn new(json: bool, unit: Unit) -> Self {
        Self {
            json,
            unit,
            text: String::new(),
            lines: Vec::new(),
        }
    }

    /// The report's bytes, to write.
    pub fn bytes(&self) -> &[u8] {
        if self.json {
            &self.lines
        } else {
            self.text.as_bytes()
        }
    }

    pub fn header(&mut self, interval: bool, time: &str) {
        if !self.json {
            let _ = writeln!(
                self.text,
                "time in state, {} at {}:",
                if interval {
                    "this interval"
                } else {
                    "since start"
                },
                time
            );
        }
    }

    /// One histogram.
    pub fn one(
        &mut self,
        state: &str,
        key: &Key,
        h: &Histogram,
        ended: Option<EndedCounts>,
        time: &str,
    ) -> io::Result<()> {
        let unit = self.unit;
        let (p50, p90, p99) = (h.quantile_ns(0.5), h.quantile_ns(0.9), h.quantile_ns(0.99));
        if self.json {
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
                key: key_json(key),
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
            serde_json::to_writer(&mut self.lines, &j)?;
            self.lines.push(b'\n');
            return Ok(());
        }
        let text = &mut self.text;
        let _ = write!(
            text,
            "\n{state}{} (n={}",
            key_text(key),
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
            render_rows(h, unit, text);
        }
        Ok(())
    }

    /// The TIME_WAIT gauge: how many now, and the destinations with most.
    pub fn gauge(&mut self, g: &Gauge, time: &str) -> io::Result<()> {
        let top = g.top(5);
        if self.json {
            let dests: Vec<serde_json::Value> = top
                .iter()
                .map(|((a, p), c)| {
                    serde_json::json!({"daddr": a.to_string(), "dport": p, "count": c,
                        "share_of_ports": *c as f64 / g.port_range as f64})
                })
                .collect();
            serde_json::to_writer(
                &mut self.lines,
                &serde_json::json!({"type": "timewait_gauge", "time": time,
                    "count": g.total, "port_range": g.port_range,
                    "destinations": dests}),
            )?;
            self.lines.push(b'\n');
            return Ok(());
        }
        let text = &mut self.text;
        let _ = write!(text, "TIME_WAIT now: {}", thousands(g.total as usize));
        for ((a, p), c) in top {
            let _ = write!(
                text,
                "; {} {} of {} local ports ({:.1}%)",
                endpoint(a, p),
                thousands(c as usize),
                thousands(g.port_range as usize),
                c as f64 * 100.0 / g.port_range as f64
            );
        }
        text.push('\n');
        Ok(())
    }
}

/// The bcc-style rows of a histogram.
pub fn render_rows(h: &Histogram, unit: Unit, out: &mut String) {
    let rows = h.log2_rows(unit);
    let max = rows.iter().map(|r| r.2).max().unwrap_or(0).max(1);
    let _ = writeln!(out, "{:>24} : count     distribution", unit.label());
    for (lo, hi, c) in rows {
        let stars = (c * 40).div_ceil(max) as usize;
        let stars = if c == 0 { 0 } else { stars.max(1) };
        let _ = writeln!(
            out,
            "{lo:>10} -> {hi:<10} : {c:<9} |{:<40}|",
            "*".repeat(stars)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log2_rows_like_bcc() {
        let mut h = Histogram::default();
        h.record_ns(40_000_000); // 40 ms = 40000 us
        h.record_ns(50_000_000);
        h.record_ns(3_000); // 3 us
        let mut s = String::new();
        render_rows(&h, Unit::Us, &mut s);
        assert!(s.lines().next().unwrap().trim_start().starts_with("usecs"));
        assert!(
            s.contains(
                "     32768 -> 65535      : 2         |****************************************|"
            ),
            "{s}"
        );
    }

    #[test]
    fn keys_read_as_before() {
        let mut c = [0u8; 16];
        c[..3].copy_from_slice(b"a\x1bb");
        assert_eq!(key_text(&Key::Process(7, c)), " [pid 7 a\\x1bb]");
        assert_eq!(key_text(&Key::Process(0, c)), " [owner unknown]");
        assert_eq!(
            key_json(&Key::Process(7, c)),
            Some(serde_json::json!({"pid": 7, "comm": "a\\x1bb"}))
        );
        assert_eq!(key_text(&Key::Rport(80)), " [rport 80]");
        let id = "a".repeat(64);
        assert_eq!(
            key_text(&Key::Container(Some(id.clone()))),
            format!(" [container {}]", &id[..12])
        );
        assert_eq!(key_text(&Key::Container(None)), " [container -]");
        assert_eq!(
            key_json(&Key::Container(None)),
            Some(serde_json::json!({"container_id": null}))
        );
    }
}
