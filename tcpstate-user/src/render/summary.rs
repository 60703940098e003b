//! The exit summary: a JSON line, or a line of text for stderr.

use std::io::{self, Write};

use serde::Serialize;

use crate::model::summary::Summary;

#[derive(Serialize)]
struct SummaryJson<'a> {
    r#type: &'static str,
    #[serde(flatten)]
    s: &'a Summary,
}

/// `{"type":"summary",...}` and a newline.
pub fn write_summary_json<W: Write>(out: &mut W, s: &Summary) -> io::Result<()> {
    serde_json::to_writer(
        &mut *out,
        &SummaryJson {
            r#type: "summary",
            s,
        },
    )
    .map_err(io::Error::other)?;
    out.write_all(b"\n")?;
    out.flush()
}

pub fn summary_text(s: &Summary) -> String {
    let degraded = if s.degraded.is_empty() {
        String::new()
    } else {
        format!("; degraded: {}", s.degraded)
    };
    format!(
        "tcpstate: {} events, {} shown, {} lost ({} ring buffer full, {} skipped by the kernel, \
         {} unreadable, {} sent but not received; {} recovered), {} untracked sockets (table \
         full){degraded}",
        s.events,
        s.shown,
        s.lost,
        s.lost_ringbuf,
        s.lost_skipped,
        s.lost_read,
        s.lost_transit,
        s.recovered,
        s.untracked
    )
}
