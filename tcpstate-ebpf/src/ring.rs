//! The ring buffer to userspace: one [`Event`] per transition, with batched wake-ups.

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use tcpstate_common::{counter, Event};

use crate::{
    config::{cfg, count},
    maps::EVENTS,
};

/// Sends `ev`, or counts it lost when the ring buffer is full.
#[inline(always)]
pub fn emit(ev: &Event) {
    tcpstate_emit(ev);
}

/// [`emit`]'s body as a global function (external linkage: BTF_FUNC_GLOBAL), checked
/// once by the verifier on its own (see `hist::tcpstate_add_sample`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tcpstate_emit(ev: *const Event) -> i32 {
    if ev.is_null() {
        return 0;
    }
    // SAFETY: the caller's event.
    let ev = unsafe { &*ev };
    let c = cfg();
    // Wake the reader only when the backlog crosses the threshold; userspace drains on
    // a short timer otherwise, so a busy host costs one wake-up per batch, not per event.
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA.into());
    let size = core::mem::size_of::<Event>() as u64;
    let wake = if avail < c.wakeup_bytes && avail + size >= c.wakeup_bytes {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(*ev);
            entry.submit(wake.into());
            if c.skip & tcpstate_common::skip::COUNTERS == 0 {
                count(counter::EMITTED);
            }
        }
        None => count(counter::RINGBUF_FULL),
    }
    0
}
