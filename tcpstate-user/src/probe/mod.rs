//! The probe layer: loads the embedded kernel probe, attaches it, and reads its maps
//! and counters ([`maps`]), its ring buffer's records ([`ring`]) and the sockets that
//! predate it ([`sockdiag`]). It returns plain data (the common crate's records and
//! its own [`Counters`]), never the model's types.
//!
//! Lifecycle (as in libbpf-tools): check privileges ->
//! resolve kernel offsets from BTF -> set them as the probe's read-only `CONFIG` ->
//! load -> attach (BTF tracepoints and iterators only: no tracefs, no syscall hook). Links live as long as [`Probe`]: they close with the process, so an
//! early exit leaves nothing attached.

pub mod btf;
pub mod cgroups;
pub mod features;
pub mod maps;
pub mod netns;
pub mod netstat;
pub mod offsets;
pub mod procfs;
pub mod ring;
pub mod seed;
pub mod sockdiag;

use std::time::Duration;

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, Iter, Program, ProgramError},
    Ebpf, EbpfLoader,
};
use aya_log::EbpfLogger;
use tcpstate_common::{names, FLAG_OWNERS, FLAG_STREAM, FLAG_TIMEWAIT, FLAG_TRACK};

use features::{test_refuses, Degraded, Feature};
use maps::prog_misses;
pub use maps::Counters;

/// How long transitions already past their read of GEN may take to finish adding to
/// the old generation (they take microseconds): see [`Probe::next_hist_gen`].
pub const HIST_SETTLE: Duration = Duration::from_millis(20);

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
    #[error(transparent)]
    Offsets(#[from] offsets::OffsetError),
    #[error("loading the BPF object failed: {0}")]
    Load(#[from] Box<aya::EbpfError>),
    #[error("creating BPF map {name} failed ({io_error}): {needs}")]
    CreateMap {
        name: String,
        io_error: std::io::Error,
        needs: &'static str,
    },
    /// One line: the verifier's log goes to `--log-level debug`.
    #[error("{what} failed: {detail}{hint}")]
    Program {
        what: String,
        detail: String,
        hint: String,
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
    /// `Config::iter_states` / `iter_flags`: what the fd walk keeps (0: everything).
    pub iter_states: u32,
    pub iter_flags: u32,
    /// Load the fd walk (`task_sockets`): the commands that list holders.
    pub fd_walk: bool,
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
            iter_states: 0,
            iter_flags: 0,
            fd_walk: false,
        }
    }
}

pub struct Probe {
    ebpf: Ebpf,
    /// Reads the probe's aya-log records. Kept for the probe's whole life: dropping
    /// it closes the log map's fd, and later program loads then fail. `None` when
    /// the object has no log map.
    logger: Option<EbpfLogger<&'static dyn log::Log>>,
    counters: PerCpuArray<MapData, u64>,
    /// The primary's recursion_misses when the backup was attached.
    skipped_before_backup: u64,
    /// The optional parts this kernel refused.
    degraded: Degraded,
    /// How the owners of existing sockets are seeded here.
    seed: seed::Route,
    /// The kernel's BTF has `sock.sk_drops`: listeners' own drops are read.
    pub has_sk_drops: bool,
    /// The fd walk counts each holder's fds and reads its limit (task -> signal in
    /// BTF): no /proc/PID/fd needed.
    pub counts_fds: bool,
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

/// What a core part of the probe needs from the kernel, by program or map name.
fn needs(name: &str) -> &'static str {
    match name {
        names::PROG_SET_STATE | names::PROG_SET_STATE_BACKUP => {
            "tcpstate needs BTF tracepoints (Linux 5.5) with socket-local storage from tracing programs (Linux 5.11) and a kernel built with CONFIG_DEBUG_INFO_BTF"
        }
        names::PROG_TASK_SOCKETS => "the fd walk needs the task_file BPF iterator (Linux 5.8)",
        names::EVENTS => "tcpstate needs the BPF ring buffer (Linux 5.8)",
        names::SOCKS => "tcpstate needs socket-local storage (BPF_MAP_TYPE_SK_STORAGE, Linux 5.2) with BTF",
        _ => "see `--log-level debug`",
    }
}

