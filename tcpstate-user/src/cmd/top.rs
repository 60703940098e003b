//! `tcpstate top`: the live screen. `linger`'s model for every state `top` counts
//! (the socket table fed by transitions, one fd walk for the holders, linger's
//! reports with their causes, growth and fd headroom), folded into rows by
//! `model::top`, drawn by `render::top` with ratatui on crossterm.
//!
//! Cost: the fd walk is what costs (~5 us per socket held at 100k: the iterator's
//! checked reads, the TIME_WAIT listing, /proc fd counts, building the report); the
//! screen refreshes every `--interval` but walks only when a transition arrived
//! since the last walk, no sooner than [`WALK_COST_SHARE`] times the last walk's
//! time after it, and at least every [`WALK_AT_LEAST`] (`model::top::walk_due`).
//! Between walks the ages move on by the clock and the header says how old the
//! holders are.
//!
//! The terminal: raw mode, alternate screen, cursor hidden, and all three undone by
//! a guard's Drop on every way out (q, Ctrl-C, SIGTERM, an error) and by a panic
//! hook, so the shell gets back the terminal it had.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    io::{self, Stdout},
    sync::mpsc,
    time::{Duration, Instant},
};

use crossterm::{
    cursor,
    event::{Event as TermEvent, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    execute, terminal,
};
use ratatui::{backend::CrosstermBackend, Terminal};
use tcpstate_common::{
    Event, FLAG_OWNERS, FLAG_STREAM, FLAG_TIMEWAIT, FLAG_TRACK, ITER_ACCEPT_QUEUE,
};

use crate::{
    cli::TopArgs,
    cmd::{
        ident::Resolver,
        session::{Consumer, Session},
        walk,
    },
    model::{
        events::{addr, TcpState},
        filter::Filter,
        hist::TW_UNSEEN_AFTER,
        holders::{clean_comm, Comm},
        linger::{state_mask, Clocks, Report},
        metrics::loss_terms,
        sockets::SocketTable,
        summary::{Received, Summary},
        top::{
            build_rows, visible, walk_due, Action, App, Grouping, History, Key, Row, RowKey,
            TimeWaitBy, View, TOP_STATES,
        },
    },
    probe::{netns, procfs, ring::monotonic_ns, LoadOptions, Probe},
    render::{
        clock::Clock,
        format::{comm_text, endpoint},
        summary::summary_text,
        top::{draw, Header, ProcessView, Totals},
    },
};

/// Most sockets tracked at once; beyond it sockets are counted as untracked.
const TABLE_CAPACITY: usize = 1 << 20;
/// TIME_WAIT destinations in the header.
const TW_DESTS: usize = 3;
/// Transitions kept for the process view.
const TRANSITIONS_KEPT: usize = 500;
/// Recent transitions of every socket, kept so that a socket the next walk finds
/// in the open process still shows the transitions that brought it there (the
/// kernel's owner of a passive socket's early transitions is not its holder yet).
const RECENT_KEPT: usize = 8192;

/// Puts the terminal back as it was: raw mode off, alternate screen left, cursor
/// shown. Idempotent: the guard and the panic hook may both run it.
fn restore_terminal() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(io::stdout(), terminal::LeaveAlternateScreen, cursor::Show);
}

/// Raw mode and the alternate screen for as long as it lives.
struct TermGuard;

impl TermGuard {
    fn enter() -> io::Result<TermGuard> {
        terminal::enable_raw_mode()?;
        // From here on, Drop undoes whatever was set, even if the next step fails.
        let g = TermGuard;
        execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)?;
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            prev(info);
        }));
        Ok(g)
    }
}

impl Drop for TermGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn key_of(k: &KeyEvent) -> Option<Key> {
    if k.kind == KeyEventKind::Release {
        return None;
    }
    Some(match k.code {
        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Key::CtrlC,
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        _ => return None,
    })
}

