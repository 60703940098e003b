//! Output: the transition table, JSON lines, and the summary, written into reused
//! buffers (no allocation per event) and safe for terminals and pipes.

use std::{
    fmt::Write as _,
    io::{self, Write},
    net::Ipv6Addr,
};

use serde::Serialize;
use tcpstate_common::{Event, AF_INET, AF_INET6, PREV_UNKNOWN};

use crate::events::{prev_ms, StateNum, TcpState};

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
    /// The monotonic time at which the last wall second seen starts, and that second:
    /// most events fall in the second of the one before, which then costs no i128
    /// division.
    base_mono: u64,
    base_sec: i64,
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
        let mut c = Self {
            offset_ns,
            local_offset_s,
            base_mono: 0,
            base_sec: 0,
            utc_sec: i64::MIN,
            utc_text: String::new(),
            local_sec: i64::MIN,
            local_text: String::new(),
        };
        c.wall_slow(0);
        c
    }

    fn wall(&mut self, mono_ns: u64) -> (i64, u32) {
        // Wrapping: below `base_mono` becomes huge and takes the slow path.
        let d = mono_ns.wrapping_sub(self.base_mono);
        if d < 1_000_000_000 {
            return (self.base_sec, d as u32);
        }
        self.wall_slow(mono_ns)
    }

    fn wall_slow(&mut self, mono_ns: u64) -> (i64, u32) {
        let ns = mono_ns as i128 + self.offset_ns;
        let (sec, nsec) = (
            ns.div_euclid(1_000_000_000) as i64,
            ns.rem_euclid(1_000_000_000) as u32,
        );
        self.base_mono = mono_ns.wrapping_sub(u64::from(nsec));
        self.base_sec = sec;
        (sec, nsec)
    }

    /// The cached `YYYY-MM-DDTHH:MM:SS` of `mono_ns` in UTC, and its nanoseconds.
    fn utc_second(&mut self, mono_ns: u64) -> (&str, u32) {
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
        (&self.utc_text, nsec)
    }

    /// The cached local `HH:MM:SS` of `mono_ns`, and its nanoseconds.
    fn local_second(&mut self, mono_ns: u64) -> (&str, u32) {
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
        (&self.local_text, nsec)
    }

    /// `2026-11-22T12:01:02.123456Z`
    pub fn utc_rfc3339(&mut self, mono_ns: u64, out: &mut String) {
        let (text, nsec) = self.utc_second(mono_ns);
        out.push_str(text);
        out.extend(utc_fraction(nsec).iter().map(|&b| char::from(b)));
    }

    /// [`Self::utc_rfc3339`] into a [`Line`], for the per-event path.
    fn utc_rfc3339_line(&mut self, mono_ns: u64, out: &mut Line) {
        let (text, nsec) = self.utc_second(mono_ns);
        out.put(text.as_bytes());
        out.put(&utc_fraction(nsec));
    }

    /// `12:01:02.123` in the local time zone.
    pub fn local_hms(&mut self, mono_ns: u64, out: &mut String) {
        let (text, nsec) = self.local_second(mono_ns);
        out.push_str(text);
        out.extend(local_fraction(nsec).iter().map(|&b| char::from(b)));
    }

    /// [`Self::local_hms`] into a [`Line`], for the per-event path.
    fn local_hms_line(&mut self, mono_ns: u64, out: &mut Line) {
        let (text, nsec) = self.local_second(mono_ns);
        out.put(text.as_bytes());
        out.put(&local_fraction(nsec));
    }
}

/// `.123456Z`: microseconds.
fn utc_fraction(nsec: u32) -> [u8; 8] {
    let mut f = *b".000000Z";
    put_digits(&mut f[1..7], u64::from(nsec / 1000));
    f
}

/// `.123`: milliseconds.
fn local_fraction(nsec: u32) -> [u8; 4] {
    let mut f = *b".000";
    put_digits(&mut f[1..], u64::from(nsec / 1_000_000));
    f
}

/// Fills `buf` with the low decimal digits of `v`, zero-padded on the left.
fn put_digits(buf: &mut [u8], mut v: u64) {
    for d in buf.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
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
    /// Events the probe submitted to the ring buffer that never reached the reader.
    pub lost_transit: u64,
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
    /// Transitions the kernel handed to the probe, before any filter (every protocol
    /// the tracepoint reports). A transition the kernel never hands to BPF programs
    /// cannot be counted anywhere else: compare with tracefs's event count.
    pub probe_calls: u64,
}

