//! Output: the transition table, JSON lines, and the summary, written into reused
//! buffers (no allocation per event) and safe for terminals and pipes.

use std::{
    fmt::Write as _,
    io::{self, Write},
    net::IpAddr,
};

use serde::Serialize;
use tcpstate_common::Event;

use crate::events::{addrs, display_family, prev_ms, StateNum};

/// Appends `comm` (NUL-padded bytes) to `out`, escaping everything but printable ASCII:
/// a process name can hold escape sequences, which must not reach a terminal raw.
pub fn sanitize_comm(comm: &[u8], out: &mut String) {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    for &b in &comm[..end] {
        match b {
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
}

/// Converts kernel monotonic timestamps to wall-clock text, caching the formatted
/// second so that a burst of events costs one calendar conversion.
pub struct Clock {
    /// CLOCK_REALTIME - CLOCK_MONOTONIC at start, in ns.
    offset_ns: i128,
    /// Local time zone offset at start, in seconds.
    local_offset_s: i64,
    utc_sec: i64,
    utc_text: String,
    local_sec: i64,
    local_text: String,
}

impl Clock {
    pub fn new() -> Self {
        let real = clock_ns(libc::CLOCK_REALTIME);
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        Self::with_offsets(real - mono, local_utc_offset())
    }

    pub fn with_offsets(offset_ns: i128, local_offset_s: i64) -> Self {
        Self {
            offset_ns,
            local_offset_s,
            utc_sec: i64::MIN,
            utc_text: String::new(),
            local_sec: i64::MIN,
            local_text: String::new(),
        }
    }

    fn wall(&self, mono_ns: u64) -> (i64, u32) {
        let ns = mono_ns as i128 + self.offset_ns;
        (
            ns.div_euclid(1_000_000_000) as i64,
            ns.rem_euclid(1_000_000_000) as u32,
        )
    }

    /// `2026-11-22T12:01:02.123456Z`
    pub fn utc_rfc3339(&mut self, mono_ns: u64, out: &mut String) {
        let (sec, nsec) = self.wall(mono_ns);
        if sec != self.utc_sec {
            self.utc_sec = sec;
            self.utc_text.clear();
            let (y, mo, d) = civil_from_days(sec.div_euclid(86_400));
            let t = sec.rem_euclid(86_400);
            let _ = write!(
                self.utc_text,
                "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
                t / 3600,
                t / 60 % 60,
                t % 60
            );
        }
        out.push_str(&self.utc_text);
        let _ = write!(out, ".{:06}Z", nsec / 1000);
    }

    /// `12:01:02.123` in the local time zone.
    pub fn local_hms(&mut self, mono_ns: u64, out: &mut String) {
        let (sec, nsec) = self.wall(mono_ns);
        let sec = sec + self.local_offset_s;
        if sec != self.local_sec {
            self.local_sec = sec;
            self.local_text.clear();
            let t = sec.rem_euclid(86_400);
            let _ = write!(
                self.local_text,
                "{:02}:{:02}:{:02}",
                t / 3600,
                t / 60 % 60,
                t % 60
            );
        }
        out.push_str(&self.local_text);
        let _ = write!(out, ".{:03}", nsec / 1_000_000);
    }
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

fn local_utc_offset() -> i64 {
    // SAFETY: time() and localtime_r() with valid pointers.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&now, &mut tm).is_null() {
            return 0;
        }
        tm.tm_gmtoff
    }
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Counters printed at exit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Transitions received from the kernel.
    pub events: u64,
    /// Transitions that passed the filters (the probe's, and for `trace` its own).
    pub shown: u64,
    /// Transitions that never reached userspace: `lost_ringbuf + lost_skipped`.
    pub lost: u64,
    /// Ring buffer full (userspace too slow), counted per CPU by the probe.
    pub lost_ringbuf: u64,
    /// Runs the kernel skipped (`recursion_misses` of the transition probe) that the
    /// backup probe did not recover.
    pub lost_skipped: u64,
    /// Transitions dropped because a kernel read failed.
    pub lost_read: u64,
    /// Histogram samples kept without their --by key (map full, or its bucket locked
    /// by the program this run interrupted).
    pub hist_spilled: u64,
    /// Skipped runs that the backup probe handled (not lost).
    pub recovered: u64,
    /// Sockets not tracked because the probe's socket table was full.
    pub untracked: u64,
    /// accept() calls whose socket could not be resolved, or the kernel skipped.
    pub accept_unresolved: u64,
    /// Malformed ring-buffer records.
    pub bad_records: u64,
}

#[derive(Serialize)]
struct SummaryJson<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    s: &'a Summary,
}

