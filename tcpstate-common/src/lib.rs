//! Types shared by tcpstate's kernel probe (`tcpstate-ebpf`, runs in the kernel) and its
//! userspace loader (`tcpstate-user`).
//!
//! Everything that crosses the kernel/user boundary is a `#[repr(C)]` struct of
//! fixed-width integers and byte arrays with no implicit padding; compile-time
//! assertions below guard the layouts. States travel as plain integers.
#![no_std]

/// Names of maps, globals and programs in the BPF objects, used by both sides.
/// `#[map(name = ...)]` takes only a literal, so the probe repeats these; a host test
/// (`tcpstate-user/tests/object.rs`) checks the built object against [`MAPS`](names::MAPS)
/// and [`PROGRAMS`](names::PROGRAMS).
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const SOCKS: &str = "SOCKS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const RECENT: &str = "RECENT";
    pub const PAIRS: &str = "PAIRS";
    pub const HIST: &str = "HIST";
    pub const HIST_SPILL: &str = "HIST_SPILL";
    pub const HIST_ZERO: &str = "HIST_ZERO";
    pub const GEN: &str = "GEN";
    pub const TWS: &str = "TWS";
    pub const TW_FN: &str = "TW_FN";
    pub const CGROUPS: &str = "CGROUPS";
    /// A global (read-only data), not a map.
    pub const CONFIG: &str = "CONFIG";
    pub const PROG_SET_STATE: &str = "inet_sock_set_state";
    pub const PROG_SET_STATE_BACKUP: &str = "inet_sock_set_state_backup";
    pub const PROG_TASK_SOCKETS: &str = "task_sockets";
    pub const PROG_TW_EXPIRE: &str = "tw_timer_expire";
    /// `tp_btf/timer_cancel`: a TIME_WAIT candidate's timer deleted early.
    pub const PROG_TW_CANCEL: &str = "tw_timer_cancel";
    /// `iter/task_file` that seeds the `SOCKS` records of existing sockets.
    pub const PROG_SEED_OWNERS: &str = "seed_owners";
    /// Where the verifier refuses `seed_owners`: `iter/task_file` that indexes each
    /// existing socket's owner by its address in `SEED_OWNERS`...
    pub const PROG_SEED_INDEX: &str = "seed_index";
    /// ...and `iter/tcp` (run in each network namespace) that writes them into
    /// `SOCKS`, from a socket pointer the verifier trusts.
    pub const PROG_SEED_ADOPT: &str = "seed_adopt";
    pub const SEED_OWNERS: &str = "SEED_OWNERS";
    /// The fd walk's per-process tally between iterator calls (see `FD_TALLY`).
    pub const TALLY: &str = "TALLY";

    /// Every map of the `tcpstate` probe object.
    pub const MAPS: &[&str] = &[
        EVENTS,
        SOCKS,
        COUNTERS,
        RECENT,
        HIST,
        HIST_SPILL,
        HIST_ZERO,
        GEN,
        TWS,
        TW_FN,
        PAIRS,
        CGROUPS,
        SEED_OWNERS,
        TALLY,
    ];
    /// Every global of the `tcpstate` probe object that userspace sets.
    pub const GLOBALS: &[&str] = &[CONFIG];
    /// Every program of the `tcpstate` probe object.
    pub const PROGRAMS: &[&str] = &[
        PROG_SET_STATE,
        PROG_SET_STATE_BACKUP,
        PROG_TASK_SOCKETS,
        PROG_TW_EXPIRE,
        PROG_TW_CANCEL,
        PROG_SEED_OWNERS,
        PROG_SEED_INDEX,
        PROG_SEED_ADOPT,
    ];

    /// aya-log's ring buffer and level global, defined by aya-log-ebpf in the probe.
    /// Userspace sets the level before load (0 = off) and reads the ring buffer with
    /// `aya_log::EbpfLogger`.
    pub const AYA_LOGS: &str = "AYA_LOGS";
    pub const AYA_LOG_LEVEL: &str = "AYA_LOG_LEVEL";
    pub const LOG_MAPS: &[&str] = &[AYA_LOGS];
    pub const LOG_GLOBALS: &[&str] = &[AYA_LOG_LEVEL];

    /// The calibration object (`calib`, for the benchmark): the cheapest possible
    /// program on the same tracepoint, and one that only counts.
    pub const CALIB_EMPTY: &str = "calib_empty";
    pub const CALIB_COUNT: &str = "calib_count";
    /// Per-CPU array of one u64: `calib_count`'s runs.
    pub const CALIB_COUNT_MAP: &str = "CALIB_COUNT";
    pub const CALIB_MAPS: &[&str] = &[CALIB_COUNT_MAP];
    pub const CALIB_PROGRAMS: &[&str] = &[CALIB_EMPTY, CALIB_COUNT];
}

