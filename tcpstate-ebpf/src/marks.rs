//! The primary program's marks, with which the backup program tells the transitions
//! the primary ran for from those the kernel skipped it for (see `set_state`).
//!
//! Per CPU, the transitions the primary program has run for and the backup has not
//! yet looked at. At most the nesting depth (task, softirq) is in flight. A mark whose
//! backup was skipped (it nested inside a backup run) is cleared when that outer
//! backup run ends, unless it nested in the few instructions around the run; marks
//! carry the socket cookie, so such a leftover can never match a later socket at the
//! same address (slab reuse) and lose its transition.

use aya_ebpf::helpers::bpf_jiffies64;

use crate::maps::RECENT;

const RECENT_SLOTS: usize = 8;
/// Fallback for marks nothing consumes or clears (transitions between attaching
/// the primary and the backup): their slots are reused after 20 jiffies (>= 20 ms).
const MARK_STALE_JIFFIES: u64 = 20;

#[repr(C)]
pub struct Recent {
    /// The socket (its address; 0 = free slot) and the transition's `old << 8 | new`.
    socks: [u64; RECENT_SLOTS],
    states: [u64; RECENT_SLOTS],
    cookies: [u64; RECENT_SLOTS],
    /// When (jiffies) and in which order (`seq`) each mark was made.
    at: [u64; RECENT_SLOTS],
    seqs: [u64; RECENT_SLOTS],
    seq: u64,
    next: u64,
}

/// A transition's identity while it is in flight: the socket (alive for the whole
/// tracepoint call), both states, and for the transitions the probe handles, the
/// socket's cookie. Every transition is marked, handled or not.
#[inline(always)]
pub fn states_code(old: i32, new: i32) -> u64 {
    ((old as u64 & 0xff) << 8) | (new as u64 & 0xff)
}

/// The primary runs for this transition: leave a mark for the backup in a free or
/// stale slot. (Storing and comparing the socket pointer needs CAP_PERFMON, which
/// tracing needs anyway; the verifier allows no arithmetic on it.)
#[inline(always)]
pub fn mark(sk: *const u8, code: u64, cookie: u64) {
    if let Some(r) = RECENT.get_ptr_mut(0) {
        // SAFETY: per-CPU value; a nested run on this CPU only adds its own mark.
        let r = unsafe { &mut *r };
        let now = unsafe { bpf_jiffies64() };
        let mut slot = RECENT_SLOTS;
        let mut i = 0;
        while i < RECENT_SLOTS {
            if r.socks[i] == 0 || now.wrapping_sub(r.at[i]) > MARK_STALE_JIFFIES {
                slot = i;
                break;
            }
            i += 1;
        }
        if slot == RECENT_SLOTS {
            slot = (r.next as usize) % RECENT_SLOTS;
            r.next = r.next.wrapping_add(1);
        }
        r.seq = r.seq.wrapping_add(1);
        let slot = core::hint::black_box(slot);
        if slot < RECENT_SLOTS {
            r.socks[slot] = sk as u64;
            r.states[slot] = code;
            r.cookies[slot] = cookie;
            r.at[slot] = now;
            r.seqs[slot] = r.seq;
        }
    }
}

/// The backup's check: did the primary run for this transition? Consumes the mark.
#[inline(always)]
pub fn take_mark(sk: *const u8, code: u64, cookie: u64) -> bool {
    if let Some(r) = RECENT.get_ptr_mut(0) {
        // SAFETY: per-CPU value.
        let r = unsafe { &mut *r };
        let mut i = 0;
        while i < RECENT_SLOTS {
            if r.socks[i] == sk as u64 && r.states[i] == code && r.cookies[i] == cookie {
                r.socks[i] = 0;
                return true;
            }
            i += 1;
        }
    }
    false
}

/// The mark sequence number now (taken when a backup run starts).
#[inline(always)]
pub fn mark_seq() -> u64 {
    RECENT.get(0).map_or(0, |r| r.seq)
}

/// A backup run ends: marks made since it started were made by primary runs nested
/// in it, whose own backup runs the kernel skipped (this one was active). Nothing
/// will consume them.
#[inline(always)]
pub fn clear_marks_after(seq: u64) {
    if let Some(r) = RECENT.get_ptr_mut(0) {
        // SAFETY: per-CPU value.
        let r = unsafe { &mut *r };
        let mut i = 0;
        while i < RECENT_SLOTS {
            if r.socks[i] != 0 && r.seqs[i].wrapping_sub(seq) as i64 > 0 {
                r.socks[i] = 0;
            }
            i += 1;
        }
    }
}
