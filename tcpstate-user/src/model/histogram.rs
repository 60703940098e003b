//! Time-in-state histograms: the kernel's log-linear buckets (16 per power of two, see
//! `tcpstate_common::hist_bucket`), summed over CPUs by the probe and over intervals
//! here, with count, percentiles and max, and the rows of the bcc-style log2 display.

use tcpstate_common::{hist_bucket_low, Hist, HIST_BUCKETS};

/// Display unit of the log2 rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Us,
    Ms,
    S,
}

impl Unit {
    fn per_us(self) -> f64 {
        match self {
            Unit::Us => 1.0,
            Unit::Ms => 1e-3,
            Unit::S => 1e-6,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Unit::Us => "us",
            Unit::Ms => "ms",
            Unit::S => "s",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Unit::Us => "usecs",
            Unit::Ms => "msecs",
            Unit::S => "secs",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    pub count: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
    pub buckets: Vec<u64>,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            count: 0,
            sum_ns: 0,
            max_ns: 0,
            buckets: vec![0; HIST_BUCKETS],
        }
    }
}

impl Histogram {
    /// One sample (synthetic histograms in tests; the probe fills real ones).
    #[cfg(test)]
    pub fn record_ns(&mut self, ns: u64) {
        self.count += 1;
        self.sum_ns += ns;
        self.max_ns = self.max_ns.max(ns);
        let b = tcpstate_common::hist_bucket(ns / 1000);
        self.buckets[b] += 1;
    }

    /// Adds one CPU's (or one interval's) kernel histogram.
    pub fn add(&mut self, h: &Hist) {
        self.count += h.count;
        self.sum_ns += h.sum_ns;
        self.max_ns = self.max_ns.max(h.max_ns);
        for (a, b) in self.buckets.iter_mut().zip(h.buckets.iter()) {
            *a += b;
        }
    }

    pub fn merge(&mut self, o: &Histogram) {
        self.count += o.count;
        self.sum_ns += o.sum_ns;
        self.max_ns = self.max_ns.max(o.max_ns);
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            *a += b;
        }
    }

    /// The value at quantile `q` (0..=1) in ns: the middle of its bucket, so within
    /// 1/32 (3.1%) of the true value; never above the exact max.
    pub fn quantile_ns(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        if rank == self.count {
            return Some(self.max_ns);
        }
        let mut seen = 0;
        for (i, &c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let lo = hist_bucket_low(i);
                let hi = if i + 1 < HIST_BUCKETS {
                    hist_bucket_low(i + 1)
                } else {
                    lo * 2
                };
                return Some(((lo + hi) * 1000 / 2).min(self.max_ns));
            }
        }
        Some(self.max_ns)
    }

    /// bcc-style rows: (lo, hi, count) over powers of two of the display unit, from
    /// the first to the last non-empty row.
    pub fn log2_rows(&self, unit: Unit) -> Vec<(u64, u64, u64)> {
        let mut rows = [0u64; 64];
        for (i, &c) in self.buckets.iter().enumerate() {
            if c == 0 {
                continue;
            }
            let v = (hist_bucket_low(i) as f64 * unit.per_us()) as u64;
            // Row 1 is bcc's "0 -> 1"; row s covers 2^(s-1) ..= 2^s - 1.
            let slot = (64 - v.leading_zeros() as usize).max(1);
            rows[slot.min(63)] += c;
        }
        let Some(first) = rows.iter().position(|&c| c > 0) else {
            return Vec::new();
        };
        let last = rows.iter().rposition(|&c| c > 0).unwrap();
        (first..=last)
            .map(|s| {
                let (lo, hi) = if s == 1 {
                    (0, 1)
                } else {
                    (1 << (s - 1), (1 << s) - 1)
                };
                (lo, hi, rows[s])
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_count_and_max_close_percentiles() {
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.record_ns(v * 1_000_000); // 1..1000 ms
        }
        assert_eq!(h.count, 1000);
        assert_eq!(h.max_ns, 1_000_000_000);
        for (q, want) in [(0.5, 500e6), (0.9, 900e6), (0.99, 990e6)] {
            let got = h.quantile_ns(q).unwrap() as f64;
            assert!((got - want).abs() / want < 0.032, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.quantile_ns(1.0), Some(1_000_000_000));
        assert_eq!(Histogram::default().quantile_ns(0.5), None);
    }

    #[test]
    fn sixty_seconds_reads_as_sixty() {
        let mut h = Histogram::default();
        for ms in [59_990u64, 60_000, 60_010, 60_200] {
            h.record_ns(ms * 1_000_000);
        }
        let p50 = h.quantile_ns(0.5).unwrap() as f64 / 1e9;
        // All four share a bucket (58.7-60.8 s): the percentile is its middle.
        assert!((p50 - 60.05).abs() / 60.05 < 0.032, "{p50}");
        assert_eq!(h.max_ns, 60_200_000_000);
    }

    #[test]
    fn kernel_hists_add_up() {
        let mut k = Hist {
            count: 2,
            sum_ns: 3000,
            max_ns: 2000,
            buckets: [0; HIST_BUCKETS],
        };
        k.buckets[1] = 1;
        k.buckets[2] = 1;
        let mut h = Histogram::default();
        h.add(&k);
        h.add(&k);
        assert_eq!((h.count, h.sum_ns, h.max_ns), (4, 6000, 2000));
        assert_eq!(h.buckets[1], 2);
    }

    #[test]
    fn log2_rows_like_bcc() {
        let mut h = Histogram::default();
        h.record_ns(40_000_000); // 40 ms = 40000 us
        h.record_ns(50_000_000);
        h.record_ns(3_000); // 3 us
        let rows = h.log2_rows(Unit::Us);
        assert_eq!(rows.first(), Some(&(2, 3, 1)));
        assert_eq!(rows.last(), Some(&(32768, 65535, 2)));
        let ms_rows = h.log2_rows(Unit::Ms);
        assert_eq!(ms_rows.last(), Some(&(32, 63, 2)));
    }
}
