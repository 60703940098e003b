//! Owners of the sockets that predate tcpstate, written into their `SOCKS` records at
//! startup, so their transitions name the process that holds them (as the kernel's
//! selftest `bpf_iter_bpf_sk_storage_helpers.c` does). Records the probe already
//! made win. Connections waiting in a held listener's accept queue have no fd: they
//! get the listener's holder (`OWNER_LISTENER`); their socket pointers come from
//! checked reads, which `bpf_sk_storage_get` refuses, so they always go through
//! `SEED_OWNERS` and [`seed_adopt`] (see `tcpstate-user/src/probe/seed.rs`).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_seq_write,
        generated::{bpf_skc_to_tcp_sock, bpf_sock_from_file},
    },
};
use tcpstate_common::{
    counter, state, Config, SeedOwner, SeedRecord, AF_INET, AF_INET6, IPPROTO_TCP, OWNER_LISTENER,
    OWNER_SOCKET, SEED_DIRECT, SEED_INDEXED,
};

use crate::{
    config::{cfg, count, load, read},
    maps::{sock_rec, SEED_OWNERS},
    task::{for_each_queued, is_socket_file, tcp_sock_of_file},
};

/// `iter/task_file`, called for every open file of every process (once per fd
/// table): each TCP socket gets its record from the socket behind the file. Writes a
/// [`SeedRecord`] per socket seeded or indexed, so that a read always makes progress
/// (`bpf_seq_read` gives up after 1M objects without output) and userspace counts.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub fn seed_owners(ctx: *mut c_void) -> i32 {
    // struct bpf_iter__task_file { meta; task; u32 fd; file; }: BTF-typed pointers.
    let ctx = ctx as *const u64;
    let task = unsafe { core::ptr::read_volatile(ctx.add(1)) } as *const u8;
    let file = unsafe { core::ptr::read_volatile(ctx.add(3)) } as *mut c_void;
    if task.is_null() || file.is_null() {
        return 0;
    }
    let fd = unsafe { core::ptr::read_volatile(ctx.add(2) as *const u32) };
    // The file's `struct socket`, or null if it is not a socket (sock_from_file).
    let sock = unsafe { bpf_sock_from_file(file.cast()) } as *const u8;
    if sock.is_null() {
        return 0;
    }
    let c = cfg();
    // Plain loads: the helper's result and what it points to are BTF-typed.
    let sk: *const u8 = unsafe { load(sock, c.socket_sk) };
    if sk.is_null() {
        return 0;
    }
    let protocol: u16 = unsafe { load(sk, c.sk_protocol) };
    let family: u16 = unsafe { load(sk, c.sk_family) };
    if protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) {
        return 0;
    }
    let meta = unsafe { core::ptr::read_volatile(ctx) } as *const u64;
    let seq = unsafe { core::ptr::read_volatile(meta) } as *mut c_void;
    let _ = seed_direct(c, seq, task, sk, fd);
    0
}

#[inline(always)]
fn seed_direct(
    c: &Config,
    seq: *mut c_void,
    task: *const u8,
    sk: *const u8,
    fd: u32,
) -> Result<(), i32> {
    let p = sock_rec(sk, true);
    if p.is_null() {
        count(counter::TABLE_FULL);
        return Ok(());
    }
    // SAFETY: this socket's own record.
    let st = unsafe { &mut *p };
    if st.pid != 0 {
        return Ok(()); // the probe (or an earlier fd of this walk) named it already
    }
    let (mut owner, mut rec) = owner_of(c, task, sk, fd)?;
    st.comm = owner.comm;
    st.pid = owner.pid;
    st.owner_from = OWNER_SOCKET;
    count(counter::SEEDED);
    rec.how = SEED_DIRECT;
    write(seq, &rec);
    index_queue(c, seq, sk, &mut owner, &mut rec)
}

/// The holder `task` as an owner, and the record that says where `sk` lives.
#[inline(always)]
fn owner_of(
    c: &Config,
    task: *const u8,
    sk: *const u8,
    fd: u32,
) -> Result<(SeedOwner, SeedRecord), i32> {
    let leader: *const u8 = unsafe { read(task, c.task_group_leader)? };
    let owner = SeedOwner {
        pid: unsafe { read(task, c.task_tgid)? },
        owner_from: OWNER_SOCKET,
        _pad: [0; 3],
        comm: unsafe { read(leader, c.task_comm)? },
    };
    let net: *const u8 = unsafe { read(sk, c.sk_net)? };
    let rec = SeedRecord {
        netns: if net.is_null() {
            0
        } else {
            unsafe { read(net, c.net_ns_inum)? }
        },
        pid: owner.pid,
        fd,
        how: SEED_INDEXED,
    };
    Ok((owner, rec))
}

