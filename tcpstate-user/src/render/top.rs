//! The `top` screen, drawn with ratatui from the model (`model::top`): the header
//! (host totals, transitions/s, TIME_WAIT destinations with port headroom, the loss
//! counters, always shown), the main table, and the process view (sparkline of its
//! CLOSE_WAIT count, its sockets, its transitions). No terminal I/O here: tests draw
//! into ratatui's `TestBackend`.

use std::{collections::VecDeque, net::IpAddr, time::Duration};

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Cell, Paragraph, Row as TRow, Sparkline, Table, TableState},
    Frame,
};

use crate::{
    model::{
        events::TcpState,
        linger::{cause, Cause, SockLine},
        top::{App, Grouping, Row, RowKey, SortKey, View},
    },
    render::format::{comm_text, endpoint, fmt_age, thousands},
};

/// Sockets per state on the host (as far as the filters let through).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub established: u64,
    pub close_wait: u64,
    pub fin_wait2: u64,
    pub time_wait: u64,
    pub not_accepted: u64,
}

/// Everything above the table.
#[derive(Debug, Clone, Default)]
pub struct Header {
    /// Local time of the last refresh.
    pub time: String,
    pub totals: Totals,
    pub transitions_per_s: f64,
    /// The busiest TIME_WAIT destinations: address, port, count, and the size of
    /// their namespace's ip_local_port_range (the most one destination can hold).
    pub tw_dests: Vec<(IpAddr, u16, u64, u64)>,
    /// The summary's loss terms, by name.
    pub losses: Vec<(&'static str, u64)>,
    pub untracked: u64,
    pub by: Grouping,
    /// How long ago the holders were walked, and what that walk took, when it is
    /// more than two refreshes ago (walks are spaced by their cost).
    pub walked: Option<(Duration, Duration)>,
}

/// The open process (or container).
#[derive(Debug, Clone, Default)]
pub struct ProcessView {
    pub row: Option<Row>,
    /// Oldest first.
    pub sockets: Vec<SockLine>,
    /// CLOSE_WAIT count at each refresh, oldest first.
    pub history: Vec<u64>,
    /// Its sockets' transitions, newest last.
    pub transitions: VecDeque<String>,
}

/// fds in use of the limit: `24/1,024`.
pub fn fd_text(r: &Row) -> String {
    match (r.fds, r.fd_limit) {
        (Some(f), Some(l)) => format!("{}/{}", thousands(f as usize), thousands(l as usize)),
        _ => "-".into(),
    }
}

/// When the fds run out at the growth seen: `-` when not growing.
pub fn eta_text(eta_s: Option<f64>) -> String {
    match eta_s {
        Some(s) if s <= 0.0 => "full".into(),
        Some(s) => fmt_age((s * 1e9).min(u64::MAX as f64) as u64),
        None => "-".into(),
    }
}

/// CLOSE_WAIT growth per minute: `18.0`, `-` before any reading.
pub fn growth_text(g: Option<f64>) -> String {
    g.map_or("-".into(), |g| format!("{g:.1}"))
}

/// An age, `>` in front when it is a lower bound (older than tcpstate's watch).
pub fn age_text(ns: Option<u64>, lower_bound: bool) -> String {
    match ns {
        Some(ns) => format!("{}{}", if lower_bound { ">" } else { "" }, fmt_age(ns)),
        None => "-".into(),
    }
}

fn row_name(r: &Row) -> (String, String) {
    match (&r.key, r.pid) {
        (RowKey::NoProcess, _) => ("-".into(), "(no process)".into()),
        (RowKey::Container(_), _) => (r.processes.to_string(), format!("{} procs", r.processes)),
        (_, pid) => (
            pid.map_or("-".into(), |p| p.to_string()),
            comm_text(&r.comm),
        ),
    }
}

/// The main table's cells for one row.
pub fn cells(r: &Row) -> [String; 13] {
    let (pid, comm) = row_name(r);
    [
        pid,
        comm,
        r.container.clone(),
        thousands(r.established),
        thousands(r.close_wait),
        thousands(r.fin_wait2),
        thousands(r.time_wait as usize),
        thousands(r.not_accepted),
        growth_text(r.growth_per_min),
        age_text(r.oldest_cw_ns, r.oldest_lower_bound),
        fd_text(r),
        eta_text(r.eta_s),
        r.word().map_or("", |w| w.text()).to_string(),
    ]
}

pub const COLUMNS: [(&str, u16); 13] = [
    ("PID", 7),
    ("COMM", 15),
    ("CONTAINER", 12),
    ("ESTAB", 6),
    ("CLOSE_WAIT", 10),
    ("FIN_WAIT2", 9),
    ("TIME_WAIT", 9),
    ("NOT_ACC", 7),
    ("GROW/m", 7),
    ("OLDEST_CW", 9),
    ("FDS", 13),
    ("FD_ETA", 7),
    ("DIAGNOSIS", 22),
];

/// Columns left out first when the screen is too narrow for all of them (indexes
/// into [`COLUMNS`]): a cell is never cut short, the least telling column goes.
const DROP_FIRST: [usize; 8] = [2, 5, 11, 3, 7, 6, 9, 10];

/// The columns that fit `width` (indexes into [`COLUMNS`]); CONTAINER only when it
/// names the rows or some row has one.
pub fn fitting(width: u16, container: bool) -> Vec<usize> {
    let mut shown: Vec<usize> = (0..COLUMNS.len())
        .filter(|&i| i != 2 || container)
        .collect();
    // DIAGNOSIS may be cut to "stopped reading" (15); the rest need their width.
    let need = |cols: &[usize]| -> u16 {
        cols.iter()
            .map(|&i| if i == 12 { 15 } else { COLUMNS[i].1 } + 1)
            .sum::<u16>()
            - 1
    };
    for drop in DROP_FIRST {
        if need(&shown) <= width {
            break;
        }
        shown.retain(|&i| i != drop);
    }
    shown
}

fn header_lines(h: &Header, app: &App) -> Vec<Line<'static>> {
    let t = &h.totals;
    let filter = match (&app.editing, app.filter.is_empty()) {
        (Some(e), _) => format!("  filter: {e}_"),
        (None, false) => format!("  filter: {}", app.filter),
        _ => String::new(),
    };
    let by = match h.by {
        Grouping::Process => "process",
        Grouping::Container => "container",
    };
    let tw = if h.tw_dests.is_empty() {
        "TIME_WAIT by destination: none".to_string()
    } else {
        let list: Vec<String> = h
            .tw_dests
            .iter()
            .map(|(a, p, n, range)| {
                let pct = if *range > 0 {
                    *n as f64 * 100.0 / *range as f64
                } else {
                    0.0
                };
                format!(
                    "{} {} ({pct:.1}% of {} ports)",
                    endpoint(*a, *p),
                    thousands(*n as usize),
                    thousands(*range as usize)
                )
            })
            .collect();
        format!("TIME_WAIT by destination: {}", list.join(", "))
    };
    let lost: u64 = h.losses.iter().map(|(_, n)| n).sum();
    let terms: Vec<String> = h
        .losses
        .iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect();
    vec![
        Line::from(format!(
            "tcpstate top {}  {:.1} transitions/s  by {by}  sort: {}{filter}{}",
            h.time,
            h.transitions_per_s,
            app.sort.name(),
            h.walked.map_or(String::new(), |(ago, cost)| format!(
                "  holders {:.0}s old (walk {} ms)",
                ago.as_secs_f64(),
                cost.as_millis()
            ))
        )),
        Line::from(format!(
            "ESTABLISHED {}  CLOSE_WAIT {}  FIN_WAIT2 {}  TIME_WAIT {}  NOT_ACCEPTED {}",
            thousands(t.established as usize),
            thousands(t.close_wait as usize),
            thousands(t.fin_wait2 as usize),
            thousands(t.time_wait as usize),
            thousands(t.not_accepted as usize),
        )),
        Line::from(tw),
        Line::from(format!(
            "lost {lost} ({}), untracked {}",
            terms.join(", "),
            h.untracked
        )),
    ]
}

