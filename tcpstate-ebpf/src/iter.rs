//! `iter/task_file`: which process holds which TCP socket under which fd.

use core::ffi::c_void;

use aya_ebpf::helpers::bpf_seq_write;
use tcpstate_common::FdRecord;

use crate::{
    config::{cfg, read},
    task::{is_socket_file, tcp_sock_of_file},
};

/// Called by the kernel for every open file of every process (one call per fd
/// table, not per thread; `task_file_seq_get_next`). Writes an [`FdRecord`] for each
/// fd that refers to a TCP socket, so userspace learns every socket's holders
/// (inherited over fork, passed over unix sockets, or predating the tool) in one
/// read, without a /proc walk.
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
    let Some(rec) = socket_fd(task, file, fd) else {
        return 0;
    };
    let meta = unsafe { core::ptr::read_volatile(ctx) } as *const u64;
    let seq = unsafe { core::ptr::read_volatile(meta) } as *mut c_void;
    unsafe {
        bpf_seq_write(
            seq.cast(),
            (&rec as *const FdRecord).cast(),
            core::mem::size_of::<FdRecord>() as u32,
        )
    };
    0
}

#[inline(always)]
fn socket_fd(task: *const u8, file: *const u8, fd: u32) -> Option<FdRecord> {
    let c = cfg();
    if !is_socket_file(c, file).ok()? {
        return None;
    }
    let sk = tcp_sock_of_file(c, file).ok()??;
    unsafe {
        let cookie: u64 = read(sk, c.sk_cookie).ok()?;
        let pid: u32 = read(task, c.task_tgid).ok()?;
        let leader: *const u8 = read(task, c.task_group_leader).ok()?;
        let comm: [u8; 16] = read(leader, c.task_comm).ok()?;
        let state: u8 = read(sk, c.sk_state).ok()?;
        Some(FdRecord {
            cookie,
            pid,
            fd,
            comm,
            state,
            _pad: [0; 7],
        })
    }
}
