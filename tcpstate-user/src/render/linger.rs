//! The linger views: the report table, and JSON lines (a `linger_report` per state,
//! then a `linger` line per process with every socket).

use std::{
    fmt::Write as _,
    io::{self, Write},
    net::IpAddr,
};

use serde::{Serialize, Serializer};

use crate::{
    model::linger::{Group, Report},
    render::format::{comm_text, endpoint, fmt_age, fmt_min_age, thousands},
};

/// Sockets listed per process in the table unless `--all`.
const SHOWN_PER_PROCESS: usize = 3;

fn age_text(ns: u64, lower_bound: bool) -> String {
    format!("{}{}", if lower_bound { ">=" } else { "" }, fmt_age(ns))
}

/// `~40s`, `~25m`, `~3h`, `~2d`: an ETA, rounded.
fn eta_text(s: f64) -> String {
    let s = s.max(0.0);
    if s < 90.0 {
        format!("~{:.0}s", s)
    } else if s < 90.0 * 60.0 {
        format!("~{:.0}m", s / 60.0)
    } else if s < 48.0 * 3600.0 {
        format!("~{:.0}h", s / 3600.0)
    } else {
        format!("~{:.0}d", s / 86_400.0)
    }
}

/// The errno name of an `sk_err` (the ones a dead connection shows), else `errno N`.
pub fn errno_name(e: i32) -> String {
    match e {
        0 => "none".into(),
        libc::ECONNRESET => "ECONNRESET".into(),
        libc::ETIMEDOUT => "ETIMEDOUT".into(),
        libc::EPIPE => "EPIPE".into(),
        libc::ECONNREFUSED => "ECONNREFUSED".into(),
        libc::EHOSTUNREACH => "EHOSTUNREACH".into(),
        libc::ENETUNREACH => "ENETUNREACH".into(),
        libc::ECONNABORTED => "ECONNABORTED".into(),
        e => format!("errno {e}"),
    }
}

/// The diagnosis lines of one process: what its sockets say it did wrong, and its fd
/// headroom, e.g. `1,200 CLOSE_WAIT: read it all, never closed (1,180), stopped
/// reading (20); fd 1,230 of 4,096, full in ~25m at +1.9/s`.
pub fn diagnosis_lines(state: &str, g: &Group) -> Vec<String> {
    let d = &g.diagnosis;
    let mut lines = Vec::new();
    let mut causes = Vec::new();
    if d.read_all_never_closed > 0 {
        causes.push(format!(
            "read it all, never closed ({})",
            thousands(d.read_all_never_closed)
        ));
    }
    if d.stopped_reading > 0 {
        causes.push(format!(
            "stopped reading ({})",
            thousands(d.stopped_reading)
        ));
    }
    if d.dead > 0 {
        let errs: Vec<String> = d
            .errors
            .iter()
            .map(|(e, n)| format!("{} ({})", errno_name(*e), thousands(*n)))
            .collect();
        causes.push(format!(
            "dead connections still held, sk_err {}",
            errs.join(", ")
        ));
    }
    let accepted = g.sockets.len() - d.never_accepted;
    let fd = match (g.fds, g.fd_limit) {
        (Some(fds), Some(limit)) => {
            let mut t = format!(
                "fd {} of {}",
                thousands(fds as usize),
                thousands(limit as usize)
            );
            match (g.fd_exhaustion_s, g.growth_per_s) {
                (Some(eta), Some(gr)) => {
                    let _ = write!(t, ", full in {} at {gr:+.1}/s", eta_text(eta));
                }
                _ => t.push_str(", not growing"),
            }
            Some(t)
        }
        _ => None,
    };
    if accepted > 0 && (!causes.is_empty() || fd.is_some()) {
        let mut l = format!("{} {state}", thousands(accepted));
        if !causes.is_empty() {
            let _ = write!(l, ": {}", causes.join(", "));
        }
        if let Some(fd) = &fd {
            let _ = write!(l, "; {fd}");
        }
        lines.push(l);
    }
    for b in &d.backlogs {
        lines.push(format!(
            "{} {state} never accepted on {} (listener fd {}; accept queue {}/{})",
            thousands(b.count),
            endpoint(b.saddr, b.sport),
            b.listener_fd,
            thousands(b.len as usize),
            thousands(b.max as usize),
        ));
    }
    if accepted == 0 {
        if let Some(fd) = fd {
            lines.push(fd);
        }
    }
    lines
}