#[derive(Serialize)]
struct SummaryJson<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    s: &'a Summary,
}

/// Where transitions go: a table or JSON lines.
pub struct TraceWriter<W: Write> {
    out: W,
    json: bool,
    addr_width: usize,
    clock: Clock,
    /// The line being built (see [`Line`]), then written whole.
    line: Box<[u8; LINE_CAP]>,
    comm: String,
    /// Looked up per event instead of searched.
    states: StateNames,
}

impl<W: Write> TraceWriter<W> {
    pub fn new(out: W, json: bool, wide: bool, clock: Clock) -> Self {
        Self {
            out,
            json,
            addr_width: if wide { 47 } else { 21 },
            clock,
            line: Box::new([0; LINE_CAP]),
            comm: String::with_capacity(64),
            states: std::array::from_fn(|n| StateNum(n as u8).state().map(TcpState::name)),
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

    /// One line per transition, formatted by hand: serde, `core::fmt` and small
    /// `memcpy` calls cost several times the rest of the per-event work.
    pub fn transition(&mut self, ev: &Event) -> io::Result<()> {
        let mut line = Line::new(&mut self.line);
        if self.json {
            json_line(&mut line, ev, &mut self.clock, &self.states, &mut self.comm);
        } else {
            table_line(
                &mut line,
                ev,
                &mut self.clock,
                &self.states,
                &mut self.comm,
                self.addr_width,
            );
        }
        line.byte(b'\n');
        self.out.write_all(line.as_bytes())
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

/// State names by kernel number; `None`: unknown to this build.
type StateNames = [Option<&'static str>; 32];

/// The keys, order and types `serde` gave the former `TransitionJson` struct.
fn json_line(l: &mut Line, ev: &Event, clock: &mut Clock, states: &StateNames, comm: &mut String) {
    l.put(b"{\"type\":\"transition\",\"time\":\"");
    clock.utc_rfc3339_line(ev.ts_ns, l);
    l.put(b"\",\"sock\":\"");
    l.int(ev.cookie);
    l.put(b"\",\"pid\":");
    if ev.pid != 0 {
        l.int(ev.pid);
        l.put(b",\"comm\":\"");
        put_comm(l, &ev.comm, true, comm);
        l.byte(b'"');
    } else {
        l.put(b"null,\"comm\":null");
    }
    let (s, d) = (
        Addr::of(ev.family, &ev.saddr),
        Addr::of(ev.family, &ev.daddr),
    );
    l.put(match (&s, &d) {
        (Addr::V4(_), Addr::V4(_)) => b",\"family\":4,\"saddr\":\"",
        _ => b",\"family\":6,\"saddr\":\"",
    });
    s.put(l);
    l.put(b"\",\"sport\":");
    l.int(ev.sport);
    l.put(b",\"daddr\":\"");
    d.put(l);
    l.put(b"\",\"dport\":");
    l.int(ev.dport);
    l.put(b",\"old\":\"");
    put_state(l, states, ev.oldstate);
    l.put(b"\",\"new\":\"");
    put_state(l, states, ev.newstate);
    l.put(b"\",\"prev_ms\":");
    match ev.prev_ns {
        PREV_UNKNOWN => l.put(b"null"),
        ns => put_ms_json(l, ns),
    }
    l.byte(b'}');
}

/// The columns of [`TraceWriter::header`]; all text is ASCII, so bytes are columns
/// (except the endpoints' `…`, see [`put_endpoint`]).
fn table_line(
    l: &mut Line,
    ev: &Event,
    clock: &mut Clock,
    states: &StateNames,
    comm: &mut String,
    w: usize,
) {
    clock.local_hms_line(ev.ts_ns, l);
    l.pad(0, 12);
    l.byte(b' ');
    if ev.pid != 0 {
        let col = l.pos;
        l.int(ev.pid);
        l.pad(col, 7);
        l.byte(b' ');
        let col = l.pos;
        put_comm(l, &ev.comm, false, comm);
        l.pad(col, 16);
    } else {
        l.put(b"-       -               ");
    }
    l.byte(b' ');
    put_endpoint(l, Addr::of(ev.family, &ev.saddr), ev.sport, w);
    l.byte(b' ');
    put_endpoint(l, Addr::of(ev.family, &ev.daddr), ev.dport, w);
    l.byte(b' ');
    let col = l.pos;
    put_state(l, states, ev.oldstate);
    l.pad(col, 12);
    l.put(b" -> ");
    let col = l.pos;
    put_state(l, states, ev.newstate);
    l.pad(col, 12);
    l.byte(b' ');
    put_ms_table(l, ev);
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
         {} unreadable, {} sent but not received; {} recovered), {} untracked sockets (table \
         full), {} accepts unresolved",
        s.events,
        s.shown,
        s.lost,
        s.lost_ringbuf,
        s.lost_skipped,
        s.lost_read,
        s.lost_transit,
        s.recovered,
        s.untracked,
        s.accept_unresolved
    )
}

/// Bytes a [`Line`] call may touch past the line's end (see [`Line::pad`]).
const SLACK: usize = 64;
/// Longer than any line: about 410 bytes at most (IPv6 on both sides, a comm of 16
/// escaped bytes, the largest cookie and duration), plus [`SLACK`].
const LINE_CAP: usize = 1024;

/// Writes a line into a fixed buffer longer than any line: appends are bounds-checked
/// stores, short copies fixed-size moves rather than `memcpy` calls (glibc's `memmove`
/// led the profile of a version built on `Vec::extend_from_slice`). A short-lived
/// local, so that `pos` can stay in a register.
struct Line<'a> {
    buf: &'a mut [u8; LINE_CAP],
    pos: usize,
}

impl<'a> Line<'a> {
    fn new(buf: &'a mut [u8; LINE_CAP]) -> Self {
        Self { buf, pos: 0 }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.pos]
    }

    #[inline]
    fn byte(&mut self, b: u8) {
        self.buf[self.pos] = b;
        self.pos += 1;
    }

    /// Appends `s`; up to 32 bytes as two overlapping fixed-size copies.
    #[inline]
    fn put(&mut self, s: &[u8]) {
        let n = s.len();
        let d = &mut self.buf[self.pos..self.pos + n];
        match n {
            0 => {}
            1..=3 => {
                d[0] = s[0];
                d[n / 2] = s[n / 2];
                d[n - 1] = s[n - 1];
            }
            4..=7 => {
                d[..4].copy_from_slice(&s[..4]);
                d[n - 4..].copy_from_slice(&s[n - 4..]);
            }
            8..=15 => {
                d[..8].copy_from_slice(&s[..8]);
                d[n - 8..].copy_from_slice(&s[n - 8..]);
            }
            16..=32 => {
                d[..16].copy_from_slice(&s[..16]);
                d[n - 16..].copy_from_slice(&s[n - 16..]);
            }
            _ => d.copy_from_slice(s),
        }
        self.pos += n;
    }

    #[inline]
    fn int<I: itoa::Integer>(&mut self, v: I) {
        self.put(itoa::Buffer::new().format(v).as_bytes());
    }

    /// `v` as exactly `width` digits, zero-padded.
    fn padded(&mut self, v: u64, width: usize) {
        put_digits(&mut self.buf[self.pos..self.pos + width], v);
        self.pos += width;
    }

    /// Spaces up to `width` (at most [`SLACK`]) columns after `start`; writes a fixed
    /// [`SLACK`] of them, which inlines better than an exact fill.
    #[inline]
    fn pad(&mut self, start: usize, width: usize) {
        let end = start + width;
        if self.pos < end {
            self.buf[self.pos..self.pos + SLACK].fill(b' ');
            self.pos = end;
        }
    }
}

impl std::fmt::Write for Line<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.put(s.as_bytes());
        Ok(())
    }
}

