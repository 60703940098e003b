//! tcpstate's kernel probe (runs in the kernel; built for `bpfel-unknown-none`).
//!
//! `inet_sock_set_state` (a BTF tracepoint) sees every TCP state change, keeps a small
//! per-socket record keyed by the socket cookie (time of the last change, owner), and
//! sends one compact [`Event`] per change through a ring buffer. `sys_exit_accept*`
//! learns the owner of accepted sockets, whose early transitions run in softirq.
//!
//! Why a BTF tracepoint: a classic tracepoint program is skipped whenever any BPF
//! program already runs on the CPU (`trace_call_bpf` checks `bpf_prog_active`), which
//! loses events under churn; `__bpf_trace_run` only skips nested runs of the same
//! program, and counts them in the program's `recursion_misses`, which userspace reports.
// Built for real only for bpfel-unknown-none; on the host (`cargo clippy --workspace`)
// it is an ordinary, empty binary so that the whole workspace checks.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic adds (see `add`); the BPF build runs with RUSTC_BOOTSTRAP.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

use core::ffi::c_void;
#[cfg(target_arch = "bpf")]
use core::intrinsics::AtomicOrdering;

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_socket_cookie, bpf_jiffies64, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_seq_write,
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use tcpstate_common::{
    counter, hist_bucket, owner_is_current, state, Config, Event, FdRecord, Filter, Hist, HistKey,
    SockState, TwKey, TwLive, AF_INET, AF_INET6, BY_NONE, BY_PROCESS, BY_RADDR, BY_RPORT,
    EV_UNTRACKED, FILTER_MAX, FLAG_HIST, FLAG_OWNERS, FLAG_STREAM, FLAG_TIMEWAIT, FLAG_TRACK,
    HIST_BUCKETS, HIST_SPILL_STATES, HIST_TW_REUSED, IPPROTO_TCP, PREV_UNKNOWN,
};

/// Filled in by userspace before load (`EbpfLoader::set_global`).
#[unsafe(no_mangle)]
static CONFIG: Config = Config {
    sk_family: 0,
    sk_protocol: 0,
    sk_state: 0,
    sk_dport: 0,
    sk_rcv_saddr: 0,
    sk_daddr: 0,
    sk_v6_rcv_saddr: 0,
    sk_v6_daddr: 0,
    sk_cookie: 0,
    inet_sport: 0,
    task_files: 0,
    task_group_leader: 0,
    task_comm: 0,
    files_fdt: 0,
    fdt_max_fds: 0,
    fdt_fd: 0,
    file_private_data: 0,
    socket_sk: 0,
    task_tgid: 0,
    file_inode: 0,
    inode_mode: 0,
    flags: 0,
    hist_by: 0,
    _pad0: 0,
    filter: Filter {
        family: 0,
        n_ports: 0,
        n_lports: 0,
        n_rports: 0,
        n_pids: 0,
        states: 0,
        ports: [0; FILTER_MAX],
        lports: [0; FILTER_MAX],
        rports: [0; FILTER_MAX],
        pids: [0; FILTER_MAX],
    },
    wakeup_bytes: 0,
    tw_timer: 0,
    tw_substate: 0,
    tw_sport: 0,
    _pad: 0,
};

/// Size set by userspace at load time.
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Live sockets by cookie (only with `FLAG_TRACK`). Bounded; a failed insert is
/// counted (`TABLE_FULL`). Preallocated (~24 MiB of kernel memory, charged to
/// tcpstate's memory cgroup, while attached): inserting and deleting from a
/// preallocated table measured ~100 ns cheaper per transition under churn than
/// allocating each entry, and every connection does both twice.
#[map(name = "SOCKS")]
static SOCKS: HashMap<u64, SockState> = HashMap::with_max_entries(1 << 18, 0);

/// Time-in-state histograms (`hist`), per CPU so updates need no atomics.
/// Preallocated (userspace sizes it): inserting a new key then never allocates, which
/// in softirq or timer context fails whenever the allocator's small per-CPU cache of
/// 4.5 KiB values runs dry.
#[map(name = "HIST")]
static HIST: PerCpuHashMap<HistKey, Hist> = PerCpuHashMap::with_max_entries(64, 0);

