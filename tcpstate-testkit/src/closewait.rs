//! `tcpkit close-wait --count N`: N sockets in CLOSE_WAIT on loopback, for the bench's
//! scale row. One worker process per ~10,000 (each connection costs it two fds, the
//! server's socket in CLOSE_WAIT and the client's, half-closed, in FIN_WAIT2; the
//! hard fd limit here is 20,000 per process and raising it needs CAP_SYS_RESOURCE).
//! The client keeps its fd: orphans beyond tcp_max_orphans would be reset by the
//! kernel, taking the server's socket out of CLOSE_WAIT.

use std::{
    io::{BufRead, BufReader, Write},
    net::{Shutdown, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
};

use anyhow::{bail, Context, Result};

/// Sockets per worker: two fds each, within the fd limit (raised to the hard one).
fn per_worker() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid rlimit pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    (r.rlim_cur.min(1 << 20).saturating_sub(64) / 2).max(1)
}

pub fn run(count: u64) -> Result<()> {
    let per = per_worker();
    let exe = std::env::current_exe()?;
    let mut workers: Vec<Child> = Vec::new();
    let mut left = count;
    // Stop the workers (their stdin closes) on any early return, too.
    struct Workers<'a>(&'a mut Vec<Child>);
    impl Drop for Workers<'_> {
        fn drop(&mut self) {
            for w in self.0.iter_mut() {
                drop(w.stdin.take());
            }
            for w in self.0.iter_mut() {
                let _ = w.wait();
            }
        }
    }
    let guard = Workers(&mut workers);
    while left > 0 {
        let n = left.min(per);
        left -= n;
        guard.0.push(
            Command::new(&exe)
                .args(["close-wait", "--worker", "--count", &n.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .context("starting a close-wait worker")?,
        );
    }
    let mut ports = Vec::new();
    for w in guard.0.iter_mut() {
        let mut line = String::new();
        BufReader::new(w.stdout.take().context("worker stdout")?).read_line(&mut line)?;
        match line.trim().strip_prefix("ready ") {
            Some(p) => ports.push(p.to_string()),
            None => bail!("a close-wait worker failed (it printed {line:?})"),
        }
    }
    let mut out = std::io::stdout();
    writeln!(
        out,
        "ready {count} procs {} ports {}",
        ports.len(),
        ports.join(",")
    )?;
    out.flush()?;
    wait_for_stop();
    drop(guard);
    Ok(())
}

/// Until stdin closes or SIGTERM/SIGINT (blocked, then taken with sigwait; a thread
/// turns stdin's EOF into a SIGTERM to this process).
fn wait_for_stop() {
    // SAFETY: plain signal-set calls on a local set; kill to our own pid.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        std::thread::spawn(|| {
            crate::wait_for_stdin_eof();
            libc::kill(libc::getpid(), libc::SIGTERM);
        });
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
    }
}

/// One worker: a listener of its own, `count` connections to it, each client
/// half-closed. Prints `ready PORT`; on stdin's EOF resets every socket, so that
/// none is left in TIME_WAIT or LAST_ACK.
pub fn worker(count: u64) -> Result<()> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let mut held = Vec::with_capacity(2 * count as usize);
    for _ in 0..count {
        let c = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        let (s, _) = l.accept()?;
        // The FIN is processed in this call on loopback: the server's socket is in
        // CLOSE_WAIT when it returns.
        c.shutdown(Shutdown::Write)?;
        held.push(s);
        held.push(c);
    }
    drop(l);
    let mut out = std::io::stdout();
    writeln!(out, "ready {}", addr.port())?;
    out.flush()?;
    crate::wait_for_stdin_eof();
    for s in &held {
        crate::linger0(s);
    }
    Ok(())
}
