//! The wall clock of the views: kernel monotonic timestamps as UTC (RFC 3339) or
//! local time, each second formatted once. Calendar and time zone rules are jiff's;
//! the local offset is looked up for every second printed, so local times stay right
//! across a DST change.

use std::fmt::Write as _;

use jiff::{
    tz::{Offset, TimeZone},
    Timestamp,
};

use crate::render::format::put_digits;

/// Converts kernel monotonic timestamps to wall-clock text, caching the formatted
/// second so that a burst of events costs one calendar conversion.
pub struct Clock {
    /// CLOCK_REALTIME - CLOCK_MONOTONIC at start, in ns.
    offset_ns: i128,
    /// The local time zone (its rules, not one offset).
    tz: TimeZone,
    /// The monotonic time at which the last wall second seen starts, and that second:
    /// most events fall in the second of the one before, which then costs no i128
    /// division.
    base_mono: u64,
    base_sec: i64,
    utc_sec: i64,
    utc_text: String,
    /// The UTC second whose local time `local_text` holds.
    local_sec: i64,
    local_text: String,
}

impl Clock {
    /// The system's time zone (TZ, else /etc/localtime; UTC if neither is usable).
    pub fn new() -> Self {
        let real = clock_ns(libc::CLOCK_REALTIME);
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let tz = TimeZone::try_system().unwrap_or(TimeZone::UTC);
        Self::with_zone(real - mono, tz)
    }

    /// A fixed local offset, in seconds (tests).
    #[cfg(test)]
    pub fn with_offsets(offset_ns: i128, local_offset_s: i64) -> Self {
        let off = Offset::from_seconds(local_offset_s as i32).expect("a valid offset");
        Self::with_zone(offset_ns, TimeZone::fixed(off))
    }

    pub fn with_zone(offset_ns: i128, tz: TimeZone) -> Self {
        let mut c = Self {
            offset_ns,
            tz,
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
    pub(crate) fn utc_second(&mut self, mono_ns: u64) -> (&str, u32) {
        let (sec, nsec) = self.wall(mono_ns);
        if sec != self.utc_sec {
            self.utc_sec = sec;
            self.utc_text.clear();
            let t = Offset::UTC.to_datetime(timestamp(sec));
            let _ = write!(
                self.utc_text,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                t.year(),
                t.month(),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
        }
        (&self.utc_text, nsec)
    }

    /// The cached local `HH:MM:SS` of `mono_ns`, and its nanoseconds.
    pub(crate) fn local_second(&mut self, mono_ns: u64) -> (&str, u32) {
        let (sec, nsec) = self.wall(mono_ns);
        if sec != self.local_sec {
            self.local_sec = sec;
            self.local_text.clear();
            // The offset of this second: one lookup in the zone's transitions.
            let ts = timestamp(sec);
            let t = self.tz.to_offset(ts).to_datetime(ts);
            let _ = write!(
                self.local_text,
                "{:02}:{:02}:{:02}",
                t.hour(),
                t.minute(),
                t.second()
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

    /// `12:01:02.123` in the local time zone.
    pub fn local_hms(&mut self, mono_ns: u64, out: &mut String) {
        let (text, nsec) = self.local_second(mono_ns);
        out.push_str(text);
        out.extend(local_fraction(nsec).iter().map(|&b| char::from(b)));
    }
}

/// A Unix second as a jiff timestamp, clamped to jiff's range (years -9999..=9999).
fn timestamp(sec: i64) -> Timestamp {
    let sec = sec.clamp(Timestamp::MIN.as_second(), Timestamp::MAX.as_second());
    Timestamp::from_second(sec).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// `.123456Z`: microseconds.
pub(crate) fn utc_fraction(nsec: u32) -> [u8; 8] {
    let mut f = *b".000000Z";
    put_digits(&mut f[1..7], u64::from(nsec / 1000));
    f
}

/// `.123`: milliseconds.
pub(crate) fn local_fraction(nsec: u32) -> [u8; 4] {
    let mut f = *b".000";
    put_digits(&mut f[1..], u64::from(nsec / 1_000_000));
    f
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The dates the hand-written `civil_from_days` was tested with, through jiff.
    #[test]
    fn civil_dates() {
        for (days, want) in [
            (0, "1970-01-01T00:00:00"),
            (20_414, "2025-11-22T00:00:00"),
            (11_016, "2000-02-29T00:00:00"),
            (-1, "1969-12-31T00:00:00"),
        ] {
            let mut c = Clock::with_offsets(i128::from(days) * 86_400_000_000_000, 0);
            assert_eq!(c.utc_second(0).0, want, "{days}");
        }
    }

    /// A zone's offset is taken for each second printed: one clock shows both sides
    /// of a DST change (Berlin, 2026-03-29 01:00 UTC).
    #[test]
    fn local_time_follows_dst() {
        let tz = TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap();
        let switch: i128 = 1_774_746_000; // 2026-03-29T01:00:00Z
        let mut c = Clock::with_zone((switch - 1) * 1_000_000_000, tz);
        let mut s = String::new();
        c.local_hms(0, &mut s);
        assert_eq!(s, "01:59:59.000");
        s.clear();
        c.local_hms(1_000_000_000, &mut s);
        assert_eq!(s, "03:00:00.000");
        s.clear();
        c.utc_rfc3339(1_000_000_000, &mut s);
        assert_eq!(s, "2026-03-29T01:00:00.000000Z");
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
