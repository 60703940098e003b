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
        format::{put_digits, sanitize_comm, PAIRS},
        summary::{summary_text, write_summary_json},
    },
};

/// Where transitions go: a table or JSON lines.
pub struct TraceWriter<W: Write> {
    out: W,
    json: bool,
    addr_width: usize,
    clock: Clock,
    /// Lines are built in place here (see [`Line`]) and written in batches of at
    /// least [`WRITE_AT`] bytes, or at [`Self::flush`]: no copy into a `BufWriter`.
    buf: Box<[u8]>,
    len: usize,
    comm: String,
    /// Looked up per event instead of searched.
    states: StateNames,
}

/// Buffered bytes that make [`TraceWriter::transition`] write (a few hundred lines).
const WRITE_AT: usize = 64 << 10;

impl<W: Write> TraceWriter<W> {
    pub fn new(out: W, json: bool, wide: bool, clock: Clock) -> Self {
        Self {
            out,
            json,
            addr_width: if wide { 47 } else { 21 },
            clock,
            buf: vec![0; WRITE_AT + LINE_CAP].into_boxed_slice(),
            len: 0,
            comm: String::with_capacity(64),
            states: std::array::from_fn(|n| StateNum(n as u8).state().map(TcpState::name)),
        }
    }

    /// The table header; `container`: with the CONTAINER column last.
    pub fn header(&mut self, container: bool) -> io::Result<()> {
        if self.json {
            return Ok(());
        }
        let w = self.addr_width;
        write!(
            self.out,
            "{:<12} {:<7} {:<16} {:<w$} {:<w$} {:<12} -> {:<12} {:>10}",
            "TIME", "PID", "COMM", "LADDR:LPORT", "RADDR:RPORT", "OLD", "NEW", "MS"
        )?;
        if container {
            write!(self.out, " {:<12}", "CONTAINER")?;
        }
        writeln!(self.out)?;
        self.out.flush()
    }

    /// One line per transition, formatted by hand: serde, `core::fmt` and small
    /// `memcpy` calls cost several times the rest of the per-event work.
    #[allow(dead_code)] // `trace` writes `transition_ident`; kept for the views tests.
    pub fn transition(&mut self, ev: &Event) -> io::Result<()> {
        let at: &mut [u8; LINE_CAP] = (&mut self.buf[self.len..self.len + LINE_CAP])
            .try_into()
            .expect("LINE_CAP bytes");
        let mut line = Line::new(at);
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
        self.len += line.pos;
        if self.len >= WRITE_AT {
            self.write_buffered()?;
        }
        Ok(())
    }

    fn write_buffered(&mut self) -> io::Result<()> {
        let n = std::mem::take(&mut self.len);
        self.out.write_all(&self.buf[..n])
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
        let at: &mut [u8; LINE_CAP] = (&mut self.buf[self.len..self.len + LINE_CAP])
            .try_into()
            .expect("LINE_CAP bytes");
        let mut line = Line::new(at);
        if self.json {
            json_line(&mut line, ev, &mut self.clock, &self.states, &mut self.comm);
            json_netns(&mut line, ev);
            self.len += line.pos;
            // The members (a cgroup path may be long) are appended unbounded.
            self.push(members)?;
            self.push(b"}\n")?;
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
            line.byte(b'\n');
            self.len += line.pos;
        }
        if self.len >= WRITE_AT {
            self.write_buffered()?;
        }
        Ok(())
    }

    /// Appends bytes of any length to the batch, keeping `LINE_CAP` free after it.
    fn push(&mut self, b: &[u8]) -> io::Result<()> {
        if self.len + b.len() > WRITE_AT {
            self.write_buffered()?;
            if b.len() > WRITE_AT {
                return self.out.write_all(b);
            }
        }
        self.buf[self.len..self.len + b.len()].copy_from_slice(b);
        self.len += b.len();
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.write_buffered()?;
        self.out.flush()
    }

    /// The summary: a JSON line on stdout in JSON mode, else a line on stderr.
    pub fn summary(&mut self, s: &Summary) -> io::Result<()> {
        self.flush()?;
        if self.json {
            write_summary_json(&mut self.out, s)
        } else {
            eprintln!("{}", summary_text(s));
            Ok(())
        }
    }

    /// Everything written so far (tests).
    #[cfg(test)]
    pub fn written(&mut self) -> &mut W {
        self.write_buffered().expect("write");
        &mut self.out
    }
}

