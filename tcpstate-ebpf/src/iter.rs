//! `iter/task_file`: which process holds which TCP socket under which fd, what the
//! kernel knows of each socket, and which connections wait unaccepted in the accept
//! queue of a listener the process holds.

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_jiffies64, bpf_seq_write};
use tcpstate_common::{state, Config, FdRecord, AF_INET6, FD_NONE, ITER_ACCEPT_QUEUE};

use crate::{
    config::{cfg, read},
    task::{for_each_queued, is_socket_file, tcp_sock_of_file},
};

/// Called by the kernel for every open file of every process (one call per fd
/// table, not per thread; `task_file_seq_get_next`), whatever its network namespace.
/// Writes an [`FdRecord`] for each fd that refers to a TCP socket in a kept state
/// (`Config::iter_states`; all when 0), so userspace learns every socket's holders
/// (inherited over fork, passed over unix sockets, or predating the tool) in one
/// read, without a /proc walk; deciding here keeps a host's other sockets out of
/// userspace entirely.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub fn task_sockets(ctx: *mut c_void) -> i32 {
    // struct bpf_iter__task_file { meta; task; u32 fd; file; }, read directly: the
    // verifier types these loads, and bpf_seq_write needs the typed seq pointer.
    let ctx = ctx as *const u64;
    let task = unsafe { core::ptr::read_volatile(ctx.add(1)) } as *const u8;
    let file = unsafe { core::ptr::read_volatile(ctx.add(3)) } as *const u8;
    if task.is_null() || file.is_null() {
        return 0;
    }
    let fd = unsafe { core::ptr::read_volatile(ctx.add(2) as *const u32) };
    let meta = unsafe { core::ptr::read_volatile(ctx) } as *const u64;
    let seq = unsafe { core::ptr::read_volatile(meta) } as *mut c_void;
    let _ = socket_fd(seq, task, file, fd);
    0
}

#[inline(always)]
fn write(seq: *mut c_void, rec: &FdRecord) {
    unsafe {
        bpf_seq_write(
            seq.cast(),
            (rec as *const FdRecord).cast(),
            core::mem::size_of::<FdRecord>() as u32,
        )
    };
}

#[inline(always)]
fn kept(c: &Config, st: u8) -> bool {
    c.iter_states == 0 || (st < 32 && c.iter_states & (1 << st) != 0)
}

#[inline(always)]
fn socket_fd(seq: *mut c_void, task: *const u8, file: *const u8, fd: u32) -> Result<(), i32> {
    let c = cfg();
    if !is_socket_file(c, file)? {
        return Ok(());
    }
    let Some(sk) = tcp_sock_of_file(c, file)? else {
        return Ok(());
    };
    let st: u8 = unsafe { read(sk, c.sk_state)? };
    let own = kept(c, st);
    let queue = st as i32 == state::LISTEN && c.iter_flags & ITER_ACCEPT_QUEUE != 0;
    if !own && !queue {
        return Ok(());
    }
    let mut rec = FdRecord {
        pid: unsafe { read(task, c.task_tgid)? },
        fd,
        state: st,
        ..FdRecord::EMPTY
    };
    let leader: *const u8 = unsafe { read(task, c.task_group_leader)? };
    rec.comm = unsafe { read(leader, c.task_comm)? };
    if own {
        describe(c, sk, &mut rec)?;
        if st as i32 == state::LISTEN {
            // The listener's own queue and drops (`doctor`'s listen_queue).
            unsafe {
                rec.ack_backlog = read(sk, c.sk_ack_backlog)?;
                rec.max_ack_backlog = read(sk, c.sk_max_ack_backlog)?;
                if c.sk_drops != 0 {
                    rec.sk_drops = read(sk, c.sk_drops)?;
                }
            }
        }
        // A CLOSE socket that never connected (remote port 0) is no dead connection,
        // just a socket not used yet.
        if !(c.iter_states != 0 && st as i32 == state::CLOSE && rec.dport == 0) {
            write(seq, &rec);
        }
    }
    if queue {
        accept_queue(c, sk, fd, seq, &mut rec)?;
    }
    Ok(())
}

