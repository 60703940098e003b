//! Reads from tasks and their files, shared by the programs that learn owners: the
//! current task as an owner, and the file -> socket walk (`iter`).

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, generated::bpf_get_current_task_btf};
use tcpstate_common::{Config, AF_INET, AF_INET6, IPPROTO_TCP, ITER_QUEUE_MAX};

use crate::config::{load, read};

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

/// The current task's thread-group leader: a plain load from the BTF-typed current
/// task (`bpf_get_current_task_btf`), no helper read.
#[inline(always)]
pub fn current_leader(c: &Config) -> *const u8 {
    let task = unsafe { bpf_get_current_task_btf() } as *const u8;
    unsafe { load(task, c.task_group_leader) }
}

/// The current process (tgid) and its thread-group leader's comm (`leader`, from
/// [`current_leader`]), as `ss -p` names it.
#[inline(always)]
pub fn current_owner(c: &Config, leader: *const u8) -> (u32, [u8; 16]) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == 0 {
        // The idle task is never an owner.
        return (0, [0; 16]);
    }
    let lo: u64 = unsafe { load(leader, c.task_comm) };
    let hi: u64 = unsafe { load(leader, c.task_comm + 8) };
    let mut comm = [0u8; 16];
    comm[..8].copy_from_slice(&lo.to_ne_bytes());
    comm[8..].copy_from_slice(&hi.to_ne_bytes());
    (tgid, comm)
}

/// Whether an open file is a socket (`S_ISSOCK(file->f_inode->i_mode)`): only then
/// is its `private_data` a `struct socket` (`sock_alloc_file`).
#[inline(always)]
pub fn is_socket_file(c: &Config, file: *const u8) -> Result<bool, i32> {
    let inode: *const u8 = unsafe { read(file, c.file_inode)? };
    let mode: u16 = unsafe { read(inode, c.inode_mode)? };
    Ok(mode & S_IFMT == S_IFSOCK)
}

/// The `struct sock` behind a socket file (`file->private_data->sk`), if it is a TCP
/// socket of family AF_INET or AF_INET6. `Err` when a read fails or the socket has
/// no `sk` (being torn down).
#[inline(always)]
pub fn tcp_sock_of_file(c: &Config, file: *const u8) -> Result<Option<*const u8>, i32> {
    unsafe {
        let sock: *const u8 = read(file, c.file_private_data)?;
        let sk: *const u8 = read(sock, c.socket_sk)?;
        if sk.is_null() {
            return Err(-1);
        }
        let protocol: u16 = read(sk, c.sk_protocol)?;
        let family: u16 = read(sk, c.sk_family)?;
        if protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) {
            return Ok(None);
        }
        Ok(Some(sk))
    }
}

/// Calls `each` with every connection waiting in a listener's accept queue (at most
/// [`ITER_QUEUE_MAX`]): connections that completed the handshake but nobody accepted,
/// the listener's `icsk_accept_queue`, `rskq_accept_head` linked by `dl_next`, each
/// request's `sk` the child (`inet_csk_reqsk_queue_add`). They have no `struct
/// socket` and no fd, so the only process to blame is the listener's holder. Read
/// without the queue lock (checked reads; a racing accept() can at worst end the walk
/// early). An open-coded loop: the verifier walks each iteration (see ITER_QUEUE_MAX).
#[inline(always)]
pub fn for_each_queued(
    c: &Config,
    lsk: *const u8,
    mut each: impl FnMut(*const u8) -> Result<(), i32>,
) -> Result<(), i32> {
    let mut req: *const u8 = unsafe { read(lsk, c.icsk_accept_head)? };
    let mut i = 0;
    while i < ITER_QUEUE_MAX {
        if req.is_null() {
            break;
        }
        let child: *const u8 = unsafe { read(req, c.req_sk)? };
        req = unsafe { read(req, c.req_dl_next)? };
        if !child.is_null() {
            each(child)?;
        }
        i += 1;
    }
    Ok(())
}