/// Histograms without a --by key, and where a keyed sample goes when its HIST key
/// cannot be inserted (then counted as spilled): the map is full, or the
/// bucket is locked by the program this one interrupted (`htab_lock_bucket` returns
/// -EBUSY when nested on a CPU). Indexed by (generation & 1) * 32 + `HistKey::state`;
/// array lookups take no lock. Userspace merges it, without the --by key.
#[map(name = "HIST_SPILL")]
static HIST_SPILL: PerCpuArray<Hist> = PerCpuArray::with_max_entries(2 * HIST_SPILL_STATES, 0);

/// A zeroed histogram to insert new keys from (too big for the BPF stack).
#[map(name = "HIST_ZERO")]
static HIST_ZERO: PerCpuArray<Hist> = PerCpuArray::with_max_entries(1, 0);

/// Current histogram generation, flipped by userspace at each --interval.
#[map(name = "GEN")]
static GEN: Array<u32> = Array::with_max_entries(1, 0);

/// TIME_WAIT candidates by 4-tuple (a 4-tuple has at most one timewait socket): the
/// expiry timer and a new connection on the same 4-tuple both find them here. Entries
/// whose end the probe cannot see (a reset in TIME_WAIT, a tcp_max_tw_buckets
/// overflow) are swept by userspace; LRU bounds the rest.
#[map(name = "TWS")]
static TWS: LruHashMap<TwKey, TwLive> = LruHashMap::with_max_entries(1 << 18, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Per CPU, the transitions the primary program has run for and the backup has not
/// yet looked at, so the backup can tell them from transitions the primary never saw.
/// At most the nesting depth (task, softirq) is in flight. A mark whose backup was
/// skipped (it nested inside a backup run) is cleared when that outer backup run
/// ends, unless it nested in the few instructions around the run; marks carry the
/// socket cookie, so such a leftover can never match a later socket at the same
/// address (slab reuse) and lose its transition.
#[map(name = "RECENT")]
static RECENT: PerCpuArray<Recent> = PerCpuArray::with_max_entries(1, 0);

const RECENT_SLOTS: usize = 8;
/// Fallback for marks nothing consumes or clears (transitions between attaching
/// the primary and the backup): their slots are reused after 20 jiffies (>= 20 ms).
const MARK_STALE_JIFFIES: u64 = 20;

#[repr(C)]
struct Recent {
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
fn states_code(old: i32, new: i32) -> u64 {
    ((old as u64 & 0xff) << 8) | (new as u64 & 0xff)
}

/// The primary runs for this transition: leave a mark for the backup in a free or
/// stale slot. (Storing and comparing the socket pointer needs CAP_PERFMON, which
/// tracing needs anyway; the verifier allows no arithmetic on it.)
#[inline(always)]
fn mark(sk: *const u8, code: u64, cookie: u64) {
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
fn take_mark(sk: *const u8, code: u64, cookie: u64) -> bool {
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
fn mark_seq() -> u64 {
    RECENT.get(0).map_or(0, |r| r.seq)
}

/// A backup run ends: marks made since it started were made by primary runs nested
/// in it, whose own backup runs the kernel skipped (this one was active). Nothing
/// will consume them.
#[inline(always)]
fn clear_marks_after(seq: u64) {
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

/// The configuration, read through memory: `black_box` keeps the compiler from folding
/// the zero initialiser (userspace rewrites it before load), and from copying the whole
/// struct onto the 512-byte BPF stack.
#[inline(always)]
fn cfg() -> &'static Config {
    // SAFETY: CONFIG is a valid, read-only static.
    unsafe { &*core::hint::black_box(core::ptr::addr_of!(CONFIG)) }
}

#[inline(always)]
fn count(idx: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        add(p, 1);
    }
}

/// Adds to a per-CPU value atomically: a softirq that interrupts this CPU between
/// the load and the store of a plain `+=` (both run the probe) would lose its own
/// increment, and loss counters must not undercount.
#[inline(always)]
fn add(p: *mut u64, v: u64) {
    // SAFETY: a valid, aligned map value. (BPF has no compare-and-swap, so core
    // offers no fetch_add; the intrinsic lowers to the BPF atomic add.)
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v)
    };
    #[cfg(not(target_arch = "bpf"))]
    let _ = (p, v);
}

/// Reads a `T` at `base + off` from kernel memory.
#[inline(always)]
unsafe fn read<T>(base: *const u8, off: u32) -> Result<T, i32> {
    unsafe { bpf_probe_read_kernel(base.add(off as usize).cast::<T>()) }
}

/// Reads a `T` at `base + off` of a BTF-typed pointer (the tracepoint's own `sk`)
/// with a plain load: the verifier knows `off` (CONFIG is frozen read-only data),
/// checks it against the struct's BTF and guards the load itself (BPF_PROBE_MEM),
/// so no helper call is needed.
#[inline(always)]
unsafe fn load<T: Copy>(base: *const u8, off: u32) -> T {
    unsafe { core::ptr::read_volatile(base.add(off as usize).cast::<T>()) }
}

/// An in6_addr, as four 32-bit loads (its `u6_addr32` view), straight into place.
#[inline(always)]
fn load_in6(sk: *const u8, off: u32) -> [u8; 16] {
    let mut a = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let w: u32 = unsafe { load(sk, off + 4 * i as u32) };
        a[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        i += 1;
    }
    a
}

/// The current process (tgid) and its thread-group leader's comm, as `ss -p` names it.
#[inline(always)]
fn current_owner(c: &Config) -> (u32, [u8; 16]) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == 0 {
        // The idle task is never an owner.
        return (0, [0; 16]);
    }
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let comm = unsafe { read::<*const u8>(task, c.task_group_leader) }
        .and_then(|leader| unsafe { read::<[u8; 16]>(leader, c.task_comm) })
        .or_else(|_| bpf_get_current_comm())
        .unwrap_or([0; 16]);
    (tgid, comm)
}

