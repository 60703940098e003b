//! `iter/task_file`: which process holds which TCP socket under which fd, what the
//! kernel knows of each socket, and which connections wait unaccepted in the accept
//! queue of a listener the process holds.

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_jiffies64, bpf_seq_write};
use tcpstate_common::{state, Config, FdRecord, AF_INET6, FD_NONE, FD_TALLY, ITER_ACCEPT_QUEUE};

use crate::{
    config::{cfg, read},
    maps::TALLY,
    task::{for_each_queued, is_socket_file, tcp_sock_of_file},
};

/// RLIMIT_NOFILE's index in `signal_struct.rlim` (asm-generic/resource.h: every
/// architecture but alpha, mips, sparc).
const RLIMIT_NOFILE: u32 = 7;

/// One process's fds so far in this walk.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Tally {
    nofile: u64,
    tgid: u32,
    fds: u32,
    /// Socket records written for it: a tally is written only when > 0.
    held: u32,
    _pad: u32,
    comm: [u8; 16],
}

const TALLY_ZERO: Tally = Tally {
    nofile: 0,
    tgid: 0,
    fds: 0,
    held: 0,
    _pad: 0,
    comm: [0; 16],
};

/// The tally and the one before the last call: when the seq buffer overflows, the
/// kernel drops what the call wrote and shows the same object again with the same
/// `seq_num` (`bpf_seq_read()`), so that call's effect is undone first.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Tallies {
    session: u64,
    /// `seq_num << 1 | end` of the last call.
    last_seq: u64,
    cur: Tally,
    prev: Tally,
}

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
    // struct bpf_iter_meta { seq; session_id; seq_num; }
    let meta = unsafe { core::ptr::read_volatile(ctx) } as *const u64;
    let seq = unsafe { core::ptr::read_volatile(meta) } as *mut c_void;
    let session = unsafe { core::ptr::read_volatile(meta.add(1)) };
    let seq_num = unsafe { core::ptr::read_volatile(meta.add(2)) };
    let Some(t) = TALLY.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: the map's one value; one walk at a time (see TALLY).
    let t = unsafe { &mut *t };
    if t.session != session {
        t.session = session;
        t.last_seq = u64::MAX;
        t.cur = TALLY_ZERO;
    }
    // The call at the end (`task_file_seq_stop()`: no task, no file) has the last
    // object's seq_num: told apart by the low bit.
    let end = task.is_null() || file.is_null();
    let key = seq_num << 1 | end as u64;
    if t.last_seq == key {
        t.cur = t.prev;
    } else {
        t.prev = t.cur;
        t.last_seq = key;
    }
    if end {
        tally_out(seq, &mut t.cur);
        return 0;
    }
    let c = cfg();
    let Ok(tgid) = (unsafe { read::<u32>(task, c.task_tgid) }) else {
        return 0;
    };
    if tgid != t.cur.tgid {
        tally_out(seq, &mut t.cur);
        t.cur = TALLY_ZERO;
        t.cur.tgid = tgid;
    }
    t.cur.fds += 1;
    let fd = unsafe { core::ptr::read_volatile(ctx.add(2) as *const u32) };
    // The process's name once it is known: one read per process, not per socket.
    let known = if t.cur.held != 0 {
        Some(t.cur.comm)
    } else {
        None
    };
    if let Ok(Some(comm)) = socket_fd(seq, task, file, fd, tgid, known) {
        if t.cur.held == 0 {
            t.cur.comm = comm;
            t.cur.nofile = nofile(c, task).unwrap_or(0);
        }
        t.cur.held += 1;
    }
    0
}

/// Writes the finished process's tally, if it held a socket the walk reported.
#[inline(always)]
fn tally_out(seq: *mut c_void, t: &mut Tally) {
    if t.held == 0 {
        return;
    }
    let rec = FdRecord {
        pid: t.tgid,
        fd: FD_TALLY,
        comm: t.comm,
        open_fds: t.fds,
        nofile: t.nofile,
        ..FdRecord::EMPTY
    };
    write(seq, &rec);
    t.held = 0;
}

