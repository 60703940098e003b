//! The linger views: the report table, and JSON lines (a `linger_report` per state,
//! then a `linger` line per process with every socket).

use std::{
    fmt::Write as _,
    io::{self, Write},
    net::IpAddr,
};

use serde::{Serialize, Serializer};

use crate::{
    model::{
        linger::{Group, Report},
        sockets::SocketTable,
    },
    render::format::{comm_text, endpoint, fmt_age, fmt_min_age, thousands},
};

/// Sockets listed per process in the table unless `--all`.
const SHOWN_PER_PROCESS: usize = 3;

fn age_text(ns: u64, lower_bound: bool) -> String {
    format!("{}{}", if lower_bound { ">=" } else { "" }, fmt_age(ns))
}

/// The human report.
pub fn render_table(r: &Report, table: &SocketTable, all: bool, time: &str, out: &mut String) {
    let n = r.count();
    let procs = r.processes();
    let _ = write!(
        out,
        "{} longer than {}: {} socket{}",
        r.state,
        fmt_min_age(r.min_age_ns),
        thousands(n),
        if n == 1 { "" } else { "s" }
    );
    if n > 0 {
        let _ = write!(
            out,
            " in {} process{}",
            thousands(procs),
            if procs == 1 { "" } else { "es" }
        );
        if r.groups.iter().any(|g| g.pid.is_none()) {
            out.push_str(" (and orphaned ones)");
        }
    }
    let _ = writeln!(out, " at {time}");
    if n == 0 {
        return;
    }
    let _ = writeln!(
        out,
        "{:<7} {:<16} {:>8}  {:<10} {:<10} RATE",
        "PID", "COMM", "SOCKETS", "OLDEST", "NEWEST"
    );
    for g in &r.groups {
        let (oldest, newest) = (g.sockets.first().unwrap(), g.sockets.last().unwrap());
        let rate = g
            .rate_per_s
            .map_or_else(|| "-".to_string(), |r| format!("{r:+.1}/s"));
        let (pid, comm) = match g.pid {
            Some(p) => (p.to_string(), comm_text(&g.comm)),
            None => ("-".to_string(), "(orphaned)".to_string()),
        };
        let _ = writeln!(
            out,
            "{pid:<7} {comm:<16} {:>8}  {:<10} {:<10} {rate}",
            thousands(g.sockets.len()),
            age_text(oldest.age_ns, oldest.lower_bound),
            age_text(newest.age_ns, newest.lower_bound),
        );
        let shown = if all {
            g.sockets.len()
        } else {
            SHOWN_PER_PROCESS
        };
        for s in g.sockets.iter().take(shown) {
            let Some(l) = table.get(s.cookie) else {
                continue;
            };
            let fd = s.fd.map_or_else(|| "-".to_string(), |f| f.to_string());
            let _ = writeln!(
                out,
                "   fd {fd:<5} {} -> {}   age {}",
                endpoint(l.saddr, l.sport),
                endpoint(l.daddr, l.dport),
                age_text(s.age_ns, s.lower_bound)
            );
        }
        if g.sockets.len() > shown {
            let _ = writeln!(
                out,
                "   ... ({} more; --all to list)",
                thousands(g.sockets.len() - shown)
            );
        }
    }
}

#[derive(Serialize)]
struct ReportJson<'a> {
    r#type: &'static str,
    time: &'a str,
    state: &'static str,
    min_age_ms: f64,
    count: usize,
    processes: usize,
}

#[derive(Serialize)]
struct GroupJson<'a> {
    r#type: &'static str,
    time: &'a str,
    state: &'static str,
    pid: Option<u32>,
    comm: Option<&'a str>,
    count: usize,
    oldest_ms: f64,
    oldest_is_lower_bound: bool,
    rate_per_s: Option<f64>,
    sockets: SocketsJson<'a>,
}

#[derive(Serialize)]
struct SockJson {
    /// The cookie, as a string (JSON numbers lose u64 precision in many readers).
    #[serde(serialize_with = "as_text")]
    sock: u64,
    fd: Option<u32>,
    saddr: IpAddr,
    sport: u16,
    daddr: IpAddr,
    dport: u16,
    age_ms: f64,
    age_is_lower_bound: bool,
}

fn as_text<S: Serializer>(v: &u64, ser: S) -> Result<S::Ok, S::Error> {
    ser.collect_str(v)
}

/// A group's sockets, serialized one by one as the writer takes them: a group of
/// 100k sockets is never held as JSON.
struct SocketsJson<'a> {
    group: &'a Group,
    table: &'a SocketTable,
}

impl Serialize for SocketsJson<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let items = self.group.sockets.iter().filter_map(|s| {
            let l = self.table.get(s.cookie)?;
            Some(SockJson {
                sock: s.cookie,
                fd: s.fd,
                saddr: l.saddr,
                sport: l.sport,
                daddr: l.daddr,
                dport: l.dport,
                age_ms: s.age_ns as f64 / 1e6,
                age_is_lower_bound: s.lower_bound,
            })
        });
        ser.collect_seq(items)
    }
}

