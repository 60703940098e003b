//! Calibration probe for the benchmark (runs in the kernel; a separate object,
//! `calib`, never loaded by tcpstate): the cheapest possible programs on tcpstate's
//! tracepoint, `tp_btf/inet_sock_set_state`, so a benchmark can tell the kernel's
//! fixed cost of running any BPF program there from what tcpstate's own programs
//! add. `calib_empty` returns at once; `calib_count` adds one to a per-CPU counter
//! (`CALIB_COUNT`, one u64), the least work that is still observable.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

use aya_ebpf::{
    macros::{btf_tracepoint, map},
    maps::PerCpuArray,
    programs::BtfTracePointContext,
};

/// Runs of `calib_count` (index 0), per CPU.
#[map(name = "CALIB_COUNT")]
static CALIB_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn calib_empty(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn calib_count(_ctx: BtfTracePointContext) -> i32 {
    if let Some(p) = CALIB_COUNT.get_ptr_mut(0) {
        // An atomic add, as tcpstate's own counters (a nested run on this CPU of
        // another program could interleave with a plain `+=`).
        #[cfg(target_arch = "bpf")]
        // SAFETY: a valid, aligned map value.
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                p, 1,
            )
        };
        #[cfg(not(target_arch = "bpf"))]
        let _ = p;
    }
    0
}

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