pub mod filter;
pub mod state;

pub use filter::is_v4_mapped;

pub const IPPROTO_TCP: u16 = 6;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

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
    /// Where `pid` came from: `OWNER_NONE`, `OWNER_SOCKET` or `OWNER_LISTENER`.
    pub owner_from: u8,
    /// Explicit padding (always 0): the struct's 8-byte alignment rounds it up anyway.
    pub _pad: [u8; 3],
    /// Owner's process name (its thread-group leader's comm), NUL-padded.
    pub comm: [u8; 16],
    /// The v2 cgroup that created the socket (`sk->sk_cgrp_data.cgroup->kn->id`, the
    /// cgroup directory's inode), 0 when not read; userspace maps it to a container.
    pub cgroup_id: u64,
    /// The socket's network namespace (`sock_net(sk)->ns.inum`), 0 when not read.
    pub netns: u32,
    /// Explicit padding (always 0).
    pub _pad2: u32,
}

/// No owner known (`Event::owner_from`, `SockState::owner_from`).
pub const OWNER_NONE: u8 = 0;
/// The owner was seen on this socket: it ran one of the socket's owner-context
/// transitions (connect, listen, close), or holds an fd for it (startup seed).
pub const OWNER_SOCKET: u8 = 1;
/// Inherited from the listening socket this one was accepted from (the socket-local
/// storage is cloned with it): the process that listened, until the accepting
/// process shows itself on the socket.
pub const OWNER_LISTENER: u8 = 2;

/// What the kernel remembers per socket: its socket-local storage (`SOCKS`, a
/// `BPF_MAP_TYPE_SK_STORAGE` map created with `BPF_F_CLONE`), freed with the socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockState {
    /// Time of the last transition, 0 when unknown (the socket predates the tool,
    /// or it is closed).
    pub since_ns: u64,
    /// Owner tgid, 0 when unknown.
    pub pid: u32,
    /// `OWNER_*`: where `pid` came from.
    pub owner_from: u8,
    /// `SOCK_*` bits.
    pub flags: u8,
    /// The last transition a program handled: [`SOCK_HANDLED`] `| old << 8 | new`
    /// (a socket's consecutive transitions always differ), so that the backup
    /// program knows whether the primary ran for this one.
    pub handled: u16,
    pub comm: [u8; 16],
}

/// Set in `SockState::handled` (a zeroed record matches no transition).
pub const SOCK_HANDLED: u16 = 0x8000;

/// `SockState::flags`: this socket's LISTEN -> SYN_RECV is yet to be handled, at its
/// next transition: before 6.15 the kernel traces it before the child has its
/// 4-tuple and cookie (`inet_csk_clone_lock()` sets TCP_SYN_RECV, then the ports and
/// `sk_cookie`; `tcp_v4_syn_recv_sock()` the addresses), so it is handled once they
/// are set, with the time it happened.
pub const SOCK_SYN_RECV_DEFERRED: u8 = 1;
/// `SockState::flags`: the transition probe has handled this socket before (a record
/// without it, at a transition that no new socket starts with, belongs to a socket
/// older than tcpstate: its owner may wait in `SEED_OWNERS`).
pub const SOCK_SEEN: u8 = 2;

/// An existing socket's owner found by the startup walk, keyed by the socket's kernel
/// address in `SEED_OWNERS` until the transition probe takes it at the socket's next
/// transition (or, for a listener, `seed_adopt` writes it into `SOCKS` at startup).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeedOwner {
    /// The socket's cookie when it had one (0: not made yet), so an entry can never
    /// be taken by another socket at the same address.
    pub cookie: u64,
    pub pid: u32,
    /// `OWNER_SOCKET` (an fd holds it) or `OWNER_LISTENER` (it waits in the accept
    /// queue of a listener `pid` holds).
    pub owner_from: u8,
    pub _pad: [u8; 3],
    pub comm: [u8; 16],
}

/// What `seed_index` writes for each socket it indexed: the socket's network
/// namespace and a way into it (an fd some process holds for the socket or, for a
/// connection in an accept queue, for its listener): `iter/tcp` lists only the
/// namespace it was opened in.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeedRecord {
    pub netns: u32,
    pub pid: u32,
    pub fd: u32,
    /// [`SEED_DIRECT`], [`SEED_INDEXED`] or [`SEED_LISTENER`].
    pub how: u32,
}

/// `SeedRecord::how`: the socket's record was made (a listener, on the direct route)...
pub const SEED_DIRECT: u32 = 0;
/// ...its owner waits in `SEED_OWNERS` for its next transition...
pub const SEED_INDEXED: u32 = 1;
/// ...or it is a listener whose record `seed_adopt` must make, in namespace `netns`
/// (every connection it accepts later starts with a copy of it).
pub const SEED_LISTENER: u32 = 2;