/// An event address as `events::addr` decodes it, without building an `IpAddr`.
enum Addr {
    V4([u8; 4]),
    V6([u8; 16]),
}

impl Addr {
    fn of(family: u16, b: &[u8; 16]) -> Self {
        match family {
            AF_INET => Addr::V4([b[0], b[1], b[2], b[3]]),
            // IPv4-mapped (`::ffff:a.b.c.d`) shows as IPv4, as `to_ipv4_mapped` does.
            AF_INET6 if b[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] => {
                Addr::V4([b[12], b[13], b[14], b[15]])
            }
            AF_INET6 => Addr::V6(*b),
            _ => Addr::V4([0; 4]),
        }
    }

    fn put(&self, out: &mut Line) {
        match self {
            Addr::V4([a, b, c, d]) => {
                out.int(*a);
                out.byte(b'.');
                out.int(*b);
                out.byte(b'.');
                out.int(*c);
                out.byte(b'.');
                out.int(*d);
            }
            // Rare, and its zero-run compression is not worth copying.
            Addr::V6(a) => {
                let _ = write!(out, "{}", Ipv6Addr::from(*a));
            }
        }
    }
}

/// The comm up to its NUL, as [`sanitize_comm`] writes it and, for JSON, with `"` and
/// `\` escaped; `scratch` is only used for names that need either.
fn put_comm(out: &mut Line, comm: &[u8; 16], json: bool, scratch: &mut String) {
    // Most names are printable ASCII with nothing to escape: copied as they are.
    let n = comm.iter().take_while(|&&b| PLAIN[usize::from(b)]).count();
    if n == comm.len() || comm[n] == 0 {
        out.put(&comm[..n]);
        return;
    }
    scratch.clear();
    sanitize_comm(comm, scratch);
    if json {
        put_json_str(out, scratch);
    } else {
        out.put(scratch.as_bytes());
    }
}

