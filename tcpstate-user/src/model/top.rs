//! The `top` screen's model: one row per holding process (or container), folded from
//! `linger`'s reports (the same holders, ages, causes, growth and fd headroom: no rule
//! of its own), with the sort, the `/` filter, the CLOSE_WAIT history behind the
//! process view's sparkline, and the key handling as a plain state machine. Pure:
//! unit-tested with synthetic reports and keys; `cmd::top` draws and reads the keys.

use std::{
    collections::{HashMap, VecDeque},
    time::Duration,
};

use crate::model::{
    container::Ident,
    events::TcpState,
    holders::Comm,
    linger::{Diagnosis, Report},
};

/// The states `top` counts per holder, from one fd walk. TIME_WAIT sockets have no
/// holder: they come from the probe's TIME_WAIT records, by the process that closed.
pub const TOP_STATES: [TcpState; 4] = [
    TcpState::Established,
    TcpState::CloseWait,
    TcpState::FinWait2,
    TcpState::SynRecv,
];

/// Samples of CLOSE_WAIT count kept per row for the sparkline (one per refresh).
pub const HISTORY_LEN: usize = 600;

/// A walk costs at most 1/WALK_COST_SHARE of the time between walks (1% of a core):
/// with 100k sockets a walk takes ~0.5 s, so walks come at most every ~50 s, while
/// a host with a few hundred sockets is walked every refresh.
pub const WALK_COST_SHARE: u32 = 100;
/// With nothing moving, walk at least this often anyway: an fd passed over a unix
/// socket or inherited by a child changes the holder and no socket's state.
pub const WALK_AT_LEAST: Duration = Duration::from_secs(60);

/// Whether to walk the fds now: `since` the last walk (None: never walked), which
/// took `cost`; `changed`: a transition arrived (or a process was opened) since.
pub fn walk_due(changed: bool, since: Option<Duration>, cost: Duration) -> bool {
    let Some(since) = since else { return true };
    if since < cost * WALK_COST_SHARE {
        return false;
    }
    changed || since >= WALK_AT_LEAST
}

/// What a row stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RowKey {
    /// Sockets no process holds an fd for (orphans), or TIME_WAIT whose closer is
    /// unknown.
    NoProcess,
    Pid(u32),
    /// A container by id; `None`: host processes.
    Container(Option<String>),
}

/// `--by`: one row per process or per container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Grouping {
    #[default]
    Process,
    Container,
}

/// Why a row's sockets linger: the largest of linger's per-socket causes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Word {
    StoppedReading,
    ReadEofNeverClosed,
    NeverAccepted,
}

impl Word {
    pub fn text(self) -> &'static str {
        match self {
            Word::StoppedReading => "stopped reading",
            Word::ReadEofNeverClosed => "read EOF, never closed",
            Word::NeverAccepted => "never accepted",
        }
    }

    /// The cause that explains most sockets (ties: the order below), if any.
    pub fn of(d: &Diagnosis) -> Option<Word> {
        [
            (d.read_all_never_closed, Word::ReadEofNeverClosed),
            (d.stopped_reading, Word::StoppedReading),
            (d.never_accepted, Word::NeverAccepted),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .max_by_key(|(n, w)| (*n, std::cmp::Reverse(*w as u8)))
        .map(|(_, w)| w)
    }
}

/// One line of the main table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: RowKey,
    pub pid: Option<u32>,
    pub comm: Comm,
    /// Short container id, `-` for the host.
    pub container: String,
    /// Processes folded into this row (1 unless `--by container`).
    pub processes: usize,
    pub established: usize,
    pub close_wait: usize,
    pub fin_wait2: usize,
    /// TIME_WAIT sockets this row's processes closed first (the probe's records).
    pub time_wait: u64,
    /// SYN_RECV sockets, and connections waiting in an accept queue (these are also
    /// counted in their state's column).
    pub not_accepted: usize,
    /// CLOSE_WAIT sockets entered in the last minute and still held, per minute.
    pub growth_per_min: Option<f64>,
    pub oldest_cw_ns: Option<u64>,
    pub oldest_lower_bound: bool,
    pub fds: Option<u64>,
    pub fd_limit: Option<u64>,
    pub eta_s: Option<f64>,
    pub diagnosis: Diagnosis,
}

