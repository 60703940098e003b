//! The cost per transition at a plain rate (`--rates`, default 1k, 10k and 100k
//! transitions/s): real hosts mostly run at the low end, where the tracer's
//! per-wake-up costs dominate, not the per-event ones a full-speed churn shows. Each
//! rate runs every command and the bpftrace count in the same round, paced by `tcpkit
//! churn --rate` (10 transitions per connection).

use std::path::Path;

use anyhow::{bail, Result};

use super::{
    check_interrupted, kill_timewaits, median,
    tracer::{self, Kind, Tools},
    Variant,
};

#[derive(Clone, Debug)]
pub struct RateRow {
    /// Transitions per second asked for.
    pub target: u64,
    pub variant: String,
    /// Transitions per second made (medians over the rounds).
    pub made: f64,
    pub bpf_ns: f64,
    pub cpu_ns: f64,
    /// The tracer's CPU, % of one core.
    pub cpu_pct: f64,
    pub vs_bpftrace: f64,
}

impl RateRow {
    pub fn total_ns(&self) -> f64 {
        self.bpf_ns + self.cpu_ns
    }
}

/// One run: (made/s, BPF ns/tr, tracer CPU ns/tr, tracer CPU % of a core).
type Run = (f64, f64, f64, f64);

/// Paced churn for `secs`: (connections, seconds).
fn paced(tcpkit: &Path, ports: &[u16], conns_per_s: f64, secs: f64) -> Result<(u64, f64)> {
    let mut cmd = std::process::Command::new(tcpkit);
    cmd.arg("churn").arg("--addr");
    for (i, p) in ports.iter().enumerate() {
        cmd.arg(format!("127.0.0.{}:{p}", i + 1));
    }
    let out = cmd
        .args(["--secs", &secs.to_string()])
        .args(["--rate", &conns_per_s.to_string()])
        .output()?;
    if !out.status.success() {
        bail!("churn failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let w: Vec<&str> = text.split_whitespace().collect();
    let after =
        |k: &str| -> Option<f64> { w.get(w.iter().position(|x| *x == k)? + 1)?.parse().ok() };
    match (after("conns"), after("secs")) {
        (Some(n), Some(s)) => Ok((n as u64, s)),
        _ => bail!("churn printed {text:?}"),
    }
}

/// Every variant of `variants` that is a tcpstate command or the bpftrace count, at
/// each rate, `rounds` times (order rotated per round).
pub fn run(
    tools: &Tools,
    variants: &[Variant],
    ports: &[u16],
    rates: &[u64],
    rounds: usize,
    secs: f64,
) -> Result<Vec<RateRow>> {
    let chosen: Vec<&Variant> = variants
        .iter()
        .filter(|v| match &v.kind {
            Kind::Bpftrace => true,
            Kind::Tcpstate { env, bin, .. } => env.is_empty() && bin.is_none(),
            _ => false,
        })
        .collect();
    let mut rows = Vec::new();
    for &target in rates {
        eprintln!("xtask bench: {target} transitions/s, paced");
        // Per variant, one `Run` per round.
        let mut got: Vec<Vec<Run>> = vec![Vec::new(); chosen.len()];
        for round in 0..rounds {
            for k in 0..chosen.len() {
                check_interrupted()?;
                let i = (k + round) % chosen.len();
                kill_timewaits(ports);
                let t = tracer::start(tools, &chosen[i].kind)?;
                let (conns, s) = paced(tools.tcpkit, ports, target as f64 / 10.0, secs)?;
                let cost = tracer::stop(t, &chosen[i].kind, &tools.out_file)?;
                let tr = (conns * 10).max(1) as f64;
                let sample = (
                    tr / s,
                    cost.bpf_ns() as f64 / tr,
                    cost.cpu_ns as f64 / tr,
                    cost.cpu_ns as f64 / (cost.alive_s * 1e9) * 100.0,
                );
                eprintln!(
                    "  round {} {:<32} {:>8.0} tr/s {:>8.0} ns/transition {:>6.2}% CPU",
                    round + 1,
                    chosen[i].name,
                    sample.0,
                    sample.1 + sample.2,
                    sample.3
                );
                got[i].push(sample);
            }
        }
        let reference = chosen.iter().position(|v| matches!(v.kind, Kind::Bpftrace));
        // Ratios per round, then their median, as the main table does.
        for (i, v) in chosen.iter().enumerate() {
            let m = |f: &dyn Fn(&Run) -> f64| median(got[i].iter().map(f).collect());
            let vs = reference.map_or(f64::NAN, |r| {
                median(
                    got[i]
                        .iter()
                        .zip(&got[r])
                        .map(|(a, b)| (a.1 + a.2) / (b.1 + b.2))
                        .collect(),
                )
            });
            rows.push(RateRow {
                target,
                variant: v.name.clone(),
                made: m(&|x| x.0),
                bpf_ns: m(&|x| x.1),
                cpu_ns: m(&|x| x.2),
                cpu_pct: m(&|x| x.3),
                vs_bpftrace: vs,
            });
        }
    }
    Ok(rows)
}
