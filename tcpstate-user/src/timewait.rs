//! TIME_WAIT lifetimes, which the tracepoint never shows (DOMAIN fact 2): a candidate
//! starts at FIN_WAIT2/CLOSING->CLOSE (`tcp_time_wait()` hands the connection to an
//! `inet_timewait_sock` that keeps the cookie); sock_diag polls confirm it and see it
//! go; a new connection on its 4-tuple (reported by the probe) ends it as reused.
//!
//! End-time resolution: expiry is read from the kernel's own timewait timer
//! (`idiag_expires`) at the last poll that saw the socket; a reset is placed between
//! the last poll that saw it and the first that did not (± half the poll interval);
//! a reuse is exact.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use tcpstate_common::{Event, TwKey};

/// How a TIME_WAIT socket ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ended {
    Expired,
    Reused,
    Reset,
}

/// What a sample is grouped by: the closing process, and the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub pid: u32,
    pub comm: [u8; 16],
    pub daddr: [u8; 16],
    pub family: u16,
    pub dport: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub dur_ns: u64,
    pub ended: Ended,
    pub origin: Origin,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    start_ns: u64,
    origin: Origin,
    tuple: TwKey,
    /// Seen in a TIME_WAIT dump.
    confirmed: bool,
    last_seen_ns: u64,
    /// When the kernel's timer says it dies.
    expected_end_ns: u64,
}

/// A socket in the TIME_WAIT dump: cookie and milliseconds left.
pub struct Sighting {
    pub cookie: u64,
    pub expires_ms: u32,
}

#[derive(Debug, Default)]
pub struct TimeWaits {
    cands: HashMap<u64, Candidate>,
    /// Candidates that never showed up as TIME_WAIT: an orphan's end or a
    /// tcp_max_tw_buckets overflow.
    pub not_timewait: u64,
}

/// Slack for "the timer said it would be gone by now".
const EXPIRY_SLACK_NS: u64 = 100_000_000;

impl TimeWaits {
    pub fn candidate(&mut self, ev: &Event) {
        self.cands.insert(
            ev.cookie,
            Candidate {
                start_ns: ev.ts_ns,
                origin: Origin {
                    pid: ev.pid,
                    comm: ev.comm,
                    daddr: ev.daddr,
                    family: ev.family,
                    dport: ev.dport,
                },
                tuple: TwKey {
                    family: ev.family,
                    sport: ev.sport,
                    dport: ev.dport,
                    _pad: 0,
                    saddr: ev.saddr,
                    daddr: ev.daddr,
                },
                confirmed: false,
                last_seen_ns: ev.ts_ns,
                expected_end_ns: 0,
            },
        );
    }

    /// The probe saw a new connection take candidate `cookie`'s 4-tuple at `ts_ns`.
    pub fn reused(&mut self, cookie: u64, ts_ns: u64) -> Option<Sample> {
        let c = self.cands.remove(&cookie)?;
        Some(Sample {
            dur_ns: ts_ns.saturating_sub(c.start_ns),
            ended: Ended::Reused,
            origin: c.origin,
        })
    }

    /// Reconciles with a TIME_WAIT dump that began at `dump_ns` and ended at `now_ns`.
    /// Returns finished samples, and the 4-tuples the probe can forget.
    pub fn poll(
        &mut self,
        seen: &[Sighting],
        dump_ns: u64,
        now_ns: u64,
    ) -> (Vec<Sample>, Vec<TwKey>) {
        let present: HashMap<u64, u32> = seen.iter().map(|s| (s.cookie, s.expires_ms)).collect();
        let mut done = Vec::new();
        let mut forget = Vec::new();
        let mut gone = HashSet::new();
        for (cookie, c) in self.cands.iter_mut() {
            if let Some(&exp) = present.get(cookie) {
                c.confirmed = true;
                c.last_seen_ns = dump_ns;
                c.expected_end_ns = dump_ns + u64::from(exp) * 1_000_000;
                continue;
            }
            if c.start_ns >= dump_ns {
                continue; // created during the dump: judge it next time
            }
            gone.insert(*cookie);
            forget.push(c.tuple);
            if !c.confirmed {
                self.not_timewait += 1;
                continue;
            }
            let (end, ended) = if c.expected_end_ns <= now_ns + EXPIRY_SLACK_NS {
                (c.expected_end_ns, Ended::Expired)
            } else {
                (
                    c.last_seen_ns + (dump_ns - c.last_seen_ns) / 2,
                    Ended::Reset,
                )
            };
            done.push(Sample {
                dur_ns: end.saturating_sub(c.start_ns),
                ended,
                origin: c.origin,
            });
        }
        self.cands.retain(|k, _| !gone.contains(k));
        (done, forget)
    }

    pub fn pending(&self) -> usize {
        self.cands.len()
    }
}

#[cfg(test)]
mod tests {
    use tcpstate_common::{state, AF_INET};

    use super::*;
    use crate::events::tests::event;

    const S: u64 = 1_000_000_000;

    fn cand(cookie: u64, ts: u64) -> Event {
        let mut e = event(AF_INET, state::FIN_WAIT2, state::CLOSE);
        e.cookie = cookie;
        e.ts_ns = ts;
        e.pid = 42;
        e
    }

    #[test]
    fn expiry_uses_the_kernel_timer() {
        let mut t = TimeWaits::default();
        t.candidate(&cand(1, 10 * S));
        // First poll 0.5 s later: 59.5 s left.
        let (d, _) = t.poll(
            &[Sighting {
                cookie: 1,
                expires_ms: 59_500,
            }],
            10 * S + S / 2,
            11 * S,
        );
        assert!(d.is_empty());
        // Gone at the poll after 70 s.
        let (d, forget) = t.poll(&[], 71 * S, 71 * S);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].ended, Ended::Expired);
        assert_eq!(d[0].dur_ns, 60 * S);
        assert_eq!(d[0].origin.pid, 42);
        assert_eq!(forget.len(), 1);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn early_disappearance_is_a_reset() {
        let mut t = TimeWaits::default();
        t.candidate(&cand(1, 0));
        t.poll(
            &[Sighting {
                cookie: 1,
                expires_ms: 59_000,
            }],
            S,
            S,
        );
        t.poll(
            &[Sighting {
                cookie: 1,
                expires_ms: 58_000,
            }],
            2 * S,
            2 * S,
        );
        let (d, _) = t.poll(&[], 3 * S, 3 * S);
        assert_eq!(d[0].ended, Ended::Reset);
        assert_eq!(d[0].dur_ns, 2 * S + S / 2);
    }

    #[test]
    fn reuse_is_exact_and_unconfirmed_candidates_are_dropped() {
        let mut t = TimeWaits::default();
        t.candidate(&cand(1, 0));
        t.candidate(&cand(2, 0));
        let s = t.reused(1, 7 * S).unwrap();
        assert_eq!((s.ended, s.dur_ns), (Ended::Reused, 7 * S));
        assert!(t.reused(1, 8 * S).is_none());
        // Cookie 2 was never seen in TIME_WAIT: an orphan's end, not a sample.
        let (d, _) = t.poll(&[], S, S);
        assert!(d.is_empty());
        assert_eq!(t.not_timewait, 1);
    }

    #[test]
    fn candidates_newer_than_the_dump_wait() {
        let mut t = TimeWaits::default();
        t.candidate(&cand(1, 5 * S));
        let (d, _) = t.poll(&[], 4 * S, 6 * S);
        assert!(d.is_empty());
        assert_eq!((t.pending(), t.not_timewait), (1, 0));
    }
}