/// Primary program: handles every transition.
///
/// The kernel skips a BTF tracepoint program when it fires again on a CPU where the
/// same program is already running (`__bpf_trace_run`): an interrupt during this
/// program followed by softirq TCP processing does that. The backup program below
/// handles exactly the transitions skipped here.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(const struct sock *sk, const int oldstate, const int newstate)
    count(counter::PROBE_RUNS);
    if handle(ctx.arg(0), ctx.arg(1), ctx.arg(2), false).is_err() {
        count(counter::READ_FAILED);
    }
    0
}

/// Backup program on the same tracepoint: a separate program, so the kernel guards
/// its recursion separately. It runs right after the primary for every transition
/// (tracepoint probes run in attach order) and handles it only if the primary left
/// no mark for it. Never both, so nothing is counted twice.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_backup(ctx: BtfTracePointContext) -> i32 {
    let seq = mark_seq();
    if handle(ctx.arg(0), ctx.arg(1), ctx.arg(2), true).is_err() {
        count(counter::READ_FAILED);
    }
    clear_marks_after(seq);
    0
}

#[inline(always)]
fn handle(sk: *const u8, old: i32, new: i32, backup: bool) -> Result<(), i32> {
    let c = cfg();
    let f = &c.filter;
    let track = c.flags & FLAG_TRACK != 0;
    // Without per-socket records nothing else needs the transitions the user's states
    // exclude: `linger` stops 8 of a connection's 10 after this compare and a load.
    let relevant = track || passes_states(f, old, new);
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
    if tcp {
        cookie = unsafe { load(sk, c.sk_cookie) };
        if cookie == 0 {
            cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
        }
    }
    let code = states_code(old, new);
    if !backup {
        mark(sk, code, cookie);
    } else if take_mark(sk, code, cookie) {
        return Ok(());
    } else {
        // The primary was skipped for this transition (relevant or not): userspace
        // subtracts these from its recursion_misses to count what was lost.
        count(counter::RECOVERED);
    }
    if !relevant {
        return Ok(());
    }
    let now = unsafe { bpf_ktime_get_ns() };

    let learned = c.flags & FLAG_OWNERS != 0 && owner_is_current(old, new);
    let (cur_pid, cur_comm) = if learned {
        current_owner(c)
    } else {
        (0, [0; 16])
    };
    let learned = learned && cur_pid != 0;

    let mut flags = 0;
    let mut prev_ns = PREV_UNKNOWN;
    let (pid, comm) = if !track {
        (0, [0; 16])
    } else {
        match SOCKS.get_ptr_mut(cookie) {
            Some(p) => {
                // SAFETY: a valid map value; the socket lock serialises its transitions.
                let st = unsafe { &mut *p };
                if st.since_ns != 0 {
                    prev_ns = now.saturating_sub(st.since_ns);
                }
                if learned {
                    st.pid = cur_pid;
                    st.comm = cur_comm;
                }
                let owner = (st.pid, st.comm);
                if new == state::CLOSE {
                    // The socket's life ends here; its address may be reused.
                    let _ = SOCKS.remove(cookie);
                } else {
                    st.since_ns = now;
                    st.state = new as u32;
                }
                owner
            }
            None => {
                if new != state::CLOSE {
                    let st = SockState {
                        since_ns: now,
                        pid: cur_pid,
                        state: new as u32,
                        comm: cur_comm,
                    };
                    if SOCKS.insert(cookie, st, 0).is_err() {
                        count(counter::TABLE_FULL);
                        flags |= EV_UNTRACKED;
                    }
                }
                (cur_pid, cur_comm)
            }
        }
    };

    // Filters that need no socket reads first: most transitions stop here in `trace
    // --state` and never need their addresses in hist.
    if !passes_states(f, old, new) || !passes_pids(f, pid) {
        return Ok(());
    }
    let hist_sample = c.flags & FLAG_HIST != 0 && prev_ns != PREV_UNKNOWN;
    let timewait = c.flags & FLAG_TIMEWAIT != 0;
    let tw_candidate = new == state::CLOSE && (old == state::FIN_WAIT2 || old == state::CLOSING);
    let tw_reuse = (old == state::SYN_SENT && new == state::ESTABLISHED)
        || (old == state::LISTEN && new == state::SYN_RECV);
    let stream = c.flags & FLAG_STREAM != 0;
    let need_addrs = stream
        || (timewait && (tw_candidate || tw_reuse))
        || f.family != 0
        || f.n_ports != 0
        || f.n_lports != 0
        || f.n_rports != 0
        || (hist_sample && (c.hist_by == BY_RPORT || c.hist_by == BY_RADDR));
    if !need_addrs && !hist_sample {
        return Ok(());
    }

    // One record, filled in as it is learned: the event, and the argument of the
    // out-of-line steps below (the BPF stack is 512 bytes; copies would not fit).
    let mut ev = Event {
        ts_ns: now,
        prev_ns,
        cookie,
        saddr: [0; 16],
        daddr: [0; 16],
        pid,
        sport: 0,
        dport: 0,
        family: 0,
        oldstate: old as u8,
        newstate: new as u8,
        flags,
        comm,
    };
    if need_addrs {
        ev.family = unsafe { load(sk, c.sk_family) };
        if ev.family == AF_INET {
            let s: u32 = unsafe { load(sk, c.sk_rcv_saddr) };
            let d: u32 = unsafe { load(sk, c.sk_daddr) };
            ev.saddr[..4].copy_from_slice(&s.to_ne_bytes());
            ev.daddr[..4].copy_from_slice(&d.to_ne_bytes());
        } else if ev.family == AF_INET6 {
            ev.saddr = load_in6(sk, c.sk_v6_rcv_saddr);
            ev.daddr = load_in6(sk, c.sk_v6_daddr);
        }
        // inet_sport stays valid at ->CLOSE, unlike skc_num, which inet_put_port()
        // clears. It lies in struct inet_sock, beyond the BTF type of `sk`, so it
        // takes a checked read.
        ev.sport = u16::from_be(unsafe { read::<u16>(sk, c.inet_sport)? });
        ev.dport = u16::from_be(unsafe { load::<u16>(sk, c.sk_dport) });
        if !passes_endpoints(f, &ev) {
            return Ok(());
        }
    }
    if hist_sample {
        add_sample(
            old as u32,
            prev_ns,
            pid,
            dest(ev.family, ev.dport),
            if c.hist_by == BY_PROCESS {
                &ev.comm
            } else {
                &ev.daddr
            },
        );
    }
    if timewait && (tw_candidate || tw_reuse) {
        timewait_step(&ev, tw_candidate);
    }
    if stream {
        emit(&ev);
    }
    Ok(())
}