#[derive(Serialize)]
struct TransitionJson<'a> {
    r#type: &'static str,
    time: &'a str,
    sock: &'a str,
    pid: Option<u32>,
    comm: Option<&'a str>,
    family: u8,
    saddr: IpAddr,
    sport: u16,
    daddr: IpAddr,
    dport: u16,
    old: &'a str,
    new: &'a str,
    prev_ms: Option<f64>,
}

/// Where transitions go: a table or JSON lines.
pub struct TraceWriter<W: Write> {
    out: W,
    json: bool,
    addr_width: usize,
    clock: Clock,
    line: Vec<u8>,
    time: String,
    comm: String,
    scratch: String,
    scratch2: String,
    scratch3: String,
}

impl<W: Write> TraceWriter<W> {
    pub fn new(out: W, json: bool, wide: bool, clock: Clock) -> Self {
        Self {
            out,
            json,
            addr_width: if wide { 47 } else { 21 },
            clock,
            line: Vec::with_capacity(256),
            time: String::with_capacity(32),
            comm: String::with_capacity(64),
            scratch: String::with_capacity(64),
            scratch2: String::with_capacity(64),
            scratch3: String::with_capacity(64),
        }
    }

    pub fn header(&mut self) -> io::Result<()> {
        if self.json {
            return Ok(());
        }
        let w = self.addr_width;
        writeln!(
            self.out,
            "{:<12} {:<7} {:<16} {:<w$} {:<w$} {:<12} -> {:<12} {:>10}",
            "TIME", "PID", "COMM", "LADDR:LPORT", "RADDR:RPORT", "OLD", "NEW", "MS"
        )?;
        self.out.flush()
    }

