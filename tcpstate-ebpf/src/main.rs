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

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_seq_write,
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
};
use tcpstate_common::{
    counter, hist_bucket, owner_is_current, state, Config, Event, FdRecord, Filter, Hist, HistKey,
    SockState, TwKey, AF_INET, AF_INET6, BY_PROCESS, BY_RADDR, BY_RPORT, EV_TW_CANDIDATE,
    EV_TW_REUSED, EV_UNTRACKED, FILTER_MAX, FLAG_HIST, FLAG_STREAM, FLAG_TIMEWAIT, HIST_BUCKETS,
    IPPROTO_TCP, PREV_UNKNOWN,
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
    _pad: 0,
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
};

/// Size set by userspace at load time.
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Live sockets by cookie. Bounded; a failed insert is counted (`TABLE_FULL`).
/// Not preallocated, so an idle host pays only for the sockets it has.
#[map(name = "SOCKS")]
static SOCKS: HashMap<u64, SockState> = HashMap::with_max_entries(1 << 18, BPF_F_NO_PREALLOC);

/// Time-in-state histograms (`hist`), per CPU so updates need no atomics. Allocated
/// on demand: --by raddr can make many keys.
#[map(name = "HIST")]
static HIST: PerCpuHashMap<HistKey, Hist> =
    PerCpuHashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// Where a sample goes when its HIST key cannot be inserted: the map is full, or the
/// bucket is locked by the program this one interrupted (`htab_lock_bucket` returns
/// -EBUSY when nested on a CPU). Indexed by (generation & 1) * 16 + state; array
/// lookups take no lock. Userspace merges it, without the --by key.
#[map(name = "HIST_SPILL")]
static HIST_SPILL: PerCpuArray<Hist> = PerCpuArray::with_max_entries(32, 0);

/// A zeroed histogram to insert new keys from (too big for the BPF stack).
#[map(name = "HIST_ZERO")]
static HIST_ZERO: PerCpuArray<Hist> = PerCpuArray::with_max_entries(1, 0);

/// Current histogram generation, flipped by userspace at each --interval.
#[map(name = "GEN")]
static GEN: Array<u32> = Array::with_max_entries(1, 0);

/// TIME_WAIT candidates by 4-tuple, to see a new connection take one over. Userspace
/// deletes entries whose timewait socket is gone; LRU bounds what it misses.
#[map(name = "TWS")]
static TWS: LruHashMap<TwKey, u64> = LruHashMap::with_max_entries(1 << 18, 0);

#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Per CPU, the last few transitions the handler completed without leaving a `SOCKS`
/// entry that shows them (the socket closed, or the table was full), so the backup
/// program can tell them from transitions the primary never saw.
#[map(name = "RECENT")]
static RECENT: PerCpuArray<Recent> = PerCpuArray::with_max_entries(1, 0);

const RECENT_SLOTS: usize = 8;

#[repr(C)]
struct Recent {
    slots: [u64; RECENT_SLOTS],
    next: u64,
}

/// A transition's identity: a socket never makes the same transition twice in a row.
#[inline(always)]
fn transition_key(cookie: u64, new: i32) -> u64 {
    (cookie << 8) | (new as u64 & 0xff)
}

#[inline(always)]
fn remember(key: u64) {
    if let Some(r) = RECENT.get_ptr_mut(0) {
        // SAFETY: per-CPU value, only this CPU writes it.
        let r = unsafe { &mut *r };
        let i = (r.next as usize) % RECENT_SLOTS;
        r.slots[i] = key;
        r.next = r.next.wrapping_add(1);
    }
}

#[inline(always)]
fn remembered(key: u64) -> bool {
    match RECENT.get(0) {
        Some(r) => r.slots.contains(&key),
        None => false,
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
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *p += 1 };
    }
}

/// Reads a `T` at `base + off` from kernel memory.
#[inline(always)]
unsafe fn read<T>(base: *const u8, off: u32) -> Result<T, i32> {
    unsafe { bpf_probe_read_kernel(base.add(off as usize).cast::<T>()) }
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
    if handle(ctx.arg(0), ctx.arg(1), ctx.arg(2), false).is_err() {
        count(counter::READ_FAILED);
    }
    0
}

