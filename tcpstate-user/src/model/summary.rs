//! The summary printed at exit: what was received, shown and lost, built from the
//! probe's raw counters and the reader's own counts by one pure function.

use serde::Serialize;

use crate::probe::{features::Degraded, Counters};

/// Counters printed at exit (the JSON summary's fields, in this order).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Transitions received from the kernel.
    pub events: u64,
    /// Transitions that passed the filters (the probe's, and for `trace` its own).
    pub shown: u64,
    /// Transitions that never reached userspace, or not whole:
    /// `lost_ringbuf + lost_skipped + lost_read + lost_transit`.
    pub lost: u64,
    /// Ring buffer full (userspace too slow), counted per CPU by the probe.
    pub lost_ringbuf: u64,
    /// Runs the kernel skipped that no program made up for: the transition probe's
    /// `recursion_misses` the backup probe did not recover, and the timer probe's
    /// (TIME_WAIT expiries never seen).
    pub lost_skipped: u64,
    /// Transitions dropped because a kernel read failed.
    pub lost_read: u64,
    /// Events the probe submitted to the ring buffer that never reached the reader.
    pub lost_transit: u64,
    /// Histogram samples kept without their --by key (map full, or its bucket locked
    /// by the program this run interrupted). Kept, so not lost.
    pub hist_spilled: u64,
    /// Skipped runs that the backup probe handled (not lost).
    pub recovered: u64,
    /// Sockets not tracked because a socket table (the probe's, its TIME_WAIT
    /// candidates', or the reader's) was full.
    pub untracked: u64,
    /// Malformed ring-buffer records.
    pub bad_records: u64,
    /// Transitions the kernel handed to the probe, before any filter (every protocol
    /// the tracepoint reports). A transition the kernel never hands to BPF programs
    /// cannot be counted anywhere else: compare with tracefs's event count.
    pub probe_calls: u64,
    /// The optional parts of the probe this kernel refused (`[]`: none).
    pub degraded: Degraded,
}

/// What the reader counted itself.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Records decoded into events.
    pub events: u64,
    /// Records too short to decode.
    pub bad_records: u64,
    /// The probe's count of submitted events, read just before the final drain:
    /// everything counted there was in the ring then, so the drain received it.
    pub emitted: u64,
    /// Events the command showed, when it filters further than the probe (`trace`);
    /// `None`: all of them.
    pub shown: Option<u64>,
    /// Sockets the reader's own table could not hold (`linger`).
    pub untracked: u64,
}

impl Summary {
    /// Each loss is counted in exactly one term, and nothing that was kept (the
    /// recovered runs, the spilled samples) is counted as lost.
    pub fn from_counters(c: &Counters, r: &Received) -> Summary {
        let lost_ringbuf = c.ringbuf_full;
        let lost_skipped = c.set_state_skipped.saturating_sub(c.set_state_recovered) + c.tw_skipped;
        let lost_read = c.read_failed;
        // Submitted by the probe but never read here (decoded or not): should be 0.
        let lost_transit = r.emitted.saturating_sub(r.events + r.bad_records);
        Summary {
            events: r.events,
            // Everything received passed the probe's filters.
            shown: r.shown.unwrap_or(r.events),
            lost: lost_ringbuf + lost_skipped + lost_read + lost_transit,
            lost_ringbuf,
            lost_skipped,
            lost_read,
            lost_transit,
            hist_spilled: c.hist_spilled,
            recovered: c.set_state_recovered,
            untracked: c.table_full + c.tw_untracked + r.untracked,
            bad_records: r.bad_records,
            probe_calls: c.probe_calls,
            degraded: c.degraded,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(events: u64) -> Received {
        Received {
            events,
            emitted: events,
            ..Default::default()
        }
    }

    #[test]
    fn nothing_lost_is_zero() {
        let s = Summary::from_counters(&Counters::default(), &received(10));
        assert_eq!(
            s,
            Summary {
                events: 10,
                shown: 10,
                ..Default::default()
            }
        );
    }

    type Term = fn(&Summary) -> u64;

    #[test]
    fn every_loss_term_counts_once() {
        let cases: [(Counters, Received, Term); 5] = [
            (
                Counters {
                    ringbuf_full: 3,
                    ..Default::default()
                },
                received(1),
                |s| s.lost_ringbuf,
            ),
            (
                Counters {
                    set_state_skipped: 3,
                    ..Default::default()
                },
                received(1),
                |s| s.lost_skipped,
            ),
            (
                Counters {
                    tw_skipped: 3,
                    ..Default::default()
                },
                received(1),
                |s| s.lost_skipped,
            ),
            (
                Counters {
                    read_failed: 3,
                    ..Default::default()
                },
                received(1),
                |s| s.lost_read,
            ),
            (
                Counters::default(),
                Received {
                    events: 1,
                    emitted: 4,
                    ..Default::default()
                },
                |s| s.lost_transit,
            ),
        ];
        for (c, r, term) in cases {
            let s = Summary::from_counters(&c, &r);
            assert_eq!(term(&s), 3, "{c:?} {r:?}");
            // The total is that one term: no other term saw it too.
            assert_eq!(s.lost, 3, "{c:?} {r:?}: {s:?}");
            assert_eq!(
                s.lost_ringbuf + s.lost_skipped + s.lost_read + s.lost_transit,
                s.lost
            );
        }
    }

    #[test]
    fn terms_add_up() {
        let c = Counters {
            ringbuf_full: 1,
            set_state_skipped: 20,
            set_state_recovered: 18,
            tw_skipped: 100,
            read_failed: 1000,
            ..Default::default()
        };
        let r = Received {
            events: 5,
            bad_records: 2,
            emitted: 10_007,
            ..Default::default()
        };
        let s = Summary::from_counters(&c, &r);
        assert_eq!(s.lost_skipped, 102);
        assert_eq!(s.lost_transit, 10_000);
        assert_eq!(s.lost, 1 + 102 + 1000 + 10_000);
    }

    #[test]
    fn kept_is_not_lost() {
        // Every skipped run recovered by the backup: nothing lost, all recovered.
        let c = Counters {
            set_state_skipped: 7,
            set_state_recovered: 7,
            hist_spilled: 9,
            ..Default::default()
        };
        let s = Summary::from_counters(&c, &received(3));
        assert_eq!(
            (s.lost, s.lost_skipped, s.recovered, s.hist_spilled),
            (0, 0, 7, 9)
        );
        // The backup counts a recovery the primary's miss counter has not shown yet:
        // never a negative loss.
        let c = Counters {
            set_state_skipped: 1,
            set_state_recovered: 2,
            ..Default::default()
        };
        assert_eq!(Summary::from_counters(&c, &received(0)).lost, 0);
        // Malformed records were received: not lost in transit, counted apart.
        let r = Received {
            events: 3,
            bad_records: 2,
            emitted: 5,
            ..Default::default()
        };
        let s = Summary::from_counters(&Counters::default(), &r);
        assert_eq!((s.lost_transit, s.bad_records, s.events), (0, 2, 3));
    }

    #[test]
    fn coverage_counters() {
        let c = Counters {
            table_full: 1,
            tw_untracked: 2,
            probe_calls: 99,
            ..Default::default()
        };
        let r = Received {
            shown: Some(1),
            untracked: 16,
            ..received(3)
        };
        let s = Summary::from_counters(&c, &r);
        assert_eq!(s.untracked, 19);
        assert_eq!((s.events, s.shown, s.probe_calls, s.lost), (3, 1, 99, 0));
    }
}
