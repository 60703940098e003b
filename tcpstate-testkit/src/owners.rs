//! Servers whose accepted sockets change hands: one that accepts late (its
//! connections reach CLOSE_WAIT in the accept queue), and a prefork one (the parent
//! listens, a forked child accepts). For tcpstate's owner tests.

use std::{
    io::{BufRead, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
};

use anyhow::{Context, Result};

/// Listens, prints `ready PORT`, waits for a line on stdin, then accepts CONNS
/// connections, reads each to EOF and closes it.
pub fn late_server(addr: SocketAddr, conns: u32) -> Result<()> {
    let l = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    let mut out = std::io::stdout();
    writeln!(out, "ready {}", l.local_addr()?.port())?;
    out.flush()?;
    let mut go = String::new();
    std::io::stdin().lock().read_line(&mut go)?;
    for _ in 0..conns {
        let (mut s, _) = l.accept()?;
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    }
    writeln!(out, "accepted {conns}")?;
    Ok(())
}

/// Connects CONNS times and closes each connection at once, without waiting to be
/// accepted; prints `done N`.
pub fn connect_close(addr: SocketAddr, conns: u32) -> Result<()> {
    for _ in 0..conns {
        drop(TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?);
    }
    writeln!(std::io::stdout(), "done {conns}")?;
    Ok(())
}

/// Connects CONNS times and keeps the connections (they wait unaccepted in the
/// server's queue); prints `done N`, closes them all at a line on stdin, prints
/// `closed N`.
pub fn connect_hold(addr: SocketAddr, conns: u32) -> Result<()> {
    let held: Vec<TcpStream> = (0..conns)
        .map(|_| TcpStream::connect(addr).with_context(|| format!("connect {addr}")))
        .collect::<Result<_>>()?;
    let mut out = std::io::stdout();
    writeln!(out, "done {conns}")?;
    out.flush()?;
    let mut go = String::new();
    std::io::stdin().lock().read_line(&mut go)?;
    drop(held);
    writeln!(out, "closed {conns}")?;
    out.flush()?;
    Ok(())
}

/// The parent listens and forks; the child accepts CONNS connections, reads each to
/// EOF and closes it. Prints `ready PORT child PID`, then waits for the child.
pub fn prefork_server(addr: SocketAddr, conns: u32) -> Result<()> {
    let l = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    let port = l.local_addr()?.port();
    let mut out = std::io::stdout();
    out.flush()?;
    // SAFETY: single-threaded here; the child only uses the listener and exits.
    let pid = unsafe { libc::fork() };
    anyhow::ensure!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let mut code = 0;
        for _ in 0..conns {
            match l.accept() {
                Ok((mut s, _)) => {
                    let mut sink = Vec::new();
                    let _ = s.read_to_end(&mut sink);
                }
                Err(_) => code = 1,
            }
        }
        // SAFETY: end the child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) };
    }
    writeln!(out, "ready {port} child {pid}")?;
    out.flush()?;
    drop(l);
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    anyhow::ensure!(status == 0, "prefork child failed: {status}");
    Ok(())
}
