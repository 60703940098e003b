//! tcpstate's kernel probe (runs in the kernel; built for `bpfel-unknown-none`).
//!
//! `inet_sock_set_state` (a BTF tracepoint) sees every TCP state change, keeps a small
//! record in each socket's local storage (time of the last change, owner; cloned from
//! the listener into each accepted socket, so its owner is known before accept()),
//! and sends one compact `Event` per change through a ring buffer. No syscall hook.
//!
//! Why a BTF tracepoint: a classic tracepoint program is skipped whenever any BPF
//! program already runs on the CPU (`trace_call_bpf` checks `bpf_prog_active`), which
//! loses events under churn; `__bpf_trace_run` only skips nested runs of the same
//! program, and counts them in the program's `recursion_misses`, which userspace reports.
//!
//! One module per program (`set_state`, `timewait`, `iter`, `seed`), and the parts
//! they share: `maps`, `config` (settings, counters, reads), `marks` (primary/backup
//! hand-off), `task` (owners, file -> socket), `hist`, `ring`. The pure rules (filters,
//! histogram keys) live in `tcpstate_common`, shared with userspace.
// Built for real only for bpfel-unknown-none; on the host (`cargo clippy --workspace`)
// it is an ordinary, empty binary so that the whole workspace checks.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic adds (see `config::add`); the BPF build runs with RUSTC_BOOTSTRAP.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

mod config;
mod diag;
mod hist;
mod iter;
mod maps;
mod marks;
mod ring;
mod seed;
mod set_state;
mod task;
mod timewait;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