/// One open file descriptor that refers to a TCP socket, written by the `task_file`
/// iterator: which process holds which socket (by cookie) under which fd, and what
/// the kernel knows of the socket (`linger`'s diagnosis). Also written for each
/// connection waiting in the accept queue of a listener the process holds
/// (`queued` 1, `fd` [`FD_NONE`]): the process that is not accepting.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdRecord {
    /// The socket cookie; for a socket that has none yet, its kernel address.
    pub cookie: u64,
    /// Process (tgid) holding the fd.
    pub pid: u32,
    /// The fd, or [`FD_NONE`] for a connection in a listener's accept queue.
    pub fd: u32,
    /// The process's name (thread-group leader's comm).
    pub comm: [u8; 16],
    /// The socket's state (`skc_state`).
    pub state: u8,
    /// 1: not accepted yet, waiting in the queue of the listener at `listener_fd`.
    pub queued: u8,
    /// AF_INET or AF_INET6 (0 when the addresses were not read).
    pub family: u16,
    pub sport: u16,
    /// Remote port; 0 for a socket that never connected.
    pub dport: u16,
    /// Local and remote address; IPv4 uses the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// The socket's network namespace (`skc_net->ns.inum`, as `readlink
    /// /proc/PID/ns/net` prints it).
    pub netns: u32,
    /// The listener's fd for a queued connection, else [`FD_NONE`].
    pub listener_fd: u32,
    /// `jiffies` (low 32 bits) when the record was written: the "now" of the
    /// timestamps below, which are jiffies too (`tcp_jiffies32`).
    pub now_jiffies: u32,
    /// `tcp_sock.rcv_tstamp`: the last acceptable ACK received (`tcp_ack()`).
    pub rcv_tstamp: u32,
    /// `tcp_sock.lsndtime`: the last data sent (`tcp_event_data_sent()`).
    pub lsndtime: u32,
    /// `inet_connection_sock.icsk_ack.lrcvtime`: the last data received
    /// (`tcp_event_data_recv()`).
    pub lrcvtime: u32,
    /// `rcv_nxt - copied_seq` is the Recv-Q: 0 when everything, FIN included, was read.
    pub rcv_nxt: u32,
    pub copied_seq: u32,
    /// `sk_err` (ECONNRESET after a reset, ETIMEDOUT after keepalive gave up).
    pub sk_err: i32,
    /// The listener's accept queue length and limit (`sk_ack_backlog`,
    /// `sk_max_ack_backlog`) for a queued connection and for a listener's own
    /// record (state LISTEN), else 0.
    pub ack_backlog: u32,
    pub max_ack_backlog: u32,
    /// Spare (userspace keeps its holder count here: `model::holders`).
    pub _pad: u32,
    /// `sk_flags` (low 32 bits): `SOCK_KEEPOPEN` (SO_KEEPALIVE), `SOCK_LINGER`.
    pub sk_flags: u32,
    /// `sk_lingertime` in jiffies (low 32 bits): 0 with `SOCK_LINGER` is SO_LINGER(0).
    pub lingertime: u32,
    /// `tcp_sock.keepalive_time` in jiffies (TCP_KEEPIDLE); 0: the namespace's
    /// `tcp_keepalive_time` (`keepalive_time_when()`).
    pub keepalive_time: u32,
    /// A listener's `sk_drops` (every listen drop raises it: `tcp_listendrop()`),
    /// else 0; 0 too when the kernel's BTF has no `sock.sk_drops`.
    pub sk_drops: u32,
    /// A [`FD_TALLY`] record: how many fds the process has open (every fd the
    /// iterator visited in it), else 0.
    pub open_fds: u32,
    /// The socket's namespace's `ip_local_port_range` as `low | high << 16` (0: not
    /// read); a tally: 0.
    pub port_range: u32,
    /// A [`FD_TALLY`] record: the process's soft RLIMIT_NOFILE (`u64::MAX`:
    /// unlimited), else 0.
    pub nofile: u64,
}

impl FdRecord {
    /// A record with no socket, no fd and every fact zero: each writer fills in what
    /// it knows (`..FdRecord::EMPTY`), so a new field is one edit here.
    pub const EMPTY: FdRecord = FdRecord {
        cookie: 0,
        pid: 0,
        fd: FD_NONE,
        comm: [0; 16],
        state: 0,
        queued: 0,
        family: 0,
        sport: 0,
        dport: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        netns: 0,
        listener_fd: FD_NONE,
        now_jiffies: 0,
        rcv_tstamp: 0,
        lsndtime: 0,
        lrcvtime: 0,
        rcv_nxt: 0,
        copied_seq: 0,
        sk_err: 0,
        ack_backlog: 0,
        max_ack_backlog: 0,
        _pad: 0,
        sk_flags: 0,
        lingertime: 0,
        keepalive_time: 0,
        sk_drops: 0,
        open_fds: 0,
        port_range: 0,
        nofile: 0,
    };
}

