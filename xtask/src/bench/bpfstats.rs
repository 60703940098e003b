//! The kernel's own account of what each BPF program costs: `kernel.bpf_stats_enabled`
//! makes every run add its time to the program's `run_time_ns` and `run_cnt`
//! (`__bpf_prog_run()` with `bpf_stats_enabled_key`), read here with `bpftool prog
//! show`. A program belongs to the variant whose process holds an fd of it (or of a
//! link to it): /proc/PID/fdinfo names its `prog_id`, so programs that other tools
//! load at the same time are never counted.

use std::{collections::HashMap, process::Command};

use anyhow::{bail, Context, Result};

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Sets kernel.bpf_stats_enabled=1 and puts the old value back when dropped (an
/// error, a panic, or the end of the bench alike).
pub struct StatsGuard {
    old: String,
}

impl StatsGuard {
    pub fn enable() -> Result<Self> {
        let old = std::fs::read_to_string(SYSCTL)
            .with_context(|| format!("reading {SYSCTL}"))?
            .trim()
            .to_string();
        std::fs::write(SYSCTL, "1").with_context(|| format!("writing 1 to {SYSCTL}"))?;
        if old != "1" {
            eprintln!(
                "xtask bench: kernel.bpf_stats_enabled=1 for the bench (was {old}; restored after)"
            );
        }
        Ok(StatsGuard { old })
    }
}

impl Drop for StatsGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(SYSCTL, &self.old) {
            eprintln!(
                "xtask bench: warning: could not restore kernel.bpf_stats_enabled={}: {e}",
                self.old
            );
        }
    }
}

/// One program's counters at one moment.
#[derive(Clone, Debug, Default)]
pub struct ProgStat {
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Every loaded program's counters, by id.
pub fn read_all() -> Result<HashMap<u32, ProgStat>> {
    let out = Command::new("bpftool")
        .args(["--json", "prog", "show"])
        .output()
        .context("running bpftool")?;
    if !out.status.success() {
        bail!(
            "bpftool prog show failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let progs: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).context("parsing bpftool's JSON")?;
    Ok(progs
        .iter()
        .filter_map(|p| {
            Some((
                p["id"].as_u64()? as u32,
                ProgStat {
                    name: p["name"].as_str().unwrap_or("?").to_string(),
                    // bpftool leaves both out while they are 0.
                    run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
                    run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
                },
            ))
        })
        .collect())
}

/// The ids of the programs process `pid` holds an fd of, directly or through a link.
pub fn prog_ids_of(pid: u32) -> Vec<u32> {
    let mut ids = Vec::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return ids;
    };
    for fd in dir.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        if !(t.contains("bpf-prog") || t.contains("bpf_link") || t.contains("bpf-link")) {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
        if let Ok(text) = std::fs::read_to_string(info) {
            for l in text.lines() {
                if let Some(id) = l
                    .strip_prefix("prog_id:")
                    .and_then(|v| v.trim().parse().ok())
                {
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
            }
        }
    }
    ids.sort_unstable();
    ids
}

/// The counters of `ids` now.
pub fn snapshot(ids: &[u32]) -> Result<Vec<(u32, ProgStat)>> {
    let all = read_all()?;
    Ok(ids
        .iter()
        .filter_map(|id| Some((*id, all.get(id)?.clone())))
        .collect())
}

/// What each program ran between two snapshots (a program gone by `after` is left
/// out). The kernel keeps 15 bytes of a name, so tcpstate's primary and backup are
/// both `inet_sock_set_s`: the second of a name (in load order, by id) is `NAME#2`.
pub fn delta(before: &[(u32, ProgStat)], after: &[(u32, ProgStat)]) -> Vec<ProgStat> {
    let mut out: Vec<ProgStat> = Vec::new();
    for (id, a) in after {
        let Some((_, b)) = before.iter().find(|(i, _)| i == id) else {
            continue;
        };
        let same = out
            .iter()
            .filter(|p| p.name.split('#').next() == Some(&a.name))
            .count();
        out.push(ProgStat {
            name: if same == 0 {
                a.name.clone()
            } else {
                format!("{}#{}", a.name, same + 1)
            },
            run_time_ns: a.run_time_ns.saturating_sub(b.run_time_ns),
            run_cnt: a.run_cnt.saturating_sub(b.run_cnt),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{delta, ProgStat};

    fn p(name: &str, ns: u64, cnt: u64) -> ProgStat {
        ProgStat {
            name: name.into(),
            run_time_ns: ns,
            run_cnt: cnt,
        }
    }

    #[test]
    fn delta_keeps_programs_of_one_name_apart() {
        let before = vec![
            (7, p("inet_sock_set_s", 100, 1)),
            (8, p("inet_sock_set_s", 50, 1)),
        ];
        let after = vec![
            (7, p("inet_sock_set_s", 1100, 11)),
            (8, p("inet_sock_set_s", 250, 11)),
            (9, p("new", 5, 5)),
        ];
        let d = delta(&before, &after);
        assert_eq!(
            d.len(),
            2,
            "a program loaded after the first snapshot is left out"
        );
        assert_eq!(
            (d[0].name.as_str(), d[0].run_time_ns, d[0].run_cnt),
            ("inet_sock_set_s", 1000, 10)
        );
        assert_eq!(
            (d[1].name.as_str(), d[1].run_time_ns, d[1].run_cnt),
            ("inet_sock_set_s#2", 200, 10)
        );
    }
}