struct Top {
    filter: Filter,
    by: Grouping,
    table: SocketTable,
    resolver: Resolver,
    clock: Clock,
    hz: u32,
    attached_ns: u64,
    /// TIME_WAIT sockets older than the probe (listed once at startup); the probe's
    /// records give the rest, in every namespace.
    tw_seed: walk::TimewaitSeed,
    own_netns: u32,
    term: Terminal<CrosstermBackend<Stdout>>,
    keys: mpsc::Receiver<TermEvent>,
    app: App,
    /// Rows as the last walk built them, and when (monotonic ns).
    rows: Vec<Row>,
    walked_ns: u64,
    last_walk: Option<Instant>,
    /// How long the last walk took.
    walk_cost: Duration,
    /// `--interval`.
    refresh: Duration,
    /// A transition arrived (or a process was opened) since the last walk.
    changed: bool,
    /// The rows as drawn (filtered, sorted, ages moved on).
    shown: Vec<Row>,
    header: Header,
    history: History,
    pv: ProcessView,
    /// Cookies of the open row's sockets, for its transitions.
    open_cookies: HashSet<u64>,
    /// The last [`RECENT_KEPT`] transitions, oldest first.
    recent: VecDeque<Event>,
    events: u64,
    events_at_tick: (Instant, u64),
    quit: bool,
}

impl Top {
    fn walk(&mut self, probe: &mut Probe) -> io::Result<()> {
        let now = monotonic_ns();
        let clk = Clocks {
            now_ns: now,
            attached_ns: self.attached_ns,
            hz: self.hz,
        };
        let reports = walk::reports(
            probe,
            &self.filter,
            &mut self.resolver,
            &self.table,
            &TOP_STATES,
            &clk,
            0,
        )?;
        let tws = self.time_waits(probe, now)?;
        self.rows = build_rows(&reports, &tws, self.by);
        self.open_sockets(&reports);
        let gauges =
            walk::timewait_from_probe(probe, &self.filter, &mut self.tw_seed, self.own_netns, now)?;
        let count = |st: TcpState| -> u64 {
            reports
                .iter()
                .filter(|r| r.state == st)
                .map(|r| r.count() as u64)
                .sum()
        };
        let mut dests: Vec<_> = gauges
            .iter()
            .flat_map(|(_, g)| {
                g.top(TW_DESTS)
                    .into_iter()
                    .map(|((a, p), n)| (a, p, n, g.port_range))
            })
            .collect();
        dests.sort_by(|a, b| b.2.cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
        dests.truncate(TW_DESTS);
        self.header.tw_dests = dests;
        self.header.totals = Totals {
            established: count(TcpState::Established),
            close_wait: count(TcpState::CloseWait),
            fin_wait2: count(TcpState::FinWait2),
            time_wait: gauges.iter().map(|(_, g)| g.total).sum(),
            not_accepted: self.rows.iter().map(|r| r.not_accepted as u64).sum(),
        };
        self.walked_ns = now;
        self.last_walk = Some(Instant::now());
        self.changed = false;
        Ok(())
    }

    /// TIME_WAIT sockets by the process that closed first: the probe's records of
    /// hand-overs to a timewait socket in the last 66 s, by owner.
    fn time_waits(&mut self, probe: &Probe, now: u64) -> io::Result<Vec<TimeWaitBy>> {
        let mut by_pid: HashMap<u32, (Comm, u64)> = HashMap::new();
        let pids = &self.filter.pids;
        probe.timewaits(now, TW_UNSEEN_AFTER.as_nanos() as u64, |_, v| {
            if pids.is_empty() || pids.contains(&v.pid) {
                by_pid.entry(v.pid).or_insert((clean_comm(&v.comm), 0)).1 += 1;
            }
        })?;
        Ok(by_pid
            .into_iter()
            .map(|(pid, (comm, count))| TimeWaitBy {
                pid,
                comm,
                ident: match self.by {
                    Grouping::Container => (*self.resolver.process(pid)).clone(),
                    Grouping::Process => Default::default(),
                },
                count,
            })
            .collect())
    }

    /// The open row's sockets, from this walk's reports.
    fn open_sockets(&mut self, reports: &[Report]) {
        let View::Process(key) = &self.app.view else {
            return;
        };
        let mut socks = Vec::new();
        for g in reports.iter().flat_map(|r| r.groups.iter()) {
            let mine = match key {
                RowKey::NoProcess => g.pid.is_none(),
                RowKey::Pid(p) => g.pid == Some(*p),
                RowKey::Container(c) => g.pid.is_some() && g.ident.container_id == *c,
            };
            if mine {
                socks.extend(g.sockets.iter().cloned());
            }
        }
        socks.sort_by(|a, b| b.age_ns.cmp(&a.age_ns).then(a.fd.cmp(&b.fd)));
        self.open_cookies = socks.iter().map(|s| s.cookie).collect();
        self.pv.sockets = socks;
    }

    /// The rows as shown now: filtered, sorted, ages moved on since the walk.
    fn refresh_shown(&mut self) {
        let since = monotonic_ns().saturating_sub(self.walked_ns);
        self.shown = visible(&self.rows, &self.app.filter, self.app.sort);
        for r in &mut self.shown {
            if let Some(a) = &mut r.oldest_cw_ns {
                *a += since;
            }
            if let Some(e) = &mut r.eta_s {
                *e = (*e - since as f64 / 1e9).max(0.0);
            }
        }
        if let View::Process(key) = &self.app.view {
            self.pv.row = self.shown.iter().find(|r| r.key == *key).cloned();
            self.pv.history = self.history.of(key);
            let pid = match key {
                RowKey::Pid(p) => Some(*p),
                _ => None,
            };
            let mine: Vec<Event> = self
                .recent
                .iter()
                .filter(|e| Some(e.pid) == pid || self.open_cookies.contains(&e.cookie))
                .rev()
                .take(TRANSITIONS_KEPT)
                .copied()
                .collect();
            self.pv.transitions = mine
                .iter()
                .rev()
                .map(|e| transition_line(&mut self.clock, e))
                .collect();
        }
    }

    fn draw(&mut self) -> io::Result<()> {
        let (h, rows, app) = (&self.header, &self.shown, &mut self.app);
        let pv = matches!(app.view, View::Process(_)).then_some(&self.pv);
        self.term.draw(|f| draw(f, h, rows, app, pv))?;
        Ok(())
    }
}

/// One line of the process view's transitions.
fn transition_line(clock: &mut Clock, ev: &Event) -> String {
    let mut t = String::new();
    clock.local_hms(ev.ts_ns, &mut t);
    let name = |s: u8| {
        TcpState::try_from(i32::from(s))
            .map(|s| s.name().to_string())
            .unwrap_or_else(|_| format!("UNKNOWN({s})"))
    };
    // pid 0: the kernel had no owner for it yet (a passive socket before accept()).
    let owner = match ev.pid {
        0 => "-".to_string(),
        p => format!("pid {p} {}", comm_text(&clean_comm(&ev.comm))),
    };
    format!(
        "{t}  {} -> {}  {} > {}  {owner}",
        name(ev.oldstate),
        name(ev.newstate),
        endpoint(addr(ev.family, &ev.saddr), ev.sport),
        endpoint(addr(ev.family, &ev.daddr), ev.dport),
    )
}

impl Consumer for Top {
    fn event(&mut self, ev: &Event) -> io::Result<()> {
        self.events += 1;
        self.changed = true;
        self.table.apply(ev);
        if self.recent.len() == RECENT_KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(*ev);
        Ok(())
    }