/// `enum sock_flags` bits in `FdRecord::sk_flags` (include/net/sock.h; the same in
/// every kernel since 2.6).
pub const SOCK_KEEPOPEN: u32 = 3;
pub const SOCK_LINGER: u32 = 4;

/// `FdRecord::fd` / `listener_fd` when there is none.
pub const FD_NONE: u32 = u32::MAX;

/// `FdRecord::fd` of a process's tally, written after its last fd (before the next
/// process's first, or at the end of the walk) for each process that got a socket
/// record: `pid`, `comm`, `open_fds`, `nofile`. The fd counts and limits come from
/// the kernel, not from /proc/PID/fd (which needs CAP_SYS_PTRACE).
pub const FD_TALLY: u32 = u32::MAX - 1;

/// `Config::iter_flags`: also list the connections waiting in the accept queue of
/// each listener held by an fd.
pub const ITER_ACCEPT_QUEUE: u32 = 1;
/// Most connections listed per listener and walk. An open-coded loop, which the
/// verifier walks iteration by iteration: 64 costs ~0.2 s of load time here, 256
/// exceeded its 1M-instruction limit (`bpf_loop` would verify the step once, but
/// needs BTF func_info in the object, which the build does not emit yet). One
/// listener's records must also fit the iterator's 32 KiB output buffer
/// (`bpf_seq_read` fails a larger object with E2BIG). The queue's length is
/// reported whole (`ack_backlog`).
pub const ITER_QUEUE_MAX: u32 = 64;

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
    /// `SKIP_*`: parts of the transition probe left out, for the bench's per-part
    /// profile only (0 in every command; the verifier drops the checks, CONFIG being
    /// frozen).
    pub skip: u32,
    /// Kernel-side filter (see [`Filter`]); applies to what is sent or aggregated.
    pub filter: Filter,
    /// Wake userspace only once this many bytes wait in the ring buffer; userspace also
    /// drains on a timer, so wake-ups are batched rather than one per event.
    pub wakeup_bytes: u64,
    // struct inet_timewait_sock (its sock_common fields share struct sock's offsets)
    pub tw_timer: u32,
    pub tw_substate: u32,
    pub tw_sport: u32,
    /// `timer_list.expires` and `.function` (the timewait socket's timer).
    pub timer_expires: u32,
    pub timer_function: u32,
    /// `skc_num`: the local port in host order, in struct sock_common itself (so a
    /// plain load), valid until ->CLOSE (inet_put_port() clears it).
    pub sk_num: u32,
    // The fd walk (`iter/task_file`, `linger`).
    /// Keep only sockets in these states (`1 << state`); 0 keeps every TCP socket.
    pub iter_states: u32,
    /// `ITER_*`.
    pub iter_flags: u32,
    // struct tcp_sock / inet_connection_sock (beyond struct sock: checked reads)
    pub tcp_rcv_tstamp: u32,
    pub tcp_lsndtime: u32,
    pub icsk_lrcvtime: u32,
    pub tcp_rcv_nxt: u32,
    pub tcp_copied_seq: u32,
    pub icsk_accept_head: u32,
    // struct sock, struct net, struct request_sock
    pub sk_err: u32,
    pub sk_ack_backlog: u32,
    pub sk_max_ack_backlog: u32,
    pub sk_net: u32,
    pub net_ns_inum: u32,
    pub req_dl_next: u32,
    pub req_sk: u32,
    // sock -> sk_cgrp_data.cgroup -> kn -> id: the socket's v2 cgroup id.
    pub sk_cgrp: u32,
    pub cgroup_kn: u32,
    pub kn_id: u32,
    // struct sock / tcp_sock: keepalive and linger (`doctor`'s keepalive topic).
    pub sk_flags: u32,
    pub sk_lingertime: u32,
    pub tcp_keepalive_time: u32,
    /// `sock.sk_drops` (atomic_t); 0 when BTF has none: not read.
    pub sk_drops: u32,
    /// task_struct -> signal -> rlim[RLIMIT_NOFILE] (the fd tally's limit); 0: not read.
    pub task_signal: u32,
    pub signal_rlim: u32,
    /// `net.ipv4.ip_local_ports.range`; 0: not read. `int[2]` until 6.7, one u32
    /// (`low | high << 16`) since (`inet_get_local_port_range()`): `port_range_packed`.
    pub net_port_range: u32,
    pub port_range_packed: u32,
}

