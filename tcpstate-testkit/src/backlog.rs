//! `tcpkit backlog-server` / `burst-client`: a listener with an explicit listen()
//! backlog that never accepts (std's TcpListener always passes 128), and clients
//! that connect all at once and hold, so the accept queue fills and the kernel drops
//! the rest (`tcp_conn_request()`: ListenOverflows, `tcp_listendrop()`).

use std::{
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{FromRawFd, OwnedFd},
};

use anyhow::{bail, Result};

fn check(r: libc::c_int, what: &str) -> Result<libc::c_int> {
    if r < 0 {
        bail!("{what}: {}", std::io::Error::last_os_error());
    }
    Ok(r)
}

/// Binds `addr`, listen(fd, `backlog`), prints `listening fd F port P`, never
/// accepts; exits when stdin closes.
pub fn server(addr: SocketAddr, backlog: i32) -> Result<()> {
    let fam = if addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain syscalls on a fresh fd; the sockaddr buffers outlive the calls.
    let fd = check(unsafe { libc::socket(fam, libc::SOCK_STREAM, 0) }, "socket")?;
    let own = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            4,
        )
    };
    let r = match addr {
        SocketAddr::V4(a) => {
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as u16;
            sa.sin_port = a.port().to_be();
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            unsafe {
                libc::bind(
                    fd,
                    (&sa as *const libc::sockaddr_in).cast(),
                    std::mem::size_of_val(&sa) as u32,
                )
            }
        }
        SocketAddr::V6(a) => {
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as u16;
            sa.sin6_port = a.port().to_be();
            sa.sin6_addr.s6_addr = a.ip().octets();
            unsafe {
                libc::bind(
                    fd,
                    (&sa as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of_val(&sa) as u32,
                )
            }
        }
    };
    check(r, "bind")?;
    check(unsafe { libc::listen(fd, backlog) }, "listen")?;
    let l = TcpListener::from(own);
    println!("listening fd {fd} port {}", l.local_addr()?.port());
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}

/// Starts `conns` non-blocking connects to `addr` at once, prints `connecting N`,
/// holds them (the kernel retransmits the dropped SYNs) until stdin closes.
pub fn client(addr: SocketAddr, conns: u32) -> Result<()> {
    let mut held = Vec::new();
    for _ in 0..conns {
        let fam = if addr.is_ipv6() {
            libc::AF_INET6
        } else {
            libc::AF_INET
        };
        // SAFETY: a fresh fd, owned at once.
        let fd = check(
            unsafe { libc::socket(fam, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0) },
            "socket",
        )?;
        let s = unsafe { TcpStream::from_raw_fd(fd) };
        let r = match addr {
            SocketAddr::V4(a) => {
                let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                sa.sin_family = libc::AF_INET as u16;
                sa.sin_port = a.port().to_be();
                sa.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                unsafe {
                    libc::connect(
                        fd,
                        (&sa as *const libc::sockaddr_in).cast(),
                        std::mem::size_of_val(&sa) as u32,
                    )
                }
            }
            SocketAddr::V6(a) => {
                let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                sa.sin6_family = libc::AF_INET6 as u16;
                sa.sin6_port = a.port().to_be();
                sa.sin6_addr.s6_addr = a.ip().octets();
                unsafe {
                    libc::connect(
                        fd,
                        (&sa as *const libc::sockaddr_in6).cast(),
                        std::mem::size_of_val(&sa) as u32,
                    )
                }
            }
        };
        let e = std::io::Error::last_os_error();
        if r < 0 && e.raw_os_error() != Some(libc::EINPROGRESS) {
            bail!("connect {addr}: {e}");
        }
        held.push(s);
    }
    println!("connecting {}", held.len());
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}