    /// Keys and resizes, after each drain (at least every 100 ms).
    fn flush(&mut self) -> io::Result<()> {
        let mut redraw = false;
        while let Ok(e) = self.keys.try_recv() {
            match e {
                TermEvent::Key(k) => {
                    let Some(k) = key_of(&k) else { continue };
                    match self.app.key(k, &self.shown) {
                        Action::Nothing => {}
                        Action::Redraw => redraw = true,
                        Action::Quit => {
                            self.quit = true;
                            return Ok(());
                        }
                        Action::Open(_) => {
                            // Its sockets come with the next walk, at the next refresh.
                            self.pv = ProcessView::default();
                            self.open_cookies.clear();
                            self.changed = true;
                            redraw = true;
                        }
                    }
                }
                TermEvent::Resize(..) => redraw = true,
                _ => {}
            }
        }
        if redraw {
            self.refresh_shown();
            self.draw()?;
        }
        Ok(())
    }

    fn interval(&mut self, probe: &mut Probe) -> io::Result<()> {
        if walk_due(
            self.changed,
            self.last_walk.map(|t| t.elapsed()),
            self.walk_cost,
        ) {
            let t = Instant::now();
            self.walk(probe)?;
            self.walk_cost = t.elapsed();
        }
        let since = self.last_walk.map_or(Duration::ZERO, |t| t.elapsed());
        // Say how old the holders are once that is more than two refreshes.
        self.header.walked = (since > 2 * self.refresh).then_some((since, self.walk_cost));
        let (t0, n0) = self.events_at_tick;
        let secs = t0.elapsed().as_secs_f64();
        if secs > 0.0 {
            self.header.transitions_per_s = (self.events - n0) as f64 / secs;
        }
        self.events_at_tick = (Instant::now(), self.events);
        let summary = Summary::from_counters(
            &probe.counters(),
            &Received {
                events: self.events,
                untracked: self.table.untracked,
                // Only the final summary can tell what is still in transit.
                ..Received::default()
            },
        );
        self.header.losses = loss_terms(&summary).to_vec();
        self.header.untracked = summary.untracked;
        let mut time = String::new();
        self.clock.local_hms(monotonic_ns(), &mut time);
        // Seconds are enough on a screen refreshed every second.
        time.truncate(8);
        self.header.time = time;
        self.history.update(&self.rows);
        self.refresh_shown();
        self.draw()
    }

