//! `tp_btf/inet_sock_set_state`: every TCP state change. The primary program handles
//! each transition; the backup program, on the same tracepoint, handles exactly those
//! the kernel skipped the primary for (see `marks`).

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use tcpstate_common::{
    counter, hist_addr, hist_owner, owner_is_current, pair_slot, skip, state, Event, SockState,
    AF_INET, AF_INET6, BY_CONTAINER, BY_RADDR, BY_RPORT, FLAG_HIST, FLAG_OWNERS, FLAG_PAIRS,
    FLAG_STREAM, FLAG_TIMEWAIT, FLAG_TRACK, IPPROTO_TCP, OWNER_LISTENER, OWNER_NONE, OWNER_SOCKET,
    PREV_UNKNOWN, SOCK_HANDLED, SOCK_SEEN, SOCK_SYN_RECV_DEFERRED,
};

use crate::{
    config::{add, cfg, count, load, load_in6, read},
    diag,
    hist::{add_sample, dest},
    maps::{sock_rec, CGROUPS, PAIRS, SEED_OWNERS},
    marks::{end_backup, mark, states_code, take_mark},
    ring::emit,
    task::{current_leader, current_owner},
    timewait::timewait_step,
};

/// Primary program: handles every transition.
///
/// The kernel skips a BTF tracepoint program when it fires again on a CPU where the
/// same program is already running (`__bpf_trace_run`): an interrupt during this
/// program followed by softirq TCP processing does that. The backup program below
/// handles exactly the transitions skipped here.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
    if cfg().skip & skip::COUNTERS == 0 {
        count(counter::PROBE_RUNS);
    }
    if let Err(e) = handle(ctx.arg(0), ctx.arg(1), ctx.arg(2), None) {
        count(counter::READ_FAILED);
        diag::read_failed("inet_sock_set_state", e);
    }
    0
}

/// Backup program on the same tracepoint: a separate program, so the kernel guards
/// its recursion separately. It runs right after the primary for every transition
/// (tracepoint probes run in attach order) and handles it only if the primary left
/// no mark for it. Never both, so nothing is counted twice.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_backup(ctx: BtfTracePointContext) -> i32 {
    let mut level = u64::MAX;
    if let Err(e) = handle(ctx.arg(0), ctx.arg(1), ctx.arg(2), Some(&mut level)) {
        count(counter::READ_FAILED);
        diag::read_failed("inet_sock_set_state_backup", e);
    }
    end_backup(level);
    0
}

