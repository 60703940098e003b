//! Shared formatting for every view: escaping of process names, numbers, durations,
//! addresses.

use std::{fmt::Write as _, net::IpAddr, time::Duration};

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

/// A process name, escaped as [`sanitize_comm`] does.
pub fn comm_text(comm: &[u8]) -> String {
    let mut s = String::new();
    sanitize_comm(comm, &mut s);
    s
}

/// `00` to `99`, for two digits per division.
pub const PAIRS: [[u8; 2]; 100] = {
    let mut t = [[0; 2]; 100];
    let mut i = 0;
    while i < 100 {
        t[i] = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        i += 1;
    }
    t
};

/// Fills `buf` with the low decimal digits of `v`, zero-padded on the left.
#[inline]
pub fn put_digits(buf: &mut [u8], mut v: u64) {
    let mut end = buf.len();
    while end >= 2 {
        buf[end - 2..end].copy_from_slice(&PAIRS[(v % 100) as usize]);
        v /= 100;
        end -= 2;
    }
    if end == 1 {
        buf[0] = b'0' + (v % 10) as u8;
    }
}

/// `17m03s`, `5.2s`, `2h05m`, `3d04h`.
pub fn fmt_age(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    if s < 60 {
        format!("{:.1}s", ns as f64 / 1e9)
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s < 86_400 {
        format!("{}h{:02}m", s / 3600, s / 60 % 60)
    } else {
        format!("{}d{:02}h", s / 86_400, s / 3600 % 24)
    }
}

/// `5s`, `500ms`: a `--min-age` as the user would write it.
pub fn fmt_min_age(ns: u64) -> String {
    let d = Duration::from_nanos(ns);
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Seconds, milliseconds or microseconds, whichever reads best.
pub fn fmt_ns(ns: u64) -> String {
    if ns >= 1_000_000_000 {
        format!("{:.1}s", ns as f64 / 1e9)
    } else if ns >= 1_000_000 {
        format!("{:.1}ms", ns as f64 / 1e6)
    } else {
        format!("{:.1}us", ns as f64 / 1e3)
    }
}

/// Nanoseconds as milliseconds rounded to the microsecond, for JSON.
pub fn ms(ns: Option<u64>) -> Option<f64> {
    ns.map(|n| (n as f64 / 1e3).round() / 1e3)
}

/// `1,203`
pub fn thousands(n: usize) -> String {
    let d = n.to_string();
    let mut out = String::new();
    for (i, c) in d.chars().enumerate() {
        if i > 0 && (d.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `10.0.0.5:8080`, `[::1]:8080`.
pub fn endpoint(a: IpAddr, p: u16) -> String {
    std::net::SocketAddr::new(a, p).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

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
    fn digits() {
        for (v, w, want) in [
            (7, 1, "7"),
            (42, 3, "042"),
            (123456, 6, "123456"),
            (99, 2, "99"),
        ] {
            let mut b = vec![0; w];
            put_digits(&mut b, v);
            assert_eq!(b, want.as_bytes());
        }
        let mut b = [0; 4];
        put_digits(&mut b, 1_234_567);
        assert_eq!(&b, b"4567");
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_age(5_200_000_000), "5.2s");
        assert_eq!(fmt_age(1023 * S), "17m03s");
        assert_eq!(fmt_age(7500 * S), "2h05m");
        assert_eq!(fmt_age(90_000 * S), "1d01h");
        assert_eq!(thousands(1203), "1,203");
        assert_eq!(thousands(100_000), "100,000");
        assert_eq!(thousands(7), "7");
        assert_eq!(fmt_ns(60_200_000_000), "60.2s");
        assert_eq!(fmt_min_age(5 * S), "5s");
        assert_eq!(fmt_min_age(S / 2), "500ms");
    }
}
