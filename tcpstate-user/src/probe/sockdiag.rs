//! sock_diag (`NETLINK_SOCK_DIAG`, the interface `ss` uses): the TCP sockets that
//! existed before the probe saw them, with their cookies, so their history can be
//! seeded honestly (age as a lower bound) instead of being dropped.

use std::{io, net::IpAddr};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

/// One socket as sock_diag reports it (IPv4-mapped addresses as they are: the model
/// unmaps them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiagSocket {
    pub cookie: u64,
    pub state: u8,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// `idiag_expires`: ms until the socket's pending timer fires (for TIME_WAIT,
    /// its end), 0 when none is pending.
    pub expires_ms: u32,
}

/// Dumps IPv4 and IPv6 TCP sockets whose state bit is set in `states`
/// (`1 << state`, as `inet_diag` takes it).
#[cfg(test)]
pub fn dump_tcp(states: u32) -> io::Result<Vec<DiagSocket>> {
    let mut out = Vec::new();
    for_each_tcp(states, |s| out.push(*s))?;
    Ok(out)
}

/// Calls `each` for every IPv4 and IPv6 TCP socket whose state bit is set in
/// `states`, as the dump arrives: a host with 100k sockets is never held in memory.
pub fn for_each_tcp(states: u32, mut each: impl FnMut(&DiagSocket)) -> io::Result<()> {
    for family in [AF_INET, AF_INET6] {
        dump_family(family, states, &mut each)?;
    }
    Ok(())
}

fn dump_family(family: u8, states: u32, each: &mut impl FnMut(&DiagSocket)) -> io::Result<()> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut req = NetlinkMessage::new(
        hdr,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::from_bits_truncate(states),
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0)?;

    // Responses are parsed in place: a dump can hold 100k+ sockets every second
    // (TIME_WAIT polls), and per-message decoding would dominate tcpstate's CPU.
    let mut rx = vec![0u8; 256 << 10];
    loop {
        let size = socket.recv(&mut &mut rx[..], 0)?;
        let mut off = 0;
        while off + 16 <= size {
            let u32_at = |o: usize| u32::from_ne_bytes(rx[o..o + 4].try_into().unwrap());
            let len = u32_at(off) as usize;
            let kind = u16::from_ne_bytes(rx[off + 4..off + 6].try_into().unwrap());
            if len < 16 || off + len > size {
                break;
            }
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = u32_at(off + 16) as i32;
                    if errno != 0 {
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                }
                SOCK_DIAG_BY_FAMILY if len >= 16 + 72 => {
                    each(&parse_inet_diag_msg(&rx[off + 16..off + len]))
                }
                _ => {}
            }
            off += (len + 3) & !3;
        }
    }
}

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const SOCK_DIAG_BY_FAMILY: u16 = 20;

/// `struct inet_diag_msg` (linux/inet_diag.h): family, state, timer, retrans, then
/// `inet_diag_sockid` { be16 sport, be16 dport, be32 src[4], be32 dst[4], u32 if,
/// u32 cookie[2] }, then u32 expires, rqueue, wqueue, uid, inode.
fn parse_inet_diag_msg(m: &[u8]) -> DiagSocket {
    let family = m[0];
    let be16 = |o: usize| u16::from_be_bytes([m[o], m[o + 1]]);
    let u32_at = |o: usize| u32::from_ne_bytes(m[o..o + 4].try_into().unwrap());
    let addr = |o: usize| -> IpAddr {
        if family == AF_INET {
            IpAddr::from([m[o], m[o + 1], m[o + 2], m[o + 3]])
        } else {
            let a: [u8; 16] = m[o..o + 16].try_into().unwrap();
            IpAddr::from(a)
        }
    };
    DiagSocket {
        // sock_diag_save_cookie: low 32 bits first, each in host order.
        cookie: u64::from(u32_at(44)) | (u64::from(u32_at(48)) << 32),
        state: m[1],
        saddr: addr(8),
        sport: be16(4),
        daddr: addr(24),
        dport: be16(6),
        // struct inet_diag_msg: idiag_expires follows the 48-byte id.
        expires_ms: u32_at(52),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    /// sock_diag needs no privileges to list sockets, so this runs in `cargo test`.
    #[test]
    fn finds_a_listener_and_its_connection() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let _c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let socks = dump_tcp((1 << 10) | (1 << 1)).unwrap();
        let listener = socks
            .iter()
            .find(|s| s.sport == port && s.state == 10)
            .expect("listener");
        assert_eq!(listener.saddr.to_string(), "127.0.0.1");
        assert_ne!(listener.cookie, 0);
        let est: Vec<_> = socks
            .iter()
            .filter(|s| s.state == 1 && (s.sport == port || s.dport == port))
            .collect();
        assert_eq!(est.len(), 2, "both ends: {est:?}");
        assert_ne!(est[0].cookie, est[1].cookie);
    }
}