#[inline(always)]
/// `backup`: the backup program's run, with where its marks' stack must end.
fn handle(sk: *const u8, old: i32, new: i32, backup: Option<&mut u64>) -> Result<(), i32> {
    let c = cfg();
    let f = &c.filter;
    let track = c.flags & FLAG_TRACK != 0;
    // Every load of a pointer member makes the verifier search all of the kernel's
    // type names, 2-4 times (check_ptr_to_btf_access() -> btf_nested_type_is_trusted()
    // -> btf_find_by_name_kind(), linear before 6.19), on each path it walks to that
    // load: inside the branches below, that was half of the startup. Here, before
    // any branch on the transition, it walks them once; they cost a few plain loads.
    let owners = c.flags & FLAG_OWNERS != 0 && c.skip & skip::OWNER == 0;
    let leader = if owners {
        current_leader(c)
    } else {
        core::ptr::null()
    };
    let (netns, cgroup_id) = if needs_identity(c) && c.skip & skip::IDENTITY == 0 {
        identity(c, sk)
    } else {
        (0, 0)
    };
    // Without per-socket records nothing else needs the transitions the user's states
    // exclude: `linger` stops 8 of a connection's 10 after this compare and a load.
    // Leaving SYN_RECV may carry a deferred LISTEN -> SYN_RECV (see below).
    let relevant = track || f.passes_states(old, new) || old == state::SYN_RECV;
    // The tracepoint also fires for SCTP, MPTCP and DCCP sockets.
    let protocol: u16 = unsafe { load(sk, c.sk_protocol) };
    let tcp = protocol == IPPROTO_TCP;
    let relevant = relevant && tcp;
    // The cookie is set once asked for (sock_gen_cookie); only a socket's first
    // transition needs the helper. Every TCP transition gets it, handled or not: it
    // makes the mark this socket's alone (a socket later allocated at the same
    // address has another cookie), so a mark left behind never matches another
    // socket's transition.
    let mut cookie: u64 = 0;
    if tcp && c.skip & skip::COOKIE == 0 {
        cookie = unsafe { load(sk, c.sk_cookie) };
        if cookie == 0 {
            cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
        }
    }
    let code = states_code(old, new);
    // Which program handles this transition. Where the command keeps socket records,
    // the record says it: the program that handles a transition tags the record with
    // it (`handled`), and the socket lock serialises the socket's transitions, so the
    // backup sees the primary's tag for this transition exactly when the primary
    // ran for it, whatever ran on this CPU in between (other sockets' transitions,
    // and from 7.x other tasks: the programs can be preempted there). Sockets with
    // no record (linger's, a failed allocation, a closing socket seen first) use
    // the per-CPU marks (`marks`).
    let tag = SOCK_HANDLED | code as u16;
    let records = tcp && track && c.skip & skip::STORAGE == 0;
    let mut rec: *mut SockState = core::ptr::null_mut();
    if records {
        rec = sock_rec(sk, backup.is_none() && new != state::CLOSE);
    }
    match backup {
        _ if c.skip & skip::MARK != 0 => {
            if backup.is_some() {
                return Ok(());
            }
        }
        None => {
            if rec.is_null() {
                mark(sk, code, cookie);
            }
        }
        Some(level) => {
            let ran = if rec.is_null() {
                let (ran, lv) = take_mark(sk, code, cookie);
                *level = lv;
                ran
            } else {
                // SAFETY: this socket's own storage.
                unsafe { (*rec).handled == tag }
            };
            if ran {
                return Ok(());
            }
            // The primary was skipped for this transition (relevant or not):
            // userspace subtracts these from its recursion_misses to count what was
            // lost.
            count(counter::RECOVERED);
            diag::recovered(old, new);
        }
    }
    if !relevant {
        return Ok(());
    }
    let now = if c.skip & skip::CLOCK == 0 {
        unsafe { bpf_ktime_get_ns() }
    } else {
        1
    };

    let learned = owners && owner_is_current(old, new);
    let (cur_pid, cur_comm) = if learned {
        current_owner(c, leader)
    } else {
        (0, [0; 16])
    };
    let learned = learned && cur_pid != 0;

    // One record, filled in as it is learned: the event, and the argument of the
    // out-of-line steps (the BPF stack is 512 bytes; copies would not fit).
    let mut ev = Event {
        ts_ns: now,
        prev_ns: PREV_UNKNOWN,
        cookie,
        saddr: [0; 16],
        daddr: [0; 16],
        pid: 0,
        sport: 0,
        dport: 0,
        family: 0,
        oldstate: old as u8,
        newstate: new as u8,
        owner_from: OWNER_NONE,
        _pad: [0; 3],
        comm: [0; 16],
        cgroup_id,
        netns,
        _pad2: 0,
    };
    // Before 6.15 LISTEN -> SYN_RECV fires on the new child before it has its
    // 4-tuple and cookie (`inet_csk_clone_lock()` sets TCP_SYN_RECV first; the child
    // is still the listener's copy, remote port 0): it is handled at the child's
    // next transition, which always leaves SYN_RECV, with the time it happened.
    let syn_recv = old == state::LISTEN && new == state::SYN_RECV;
    let defer = syn_recv && tcp && unsafe { load::<u16>(sk, c.sk_dport) } == 0;
    // When this transition leaves SYN_RECV with one deferred: its time.
    let mut deferred_at = 0u64;
    if (track || defer || old == state::SYN_RECV) && c.skip & skip::STORAGE == 0 {
        // A closing socket's record is only updated, never created; without
        // FLAG_TRACK only a deferral makes one.
        let p = if rec.is_null() {
            sock_rec(sk, (track || defer) && new != state::CLOSE)
        } else {
            rec
        };
        if p.is_null() {
            if track && new != state::CLOSE {
                count(counter::TABLE_FULL);
                diag::table_full(cookie);
            }
            if learned {
                ev.owner_from = OWNER_SOCKET;
                ev.pid = cur_pid;
                ev.comm = cur_comm;
            }
        } else {
            // SAFETY: this socket's own storage; the socket lock (or, for a new
            // child, its not being visible yet) serialises its transitions.
            let st = unsafe { &mut *p };
            st.handled = tag;
            if st.flags & SOCK_SEEN == 0 {
                st.flags |= SOCK_SEEN;
                // Not a transition a new socket starts with, on a record the probe
                // never touched: a socket older than tcpstate, whose owner the
                // startup seed may hold (see `seed`).
                let birth = syn_recv
                    || (old == state::CLOSE && (new == state::SYN_SENT || new == state::LISTEN));
                if c.flags & FLAG_OWNERS != 0 && st.pid == 0 && !birth {
                    adopt_seeded(sk, cookie, st);
                }
            }
            if st.flags & SOCK_SYN_RECV_DEFERRED != 0 {
                st.flags &= !SOCK_SYN_RECV_DEFERRED;
                deferred_at = st.since_ns;
                // Its owner, before this transition may change it.
                if track {
                    ev.pid = st.pid;
                    ev.comm = st.comm;
                    ev.owner_from = st.owner_from;
                }
            }
            if syn_recv {
                // A new child whose record sk_clone_lock() copied from its listener
                // (bpf_sk_storage_clone): the owner is the listener's holder until
                // this socket shows its own; the time is the listener's, not ours.
                if st.pid != 0 {
                    st.owner_from = OWNER_LISTENER;
                }
                if defer {
                    st.flags |= SOCK_SYN_RECV_DEFERRED;
                }
            } else if st.since_ns != 0 {
                ev.prev_ns = now.saturating_sub(st.since_ns);
            }
            if learned {
                st.pid = cur_pid;
                st.comm = cur_comm;
                st.owner_from = OWNER_SOCKET;
            }
            // Never carry a duration across a CLOSE: the socket may be reused
            // (connect() again, listen() again) with a new history.
            st.since_ns = if new == state::CLOSE { 0 } else { now };
            if deferred_at != 0 {
                // The child's LISTEN -> SYN_RECV, now that its 4-tuple and cookie
                // are set; this transition follows with the record as it is now.
                let prev_ns = ev.prev_ns;
                ev.ts_ns = deferred_at;
                ev.prev_ns = PREV_UNKNOWN;
                ev.oldstate = state::LISTEN as u8;
                ev.newstate = state::SYN_RECV as u8;
                finish(sk, &mut ev)?;
                ev.ts_ns = now;
                ev.prev_ns = prev_ns;
                ev.oldstate = old as u8;
                ev.newstate = new as u8;
            }
            if track {
                ev.pid = st.pid;
                ev.comm = st.comm;
                ev.owner_from = st.owner_from;
            }
        }
    }
    if defer {
        return Ok(());
    }
    finish(sk, &mut ev)
}