/// The soft RLIMIT_NOFILE (`task->signal->rlim[RLIMIT_NOFILE].rlim_cur`).
#[inline(always)]
fn nofile(c: &Config, task: *const u8) -> Result<u64, i32> {
    if c.task_signal == 0 {
        return Ok(0);
    }
    let signal: *const u8 = unsafe { read(task, c.task_signal)? };
    unsafe { read(signal, c.signal_rlim + RLIMIT_NOFILE * 16) }
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

/// The holder's comm when a record was written for this fd.
#[inline(always)]
fn socket_fd(
    seq: *mut c_void,
    task: *const u8,
    file: *const u8,
    fd: u32,
    tgid: u32,
    comm: Option<[u8; 16]>,
) -> Result<Option<[u8; 16]>, i32> {
    let c = cfg();
    if !is_socket_file(c, file)? {
        return Ok(None);
    }
    let Some(sk) = tcp_sock_of_file(c, file)? else {
        return Ok(None);
    };
    let st: u8 = unsafe { read(sk, c.sk_state)? };
    let own = kept(c, st);
    let queue = st as i32 == state::LISTEN && c.iter_flags & ITER_ACCEPT_QUEUE != 0;
    if !own && !queue {
        return Ok(None);
    }
    let mut rec = FdRecord {
        pid: tgid,
        fd,
        state: st,
        ..FdRecord::EMPTY
    };
    rec.comm = match comm {
        Some(comm) => comm,
        None => {
            let leader: *const u8 = unsafe { read(task, c.task_group_leader)? };
            unsafe { read(leader, c.task_comm)? }
        }
    };
    let mut wrote = false;
    if own {
        describe(sk, &mut rec)?;
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
            wrote = true;
        }
    }
    if queue && accept_queue(c, sk, fd, seq, &mut rec)? {
        wrote = true;
    }
    Ok(if wrote { Some(rec.comm) } else { None })
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
) -> Result<bool, i32> {
    let backlog: u32 = unsafe { read(lsk, c.sk_ack_backlog)? };
    if backlog == 0 {
        return Ok(false);
    }
    rec.ack_backlog = backlog;
    rec.max_ack_backlog = unsafe { read(lsk, c.sk_max_ack_backlog)? };
    rec.listener_fd = lfd;
    rec.fd = FD_NONE;
    rec.queued = 1;
    let mut wrote = false;
    for_each_queued(c, lsk, |child| {
        let st: u8 = unsafe { read(child, c.sk_state)? };
        if kept(c, st) {
            rec.state = st;
            describe(child, rec)?;
            write(seq, rec);
            wrote = true;
        }
        Ok(())
    })?;
    Ok(wrote)
}

/// The socket's identity, addresses and what `linger` diagnoses from.
#[inline(always)]
fn describe(sk: *const u8, rec: &mut FdRecord) -> Result<(), i32> {
    match tcpstate_describe(sk as u64, rec) {
        0 => Ok(()),
        e => Err(e),
    }
}

/// [`describe`]'s body as a global function (external linkage: BTF_FUNC_GLOBAL), which
/// the verifier checks once on its own (`btf_check_subprog_call()`) instead of on
/// every path to each call: a listener's 64 queue iterations made the walk 212k
/// processed instructions (331 ms of linger's startup), now 41k. Its arguments are
/// a plain number (the socket, read with checked reads) and a pointer the verifier
/// lets be NULL.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tcpstate_describe(sk: u64, rec: *mut FdRecord) -> i32 {
    if rec.is_null() {
        return -1;
    }
    // SAFETY: the caller's record.
    match describe_sk(cfg(), sk as *const u8, unsafe { &mut *rec }) {
        Ok(()) => 0,
        Err(e) => e,
    }
}

#[inline(always)]
fn describe_sk(c: &Config, sk: *const u8, rec: &mut FdRecord) -> Result<(), i32> {
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
        if !net.is_null() && c.net_port_range != 0 {
            rec.port_range = if c.port_range_packed != 0 {
                read(net, c.net_port_range)?
            } else {
                let r: [u32; 2] = read(net, c.net_port_range)?;
                r[0] & 0xffff | r[1] << 16
            };
        }
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