impl Row {
    fn new(key: RowKey, pid: Option<u32>, comm: Comm, container: String) -> Row {
        Row {
            key,
            pid,
            comm,
            container,
            processes: 0,
            established: 0,
            close_wait: 0,
            fin_wait2: 0,
            time_wait: 0,
            not_accepted: 0,
            growth_per_min: None,
            oldest_cw_ns: None,
            oldest_lower_bound: false,
            fds: None,
            fd_limit: None,
            eta_s: None,
            diagnosis: Diagnosis::default(),
        }
    }

    pub fn word(&self) -> Option<Word> {
        Word::of(&self.diagnosis)
    }

    /// fds left before the limit.
    pub fn headroom(&self) -> Option<u64> {
        Some(self.fd_limit?.saturating_sub(self.fds?))
    }

    /// The row's fields as `/` matches them: comm, pid, container.
    fn matches(&self, needle: &str) -> bool {
        if needle.is_empty() {
            return true;
        }
        let n = needle.to_lowercase();
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(16);
        String::from_utf8_lossy(&self.comm[..end])
            .to_lowercase()
            .contains(&n)
            || self.pid.is_some_and(|p| p.to_string().contains(&n))
            || self.container.to_lowercase().contains(&n)
    }
}

/// TIME_WAIT sockets one process closed first (from the probe's records).
#[derive(Debug, Clone, PartialEq)]
pub struct TimeWaitBy {
    /// 0: not known.
    pub pid: u32,
    pub comm: Comm,
    pub ident: Ident,
    pub count: u64,
}

fn key_of(by: Grouping, pid: Option<u32>, ident: &Ident) -> RowKey {
    match (by, pid) {
        (_, None) => RowKey::NoProcess,
        (Grouping::Process, Some(p)) => RowKey::Pid(p),
        (Grouping::Container, Some(_)) => RowKey::Container(ident.container_id.clone()),
    }
}

fn row_for<'a>(
    rows: &'a mut HashMap<RowKey, Row>,
    by: Grouping,
    pid: Option<u32>,
    comm: Comm,
    ident: &Ident,
) -> &'a mut Row {
    let key = key_of(by, pid, ident);
    rows.entry(key.clone()).or_insert_with(|| {
        let container = ident.short().to_string();
        match &key {
            RowKey::Container(_) => Row::new(key, None, [0; 16], container),
            _ => Row::new(key, pid, comm, container),
        }
    })
}

fn add_diagnosis(to: &mut Diagnosis, d: &Diagnosis) {
    to.read_all_never_closed += d.read_all_never_closed;
    to.stopped_reading += d.stopped_reading;
    to.never_accepted += d.never_accepted;
    to.dead += d.dead;
}