/// State names by kernel number; `None`: unknown to this build.
type StateNames = [Option<&'static str>; 32];

/// The keys, order and types `serde` gave the former `TransitionJson` struct.
#[inline(always)]
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
#[inline(always)]
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

    #[cfg(test)]
    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.pos]
    }

    #[inline(always)]
    fn byte(&mut self, b: u8) {
        self.buf[self.pos] = b;
        self.pos += 1;
    }

    /// Appends `s`; up to 32 bytes as two overlapping fixed-size copies.
    #[inline(always)]
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

    /// `v` in decimal, written in place (two digits per division).
    #[inline(always)]
    fn int(&mut self, v: impl Into<u64>) {
        let mut v: u64 = v.into();
        let n = v.checked_ilog10().unwrap_or(0) as usize + 1;
        let mut end = self.pos + n;
        let d = &mut self.buf[self.pos..end];
        self.pos = end;
        end = n;
        while v >= 100 {
            d[end - 2..end].copy_from_slice(&PAIRS[(v % 100) as usize]);
            v /= 100;
            end -= 2;
        }
        if v >= 10 {
            d[..2].copy_from_slice(&PAIRS[v as usize]);
        } else {
            d[0] = b'0' + v as u8;
        }
    }

    /// `v` as exactly `width` digits, zero-padded.
    #[inline(always)]
    fn padded(&mut self, v: u64, width: usize) {
        put_digits(&mut self.buf[self.pos..self.pos + width], v);
        self.pos += width;
    }

    /// Spaces up to `width` (at most [`SLACK`]) columns after `start`; writes a fixed
    /// [`SLACK`] of them, which inlines better than an exact fill.
    #[inline(always)]
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
    #[inline(always)]
    fn of(family: u16, b: &[u8; 16]) -> Self {
        match family {
            AF_INET => Addr::V4([b[0], b[1], b[2], b[3]]),
            // IPv4-mapped shows as IPv4, by the model's one rule.
            AF_INET6 if is_v4_mapped(b) => Addr::V4([b[12], b[13], b[14], b[15]]),
            AF_INET6 => Addr::V6(*b),
            _ => Addr::V4([0; 4]),
        }
    }

    #[inline(always)]
    fn put(&self, out: &mut Line) {
        match self {
            Addr::V4(a) => {
                // Each octet as a fixed 4-byte store ("127." or "0.xx", with the
                // dot), then the position moves by its real length; the last one's
                // dot is overwritten by what follows (SLACK covers it).
                for &o in a {
                    let (text, n) = OCTETS[usize::from(o)];
                    out.buf[out.pos..out.pos + 4].copy_from_slice(&text);
                    out.pos += n;
                }
                out.pos -= 1;
            }
            Addr::V6(a) => put_v6(out, a),
        }
    }
}

/// Rare, and its zero-run compression is not worth copying.
#[inline(never)]
fn put_v6(out: &mut Line, a: &[u8; 16]) {
    let _ = write!(out, "{}", Ipv6Addr::from(*a));
}

/// Each byte value as decimal text followed by `.`, padded to 4 bytes, and the
/// length of the text with its dot.
const OCTETS: [([u8; 4], usize); 256] = {
    let mut t = [([0; 4], 0); 256];
    let mut i = 0;
    while i < 256 {
        let (h, te, o) = ((i / 100) as u8, (i / 10 % 10) as u8, (i % 10) as u8);
        t[i] = if i >= 100 {
            ([b'0' + h, b'0' + te, b'0' + o, b'.'], 4)
        } else if i >= 10 {
            ([b'0' + te, b'0' + o, b'.', 0], 3)
        } else {
            ([b'0' + o, b'.', 0, 0], 2)
        };
        i += 1;
    }
    t
};

/// The comm up to its NUL, as [`sanitize_comm`] writes it and, for JSON, with `"` and
/// `\` escaped; `scratch` is only used for names that need either.
#[inline(always)]
fn put_comm(out: &mut Line, comm: &[u8; 16], json: bool, scratch: &mut String) {
    // Most names are printable ASCII with nothing to escape: copied as they are.
    let n = comm.iter().take_while(|&&b| PLAIN[usize::from(b)]).count();
    if n == comm.len() || comm[n] == 0 {
        out.put(&comm[..n]);
        return;
    }
    put_comm_escaped(out, comm, json, scratch);
}

#[inline(never)]
fn put_comm_escaped(out: &mut Line, comm: &[u8; 16], json: bool, scratch: &mut String) {
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
#[inline(always)]
fn put_state(out: &mut Line, names: &StateNames, n: u8) {
    match names.get(usize::from(n)).copied().flatten() {
        Some(name) => out.put(name.as_bytes()),
        None => put_unknown_state(out, n),
    }
}

#[inline(never)]
fn put_unknown_state(out: &mut Line, n: u8) {
    out.put(b"UNKNOWN(");
    out.int(n);
    out.byte(b')');
}

/// Nanoseconds as a JSON number of milliseconds, exact: `1532.104`, `2.0`, `0.000001`.
#[inline(always)]
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
#[inline(always)]
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