const HELP_TABLE: &str =
    "q quit  Enter open  / filter  sort: c CW  e EST  f FW2  t TW  s NOT_ACC  g grow  a age  x ETA  p pid  n comm";
const HELP_PROCESS: &str = "Esc back  q quit";

/// Draws the whole screen. `rows` are the visible rows (filtered, sorted).
pub fn draw(f: &mut Frame, h: &Header, rows: &[Row], app: &mut App, pv: Option<&ProcessView>) {
    let area = f.area();
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    f.render_widget(Paragraph::new(header_lines(h, app)), head);
    match (&app.view, pv) {
        (View::Process(_), Some(pv)) => {
            draw_process(f, body, pv);
            f.render_widget(Paragraph::new(HELP_PROCESS), foot);
        }
        _ => {
            draw_table(f, body, rows, app, h.by);
            f.render_widget(Paragraph::new(HELP_TABLE), foot);
        }
    }
}

fn draw_table(f: &mut Frame, area: Rect, rows: &[Row], app: &mut App, by: Grouping) {
    // Header line and one row per line.
    app.page = usize::from(area.height.saturating_sub(1)).max(1);
    if !rows.is_empty() {
        app.selected = app.selected.min(rows.len() - 1);
    }
    let sorted_col = match app.sort {
        SortKey::Pid => 0,
        SortKey::Comm => 1,
        SortKey::Established => 3,
        SortKey::CloseWait => 4,
        SortKey::FinWait2 => 5,
        SortKey::TimeWait => 6,
        SortKey::NotAccepted => 7,
        SortKey::Growth => 8,
        SortKey::Age => 9,
        SortKey::Eta => 11,
    };
    let container = by == Grouping::Container || rows.iter().any(|r| r.container != "-");
    let cols = fitting(area.width, container);
    let header = TRow::new(cols.iter().map(|&i| {
        let style = if i == sorted_col {
            Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED)
        } else {
            Style::new().add_modifier(Modifier::BOLD)
        };
        Cell::from(COLUMNS[i].0).style(style)
    }));
    let body = rows.iter().map(|r| {
        let c = cells(r);
        TRow::new(cols.iter().map(|&i| Cell::from(c[i].clone())))
    });
    let widths = cols.iter().map(|&i| match i {
        12 => Constraint::Min(15),
        _ => Constraint::Length(COLUMNS[i].1),
    });
    let table = Table::new(body, widths)
        .header(header)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected((!rows.is_empty()).then_some(app.selected));
    f.render_stateful_widget(table, area, &mut state);
}

