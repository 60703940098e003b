//! TIME_WAIT lifetimes (`hist`): the tracepoint never shows TIME_WAIT (the kernel
//! hands the connection over to an `inet_timewait_sock` in `tcp_time_wait()`), so the
//! hand-over is recorded here by 4-tuple, and its end is seen when the timewait
//! socket's timer fires (`tw_timer_expire`) or a new connection takes the 4-tuple.

use aya_ebpf::{
    helpers::{bpf_jiffies64, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use tcpstate_common::{
    counter, hist_addr, hist_owner, state, Config, Event, TwKey, TwLive, AF_INET, AF_INET6,
    HIST_TW_REUSED,
};

use crate::{
    config::{cfg, count, load, read},
    diag,
    hist::{add_sample, add_sample_here, dest},
    maps::{TWS, TW_FN},
};

/// A TIME_WAIT hand-over (`candidate`) or a new connection that may take a timewait
/// socket's 4-tuple.
// Map keys and values by reference: by value they are copied onto the BPF stack.
#[inline(always)]
pub fn timewait_step(ev: &Event, candidate: bool) {
    tcpstate_timewait_step(ev, u32::from(candidate));
}

/// [`timewait_step`]'s body as a global function (external linkage:
/// BTF_FUNC_GLOBAL), checked once by the verifier on its own (see
/// `hist::tcpstate_add_sample`). `ev` may be NULL as far as the verifier knows.
#[allow(clippy::needless_borrows_for_generic_args)]
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tcpstate_timewait_step(ev: *const Event, candidate: u32) -> i32 {
    if ev.is_null() {
        return 0;
    }
    // SAFETY: the caller's event.
    let ev = unsafe { &*ev };
    let candidate = candidate != 0;
    let tuple = TwKey {
        family: ev.family,
        sport: ev.sport,
        dport: ev.dport,
        _pad: 0,
        saddr: ev.saddr,
        daddr: ev.daddr,
        netns: ev.netns,
        _pad2: 0,
    };
    if candidate {
        // tcp_time_wait() has just moved the connection to an inet_timewait_sock,
        // which keeps the cookie (inet_twsk_alloc) and lives on unseen by this
        // tracepoint; `tw_timer_expire` sees it die.
        let live = TwLive {
            start_ns: ev.ts_ns,
            cookie: ev.cookie,
            pid: ev.pid,
            cancelled_ms: 0,
            comm: hist_owner(cfg().hist_by, &ev.comm, ev.cgroup_id),
        };
        match TWS.insert(&tuple, &live, 0) {
            Ok(()) => count(counter::TW_CANDIDATES),
            Err(e) => {
                count(counter::TW_UNTRACKED);
                diag::tw_untracked(e);
            }
        }
    } else if let Some(live) = unsafe { TWS.get(&tuple) }.copied() {
        // A new connection with a TIME_WAIT socket's 4-tuple: __inet_hash_connect
        // (tcp_tw_reuse) or tcp_timewait_state_process (a new SYN) killed it.
        let _ = TWS.remove(&tuple);
        count(counter::TW_REUSED);
        add_sample_here(
            HIST_TW_REUSED,
            ev.ts_ns.saturating_sub(live.start_ns),
            live.pid,
            dest(ev.family, ev.dport),
            hist_addr(cfg().hist_by, &live.comm, &ev.daddr),
        );
    }
    0
}

/// Local and remote address of a timewait socket (struct sock's sock_common layout).
#[inline(always)]
fn read_addrs(
    c: &Config,
    sk: *const u8,
    family: u16,
    saddr: &mut [u8; 16],
    daddr: &mut [u8; 16],
) -> Result<(), i32> {
    if family == AF_INET {
        let s: [u8; 4] = unsafe { read(sk, c.sk_rcv_saddr)? };
        let d: [u8; 4] = unsafe { read(sk, c.sk_daddr)? };
        saddr[..4].copy_from_slice(&s);
        daddr[..4].copy_from_slice(&d);
    } else if family == AF_INET6 {
        *saddr = unsafe { read(sk, c.sk_v6_rcv_saddr)? };
        *daddr = unsafe { read(sk, c.sk_v6_daddr)? };
    }
    Ok(())
}

/// A timer expired: if it is one of our TIME_WAIT candidates' (`tw_timer_handler`,
/// about to run `inet_twsk_kill`), its TIME_WAIT ends now. The timer_expire_entry
/// tracepoint runs for every timer: each is read as if it were a timewait socket's
/// (`tw_timer` inside `struct inet_timewait_sock`), and counts only if that socket's
/// 4-tuple is a candidate's and its cookie, unique for ever, is the candidate's.
/// Other timers cost a few checked reads and a map miss.
#[btf_tracepoint(function = "timer_expire_entry")]
pub fn tw_timer_expire(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct timer_list *timer, unsigned long baseclk)
    let _ = tw_expired(ctx.arg(0));
    0
}

/// A timer was deleted or moved (`detach_timer()`): if it is one of our candidates'
/// and before its time, the timewait socket is being killed (`ss -K`, a reset,
/// `inet_twsk_purge()` at its namespace's exit: `inet_twsk_deschedule_put()`), taken
/// by a new connection, or re-armed (`inet_twsk_reschedule()`). The entry is marked,
/// not removed: gauges stop counting it, and a reuse or a re-armed timer's expiry
/// still ends it with its sample; userspace's 66 s sweep removes the rest (unseen).
/// The wheel detaches every expiring timer too, right before `timer_expire_entry`,
/// whose `tw_timer_expire` then ends the marked record as usual. Which is which is
/// not told by the time: the wheel runs a timer up to a granule (4 s at HZ=1000)
/// after its `expires`, and a kill in that window is still a kill; only those
/// before `expires` count as `TW_CANCELLED`.
#[btf_tracepoint(function = "timer_cancel")]
pub fn tw_timer_cancel(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct timer_list *timer)
    let _ = tw_cancelled(ctx.arg(0));
    0
}