/// Backup program on the same tracepoint: a separate program, so the kernel guards
/// its recursion separately. It runs after the primary for every transition and
/// handles it only if the primary did not: the socket's record does not show the new
/// state yet. Never both, so nothing is counted twice.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_backup(ctx: BtfTracePointContext) -> i32 {
    if handle(ctx.arg(0), ctx.arg(1), ctx.arg(2), true).is_err() {
        count(counter::READ_FAILED);
    }
    0
}

#[inline(always)]
fn handle(sk: *const u8, old: i32, new: i32, backup: bool) -> Result<(), i32> {
    let c = cfg();
    // The tracepoint also fires for SCTP, MPTCP and DCCP sockets.
    let protocol: u16 = unsafe { read(sk, c.sk_protocol)? };
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    let key = transition_key(cookie, new);
    if backup {
        let done = match SOCKS.get_ptr(cookie) {
            // SAFETY: a valid map value.
            Some(st) => (unsafe { (*st).state }) == new as u32,
            None => remembered(key),
        };
        if done {
            return Ok(());
        }
        count(counter::RECOVERED);
    }
    let now = unsafe { bpf_ktime_get_ns() };

    let learned = owner_is_current(old, new);
    let (cur_pid, cur_comm) = if learned {
        current_owner(c)
    } else {
        (0, [0; 16])
    };
    let learned = learned && cur_pid != 0;

    let mut flags = 0;
    let mut prev_ns = PREV_UNKNOWN;
    let (pid, comm) = match SOCKS.get_ptr_mut(cookie) {
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
                remember(key);
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
                    remember(key);
                }
            } else {
                remember(key);
            }
            (cur_pid, cur_comm)
        }
    };

    // Filters that need no socket reads first: most transitions stop here in linger
    // (states) and never need their addresses in hist.
    let f = &c.filter;
    if !passes_owner_and_states(f, old, new, pid) {
        return Ok(());
    }
    let hist_sample = c.flags & FLAG_HIST != 0 && prev_ns != PREV_UNKNOWN;
    let tw_candidate = new == state::CLOSE && (old == state::FIN_WAIT2 || old == state::CLOSING);
    let tw_reuse = (old == state::SYN_SENT && new == state::ESTABLISHED)
        || (old == state::LISTEN && new == state::SYN_RECV);
    let need_addrs = c.flags & FLAG_STREAM != 0
        || (c.flags & FLAG_TIMEWAIT != 0 && (tw_candidate || tw_reuse))
        || f.family != 0
        || f.n_ports != 0
        || f.n_lports != 0
        || f.n_rports != 0
        || (hist_sample && (c.hist_by == BY_RPORT || c.hist_by == BY_RADDR));
    if !need_addrs && !hist_sample {
        return Ok(());
    }

    let mut family = 0u16;
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    let mut sport = 0u16;
    let mut dport = 0u16;
    if need_addrs {
        family = unsafe { read(sk, c.sk_family)? };
        if family == AF_INET {
            let s: [u8; 4] = unsafe { read(sk, c.sk_rcv_saddr)? };
            let d: [u8; 4] = unsafe { read(sk, c.sk_daddr)? };
            saddr[..4].copy_from_slice(&s);
            daddr[..4].copy_from_slice(&d);
        } else if family == AF_INET6 {
            saddr = unsafe { read(sk, c.sk_v6_rcv_saddr)? };
            daddr = unsafe { read(sk, c.sk_v6_daddr)? };
        }
        // inet_sport stays valid at ->CLOSE, unlike skc_num, which inet_put_port()
        // clears.
        sport = u16::from_be(unsafe { read::<u16>(sk, c.inet_sport)? });
        dport = u16::from_be(unsafe { read::<u16>(sk, c.sk_dport)? });
        if !passes_endpoints(f, family, &saddr, &daddr, sport, dport) {
            return Ok(());
        }
    }
    if c.flags & FLAG_HIST != 0 && prev_ns != PREV_UNKNOWN {
        add_sample(c, old, prev_ns, pid, family, dport, &daddr);
    }
    let mut send = c.flags & FLAG_STREAM != 0;
    let mut ev = Event {
        ts_ns: now,
        prev_ns,
        cookie,
        saddr,
        daddr,
        pid,
        sport,
        dport,
        family,
        oldstate: old as u8,
        newstate: new as u8,
        flags,
        comm,
    };
    if c.flags & FLAG_TIMEWAIT != 0 {
        let tuple = TwKey {
            family,
            sport,
            dport,
            _pad: 0,
            saddr,
            daddr,
        };
        if tw_candidate {
            // tcp_time_wait() moves the connection to an inet_timewait_sock, which
            // keeps the cookie (inet_twsk_alloc) and lives on unseen by this tracepoint.
            ev.flags |= EV_TW_CANDIDATE;
            let _ = TWS.insert(tuple, cookie, 0);
            send = true;
        } else if tw_reuse {
            // A new connection with a TIME_WAIT socket's 4-tuple: __inet_hash_connect
            // (tcp_tw_reuse) or tcp_timewait_state_process (a new SYN) killed it.
            if let Some(tw) = unsafe { TWS.get(tuple) }.copied() {
                let _ = TWS.remove(tuple);
                let reused = Event {
                    prev_ns: PREV_UNKNOWN,
                    cookie: tw,
                    oldstate: state::TIME_WAIT as u8,
                    newstate: state::CLOSE as u8,
                    flags: EV_TW_REUSED,
                    ..ev
                };
                emit(c, &reused);
            }
        }
    }
    if send {
        emit(c, &ev);
    }
    Ok(())
}

