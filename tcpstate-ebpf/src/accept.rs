//! `syscalls/sys_exit_accept{,4}`: the owner of an accepted socket, whose first
//! transitions (LISTEN -> SYN_RECV -> ESTABLISHED) ran in softirq with no owner.

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_kernel},
    macros::tracepoint,
    programs::TracePointContext,
};
use tcpstate_common::{counter, state, SockState};

use crate::{
    config::{cfg, count, read},
    diag,
    maps::SOCKS,
    task::{current_owner, tcp_sock_of_file},
};

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    accept_exit(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    accept_exit(&ctx)
}

#[inline(always)]
fn accept_exit(ctx: &TracePointContext) -> u32 {
    if let Err(e) = try_accept_exit(ctx) {
        count(counter::ACCEPT_UNRESOLVED);
        diag::accept_unresolved(e);
    }
    0
}

/// accept() returned a new fd: the caller owns the socket behind it. Walks
/// `current->files->fdt->fd[ret]` to its socket, and records the owner under the
/// socket's cookie.
fn try_accept_exit(ctx: &TracePointContext) -> Result<(), i32> {
    // syscalls/sys_exit_*: common header (8 bytes), int __syscall_nr, long ret @16.
    let ret: i64 = unsafe { ctx.read_at(16)? };
    if ret < 0 {
        return Ok(());
    }
    let fd = ret as u32;
    let c = cfg();
    let task = unsafe { bpf_get_current_task() } as *const u8;
    unsafe {
        let files: *const u8 = read(task, c.task_files)?;
        let fdt: *const u8 = read(files, c.files_fdt)?;
        let max_fds: u32 = read(fdt, c.fdt_max_fds)?;
        if fd >= max_fds {
            return Err(-1);
        }
        let fd_array: *const *const u8 = read(fdt, c.fdt_fd)?;
        let file: *const u8 = bpf_probe_read_kernel(fd_array.add(fd as usize))?;
        // accept() returns socket fds only: no need to check the inode's mode.
        let Some(sk) = tcp_sock_of_file(c, file)? else {
            return Ok(());
        };
        // The set_state probe already asked for this socket's cookie
        // (sock_gen_cookie), so it is set unless the socket predates the probe.
        let cookie: u64 = read(sk, c.sk_cookie)?;
        let sk_state: u8 = read(sk, c.sk_state)?;
        if cookie == 0 || sk_state as i32 == state::CLOSE {
            return Err(-1);
        }
        let (pid, comm) = current_owner(c);
        match SOCKS.get_ptr_mut(cookie) {
            Some(p) => {
                (*p).pid = pid;
                (*p).comm = comm;
            }
            None => {
                let st = SockState {
                    since_ns: 0,
                    pid,
                    _pad: 0,
                    comm,
                };
                if SOCKS.insert(cookie, st, 0).is_err() {
                    count(counter::TABLE_FULL);
                    diag::table_full(cookie);
                }
            }
        }
    }
    Ok(())
}