/// The human report.
/// `container`: show the CONTAINER column (the holder's, 12 characters as in `docker ps`).
pub fn render_table(r: &Report, all: bool, container: bool, time: &str, out: &mut String) {
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
    if container {
        let _ = write!(out, "{:<12} ", "CONTAINER");
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
        if container {
            let _ = write!(out, "{:<12} ", g.ident.short());
        }
        let _ = writeln!(
            out,
            "{pid:<7} {comm:<16} {:>8}  {:<10} {:<10} {rate}",
            thousands(g.sockets.len()),
            age_text(oldest.age_ns, oldest.lower_bound),
            age_text(newest.age_ns, newest.lower_bound),
        );
        for l in diagnosis_lines(r.state.name(), g) {
            let _ = writeln!(out, "   {l}");
        }
        let shown = if all {
            g.sockets.len()
        } else {
            SHOWN_PER_PROCESS
        };
        for s in g.sockets.iter().take(shown) {
            let fd = s.fd.map_or_else(|| "-".to_string(), |f| f.to_string());
            let _ = write!(
                out,
                "   fd {fd:<5} {} -> {}   age {}",
                endpoint(s.saddr, s.sport),
                endpoint(s.daddr, s.dport),
                age_text(s.age_ns, s.lower_bound)
            );
            if let Some(f) = s.facts {
                if !f.accepted {
                    let _ = write!(
                        out,
                        "   not accepted (listener fd {})",
                        f.listener_fd.unwrap_or(0)
                    );
                } else if f.unread_bytes > 0 {
                    let _ = write!(
                        out,
                        "   {} bytes unread",
                        thousands(f.unread_bytes as usize)
                    );
                }
                if f.sk_err != 0 {
                    let _ = write!(out, "   {}", errno_name(f.sk_err));
                }
            }
            out.push('\n');
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
struct DiagnosisJson {
    read_all_never_closed: usize,
    stopped_reading: usize,
    never_accepted: usize,
    dead: usize,
}

#[derive(Serialize)]
struct ListenerJson {
    listener_fd: u32,
    netns: u32,
    saddr: IpAddr,
    sport: u16,
    never_accepted: usize,
    accept_queue: u32,
    accept_queue_max: u32,
}

#[derive(Serialize)]
struct GroupJson<'a> {
    r#type: &'static str,
    time: &'a str,
    state: &'static str,
    pid: Option<u32>,
    comm: Option<&'a str>,
    cgroup: Option<&'a str>,
    container_id: Option<&'a str>,
    pod_uid: Option<&'a str>,
    pod_namespace: Option<&'a str>,
    pod_name: Option<&'a str>,
    count: usize,
    oldest_ms: f64,
    oldest_is_lower_bound: bool,
    rate_per_s: Option<f64>,
    growth_per_s: Option<f64>,
    fd_limit: Option<u64>,
    fds: Option<u64>,
    fd_exhaustion_s: Option<f64>,
    diagnosis: DiagnosisJson,
    listeners: Vec<ListenerJson>,
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
    accepted: bool,
    listener_fd: Option<u32>,
    eof_read: Option<bool>,
    unread_bytes: Option<u32>,
    last_send_ms: Option<u64>,
    last_recv_ms: Option<u64>,
    last_ack_ms: Option<u64>,
    sk_err: Option<i32>,
    netns: Option<u32>,
}

fn as_text<S: Serializer>(v: &u64, ser: S) -> Result<S::Ok, S::Error> {
    ser.collect_str(v)
}

/// A group's sockets, serialized one by one as the writer takes them: a group of
/// 100k sockets is never held as JSON.
struct SocketsJson<'a> {
    group: &'a Group,
}

impl Serialize for SocketsJson<'_> {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let items = self.group.sockets.iter().map(|s| {
            let f = s.facts;
            SockJson {
                sock: s.cookie,
                fd: s.fd,
                saddr: s.saddr,
                sport: s.sport,
                daddr: s.daddr,
                dport: s.dport,
                age_ms: s.age_ns as f64 / 1e6,
                age_is_lower_bound: s.lower_bound,
                accepted: f.is_none_or(|f| f.accepted),
                listener_fd: f.and_then(|f| f.listener_fd),
                eof_read: f.map(|f| f.eof_read),
                unread_bytes: f.map(|f| f.unread_bytes),
                last_send_ms: f.map(|f| f.last_send_ms),
                last_recv_ms: f.map(|f| f.last_recv_ms),
                last_ack_ms: f.map(|f| f.last_ack_ms),
                sk_err: f.map(|f| f.sk_err),
                netns: f.map(|f| f.netns),
            }
        });
        ser.collect_seq(items)
    }
}

