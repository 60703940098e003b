//! The doctor's views: one text block per finding (severity, summary, evidence lines,
//! advice), or one `finding` JSON line each, then the `doctor_summary`.

use std::fmt::Write as _;

use serde::{ser::SerializeMap, Serialize, Serializer};
use serde_json::Value;

use crate::model::doctor::{Finding, Outcome};

/// Evidence pairs as a JSON object, in the model's order.
struct Evidence<'a>(&'a [(&'static str, Value)]);

impl Serialize for Evidence<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

#[derive(Serialize)]
struct FindingJson<'a> {
    r#type: &'static str,
    severity: &'static str,
    topic: &'static str,
    pid: Option<u32>,
    comm: Option<&'a str>,
    container_id: Option<&'a str>,
    netns: Option<u32>,
    sockets: u64,
    eof_read_sockets: Option<u64>,
    summary: &'a str,
    evidence: Evidence<'a>,
    advice: &'a str,
    caveat: Option<&'a str>,
}

/// One finding as a JSON line (no newline).
pub fn finding_json(f: &Finding) -> String {
    serde_json::to_string(&FindingJson {
        r#type: "finding",
        severity: f.severity.name(),
        topic: f.topic.name(),
        pid: f.who.pid,
        comm: f.who.comm.as_deref(),
        container_id: f.who.container_id.as_deref(),
        netns: f.netns,
        sockets: f.sockets,
        eof_read_sockets: f.eof_read_sockets,
        summary: &f.summary,
        evidence: Evidence(&f.evidence),
        advice: &f.advice,
        caveat: f.caveat.as_deref(),
    })
    .expect("plain data serializes")
}

#[derive(Serialize)]
struct FailedJson<'a> {
    netns: u32,
    error: &'a str,
}

#[derive(Serialize)]
struct SummaryJson<'a> {
    r#type: &'static str,
    findings: usize,
    critical: usize,
    warning: usize,
    info: usize,
    worst: Option<&'static str>,
    namespaces: usize,
    namespaces_failed: Vec<FailedJson<'a>>,
    duration_s: f64,
    lost: u64,
    exit_status: u8,
}

/// The `doctor_summary` line (no newline).
pub fn summary_json(o: &Outcome, duration_s: f64, lost: u64) -> String {
    serde_json::to_string(&SummaryJson {
        r#type: "doctor_summary",
        findings: o.critical + o.warning + o.info,
        critical: o.critical,
        warning: o.warning,
        info: o.info,
        worst: o.worst().map(|s| s.name()),
        namespaces: o.namespaces,
        namespaces_failed: o
            .namespaces_failed
            .iter()
            .map(|(n, e)| FailedJson {
                netns: *n,
                error: e,
            })
            .collect(),
        duration_s,
        lost,
        exit_status: o.exit_status(),
    })
    .expect("plain data serializes")
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if !n.is_u64() && !n.is_i64() => format!("{f:.1}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// The human block of one finding.
pub fn finding_text(f: &Finding, out: &mut String) {
    let _ = writeln!(
        out,
        "{} [{}] {}",
        f.severity.name().to_uppercase(),
        f.topic.name(),
        f.summary
    );
    for (k, v) in &f.evidence {
        let _ = writeln!(out, "    {k}: {}", value_text(v));
    }
    if let Some(c) = &f.caveat {
        let _ = writeln!(out, "    caveat: {c}");
    }
    let _ = writeln!(out, "  advice: {}", f.advice);
}

/// The closing line.
pub fn summary_text(o: &Outcome) -> String {
    let mut s = if o.critical + o.warning == 0 {
        format!(
            "tcpstate doctor: found nothing worth acting on in {} network namespace{}",
            o.namespaces,
            if o.namespaces == 1 { "" } else { "s" }
        )
    } else {
        format!(
            "tcpstate doctor: {} critical, {} warning finding{} in {} network namespace{}",
            o.critical,
            o.warning,
            if o.critical + o.warning == 1 { "" } else { "s" },
            o.namespaces,
            if o.namespaces == 1 { "" } else { "s" }
        )
    };
    if o.info > 0 {
        let _ = write!(s, " ({} for information)", o.info);
    }
    if !o.namespaces_failed.is_empty() {
        let _ = write!(
            s,
            "; {} namespace(s) could not be entered",
            o.namespaces_failed.len()
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::model::doctor::{Severity, Topic, Who};

    fn finding() -> Finding {
        Finding {
            severity: Severity::Warning,
            topic: Topic::CloseWait,
            who: Who {
                pid: Some(4242),
                comm: Some("leaky-api".into()),
                container_id: None,
            },
            netns: Some(4026531840),
            sockets: 300,
            eof_read_sockets: Some(300),
            summary: "s".into(),
            evidence: vec![("fds", json!(303)), ("growth_per_s", json!(1.25))],
            advice: "close it".into(),
            caveat: None,
        }
    }

    #[test]
    fn json_has_the_documented_fields() {
        let line = finding_json(&finding());
        assert!(line.starts_with(r#"{"type":"finding","severity":"warning","topic":"close_wait","pid":4242,"comm":"leaky-api","container_id":null,"netns":4026531840,"sockets":300,"eof_read_sockets":300,"summary":"s","evidence":{"fds":303,"growth_per_s":1.25}"#), "{line}");
        let o = Outcome::of(&[finding()]);
        let s: Value = serde_json::from_str(&summary_json(&o, 5.0, 0)).unwrap();
        assert_eq!((&s["warning"], &s["exit_status"]), (&json!(1), &json!(1)));
        assert_eq!(s["type"], "doctor_summary");
    }

    #[test]
    fn text_block_and_quiet_summary() {
        let mut t = String::new();
        finding_text(&finding(), &mut t);
        assert_eq!(
            t,
            "WARNING [close_wait] s\n    fds: 303\n    growth_per_s: 1.2\n  advice: close it\n"
        );
        let o = Outcome {
            namespaces: 2,
            ..Default::default()
        };
        assert_eq!(
            summary_text(&o),
            "tcpstate doctor: found nothing worth acting on in 2 network namespaces"
        );
    }
}
