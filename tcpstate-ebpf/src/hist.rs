//! Time-in-state histograms, aggregated in the kernel (`hist`).

use tcpstate_common::{counter, hist_bucket, hist_spill_slot, HistKey, BY_NONE, HIST_BUCKETS};

use crate::{
    config::{add, cfg, count},
    diag,
    maps::{GEN, HIST, HIST_SPILL, HIST_ZERO},
};

/// Family and remote port in one argument (BPF functions take at most five).
#[inline(always)]
pub fn dest(family: u16, dport: u16) -> u32 {
    (u32::from(family) << 16) | u32::from(dport)
}

/// Adds `dur_ns` spent in `st` (a state, or `HIST_TW_REUSED`) to its histogram,
/// under the current generation. `dest`: see [`dest`]; `addr`: see
/// `tcpstate_common::hist_addr`.
#[inline(always)]
pub fn add_sample(st: u32, dur_ns: u64, pid: u32, dest: u32, addr: &[u8; 16]) {
    let a = u128::from_le_bytes(*addr);
    tcpstate_add_sample(
        u64::from(st) << 32 | u64::from(pid),
        dur_ns,
        dest,
        a as u64,
        (a >> 64) as u64,
    );
}

/// [`add_sample`]'s body as a global function (external linkage: BTF_FUNC_GLOBAL):
/// the verifier checks it once on its own, not again on every path of the
/// transition program that reaches a call (which made `hist`'s programs ~135k
/// processed instructions each). Five numbers: the state and pid in one, the
/// address in two.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tcpstate_add_sample(
    st_pid: u64,
    dur_ns: u64,
    dest: u32,
    lo: u64,
    hi: u64,
) -> i32 {
    let (st, pid) = ((st_pid >> 32) as u32, st_pid as u32);
    let addr = (u128::from(hi) << 64 | u128::from(lo)).to_le_bytes();
    add_sample_here(st, dur_ns, pid, dest, &addr);
    0
}

/// [`add_sample`] inlined, for the global functions that add a sample themselves:
/// a call from one to another adds both frames to the caller's stack, and 6.1's
/// verifier counts global functions' frames in the chain, which may not pass 512
/// bytes (`check_max_stack_depth()`: it counted 544).
#[inline(always)]
pub fn add_sample_here(st: u32, dur_ns: u64, pid: u32, dest: u32, addr: &[u8; 16]) {
    let c = cfg();
    let (family, dport) = ((dest >> 16) as u16, dest as u16);
    let gen = GEN.get(0).copied().unwrap_or(0);
    let key = HistKey::for_sample(c.hist_by, gen, st, pid, family, dport, addr);
    let slot = hist_spill_slot(gen, st);
    let spill = || {
        count(counter::HIST_SPILLED);
        diag::hist_spilled(st);
        HIST_SPILL.get_ptr_mut(slot)
    };
    // Without a --by key, (generation, state) indexes the array directly: no hash,
    // no insert, nothing to spill.
    let direct = if c.hist_by == BY_NONE {
        HIST_SPILL.get_ptr_mut(slot)
    } else {
        None
    };
    let h = match direct.or_else(|| HIST.get_ptr_mut(key)) {
        Some(h) => h,
        None => {
            let inserted = match HIST_ZERO.get(0) {
                Some(zero) => HIST.insert(key, zero, 0).is_ok(),
                None => false,
            };
            let found = if inserted {
                HIST.get_ptr_mut(key)
            } else {
                None
            };
            match found.or_else(spill) {
                Some(h) => h,
                None => return,
            }
        }
    };
    // SAFETY: this CPU's copy of a valid map value.
    let h = unsafe { &mut *h };
    add(&mut h.count, 1);
    add(&mut h.sum_ns, dur_ns);
    // A nested sample can race this compare; max is a bound, not a count.
    if dur_ns > h.max_ns {
        h.max_ns = dur_ns;
    }
    // black_box: keep the bound check on the index itself, where the verifier sees it.
    let b = core::hint::black_box(hist_bucket(dur_ns / 1000));
    if b < HIST_BUCKETS {
        add(&mut h.buckets[b], 1);
    }
}
