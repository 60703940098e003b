//! Loads the embedded kernel probe, attaches it, and reads its loss counters.
//!
//! Lifecycle (as in libbpf-tools): check privileges -> mount tracefs if needed ->
//! resolve kernel offsets from BTF -> set them as the probe's read-only `CONFIG` ->
//! load -> attach. Links live as long as [`Probe`]: they close with the process, so an
//! early exit leaves nothing attached.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, Iter, ProgramError, TracePoint},
    Ebpf, EbpfLoader,
};
use tcpstate_common::{
    counter, names, FdRecord, Hist, HistKey, SockState, TwKey, TwLive, FLAG_OWNERS, FLAG_STREAM,
    FLAG_TIMEWAIT, FLAG_TRACK, HIST_SPILL_STATES,
};

use crate::{offsets, tracefs};

/// The probe built by `cargo xtask build-ebpf`, embedded by build.rs.
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpstate.bpf.o"));

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("tcpstate needs root, or the CAP_BPF and CAP_PERFMON capabilities (missing: {0}); run it with sudo or grant them (setcap cap_bpf,cap_perfmon,cap_sys_admin+ep)")]
    Privileges(String),
    #[error("this tcpstate binary was built without its kernel probe; build it with `cargo xtask build --release` or run `cargo xtask run`")]
    NoObject,
    #[error("tracefs is not mounted at {dir} and mounting it failed ({0}); mount it with `mount -t tracefs tracefs {dir}` or run as root", dir = tracefs::TRACEFS)]
    Tracefs(io::Error),
    #[error(transparent)]
    Offsets(#[from] offsets::OffsetError),
    #[error("loading the BPF object failed: {0}")]
    Load(#[from] Box<aya::EbpfError>),
    #[error("{what} failed: {source}{hint}")]
    Program {
        what: String,
        source: ProgramError,
        hint: &'static str,
    },
    #[error("the BPF object lacks {0}")]
    Missing(&'static str),
    #[error("map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
}

pub struct LoadOptions {
    /// Ring buffer size in bytes (a power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Wake userspace once this many bytes wait (see `Config::wakeup_bytes`).
    pub wakeup_bytes: u64,
    /// `FLAG_*` of tcpstate-common.
    pub flags: u32,
    /// `BY_*` of tcpstate-common.
    pub hist_by: u32,
    pub filter: tcpstate_common::Filter,
    /// Histogram keys the probe can hold (`hist`; preallocated per CPU).
    pub hist_keys: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            // 4 MiB holds ~47k events, a third of a second at this machine's maximum
            // churn; the reader is woken every 128 KiB (~1.5k events) or 100 ms.
            ring_bytes: 4 << 20,
            wakeup_bytes: 128 << 10,
            flags: FLAG_STREAM | FLAG_TRACK | FLAG_OWNERS,
            hist_by: tcpstate_common::BY_NONE,
            filter: Default::default(),
            hist_keys: 1,
        }
    }
}

pub struct Probe {
    ebpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
    /// Whether this run mounted tracefs (reported once).
    pub mounted_tracefs: bool,
    /// The primary's recursion_misses when the backup was attached.
    skipped_before_backup: u64,
}

/// Loss and coverage counters, summed over CPUs and programs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub ringbuf_full: u64,
    pub table_full: u64,
    pub accept_unresolved: u64,
    /// Transitions the kernel skipped in the primary probe since the backup was
    /// attached...
    pub set_state_skipped: u64,
    /// ...and those of them the backup probe handled.
    pub set_state_recovered: u64,
    /// Transitions dropped because a kernel read failed.
    pub read_failed: u64,
    /// Histogram samples kept without their --by key (see HIST_SPILL).
    pub hist_spilled: u64,
    /// `recursion_misses` of the accept probes.
    pub accept_skipped: u64,
    /// TIME_WAIT candidates recorded, and how they ended (see `counter::TW_*`).
    pub tw_candidates: u64,
    pub tw_expired: u64,
    pub tw_reused: u64,
    pub tw_not_timewait: u64,
    pub tw_untracked: u64,
    /// `recursion_misses` of the timer probe (timewait expiries it did not see).
    pub tw_skipped: u64,
    /// Events the probe submitted to the ring buffer.
    pub emitted: u64,
    /// Transitions the kernel handed to the probe: its runs plus the runs it skipped.
    pub probe_calls: u64,
}

/// Fails early, with the one line users need, when privileges are missing.
pub fn check_privileges() -> Result<(), LoadError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LoadError::Privileges(missing.join(", ")))
    }
}