/// A TIME_WAIT hand-over (`candidate`) or a new connection that may take a timewait
/// socket's 4-tuple.
// Map keys and values by reference: by value they are copied onto the BPF stack.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(never)]
fn timewait_step(ev: &Event, candidate: bool) {
    let tuple = TwKey {
        family: ev.family,
        sport: ev.sport,
        dport: ev.dport,
        _pad: 0,
        saddr: ev.saddr,
        daddr: ev.daddr,
    };
    if candidate {
        // tcp_time_wait() has just moved the connection to an inet_timewait_sock,
        // which keeps the cookie (inet_twsk_alloc) and lives on unseen by this
        // tracepoint; `tw_timer_expire` sees it die.
        let live = TwLive {
            start_ns: ev.ts_ns,
            cookie: ev.cookie,
            pid: ev.pid,
            _pad: 0,
            comm: ev.comm,
        };
        count(if TWS.insert(&tuple, &live, 0).is_ok() {
            counter::TW_CANDIDATES
        } else {
            counter::TW_UNTRACKED
        });
    } else if let Some(live) = unsafe { TWS.get(&tuple) }.copied() {
        // A new connection with a TIME_WAIT socket's 4-tuple: __inet_hash_connect
        // (tcp_tw_reuse) or tcp_timewait_state_process (a new SYN) killed it.
        let _ = TWS.remove(&tuple);
        count(counter::TW_REUSED);
        add_sample(
            HIST_TW_REUSED,
            ev.ts_ns.saturating_sub(live.start_ns),
            live.pid,
            dest(ev.family, ev.dport),
            if cfg().hist_by == BY_PROCESS {
                &live.comm
            } else {
                &ev.daddr
            },
        );
    }
}