/// Folds one walk's reports (one per state of [`TOP_STATES`], fd headroom filled in)
/// and the TIME_WAIT records into rows, unsorted.
pub fn build_rows(reports: &[Report], time_waits: &[TimeWaitBy], by: Grouping) -> Vec<Row> {
    let mut rows: HashMap<RowKey, Row> = HashMap::new();
    // Processes already counted in each row (a process appears once per state).
    let mut seen: HashMap<RowKey, Vec<u32>> = HashMap::new();
    for r in reports {
        for g in &r.groups {
            let row = row_for(&mut rows, by, g.pid, g.comm, &g.ident);
            if let Some(pid) = g.pid {
                let s = seen.entry(row.key.clone()).or_default();
                if !s.contains(&pid) {
                    s.push(pid);
                    row.processes += 1;
                }
            }
            let n = g.sockets.len();
            match r.state {
                TcpState::Established => row.established += n,
                TcpState::CloseWait => row.close_wait += n,
                TcpState::FinWait2 => row.fin_wait2 += n,
                _ => {}
            }
            row.not_accepted += g
                .sockets
                .iter()
                .filter(|s| r.state == TcpState::SynRecv || s.facts.is_some_and(|f| !f.accepted))
                .count();
            add_diagnosis(&mut row.diagnosis, &g.diagnosis);
            // fd headroom: the process nearest its limit speaks for a container.
            if g.fd_limit.is_some() {
                let left = g.fd_limit.unwrap_or(0).saturating_sub(g.fds.unwrap_or(0));
                if row.headroom().is_none_or(|h| left < h) {
                    row.fds = g.fds;
                    row.fd_limit = g.fd_limit;
                }
            }
            if let Some(eta) = g.fd_exhaustion_s {
                row.eta_s = Some(row.eta_s.map_or(eta, |e| e.min(eta)));
            }
            if r.state == TcpState::CloseWait {
                if let Some(g_s) = g.growth_per_s {
                    row.growth_per_min = Some(row.growth_per_min.unwrap_or(0.0) + g_s * 60.0);
                }
                // Sockets are oldest first.
                if let Some(s) = g.sockets.first() {
                    if row.oldest_cw_ns.is_none_or(|o| s.age_ns > o) {
                        row.oldest_cw_ns = Some(s.age_ns);
                        row.oldest_lower_bound = s.lower_bound;
                    }
                }
            }
        }
    }
    for tw in time_waits {
        let pid = (tw.pid != 0).then_some(tw.pid);
        row_for(&mut rows, by, pid, tw.comm, &tw.ident).time_wait += tw.count;
    }
    rows.into_values().collect()
}

/// What the table is sorted by (key in brackets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortKey {
    /// [c] most CLOSE_WAIT first.
    #[default]
    CloseWait,
    /// [e]
    Established,
    /// [f]
    FinWait2,
    /// [t]
    TimeWait,
    /// [s] SYN_RECV and not accepted.
    NotAccepted,
    /// [g] fastest CLOSE_WAIT growth first.
    Growth,
    /// [a] oldest CLOSE_WAIT first.
    Age,
    /// [x] soonest out of fds first.
    Eta,
    /// [p] lowest pid first.
    Pid,
    /// [n] by name.
    Comm,
}

