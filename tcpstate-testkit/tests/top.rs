//! `tcpstate top` in a real terminal: tmux runs it in a pane, `capture-pane` reads the
//! screen, `send-keys` types. A real process leaks CLOSE_WAIT sockets; the screen
//! must show it first with its exact count, its growth, and its sockets after Enter;
//! a resize to 20x5 and `q` must leave the terminal as it was. Needs root and tmux;
//! run by `cargo xtask test` (which installs tmux).

mod common;

use std::{
    collections::BTreeSet,
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

/// A tmux server of its own (`-L`), no user config, one session; killed on drop.
struct Tmux {
    sock: String,
    dir: PathBuf,
}

impl Tmux {
    /// Runs `cmd` (a shell command line) in a `cols`x`rows` pane.
    fn start(name: &str, cols: u16, rows: u16, cmd: &str) -> Tmux {
        let sock = format!("tcpstate-{name}-{}", std::process::id());
        let dir = std::env::temp_dir().join(&sock);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let t = Tmux {
            sock,
            dir: dir.clone(),
        };
        t.run(&[
            "new-session",
            "-d",
            "-c",
            dir.to_str().unwrap(),
            "-s",
            "top",
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
            cmd,
        ]);
        t
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.sock, "-f", "/dev/null"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("tmux (cargo xtask test installs it)");
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    fn keys(&self, keys: &str) {
        self.run(&["send-keys", "-t", "top", keys]);
    }

    fn resize(&self, cols: u16, rows: u16) {
        self.run(&[
            "resize-window",
            "-t",
            "top",
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
        ]);
    }

    /// `display -p FORMAT` for the pane.
    fn show(&self, format: &str) -> String {
        self.run(&["display", "-p", "-t", "top", format])
            .trim()
            .to_string()
    }

    /// Polls the screen until `ok` holds (up to 60 s: QEMU guests are slow); panics with
    /// the last screen.
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            if Instant::now() > deadline {
                let rc = fs::read_to_string(self.dir.join("rc")).unwrap_or_default();
                panic!("the screen never showed {what}; top's exit status {rc:?}; screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.sock, "kill-server"])
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The main table's rows: whitespace-split cells under the `PID` header line.
fn rows(screen: &str) -> Vec<Vec<String>> {
    screen
        .lines()
        .skip_while(|l| !l.starts_with("PID "))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

/// The cell of `row` under header `col`.
fn cell<'a>(screen: &str, row: &'a [String], col: &str) -> &'a str {
    let header = screen.lines().find(|l| l.starts_with("PID ")).unwrap();
    let i = header
        .split_whitespace()
        .position(|h| h == col)
        .unwrap_or_else(|| panic!("no column {col} in {header:?}"));
    &row[i]
}

/// The first row is `pid` with `cw` sockets in CLOSE_WAIT.
fn first_is(screen: &str, pid: u32, cw: u32) -> bool {
    rows(screen)
        .first()
        .is_some_and(|r| r[0] == pid.to_string() && cell(screen, r, "CLOSE_WAIT") == cw.to_string())
}

/// The process view's CLOSE_WAIT sockets on `port`: their fds.
fn open_fds(screen: &str, port: u16) -> BTreeSet<u64> {
    let local = format!(":{port}");
    screen
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|w| w.len() >= 6 && w[0].ends_with(&local) && w[2] == "CLOSE_WAIT")
        .map(|w| w[5].parse().unwrap())
        .collect()
}

/// `quit`: the keys that end it (`q`, or `C-c`: in raw mode Ctrl-C is a key, not
/// SIGINT).
fn leaking_process_first(ip: &str, quit: &str) {
    let port = free_port(ip);
    let a = sock_addr(ip, port);
    // Holds all 9 connections it accepts, reads nothing, closes none.
    let mut server = Kit::server(&a, "9", "hold");
    let mut c1 = Kit::client(&a, "5", "client-close", &[]);
    assert!(c1.line().starts_with("done"));
    let cmd = format!(
        // `after` appears only once written whole (the test polls for it).
        "stty -g > before; {} top --port {port}; echo $? > rc; stty -g > a.t; mv a.t after; exec sleep 600",
        tcpstate_bin()
    );
    let tmux = Tmux::start(&format!("top-{port}"), 160, 40, &cmd);
    let s = tmux.wait_for("the leaking server first with 5 in CLOSE_WAIT", |s| {
        first_is(s, server.pid(), 5)
    });
    assert!(s.contains("lost 0"), "the loss counters are shown:\n{s}");

    let mut c2 = Kit::client(&a, "3", "client-close", &[]);
    assert!(c2.line().starts_with("done"));
    let s = tmux.wait_for("8 in CLOSE_WAIT, growing", |s| first_is(s, server.pid(), 8));
    let row = &rows(&s)[0];
    let grow: f64 = cell(&s, row, "GROW/m").parse().unwrap();
    assert!(grow > 0.0, "growth after more leaks:\n{s}");
    assert_eq!(cell(&s, row, "DIAGNOSIS"), "stopped", "{s}");

    tmux.keys("Enter");
    let s = tmux.wait_for("the server's 8 sockets", |s| {
        s.contains(&format!("pid {}", server.pid())) && open_fds(s, port).len() == 8
    });
    // One more leak while the process is open: its transitions show live.
    let mut c3 = Kit::client(&a, "1", "client-close", &[]);
    assert!(c3.line().starts_with("done"));
    let held = fds(&server.line());
    assert_eq!(held.len(), 9);
    let s2 = tmux.wait_for("the 9th socket and its transition", |s| {
        open_fds(s, port) == held && s.contains("ESTABLISHED -> CLOSE_WAIT")
    });
    assert!(
        open_fds(&s, port).is_subset(&held),
        "the fds shown are the server's:\n{s}"
    );

    tmux.resize(20, 5);
    std::thread::sleep(Duration::from_millis(1500));
    let tiny = tmux.screen();
    assert!(tiny.starts_with("tcpstate top"), "drawn at 20x5:\n{tiny}");
    tmux.resize(160, 40);
    tmux.keys("Escape");
    tmux.wait_for("the table again", |s| first_is(s, server.pid(), 9));
    tmux.keys(quit);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tmux.dir.join("after").exists() {
        assert!(Instant::now() < deadline, "{quit} did not end top:\n{s2}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let read = |f: &str| fs::read_to_string(tmux.dir.join(f)).unwrap();
    assert_eq!(read("rc").trim(), "0", "{}", tmux.screen());
    assert_eq!(read("before"), read("after"), "terminal modes restored");
    assert_eq!(tmux.show("#{alternate_on}"), "0", "alternate screen left");
    assert_eq!(tmux.show("#{cursor_flag}"), "1", "cursor shown again");
    let end = tmux.screen();
    assert!(end.contains("0 lost"), "the summary after {quit}:\n{end}");
    server.finish();
    c1.finish();
    c2.finish();
    c3.finish();
}

#[test]
fn leaking_process_first_ipv4() {
    leaking_process_first("127.0.0.1", "q");
}

#[test]
fn leaking_process_first_ipv6() {
    leaking_process_first("::1", "C-c");
}

/// Not a terminal: one line pointing at linger and serve, status 2, before anything
/// loads. Bad values: one line each, status 2.
#[test]
fn no_terminal_or_bad_values_exit_2() {
    let out = Command::new(tcpstate_bin())
        .arg("top")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("linger") && err.contains("serve"), "{err}");
    assert!(out.stdout.is_empty());
    assert_usage_errors(&[
        (&["top", "--interval", "10ms"], "--interval"),
        (&["top", "--interval", "0"], "--interval"),
        (&["top", "--interval", "2h"], "--interval"),
        (&["top", "--by", "host"], "--by"),
        (&["top", "--port", "0"], "--port"),
    ]);
}