/// Bytes [`sanitize_comm`] keeps and JSON does not escape: printable ASCII but `\` and `"`.
const PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x20;
    while b < 0x7f {
        t[b] = b != b'\\' as usize && b != b'"' as usize;
        b += 1;
    }
    t
};

/// A JSON string body. Only for printable ASCII (such as the output of
/// [`sanitize_comm`]), so only `"` and `\` need escaping.
fn put_json_str(out: &mut Line, s: &str) {
    let s = s.as_bytes();
    let mut run = 0;
    for (i, &b) in s.iter().enumerate() {
        if b == b'"' || b == b'\\' {
            out.put(&s[run..i]);
            out.byte(b'\\');
            run = i;
        }
    }
    out.put(&s[run..]);
}

/// A state's kernel name, or `UNKNOWN(n)` as [`StateNum`] prints it.
fn put_state(out: &mut Line, names: &StateNames, n: u8) {
    match names.get(usize::from(n)).copied().flatten() {
        Some(name) => out.put(name.as_bytes()),
        None => {
            out.put(b"UNKNOWN(");
            out.int(n);
            out.byte(b')');
        }
    }
}

/// Nanoseconds as a JSON number of milliseconds, exact: `1532.104`, `2.0`, `0.000001`.
fn put_ms_json(out: &mut Line, ns: u64) {
    out.int(ns / 1_000_000);
    out.byte(b'.');
    out.padded(ns % 1_000_000, 6);
    // Trailing zeros go, all but the first decimal.
    let mut keep = 6;
    while keep > 1 && out.buf[out.pos - 1] == b'0' {
        out.pos -= 1;
        keep -= 1;
    }
}

/// The MS column: milliseconds with 3 decimals right-aligned in 10 columns, or `-`.
fn put_ms_table(out: &mut Line, ev: &Event) {
    let start = out.pos;
    match ev.prev_ns {
        PREV_UNKNOWN => {
            out.pad(start, 9);
            out.byte(b'-');
        }
        // Below 2^53 ns, `{:.3}` of the f64 `ns / 1e6` equals integer rounding, but for
        // ties (x.xxx5) that the f64's representation error decides: those, and larger
        // values, keep the float formatter.
        ns if ns < 1 << 53 && ns % 1000 != 500 => {
            let us = ns / 1000 + u64::from(ns % 1000 > 500);
            let mut ms = itoa::Buffer::new();
            let ms = ms.format(us / 1000).as_bytes();
            out.pad(start, 6usize.saturating_sub(ms.len()));
            out.put(ms);
            out.byte(b'.');
            out.padded(us % 1000, 3);
        }
        _ => {
            let _ = write!(out, "{:>10.3}", prev_ms(ev).unwrap_or_default());
        }
    }
}