impl SortKey {
    pub fn of_char(c: char) -> Option<SortKey> {
        Some(match c {
            'c' => SortKey::CloseWait,
            'e' => SortKey::Established,
            'f' => SortKey::FinWait2,
            't' => SortKey::TimeWait,
            's' => SortKey::NotAccepted,
            'g' => SortKey::Growth,
            'a' => SortKey::Age,
            'x' => SortKey::Eta,
            'p' => SortKey::Pid,
            'n' => SortKey::Comm,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SortKey::CloseWait => "CLOSE_WAIT",
            SortKey::Established => "ESTABLISHED",
            SortKey::FinWait2 => "FIN_WAIT2",
            SortKey::TimeWait => "TIME_WAIT",
            SortKey::NotAccepted => "NOT_ACCEPTED",
            SortKey::Growth => "growth",
            SortKey::Age => "oldest",
            SortKey::Eta => "fd ETA",
            SortKey::Pid => "pid",
            SortKey::Comm => "comm",
        }
    }
}

fn desc_f(a: Option<f64>, b: Option<f64>) -> std::cmp::Ordering {
    b.unwrap_or(f64::NEG_INFINITY)
        .total_cmp(&a.unwrap_or(f64::NEG_INFINITY))
}

/// Sorts rows by `key`, then by CLOSE_WAIT, then by pid (orphans last).
pub fn sort_rows(rows: &mut [Row], key: SortKey) {
    rows.sort_by(|a, b| {
        let primary = match key {
            SortKey::CloseWait => b.close_wait.cmp(&a.close_wait),
            SortKey::Established => b.established.cmp(&a.established),
            SortKey::FinWait2 => b.fin_wait2.cmp(&a.fin_wait2),
            SortKey::TimeWait => b.time_wait.cmp(&a.time_wait),
            SortKey::NotAccepted => b.not_accepted.cmp(&a.not_accepted),
            SortKey::Growth => desc_f(a.growth_per_min, b.growth_per_min),
            SortKey::Age => b.oldest_cw_ns.cmp(&a.oldest_cw_ns),
            SortKey::Eta => a
                .eta_s
                .unwrap_or(f64::INFINITY)
                .total_cmp(&b.eta_s.unwrap_or(f64::INFINITY)),
            SortKey::Pid => a.pid.unwrap_or(u32::MAX).cmp(&b.pid.unwrap_or(u32::MAX)),
            SortKey::Comm => a.comm.cmp(&b.comm),
        };
        primary
            .then(b.close_wait.cmp(&a.close_wait))
            .then_with(|| match (&a.key, &b.key) {
                (RowKey::NoProcess, RowKey::NoProcess) => std::cmp::Ordering::Equal,
                (RowKey::NoProcess, _) => std::cmp::Ordering::Greater,
                (_, RowKey::NoProcess) => std::cmp::Ordering::Less,
                (x, y) => x.cmp(y),
            })
    });
}

/// The rows `/` lets through, sorted.
pub fn visible(rows: &[Row], filter: &str, key: SortKey) -> Vec<Row> {
    let mut v: Vec<Row> = rows.iter().filter(|r| r.matches(filter)).cloned().collect();
    sort_rows(&mut v, key);
    v
}

/// Each row's CLOSE_WAIT count at each refresh, for the sparkline.
#[derive(Debug, Default)]
pub struct History {
    rows: HashMap<RowKey, VecDeque<u64>>,
}

impl History {
    /// Records this refresh; rows that vanished record 0 until their history is all
    /// zeros, then are forgotten.
    pub fn update(&mut self, rows: &[Row]) {
        let mut now: HashMap<&RowKey, u64> = HashMap::new();
        for r in rows {
            now.insert(&r.key, r.close_wait as u64);
        }
        for r in rows {
            self.rows.entry(r.key.clone()).or_default();
        }
        for (k, h) in self.rows.iter_mut() {
            h.push_back(now.get(k).copied().unwrap_or(0));
            while h.len() > HISTORY_LEN {
                h.pop_front();
            }
        }
        self.rows.retain(|_, h| h.iter().any(|&c| c > 0));
    }

