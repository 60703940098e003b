//! Owners of the sockets that predate tcpstate, in the kernel before tcpstate says
//! "attached": every TCP socket some process holds an fd for, and every connection
//! waiting in the accept queue of a held listener (no fd: the listener's holder,
//! `OWNER_LISTENER`), gets its owner in `SEED_OWNERS` under its address; the
//! transition probe takes it into the socket's record at the socket's next
//! transition (`set_state`), so a socket that never changes state costs one hash
//! entry, not a record. A listener gets its record now, since every connection it
//! accepts later starts with a copy of it (`bpf_sk_storage_clone()`): directly from
//! the socket behind its file where the verifier allows it (`seed_owners`), else
//! from `iter/tcp` in its namespace (`seed_index`, then [`seed_adopt`]).
//! Records the probe already made win.

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
    OWNER_SOCKET, SEED_DIRECT, SEED_INDEXED, SEED_LISTENER,
};

use crate::{
    config::{cfg, count, load, read},
    maps::{sock_rec, SEED_OWNERS},
    task::{for_each_queued, is_socket_file, tcp_sock_of_file},
};

/// `iter/task_file`, called for every open file of every process (once per fd
/// table): a listener gets its record from the socket behind the file, every other
/// socket is indexed. Writes a [`SeedRecord`] per socket, so that a read always
/// makes progress (`bpf_seq_read` gives up after 1M objects without output) and
/// userspace counts.
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
    let (mut owner, mut rec) = owner_of(c, task, sk, fd)?;
    let st: u8 = unsafe { read(sk, c.sk_state)? };
    if st as i32 != state::LISTEN {
        index_one(seq, sk, &owner, &rec);
        return Ok(());
    }
    let p = sock_rec(sk, true);
    if p.is_null() {
        count(counter::TABLE_FULL);
        return Ok(());
    }
    // SAFETY: this socket's own record.
    let r = unsafe { &mut *p };
    if r.pid == 0 {
        r.comm = owner.comm;
        r.pid = owner.pid;
        r.owner_from = OWNER_SOCKET;
        count(counter::SEEDED);
        rec.how = SEED_DIRECT;
        write(seq, &rec);
    }
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
        cookie: unsafe { read(sk, c.sk_cookie)? },
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
    owner.owner_from = OWNER_LISTENER;
    rec.how = SEED_INDEXED;
    for_each_queued(c, sk, |child| {
        if tcpstate_index_queued(child as u64, owner) == 1 {
            write(seq, rec);
        }
        Ok(())
    })
}

/// A queued connection `child` indexed under `owner` (its cookie read here): 1 when
/// it was, so that the caller writes its record. A global function (external
/// linkage: BTF_FUNC_GLOBAL), checked once by the verifier on its own instead of in
/// each of the queue walk's 64 iterations.
#[allow(clippy::needless_borrows_for_generic_args)]
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tcpstate_index_queued(child: u64, owner: *const SeedOwner) -> i32 {
    if owner.is_null() {
        return 0;
    }
    // A copy on this function's stack: 6.1 takes no map value from a pointer
    // argument ("R3 type=mem expected=fp, pkt, pkt_meta, map_key, map_value").
    // SAFETY: the caller's owner.
    let mut own = unsafe { core::ptr::read_volatile(owner) };
    let c = cfg();
    let Ok(cookie) = (unsafe { read(child as *const u8, c.sk_cookie) }) else {
        return -1;
    };
    own.cookie = cookie;
    match SEED_OWNERS.insert(&child, &own, BPF_NOEXIST as u64) {
        Ok(()) => 1,
        Err(e) if e == -EEXIST => 0,
        Err(_) => {
            count(counter::TABLE_FULL);
            0
        }
    }
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
    let st: u8 = unsafe { read(sk, c.sk_state)? };
    if st as i32 == state::LISTEN {
        // Its record comes from seed_adopt, in its namespace.
        rec.how = SEED_LISTENER;
        index_one(seq, sk, &owner, &rec);
        return index_queue(c, seq, sk, &mut owner, &mut rec);
    }
    // The first fd of the walk names the socket, as in seed_owners.
    index_one(seq, sk, &owner, &rec);
    Ok(())
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

/// Second step, run once in each namespace where `seed_index` found a listener
/// (`iter/tcp` lists the sockets of the namespace it was opened in, `bpf_iter_tcp` /
/// `bpf_iter_init_seq_net`): its socket pointer is trusted, so
/// `bpf_skc_to_tcp_sock` and `bpf_sk_storage_get` take it (as in the kernel's
/// selftest `bpf_iter_bpf_sk_storage_helpers.c`). Writes 8 bytes per listener.
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
    // Only listeners: every other socket takes its owner at its next transition.
    let c = cfg();
    let st: u8 = unsafe { load(skc as *const u8, c.sk_state) };
    if st as i32 != state::LISTEN {
        return 0;
    }
    let key = skc as u64;
    let Some(owner) = (unsafe { SEED_OWNERS.get(&key) }).copied() else {
        return 0;
    };
    let _ = SEED_OWNERS.remove(&key);
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