impl Config {
    /// All zero: the probe's initialiser (a `static` needs a const one), which
    /// userspace overwrites before load. Written once here, so a new field is one edit.
    pub const ZERO: Config = Config {
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
        skip: 0,
        filter: Filter::ZERO,
        wakeup_bytes: 0,
        tw_timer: 0,
        tw_substate: 0,
        tw_sport: 0,
        timer_expires: 0,
        timer_function: 0,
        sk_num: 0,
        iter_states: 0,
        iter_flags: 0,
        tcp_rcv_tstamp: 0,
        tcp_lsndtime: 0,
        icsk_lrcvtime: 0,
        tcp_rcv_nxt: 0,
        tcp_copied_seq: 0,
        icsk_accept_head: 0,
        sk_err: 0,
        sk_ack_backlog: 0,
        sk_max_ack_backlog: 0,
        sk_net: 0,
        net_ns_inum: 0,
        req_dl_next: 0,
        req_sk: 0,
        sk_cgrp: 0,
        cgroup_kn: 0,
        kn_id: 0,
        sk_flags: 0,
        sk_lingertime: 0,
        tcp_keepalive_time: 0,
        sk_drops: 0,
        task_signal: 0,
        signal_rlim: 0,
        net_port_range: 0,
        port_range_packed: 0,
    };
}

/// Parts of the transition probe the bench's profile can leave out (`Config::skip`):
/// what each costs is the difference. The output is wrong without them.
pub mod skip {
    /// The per-CPU mark for the backup program (and the backup's check).
    pub const MARK: u32 = 1;
    /// The socket cookie (a load, and the helper on a socket's first transition).
    pub const COOKIE: u32 = 2;
    /// `bpf_ktime_get_ns()`.
    pub const CLOCK: u32 = 4;
    /// The current task as owner (owner-context transitions).
    pub const OWNER: u32 = 8;
    /// The socket's record in socket-local storage.
    pub const STORAGE: u32 = 16;
    /// The socket's namespace and cgroup.
    pub const IDENTITY: u32 = 32;
    /// The socket's addresses and ports.
    pub const ADDRS: u32 = 64;
    /// The ring buffer (reserve, copy, submit).
    pub const RING: u32 = 128;
    /// The probe's own counters (runs, events submitted).
    pub const COUNTERS: u32 = 256;
    /// Every part, by name (the bench's `--profile` rows).
    pub const ALL: &[(&str, u32)] = &[
        ("mark", MARK),
        ("cookie", COOKIE),
        ("clock", CLOCK),
        ("owner", OWNER),
        ("storage", STORAGE),
        ("identity", IDENTITY),
        ("addresses", ADDRS),
        ("ring", RING),
        ("counters", COUNTERS),
    ];
}

/// Send every transition to userspace (`trace`, `linger`).
pub const FLAG_STREAM: u32 = 1;
/// Aggregate time-in-state histograms in the kernel (`hist`).
pub const FLAG_HIST: u32 = 2;
/// Time TIME_WAIT sockets in the kernel, from hand-over to expiry or reuse (`hist`).
pub const FLAG_TIMEWAIT: u32 = 4;
/// Keep a record per socket (`SOCKS`): time in the previous state, owner.
pub const FLAG_TRACK: u32 = 8;
/// Learn owners (the current task on owner-context transitions; accepted sockets
/// inherit their listener's).
pub const FLAG_OWNERS: u32 = 16;
/// Count transitions by (old, new) state in `PAIRS`, after the filters (`serve`).
pub const FLAG_PAIRS: u32 = 32;

/// `PAIRS` slots: states are < 16 (`include/net/tcp_states.h`), so (old, new) is
/// one of 16 x 16.
pub const PAIR_SLOTS: u32 = 256;

/// The `PAIRS` slot of a transition.
#[inline(always)]
pub const fn pair_slot(old: i32, new: i32) -> u32 {
    ((old as u32 & 15) << 4) | (new as u32 & 15)
}

pub const BY_NONE: u32 = 0;
pub const BY_PROCESS: u32 = 1;
pub const BY_RPORT: u32 = 2;
pub const BY_RADDR: u32 = 3;
/// By the socket's cgroup id (`sk_cgrp_data`), in `HistKey::addr`'s first 8 bytes;
/// userspace names its container.
pub const BY_CONTAINER: u32 = 4;