    pub fn of(&self, key: &RowKey) -> Vec<u64> {
        self.rows
            .get(key)
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// A key, as the terminal loop decodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Esc,
    Backspace,
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    CtrlC,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum View {
    #[default]
    Table,
    /// One row's sockets and transitions.
    Process(RowKey),
}

/// What the loop must do after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Nothing,
    Redraw,
    /// Opened a row: its sockets are needed now.
    Open(RowKey),
    Quit,
}

/// The screen's state: view, sort, filter, selection.
#[derive(Debug, Clone, Default)]
pub struct App {
    pub view: View,
    pub sort: SortKey,
    pub filter: String,
    /// `Some` while `/` is being typed.
    pub editing: Option<String>,
    /// Index into the visible rows.
    pub selected: usize,
    /// Rows the table shows at once (for PageUp/PageDown), set by the view.
    pub page: usize,
}

impl App {
    /// Applies one key; `rows` are the visible rows as last drawn.
    pub fn key(&mut self, k: Key, rows: &[Row]) -> Action {
        if k == Key::CtrlC {
            return Action::Quit;
        }
        if let Some(text) = &mut self.editing {
            match k {
                Key::Char(c) => text.push(c),
                Key::Backspace => {
                    text.pop();
                }
                Key::Enter => {
                    self.filter = self.editing.take().unwrap_or_default();
                    self.selected = 0;
                }
                Key::Esc => self.editing = None,
                _ => return Action::Nothing,
            }
            return Action::Redraw;
        }
        let last = rows.len().saturating_sub(1);
        let page = self.page.max(1);
        match (&self.view, k) {
            (_, Key::Char('q')) => return Action::Quit,
            (View::Process(_), Key::Esc | Key::Backspace | Key::Char('h')) => {
                self.view = View::Table
            }
            (View::Table, Key::Esc) if !self.filter.is_empty() => {
                self.filter.clear();
                self.selected = 0;
            }
            (View::Table, Key::Char('/')) => self.editing = Some(self.filter.clone()),
            (View::Table, Key::Enter) => {
                let Some(r) = rows.get(self.selected.min(last)) else {
                    return Action::Nothing;
                };
                self.view = View::Process(r.key.clone());
                return Action::Open(r.key.clone());
            }
            (View::Table, Key::Up | Key::Char('k')) => {
                self.selected = self.selected.saturating_sub(1)
            }
            (View::Table, Key::Down | Key::Char('j')) => {
                self.selected = (self.selected + 1).min(last)
            }
            (View::Table, Key::PageUp) => self.selected = self.selected.saturating_sub(page),
            (View::Table, Key::PageDown) => self.selected = (self.selected + page).min(last),
            (View::Table, Key::Home) => self.selected = 0,
            (View::Table, Key::End) => self.selected = last,
            (View::Table, Key::Char(c)) => match SortKey::of_char(c) {
                Some(s) => {
                    self.sort = s;
                    self.selected = 0;
                }
                None => return Action::Nothing,
            },
            _ => return Action::Nothing,
        }
        Action::Redraw
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        filter::Filter,
        linger::{
            build, set_fd_headroom,
            tests::{clk, held, holder, table, S},
        },
    };
    use tcpstate_common::{state, FD_NONE};

    fn comm(s: &[u8]) -> Comm {
        let mut c = [0; 16];
        c[..s.len()].copy_from_slice(s);
        c
    }

    /// leaky (4242) holds 3 CLOSE_WAIT sockets seen entering, python3 (917) one
    /// seeded, and one ESTABLISHED; one orphan; 917 also has a queued connection.
    fn reports() -> Vec<Report> {
        let t = table();
        let mut est = holder(917, 6, b"python3");
        est.state = state::ESTABLISHED as u8;
        let mut queued = holder(917, FD_NONE, b"python3");
        queued.queued = 1;
        queued.listener_fd = 3;
        let mut h = held(&[
            (1, holder(4242, 37, b"leaky")),
            (2, holder(4242, 38, b"leaky")),
            (3, holder(4242, 39, b"leaky")),
            (9, holder(917, 5, b"python3")),
            (20, est),
            (21, queued),
        ]);
        let mut r = build(&t, &mut h, &TOP_STATES, &clk(10), 0, &Filter::default());
        set_fd_headroom(&mut r, |pid| {
            if pid == 4242 {
                (Some(1024), Some(24))
            } else {
                (Some(1024), Some(1000))
            }
        });
        r
    }

    fn find(rows: &[Row], k: RowKey) -> &Row {
        rows.iter().find(|r| r.key == k).expect("row")
    }

