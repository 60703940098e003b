//! `tcpkit leak-server` / `leak-client`: the buggy servers `linger` diagnoses, and
//! clients that leave their sockets in CLOSE_WAIT (or CLOSE) behind.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
};

use anyhow::{Context, Result};
use clap::ValueEnum;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Behave {
    /// Accept, never read, never close.
    ReadNothing,
    /// Accept, read to EOF (read() returns 0), never close.
    ReadEof,
    /// Listen and never accept.
    NoAccept,
    /// The classic leaky echo server: accept, read one request, write the reply, go
    /// back to accept() without reading again or closing.
    EchoLeak,
}

/// Listens on `addr`, prints `ready PORT`, serves `conns` connections per
/// `behave`, prints `held N fds F,F,...` (`listening fd F` for `no-accept`), then
/// keeps everything open until stdin closes.
pub fn server(addr: SocketAddr, conns: u32, behave: Behave) -> Result<()> {
    let l = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    println!("ready {}", l.local_addr()?.port());
    let mut held = Vec::new();
    if behave == Behave::NoAccept {
        println!("listening fd {}", l.as_raw_fd());
    } else {
        for _ in 0..conns {
            let (mut s, _) = l.accept()?;
            let mut buf = [0u8; 4096];
            match behave {
                Behave::ReadEof => while s.read(&mut buf)? > 0 {},
                Behave::EchoLeak => {
                    let n = s.read(&mut buf)?;
                    s.write_all(&buf[..n])?;
                }
                Behave::ReadNothing | Behave::NoAccept => {}
            }
            held.push(s);
        }
        let fds: Vec<String> = held.iter().map(|s| s.as_raw_fd().to_string()).collect();
        println!("held {} fds {}", held.len(), fds.join(","));
    }
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(held);
    Ok(())
}

/// Makes `conns` connections one by one: each writes `send` bytes, reads the reply
/// when `reply`, then closes (with a reset when `reset`, keeping no TIME_WAIT).
/// Prints `done N`.
pub fn client(addr: SocketAddr, conns: u32, send: usize, reply: bool, reset: bool) -> Result<()> {
    for _ in 0..conns {
        let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        if send > 0 {
            s.write_all(&vec![b'x'; send])?;
        }
        if reply {
            let mut buf = vec![0u8; send.max(1)];
            s.read_exact(&mut buf)?;
        }
        if reset {
            crate::linger0(&s);
        }
        drop(s);
    }
    println!("done {conns}");
    Ok(())
}
