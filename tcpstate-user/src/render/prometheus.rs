//! The Prometheus view of a [`Snapshot`]: the text exposition format 0.0.4, or
//! OpenMetrics 1.0 when the scraper asks for it. Written here rather than with
//! `prometheus-client`: its text encoder emits OpenMetrics only, and its registry
//! keeps metric objects alive between scrapes, where every series here is rebuilt
//! from a snapshot (a group that went away must disappear).

use std::fmt::Write as _;

use crate::{
    model::{
        events::StateNum,
        metrics::{
            loss_terms, to_prometheus_buckets, LingerSeries, ListenerSeries, Snapshot, OTHER,
        },
    },
    probe::features::Feature,
    render::format::sanitize_comm,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    Text,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// From a request's Accept header: OpenMetrics when any of its media ranges names
    /// it with a non-zero q (Prometheus asks for it first, then for 0.0.4).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let wants_om = accept.is_some_and(|a| {
            a.split(',').any(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next().unwrap_or("");
                let q_zero = parts.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f64>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                media.eq_ignore_ascii_case("application/openmetrics-text") && !q_zero
            })
        });
        if wants_om {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Appends `v` as a label value: `\`, `"` and newline escaped, as both formats want.
fn escape_label(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

struct Writer {
    fmt: Format,
    out: String,
}

enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Writer {
    /// `# HELP` and `# TYPE` of a family. `name` is the sample name; OpenMetrics
    /// names a counter's family without its `_total`.
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let (family, ty) = match kind {
            Kind::Counter => (
                match self.fmt {
                    Format::OpenMetrics => name.strip_suffix("_total").unwrap_or(name),
                    Format::Text => name,
                },
                "counter",
            ),
            Kind::Gauge => (name, "gauge"),
            Kind::Histogram => (name, "histogram"),
        };
        let _ = writeln!(self.out, "# HELP {family} {help}");
        let _ = writeln!(self.out, "# TYPE {family} {ty}");
    }

    /// One sample: `name{k="v",...} value`.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_label(v, &mut self.out);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Renders every metric of the snapshot.
pub fn render(s: &Snapshot, fmt: Format, top_pid: bool) -> String {
    let mut w = Writer {
        fmt,
        out: String::with_capacity(16 << 10),
    };

    w.family(
        "tcpstate_state_duration_seconds",
        Kind::Histogram,
        "Time sockets spent in a state, since tcpstate started (TIME_WAIT: hand-over to expiry or reuse).",
    );
    for (state, h) in &s.durations {
        let st = state_label(state.name());
        for (le, n) in to_prometheus_buckets(h) {
            let le = le.to_string();
            w.sample(
                "tcpstate_state_duration_seconds_bucket",
                &[("state", &st), ("le", &le)],
                n,
            );
        }
        w.sample(
            "tcpstate_state_duration_seconds_bucket",
            &[("state", &st), ("le", "+Inf")],
            h.count,
        );
        w.sample(
            "tcpstate_state_duration_seconds_sum",
            &[("state", &st)],
            h.sum_ns as f64 / 1e9,
        );
        w.sample(
            "tcpstate_state_duration_seconds_count",
            &[("state", &st)],
            h.count,
        );
    }

    w.family(
        "tcpstate_transitions_total",
        Kind::Counter,
        "TCP state transitions since tcpstate started, by old and new state (after the filters).",
    );
    for (old, new, n) in &s.transitions {
        let (old, new) = (
            state_label(&StateNum(*old).to_string()),
            state_label(&StateNum(*new).to_string()),
        );
        w.sample(
            "tcpstate_transitions_total",
            &[("old_state", &old), ("new_state", &new)],
            n,
        );
    }

    w.family(
        "tcpstate_time_wait_ended_total",
        Kind::Counter,
        "TIME_WAIT sockets ended, by how: timer expired, 4-tuple reused, or unseen (reset, killed, never made).",
    );
    for (reason, n) in [
        ("expired", s.tw_ended.expired),
        ("reused", s.tw_ended.reused),
        ("unseen", s.tw_ended.unseen),
    ] {
        w.sample("tcpstate_time_wait_ended_total", &[("reason", reason)], n);
    }

    lingering(&mut w, s, top_pid);
    listeners(&mut w, s, top_pid);

    w.family(
        "tcpstate_time_wait_sockets",
        Kind::Gauge,
        "TIME_WAIT sockets now, by destination (top N; the rest as raddr=\"other\").",
    );
    for t in &s.timewait {
        let netns = t.netns.to_string();
        for d in &t.dests {
            let (raddr, rport) = match d.dest {
                Some((a, p)) => (a.to_string(), p.to_string()),
                None => (OTHER.to_string(), OTHER.to_string()),
            };
            w.sample(
                "tcpstate_time_wait_sockets",
                &[("netns", &netns), ("raddr", &raddr), ("rport", &rport)],
                d.sockets,
            );
        }
    }
    w.family(
        "tcpstate_local_port_range_size",
        Kind::Gauge,
        "Ports in ip_local_port_range: the most connections from one local address to one destination.",
    );
    for t in &s.timewait {
        w.sample(
            "tcpstate_local_port_range_size",
            &[("netns", &t.netns.to_string())],
            t.port_range,
        );
    }

    w.family(
        "tcpstate_events_lost_total",
        Kind::Counter,
        "Transitions lost, by reason: ring buffer full, skipped by the kernel, kernel read failed, sent but not received; untracked: sockets and TIME_WAIT sockets the probe's tables had no room for.",
    );
    for (reason, n) in loss_terms(&s.summary) {
        w.sample("tcpstate_events_lost_total", &[("reason", reason)], n);
    }
    w.sample(
        "tcpstate_events_lost_total",
        &[("reason", "untracked")],
        s.summary.untracked,
    );
    w.family(
        "tcpstate_degraded",
        Kind::Gauge,
        "1 for each optional part of the probe this kernel refused (owner_seed: owners of sockets older than tcpstate unknown; time_wait_expiry: TIME_WAIT expiries not seen).",
    );
    for f in Feature::ALL {
        w.sample(
            "tcpstate_degraded",
            &[("feature", f.name())],
            u64::from(s.summary.degraded.has(f)),
        );
    }
    w.family(
        "tcpstate_probe_calls_total",
        Kind::Counter,
        "Transitions the kernel handed to the probe (every protocol, before any filter).",
    );
    w.sample("tcpstate_probe_calls_total", &[], s.summary.probe_calls);
    w.family(
        "tcpstate_map_entries",
        Kind::Gauge,
        "Entries in the probe's maps.",
    );
    for (map, n, _) in &s.maps {
        w.sample("tcpstate_map_entries", &[("map", map)], n);
    }
    w.family(
        "tcpstate_map_capacity",
        Kind::Gauge,
        "Entries the probe's maps can hold: past it, new entries are counted as untracked.",
    );
    for (map, _, cap) in &s.maps {
        if let Some(cap) = cap {
            w.sample("tcpstate_map_capacity", &[("map", map)], cap);
        }
    }
    w.family(
        "tcpstate_scrape_duration_seconds",
        Kind::Gauge,
        "Time this scrape took to read the kernel and build the metrics.",
    );
    w.sample("tcpstate_scrape_duration_seconds", &[], s.scrape_seconds);
    w.family(
        "tcpstate_build_info",
        Kind::Gauge,
        "tcpstate's version and the running kernel.",
    );
    w.sample(
        "tcpstate_build_info",
        &[("version", &s.version), ("kernel", &s.kernel)],
        1,
    );
    if fmt == Format::OpenMetrics {
        w.out.push_str("# EOF\n");
    }
    w.out
}

/// State names as node_exporter spells them: `close_wait`.
fn state_label(name: &str) -> String {
    name.to_ascii_lowercase()
}

fn lingering(w: &mut Writer, s: &Snapshot, pid_labels: bool) {
    // Labels of each series, rendered once for the three families.
    let labels: Vec<Vec<(&str, String)>> = s
        .lingering
        .iter()
        .map(|l| {
            let comm = match &l.labels.comm {
                Some(c) => {
                    let mut t = String::new();
                    sanitize_comm(c, &mut t);
                    t
                }
                None => OTHER.to_string(),
            };
            let mut v = vec![
                ("state", state_label(l.labels.state.name())),
                ("comm", comm),
                ("container_id", l.labels.identity.container_id.clone()),
                ("pod_namespace", l.labels.identity.pod_namespace.clone()),
                ("pod_name", l.labels.identity.pod_name.clone()),
            ];
            if pid_labels {
                v.push(("pid", l.labels.pid.map_or(String::new(), |p| p.to_string())));
            }
            v
        })
        .collect();
    let borrowed: Vec<Vec<(&str, &str)>> = labels
        .iter()
        .map(|v| v.iter().map(|(k, v)| (*k, v.as_str())).collect())
        .collect();
    // One family per figure of a group, in this order; `None`: no sample (a group
    // with no readable fd count).
    type Figure = fn(&LingerSeries) -> Option<f64>;
    let families: [(&str, &str, Figure); 5] = [
        (
            "tcpstate_lingering_sockets",
            "Sockets lingering in a state (CLOSE_WAIT), by the process holding them (top N per state; the rest as comm=\"other\").",
            |l| Some(l.sockets as f64),
        ),
        (
            "tcpstate_lingering_oldest_seconds",
            "Age of the group's oldest lingering socket (a lower bound where the socket predates tcpstate: its last ACK's age, or since tcpstate started).",
            |l| Some(l.oldest_ns as f64 / 1e9),
        ),
        (
            "tcpstate_lingering_eof_read_sockets",
            "Of the lingering sockets, those whose holder read everything the peer sent, FIN included, and never closed them.",
            |l| Some(l.eof_read as f64),
        ),
        (
            "tcpstate_lingering_not_accepted_sockets",
            "Of the lingering sockets, those waiting in a listener's accept queue: nobody accept()ed them (the group is the listener's holder).",
            |l| Some(l.not_accepted as f64),
        ),
        (
            "tcpstate_process_fd_usage_ratio",
            "Open fds over the soft RLIMIT_NOFILE of the group's fullest process.",
            |l| l.fd_usage,
        ),
    ];
    for (name, help, figure) in families {
        w.family(name, Kind::Gauge, help);
        for (l, lb) in s.lingering.iter().zip(&borrowed) {
            if let Some(v) = figure(l) {
                w.sample(name, lb, v);
            }
        }
    }
}

fn listeners(w: &mut Writer, s: &Snapshot, pid_labels: bool) {
    let labels: Vec<Vec<(&str, String)>> = s
        .listeners
        .iter()
        .map(|l| {
            let b = &l.labels;
            let comm = match &b.comm {
                Some(c) => {
                    let mut t = String::new();
                    sanitize_comm(c, &mut t);
                    t
                }
                None => OTHER.to_string(),
            };
            let other = || OTHER.to_string();
            let mut v = vec![
                ("comm", comm),
                ("container_id", b.identity.container_id.clone()),
                ("pod_namespace", b.identity.pod_namespace.clone()),
                ("pod_name", b.identity.pod_name.clone()),
                ("netns", b.netns.map_or(String::new(), |n| n.to_string())),
                ("laddr", b.laddr.map_or_else(other, |a| a.to_string())),
                ("lport", b.lport.map_or_else(other, |p| p.to_string())),
            ];
            if pid_labels {
                v.push(("pid", b.pid.map_or(String::new(), |p| p.to_string())));
            }
            v
        })
        .collect();
    let borrowed: Vec<Vec<(&str, &str)>> = labels
        .iter()
        .map(|v| v.iter().map(|(k, v)| (*k, v.as_str())).collect())
        .collect();
    type Figure = fn(&ListenerSeries) -> u64;
    let families: [(&str, &str, Figure); 2] = [
        (
            "tcpstate_listen_queue_length",
            "Connections waiting in a listener's accept queue (sk_ack_backlog), by the process holding the listener (top N; the rest as comm=\"other\"). Above the limit the queue is full and new connections are dropped.",
            |l| l.length,
        ),
        (
            "tcpstate_listen_queue_limit",
            "The accept queue's limit (sk_max_ack_backlog: the listen() backlog, capped by net.core.somaxconn); full when the length exceeds it.",
            |l| l.limit,
        ),
    ];
    for (name, help, figure) in families {
        w.family(name, Kind::Gauge, help);
        for (l, lb) in s.listeners.iter().zip(&borrowed) {
            w.sample(name, lb, figure(l));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        events::TcpState,
        histogram::Histogram,
        holders::Comm,
        metrics::{
            DestSeries, GroupLabels, Identity, LingerSeries, ListenerLabels, ListenerSeries,
            NetnsTimewait,
        },
        summary::Summary,
    };

    fn comm(b: &[u8]) -> Comm {
        let mut c = [0; 16];
        c[..b.len()].copy_from_slice(b);
        c
    }

    fn snapshot() -> Snapshot {
        let mut h = Histogram::default();
        h.record_ns(100_000); // 100 us
        h.record_ns(2_000_000); // 2 ms
        Snapshot {
            durations: vec![(TcpState::SynSent, h)],
            // CLOSE -> SYN_SENT 5 times, and a state this build does not know.
            transitions: vec![(7, 2, 5), (7, 99, 1)],
            tw_ended: crate::model::hist::EndedCounts {
                expired: 3,
                reused: 1,
                unseen: 0,
            },
            lingering: vec![
                LingerSeries {
                    labels: GroupLabels {
                        state: TcpState::CloseWait,
                        comm: Some(comm(b"leaky")),
                        identity: Identity::default(),
                        pid: Some(42),
                    },
                    sockets: 7,
                    oldest_ns: 1_500_000_000,
                    eof_read: 6,
                    not_accepted: 1,
                    fd_usage: Some(0.25),
                },
                LingerSeries {
                    labels: GroupLabels {
                        state: TcpState::CloseWait,
                        comm: None,
                        identity: Identity::default(),
                        pid: None,
                    },
                    sockets: 2,
                    oldest_ns: 0,
                    eof_read: 0,
                    not_accepted: 2,
                    fd_usage: None,
                },
            ],
            listeners: Vec::new(),
            timewait: vec![
                NetnsTimewait {
                    netns: 4026531840,
                    dests: vec![DestSeries {
                        dest: Some(("10.0.0.9".parse().unwrap(), 443)),
                        sockets: 5,
                    }],
                    port_range: 28232,
                },
                NetnsTimewait {
                    netns: 4026532999,
                    dests: vec![DestSeries {
                        dest: Some(("10.0.0.9".parse().unwrap(), 443)),
                        sockets: 2,
                    }],
                    port_range: 1000,
                },
            ],
            summary: Summary {
                probe_calls: 99,
                ..Default::default()
            },
            maps: vec![("TWS", 4, Some(262144))],
            scrape_seconds: 0.002,
            version: "0.1.0".into(),
            kernel: "6.18.0".into(),
        }
    }

    fn sample_lines(text: &str, prefix: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(String::from)
            .collect()
    }

    #[test]
    fn transitions_by_state_pair() {
        let t = render(&snapshot(), Format::Text, false);
        assert_eq!(
            sample_lines(&t, "tcpstate_transitions_total"),
            [
                "tcpstate_transitions_total{old_state=\"close\",new_state=\"syn_sent\"} 5",
                "tcpstate_transitions_total{old_state=\"close\",new_state=\"unknown(99)\"} 1",
            ]
        );
        assert!(t.contains("# TYPE tcpstate_transitions_total counter"));
    }

    #[test]
    fn listen_queue_by_holder_with_help_and_other() {
        let mut s = snapshot();
        s.listeners = vec![
            ListenerSeries {
                labels: ListenerLabels {
                    comm: Some(comm(b"stuck")),
                    identity: Identity::default(),
                    pid: Some(42),
                    netns: Some(4026531840),
                    laddr: Some("::1".parse().unwrap()),
                    lport: Some(8080),
                },
                length: 5,
                limit: 4,
            },
            ListenerSeries {
                labels: ListenerLabels {
                    comm: None,
                    identity: Identity::default(),
                    pid: None,
                    netns: None,
                    laddr: None,
                    lport: None,
                },
                length: 0,
                limit: 256,
            },
        ];
        let t = render(&s, Format::Text, false);
        assert!(t.contains("# TYPE tcpstate_listen_queue_length gauge\n"));
        assert!(t.contains("# HELP tcpstate_listen_queue_limit "));
        assert_eq!(
            sample_lines(&t, "tcpstate_listen_queue_length{"),
            [
                "tcpstate_listen_queue_length{comm=\"stuck\",container_id=\"\",pod_namespace=\"\",pod_name=\"\",netns=\"4026531840\",laddr=\"::1\",lport=\"8080\"} 5",
                "tcpstate_listen_queue_length{comm=\"other\",container_id=\"\",pod_namespace=\"\",pod_name=\"\",netns=\"\",laddr=\"other\",lport=\"other\"} 0",
            ]
        );
        assert!(sample_lines(&t, "tcpstate_listen_queue_limit{")[0].ends_with("} 4"));
        let t = render(&s, Format::Text, true);
        assert!(sample_lines(&t, "tcpstate_listen_queue_limit{")[0].contains(",pid=\"42\"}"));
    }

    #[test]
    fn golden_text() {
        let t = render(&snapshot(), Format::Text, false);
        let golden = "\
# HELP tcpstate_time_wait_ended_total TIME_WAIT sockets ended, by how: timer expired, 4-tuple reused, or unseen (reset, killed, never made).
# TYPE tcpstate_time_wait_ended_total counter
tcpstate_time_wait_ended_total{reason=\"expired\"} 3
tcpstate_time_wait_ended_total{reason=\"reused\"} 1
tcpstate_time_wait_ended_total{reason=\"unseen\"} 0
# HELP tcpstate_lingering_sockets Sockets lingering in a state (CLOSE_WAIT), by the process holding them (top N per state; the rest as comm=\"other\").
# TYPE tcpstate_lingering_sockets gauge
tcpstate_lingering_sockets{state=\"close_wait\",comm=\"leaky\",container_id=\"\",pod_namespace=\"\",pod_name=\"\"} 7
tcpstate_lingering_sockets{state=\"close_wait\",comm=\"other\",container_id=\"\",pod_namespace=\"\",pod_name=\"\"} 2
# HELP tcpstate_lingering_oldest_seconds Age of the group's oldest lingering socket (a lower bound where the socket predates tcpstate: its last ACK's age, or since tcpstate started).
# TYPE tcpstate_lingering_oldest_seconds gauge
tcpstate_lingering_oldest_seconds{state=\"close_wait\",comm=\"leaky\",container_id=\"\",pod_namespace=\"\",pod_name=\"\"} 1.5
tcpstate_lingering_oldest_seconds{state=\"close_wait\",comm=\"other\",container_id=\"\",pod_namespace=\"\",pod_name=\"\"} 0
# HELP tcpstate_lingering_eof_read_sockets Of the lingering sockets, those whose holder read everything the peer sent, FIN included, and never closed them.
# TYPE tcpstate_lingering_eof_read_sockets gauge
tcpstate_lingering_eof_read_sockets{state=\"close_wait\",comm=\"leaky\",container_id=\"\",pod_namespace=\"\",pod_name=\"\"} 6
tcpstate_lingering_eof_read_sockets{state=\"close_wait\",comm=\"other\",container_id=\"\",pod_namespace=\"\",pod_name=\"\"} 0
# HELP tcpstate_lingering_not_accepted_sockets Of the lingering sockets, those waiting in a listener's accept queue: nobody accept()ed them (the group is the listener's holder).
# TYPE tcpstate_lingering_not_accepted_sockets gauge
tcpstate_lingering_not_accepted_sockets{state=\"close_wait\",comm=\"leaky\",container_id=\"\",pod_namespace=\"\",pod_name=\"\"} 1
tcpstate_lingering_not_accepted_sockets{state=\"close_wait\",comm=\"other\",container_id=\"\",pod_namespace=\"\",pod_name=\"\"} 2
# HELP tcpstate_process_fd_usage_ratio Open fds over the soft RLIMIT_NOFILE of the group's fullest process.
# TYPE tcpstate_process_fd_usage_ratio gauge
tcpstate_process_fd_usage_ratio{state=\"close_wait\",comm=\"leaky\",container_id=\"\",pod_namespace=\"\",pod_name=\"\"} 0.25
# HELP tcpstate_listen_queue_length Connections waiting in a listener's accept queue (sk_ack_backlog), by the process holding the listener (top N; the rest as comm=\"other\"). Above the limit the queue is full and new connections are dropped.
# TYPE tcpstate_listen_queue_length gauge
# HELP tcpstate_listen_queue_limit The accept queue's limit (sk_max_ack_backlog: the listen() backlog, capped by net.core.somaxconn); full when the length exceeds it.
# TYPE tcpstate_listen_queue_limit gauge
# HELP tcpstate_time_wait_sockets TIME_WAIT sockets now, by destination (top N; the rest as raddr=\"other\").
# TYPE tcpstate_time_wait_sockets gauge
tcpstate_time_wait_sockets{netns=\"4026531840\",raddr=\"10.0.0.9\",rport=\"443\"} 5
tcpstate_time_wait_sockets{netns=\"4026532999\",raddr=\"10.0.0.9\",rport=\"443\"} 2
# HELP tcpstate_local_port_range_size Ports in ip_local_port_range: the most connections from one local address to one destination.
# TYPE tcpstate_local_port_range_size gauge
tcpstate_local_port_range_size{netns=\"4026531840\"} 28232
tcpstate_local_port_range_size{netns=\"4026532999\"} 1000
# HELP tcpstate_events_lost_total Transitions lost, by reason: ring buffer full, skipped by the kernel, kernel read failed, sent but not received; untracked: sockets and TIME_WAIT sockets the probe's tables had no room for.
# TYPE tcpstate_events_lost_total counter
tcpstate_events_lost_total{reason=\"ringbuf\"} 0
tcpstate_events_lost_total{reason=\"skipped\"} 0
tcpstate_events_lost_total{reason=\"read\"} 0
tcpstate_events_lost_total{reason=\"transit\"} 0
tcpstate_events_lost_total{reason=\"untracked\"} 0
# HELP tcpstate_degraded 1 for each optional part of the probe this kernel refused (owner_seed: owners of sockets older than tcpstate unknown; time_wait_expiry: TIME_WAIT expiries not seen).
# TYPE tcpstate_degraded gauge
tcpstate_degraded{feature=\"owner_seed\"} 0
tcpstate_degraded{feature=\"time_wait_expiry\"} 0
# HELP tcpstate_probe_calls_total Transitions the kernel handed to the probe (every protocol, before any filter).
# TYPE tcpstate_probe_calls_total counter
tcpstate_probe_calls_total 99
# HELP tcpstate_map_entries Entries in the probe's maps.
# TYPE tcpstate_map_entries gauge
tcpstate_map_entries{map=\"TWS\"} 4
# HELP tcpstate_map_capacity Entries the probe's maps can hold: past it, new entries are counted as untracked.
# TYPE tcpstate_map_capacity gauge
tcpstate_map_capacity{map=\"TWS\"} 262144
# HELP tcpstate_scrape_duration_seconds Time this scrape took to read the kernel and build the metrics.
# TYPE tcpstate_scrape_duration_seconds gauge
tcpstate_scrape_duration_seconds 0.002
# HELP tcpstate_build_info tcpstate's version and the running kernel.
# TYPE tcpstate_build_info gauge
tcpstate_build_info{version=\"0.1.0\",kernel=\"6.18.0\"} 1
";
        let after_hist = &t[t.find("# HELP tcpstate_time_wait_ended_total").unwrap()..];
        assert_eq!(after_hist, golden);
        // The histogram: 68 bounds + Inf, cumulative, then sum and count.
        let buckets = sample_lines(&t, "tcpstate_state_duration_seconds_bucket");
        assert_eq!(buckets.len(), 69);
        assert!(
            t.starts_with("# HELP tcpstate_state_duration_seconds Time sockets spent in a state")
        );
        assert!(t.contains("# TYPE tcpstate_state_duration_seconds histogram\n"));
        assert_eq!(
            buckets[0],
            "tcpstate_state_duration_seconds_bucket{state=\"syn_sent\",le=\"0.000008\"} 0"
        );
        assert!(buckets.contains(
            &"tcpstate_state_duration_seconds_bucket{state=\"syn_sent\",le=\"0.000128\"} 1".into()
        ));
        assert!(buckets.contains(
            &"tcpstate_state_duration_seconds_bucket{state=\"syn_sent\",le=\"0.001536\"} 1".into()
        ));
        assert!(buckets.contains(
            &"tcpstate_state_duration_seconds_bucket{state=\"syn_sent\",le=\"0.002048\"} 2".into()
        ));
        assert_eq!(
            buckets[68],
            "tcpstate_state_duration_seconds_bucket{state=\"syn_sent\",le=\"+Inf\"} 2"
        );
        assert!(t.contains("tcpstate_state_duration_seconds_sum{state=\"syn_sent\"} 0.0021\n"));
        assert!(t.contains("tcpstate_state_duration_seconds_count{state=\"syn_sent\"} 2\n"));
    }

    #[test]
    fn openmetrics_names_counter_families_and_ends_with_eof() {
        let t = render(&snapshot(), Format::OpenMetrics, false);
        assert!(t.contains("# TYPE tcpstate_time_wait_ended counter\n"));
        assert!(t.contains("# TYPE tcpstate_events_lost counter\n"));
        assert!(t.contains("tcpstate_events_lost_total{reason=\"ringbuf\"} 0\n"));
        assert!(t.ends_with("tcpstate_build_info{version=\"0.1.0\",kernel=\"6.18.0\"} 1\n# EOF\n"));
        let text = render(&snapshot(), Format::Text, false);
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn pid_labels_only_when_asked() {
        let t = render(&snapshot(), Format::Text, true);
        assert!(t.contains("pod_name=\"\",pid=\"42\"} 7\n"));
        assert!(t.contains(
            "comm=\"other\",container_id=\"\",pod_namespace=\"\",pod_name=\"\",pid=\"\"} 2\n"
        ));
        assert!(!render(&snapshot(), Format::Text, false).contains("pid="));
    }

    #[test]
    fn hostile_process_names_cannot_break_a_line() {
        let mut s = snapshot();
        s.lingering.truncate(1);
        s.lingering[0].labels.comm = Some(comm(b"a\"b\\c\nd\x1b[31m}"));
        let t = render(&s, Format::Text, false);
        let line = sample_lines(&t, "tcpstate_lingering_sockets{").remove(0);
        // The name is escaped as every view escapes it (\x0a, \x1b, \\), then as a
        // label value (\\ and \").
        assert_eq!(
            line,
            "tcpstate_lingering_sockets{state=\"close_wait\",comm=\"a\\\"b\\\\\\\\c\\\\x0ad\\\\x1b[31m}\",container_id=\"\",pod_namespace=\"\",pod_name=\"\"} 7"
        );
        assert!(t.bytes().all(|b| b == b'\n' || (0x20..0x7f).contains(&b)));
        let mut v = String::new();
        escape_label("x\ny\"\\", &mut v);
        assert_eq!(v, "x\\ny\\\"\\\\");
    }

    #[test]
    fn accept_header_negotiation() {
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prom)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Text);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Text
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; q=0")),
            Format::Text
        );
    }
}