/// A listener's queued connections, indexed under its holder (`OWNER_LISTENER`).
#[inline(always)]
fn index_queue(
    c: &Config,
    seq: *mut c_void,
    sk: *const u8,
    owner: &mut SeedOwner,
    rec: &mut SeedRecord,
) -> Result<(), i32> {
    let st: u8 = unsafe { read(sk, c.sk_state)? };
    if st as i32 != state::LISTEN {
        return Ok(());
    }
    owner.owner_from = OWNER_LISTENER;
    rec.how = SEED_INDEXED;
    for_each_queued(c, sk, |child| {
        index_one(seq, child, owner, rec);
        Ok(())
    })
}

#[inline(always)]
fn write(seq: *mut c_void, rec: &SeedRecord) {
    unsafe {
        bpf_seq_write(
            seq.cast(),
            (rec as *const SeedRecord).cast(),
            core::mem::size_of::<SeedRecord>() as u32,
        )
    };
}

/// `-EEXIST` from a map insert with `BPF_NOEXIST` (include/uapi/asm-generic/errno-base.h).
const EEXIST: i32 = 17;

/// Where the verifier refuses [`seed_owners`] (some 6.18 builds type the `sk` of the
/// `struct socket` that `bpf_sock_from_file` returns as untrusted, which
/// `bpf_sk_storage_get` rejects), the seed takes two steps. First this walk: every
/// TCP socket some process holds an fd for, and every connection in the accept queue
/// of a held listener, gets its owner in `SEED_OWNERS` under the socket's address (a
/// plain number), and a [`SeedRecord`] out: its namespace and the fd that leads there.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub fn seed_index(ctx: *mut c_void) -> i32 {
    let ctx = ctx as *const u64;
    let task = unsafe { core::ptr::read_volatile(ctx.add(1)) } as *const u8;
    let file = unsafe { core::ptr::read_volatile(ctx.add(3)) } as *const u8;
    if task.is_null() || file.is_null() {
        return 0;
    }
    let fd = unsafe { core::ptr::read_volatile(ctx.add(2) as *const u32) };
    let meta = unsafe { core::ptr::read_volatile(ctx) } as *const u64;
    let seq = unsafe { core::ptr::read_volatile(meta) } as *mut c_void;
    let _ = index_fd(seq, task, file, fd);
    0
}

#[inline(always)]
fn index_fd(seq: *mut c_void, task: *const u8, file: *const u8, fd: u32) -> Result<(), i32> {
    let c = cfg();
    if !is_socket_file(c, file)? {
        return Ok(());
    }
    let Some(sk) = tcp_sock_of_file(c, file)? else {
        return Ok(());
    };
    let (mut owner, mut rec) = owner_of(c, task, sk, fd)?;
    // The first fd of the walk names the socket, as in seed_owners.
    index_one(seq, sk, &owner, &rec);
    index_queue(c, seq, sk, &mut owner, &mut rec)
}

// Map keys and values by reference: by value they are copied onto the BPF stack.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn index_one(seq: *mut c_void, sk: *const u8, owner: &SeedOwner, rec: &SeedRecord) {
    match SEED_OWNERS.insert(&(sk as u64), owner, BPF_NOEXIST as u64) {
        Ok(()) => write(seq, rec),
        // Already indexed (another fd of the socket): nothing to do.
        Err(e) if e == -EEXIST => {}
        Err(_) => count(counter::TABLE_FULL),
    }
}

/// Second step, run once in each namespace that `seed_index` found (`iter/tcp`
/// lists the sockets of the namespace it was opened in, `bpf_iter_tcp` /
/// `bpf_iter_init_seq_net`): its socket pointer is trusted, so
/// `bpf_skc_to_tcp_sock` and `bpf_sk_storage_get` take it (as in the kernel's
/// selftest `bpf_iter_bpf_sk_storage_helpers.c`). Writes 8 bytes per socket seeded.
#[allow(clippy::needless_borrows_for_generic_args)]
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub fn seed_adopt(ctx: *mut c_void) -> i32 {
    // struct bpf_iter__tcp { meta; struct sock_common *sk_common; uid_t uid; }
    let ctx = ctx as *const u64;
    let skc = unsafe { core::ptr::read_volatile(ctx.add(1)) } as *mut c_void;
    if skc.is_null() {
        return 0;
    }
    let Some(owner) = (unsafe { SEED_OWNERS.get(&(skc as u64)) }).copied() else {
        return 0;
    };
    // NULL for timewait and request sockets (not full TCP sockets).
    let tp = unsafe { bpf_skc_to_tcp_sock(skc) } as *const u8;
    if tp.is_null() {
        return 0;
    }
    let p = sock_rec(tp, true);
    if p.is_null() {
        count(counter::TABLE_FULL);
        return 0;
    }
    // SAFETY: this socket's own record.
    let st = unsafe { &mut *p };
    if st.pid != 0 {
        return 0; // the probe named it already
    }
    st.comm = owner.comm;
    st.pid = owner.pid;
    st.owner_from = owner.owner_from;
    count(counter::SEEDED);
    let meta = unsafe { core::ptr::read_volatile(ctx) } as *const u64;
    let seq = unsafe { core::ptr::read_volatile(meta) } as *mut c_void;
    let one: u64 = 1;
    unsafe { bpf_seq_write(seq.cast(), (&one as *const u64).cast(), 8) };
    0
}