/// Family and remote port in one argument (BPF functions take at most five).
#[inline(always)]
fn dest(family: u16, dport: u16) -> u32 {
    (u32::from(family) << 16) | u32::from(dport)
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

#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn tw_expired(timer: *const u8) -> Result<(), i32> {
    let c = cfg();
    // container_of(timer, struct inet_timewait_sock, tw_timer)
    let tw = timer.wrapping_sub(c.tw_timer as usize);
    let family: u16 = unsafe { read(tw, c.sk_family)? };
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    let mut tuple = TwKey {
        family,
        sport: u16::from_be(unsafe { read::<u16>(tw, c.tw_sport)? }),
        dport: u16::from_be(unsafe { read::<u16>(tw, c.sk_dport)? }),
        _pad: 0,
        saddr: [0; 16],
        daddr: [0; 16],
    };
    read_addrs(c, tw, family, &mut tuple.saddr, &mut tuple.daddr)?;
    let Some(live) = (unsafe { TWS.get(&tuple) }).copied() else {
        return Ok(()); // not ours: predates the probe, or filtered out
    };
    let cookie: u64 = unsafe { read(tw, c.sk_cookie)? };
    if cookie != live.cookie {
        return Ok(());
    }
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
        dest(family, tuple.dport),
        if c.hist_by == BY_PROCESS {
            &live.comm
        } else {
            &tuple.daddr
        },
    );
    Ok(())
}

#[inline(never)]
fn emit(ev: &Event) {
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
            count(counter::EMITTED);
        }
        None => count(counter::RINGBUF_FULL),
    }
}

#[inline(always)]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10].iter().all(|&b| b == 0) && a[10] == 0xff && a[11] == 0xff
}

#[inline(always)]
fn listed16(list: &[u16; FILTER_MAX], n: u32, v: u16) -> bool {
    let mut i = 0;
    while i < FILTER_MAX {
        if (i as u32) < n && list[i] == v {
            return true;
        }
        i += 1;
    }
    false
}

/// The user's state filter: the old or the new state must be listed.
#[inline(always)]
fn passes_states(f: &Filter, old: i32, new: i32) -> bool {
    f.states == 0 || f.states & ((1 << (old & 31)) | (1 << (new & 31))) != 0
}

/// The user's owner filter, applied before any socket read.
#[inline(always)]
fn passes_pids(f: &Filter, pid: u32) -> bool {
    if f.n_pids == 0 {
        return true;
    }
    let mut i = 0;
    while i < FILTER_MAX {
        if (i as u32) < f.n_pids && f.pids[i] == pid {
            return true;
        }
        i += 1;
    }
    false
}

/// The user's family and port filters.
#[inline(always)]
fn passes_endpoints(f: &Filter, ev: &Event) -> bool {
    if f.family != 0 {
        let v4 = ev.family == AF_INET || (is_v4_mapped(&ev.saddr) && is_v4_mapped(&ev.daddr));
        if (f.family == 4) != v4 {
            return false;
        }
    }
    if f.n_ports != 0
        && !listed16(&f.ports, f.n_ports, ev.sport)
        && !listed16(&f.ports, f.n_ports, ev.dport)
    {
        return false;
    }
    if f.n_lports != 0 && !listed16(&f.lports, f.n_lports, ev.sport) {
        return false;
    }
    if f.n_rports != 0 && !listed16(&f.rports, f.n_rports, ev.dport) {
        return false;
    }
    true
}