#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn tw_cancelled(timer: *const u8) -> Result<(), i32> {
    let c = cfg();
    if !maybe_tw_timer(c, timer) {
        return Ok(());
    }
    let Some((_, _, live)) = candidate(c, timer)? else {
        return Ok(());
    };
    learn_handler(c, timer);
    // SAFETY: a map value; a racing update only rewrites the same mark.
    let live = unsafe { &mut *live };
    if live.cancelled_ms == 0 {
        let now = unsafe { bpf_ktime_get_ns() };
        live.cancelled_ms = (now.saturating_sub(live.start_ns) / 1_000_000) as u32 + 1;
        let expires: u64 = unsafe { load(timer, c.timer_expires) };
        if (unsafe { bpf_jiffies64() } as i64).wrapping_sub(expires as i64) < 0 {
            count(counter::TW_CANCELLED);
        }
    }
    Ok(())
}

/// Whether `timer` may be a timewait socket's: any timer until the handler is
/// learned (`TW_FN`), then only those with that handler.
#[inline(always)]
fn maybe_tw_timer(c: &Config, timer: *const u8) -> bool {
    let known = TW_FN.get(0).copied().unwrap_or(0);
    known == 0 || unsafe { load::<u64>(timer, c.timer_function) } == known
}

/// `timer` is a timewait socket's for certain (a candidate's, by its cookie): its
/// handler, for `maybe_tw_timer`. Learned at the first candidate's reuse, kill or
/// expiry; until then every timer takes the full check.
#[inline(always)]
fn learn_handler(c: &Config, timer: *const u8) {
    if let Some(f) = TW_FN.get_ptr_mut(0) {
        // SAFETY: the map's one value; every writer writes the same address.
        unsafe { *f = load::<u64>(timer, c.timer_function) };
    }
}

/// The TIME_WAIT candidate whose timewait socket holds `timer`, if any: its 4-tuple
/// is a candidate's and its cookie, unique for ever, the candidate's: its key, the
/// timewait socket and the record.
#[allow(clippy::needless_borrows_for_generic_args, clippy::type_complexity)]
#[inline(always)]
fn candidate(c: &Config, timer: *const u8) -> Result<Option<(TwKey, *const u8, *mut TwLive)>, i32> {
    // container_of(timer, struct inet_timewait_sock, tw_timer)
    let tw = timer.wrapping_sub(c.tw_timer as usize);
    let family: u16 = unsafe { read(tw, c.sk_family)? };
    if family != AF_INET && family != AF_INET6 {
        return Ok(None);
    }
    let mut tuple = TwKey {
        family,
        sport: u16::from_be(unsafe { read::<u16>(tw, c.tw_sport)? }),
        dport: u16::from_be(unsafe { read::<u16>(tw, c.sk_dport)? }),
        _pad: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        netns: 0,
        _pad2: 0,
    };
    // The timewait socket's sock_common keeps the namespace (inet_twsk_alloc).
    let net: *const u8 = unsafe { read(tw, c.sk_net)? };
    tuple.netns = unsafe { read(net, c.net_ns_inum)? };
    read_addrs(c, tw, family, &mut tuple.saddr, &mut tuple.daddr)?;
    let Some(live) = TWS.get_ptr_mut(&tuple) else {
        return Ok(None); // not ours: predates the probe, or filtered out
    };
    let cookie: u64 = unsafe { read(tw, c.sk_cookie)? };
    // SAFETY: a map value, read in place.
    if cookie != unsafe { (*live).cookie } {
        return Ok(None);
    }
    Ok(Some((tuple, tw, live)))
}

#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn tw_expired(timer: *const u8) -> Result<(), i32> {
    let c = cfg();
    if !maybe_tw_timer(c, timer) {
        return Ok(());
    }
    let Some((tuple, tw, live)) = candidate(c, timer)? else {
        return Ok(());
    };
    // SAFETY: a map value, copied before its removal.
    let live = unsafe { *live };
    learn_handler(c, timer);
    let _ = TWS.remove(&tuple);
    let substate: u8 = unsafe { read(tw, c.tw_substate)? };
    if i32::from(substate) != state::TIME_WAIT {
        // An orphan's FIN_WAIT2 timeout (tcp_time_wait(sk, TCP_FIN_WAIT2, ...)).
        count(counter::TW_NOT_TIMEWAIT);
        return Ok(());
    }
    count(counter::TW_EXPIRED);
    let now = unsafe { bpf_ktime_get_ns() };
    add_sample(
        state::TIME_WAIT as u32,
        now.saturating_sub(live.start_ns),
        live.pid,
        dest(tuple.family, tuple.dport),
        hist_addr(c.hist_by, &live.comm, &tuple.daddr),
    );
    Ok(())
}