/// One socket's cells: 4-tuple, state, age, unread bytes, fd.
pub fn socket_cells(s: &SockLine) -> [String; 6] {
    let state = TcpState::try_from(i32::from(s.state))
        .map(|s| s.name().to_string())
        .unwrap_or_else(|_| format!("UNKNOWN({})", s.state));
    let what = match cause(s) {
        Cause::NeverAccepted => "not accepted",
        Cause::ReadAllNeverClosed => "read EOF, never closed",
        Cause::StoppedReading => "stopped reading",
        Cause::Dead => "dead",
        Cause::Unknown => "",
    };
    [
        endpoint(s.saddr, s.sport),
        endpoint(s.daddr, s.dport),
        state,
        age_text(Some(s.age_ns), s.lower_bound),
        s.facts
            .map_or("-".into(), |f| thousands(f.unread_bytes as usize)),
        match s.fd {
            Some(fd) => fd.to_string(),
            None => "-".into(),
        } + if what.is_empty() { "" } else { "  " }
            + what,
    ]
}

fn draw_process(f: &mut Frame, area: Rect, pv: &ProcessView) {
    let [title, spark, socks, trans] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(3),
        Constraint::Min(2),
        Constraint::Percentage(30),
    ])
    .areas(area);
    let name = match &pv.row {
        Some(r) => {
            let (pid, comm) = row_name(r);
            format!(
                "pid {pid} {comm}  CLOSE_WAIT {}  growth {}/m  oldest {}  fds {}  ETA {}  {}",
                thousands(r.close_wait),
                growth_text(r.growth_per_min),
                age_text(r.oldest_cw_ns, r.oldest_lower_bound),
                fd_text(r),
                eta_text(r.eta_s),
                r.word().map_or("", |w| w.text())
            )
        }
        None => "(gone: no sockets held any more)".into(),
    };
    f.render_widget(Paragraph::new(name), title);
    // The newest samples that fit.
    let w = usize::from(spark.width);
    let hist = &pv.history[pv.history.len().saturating_sub(w)..];
    let max = hist.iter().copied().max().unwrap_or(0);
    f.render_widget(
        Sparkline::default()
            .block(Block::default().borders(Borders::TOP).title(format!(
                "CLOSE_WAIT over the last {} refreshes (max {max})",
                hist.len()
            )))
            .data(hist),
        spark,
    );
    // As wide as the longest endpoint shown (IPv4 ~21, IPv6 up to 47).
    let ep = |s: &SockLine, local: bool| {
        if local {
            endpoint(s.saddr, s.sport).len()
        } else {
            endpoint(s.daddr, s.dport).len()
        }
    };
    let wide = |local: bool| {
        pv.sockets
            .iter()
            .map(|s| ep(s, local))
            .max()
            .unwrap_or(0)
            .clamp(6, 47) as u16
    };
    let widths = [
        Constraint::Length(wide(true)),
        Constraint::Length(wide(false)),
        Constraint::Length(11),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Min(4),
    ];
    let header = TRow::new(["LOCAL", "REMOTE", "STATE", "AGE", "UNREAD", "FD"])
        .style(Style::new().add_modifier(Modifier::BOLD));
    let body = pv.sockets.iter().map(|s| TRow::new(socket_cells(s)));
    f.render_widget(Table::new(body, widths).header(header), socks);
    let n = usize::from(trans.height.saturating_sub(1));
    let lines: Vec<Line> = pv
        .transitions
        .iter()
        .skip(pv.transitions.len().saturating_sub(n))
        .map(|t| Line::from(t.as_str()))
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::TOP)
                .title("transitions of its sockets"),
        ),
        trans,
    );
}

