//! What the running kernel gives: the optional parts of the probe it refused, found
//! once at startup by trying to load each (as libbpf's feature probes do), never by
//! parsing the verifier's text, and the core ones whose absence stops a command.

use std::fmt;

use serde::{Serialize, Serializer};

/// An optional part of the probe; without it a command runs with less.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// Owners of the sockets that predate tcpstate (`seed_owners`, or where that is
    /// refused `seed_index` + `seed_adopt`).
    OwnerSeed,
    /// TIME_WAIT's end by its timer (`tw_timer_expire` on `timer_expire_entry`), and
    /// its early end by a kill or reuse (`tw_timer_cancel` on `timer_cancel`).
    TimeWaitExpiry,
}

impl Feature {
    pub const ALL: [Feature; 2] = [Feature::OwnerSeed, Feature::TimeWaitExpiry];

    /// The name in JSON (`"degraded": [...]`) and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Feature::OwnerSeed => "owner_seed",
            Feature::TimeWaitExpiry => "time_wait_expiry",
        }
    }

    /// What is lost without it, as the warning says.
    pub fn lost(self) -> &'static str {
        match self {
            Feature::OwnerSeed => "owners of sockets older than tcpstate: unknown",
            Feature::TimeWaitExpiry => {
                "TIME_WAIT expiries not seen: TIME_WAIT lifetimes only for reused 4-tuples, \
                 the others counted as unseen"
            }
        }
    }

    fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// The optional parts the kernel refused (a set of [`Feature`]s).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Degraded(u32);

impl Degraded {
    pub fn add(&mut self, f: Feature) {
        self.0 |= f.bit();
    }

    pub fn has(self, f: Feature) -> bool {
        self.0 & f.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Feature> {
        Feature::ALL.into_iter().filter(move |f| self.has(*f))
    }
}

/// A JSON list of names: `[]` when nothing is degraded.
impl Serialize for Degraded {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(Feature::name))
    }
}

/// `owner_seed (owners of ...), ...` for text summaries.
impl fmt::Display for Degraded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, feat) in self.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{} ({})", feat.name(), feat.lost())?;
        }
        Ok(())
    }
}

/// Test hook: `TCPSTATE_TEST_REFUSE=prog,...` loads those programs against a kernel
/// attach point whose context does not fit them, so that the kernel's verifier
/// really refuses them and the degraded path runs as on a kernel without them.
pub fn test_refuses(prog: &str) -> bool {
    std::env::var("TCPSTATE_TEST_REFUSE").is_ok_and(|v| v.split(',').any(|p| p.trim() == prog))
}

/// Bench hook: `TCPSTATE_PROFILE_SKIP=part,...` (the names of
/// `tcpstate_common::skip::ALL`) leaves those parts out of the transition probe, for
/// `cargo xtask bench --profile`'s per-part costs. Its output is wrong then.
pub fn profile_skip() -> u32 {
    let Ok(v) = std::env::var("TCPSTATE_PROFILE_SKIP") else {
        return 0;
    };
    v.split(',')
        .filter_map(|p| {
            tcpstate_common::skip::ALL
                .iter()
                .find(|(n, _)| *n == p.trim())
                .map(|(_, b)| *b)
        })
        .fold(0, |a, b| a | b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_json_and_text() {
        let mut d = Degraded::default();
        assert!(d.is_empty());
        assert_eq!(serde_json::to_string(&d).unwrap(), "[]");
        d.add(Feature::TimeWaitExpiry);
        d.add(Feature::OwnerSeed);
        d.add(Feature::OwnerSeed);
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"["owner_seed","time_wait_expiry"]"#
        );
        let text = d.to_string();
        assert!(text.starts_with(
            "owner_seed (owners of sockets older than tcpstate: unknown); time_wait_expiry ("
        ));
    }
}
