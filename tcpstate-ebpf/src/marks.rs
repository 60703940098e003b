//! The primary program's marks, with which the backup program tells the transitions
//! the primary ran for from those the kernel skipped it for (see `set_state`).
//!
//! Per CPU, a small stack. For each transition the kernel calls the primary, then
//! the backup (attach order, `__DO_TRACE`); another transition can fire in between
//! or inside either (a softirq on this CPU), always as a whole nested pair. The
//! primary pushes its transition's mark first thing; the backup finds the mark on
//! top if and only if the primary ran for its transition:
//! - nested inside the primary (which the kernel then skips for the nested
//!   transition: `__bpf_trace_run`'s recursion guard), the top is the outer one's
//!   mark (or an older one, if the primary had not pushed yet): no match, handled;
//! - between a primary and its backup, the nested pair pushes and pops its own mark
//!   on top of the outer one's;
//! - nested inside a backup, the nested backup is the one skipped: the outer
//!   backup drops, when it ends, every mark pushed above where it started.
//!
//! A mark carries the socket's address, both states and the cookie, never reused,
//! so a mark left behind (pushed in the few instructions after a backup's last one,
//! before the kernel's guard is released) can never match another socket's
//! transition; on overflow only the newest mark is kept.

use crate::maps::RECENT;

/// A power of two (indexes are masked with it).
const DEPTH: usize = 8;

#[repr(C)]
pub struct Recent {
    /// Marks, bottom first: the socket (its address), `old << 8 | new`, the cookie.
    socks: [u64; DEPTH],
    codes: [u64; DEPTH],
    cookies: [u64; DEPTH],
    /// How many marks the stack holds.
    top: u64,
}

/// A transition's identity while it is in flight: the socket (alive for the whole
/// tracepoint call), both states, and its cookie.
#[inline(always)]
pub fn states_code(old: i32, new: i32) -> u64 {
    ((old as u64 & 0xff) << 8) | (new as u64 & 0xff)
}

/// The primary runs for this transition: push its mark. (Storing and comparing the
/// socket pointer needs CAP_PERFMON, which tracing needs anyway.)
#[inline(always)]
pub fn mark(sk: *const u8, code: u64, cookie: u64) {
    if let Some(r) = RECENT.get_ptr_mut(0) {
        // SAFETY: per-CPU value; a backup nested here only reads the top and may
        // lower it to where it found it.
        let r = unsafe { &mut *r };
        let mut top = r.top as usize;
        if top >= DEPTH {
            // Marks left behind: keep the newest (it may be a pending one).
            r.socks[0] = r.socks[DEPTH - 1];
            r.codes[0] = r.codes[DEPTH - 1];
            r.cookies[0] = r.cookies[DEPTH - 1];
            top = 1;
        }
        let top = top & (DEPTH - 1);
        r.socks[top] = sk as u64;
        r.codes[top] = code;
        r.cookies[top] = cookie;
        r.top = top as u64 + 1;
    }
}

/// The backup's check: did the primary run for this transition? Pops its mark when
/// it did. Returns that, and the stack height to restore when this run ends (see
/// [`end_backup`]).
#[inline(always)]
pub fn take_mark(sk: *const u8, code: u64, cookie: u64) -> (bool, u64) {
    let Some(r) = RECENT.get_ptr_mut(0) else {
        return (false, 0);
    };
    // SAFETY: per-CPU value.
    let r = unsafe { &mut *r };
    let top = core::hint::black_box(r.top as usize);
    if top == 0 || top > DEPTH {
        return (false, top as u64);
    }
    // Masked (DEPTH is a power of two) so that no bounds check is left to call a
    // panic handler, which the verifier refuses.
    let i = (top - 1) & (DEPTH - 1);
    if r.socks[i] == sk as u64 && r.codes[i] == code && r.cookies[i] == cookie {
        r.top = i as u64;
        return (true, i as u64);
    }
    (false, top as u64)
}

/// A backup run ends: marks pushed above `level` came from primary runs nested in
/// it, whose own backup runs the kernel skipped (this one was active). Nothing will
/// pop them.
#[inline(always)]
pub fn end_backup(level: u64) {
    if let Some(r) = RECENT.get_ptr_mut(0) {
        // SAFETY: per-CPU value.
        let r = unsafe { &mut *r };
        if r.top > level {
            r.top = level;
        }
    }
}