#[cfg(test)]
mod tests {
    use ratatui::{backend::TestBackend, Terminal};

    use super::*;
    use crate::model::top::{build_rows, visible, TimeWaitBy};

    fn screen(t: &Terminal<TestBackend>) -> String {
        let b = t.backend().buffer();
        let mut s = String::new();
        for y in 0..b.area.height {
            for x in 0..b.area.width {
                s.push_str(b[(x, y)].symbol());
            }
            s.push('\n');
        }
        s
    }

    fn rows() -> Vec<Row> {
        let mut c = [0; 16];
        c[..5].copy_from_slice(b"leaky");
        let tw = [TimeWaitBy {
            pid: 4242,
            comm: c,
            ident: Default::default(),
            count: 3,
        }];
        visible(
            &build_rows(&[], &tw, Grouping::Process),
            "",
            SortKey::CloseWait,
        )
    }

    fn header() -> Header {
        Header {
            time: "06:50:01".into(),
            losses: vec![("ringbuf", 0), ("skipped", 2)],
            tw_dests: vec![("127.0.0.1".parse().unwrap(), 8080, 3, 28232)],
            ..Default::default()
        }
    }

    #[test]
    fn table_and_header_fit_a_wide_screen() {
        let mut t = Terminal::new(TestBackend::new(160, 12)).unwrap();
        let mut app = App::default();
        let rows = rows();
        t.draw(|f| draw(f, &header(), &rows, &mut app, None))
            .unwrap();
        let s = screen(&t);
        assert!(s.contains("lost 2 (ringbuf 0, skipped 2)"), "{s}");
        assert!(s.contains("127.0.0.1:8080 3 (0.0% of 28,232 ports)"), "{s}");
        assert!(s.contains("CLOSE_WAIT"), "{s}");
        let line = s.lines().find(|l| l.contains("leaky")).expect("row");
        assert!(line.trim_start().starts_with("4242"), "{line}");
        assert_eq!(app.page, 12 - 4 - 1 - 1);
    }

    #[test]
    fn tiny_and_empty_screens_do_not_panic() {
        for (w, h) in [(20, 5), (1, 1), (80, 3), (5, 40)] {
            let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
            let mut app = App::default();
            t.draw(|f| draw(f, &header(), &rows(), &mut app, None))
                .unwrap();
            t.draw(|f| draw(f, &header(), &[], &mut app, None)).unwrap();
            app.view = View::Process(RowKey::Pid(4242));
            let pv = ProcessView {
                history: vec![1, 2, 3],
                transitions: VecDeque::from(vec!["x".to_string()]),
                ..Default::default()
            };
            t.draw(|f| draw(f, &header(), &rows(), &mut app, Some(&pv)))
                .unwrap();
        }
    }

    #[test]
    fn narrow_screens_drop_columns_not_digits() {
        let all = fitting(200, true);
        assert_eq!(all.len(), COLUMNS.len());
        // No container in sight: no CONTAINER column, even on a wide screen.
        assert!(!fitting(200, false).contains(&2));
        for w in [80u16, 100, 120, 140] {
            let cols = fitting(w, false);
            let need: u16 = cols
                .iter()
                .map(|&i| if i == 12 { 15 } else { COLUMNS[i].1 } + 1)
                .sum::<u16>()
                - 1;
            assert!(need <= w, "{w}: {cols:?}");
            // What the screen is for stays: PID, COMM, CLOSE_WAIT, growth, diagnosis.
            for keep in [0, 1, 4, 8, 12] {
                assert!(cols.contains(&keep), "{w}: {cols:?}");
            }
        }
        assert_eq!(fitting(125, false).len(), 12);
        assert_eq!(fitting(124, false).len(), 11);
    }

    #[test]
    fn cell_texts() {
        assert_eq!(eta_text(None), "-");
        assert_eq!(eta_text(Some(0.0)), "full");
        assert_eq!(eta_text(Some(3600.0)), "1h00m");
        assert_eq!(growth_text(Some(18.0)), "18.0");
        assert_eq!(age_text(Some(5_200_000_000), true), ">5.2s");
        assert_eq!(age_text(None, false), "-");
        let r = &rows()[0];
        let c = cells(r);
        assert_eq!(
            (c[0].as_str(), c[1].as_str(), c[6].as_str()),
            ("4242", "leaky", "3")
        );
        assert_eq!(c[12], "");
    }
}