fn prog_err(what: impl Into<String>, name: &str) -> impl FnOnce(ProgramError) -> LoadError {
    let what = what.into();
    let needs = needs(name);
    move |source| {
        let (detail, hint) = match &source {
            ProgramError::LoadError {
                io_error,
                verifier_log,
            } => {
                log::debug!("{what}: the verifier's log:\n{verifier_log}");
                let hint = if io_error.raw_os_error() == Some(libc::EPERM) {
                    " (run as root or grant CAP_BPF and CAP_PERFMON)".to_string()
                } else {
                    format!("; {needs} (the verifier's log: --log-level debug)")
                };
                (format!("the kernel refused it ({io_error})"), hint)
            }
            other => (other.to_string(), format!("; {needs}")),
        };
        LoadError::Program { what, detail, hint }
    }
}

/// The map a load failed to create, named with what it needs.
fn load_err(e: aya::EbpfError) -> LoadError {
    match e {
        aya::EbpfError::MapError(aya::maps::MapError::CreateError { name, io_error }) => {
            let needs = needs(&name);
            LoadError::CreateMap {
                name,
                io_error,
                needs,
            }
        }
        e => LoadError::Load(Box::new(e)),
    }
}

impl Probe {
    /// Loads and attaches everything, and hands over the event ring buffer.
    pub fn load(opts: &LoadOptions) -> Result<(Self, RingBuf<MapData>), LoadError> {
        check_privileges()?;
        if BPF_OBJECT.is_empty() {
            return Err(LoadError::NoObject);
        }
        raise_memlock();

        let mut loader = loader_without_vmlinux();
        let phase = std::time::Instant::now();
        let mut vmlinux = offsets::load_vmlinux()?;
        let mut config = offsets::kernel_config(&mut vmlinux)?;
        config.wakeup_bytes = opts.wakeup_bytes;
        config.flags = opts.flags;
        config.hist_by = opts.hist_by;
        config.filter = opts.filter;
        config.iter_states = opts.iter_states;
        config.iter_flags = opts.iter_flags;
        config.skip = features::profile_skip();
        if config.skip != 0 {
            log::warn!(
                "profiling: probe parts left out ({:#x}); output is wrong",
                config.skip
            );
        }
        use offsets::AttachType::{Func, Typedef};
        let btf = offsets::attach_btf(
            &mut vmlinux,
            &[
                Typedef("btf_trace_inet_sock_set_state"),
                Typedef("btf_trace_timer_expire_entry"),
                Typedef("btf_trace_timer_cancel"),
                Func("bpf_iter_task_file"),
                Func("bpf_iter_tcp"),
            ],
        )?;
        let btf_how = if vmlinux.mapped() { "mapped" } else { "read" };
        log::debug!(
            "kernel BTF read and offsets resolved in {:.1} ms",
            ms(phase)
        );
        let phase = std::time::Instant::now();
        drop(vmlinux);
        // aya-log's level in the probe: 0 (off) skips every log statement there, so
        // logging costs nothing unless asked for. Objects without aya-log lack it.
        let log_level = probe_log_level();
        // Only FLAG_TIMEWAIT uses TWS: without it, skip its bucket array.
        loader.map_max_entries(
            names::TWS,
            if opts.flags & FLAG_TIMEWAIT == 0 {
                1
            } else {
                timewait_capacity(netstat::sysctl1("ipv4/tcp_max_tw_buckets"))
            },
        );
        // The two-step seed's index holds every TCP socket (filled as it is walked,
        // freed after); other commands never fill it.
        if opts.flags & FLAG_OWNERS != 0 {
            loader.map_max_entries(names::SEED_OWNERS, seed::index_capacity());
        }
        let mut ebpf = loader
            .override_global(names::CONFIG, &config, true)
            .override_global(aya_log::LEVEL, &log_level, false)
            .map_max_entries(names::EVENTS, opts.ring_bytes)
            .map_max_entries(names::HIST, opts.hist_keys.max(1))
            .load(BPF_OBJECT)
            .map_err(load_err)?;
        // Before any program is loaded: they refer to the log map by fd.
        let logger = match EbpfLogger::init(&mut ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                log::debug!("no log records from the probe: {e}");
                None
            }
        };
        // Verification is most of startup (here the primary and the backup 35-55 ms
        // each, the owner seed 10-20 ms). Each BPF_PROG_LOAD verifies on the calling
        // thread, and privileged loads share no lock (bpf_check() takes
        // bpf_verifier_lock only for unprivileged ones), so the loads run on three
        // threads: the primary and the optional programs, the backup, the owner seed.
        // Both tracepoint programs are verified before either is attached: a run the
        // kernel skips while the primary is attached alone is unrecoverable, so that
        // window is kept to one syscall, and the misses in it are not counted (they
        // precede "attached").
        log::debug!("object parsed and maps created in {:.1} ms", ms(phase));
        let phase = std::time::Instant::now();
        let mut progs = Programs::of(&mut ebpf);
        let primary = progs.take(names::PROG_SET_STATE)?;
        let backup = progs.take(names::PROG_SET_STATE_BACKUP)?;
        let timers = if opts.flags & FLAG_TIMEWAIT != 0 {
            Some([
                (progs.take(names::PROG_TW_EXPIRE)?, "timer_expire_entry"),
                (progs.take(names::PROG_TW_CANCEL)?, "timer_cancel"),
            ])
        } else {
            None
        };
        let walk = if opts.fd_walk {
            Some(progs.take(names::PROG_TASK_SOCKETS)?)
        } else {
            None
        };
        let seeds = if opts.flags & FLAG_OWNERS != 0 {
            Some([
                progs.take(names::PROG_SEED_OWNERS)?,
                progs.take(names::PROG_SEED_INDEX)?,
                progs.take(names::PROG_SEED_ADOPT)?,
            ])
        } else {
            None
        };
        let (primary_loaded, timers_loaded, walk_loaded, (backup_loaded, seed)) =
            std::thread::scope(|s| {
                let btf = &btf;
                let backup = s.spawn(move || load_set_state(backup, btf));
                let seed = s.spawn(move || {
                    seeds.map(|[direct, index, adopt]| seed_route(direct, index, adopt, btf))
                });
                let primary_loaded = load_set_state(primary, btf);
                // The timer's end, and its early deletion (a kill, a reuse): one
                // feature, loaded here and attached after the transition probe.
                let timers_loaded = timers.map(|timers| {
                    let mut loaded = Vec::new();
                    for (prog, tp) in timers {
                        let name = prog.name;
                        let r = if test_refuses(name) {
                            Err("refused for a test (TCPSTATE_TEST_REFUSE)".to_string())
                        } else {
                            prog.tp_btf()
                                .map_err(|e| e.to_string())
                                .and_then(|p| p.load(tp, btf).map_err(|e| e.to_string()))
                        };
                        if let Err(e) = r {
                            log::debug!("{name} refused: {e}");
                            return None;
                        }
                        loaded.push(name);
                    }
                    Some(loaded)
                });
                // The fd walk: only for the commands that list holders (core for them).
                let walk_loaded = walk.map(|w| load_iter(w, "task_file", btf));
                let backup = backup.join().expect("the loading thread panicked");
                let seed = seed.join().expect("the loading thread panicked");
                (primary_loaded, timers_loaded, walk_loaded, (backup, seed))
            });
        log::debug!("programs verified in {:.1} ms", ms(phase));
        primary_loaded?;
        backup_loaded?;
        let both = [names::PROG_SET_STATE, names::PROG_SET_STATE_BACKUP];
        for name in both {
            tp_btf_of(&mut ebpf, name)?
                .attach()
                .map_err(prog_err(format!("attaching tp_btf {name}"), name))?;
        }
        let skipped_before_backup = prog_misses(&ebpf, names::PROG_SET_STATE);