/// Most cgroup ids the kernel's container/cgroup filter holds (`CGROUPS`).
pub const CGROUPS_MAX: u32 = 1 << 14;

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
    /// `--netns`: the socket's namespace inode must be one of these.
    pub n_netns: u32,
    /// Non-zero: the socket's cgroup id must be in the `CGROUPS` map (`--container`,
    /// `--cgroup`; userspace keeps the map current as cgroups appear).
    pub cgroups: u32,
    pub netns: [u32; FILTER_MAX],
}

impl Filter {
    /// No filter: everything passes.
    pub const ZERO: Filter = Filter {
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
        n_netns: 0,
        cgroups: 0,
        netns: [0; FILTER_MAX],
    };

    /// Whether the identity filters are set, so the namespace and cgroup must be read.
    #[inline(always)]
    pub const fn needs_identity(&self) -> bool {
        self.n_netns != 0 || self.cgroups != 0
    }

    /// The namespace filter (`--netns`).
    #[inline(always)]
    pub const fn passes_netns(&self, netns: u32) -> bool {
        self.n_netns == 0 || filter::listed_u32(&self.netns, self.n_netns as usize, netns)
    }

    /// The state filter (see [`filter::states_pass`]).
    #[inline(always)]
    pub const fn passes_states(&self, old: i32, new: i32) -> bool {
        filter::states_pass(self.states, old, new)
    }

    /// The owner filter (see [`filter::pid_passes`]).
    #[inline(always)]
    pub const fn passes_pid(&self, pid: u32) -> bool {
        filter::pid_passes(&self.pids, self.n_pids as usize, pid)
    }

    /// Whether the family or port filters are set, so the addresses must be read.
    #[inline(always)]
    pub const fn needs_endpoints(&self) -> bool {
        self.family != 0 || self.n_ports != 0 || self.n_lports != 0 || self.n_rports != 0
    }

    /// The family and port filters, on a socket's family, addresses and ports.
    #[inline(always)]
    pub const fn passes_endpoints(
        &self,
        family: u16,
        saddr: &[u8; 16],
        daddr: &[u8; 16],
        sport: u16,
        dport: u16,
    ) -> bool {
        (self.family == 0
            || filter::family_passes(self.family, filter::user_family(family, saddr, daddr)))
            && filter::ports_pass(
                (&self.ports, self.n_ports as usize),
                (&self.lports, self.n_lports as usize),
                (&self.rports, self.n_rports as usize),
                sport,
                dport,
            )
    }
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

impl HistKey {
    /// The key a sample gets under `by` (`BY_*`): `pid` and `addr` (the owner's comm,
    /// see [`hist_addr`]) for --by process, the remote port for --by rport, the remote
    /// address and its family for --by raddr; the other fields stay zero, so one key
    /// per value of the --by key. `state` is a state or [`HIST_TW_REUSED`].
    #[inline(always)]
    pub const fn for_sample(
        by: u32,
        gen: u32,
        state: u32,
        pid: u32,
        family: u16,
        dport: u16,
        addr: &[u8; 16],
    ) -> HistKey {
        let mut key = HistKey {
            gen,
            state,
            pid: 0,
            port: 0,
            addr: [0; 16],
        };
        match by {
            BY_PROCESS => {
                key.pid = pid;
                key.addr = *addr;
            }
            BY_CONTAINER => key.addr = *addr,
            BY_RPORT => key.port = dport as u32,
            BY_RADDR => {
                key.addr = *addr;
                key.port = family as u32;
            }
            _ => {}
        }
        key
    }

    /// The remote port of a --by rport key.
    pub const fn rport(&self) -> u16 {
        self.port as u16
    }

