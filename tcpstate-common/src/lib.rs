//! Types shared by tcpstate's kernel probe (`tcpstate-ebpf`, runs in the kernel) and its
//! userspace loader (`tcpstate-user`).
//!
//! Everything that crosses the kernel/user boundary is a `#[repr(C)]` struct of
//! fixed-width integers and byte arrays with no implicit padding; compile-time
//! assertions below guard the layouts. States travel as plain integers.
#![no_std]

/// Names of maps, globals and programs in the BPF object, used by both sides.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const SOCKS: &str = "SOCKS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const RECENT: &str = "RECENT";
    pub const HIST: &str = "HIST";
    pub const HIST_SPILL: &str = "HIST_SPILL";
    pub const GEN: &str = "GEN";
    pub const TWS: &str = "TWS";
    pub const CONFIG: &str = "CONFIG";
    pub const PROG_SET_STATE: &str = "inet_sock_set_state";
    pub const PROG_SET_STATE_BACKUP: &str = "inet_sock_set_state_backup";
    pub const PROG_ACCEPT_EXIT: &str = "sys_exit_accept";
    pub const PROG_TASK_SOCKETS: &str = "task_sockets";
    pub const PROG_TW_EXPIRE: &str = "tw_timer_expire";
    pub const PROG_ACCEPT4_EXIT: &str = "sys_exit_accept4";
}

pub const IPPROTO_TCP: u16 = 6;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// TCP states as numbered in the kernel's `include/net/tcp_states.h`.
pub mod state {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const SYN_RECV: i32 = 3;
    pub const FIN_WAIT1: i32 = 4;
    pub const FIN_WAIT2: i32 = 5;
    pub const TIME_WAIT: i32 = 6;
    pub const CLOSE: i32 = 7;
    pub const CLOSE_WAIT: i32 = 8;
    pub const LAST_ACK: i32 = 9;
    pub const LISTEN: i32 = 10;
    pub const CLOSING: i32 = 11;
    pub const NEW_SYN_RECV: i32 = 12;
    pub const BOUND_INACTIVE: i32 = 13;
}

/// `Event::prev_ns` when the time spent in the old state is unknown (first transition
/// seen for this socket: it predates the tool, or it was just created).
pub const PREV_UNKNOWN: u64 = u64::MAX;

/// One state transition, sent through the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) at the transition.
    pub ts_ns: u64,
    /// Nanoseconds spent in `oldstate`, or [`PREV_UNKNOWN`].
    pub prev_ns: u64,
    /// Socket cookie: stable for the socket's life and never reused (`ss -e` shows it).
    pub cookie: u64,
    /// Local address; IPv4 uses the first 4 bytes.
    pub saddr: [u8; 16],
    /// Remote address; IPv4 uses the first 4 bytes.
    pub daddr: [u8; 16],
    /// Owning process (tgid), 0 when not known yet.
    pub pid: u32,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    /// Kernel state numbers; `i32` in the kernel but always < 256.
    pub oldstate: u8,
    pub newstate: u8,
    /// `EV_*` bits.
    pub flags: u32,
    /// Owner's process name (its thread-group leader's comm), NUL-padded.
    pub comm: [u8; 16],
}

/// The kernel's socket table was full: this socket is not tracked (no owner, no durations).
pub const EV_UNTRACKED: u32 = 2;

/// What the kernel remembers per live socket (`SOCKS` map, keyed by cookie).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockState {
    /// Time of the last transition, 0 when unknown (the socket predates the tool).
    pub since_ns: u64,
    /// Owner tgid, 0 when unknown.
    pub pid: u32,
    /// Current state.
    pub state: u32,
    pub comm: [u8; 16],
}

/// One open file descriptor that refers to a TCP socket, written by the `task_file`
/// iterator: which process holds which socket (by cookie) under which fd.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdRecord {
    pub cookie: u64,
    /// Process (tgid) holding the fd.
    pub pid: u32,
    pub fd: u32,
    /// The process's name (thread-group leader's comm).
    pub comm: [u8; 16],
    /// The socket's state (`skc_state`).
    pub state: u8,
    pub _pad: [u8; 7],
}

/// Kernel structure offsets (from vmlinux BTF) and settings, set as a read-only global
/// before load so the probe needs neither CO-RE nor kernel headers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    // struct sock / sock_common / inet_sock
    pub sk_family: u32,
    pub sk_protocol: u32,
    pub sk_state: u32,
    pub sk_dport: u32,
    pub sk_rcv_saddr: u32,
    pub sk_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub sk_v6_daddr: u32,
    pub sk_cookie: u32,
    pub inet_sport: u32,
    // task_struct -> files -> fdtable -> file -> socket -> sock
    pub task_files: u32,
    pub task_group_leader: u32,
    pub task_comm: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    pub task_tgid: u32,
    pub file_inode: u32,
    pub inode_mode: u32,
    /// `FLAG_*`: what the probe does with each transition.
    pub flags: u32,
    /// `BY_*`: the histogram key.
    pub hist_by: u32,
    pub _pad0: u32,
    /// Kernel-side filter (see [`Filter`]); applies to what is sent or aggregated.
    pub filter: Filter,
    /// Wake userspace only once this many bytes wait in the ring buffer; userspace also
    /// drains on a timer, so wake-ups are batched rather than one per event.
    pub wakeup_bytes: u64,
    // struct inet_timewait_sock (its sock_common fields share struct sock's offsets)
    pub tw_timer: u32,
    pub tw_substate: u32,
    pub tw_sport: u32,
    pub _pad: u32,
}