        let mut degraded = Degraded::default();
        match timers_loaded {
            None => {}
            Some(None) => degraded.add(Feature::TimeWaitExpiry),
            Some(Some(loaded)) => {
                for name in loaded {
                    if let Err(e) = tp_btf_of(&mut ebpf, name)?.attach() {
                        log::debug!("{name} refused: {e}");
                        degraded.add(Feature::TimeWaitExpiry);
                        break;
                    }
                }
            }
        }
        if let Some(w) = walk_loaded {
            w?;
        }
        let seed = seed.unwrap_or(seed::Route::None);
        if opts.flags & FLAG_OWNERS != 0 && seed == seed::Route::None {
            degraded.add(Feature::OwnerSeed);
        }
        // What this kernel gave, in one line (the kernel matrix reports it).
        log::info!(
            "kernel features: BTF {btf_how}; owner seed {}; TIME_WAIT expiry {}",
            match seed {
                seed::Route::Direct => "direct",
                seed::Route::Indexed => "two-step",
                seed::Route::None if opts.flags & FLAG_OWNERS != 0 => "refused",
                seed::Route::None => "not needed",
            },
            if opts.flags & FLAG_TIMEWAIT == 0 {
                "not needed"
            } else if degraded.has(Feature::TimeWaitExpiry) {
                "refused"
            } else {
                "loaded"
            }
        );
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
                logger,
                counters,
                skipped_before_backup,
                degraded,
                seed,
                has_sk_drops: config.sk_drops != 0,
                counts_fds: config.task_signal != 0,
            },
            events,
        ))
    }
}