    fn finished(&self) -> bool {
        self.quit
    }
}

pub async fn run(args: TopArgs) -> anyhow::Result<()> {
    let filter = args.filter.filter();
    // Ports, family, namespaces and containers filter in the probe; --pid stays here,
    // where the holder (not the probe's owner) decides, as in linger.
    let mut kfilter = filter.kernel();
    kfilter.n_pids = 0;
    // Every transition: the table, transitions/s and the process view need them.
    kfilter.states = 0;
    let tracked = state_mask(&TOP_STATES);
    let opts = LoadOptions {
        filter: kfilter,
        // Owners, so that TIME_WAIT records name the process that closed first.
        flags: FLAG_STREAM | FLAG_TRACK | FLAG_OWNERS | FLAG_TIMEWAIT,
        iter_states: tracked,
        iter_flags: ITER_ACCEPT_QUEUE,
        ring_bytes: 1 << 22,
        fd_walk: true,
        ..LoadOptions::default()
    };
    let mut session = Session::start("top", &opts, false)?;
    let mut table = SocketTable::new(tracked, TABLE_CAPACITY);
    walk::seed_unheld(
        &mut session.probe,
        &mut table,
        &filter,
        tracked,
        session.attached_ns,
    )?;
    let own_netns = procfs::netns_inode();
    let tw_seed = walk::TimewaitSeed::read(
        &filter,
        &mut netns::Registry::default(),
        own_netns,
        monotonic_ns(),
    )?;
    // Keys and resizes: crossterm's blocking read, on its own thread.
    let (tx, keys) = mpsc::channel();
    std::thread::spawn(move || {
        while let Ok(e) = crossterm::event::read() {
            if tx.send(e).is_err() {
                break;
            }
        }
    });
    let guard = TermGuard::enter()?;
    let mut top = Top {
        filter,
        by: args.grouping(),
        table,
        resolver: Resolver::new(),
        clock: Clock::new(),
        hz: procfs::hz().unwrap_or(250),
        attached_ns: session.attached_ns,
        tw_seed,
        own_netns,
        term: Terminal::new(CrosstermBackend::new(io::stdout()))?,
        keys,
        app: App::default(),
        rows: Vec::new(),
        walked_ns: 0,
        last_walk: None,
        walk_cost: Duration::ZERO,
        refresh: args.interval,
        changed: true,
        shown: Vec::new(),
        header: Header {
            by: args.grouping(),
            ..Header::default()
        },
        history: History::default(),
        pv: ProcessView::default(),
        open_cookies: HashSet::new(),
        recent: VecDeque::with_capacity(RECENT_KEPT),
        events: 0,
        events_at_tick: (Instant::now(), 0),
        quit: false,
    };
    // The first screen at once, not after one interval.
    top.interval(&mut session.probe)?;
    let result = session.run(&mut top, None, Some(args.interval)).await;
    drop(top);
    drop(guard);
    result?;
    let summary = session.summary(None, 0);
    eprintln!("{}", summary_text(&summary));
    Ok(())
}