/// Send every transition to userspace (`trace`, `linger`).
pub const FLAG_STREAM: u32 = 1;
/// Aggregate time-in-state histograms in the kernel (`hist`).
pub const FLAG_HIST: u32 = 2;
/// Time TIME_WAIT sockets in the kernel, from hand-over to expiry or reuse (`hist`).
pub const FLAG_TIMEWAIT: u32 = 4;
/// Keep a record per socket (`SOCKS`): time in the previous state, owner.
pub const FLAG_TRACK: u32 = 8;
/// Learn owners (the current task on owner-context transitions, and accept()).
pub const FLAG_OWNERS: u32 = 16;

pub const BY_NONE: u32 = 0;
pub const BY_PROCESS: u32 = 1;
pub const BY_RPORT: u32 = 2;
pub const BY_RADDR: u32 = 3;

/// Most values per filter list in the kernel.
pub const FILTER_MAX: usize = 8;

/// Filters the probe applies before sending or aggregating: every non-empty list must
/// match (ports: local or remote; pids: the owner). `family` 0 = any, 4 or 6.
/// `states`: bit `1 << state` for each state the old or new state must be; 0 = any.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub family: u32,
    pub n_ports: u32,
    pub n_lports: u32,
    pub n_rports: u32,
    pub n_pids: u32,
    pub states: u32,
    pub ports: [u16; FILTER_MAX],
    pub lports: [u16; FILTER_MAX],
    pub rports: [u16; FILTER_MAX],
    pub pids: [u32; FILTER_MAX],
}

/// Histogram key: generation (userspace flips it to read an interval whole), the
/// state the time was spent in, and the `--by` key (others zero): `pid` and, in
/// `addr`, the owner's comm for --by process; `port` for --by rport; `addr` and, in
/// `port`, the family for --by raddr.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HistKey {
    pub gen: u32,
    pub state: u32,
    pub pid: u32,
    pub port: u32,
    pub addr: [u8; 16],
}

/// Log-linear buckets over microseconds: values below 16 us get their own bucket,
/// then 16 buckets per power of two, so a bucket is at most 1/16 of its lower bound
/// wide. Up to 2^37 us (38 hours); larger values land in the last bucket.
pub const HIST_SUB: u32 = 16;
pub const HIST_BUCKETS: usize = 560;

/// Bucket of a duration in microseconds.
#[inline(always)]
pub const fn hist_bucket(us: u64) -> usize {
    if us < HIST_SUB as u64 {
        return us as usize;
    }
    let msb = 63 - us.leading_zeros();
    let sub = (us >> (msb - 4)) & (HIST_SUB as u64 - 1);
    let idx = (msb as usize - 3) * HIST_SUB as usize + sub as usize;
    if idx < HIST_BUCKETS {
        idx
    } else {
        HIST_BUCKETS - 1
    }
}

/// Lower bound (inclusive) in microseconds of a bucket.
pub const fn hist_bucket_low(idx: usize) -> u64 {
    if idx < HIST_SUB as usize {
        return idx as u64;
    }
    let msb = idx / HIST_SUB as usize + 3;
    let sub = (idx % HIST_SUB as usize) as u64;
    (1u64 << msb) + (sub << (msb - 4))
}

/// Time-in-state histogram (per CPU in the kernel, summed by userspace).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hist {
    pub count: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
    pub buckets: [u64; HIST_BUCKETS],
}

/// `HistKey::state` of TIME_WAIT samples that a new connection ended by taking the
/// 4-tuple (TIME_WAIT samples that expired use `state::TIME_WAIT`).
pub const HIST_TW_REUSED: u32 = 16 + state::TIME_WAIT as u32;
/// Spill slots per generation (indexed by `HistKey::state`).
pub const HIST_SPILL_STATES: u32 = 32;

/// A TIME_WAIT candidate: when the connection was handed over, its cookie (the
/// timewait socket keeps it) and owner.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TwLive {
    pub start_ns: u64,
    pub cookie: u64,
    pub pid: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
}

