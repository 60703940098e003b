//! `iter/task_file` at startup: gives every existing TCP socket that some process
//! holds an fd for a `SOCKS` record naming that process, so the transitions of
//! sockets that predate tcpstate name their owner (as the kernel's selftest
//! `bpf_iter_bpf_sk_storage_helpers.c` does). Records the probe already made win.

use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_seq_write, generated::bpf_sock_from_file};
use tcpstate_common::{counter, AF_INET, AF_INET6, IPPROTO_TCP, OWNER_SOCKET};

use crate::{
    config::{cfg, count, load},
    maps::sock_rec,
};

/// Called for every open file of every process (once per fd table). Writes the
/// cookie of each socket it seeds (8 bytes), so that a read always makes progress
/// (`bpf_seq_read` gives up after 1M objects without output) and userspace can count.
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
    let p = sock_rec(sk, true);
    if p.is_null() {
        count(counter::TABLE_FULL);
        return 0;
    }
    // SAFETY: this socket's own record.
    let st = unsafe { &mut *p };
    if st.pid != 0 {
        return 0; // the probe (or an earlier fd of this walk) named it already
    }
    let pid: u32 = unsafe { load(task, c.task_tgid) };
    let leader: *const u8 = unsafe { load(task, c.task_group_leader) };
    let lo: u64 = unsafe { load(leader, c.task_comm) };
    let hi: u64 = unsafe { load(leader, c.task_comm + 8) };
    st.comm[..8].copy_from_slice(&lo.to_ne_bytes());
    st.comm[8..].copy_from_slice(&hi.to_ne_bytes());
    st.pid = pid;
    st.owner_from = OWNER_SOCKET;
    count(counter::SEEDED);
    let cookie: u64 = unsafe { load(sk, c.sk_cookie) };
    let meta = unsafe { core::ptr::read_volatile(ctx) } as *const u64;
    let seq = unsafe { core::ptr::read_volatile(meta) } as *mut c_void;
    unsafe { bpf_seq_write(seq.cast(), (&cookie as *const u64).cast(), 8) };
    0
}