    /// The address family of a --by raddr key.
    pub const fn raddr_family(&self) -> u16 {
        self.port as u16
    }
}

/// What a sample's `HistKey::addr` holds under `by`: the owner's comm for --by process
/// (the process may be gone by the report), the owner bytes of [`hist_owner`] for --by
/// container, the remote address otherwise.
#[inline(always)]
pub const fn hist_addr<'a>(by: u32, comm: &'a [u8; 16], daddr: &'a [u8; 16]) -> &'a [u8; 16] {
    if by == BY_PROCESS || by == BY_CONTAINER {
        comm
    } else {
        daddr
    }
}

/// The bytes that stand for the owner in a sample's key and in `TwLive::comm`: the
/// socket's cgroup id (little-endian) for --by container, the comm otherwise.
#[inline(always)]
pub const fn hist_owner(by: u32, comm: &[u8; 16], cgroup_id: u64) -> [u8; 16] {
    if by == BY_CONTAINER {
        (cgroup_id as u128).to_le_bytes()
    } else {
        *comm
    }
}

/// The `HIST_SPILL` slot of (generation, state): two generations of
/// [`HIST_SPILL_STATES`] slots.
#[inline(always)]
pub const fn hist_spill_slot(gen: u32, state: u32) -> u32 {
    (gen & 1) * HIST_SPILL_STATES + (state % HIST_SPILL_STATES)
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
    /// Non-zero once its timer was detached (`tw_timer_cancel`): the milliseconds
    /// from `start_ns` to then, plus 1. Gauges leave it out; a new
    /// connection on its 4-tuple (reuse) or a re-armed timer's expiry still ends it.
    pub cancelled_ms: u32,
    /// `hist_owner`'s bytes: the comm, or the cgroup id for --by container.
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
    /// The namespace inode: two pods' connections may share a 4-tuple.
    pub netns: u32,
    pub _pad2: u32,
}

/// Indices into the per-CPU `COUNTERS` array.
pub mod counter {
    /// Events lost because the ring buffer was full.
    pub const RINGBUF_FULL: u32 = 0;
    /// Sockets not tracked because their `SOCKS` record could not be created
    /// (`bpf_sk_storage_get` failed: out of memory, or the socket is being freed).
    pub const TABLE_FULL: u32 = 1;
    /// Sockets whose owner the startup seed (`seed_owners`) recorded.
    pub const SEEDED: u32 = 2;
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
    /// Candidates whose timer was deleted before its `expires` (`tw_timer_cancel`):
    /// killed (`ss -K`, a reset, the namespace's exit) or taken by a new connection.
    pub const TW_CANCELLED: u32 = 13;
    /// Events submitted to the ring buffer: userspace checks it received them all.
    pub const EMITTED: u32 = 11;
    /// Runs of the primary program; with its `recursion_misses`, every transition the
    /// kernel handed to the probe (so a soak can compare it with tracefs's count).
    pub const PROBE_RUNS: u32 = 12;
    pub const COUNT: u32 = 14;
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

const _: () = assert!(core::mem::size_of::<Event>() == 104);
const _: () = assert!(core::mem::size_of::<SockState>() == 32);
const _: () = assert!(core::mem::size_of::<Config>() == 376);
const _: () = assert!(core::mem::size_of::<TwLive>() == 40);
const _: () = assert!(core::mem::size_of::<Filter>() == 144);
const _: () = assert!(core::mem::size_of::<HistKey>() == 32);
const _: () = assert!(core::mem::size_of::<TwKey>() == 48);
const _: () = assert!(core::mem::size_of::<FdRecord>() == 152);
const _: () = assert!(core::mem::size_of::<SeedOwner>() == 32);
const _: () = assert!(core::mem::size_of::<SeedRecord>() == 16);

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
    unsafe impl aya::Pod for super::SeedOwner {}
    unsafe impl aya::Pod for super::SeedRecord {}
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

    #[test]
    fn zero_is_default() {
        assert_eq!(Config::ZERO, Config::default());
        assert_eq!(Filter::ZERO, Filter::default());
    }

    fn kfilter() -> Filter {
        let mut f = Filter::ZERO;
        f.ports[..2].copy_from_slice(&[1, 50000]);
        f.n_ports = 2;
        f
    }

    #[test]
    fn kernel_filter_methods() {
        let v4 = [0u8; 16];
        assert!(Filter::ZERO.passes_states(state::LISTEN, state::CLOSE));
        assert!(Filter::ZERO.passes_pid(0));
        assert!(!Filter::ZERO.needs_endpoints());
        assert!(Filter::ZERO.passes_endpoints(AF_INET6, &[1; 16], &[2; 16], 1, 2));
        let mut f = kfilter();
        assert!(f.needs_endpoints());
        assert!(f.passes_endpoints(AF_INET, &v4, &v4, 8080, 50000));
        assert!(!f.passes_endpoints(AF_INET, &v4, &v4, 8080, 50001));
        // Stale entries past n_ports do not count.
        f.n_ports = 1;
        assert!(!f.passes_endpoints(AF_INET, &v4, &v4, 8080, 50000));
        let mut f = Filter::ZERO;
        f.family = 6;
        assert!(f.needs_endpoints());
        assert!(!f.passes_endpoints(AF_INET, &v4, &v4, 1, 2));
        assert!(f.passes_endpoints(AF_INET6, &[0x20; 16], &[0x20; 16], 1, 2));
        let mut m = [0u8; 16];
        m[10] = 0xff;
        m[11] = 0xff;
        assert!(
            !f.passes_endpoints(AF_INET6, &m, &m, 1, 2),
            "mapped is IPv4"
        );
        f.family = 4;
        assert!(f.passes_endpoints(AF_INET6, &m, &m, 1, 2));
        let mut f = Filter::ZERO;
        f.pids[..2].copy_from_slice(&[3, 7]);
        f.n_pids = 2;
        assert!(f.passes_pid(7) && !f.passes_pid(0) && !f.passes_pid(5));
        assert!(!f.needs_endpoints(), "pids need no addresses");
        let mut f = Filter::ZERO;
        f.states = state::mask(&[state::CLOSE_WAIT]);
        assert!(f.passes_states(state::ESTABLISHED, state::CLOSE_WAIT));
        assert!(!f.passes_states(state::LAST_ACK, state::CLOSE));
        f.lports[0] = 80;
        f.n_lports = 1;
        assert!(f.passes_endpoints(AF_INET, &v4, &v4, 80, 1));
        assert!(!f.passes_endpoints(AF_INET, &v4, &v4, 1, 80));
        f.n_lports = 0;
        f.rports[0] = 80;
        f.n_rports = 1;
        assert!(f.passes_endpoints(AF_INET, &v4, &v4, 1, 80));
        assert!(!f.passes_endpoints(AF_INET, &v4, &v4, 80, 1));
    }

