//! sock_diag (`NETLINK_SOCK_DIAG`, the interface `ss` uses): the TCP sockets that
//! existed before the probe saw them, with their cookies, so their history can be
//! seeded honestly (age as a lower bound) instead of being dropped.

use std::{io, net::IpAddr};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

/// One socket as sock_diag reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiagSocket {
    pub cookie: u64,
    pub state: u8,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// Milliseconds until the socket's timer fires (`idiag_expires`); for TIME_WAIT,
    /// until the timewait socket dies.
    pub expires_ms: u32,
}

/// Dumps IPv4 and IPv6 TCP sockets whose state bit is set in `states`
/// (`1 << state`, as `inet_diag` takes it).
pub fn dump_tcp(states: u32) -> io::Result<Vec<DiagSocket>> {
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        dump_family(family, states, &mut out)?;
    }
    Ok(out)
}

fn dump_family(family: u8, states: u32, out: &mut Vec<DiagSocket>) -> io::Result<()> {
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

    let mut rx = vec![0u8; 64 << 10];
    loop {
        let size = socket.recv(&mut &mut rx[..], 0)?;
        let mut off = 0;
        while off < size {
            let msg = NetlinkMessage::<SockDiagMessage>::deserialize(&rx[off..size])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = msg.header.length as usize;
            // struct inet_diag_msg after the 16-byte nlmsghdr: family, state, timer,
            // retrans (1 byte each), inet_diag_sockid (48), then u32 idiag_expires.
            let expires_ms = rx
                .get(off + 16 + 52..off + 16 + 56)
                .map_or(0, |b| u32::from_ne_bytes(b.try_into().unwrap()));
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let id = &r.header.socket_id;
                    out.push(DiagSocket {
                        // inet_diag stores the cookie as two host-order u32, low first
                        // (sock_diag_save_cookie).
                        cookie: u64::from(u32::from_ne_bytes(id.cookie[..4].try_into().unwrap()))
                            | u64::from(u32::from_ne_bytes(id.cookie[4..].try_into().unwrap()))
                                << 32,
                        state: r.header.state,
                        saddr: id.source_address,
                        sport: id.source_port,
                        daddr: id.destination_address,
                        dport: id.destination_port,
                        expires_ms,
                    });
                }
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(io::Error::other(format!("sock_diag dump failed: {e:?}")))
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
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