/// An `EbpfLoader` without the vmlinux BTF that `EbpfLoader::new()` always parses for
/// CO-RE (5.6 MB in 4 KiB sysfs reads and ~16 MB parsed: 60-105 ms here, about half
/// of startup), which the probe does not use: its offsets come from [`offsets`]. aya
/// has no other constructor, so the loader is made on a thread of its own whose root
/// (`unshare(CLONE_FS)`, then `chroot`) is a directory without `sys/kernel/btf`: there
/// `Btf::from_sys_fs()` fails and the loader starts without BTF. Without
/// CAP_SYS_CHROOT (serve's unit does not grant it), the parse, dropped at once.
fn loader_without_vmlinux() -> EbpfLoader<'static> {
    let made = std::thread::spawn(|| {
        // SAFETY: plain syscalls; after unshare(CLONE_FS) this thread's root and cwd
        // are its own, and the thread ends right after.
        let rooted = unsafe {
            libc::unshare(libc::CLONE_FS) == 0 && libc::chroot(c"/proc/self/fdinfo".as_ptr()) == 0
        };
        rooted.then(EbpfLoader::new)
    })
    .join()
    .ok()
    .flatten();
    made.unwrap_or_else(|| {
        log::debug!("chroot refused: aya parses the vmlinux BTF it will not use");
        let mut loader = EbpfLoader::new();
        loader.btf(None);
        // Hand that copy back before anything else is allocated, so that this
        // transient sets the peak alone.
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        loader
    })
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones to the memory
/// cgroup. Raising it needs CAP_SYS_RESOURCE, so a failure is not an error.
fn raise_memlock() {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid rlimit pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        log::warn!(
            "raising RLIMIT_MEMLOCK failed ({}); kernels >= 5.11 charge BPF maps to the memory cgroup instead",
            std::io::Error::last_os_error()
        );
    }
}

/// The most verbose level (aya-log's numbering, as `log`'s: 1 error .. 5 trace) the
/// logger takes from the probe, whose records carry its crate's name as target.
fn probe_log_level() -> u8 {
    use log::Level::*;
    [(Trace, 5), (Debug, 4), (Info, 3), (Warn, 2), (Error, 1)]
        .into_iter()
        .find(|&(l, _)| log::log_enabled!(target: "tcpstate_ebpf", l))
        .map_or(0, |(_, n)| n)
}

impl Probe {
    /// The fd to watch for the probe's log records, if it has a log map.
    pub fn log_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.logger.as_ref().map(|l| l.as_raw_fd())
    }

    /// Hands the probe's pending log records to the `log` logger.
    pub fn flush_logs(&mut self) {
        if let Some(l) = &mut self.logger {
            l.flush();
        }
    }
}

/// One program of the object, taken out of it so that it can be loaded on another
/// thread than the others.
struct Prog<'a> {
    name: &'static str,
    prog: &'a mut Program,
}

/// The object's programs, to be taken one by one.
struct Programs<'a>(std::collections::HashMap<&'a str, &'a mut Program>);

impl<'a> Programs<'a> {
    fn of(ebpf: &'a mut Ebpf) -> Self {
        Self(ebpf.programs_mut().collect())
    }

    fn take(&mut self, name: &'static str) -> Result<Prog<'a>, LoadError> {
        let prog = self.0.remove(name).ok_or(LoadError::Missing(name))?;
        Ok(Prog { name, prog })
    }
}

impl<'a> Prog<'a> {
    fn tp_btf(self) -> Result<&'a mut BtfTracePoint, LoadError> {
        let name = self.name;
        self.prog
            .try_into()
            .map_err(prog_err(format!("tp_btf {name}"), name))
    }
}