    pub fn transition(&mut self, ev: &Event) -> io::Result<()> {
        self.line.clear();
        self.comm.clear();
        sanitize_comm(&ev.comm, &mut self.comm);
        let (saddr, daddr) = addrs(ev);
        let (old, new) = (StateNum(ev.oldstate), StateNum(ev.newstate));
        let pid = (ev.pid != 0).then_some(ev.pid);
        if self.json {
            self.time.clear();
            self.clock.utc_rfc3339(ev.ts_ns, &mut self.time);
            self.scratch.clear();
            let _ = write!(self.scratch, "{}", ev.cookie);
            let old_s = state_name(old, &mut self.scratch2);
            let new_s = state_name(new, &mut self.scratch3);
            let rec = TransitionJson {
                r#type: "transition",
                time: &self.time,
                sock: &self.scratch,
                pid,
                comm: pid.map(|_| self.comm.as_str()),
                family: display_family(ev),
                saddr,
                sport: ev.sport,
                daddr,
                dport: ev.dport,
                old: old_s,
                new: new_s,
                prev_ms: prev_ms(ev),
            };
            serde_json::to_writer(&mut self.line, &rec).map_err(io::Error::other)?;
            self.line.push(b'\n');
        } else {
            self.time.clear();
            self.clock.local_hms(ev.ts_ns, &mut self.time);
            let w = self.addr_width;
            let _ = write!(self.line, "{:<12} ", self.time);
            match pid {
                Some(p) => {
                    let _ = write!(self.line, "{p:<7} {:<16} ", self.comm);
                }
                None => {
                    let _ = write!(self.line, "{:<7} {:<16} ", "-", "-");
                }
            }
            for (a, p) in [(saddr, ev.sport), (daddr, ev.dport)] {
                self.scratch.clear();
                endpoint(&mut self.scratch, a, p, w);
                let _ = write!(self.line, "{:<w$} ", self.scratch);
            }
            let _ = write!(self.line, "{old:<12} -> {new:<12} ");
            match prev_ms(ev) {
                Some(ms) => {
                    let _ = write!(self.line, "{ms:>10.3}");
                }
                None => {
                    let _ = write!(self.line, "{:>10}", "-");
                }
            }
            self.line.push(b'\n');
        }
        self.out.write_all(&self.line)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The summary: a JSON line on stdout in JSON mode, else a line on stderr.
    pub fn summary(&mut self, s: &Summary) -> io::Result<()> {
        if self.json {
            write_summary_json(&mut self.out, s)
        } else {
            self.out.flush()?;
            eprintln!("{}", summary_text(s));
            Ok(())
        }
    }
}

/// `{"type":"summary",...}` and a newline.
pub fn write_summary_json<W: Write>(out: &mut W, s: &Summary) -> io::Result<()> {
    serde_json::to_writer(
        &mut *out,
        &SummaryJson {
            r#type: "summary",
            s,
        },
    )
    .map_err(io::Error::other)?;
    out.write_all(b"\n")?;
    out.flush()
}

pub fn summary_text(s: &Summary) -> String {
    format!(
        "tcpstate: {} events, {} shown, {} lost ({} ring buffer full, {} skipped by the kernel, \
         {} unreadable; {} recovered), {} untracked sockets (table full), {} accepts unresolved",
        s.events,
        s.shown,
        s.lost,
        s.lost_ringbuf,
        s.lost_skipped,
        s.lost_read,
        s.recovered,
        s.untracked,
        s.accept_unresolved
    )
}

/// A state's kernel name; only unknown numbers are formatted (into `buf`).
fn state_name(s: StateNum, buf: &mut String) -> &str {
    match s.state() {
        Some(st) => st.name(),
        None => {
            buf.clear();
            let _ = write!(buf, "{s}");
            buf
        }
    }
}

/// `addr:port`, IPv6 in brackets; longer than `width` keeps the tail (port visible).
fn endpoint(out: &mut String, addr: IpAddr, port: u16, width: usize) {
    let _ = match addr {
        IpAddr::V4(a) => write!(out, "{a}:{port}"),
        IpAddr::V6(a) => write!(out, "[{a}]:{port}"),
    };
    if out.len() > width {
        let cut = out.len() - (width - 1);
        out.replace_range(..cut, "…");
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use tcpstate_common::{state, AF_INET, AF_INET6};

    use super::*;
    use crate::events::tests::event;

    #[test]
    fn comm_is_escaped() {
        let mut s = String::new();
        sanitize_comm(b"ev\x1b[31mil\\\0\0junk", &mut s);
        assert_eq!(s, "ev\\x1b[31mil\\\\");
        s.clear();
        sanitize_comm("né".as_bytes(), &mut s);
        assert_eq!(s, "n\\xc3\\xa9");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_414), (2025, 11, 22));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn clock_formats() {
        // Monotonic 5 s maps to 2026-11-22T12:01:02.123456Z.
        let wall: i128 = 1_795_348_862_123_456_789;
        let mut c = Clock::with_offsets(wall - 5_000_000_000, 3600);
        let mut s = String::new();
        c.utc_rfc3339(5_000_000_000, &mut s);
        assert_eq!(s, "2026-11-22T12:01:02.123456Z");
        s.clear();
        c.local_hms(5_000_000_000, &mut s);
        assert_eq!(s, "13:01:02.123");
    }

    fn sample() -> Event {
        let mut ev = event(AF_INET, state::ESTABLISHED, state::CLOSE_WAIT);
        ev.ts_ns = 5_000_000_000;
        ev.saddr[..4].copy_from_slice(&[10, 0, 0, 5]);
        ev.daddr[..4].copy_from_slice(&[10, 0, 0, 9]);
        ev.sport = 443;
        ev.dport = 51234;
        ev.pid = 4242;
        ev.comm[..5].copy_from_slice(b"nginx");
        ev.prev_ns = 1_532_104_000;
        ev
    }

    fn writer(json: bool, wide: bool) -> TraceWriter<Vec<u8>> {
        let wall: i128 = 1_795_348_862_123_456_789;
        TraceWriter::new(
            Vec::new(),
            json,
            wide,
            Clock::with_offsets(wall - 5_000_000_000, 0),
        )
    }

    #[test]
    fn json_line() {
        let mut w = writer(true, false);
        w.transition(&sample()).unwrap();
        let mut ev = sample();
        ev.pid = 0;
        ev.prev_ns = tcpstate_common::PREV_UNKNOWN;
        ev.newstate = 99;
        w.transition(&ev).unwrap();
        let text = String::from_utf8(w.out.clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            lines[0],
            serde_json::json!({"type":"transition","time":"2026-11-22T12:01:02.123456Z",
                "sock":"42","pid":4242,"comm":"nginx","family":4,"saddr":"10.0.0.5","sport":443,
                "daddr":"10.0.0.9","dport":51234,"old":"ESTABLISHED","new":"CLOSE_WAIT",
                "prev_ms":1532.104})
        );
        assert_eq!(lines[1]["pid"], serde_json::Value::Null);
        assert_eq!(lines[1]["comm"], serde_json::Value::Null);
        assert_eq!(lines[1]["prev_ms"], serde_json::Value::Null);
        assert_eq!(lines[1]["new"], "UNKNOWN(99)");
    }

    #[test]
    fn json_escapes_hostile_comm() {
        let mut w = writer(true, false);
        let mut ev = sample();
        ev.comm = *b"a\"b\x1b]0;x\x07\n\xff\0\0\0\0\0";
        w.transition(&ev).unwrap();
        let text = String::from_utf8(w.out.clone()).unwrap();
        assert!(!text.bytes().any(|b| b < 0x20 && b != b'\n'));
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["comm"], "a\"b\\x1b]0;x\\x07\\x0a\\xff");
    }