/// The unaccepted connections of a held listener (see `for_each_queued`), each
/// written with the listener's holder and fd. Walked from the listener itself
/// rather than matched by (netns, address, port) afterwards: under SO_REUSEPORT each
/// listener has its own queue, so this is exact.
#[inline(always)]
fn accept_queue(
    c: &Config,
    lsk: *const u8,
    lfd: u32,
    seq: *mut c_void,
    rec: &mut FdRecord,
) -> Result<(), i32> {
    let backlog: u32 = unsafe { read(lsk, c.sk_ack_backlog)? };
    if backlog == 0 {
        return Ok(());
    }
    rec.ack_backlog = backlog;
    rec.max_ack_backlog = unsafe { read(lsk, c.sk_max_ack_backlog)? };
    rec.listener_fd = lfd;
    rec.fd = FD_NONE;
    rec.queued = 1;
    for_each_queued(c, lsk, |child| {
        let st: u8 = unsafe { read(child, c.sk_state)? };
        if kept(c, st) {
            rec.state = st;
            describe(c, child, rec)?;
            write(seq, rec);
        }
        Ok(())
    })
}

/// The socket's identity, addresses and what `linger` diagnoses from.
#[inline(always)]
fn describe(c: &Config, sk: *const u8, rec: &mut FdRecord) -> Result<(), i32> {
    unsafe {
        rec.cookie = read(sk, c.sk_cookie)?;
        // The cookie is made on first use (`sock_gen_cookie()`); a socket nobody asked
        // yet (reset before any sock_diag dump, or in another namespace) has 0. Its
        // address stands in: unique among live sockets, stable across walks, and
        // never a real cookie (those count up from 1).
        if rec.cookie == 0 {
            rec.cookie = sk as u64;
        }
        rec.family = read(sk, c.sk_family)?;
        // Word stores, not byte copies: no memset loop for the verifier to walk.
        let (s, d): ([u32; 4], [u32; 4]) = if rec.family == AF_INET6 {
            (read(sk, c.sk_v6_rcv_saddr)?, read(sk, c.sk_v6_daddr)?)
        } else {
            (
                [read(sk, c.sk_rcv_saddr)?, 0, 0, 0],
                [read(sk, c.sk_daddr)?, 0, 0, 0],
            )
        };
        core::ptr::write_unaligned(rec.saddr.as_mut_ptr().cast::<[u32; 4]>(), s);
        core::ptr::write_unaligned(rec.daddr.as_mut_ptr().cast::<[u32; 4]>(), d);
        rec.sport = u16::from_be(read::<u16>(sk, c.inet_sport)?);
        rec.dport = u16::from_be(read::<u16>(sk, c.sk_dport)?);
        let net: *const u8 = read(sk, c.sk_net)?;
        rec.netns = if net.is_null() {
            0
        } else {
            read(net, c.net_ns_inum)?
        };
        rec.now_jiffies = bpf_jiffies64() as u32;
        rec.rcv_tstamp = read(sk, c.tcp_rcv_tstamp)?;
        rec.lsndtime = read(sk, c.tcp_lsndtime)?;
        rec.lrcvtime = read(sk, c.icsk_lrcvtime)?;
        rec.rcv_nxt = read(sk, c.tcp_rcv_nxt)?;
        rec.copied_seq = read(sk, c.tcp_copied_seq)?;
        rec.sk_err = read(sk, c.sk_err)?;
        // Low words of unsigned long / long (little-endian): the flags are bits 0-30
        // and a linger time of 0 is what matters.
        rec.sk_flags = read(sk, c.sk_flags)?;
        rec.lingertime = read(sk, c.sk_lingertime)?;
        rec.keepalive_time = read(sk, c.tcp_keepalive_time)?;
    }
    Ok(())
}