fn prog_err(what: impl Into<String>) -> impl FnOnce(ProgramError) -> LoadError {
    let what = what.into();
    move |source| {
        let hint = match &source {
            ProgramError::LoadError { io_error, .. }
                if io_error.raw_os_error() == Some(libc::EPERM) =>
            {
                " (EPERM: run as root or grant CAP_BPF and CAP_PERFMON)"
            }
            _ => "",
        };
        LoadError::Program { what, source, hint }
    }
}

impl Probe {
    /// Loads and attaches everything, and hands over the event ring buffer.
    pub fn load(opts: &LoadOptions) -> Result<(Self, RingBuf<MapData>), LoadError> {
        check_privileges()?;
        if BPF_OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        let mounted_tracefs = tracefs::ensure_mounted().map_err(LoadError::Tracefs)?;
        raise_memlock();

        // EbpfLoader::new() always parses all of /sys/kernel/btf/vmlinux (~16 MB here)
        // for CO-RE. The probe needs none: drop that copy at once and trim, before
        // anything else is allocated, so that this transient sets the peak alone.
        let mut loader = EbpfLoader::new();
        loader.btf(None);
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        let vmlinux = offsets::load_vmlinux()?;
        let mut config = offsets::kernel_config(&vmlinux)?;
        config.wakeup_bytes = opts.wakeup_bytes;
        config.flags = opts.flags;
        config.hist_by = opts.hist_by;
        config.filter = opts.filter;
        use offsets::AttachType::{Func, Typedef};
        let btf = offsets::attach_btf(
            &vmlinux,
            &[
                Typedef("btf_trace_inet_sock_set_state"),
                Typedef("btf_trace_timer_expire_entry"),
                Func("bpf_iter_task_file"),
            ],
        )?;
        drop(vmlinux);
        let mut ebpf = loader
            .override_global(names::CONFIG, &config, true)
            .map_max_entries(names::EVENTS, opts.ring_bytes)
            .map_max_entries(names::HIST, opts.hist_keys.max(1))
            .load(BPF_OBJECT)
            .map_err(Box::new)?;
        // Primary first, then its backup (see tcpstate-ebpf for why there are two).
        // Both are verified before either is attached: a run the kernel skips while
        // the primary is attached alone is unrecoverable, so that window is kept to
        // one syscall, and the misses in it are not counted (they precede "attached").
        let both = [names::PROG_SET_STATE, names::PROG_SET_STATE_BACKUP];
        for name in both {
            tp_btf(&mut ebpf, name)?
                .load("inet_sock_set_state", &btf)
                .map_err(prog_err(format!("loading tp_btf {name}")))?;
        }
        for name in both {
            tp_btf(&mut ebpf, name)?
                .attach()
                .map_err(prog_err(format!("attaching tp_btf {name}")))?;
        }
        let skipped_before_backup = prog_misses(&ebpf, names::PROG_SET_STATE);

        // Owners of accepted sockets: only commands that name owners pay for this.
        if opts.flags & FLAG_OWNERS != 0 {
            for name in [names::PROG_ACCEPT4_EXIT, names::PROG_ACCEPT_EXIT] {
                let tp: &mut TracePoint = ebpf
                    .program_mut(name)
                    .ok_or(LoadError::Missing("an accept tracepoint"))?
                    .try_into()
                    .map_err(prog_err(format!("syscalls/{name}")))?;
                tp.load()
                    .map_err(prog_err(format!("loading syscalls/{name}")))?;
                tp.attach("syscalls", name)
                    .map_err(prog_err(format!("attaching syscalls/{name}")))?;
            }
        }
        if opts.flags & FLAG_TIMEWAIT != 0 {
            let name = names::PROG_TW_EXPIRE;
            let prog = tp_btf(&mut ebpf, name)?;
            prog.load("timer_expire_entry", &btf)
                .map_err(prog_err(format!("loading tp_btf {name}")))?;
            prog.attach()
                .map_err(prog_err(format!("attaching tp_btf {name}")))?;
        }

        let iter: &mut Iter = ebpf
            .program_mut(names::PROG_TASK_SOCKETS)
            .ok_or(LoadError::Missing(names::PROG_TASK_SOCKETS))?
            .try_into()
            .map_err(prog_err("iter/task_file"))?;
        iter.load("task_file", &btf)
            .map_err(prog_err("loading iter/task_file"))?;
        let counters = PerCpuArray::try_from(
            ebpf.take_map(names::COUNTERS)
                .ok_or(LoadError::Missing(names::COUNTERS))?,
        )
        .map_err(|e| LoadError::Map(names::COUNTERS, e))?;
        drop(btf);
        // And hand the stand-in BTF's memory back too.
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        let events = RingBuf::try_from(
            ebpf.take_map(names::EVENTS)
                .ok_or(LoadError::Missing(names::EVENTS))?,
        )
        .map_err(|e| LoadError::Map(names::EVENTS, e))?;
        Ok((
            Self {
                ebpf,
                counters,
                mounted_tracefs,
                skipped_before_backup,
            },
            events,
        ))
    }

