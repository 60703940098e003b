//! The trace view: the transition table and JSON lines, written into a reused buffer
//! (no allocation per event) and safe for terminals and pipes.

use std::{
    fmt::Write as _,
    io::{self, Write},
    net::Ipv6Addr,
};

use tcpstate_common::{Event, AF_INET, AF_INET6, OWNER_LISTENER, OWNER_SOCKET, PREV_UNKNOWN};

use crate::{
    model::{
        events::{is_v4_mapped, prev_ms, StateNum, TcpState},
        summary::Summary,
    },
    render::{
        clock::{local_fraction, utc_fraction, Clock},
        format::{put_digits, sanitize_comm},
        summary::{summary_text, write_summary_json},
    },
};

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
    #[allow(dead_code)] // `trace` writes `transition_ident`; kept for the views tests.
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

    /// [`Self::transition`] with the socket's identity: JSON gets `netns` and
    /// `members` (the cgroup/container/pod members, each with a leading comma), the
    /// table its CONTAINER column (`container`: `Some` when the column is shown).
    pub fn transition_ident(
        &mut self,
        ev: &Event,
        members: &[u8],
        container: Option<&str>,
    ) -> io::Result<()> {
        let mut line = Line::new(&mut self.line);
        if self.json {
            json_line(&mut line, ev, &mut self.clock, &self.states, &mut self.comm);
            json_netns(&mut line, ev);
            // The members (a cgroup path may be long) go straight to the output.
            self.out.write_all(line.as_bytes())?;
            self.out.write_all(members)?;
            return self.out.write_all(b"}\n");
        } else {
            table_line(
                &mut line,
                ev,
                &mut self.clock,
                &self.states,
                &mut self.comm,
                self.addr_width,
            );
            if let Some(c) = container {
                line.byte(b' ');
                line.put(c.as_bytes());
            }
        }
        line.byte(b'\n');
        self.out.write_all(line.as_bytes())
    }

    /// The table header with the CONTAINER column last.
    pub fn header_container(&mut self) -> io::Result<()> {
        if self.json {
            return Ok(());
        }
        let w = self.addr_width;
        writeln!(
            self.out,
            "{:<12} {:<7} {:<16} {:<w$} {:<w$} {:<12} -> {:<12} {:>10} {:<12}",
            "TIME", "PID", "COMM", "LADDR:LPORT", "RADDR:RPORT", "OLD", "NEW", "MS", "CONTAINER"
        )?;
        self.out.flush()
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
    let (text, nsec) = clock.utc_second(ev.ts_ns);
    l.put(text.as_bytes());
    l.put(&utc_fraction(nsec));
    l.put(b"\",\"sock\":\"");
    l.int(ev.cookie);
    l.put(b"\",\"pid\":");
    if ev.pid != 0 {
        l.int(ev.pid);
        l.put(b",\"comm\":\"");
        put_comm(l, &ev.comm, true, comm);
        l.put(match ev.owner_from {
            OWNER_LISTENER => &b"\",\"owner_from\":\"listener\""[..],
            OWNER_SOCKET => &b"\",\"owner_from\":\"socket\""[..],
            _ => &b"\",\"owner_from\":null"[..],
        });
    } else {
        l.put(b"null,\"comm\":null,\"owner_from\":null");
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

/// Replaces the closing `}` of [`json_line`] with `,"netns":N`, left open.
fn json_netns(l: &mut Line, ev: &Event) {
    l.pos -= 1;
    l.put(b",\"netns\":");
    if ev.netns != 0 {
        l.int(ev.netns);
    } else {
        l.put(b"null");
    }
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
    let (text, nsec) = clock.local_second(ev.ts_ns);
    l.put(text.as_bytes());
    l.put(&local_fraction(nsec));
    l.pad(0, 12);
    l.byte(b' ');
    if ev.pid != 0 {
        let col = l.pos;
        l.int(ev.pid);
        // The listener's holder, not yet seen on this socket itself.
        if ev.owner_from == OWNER_LISTENER {
            l.byte(b'*');
        }
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
            // IPv4-mapped shows as IPv4, by the model's one rule.
            AF_INET6 if is_v4_mapped(b) => Addr::V4([b[12], b[13], b[14], b[15]]),
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
mod tests;