    #[test]
    fn table_line() {
        let mut w = writer(false, false);
        w.header().unwrap();
        w.transition(&sample()).unwrap();
        let mut ev = sample();
        ev.family = AF_INET6;
        ev.saddr = Ipv6Addr::LOCALHOST.octets();
        ev.daddr = "2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff"
            .parse::<Ipv6Addr>()
            .unwrap()
            .octets();
        ev.pid = 0;
        ev.prev_ns = tcpstate_common::PREV_UNKNOWN;
        w.transition(&ev).unwrap();
        let text = String::from_utf8(w.out.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("TIME         PID     COMM"));
        assert_eq!(
            lines[1],
            "12:01:02.123 4242    nginx            10.0.0.5:443          10.0.0.9:51234        ESTABLISHED  -> CLOSE_WAIT     1532.104"
        );
        assert!(lines[2].contains("-       -                [::1]:443"));
        assert!(lines[2].contains("…") && lines[2].contains("eeee:ffff]:51234 "));
        assert!(lines[2].ends_with("         -"));
        let _ = Ipv4Addr::LOCALHOST;
    }

    #[test]
    fn wide_keeps_ipv6_whole() {
        let mut w = writer(false, true);
        let mut ev = sample();
        ev.family = AF_INET6;
        ev.daddr = "2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff"
            .parse::<Ipv6Addr>()
            .unwrap()
            .octets();
        w.transition(&ev).unwrap();
        let text = String::from_utf8(w.out.clone()).unwrap();
        assert!(text.contains("[2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:51234"));
    }
}