/// Takes the owner the startup seed indexed for this socket, if any. (Not a global
/// function like `hist::tcpstate_add_sample`: the socket's address is a pointer to
/// the verifier, which a global function cannot take.)
// Map keys by reference: by value they are copied onto the BPF stack.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(never)]
fn adopt_seeded(sk: *const u8, cookie: u64, st: &mut SockState) {
    let key = sk as u64;
    if let Some(o) = unsafe { SEED_OWNERS.get(&key) } {
        // The cookie, when the walk saw one, rules out another socket at the same
        // address (there can be none while the entry is live; this is cheap).
        if o.cookie == 0 || o.cookie == cookie {
            st.pid = o.pid;
            st.comm = o.comm;
            st.owner_from = o.owner_from;
        }
        let _ = SEED_OWNERS.remove(&key);
    }
}

/// Everything after the socket's record: the filters, then per mode the count, the
/// histogram sample, the TIME_WAIT step and the event. `ev` holds the transition,
/// its time, time in the old state, cookie and owner; the rest is read here.
#[inline(always)]
fn finish(sk: *const u8, ev: &mut Event) -> Result<(), i32> {
    let c = cfg();
    let f = &c.filter;
    let (old, new) = (i32::from(ev.oldstate), i32::from(ev.newstate));
    // Filters that need no socket reads first: most transitions stop here in `trace
    // --state` and never need their addresses in hist.
    if !f.passes_states(old, new) || !f.passes_pid(ev.pid) {
        return Ok(());
    }
    let prev_ns = ev.prev_ns;
    let hist_sample = c.flags & FLAG_HIST != 0 && prev_ns != PREV_UNKNOWN;
    let timewait = c.flags & FLAG_TIMEWAIT != 0;
    let tw_candidate = new == state::CLOSE && (old == state::FIN_WAIT2 || old == state::CLOSING);
    let tw_reuse = (old == state::SYN_SENT && new == state::ESTABLISHED)
        || (old == state::LISTEN && new == state::SYN_RECV);
    let stream = c.flags & FLAG_STREAM != 0;
    // Identity (read in `handle`, see `identity`).
    if needs_identity(c) && c.skip & skip::IDENTITY == 0 {
        if !f.passes_netns(ev.netns) {
            return Ok(());
        }
        if f.cgroups != 0 && unsafe { CGROUPS.get(ev.cgroup_id) }.is_none() {
            return Ok(());
        }
    }
    let need_addrs = stream
        || (timewait && (tw_candidate || tw_reuse))
        || f.needs_endpoints()
        || (hist_sample && (c.hist_by == BY_RPORT || c.hist_by == BY_RADDR));
    let pairs = c.flags & FLAG_PAIRS != 0;
    if !need_addrs && !hist_sample {
        if pairs {
            count_pair(old, new);
        }
        return Ok(());
    }
    if need_addrs && c.skip & skip::ADDRS == 0 {
        ev.family = unsafe { load(sk, c.sk_family) };
        if ev.family == AF_INET {
            let s: u32 = unsafe { load(sk, c.sk_rcv_saddr) };
            let d: u32 = unsafe { load(sk, c.sk_daddr) };
            // Whole 16-byte stores: a partial copy into the zeroed arrays made LLVM
            // call memset for the rest (a BPF-to-BPF call per piece).
            ev.saddr = u128::from(s).to_le_bytes();
            ev.daddr = u128::from(d).to_le_bytes();
        } else if ev.family == AF_INET6 {
            ev.saddr = load_in6(sk, c.sk_v6_rcv_saddr);
            ev.daddr = load_in6(sk, c.sk_v6_daddr);
        }
        // skc_num is a plain load but inet_put_port() clears it by ->CLOSE, where
        // inet_sport stays valid; that one lies in struct inet_sock, beyond the BTF
        // type of `sk`, so it takes a checked read.
        ev.sport = if new != state::CLOSE {
            unsafe { load::<u16>(sk, c.sk_num) }
        } else {
            u16::from_be(unsafe { read::<u16>(sk, c.inet_sport)? })
        };
        ev.dport = u16::from_be(unsafe { load::<u16>(sk, c.sk_dport) });
        if !f.passes_endpoints(ev.family, &ev.saddr, &ev.daddr, ev.sport, ev.dport) {
            return Ok(());
        }
    }
    if pairs {
        count_pair(old, new);
    }
    if hist_sample {
        let owner = hist_owner(c.hist_by, &ev.comm, ev.cgroup_id);
        add_sample(
            old as u32,
            prev_ns,
            ev.pid,
            dest(ev.family, ev.dport),
            hist_addr(c.hist_by, &owner, &ev.daddr),
        );
    }
    if timewait && (tw_candidate || tw_reuse) {
        timewait_step(ev, tw_candidate);
    }
    if stream && c.skip & skip::RING == 0 {
        emit(ev);
    }
    Ok(())
}