    #[test]
    fn hist_keys_per_mode() {
        let comm = *b"nginx\0\0\0\0\0\0\0\0\0\0\0";
        let mut daddr = [0u8; 16];
        daddr[..4].copy_from_slice(&[10, 0, 0, 9]);
        let st = state::CLOSE_WAIT as u32;
        let k = |by| HistKey::for_sample(by, 3, st, 42, AF_INET, 443, hist_addr(by, &comm, &daddr));
        assert_eq!(
            k(BY_NONE),
            HistKey {
                gen: 3,
                state: st,
                pid: 0,
                port: 0,
                addr: [0; 16]
            }
        );
        assert_eq!(
            k(BY_PROCESS),
            HistKey {
                gen: 3,
                state: st,
                pid: 42,
                port: 0,
                addr: comm
            }
        );
        assert_eq!(
            k(BY_RPORT),
            HistKey {
                gen: 3,
                state: st,
                pid: 0,
                port: 443,
                addr: [0; 16]
            }
        );
        assert_eq!(k(BY_RPORT).rport(), 443);
        assert_eq!(
            k(BY_RADDR),
            HistKey {
                gen: 3,
                state: st,
                pid: 0,
                port: AF_INET as u32,
                addr: daddr
            }
        );
        assert_eq!(k(BY_RADDR).raddr_family(), AF_INET);
        // An unknown mode keys like BY_NONE.
        assert_eq!(k(99), k(BY_NONE));
        // Samples that differ only in fields their mode ignores share a key.
        let other = HistKey::for_sample(BY_RPORT, 3, st, 7, AF_INET6, 443, &[9; 16]);
        assert_eq!(other, k(BY_RPORT));
        assert_eq!(hist_addr(BY_PROCESS, &comm, &daddr), &comm);
        assert_eq!(hist_addr(BY_RADDR, &comm, &daddr), &daddr);
        assert_eq!(hist_addr(BY_NONE, &comm, &daddr), &daddr);
        // --by container: the cgroup id, whatever the pid.
        let owner = hist_owner(BY_CONTAINER, &comm, 0x1234);
        assert_eq!(u64::from_le_bytes(owner[..8].try_into().unwrap()), 0x1234);
        let c = HistKey::for_sample(BY_CONTAINER, 3, st, 42, AF_INET, 443, &owner);
        assert_eq!((c.pid, c.port, c.addr), (0, 0, owner));
        assert_eq!(hist_owner(BY_PROCESS, &comm, 0x1234), comm);
    }

    #[test]
    fn spill_slots_split_by_generation() {
        assert_eq!(hist_spill_slot(0, 8), 8);
        assert_eq!(hist_spill_slot(1, 8), HIST_SPILL_STATES + 8);
        assert_eq!(hist_spill_slot(2, 8), 8);
        assert_eq!(
            hist_spill_slot(1, HIST_TW_REUSED),
            HIST_SPILL_STATES + HIST_TW_REUSED
        );
        for gen in 0..4 {
            for st in 0..64 {
                assert!(hist_spill_slot(gen, st) < 2 * HIST_SPILL_STATES);
            }
        }
    }

    #[test]
    fn name_lists_are_complete_and_unique() {
        for list in [
            names::MAPS,
            names::PROGRAMS,
            names::CALIB_MAPS,
            names::CALIB_PROGRAMS,
        ] {
            assert!(!list.is_empty());
            for (i, a) in list.iter().enumerate() {
                assert!(!a.is_empty());
                assert!(!list[i + 1..].contains(a), "{a} twice");
            }
        }
        assert!(names::MAPS.contains(&names::EVENTS));
        assert!(names::PROGRAMS.contains(&names::PROG_SET_STATE_BACKUP));
        assert!(!names::MAPS.contains(&names::CONFIG), "a global, not a map");
    }
}