/// A connection's 4-tuple, from its own side: the key of a TIME_WAIT candidate.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TwKey {
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub _pad: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// Indices into the per-CPU `COUNTERS` array.
pub mod counter {
    /// Events lost because the ring buffer was full.
    pub const RINGBUF_FULL: u32 = 0;
    /// Sockets not tracked because the `SOCKS` table was full.
    pub const TABLE_FULL: u32 = 1;
    /// accept() results whose socket could not be resolved (owner stays unknown).
    pub const ACCEPT_UNRESOLVED: u32 = 2;
    /// Transitions the primary program missed (the kernel skipped it) and the backup
    /// program handled.
    pub const RECOVERED: u32 = 3;
    /// Transitions dropped because a kernel read failed (should never happen).
    pub const READ_FAILED: u32 = 4;
    /// Samples that went to the spill histogram (kept, but without their --by key).
    pub const HIST_SPILLED: u32 = 5;
    /// FIN_WAIT2/CLOSING->CLOSE hand-overs recorded as TIME_WAIT candidates...
    pub const TW_CANDIDATES: u32 = 6;
    /// ...that expired in TIME_WAIT (their timer fired)...
    pub const TW_EXPIRED: u32 = 7;
    /// ...that a new connection reused...
    pub const TW_REUSED: u32 = 8;
    /// ...whose timewait socket expired in FIN_WAIT2 (an orphan, not TIME_WAIT)...
    pub const TW_NOT_TIMEWAIT: u32 = 9;
    /// ...and those that could not be recorded (map busy).
    pub const TW_UNTRACKED: u32 = 10;
    /// Events submitted to the ring buffer: userspace checks it received them all.
    pub const EMITTED: u32 = 11;
    /// Runs of the primary program; with its `recursion_misses`, every transition the
    /// kernel handed to the probe (so a soak can compare it with tracefs's count).
    pub const PROBE_RUNS: u32 = 12;
    pub const COUNT: u32 = 13;
}

/// Whether the task on the CPU during this transition is the socket's owner.
///
/// These transitions only happen inside the owner's own system calls:
/// `tcp_v4_connect`/`tcp_v6_connect` (CLOSE->SYN_SENT), `inet_csk_listen_start`
/// (CLOSE->LISTEN), `tcp_close`/`tcp_shutdown` via `tcp_close_state`
/// (ESTABLISHED->FIN_WAIT1, CLOSE_WAIT->LAST_ACK) and `tcp_close` of a listener
/// (LISTEN->CLOSE). Every other transition may run in softirq or timer context,
/// where the task on the CPU is unrelated (or the peer, on loopback).
pub const fn owner_is_current(old: i32, new: i32) -> bool {
    matches!(
        (old, new),
        (state::CLOSE, state::SYN_SENT)
            | (state::CLOSE, state::LISTEN)
            | (state::ESTABLISHED, state::FIN_WAIT1)
            | (state::CLOSE_WAIT, state::LAST_ACK)
            | (state::LISTEN, state::CLOSE)
    )
}

const _: () = assert!(core::mem::size_of::<Event>() == 88);
const _: () = assert!(core::mem::size_of::<SockState>() == 32);
const _: () = assert!(core::mem::size_of::<Config>() == 224);
const _: () = assert!(core::mem::size_of::<TwLive>() == 40);
const _: () = assert!(core::mem::size_of::<Filter>() == 104);
const _: () = assert!(core::mem::size_of::<HistKey>() == 32);
const _: () = assert!(core::mem::size_of::<TwKey>() == 40);
const _: () = assert!(core::mem::size_of::<FdRecord>() == 40);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data structs of integers and byte arrays, no padding.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::SockState {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::FdRecord {}
    unsafe impl aya::Pod for super::HistKey {}
    unsafe impl aya::Pod for super::Hist {}
    unsafe impl aya::Pod for super::TwKey {}
    unsafe impl aya::Pod for super::TwLive {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log_linear_and_contiguous() {
        for us in [0u64, 1, 15, 16, 17, 31, 32, 33, 1000, 60_000_000, 1 << 36] {
            let i = hist_bucket(us);
            assert!(hist_bucket_low(i) <= us, "{us}");
            assert!(hist_bucket_low(i + 1) > us, "{us}");
            // A bucket is at most 1/16 of its lower bound wide.
            let (lo, hi) = (hist_bucket_low(i), hist_bucket_low(i + 1));
            assert!(lo < 16 || (hi - lo) * 16 <= lo, "{us}: {lo}..{hi}");
        }
        for i in 0..HIST_BUCKETS - 1 {
            assert_eq!(hist_bucket(hist_bucket_low(i)), i);
        }
        assert_eq!(hist_bucket(u64::MAX), HIST_BUCKETS - 1);
    }

    #[test]
    fn owner_context_transitions() {
        assert!(owner_is_current(state::CLOSE, state::SYN_SENT));
        assert!(owner_is_current(state::ESTABLISHED, state::FIN_WAIT1));
        assert!(owner_is_current(state::CLOSE_WAIT, state::LAST_ACK));
        // Softirq transitions: the CPU's task is not the owner.
        assert!(!owner_is_current(state::ESTABLISHED, state::CLOSE_WAIT));
        assert!(!owner_is_current(state::SYN_SENT, state::ESTABLISHED));
        assert!(!owner_is_current(state::LISTEN, state::SYN_RECV));
        assert!(!owner_is_current(state::FIN_WAIT2, state::CLOSE));
        // A reset can arrive in softirq: ESTABLISHED->CLOSE is ambiguous.
        assert!(!owner_is_current(state::ESTABLISHED, state::CLOSE));
    }
}
