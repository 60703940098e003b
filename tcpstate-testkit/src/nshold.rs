//! `tcpkit netns-hold --netns PATH`: sockets in a network namespace that no process is
//! in. It enters the namespace (setns), makes CONNS connections whose server side it
//! keeps in CLOSE_WAIT (the client half-closed, also kept) and TW connections left in
//! TIME_WAIT on 127.0.0.1, goes back to
//! the namespace it came from and closes its handles on the other. Once the test
//! removes the namespace's bind mount, only the sockets keep it alive.

use std::{
    fs::File,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::Path,
};

use anyhow::{bail, Context, Result};

fn enter(ns: &File) -> Result<()> {
    // SAFETY: setns on an open nsfs fd; this process is single-threaded here.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

pub fn run(path: &Path, conns: u32, time_wait: u32) -> Result<()> {
    let home = File::open("/proc/self/ns/net").context("our namespace")?;
    let there = File::open(path).with_context(|| format!("open {}", path.display()))?;
    enter(&there)?;
    drop(there);
    let l = TcpListener::bind("127.0.0.1:0").context("bind in the namespace (lo up?)")?;
    let addr = l.local_addr()?;
    let mut held = Vec::new();
    for _ in 0..conns {
        let c = TcpStream::connect(addr)?;
        let (s, _) = l.accept()?;
        // The client half-closes and keeps its fd (an orphan would become a FIN_WAIT2
        // minisocket), the server keeps its end: CLOSE_WAIT.
        c.shutdown(std::net::Shutdown::Write)?;
        held.push(c);
        held.push(s);
    }
    for _ in 0..time_wait {
        let c = TcpStream::connect(addr)?;
        let (mut s, _) = l.accept()?;
        // The client closes first, then the server: the client's end waits in
        // TIME_WAIT.
        c.shutdown(std::net::Shutdown::Both)?;
        let mut sink = Vec::new();
        s.read_to_end(&mut sink)?;
        drop(s);
        drop(c);
    }
    drop(l);
    enter(&home)?;
    drop(home);
    let mut out = std::io::stdout();
    writeln!(out, "ready port {}", addr.port())?;
    out.flush()?;
    crate::wait_for_stdin_eof();
    drop(held);
    Ok(())
}