/// One `linger_report` line per state, then one `linger` line per process with every
/// socket, streamed into `out` (a whole report of 100k sockets is never in memory).
pub fn render_json<W: Write>(
    r: &Report,
    table: &SocketTable,
    time: &str,
    out: &mut W,
) -> io::Result<()> {
    let head = ReportJson {
        r#type: "linger_report",
        time,
        state: r.state.name(),
        min_age_ms: r.min_age_ns as f64 / 1e6,
        count: r.count(),
        processes: r.processes(),
    };
    serde_json::to_writer(&mut *out, &head)?;
    out.write_all(b"\n")?;
    for g in &r.groups {
        let oldest = g.sockets.first();
        let comm = g.pid.map(|_| comm_text(&g.comm));
        let j = GroupJson {
            r#type: "linger",
            time,
            state: r.state.name(),
            pid: g.pid,
            comm: comm.as_deref(),
            count: g.sockets.len(),
            oldest_ms: oldest.map_or(0.0, |s| s.age_ns as f64 / 1e6),
            oldest_is_lower_bound: oldest.is_some_and(|s| s.lower_bound),
            rate_per_s: g.rate_per_s,
            sockets: SocketsJson { group: g, table },
        };
        serde_json::to_writer(&mut *out, &j)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tcpstate_common::FdRecord;

    use super::*;
    use crate::model::{
        events::TcpState,
        filter::Filter,
        linger::{
            build,
            tests::{held, holder, table, S},
        },
    };

    #[test]
    fn table_and_json_render() {
        let t = table();
        let mut list: Vec<(u64, FdRecord)> = (1..=3)
            .map(|c| (c, holder(4242, 36 + c as u32, b"leaky-api")))
            .collect();
        list.push((9, holder(917, 5, b"python3")));
        let h = held(&list);
        let f = Filter::default();
        let r = build(&t, &h, &[TcpState::CloseWait], 10 * S, 0, &f);
        let mut s = String::new();
        render_table(&r[0], &t, false, "12:00:00", &mut s);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines[0],
            "CLOSE_WAIT longer than 0s: 5 sockets in 2 processes (and orphaned ones) at 12:00:00"
        );
        assert!(lines[2].starts_with("4242    leaky-api               3  9.0s       1.0s"));
        assert!(lines[3].contains("fd 37    10.0.0.5:8080 -> 10.0.0.9:50001   age 9.0s"));
        assert!(s.contains("917     python3                 1  >=10.0s"));
        assert!(s.contains("-       (orphaned)              1"), "{s}");
        let mut j = Vec::new();
        render_json(&r[0], &t, "T", &mut j).unwrap();
        let v: Vec<serde_json::Value> = String::from_utf8(j)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(v[0]["type"], "linger_report");
        assert_eq!(v[0]["count"], 5);
        assert_eq!(v[1]["type"], "linger");
        assert_eq!(v[1]["pid"], 4242);
        assert_eq!(v[1]["count"], 3);
        assert_eq!(v[1]["oldest_ms"], 9000.0);
        assert_eq!(v[1]["sockets"][0]["fd"], 37);
        assert_eq!(v[1]["sockets"][0]["sock"], "1");
        assert_eq!(v[1]["sockets"][0]["age_is_lower_bound"], false);
        let orphan = v
            .iter()
            .find(|x| x["pid"].is_null() && x["type"] == "linger");
        assert_eq!(orphan.unwrap()["comm"], serde_json::Value::Null);
    }

    #[test]
    fn json_keys_in_their_order() {
        let t = table();
        let h = held(&[(1, holder(4242, 37, b"leaky"))]);
        let r = build(
            &t,
            &h,
            &[TcpState::CloseWait],
            10 * S,
            0,
            &Filter::default(),
        );
        let mut j = Vec::new();
        render_json(&r[0], &t, "T", &mut j).unwrap();
        let text = String::from_utf8(j).unwrap();
        let line = text.lines().find(|l| l.contains("\"pid\":4242")).unwrap();
        assert_eq!(
            line,
            "{\"type\":\"linger\",\"time\":\"T\",\"state\":\"CLOSE_WAIT\",\"pid\":4242,\
             \"comm\":\"leaky\",\"count\":1,\"oldest_ms\":9000.0,\"oldest_is_lower_bound\":false,\
             \"rate_per_s\":null,\"sockets\":[{\"sock\":\"1\",\"fd\":37,\"saddr\":\"10.0.0.5\",\
             \"sport\":8080,\"daddr\":\"10.0.0.9\",\"dport\":50001,\"age_ms\":9000.0,\
             \"age_is_lower_bound\":false}]}"
        );
    }
}