    /// Every fd that refers to a TCP socket, in every process, from one pass of the
    /// `task_file` iterator.
    pub fn scan_fds(&mut self, mut each: impl FnMut(&FdRecord)) -> io::Result<()> {
        let iter: &mut Iter = self
            .ebpf
            .program_mut(names::PROG_TASK_SOCKETS)
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| io::Error::other("iter/task_file not loaded"))?;
        let id = iter.attach().map_err(io::Error::other)?;
        let link = iter.take_link(id).map_err(io::Error::other)?;
        let mut file = link.into_file().map_err(io::Error::other)?;
        // Streamed in 64 KiB reads: a host with 200k socket fds would otherwise hold
        // all of them in memory at once.
        const N: usize = std::mem::size_of::<FdRecord>();
        let mut buf = vec![0u8; 64 << 10];
        let mut filled = 0;
        loop {
            let n = std::io::Read::read(&mut file, &mut buf[filled..])?;
            if n == 0 {
                return Ok(());
            }
            filled += n;
            let whole = filled - filled % N;
            for c in buf[..whole].chunks_exact(N) {
                // SAFETY: FdRecord is plain old data; each chunk is one whole record.
                each(&unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<FdRecord>()) });
            }
            buf.copy_within(whole..filled, 0);
            filled -= whole;
        }
    }

    /// Tells the probe the owners of sockets it has not seen yet (they predate it), so
    /// their transitions name the right process. Entries the probe already made win.
    pub fn seed_owners(&mut self) -> io::Result<usize> {
        let mut holders = Vec::new();
        self.scan_fds(|r| {
            if r.cookie != 0 {
                holders.push(*r)
            }
        })?;
        let Some(map) = self.ebpf.map_mut(names::SOCKS) else {
            return Ok(0);
        };
        let mut socks =
            aya::maps::HashMap::<_, u64, SockState>::try_from(map).map_err(io::Error::other)?;
        let mut n = 0;
        for h in &holders {
            let st = SockState {
                since_ns: 0,
                pid: h.pid,
                state: u32::from(h.state),
                comm: h.comm,
            };
            // BPF_NOEXIST: the probe's own record is newer.
            if socks.insert(h.cookie, st, 1).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Reads and removes the histograms of every generation but a new one, which the
    /// probe switches to first: an interval is read whole while the next one fills.
    pub fn take_hists(&mut self) -> io::Result<Vec<(HistKey, crate::histogram::Histogram)>> {
        let gen_map = self
            .ebpf
            .map_mut(names::GEN)
            .ok_or_else(|| io::Error::other("no GEN map"))?;
        let mut gens = aya::maps::Array::<_, u32>::try_from(gen_map).map_err(io::Error::other)?;
        let next = gens.get(&0, 0).map_err(io::Error::other)?.wrapping_add(1);
        gens.set(0, next, 0).map_err(io::Error::other)?;
        // Let transitions already past their GEN read finish (they take microseconds).
        std::thread::sleep(std::time::Duration::from_millis(20));
        let map = self
            .ebpf
            .map_mut(names::HIST)
            .ok_or_else(|| io::Error::other("no HIST map"))?;
        let mut hists = aya::maps::PerCpuHashMap::<_, HistKey, Hist>::try_from(map)
            .map_err(io::Error::other)?;
        let keys: Vec<HistKey> = hists
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.gen != next)
            .collect();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let Ok(per_cpu) = hists.get(&k, 0) else {
                continue;
            };
            let mut h = crate::histogram::Histogram::default();
            for v in per_cpu.iter() {
                h.add(v);
            }
            let _ = hists.remove(&k);
            out.push((k, h));
        }
        // The spill slots of the generation just closed, keyed with no --by key.
        let old = next.wrapping_sub(1) & 1;
        let map = self
            .ebpf
            .map_mut(names::HIST_SPILL)
            .ok_or_else(|| io::Error::other("no HIST_SPILL map"))?;
        let mut spill =
            aya::maps::PerCpuArray::<_, Hist>::try_from(map).map_err(io::Error::other)?;
        let ncpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        for state in 0..HIST_SPILL_STATES {
            let idx = old * HIST_SPILL_STATES + state;
            let Ok(per_cpu) = spill.get(&idx, 0) else {
                continue;
            };
            let mut h = crate::histogram::Histogram::default();
            for v in per_cpu.iter() {
                h.add(v);
            }
            if h.count == 0 {
                continue;
            }
            let zero = Hist {
                count: 0,
                sum_ns: 0,
                max_ns: 0,
                buckets: [0; tcpstate_common::HIST_BUCKETS],
            };
            let zeros =
                aya::maps::PerCpuValues::try_from(vec![zero; ncpus]).map_err(io::Error::other)?;
            let _ = spill.set(idx, zeros, 0);
            let key = HistKey {
                gen: old,
                state,
                ..Default::default()
            };
            out.push((key, h));
        }
        Ok(out)
    }

    /// TIME_WAIT candidates: removes those older than `max_age_ns` at `now_ns` (their
    /// timer should have fired: a reset or kill ended them unseen, or the hand-over
    /// made no timewait socket) and returns (still open, the removed ones).
    #[allow(clippy::type_complexity)]
    pub fn sweep_timewaits(
        &mut self,
        now_ns: u64,
        max_age_ns: u64,
    ) -> io::Result<(u64, Vec<(TwKey, TwLive)>)> {
        let map = self
            .ebpf
            .map_mut(names::TWS)
            .ok_or_else(|| io::Error::other("no TWS map"))?;
        let mut tws =
            aya::maps::HashMap::<_, TwKey, TwLive>::try_from(map).map_err(io::Error::other)?;
        let mut stale = Vec::new();
        let mut open = 0;
        for (k, v) in tws.iter().filter_map(Result::ok) {
            if now_ns.saturating_sub(v.start_ns) > max_age_ns {
                stale.push((k, v));
            } else {
                open += 1;
            }
        }
        // Removed here, counted once: the probe may have ended one meanwhile.
        stale.retain(|(k, _)| tws.remove(k).is_ok());
        Ok((open, stale))
    }

    pub fn counters(&self) -> Counters {
        let sum = |idx: u32| -> u64 {
            self.counters
                .get(&idx, 0)
                .map(|v| v.iter().copied().sum())
                .unwrap_or(0)
        };
        let misses = |name: &str| prog_misses(&self.ebpf, name);
        Counters {
            ringbuf_full: sum(counter::RINGBUF_FULL),
            table_full: sum(counter::TABLE_FULL),
            accept_unresolved: sum(counter::ACCEPT_UNRESOLVED),
            set_state_skipped: misses(names::PROG_SET_STATE)
                .saturating_sub(self.skipped_before_backup),
            set_state_recovered: sum(counter::RECOVERED),
            read_failed: sum(counter::READ_FAILED),
            hist_spilled: sum(counter::HIST_SPILLED),
            accept_skipped: misses(names::PROG_ACCEPT4_EXIT) + misses(names::PROG_ACCEPT_EXIT),
            tw_candidates: sum(counter::TW_CANDIDATES),
            tw_expired: sum(counter::TW_EXPIRED),
            tw_reused: sum(counter::TW_REUSED),
            tw_not_timewait: sum(counter::TW_NOT_TIMEWAIT),
            tw_untracked: sum(counter::TW_UNTRACKED),
            tw_skipped: misses(names::PROG_TW_EXPIRE),
            emitted: sum(counter::EMITTED),
            probe_calls: sum(counter::PROBE_RUNS) + misses(names::PROG_SET_STATE),
        }
    }
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones to the memory
/// cgroup. Raising it needs CAP_SYS_RESOURCE, so a failure is not an error.
fn raise_memlock() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid rlimit pointer.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) };
}

/// A BTF tracepoint program of the object, by name.
fn tp_btf<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut BtfTracePoint, LoadError> {
    ebpf.program_mut(name)
        .ok_or(LoadError::Missing(name))?
        .try_into()
        .map_err(prog_err(format!("tp_btf {name}")))
}

/// A loaded program's recursion_misses (0 if it is not loaded).
fn prog_misses(ebpf: &Ebpf, name: &str) -> u64 {
    ebpf.program(name)
        .and_then(|p| p.fd().ok())
        .and_then(|fd| recursion_misses(fd.as_fd().as_raw_fd()).ok())
        .unwrap_or(0)
}

/// The kernel's count of runs it skipped for this program (`bpf_prog_info`, read with
/// `BPF_OBJ_GET_INFO_BY_FD`; aya's `ProgramInfo` does not expose it).
pub fn recursion_misses(prog_fd: i32) -> io::Result<u64> {
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: bpf_prog_info is plain data; zero is a valid value.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoByFd {
        bpf_fd: prog_fd as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: &mut info as *mut _ as u64,
    };
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD with a valid attr of the given size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            aya_obj::generated::bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as i64,
            &mut attr as *mut InfoByFd,
            std::mem::size_of::<InfoByFd>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.recursion_misses)
}
