//! The configuration userspace sets before load, the counters, and the two ways of
//! reading kernel memory (checked helper reads, plain BTF-checked loads).

use aya_ebpf::helpers::bpf_probe_read_kernel;
use tcpstate_common::Config;

use crate::maps::COUNTERS;

/// Filled in by userspace before load (`EbpfLoader::set_global`).
#[unsafe(no_mangle)]
static CONFIG: Config = Config::ZERO;

/// The configuration, read through memory: `black_box` keeps the compiler from folding
/// the zero initialiser (userspace rewrites it before load), and from copying the whole
/// struct onto the 512-byte BPF stack.
#[inline(always)]
pub fn cfg() -> &'static Config {
    // SAFETY: CONFIG is a valid, read-only static.
    unsafe { &*core::hint::black_box(core::ptr::addr_of!(CONFIG)) }
}

/// Adds one to counter `idx` (`tcpstate_common::counter`).
#[inline(always)]
pub fn count(idx: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        add(p, 1);
    }
}

/// Adds to a per-CPU value atomically: a softirq that interrupts this CPU between
/// the load and the store of a plain `+=` (both run the probe) would lose its own
/// increment, and loss counters must not undercount.
#[inline(always)]
pub fn add(p: *mut u64, v: u64) {
    // SAFETY: a valid, aligned map value. (BPF has no compare-and-swap, so core
    // offers no fetch_add; the intrinsic lowers to the BPF atomic add.)
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, v,
        )
    };
    #[cfg(not(target_arch = "bpf"))]
    let _ = (p, v);
}

/// Reads a `T` at `base + off` from kernel memory.
#[inline(always)]
pub unsafe fn read<T>(base: *const u8, off: u32) -> Result<T, i32> {
    unsafe { bpf_probe_read_kernel(base.add(off as usize).cast::<T>()) }
}

/// Reads a `T` at `base + off` of a BTF-typed pointer (the tracepoint's own `sk`)
/// with a plain load: the verifier knows `off` (CONFIG is frozen read-only data),
/// checks it against the struct's BTF and guards the load itself (BPF_PROBE_MEM),
/// so no helper call is needed.
#[inline(always)]
pub unsafe fn load<T: Copy>(base: *const u8, off: u32) -> T {
    unsafe { core::ptr::read_volatile(base.add(off as usize).cast::<T>()) }
}

/// An in6_addr, as four 32-bit loads (its `u6_addr32` view), assembled in a register
/// pair and stored whole (partial copies into a zeroed array become memset calls).
#[inline(always)]
pub fn load_in6(sk: *const u8, off: u32) -> [u8; 16] {
    let mut a: u128 = 0;
    let mut i = 0;
    while i < 4 {
        let w: u32 = unsafe { load(sk, off + 4 * i as u32) };
        a |= u128::from(w) << (32 * i);
        i += 1;
    }
    a.to_le_bytes()
}