/// `addr:port` padded to `width` columns, IPv6 in brackets; longer keeps the tail
/// (port visible) behind a `…`, which is 3 bytes but 1 column.
fn put_endpoint(out: &mut Line, addr: Addr, port: u16, width: usize) {
    let start = out.pos;
    match addr {
        Addr::V4(_) => addr.put(out),
        Addr::V6(_) => {
            out.byte(b'[');
            addr.put(out);
            out.byte(b']');
        }
    }
    out.byte(b':');
    out.int(port);
    let end = out.pos;
    if end - start <= width {
        out.pad(start, width);
        return;
    }
    const ELLIPSIS: &[u8] = "…".as_bytes();
    let tail = width - 1;
    out.buf.copy_within(end - tail..end, start + ELLIPSIS.len());
    out.buf[start..start + ELLIPSIS.len()].copy_from_slice(ELLIPSIS);
    out.pos = start + ELLIPSIS.len() + tail;
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

    /// The serde/`core::fmt` writer this module used before, kept as the reference
    /// the hand-written one must match.
    mod reference {
        use std::{fmt::Write as _, io::Write as _, net::IpAddr};

        use serde::Serialize;
        use tcpstate_common::Event;

        use super::super::{sanitize_comm, Clock};
        use crate::events::{addrs, display_family, prev_ms, StateNum};

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

        pub struct OldWriter {
            pub out: Vec<u8>,
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

        impl OldWriter {
            pub fn new(json: bool, wide: bool, clock: Clock) -> Self {
                Self {
                    out: Vec::new(),
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

            pub fn transition(&mut self, ev: &Event) {
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
                    serde_json::to_writer(&mut self.line, &rec).unwrap();
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
                self.out.extend_from_slice(&self.line);
            }
        }

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
    }

    use reference::OldWriter;

    fn clock() -> Clock {
        let wall: i128 = 1_795_348_862_123_456_789;
        Clock::with_offsets(wall - 5_000_000_000, 3600)
    }

    /// xorshift64: deterministic pseudo-random test inputs without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    const PREV: [u64; 14] = [
        0,
        1,
        499,
        500,
        501,
        1500,
        999_999,
        1_000_000,
        2_000_000,
        1_532_104_000,
        999_999_999_999_999,
        1 << 53,
        u64::MAX - 1,
        tcpstate_common::PREV_UNKNOWN,
    ];

    /// Synthetic events covering every formatting branch.
    fn events() -> Vec<Event> {
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap().octets();
        let mut evs = Vec::new();
        for (i, &prev) in PREV.iter().enumerate() {
            let mut ev = sample();
            ev.prev_ns = prev;
            ev.ts_ns += i as u64 * 400_000_007;
            ev.cookie = [0, 1, 42, u64::MAX][i % 4];
            ev.pid = [4242, 0, 1, u32::MAX][i % 4];
            ev.sport = [0, 443, 65535][i % 3];
            match i % 7 {
                0 => {}
                1 => {
                    ev.family = AF_INET6;
                    ev.saddr = Ipv6Addr::LOCALHOST.octets();
                    ev.daddr = v6("2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff");
                }
                2 => {
                    ev.family = AF_INET6;
                    ev.saddr = Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().octets();
                    ev.daddr = Ipv4Addr::new(255, 255, 255, 255).to_ipv6_mapped().octets();
                }
                3 => {
                    // One side mapped, the other not: family 6.
                    ev.family = AF_INET6;
                    ev.saddr = Ipv4Addr::new(192, 168, 1, 20).to_ipv6_mapped().octets();
                    ev.daddr = v6("fe80::1");
                }
                4 => {
                    ev.saddr[..4].copy_from_slice(&[255, 255, 255, 255]);
                    ev.daddr[..4].copy_from_slice(&[0, 0, 0, 0]);
                }
                5 => ev.family = 0,
                _ => {
                    ev.family = AF_INET6;
                    ev.saddr = v6("::");
                    ev.daddr = v6("::ffff:0:1:2");
                }
            }
            ev.oldstate = [1, 7, 10, 12, 13, 0, 99, 255][i % 8];
            ev.newstate = [8, 99, 0, 255, 2][i % 5];
            ev.comm = match i % 5 {
                0 => *b"nginx\0\0\0\0\0\0\0\0\0\0\0",
                1 => *b"a\"b\\c\x1b]0;\x07\n\xff\x7f\0zz",
                2 => *b"sixteen-chars-ab",
                3 => *b"\"\"\"\"\\\\\\\\\xc3\xa9\x80\x01\x00\x00\x00\x00",
                _ => [0; 16],
            };
            evs.push(ev);
        }
        evs
    }

    fn lines(out: &[u8]) -> Vec<&str> {
        std::str::from_utf8(out).unwrap().lines().collect()
    }

    fn both(json: bool, wide: bool, evs: &[Event]) -> (Vec<u8>, Vec<u8>) {
        let mut new = TraceWriter::new(Vec::new(), json, wide, clock());
        let mut old = OldWriter::new(json, wide, clock());
        for ev in evs {
            new.transition(ev).unwrap();
            old.transition(ev);
        }
        (new.out, old.out)
    }

    /// The new JSON equals serde's byte for byte, except `prev_ms` text where serde
    /// writes an exponent (1 to 9 ns: `1e-6`) or its shortest f64 is not the exact
    /// decimal (from 10^15 ns, 11.6 days, on).
    fn assert_json_matches(evs: &[Event]) {
        let (new, old) = both(true, false, evs);
        for ((n, o), ev) in lines(&new).into_iter().zip(lines(&old)).zip(evs) {
            let exact = ev.prev_ns == 0 || (10..1_000_000_000_000_000).contains(&ev.prev_ns);
            if exact || ev.prev_ns == tcpstate_common::PREV_UNKNOWN {
                assert_eq!(n, o, "{ev:?}");
                continue;
            }
            let mut nv: serde_json::Value = serde_json::from_str(n).unwrap();
            let mut ov: serde_json::Value = serde_json::from_str(o).unwrap();
            let ms = nv["prev_ms"].take().as_f64().unwrap();
            let want = ev.prev_ns as f64 / 1e6;
            assert!((ms - want).abs() <= want * 1e-9, "{n} vs {o}");
            ov["prev_ms"] = serde_json::Value::Null;
            assert_eq!(nv, ov);
        }
    }

    #[test]
    fn json_matches_serde() {
        assert_json_matches(&events());
        assert_eq!(
            lines(&both(true, false, &events()).0)[..2],
            [
                "{\"type\":\"transition\",\"time\":\"2026-11-22T12:01:02.123456Z\",\"sock\":\"0\",\
                 \"pid\":4242,\"comm\":\"nginx\",\"family\":4,\"saddr\":\"10.0.0.5\",\"sport\":0,\
                 \"daddr\":\"10.0.0.9\",\"dport\":51234,\"old\":\"ESTABLISHED\",\
                 \"new\":\"CLOSE_WAIT\",\"prev_ms\":0.0}",
                "{\"type\":\"transition\",\"time\":\"2026-11-22T12:01:02.523456Z\",\"sock\":\"1\",\
                 \"pid\":null,\"comm\":null,\"family\":6,\"saddr\":\"::1\",\"sport\":443,\
                 \"daddr\":\"2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff\",\"dport\":51234,\
                 \"old\":\"CLOSE\",\"new\":\"UNKNOWN(99)\",\"prev_ms\":0.000001}",
            ]
        );
    }

    #[test]
    fn json_prev_ms_is_exact() {
        let mut buf = [0; LINE_CAP];
        for (ns, text) in [
            (0, "0.0"),
            (1, "0.000001"),
            (999_999, "0.999999"),
            (1_000_000, "1.0"),
            (2_000_000, "2.0"),
            (1_532_104_000, "1532.104"),
            (u64::MAX - 1, "18446744073709.551614"),
        ] {
            let mut out = Line::new(&mut buf);
            put_ms_json(&mut out, ns);
            assert_eq!(std::str::from_utf8(out.as_bytes()).unwrap(), text);
        }
    }

    #[test]
    fn json_matches_serde_on_random_values() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let base = events();
        let evs: Vec<Event> = (0..20_000)
            .map(|i| {
                let mut ev = base[i % base.len()];
                let r = rng.next();
                // Spread over magnitudes, from nanoseconds to the whole u64 range.
                ev.prev_ns = r >> (r % 64);
                ev.cookie = rng.next();
                ev.ts_ns = rng.next() >> 4;
                ev.saddr[..4].copy_from_slice(&(rng.next() as u32).to_be_bytes());
                ev.sport = rng.next() as u16;
                ev
            })
            .collect();
        assert_json_matches(&evs);
    }

    #[test]
    fn any_comm_is_valid_json() {
        let mut rng = Rng(7);
        let mut w = writer(true, false);
        let mut check = |comm: [u8; 16]| {
            let mut ev = sample();
            ev.comm = comm;
            w.out.clear();
            w.transition(&ev).unwrap();
            let text = std::str::from_utf8(&w.out).unwrap();
            assert!(!text.bytes().any(|b| b < 0x20 && b != b'\n'));
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            let mut want = String::new();
            sanitize_comm(&comm, &mut want);
            assert_eq!(v["comm"], want.as_str());
        };
        for b in 0..=255u8 {
            check([b; 16]);
            for at in [0, 7, 15] {
                let mut c = *b"process-name-123";
                c[at] = b;
                check(c);
            }
        }
        for _ in 0..10_000 {
            let mut c = [0; 16];
            c[..8].copy_from_slice(&rng.next().to_le_bytes());
            c[8..].copy_from_slice(&rng.next().to_le_bytes());
            check(c);
        }
    }

    #[test]
    fn table_matches_core_fmt() {
        for wide in [false, true] {
            let (new, old) = both(false, wide, &events());
            assert_eq!(
                std::str::from_utf8(&new).unwrap(),
                std::str::from_utf8(&old).unwrap()
            );
        }
        // The MS column's rounding, near ties and across magnitudes.
        let mut rng = Rng(0x1234_5678);
        let evs: Vec<Event> = (0..50_000)
            .map(|i| {
                let mut ev = sample();
                let r = rng.next();
                ev.prev_ns = match i % 3 {
                    0 => r >> (r % 64),
                    1 => (r >> (r % 54)) / 1000 * 1000 + [499, 500, 501][i % 9 / 3],
                    _ => r,
                };
                ev
            })
            .collect();
        let (new, old) = both(false, false, &evs);
        assert_eq!(lines(&new), lines(&old));
    }

    #[test]
    fn v4_mapped_decoding_matches_events_addr() {
        let mut rng = Rng(99);
        let check = |family: u16, b: [u8; 16]| {
            let mut buf = [0; LINE_CAP];
            let mut out = Line::new(&mut buf);
            Addr::of(family, &b).put(&mut out);
            let want = crate::events::addr(family, &b).to_string();
            assert_eq!(std::str::from_utf8(out.as_bytes()).unwrap(), want);
        };
        for family in [AF_INET, AF_INET6, 0, 99] {
            for _ in 0..2000 {
                let mut b = [0; 16];
                b[..8].copy_from_slice(&rng.next().to_le_bytes());
                b[8..].copy_from_slice(&rng.next().to_le_bytes());
                check(family, b);
                b[..10].fill(0);
                check(family, b);
                b[10..12].fill(0xff);
                check(family, b);
                b[9] = 1;
                check(family, b);
            }
        }
    }

    #[test]
    fn longest_lines_fit() {
        let mut ev = sample();
        ev.family = AF_INET6;
        let long = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse::<Ipv6Addr>();
        ev.saddr = long.unwrap().octets();
        ev.daddr = ev.saddr;
        ev.pid = u32::MAX;
        ev.cookie = u64::MAX;
        ev.oldstate = 255;
        ev.newstate = state::BOUND_INACTIVE as u8;
        ev.prev_ns = u64::MAX - 1;
        for comm in [[0xff; 16], [b'\\'; 16], [b'"'; 16]] {
            ev.comm = comm;
            for (json, wide) in [(true, false), (false, false), (false, true)] {
                let new = both(json, wide, &[ev]).0;
                assert!(new.len() + SLACK <= LINE_CAP, "{}", new.len());
            }
        }
    }

    #[test]
    fn clock_fast_path_agrees() {
        let wall: i128 = 1_795_348_862_123_456_789;
        let mut rng = Rng(5);
        let mut c = Clock::with_offsets(wall, -7200);
        let mut mono = 0u64;
        for i in 0..20_000 {
            // Mostly forward in small steps, sometimes back or far.
            mono = match i % 10 {
                0 => rng.next() >> 2,
                1 => mono.saturating_sub(rng.next() % 2_000_000_000),
                _ => mono + rng.next() % 300_000_000,
            };
            let mut fresh = Clock::with_offsets(wall, -7200);
            let (mut a, mut b) = (String::new(), String::new());
            c.utc_rfc3339(mono, &mut a);
            c.local_hms(mono, &mut a);
            fresh.utc_rfc3339(mono, &mut b);
            fresh.local_hms(mono, &mut b);
            assert_eq!(a, b, "{mono}");
        }
    }
}