/// Whether the settings need a transition's namespace and cgroup: a stream, `hist
/// --by container`, a namespace or cgroup filter, or TIME_WAIT tracking (its 4-tuple
/// key holds the namespace too).
#[inline(always)]
fn needs_identity(c: &tcpstate_common::Config) -> bool {
    c.flags & FLAG_STREAM != 0
        || (c.flags & FLAG_HIST != 0 && c.hist_by == BY_CONTAINER)
        || c.filter.needs_identity()
        || c.flags & FLAG_TIMEWAIT != 0
}

/// The socket's network namespace and cgroup: plain BTF loads (sk -> skc_net ->
/// ns.inum, sk -> sk_cgrp_data.cgroup -> kn -> id). The cgroup is the one that
/// created the socket (sk_alloc() -> cgroup_sk_alloc(), copied to accepted children
/// by sk_clone_lock()), right in softirq where the current task is anyone's.
#[inline(always)]
fn identity(c: &tcpstate_common::Config, sk: *const u8) -> (u32, u64) {
    unsafe {
        let netns = load(load::<*const u8>(sk, c.sk_net), c.net_ns_inum);
        let cg: *const u8 = load(sk, c.sk_cgrp);
        (netns, load(load::<*const u8>(cg, c.cgroup_kn), c.kn_id))
    }
}

/// One more transition from `old` to `new` that passed the filters.
#[inline(always)]
fn count_pair(old: i32, new: i32) {
    if let Some(p) = PAIRS.get_ptr_mut(pair_slot(old, new)) {
        add(p, 1);
    }
}