/// One `linger_report` line per state, then one `linger` line per process with every
/// socket, streamed into `out` (a whole report of 100k sockets is never in memory).
pub fn render_json<W: Write>(r: &Report, time: &str, out: &mut W) -> io::Result<()> {
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
        let d = &g.diagnosis;
        let j = GroupJson {
            r#type: "linger",
            time,
            state: r.state.name(),
            pid: g.pid,
            comm: comm.as_deref(),
            cgroup: g.ident.cgroup.as_deref(),
            container_id: g.ident.container_id.as_deref(),
            pod_uid: g.ident.pod_uid.as_deref(),
            pod_namespace: g.ident.pod.as_ref().map(|p| p.namespace.as_str()),
            pod_name: g.ident.pod.as_ref().map(|p| p.name.as_str()),
            count: g.sockets.len(),
            oldest_ms: oldest.map_or(0.0, |s| s.age_ns as f64 / 1e6),
            oldest_is_lower_bound: oldest.is_some_and(|s| s.lower_bound),
            rate_per_s: g.rate_per_s,
            growth_per_s: g.growth_per_s,
            fd_limit: g.fd_limit,
            fds: g.fds,
            fd_exhaustion_s: g.fd_exhaustion_s,
            diagnosis: DiagnosisJson {
                read_all_never_closed: d.read_all_never_closed,
                stopped_reading: d.stopped_reading,
                never_accepted: d.never_accepted,
                dead: d.dead,
            },
            listeners: d
                .backlogs
                .iter()
                .map(|b| ListenerJson {
                    listener_fd: b.listener_fd,
                    netns: b.netns,
                    saddr: b.saddr,
                    sport: b.sport,
                    never_accepted: b.count,
                    accept_queue: b.len,
                    accept_queue_max: b.max,
                })
                .collect(),
            sockets: SocketsJson { group: g },
        };
        serde_json::to_writer(&mut *out, &j)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tcpstate_common::{state, FdRecord, FD_NONE};

    use super::*;
    use crate::model::{
        events::TcpState,
        filter::Filter,
        linger::{
            build, set_fd_headroom,
            tests::{clk, held, holder, table},
        },
    };

    #[test]
    fn table_and_json_render() {
        let t = table();
        let mut list: Vec<(u64, FdRecord)> = (1..=3)
            .map(|c| (c, holder(4242, 36 + c as u32, b"leaky-api")))
            .collect();
        list.push((9, holder(917, 5, b"python3")));
        let mut h = held(&list);
        let f = Filter::default();
        let mut r = build(&t, &mut h, &[TcpState::CloseWait], &clk(10), 0, &f);
        set_fd_headroom(&mut r, |pid| {
            (Some(4096), Some(if pid == 4242 { 1230 } else { 9 }))
        });
        let mut s = String::new();
        render_table(&r[0], false, false, "12:00:00", &mut s);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines[0],
            "CLOSE_WAIT longer than 0s: 5 sockets in 2 processes (and orphaned ones) at 12:00:00"
        );
        assert!(lines[2].starts_with("4242    leaky-api               3  9.0s       1.0s"));
        assert_eq!(
            lines[3],
            "   3 CLOSE_WAIT: read it all, never closed (3); fd 1,230 of 4,096, full in ~3h at +0.3/s"
        );
        assert!(lines[4].contains("fd 37    10.0.0.5:8080 -> 10.0.0.9:50001   age 9.0s"));
        assert!(s.contains("917     python3                 1  >=10.0s"));
        assert!(s.contains(
            "   1 CLOSE_WAIT: read it all, never closed (1); fd 9 of 4,096, not growing"
        ));
        assert!(s.contains("-       (orphaned)              1"), "{s}");
        assert!(!s.contains("CONTAINER"));
        // With the CONTAINER column: the holder's short id, `-` on the host.
        let id = "5e1f0c0ffee0".repeat(6);
        r[0].groups[0].ident.container_id = Some(id);
        let mut c = String::new();
        render_table(&r[0], false, true, "12:00:00", &mut c);
        let cl: Vec<&str> = c.lines().collect();
        assert!(cl[1].starts_with("CONTAINER    PID     COMM"), "{c}");
        assert!(cl[2].starts_with("5e1f0c0ffee0 4242    leaky-api"), "{c}");
        assert!(c.contains("-            917     python3"), "{c}");
        assert!(c.contains("-            -       (orphaned)"), "{c}");
        let mut j = Vec::new();
        render_json(&r[0], "T", &mut j).unwrap();
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
        assert_eq!(v[1]["fd_limit"], 4096);
        assert_eq!(v[1]["fds"], 1230);
        assert_eq!(v[1]["diagnosis"]["read_all_never_closed"], 3);
        assert_eq!(v[1]["sockets"][0]["fd"], 37);
        assert_eq!(v[1]["sockets"][0]["sock"], "1");
        assert_eq!(v[1]["sockets"][0]["age_is_lower_bound"], false);
        assert_eq!(v[1]["sockets"][0]["eof_read"], true);
        assert_eq!(v[1]["sockets"][0]["accepted"], true);
        let orphan = v
            .iter()
            .find(|x| x["pid"].is_null() && x["type"] == "linger")
            .unwrap();
        assert_eq!(orphan["comm"], serde_json::Value::Null);
        assert_eq!(orphan["sockets"][0]["eof_read"], serde_json::Value::Null);
    }

    #[test]
    fn never_accepted_and_dead_lines() {
        let t = table();
        let mut q = holder(30, FD_NONE, b"srv");
        q.queued = 1;
        q.listener_fd = 3;
        q.ack_backlog = 5;
        q.max_ack_backlog = 128;
        q.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut dead = holder(30, 7, b"srv");
        dead.state = state::CLOSE as u8;
        dead.sk_err = libc::ECONNRESET;
        let mut h = held(&[(20, q), (21, q), (22, dead)]);
        let f = Filter::default();
        let r = build(
            &t,
            &mut h,
            &[TcpState::CloseWait, TcpState::Close],
            &clk(10),
            0,
            &f,
        );
        let g = r[0].groups.iter().find(|g| g.pid == Some(30)).unwrap();
        assert_eq!(
            diagnosis_lines("CLOSE_WAIT", g),
            vec![
                "2 CLOSE_WAIT never accepted on 127.0.0.1:8080 (listener fd 3; accept queue 5/128)"
            ]
        );
        assert_eq!(
            diagnosis_lines("CLOSE", &r[1].groups[0]),
            vec!["1 CLOSE: dead connections still held, sk_err ECONNRESET (1)"]
        );
        let mut j = Vec::new();
        render_json(&r[0], "T", &mut j).unwrap();
        let text = String::from_utf8(j).unwrap();
        let line = text.lines().find(|l| l.contains("\"pid\":30")).unwrap();
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["sockets"][0]["accepted"], false);
        assert_eq!(v["sockets"][0]["fd"], serde_json::Value::Null);
        assert_eq!(v["sockets"][0]["listener_fd"], 3);
        assert_eq!(v["listeners"][0]["accept_queue_max"], 128);
    }

    #[test]
    fn etas_round() {
        assert_eq!(eta_text(40.2), "~40s");
        assert_eq!(eta_text(1500.0), "~25m");
        assert_eq!(eta_text(4.0 * 3600.0), "~4h");
        assert_eq!(eta_text(5.0 * 86_400.0), "~5d");
        assert_eq!(errno_name(104), "ECONNRESET");
        assert_eq!(errno_name(9999), "errno 9999");
    }

    #[test]
    fn json_keys_in_their_order() {
        let t = table();
        let mut h = held(&[(1, holder(4242, 37, b"leaky"))]);
        let r = build(
            &t,
            &mut h,
            &[TcpState::CloseWait],
            &clk(10),
            0,
            &Filter::default(),
        );
        let mut j = Vec::new();
        render_json(&r[0], "T", &mut j).unwrap();
        let text = String::from_utf8(j).unwrap();
        let line = text.lines().find(|l| l.contains("\"pid\":4242")).unwrap();
        assert_eq!(
            line,
            "{\"type\":\"linger\",\"time\":\"T\",\"state\":\"CLOSE_WAIT\",\"pid\":4242,\
             \"comm\":\"leaky\",\"cgroup\":null,\"container_id\":null,\"pod_uid\":null,\
             \"pod_namespace\":null,\"pod_name\":null,\"count\":1,\"oldest_ms\":9000.0,\"oldest_is_lower_bound\":false,\
             \"rate_per_s\":null,\"growth_per_s\":0.1,\"fd_limit\":null,\"fds\":null,\
             \"fd_exhaustion_s\":null,\"diagnosis\":{\"read_all_never_closed\":1,\
             \"stopped_reading\":0,\"never_accepted\":0,\"dead\":0},\"listeners\":[],\
             \"sockets\":[{\"sock\":\"1\",\"fd\":37,\"saddr\":\"10.0.0.5\",\
             \"sport\":8080,\"daddr\":\"10.0.0.9\",\"dport\":50001,\"age_ms\":9000.0,\
             \"age_is_lower_bound\":false,\"accepted\":true,\"listener_fd\":null,\
             \"eof_read\":true,\"unread_bytes\":0,\"last_send_ms\":0,\"last_recv_ms\":0,\
             \"last_ack_ms\":0,\"sk_err\":0,\"netns\":0}]}"
        );
    }
}