    #[test]
    fn rows_fold_every_state_per_process() {
        let tw = [TimeWaitBy {
            pid: 55,
            comm: comm(b"curl"),
            ident: Ident::default(),
            count: 7,
        }];
        let rows = build_rows(&reports(), &tw, Grouping::Process);
        let leaky = find(&rows, RowKey::Pid(4242));
        assert_eq!((leaky.close_wait, leaky.established), (3, 0));
        // Entered at 1, 5 and 9 s, all within the 10 s seen: 0.3/s.
        assert!((leaky.growth_per_min.unwrap() - 18.0).abs() < 1e-9);
        assert_eq!(leaky.oldest_cw_ns, Some(9 * S));
        assert!(!leaky.oldest_lower_bound);
        assert_eq!((leaky.fds, leaky.fd_limit), (Some(24), Some(1024)));
        assert_eq!(leaky.eta_s, Some(1000.0 / 0.3));
        assert_eq!(leaky.word(), Some(Word::ReadEofNeverClosed));
        assert_eq!(&leaky.comm[..5], b"leaky");
        let py = find(&rows, RowKey::Pid(917));
        // The queued connection is CLOSE_WAIT too (the holder() default state).
        assert_eq!((py.close_wait, py.established, py.not_accepted), (2, 1, 1));
        assert!(py.oldest_lower_bound);
        assert_eq!(py.growth_per_min, Some(0.0));
        assert_eq!(py.eta_s, None, "not growing");
        let curl = find(&rows, RowKey::Pid(55));
        assert_eq!((curl.time_wait, curl.close_wait), (7, 0));
        let orphans = find(&rows, RowKey::NoProcess);
        assert_eq!((orphans.close_wait, orphans.pid), (1, None));
    }

    #[test]
    fn rows_by_container_add_up() {
        let rows = build_rows(&reports(), &[], Grouping::Container);
        let host = find(&rows, RowKey::Container(None));
        assert_eq!((host.close_wait, host.processes), (5, 2));
        assert_eq!(host.container, "-");
        // The process nearest its limit speaks for the row.
        assert_eq!(host.headroom(), Some(24));
        assert_eq!(host.pid, None);
    }

    #[test]
    fn walks_cost_at_most_their_share() {
        let ms = Duration::from_millis;
        assert!(walk_due(false, None, ms(0)));
        // Cheap walks: every refresh that follows a transition.
        assert!(walk_due(true, Some(ms(1000)), ms(5)));
        assert!(!walk_due(false, Some(ms(1000)), ms(5)));
        // A 500 ms walk: not again within 50 s, whatever moved.
        assert!(!walk_due(true, Some(ms(49_000)), ms(500)));
        assert!(walk_due(true, Some(ms(50_000)), ms(500)));
        // Nothing moved: once a minute.
        assert!(!walk_due(false, Some(ms(59_000)), ms(200)));
        assert!(walk_due(false, Some(ms(60_000)), ms(200)));
    }

    #[test]
    fn sorted_by_close_wait_then_by_key() {
        let mut rows = build_rows(&reports(), &[], Grouping::Process);
        sort_rows(&mut rows, SortKey::CloseWait);
        let keys: Vec<RowKey> = rows.iter().map(|r| r.key.clone()).collect();
        assert_eq!(
            keys,
            vec![RowKey::Pid(4242), RowKey::Pid(917), RowKey::NoProcess]
        );
        sort_rows(&mut rows, SortKey::Established);
        assert_eq!(rows[0].key, RowKey::Pid(917));
        sort_rows(&mut rows, SortKey::Pid);
        assert_eq!(rows[0].key, RowKey::Pid(917));
        sort_rows(&mut rows, SortKey::Eta);
        assert_eq!(rows[0].key, RowKey::Pid(4242), "the only one running out");
        sort_rows(&mut rows, SortKey::Comm);
        assert_eq!(rows[0].key, RowKey::NoProcess, "empty name first");
    }

    #[test]
    fn filter_matches_comm_pid_container() {
        let rows = build_rows(&reports(), &[], Grouping::Process);
        let v = visible(&rows, "PYTH", SortKey::CloseWait);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].key, RowKey::Pid(917));
        assert_eq!(visible(&rows, "4242", SortKey::CloseWait).len(), 1);
        assert_eq!(visible(&rows, "", SortKey::CloseWait).len(), 3);
        assert_eq!(visible(&rows, "nothing", SortKey::CloseWait).len(), 0);
    }