/// Milliseconds since `t`.
fn ms(t: std::time::Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Verifies one of the two transition programs.
fn load_set_state(p: Prog, btf: &aya::Btf) -> Result<(), LoadError> {
    let name = p.name;
    let started = std::time::Instant::now();
    let prog = p.tp_btf()?;
    prog.load("inet_sock_set_state", btf)
        .map_err(prog_err(format!("loading tp_btf {name}"), name))?;
    log_verified(name, started, prog.info().ok());
    Ok(())
}

/// What a program's verification took: it grows with the paths the settings leave.
fn log_verified(name: &str, started: std::time::Instant, info: Option<aya::programs::ProgramInfo>) {
    let insns = info.and_then(|i| i.verified_instruction_count());
    log::debug!(
        "{name} verified in {:.1} ms ({} instructions processed)",
        ms(started),
        insns.map_or("?".to_string(), |n| n.to_string())
    );
}

/// The owner seed writes socket records: only commands that keep them. Where the
/// verifier refuses the direct route, the two-step one (see seed).
fn seed_route(direct: Prog, index: Prog, adopt: Prog, btf: &aya::Btf) -> seed::Route {
    let refused = |name: &str, e: LoadError| log::debug!("{name} refused: {e}");
    let (direct_name, index_name, adopt_name) = (direct.name, index.name, adopt.name);
    match load_iter(direct, "task_file", btf) {
        Ok(()) => return seed::Route::Direct,
        Err(e) => refused(direct_name, e),
    }
    if let Err(e) = load_iter(index, "task_file", btf) {
        refused(index_name, e);
        return seed::Route::None;
    }
    // The indexed route's listeners get their records from iter/tcp.
    match load_iter(adopt, "tcp", btf) {
        Ok(()) => seed::Route::Indexed,
        Err(e) => {
            refused(adopt_name, e);
            seed::Route::None
        }
    }
}

/// Loads an iterator program of the object. With the test hook
/// ([`test_refuses`]) it is loaded as the other kind of iterator, whose context does
/// not fit, so that the kernel itself refuses it.
fn load_iter(p: Prog, target: &'static str, btf: &aya::Btf) -> Result<(), LoadError> {
    let name = p.name;
    let iter: &mut Iter = p
        .prog
        .try_into()
        .map_err(prog_err(format!("iterator {name}"), name))?;
    let target = match (test_refuses(name), target) {
        (true, "tcp") => "task_file",
        (true, _) => "tcp",
        (false, t) => t,
    };
    let started = std::time::Instant::now();
    iter.load(target, btf)
        .map_err(prog_err(format!("loading iter/{target} {name}"), name))?;
    log_verified(name, started, iter.info().ok());
    Ok(())
}

/// A BTF tracepoint program of the object, by name.
fn tp_btf_of<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut BtfTracePoint, LoadError> {
    ebpf.program_mut(name)
        .ok_or(LoadError::Missing(name))?
        .try_into()
        .map_err(prog_err(format!("tp_btf {name}"), name))
}

/// `TWS` entries: room for four namespaces at this one's `tcp_max_tw_buckets` (a
/// namespace never holds more: `inet_twsk_alloc()` refuses past it), at least 2^18,
/// at most 2^22. Entries are allocated as they are used (`BPF_F_NO_PREALLOC`); the
/// load makes only the bucket array (16 B each). Past it, an insert fails and is
/// counted (`tw_untracked`); `tcpstate_map_entries{map="TWS"}` shows the fill.
pub fn timewait_capacity(max_tw_buckets: Option<i64>) -> u32 {
    let per_ns = max_tw_buckets.unwrap_or(0).clamp(0, 1 << 22) as u32;
    per_ns.saturating_mul(4).clamp(1 << 18, 1 << 22)
}

#[cfg(test)]
mod tests {
    use super::timewait_capacity;

    #[test]
    fn timewait_capacity_bounds() {
        assert_eq!(timewait_capacity(Some(131072)), 524288);
        assert_eq!(timewait_capacity(Some(4096)), 1 << 18);
        assert_eq!(timewait_capacity(None), 1 << 18);
        assert_eq!(timewait_capacity(Some(-1)), 1 << 18);
        assert_eq!(timewait_capacity(Some(i64::MAX)), 1 << 22);
    }
}