/// Adds `dur_ns` spent in `st` (a state, or `HIST_TW_REUSED`) to its histogram,
/// under the current generation. `dest`: see [`dest`]; `addr`: the remote address,
/// or for --by process the owner's comm.
#[inline(never)]
fn add_sample(st: u32, dur_ns: u64, pid: u32, dest: u32, addr: &[u8; 16]) {
    let c = cfg();
    let (family, dport) = ((dest >> 16) as u16, dest as u16);
    let gen = GEN.get(0).copied().unwrap_or(0);
    let mut key = HistKey {
        gen,
        state: st,
        pid: 0,
        port: 0,
        addr: [0; 16],
    };
    match c.hist_by {
        BY_PROCESS => {
            key.pid = pid;
            key.addr = *addr;
        }
        BY_RPORT => key.port = u32::from(dport),
        BY_RADDR => {
            key.addr = *addr;
            key.port = u32::from(family);
        }
        _ => {}
    }
    let slot = (gen & 1) * HIST_SPILL_STATES + (st % HIST_SPILL_STATES);
    let spill = || {
        count(counter::HIST_SPILLED);
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
    if try_accept_exit(ctx).is_err() {
        count(counter::ACCEPT_UNRESOLVED);
    }
    0
}

/// accept() returned a new fd: the caller owns the socket behind it. Walks
/// `current->files->fdt->fd[ret]->private_data` (a `struct socket`, see
/// `sock_alloc_file`) to its `sk`, and records the owner under the socket's cookie.
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
        let sock: *const u8 = read(file, c.file_private_data)?;
        let sk: *const u8 = read(sock, c.socket_sk)?;
        let protocol: u16 = read(sk, c.sk_protocol)?;
        let family: u16 = read(sk, c.sk_family)?;
        if protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) {
            return Ok(());
        }
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
                    state: sk_state as u32,
                    comm,
                };
                if SOCKS.insert(cookie, st, 0).is_err() {
                    count(counter::TABLE_FULL);
                }
            }
        }
    }
    Ok(())
}

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

/// `iter/task_file`: called by the kernel for every open file of every process (one
/// call per fd table, not per thread; `task_file_seq_get_next`). Writes an
/// [`FdRecord`] for each fd that refers to a TCP socket, so userspace learns every
/// socket's holders (inherited over fork, passed over unix sockets, or predating the
/// tool) in one read, without a /proc walk.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub fn task_sockets(ctx: *mut c_void) -> i32 {
    // struct bpf_iter__task_file { meta; task; u32 fd; file; }, read directly: the
    // verifier types these loads, and bpf_seq_write needs the typed seq pointer.
    let ctx = ctx as *const u64;
    let task = unsafe { core::ptr::read_volatile(ctx.add(1)) } as *const u8;
    let file = unsafe { core::ptr::read_volatile(ctx.add(3)) } as *const u8;
    if task.is_null() || file.is_null() {
        return 0;
    }
    let fd = unsafe { core::ptr::read_volatile(ctx.add(2) as *const u32) };
    let Some(rec) = socket_fd(task, file, fd) else {
        return 0;
    };
    let meta = unsafe { core::ptr::read_volatile(ctx) } as *const u64;
    let seq = unsafe { core::ptr::read_volatile(meta) } as *mut c_void;
    unsafe {
        bpf_seq_write(
            seq.cast(),
            (&rec as *const FdRecord).cast(),
            core::mem::size_of::<FdRecord>() as u32,
        )
    };
    0
}

#[inline(always)]
fn socket_fd(task: *const u8, file: *const u8, fd: u32) -> Option<FdRecord> {
    let c = cfg();
    unsafe {
        let inode: *const u8 = read(file, c.file_inode).ok()?;
        let mode: u16 = read(inode, c.inode_mode).ok()?;
        if mode & S_IFMT != S_IFSOCK {
            return None;
        }
        let sock: *const u8 = read(file, c.file_private_data).ok()?;
        let sk: *const u8 = read(sock, c.socket_sk).ok()?;
        if sk.is_null() {
            return None;
        }
        let protocol: u16 = read(sk, c.sk_protocol).ok()?;
        let family: u16 = read(sk, c.sk_family).ok()?;
        if protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6) {
            return None;
        }
        let cookie: u64 = read(sk, c.sk_cookie).ok()?;
        let pid: u32 = read(task, c.task_tgid).ok()?;
        let leader: *const u8 = read(task, c.task_group_leader).ok()?;
        let comm: [u8; 16] = read(leader, c.task_comm).ok()?;
        let state: u8 = read(sk, c.sk_state).ok()?;
        Some(FdRecord {
            cookie,
            pid,
            fd,
            comm,
            state,
            _pad: [0; 7],
        })
    }
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