    #[test]
    fn history_keeps_counts_and_forgets_the_gone() {
        let mut h = History::default();
        let mut rows = build_rows(&reports(), &[], Grouping::Process);
        h.update(&rows);
        rows.retain(|r| r.key != RowKey::Pid(4242));
        h.update(&rows);
        assert_eq!(h.of(&RowKey::Pid(4242)), vec![3, 0]);
        assert_eq!(h.of(&RowKey::Pid(917)), vec![2, 2]);
        for _ in 0..HISTORY_LEN {
            h.update(&rows);
        }
        assert_eq!(h.of(&RowKey::Pid(4242)), Vec::<u64>::new(), "forgotten");
        assert_eq!(h.of(&RowKey::Pid(917)).len(), HISTORY_LEN);
    }

    #[test]
    fn words_pick_the_largest_cause() {
        let d = Diagnosis {
            stopped_reading: 3,
            read_all_never_closed: 1,
            ..Default::default()
        };
        assert_eq!(Word::of(&d), Some(Word::StoppedReading));
        let d = Diagnosis {
            never_accepted: 2,
            ..Default::default()
        };
        assert_eq!(Word::of(&d).map(Word::text), Some("never accepted"));
        assert_eq!(Word::of(&Diagnosis::default()), None);
    }

    #[test]
    fn keys_sort_filter_select_open_and_quit() {
        let rows = visible(
            &build_rows(&reports(), &[], Grouping::Process),
            "",
            SortKey::CloseWait,
        );
        let mut app = App {
            page: 2,
            ..Default::default()
        };
        assert_eq!(app.key(Key::Char('e'), &rows), Action::Redraw);
        assert_eq!(app.sort, SortKey::Established);
        assert_eq!(app.key(Key::Char('c'), &rows), Action::Redraw);
        assert_eq!(app.key(Key::Char('Z'), &rows), Action::Nothing);
        app.key(Key::Down, &rows);
        app.key(Key::Down, &rows);
        app.key(Key::Down, &rows);
        assert_eq!(app.selected, 2, "stops at the last row");
        app.key(Key::Home, &rows);
        app.key(Key::PageDown, &rows);
        assert_eq!(app.selected, 2);
        app.key(Key::Up, &rows);
        assert_eq!(app.key(Key::Enter, &rows), Action::Open(RowKey::Pid(917)));
        assert_eq!(app.view, View::Process(RowKey::Pid(917)));
        // Sort keys do nothing in the process view; Esc goes back.
        assert_eq!(app.key(Key::Char('e'), &rows), Action::Nothing);
        app.key(Key::Esc, &rows);
        assert_eq!(app.view, View::Table);
        // `/` edits the filter; typed letters are text, not sort keys.
        app.key(Key::Char('/'), &rows);
        for c in "leakq".chars() {
            app.key(Key::Char(c), &rows);
        }
        app.key(Key::Backspace, &rows);
        assert_eq!(app.sort, SortKey::CloseWait);
        assert_eq!(app.editing.as_deref(), Some("leak"));
        app.key(Key::Enter, &rows);
        assert_eq!((app.filter.as_str(), app.editing.clone()), ("leak", None));
        app.key(Key::Char('/'), &rows);
        app.key(Key::Char('x'), &rows);
        app.key(Key::Esc, &rows);
        assert_eq!(app.filter, "leak", "Esc while typing keeps the old filter");
        app.key(Key::Esc, &rows);
        assert_eq!(app.filter, "", "Esc clears it");
        assert_eq!(app.key(Key::Enter, &[]), Action::Nothing, "no rows");
        assert_eq!(app.key(Key::Char('q'), &rows), Action::Quit);
        app.key(Key::Char('/'), &rows);
        assert_eq!(
            app.key(Key::CtrlC, &rows),
            Action::Quit,
            "even while typing"
        );
    }
}
