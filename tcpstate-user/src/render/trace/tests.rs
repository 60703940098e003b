use std::net::{Ipv4Addr, Ipv6Addr};

use tcpstate_common::{state, AF_INET, AF_INET6};

use super::*;
use crate::model::events::tests::event;

fn sample() -> Event {
    let mut ev = event(AF_INET, state::ESTABLISHED, state::CLOSE_WAIT);
    ev.ts_ns = 5_000_000_000;
    ev.saddr[..4].copy_from_slice(&[10, 0, 0, 5]);
    ev.daddr[..4].copy_from_slice(&[10, 0, 0, 9]);
    ev.sport = 443;
    ev.dport = 51234;
    ev.pid = 4242;
    ev.owner_from = tcpstate_common::OWNER_SOCKET;
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
    let text = String::from_utf8(w.written().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines[0],
        serde_json::json!({"type":"transition","time":"2026-11-22T12:01:02.123456Z",
            "sock":"42","pid":4242,"comm":"nginx","owner_from":"socket","family":4,"saddr":"10.0.0.5","sport":443,
            "daddr":"10.0.0.9","dport":51234,"old":"ESTABLISHED","new":"CLOSE_WAIT",
            "prev_ms":1532.104})
    );
    assert_eq!(lines[1]["pid"], serde_json::Value::Null);
    assert_eq!(lines[1]["comm"], serde_json::Value::Null);
    assert_eq!(lines[1]["owner_from"], serde_json::Value::Null);
    assert_eq!(lines[1]["prev_ms"], serde_json::Value::Null);
    assert_eq!(lines[1]["new"], "UNKNOWN(99)");
}

#[test]
fn json_escapes_hostile_comm() {
    let mut w = writer(true, false);
    let mut ev = sample();
    ev.comm = *b"a\"b\x1b]0;x\x07\n\xff\0\0\0\0\0";
    w.transition(&ev).unwrap();
    let text = String::from_utf8(w.written().clone()).unwrap();
    assert!(!text.bytes().any(|b| b < 0x20 && b != b'\n'));
    let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    assert_eq!(v["comm"], "a\"b\\x1b]0;x\\x07\\x0a\\xff");
}

#[test]
fn table_line() {
    let mut w = writer(false, false);
    w.header(false).unwrap();
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
    let text = String::from_utf8(w.written().clone()).unwrap();
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
    let text = String::from_utf8(w.written().clone()).unwrap();
    assert!(text.contains("[2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff]:51234"));
}

/// The serde/`core::fmt` writer this module used before, kept as the reference
/// the hand-written one must match.
mod reference {
    use std::{fmt::Write as _, io::Write as _, net::IpAddr};

    use serde::Serialize;
    use tcpstate_common::Event;

    use crate::{
        model::events::{addrs, display_family, prev_ms, StateNum},
        render::{clock::Clock, format::sanitize_comm},
    };

    #[derive(Serialize)]
    struct TransitionJson<'a> {
        r#type: &'static str,
        time: &'a str,
        sock: &'a str,
        pid: Option<u32>,
        comm: Option<&'a str>,
        owner_from: Option<&'a str>,
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
                    owner_from: pid.and(match ev.owner_from {
                        tcpstate_common::OWNER_SOCKET => Some("socket"),
                        tcpstate_common::OWNER_LISTENER => Some("listener"),
                        _ => None,
                    }),
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
                        let mark = if ev.owner_from == tcpstate_common::OWNER_LISTENER {
                            "*"
                        } else {
                            ""
                        };
                        let p = format!("{p}{mark}");
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
        ev.owner_from = [0, 1, 2][i % 3];
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
    (std::mem::take(new.written()), old.out)
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
             \"pid\":4242,\"comm\":\"nginx\",\"owner_from\":null,\"family\":4,\"saddr\":\"10.0.0.5\",\"sport\":0,\
             \"daddr\":\"10.0.0.9\",\"dport\":51234,\"old\":\"ESTABLISHED\",\
             \"new\":\"CLOSE_WAIT\",\"prev_ms\":0.0}",
            "{\"type\":\"transition\",\"time\":\"2026-11-22T12:01:02.523456Z\",\"sock\":\"1\",\
             \"pid\":null,\"comm\":null,\"owner_from\":null,\"family\":6,\"saddr\":\"::1\",\"sport\":443,\
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
        w.written().clear();
        w.transition(&ev).unwrap();
        let text = std::str::from_utf8(w.written()).unwrap();
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
        let want = crate::model::events::addr(family, &b).to_string();
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
fn listener_owner_is_marked() {
    let mut ev = sample();
    ev.owner_from = tcpstate_common::OWNER_LISTENER;
    let mut w = writer(false, false);
    w.transition(&ev).unwrap();
    let text = String::from_utf8(w.written().clone()).unwrap();
    assert!(text.contains(" 4242*   nginx  "), "{text}");
    let mut w = writer(true, false);
    w.transition(&ev).unwrap();
    let v: serde_json::Value = serde_json::from_slice(w.written()).unwrap();
    assert_eq!(v["owner_from"], "listener");
    assert_eq!(v["pid"], 4242);
}