#[inline(always)]
fn emit(c: &Config, ev: &Event) {
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

/// The user's state and owner filters, applied here so that filtered-out transitions
/// cost no socket reads, no ring space and no wake-ups.
#[inline(always)]
fn passes_owner_and_states(f: &Filter, old: i32, new: i32, pid: u32) -> bool {
    if f.states != 0 && f.states & ((1 << (old & 31)) | (1 << (new & 31))) == 0 {
        return false;
    }
    if f.n_pids != 0 {
        let mut found = false;
        let mut i = 0;
        while i < FILTER_MAX {
            if (i as u32) < f.n_pids && f.pids[i] == pid {
                found = true;
            }
            i += 1;
        }
        if !found {
            return false;
        }
    }
    true
}

/// The user's family and port filters.
#[inline(always)]
fn passes_endpoints(
    f: &Filter,
    family: u16,
    saddr: &[u8; 16],
    daddr: &[u8; 16],
    sport: u16,
    dport: u16,
) -> bool {
    if f.family != 0 {
        let v4 = family == AF_INET || (is_v4_mapped(saddr) && is_v4_mapped(daddr));
        if (f.family == 4) != v4 {
            return false;
        }
    }
    if f.n_ports != 0
        && !listed16(&f.ports, f.n_ports, sport)
        && !listed16(&f.ports, f.n_ports, dport)
    {
        return false;
    }
    if f.n_lports != 0 && !listed16(&f.lports, f.n_lports, sport) {
        return false;
    }
    if f.n_rports != 0 && !listed16(&f.rports, f.n_rports, dport) {
        return false;
    }
    true
}

/// Adds the time spent in `old` to its histogram, under the current generation.
#[inline(always)]
fn add_sample(
    c: &Config,
    old: i32,
    prev_ns: u64,
    pid: u32,
    family: u16,
    dport: u16,
    daddr: &[u8; 16],
) {
    let gen = GEN.get(0).copied().unwrap_or(0);
    let mut key = HistKey {
        gen,
        state: old as u32,
        pid: 0,
        port: 0,
        addr: [0; 16],
    };
    match c.hist_by {
        BY_PROCESS => key.pid = pid,
        BY_RPORT => key.port = u32::from(dport),
        BY_RADDR => {
            key.addr = *daddr;
            key.port = u32::from(family);
        }
        _ => {}
    }
    let spill = || {
        count(counter::HIST_SPILLED);
        HIST_SPILL.get_ptr_mut((gen & 1) * 16 + (old as u32 & 15))
    };
    let h = match HIST.get_ptr_mut(key) {
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
    h.count += 1;
    h.sum_ns += prev_ns;
    if prev_ns > h.max_ns {
        h.max_ns = prev_ns;
    }
    // black_box: keep the bound check on the index itself, where the verifier sees it.
    let b = core::hint::black_box(hist_bucket(prev_ns / 1000));
    if b < HIST_BUCKETS {
        h.buckets[b] += 1;
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
