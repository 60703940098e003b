//! Readers of the probe's maps: the fd iterator, the owner seed, the histograms, the
//! TIME_WAIT candidates and the loss counters. Everything is returned as plain data
//! (the common crate's records, summed over CPUs); the model interprets it.

use std::{
    collections::HashMap,
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::{
    maps::{MapData, PerCpuArray, PerCpuValues},
    programs::Iter,
    Ebpf,
};
use tcpstate_common::{
    counter, names, FdRecord, Hist, HistKey, TwKey, TwLive, FD_TALLY, HIST_BUCKETS,
    HIST_SPILL_STATES, PAIR_SLOTS,
};

use super::{features::Degraded, Probe};

/// Runs iterator program `prog` once and hands each `N`-byte record it writes to
/// `each`, streamed in 64 KiB reads (a host with 500k socket fds would otherwise
/// hold all of them in memory at once).
pub(super) fn read_iter<const N: usize>(
    ebpf: &mut Ebpf,
    prog: &str,
    each: impl FnMut(&[u8]),
) -> io::Result<()> {
    read_file::<N>(open_iter(ebpf, prog)?, each)
}

/// A new pass of iterator `prog`: reading the file runs it.
fn open_iter(ebpf: &mut Ebpf, prog: &str) -> io::Result<std::fs::File> {
    let iter: &mut Iter = ebpf
        .program_mut(prog)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| io::Error::other(format!("iterator {prog} not loaded")))?;
    let id = iter.attach().map_err(io::Error::other)?;
    let link = iter.take_link(id).map_err(io::Error::other)?;
    link.into_file().map_err(io::Error::other)
}

/// One pass of the fd walk, opened (cheap, needs the probe) and read later (the
/// walk itself, which needs nothing else: a caller that shares the probe can let it
/// go meanwhile, so scrapes do not wait for a walk).
pub struct FdScan(std::fs::File);

impl FdScan {
    /// Passes each socket record to `each`; returns what the walk said besides.
    pub fn for_each(self, mut each: impl FnMut(&FdRecord)) -> io::Result<WalkTally> {
        let mut tally = WalkTally::default();
        read_file::<{ std::mem::size_of::<FdRecord>() }>(self.0, |c: &[u8]| {
            // SAFETY: FdRecord is plain old data; each chunk is one whole record.
            let r = unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<FdRecord>()) };
            if tally.add(&r) {
                each(&r)
            }
        })?;
        Ok(tally)
    }
}

/// A process's open fds and soft RLIMIT_NOFILE, as the fd walk counted them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdCount {
    pub open: u64,
    /// `None`: unlimited.
    pub limit: Option<u64>,
}

/// What the fd walk tells besides the sockets, read from the kernel's own
/// structures rather than /proc: the open fds and fd limit of each process that
/// holds a reported socket, and the local port range of each namespace a socket is in.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WalkTally {
    pub fds: HashMap<u32, FdCount>,
    /// `ip_local_port_range` (low, high) by network namespace inode.
    pub port_ranges: HashMap<u32, (u16, u16)>,
}

impl WalkTally {
    /// Takes in one record; false for a tally, which is no socket.
    pub fn add(&mut self, r: &FdRecord) -> bool {
        if r.fd == FD_TALLY {
            // A probe without the offsets writes nofile 0: no limit known, and no
            // count either (fall back to /proc).
            if r.nofile != 0 {
                let limit = (r.nofile != u64::MAX).then_some(r.nofile);
                self.fds.insert(
                    r.pid,
                    FdCount {
                        open: r.open_fds.into(),
                        limit,
                    },
                );
            }
            return false;
        }
        if r.port_range != 0 && r.netns != 0 {
            let range = (r.port_range as u16, (r.port_range >> 16) as u16);
            self.port_ranges.insert(r.netns, range);
        }
        true
    }

    /// (soft limit, open fds) of `pid`, as `set_fd_headroom` takes them.
    pub fn fd_info(&self, pid: u32) -> Option<(Option<u64>, Option<u64>)> {
        self.fds.get(&pid).map(|c| (c.limit, Some(c.open)))
    }
}

/// Reads an iterator's fd to its end in records of `N` bytes.
pub(super) fn read_file<const N: usize>(
    mut file: std::fs::File,
    mut each: impl FnMut(&[u8]),
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    let mut filled = 0;
    loop {
        let n = std::io::Read::read(&mut file, &mut buf[filled..])?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let whole = filled - filled % N;
        buf[..whole].chunks_exact(N).for_each(&mut each);
        buf.copy_within(whole..filled, 0);
        filled -= whole;
    }
}

/// Loss and coverage counters as the kernel keeps them, summed over CPUs and
/// programs: raw facts, turned into the user's `Summary` by the model.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub ringbuf_full: u64,
    pub table_full: u64,
    /// Existing sockets whose owner the startup seed recorded.
    pub seeded: u64,
    /// Transitions the kernel skipped in the primary probe since the backup was
    /// attached...
    pub set_state_skipped: u64,
    /// ...and those of them the backup probe handled.
    pub set_state_recovered: u64,
    /// Transitions dropped because a kernel read failed.
    pub read_failed: u64,
    /// Histogram samples kept without their --by key (see HIST_SPILL).
    pub hist_spilled: u64,
    /// TIME_WAIT candidates recorded, and how they ended (see `counter::TW_*`).
    pub tw_candidates: u64,
    pub tw_expired: u64,
    pub tw_reused: u64,
    pub tw_not_timewait: u64,
    pub tw_untracked: u64,
    /// Candidates whose timer was deleted before its time (killed or reused).
    pub tw_cancelled: u64,
    /// `recursion_misses` of the timer probe (timewait expiries it did not see).
    pub tw_skipped: u64,
    /// Events the probe submitted to the ring buffer.
    pub emitted: u64,
    /// Transitions the kernel handed to the probe: its runs plus the runs it skipped.
    pub probe_calls: u64,
    /// The optional parts this kernel refused.
    pub degraded: Degraded,
}

/// A per-CPU map value that adds up over CPUs: the one place per-CPU values are summed.
pub trait PerCpuSum: Sized {
    fn zero() -> Self;
    fn add(&mut self, other: &Self);
    fn sum(values: &PerCpuValues<Self>) -> Self
    where
        Self: aya::Pod,
    {
        let mut total = Self::zero();
        for v in values.iter() {
            total.add(v);
        }
        total
    }
}

impl PerCpuSum for u64 {
    fn zero() -> Self {
        0
    }
    fn add(&mut self, other: &Self) {
        *self += other;
    }
}

impl PerCpuSum for Hist {
    fn zero() -> Self {
        Hist {
            count: 0,
            sum_ns: 0,
            max_ns: 0,
            buckets: [0; HIST_BUCKETS],
        }
    }
    /// Counts and sums add; the max is the largest.
    fn add(&mut self, o: &Self) {
        self.count += o.count;
        self.sum_ns += o.sum_ns;
        self.max_ns = self.max_ns.max(o.max_ns);
        for (a, b) in self.buckets.iter_mut().zip(o.buckets.iter()) {
            *a += b;
        }
    }
}

impl Probe {
    /// Every fd that refers to a TCP socket, in every process, from one pass of the
    /// `task_file` iterator.
    pub fn scan_fds(&mut self, each: impl FnMut(&FdRecord)) -> io::Result<WalkTally> {
        self.fd_scan()?.for_each(each)
    }

    /// [`Self::scan_fds`] in two steps: open the pass now, read it later.
    pub fn fd_scan(&mut self) -> io::Result<FdScan> {
        Ok(FdScan(open_iter(&mut self.ebpf, names::PROG_TASK_SOCKETS)?))
    }

    /// First half of reading the histograms: makes the probe switch to a new
    /// generation, and returns it. Wait [`HIST_SETTLE`](super::HIST_SETTLE) before
    /// [`Self::take_hists`], so that transitions already past their GEN read finish.
    pub fn next_hist_gen(&mut self) -> io::Result<u32> {
        let gen_map = self
            .ebpf
            .map_mut(names::GEN)
            .ok_or_else(|| io::Error::other("no GEN map"))?;
        let mut gens = aya::maps::Array::<_, u32>::try_from(gen_map).map_err(io::Error::other)?;
        let next = gens.get(&0, 0).map_err(io::Error::other)?.wrapping_add(1);
        gens.set(0, next, 0).map_err(io::Error::other)?;
        Ok(next)
    }

    /// Reads and removes the histograms of every generation but `next` (from
    /// [`Self::next_hist_gen`]): an interval is read whole while the next one fills.
    /// Each is summed over CPUs.
    pub fn take_hists(&mut self, next: u32) -> io::Result<Vec<(HistKey, Hist)>> {
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
            let h = Hist::sum(&per_cpu);
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
            let h = Hist::sum(&per_cpu);
            if h.count == 0 {
                continue;
            }
            let zeros =
                PerCpuValues::try_from(vec![Hist::zero(); ncpus]).map_err(io::Error::other)?;
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
            } else if v.cancelled_ms == 0 {
                open += 1;
            }
        }
        // Removed here, counted once: the probe may have ended one meanwhile.
        stale.retain(|(k, _)| tws.remove(k).is_ok());
        // Those whose timer was deleted early (killed) are among them: gauges left
        // them out from then on; histograms count them here, as ended unseen.
        Ok((open, stale))
    }

    /// TIME_WAIT candidates younger than `max_age_ns` at `now_ns` and not cancelled
    /// (read only: the
    /// sweep of [`Self::sweep_timewaits`] removes the stale ones).
    pub fn timewaits(
        &self,
        now_ns: u64,
        max_age_ns: u64,
        mut each: impl FnMut(&TwKey, &TwLive),
    ) -> io::Result<()> {
        let map = self
            .ebpf
            .map(names::TWS)
            .ok_or_else(|| io::Error::other("no TWS map"))?;
        let tws =
            aya::maps::HashMap::<_, TwKey, TwLive>::try_from(map).map_err(io::Error::other)?;
        for (k, v) in tws.iter().filter_map(Result::ok) {
            // A timer deleted early: killed, or being taken by a new connection.
            if now_ns.saturating_sub(v.start_ns) <= max_age_ns && v.cancelled_ms == 0 {
                each(&k, &v);
            }
        }
        Ok(())
    }

    /// How many entries map `name` can hold (`max_entries`), for the hash maps whose
    /// fill matters (`TWS`, `HIST`); `None` for other maps.
    pub fn map_capacity(&self, name: &str) -> Option<u64> {
        let data = match self.ebpf.map(name)? {
            aya::maps::Map::HashMap(d)
            | aya::maps::Map::LruHashMap(d)
            | aya::maps::Map::PerCpuHashMap(d)
            | aya::maps::Map::PerCpuLruHashMap(d) => d,
            _ => return None,
        };
        data.info().ok().map(|i| u64::from(i.max_entries()))
    }

    /// Transitions by (old, new) state since load (`FLAG_PAIRS`), the pairs seen.
    pub fn transition_pairs(&self) -> io::Result<Vec<(u8, u8, u64)>> {
        let map = self
            .ebpf
            .map(names::PAIRS)
            .ok_or_else(|| io::Error::other("the probe has no PAIRS map"))?;
        let pairs: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(map).map_err(io::Error::other)?;
        let mut out = Vec::new();
        for slot in 0..PAIR_SLOTS {
            let n = u64::sum(&pairs.get(&slot, 0).map_err(io::Error::other)?);
            if n != 0 {
                out.push(((slot >> 4) as u8, (slot & 15) as u8, n));
            }
        }
        Ok(out)
    }

    /// Makes the `CGROUPS` filter map hold exactly `new` (was `old`, sorted).
    pub fn set_cgroups(&mut self, old: &[u64], new: &[u64]) {
        let Some(map) = self.ebpf.map_mut(names::CGROUPS) else {
            return;
        };
        let Ok(mut m) = aya::maps::HashMap::<_, u64, u8>::try_from(map) else {
            return;
        };
        for id in old.iter().filter(|id| new.binary_search(id).is_err()) {
            let _ = m.remove(id);
        }
        for id in new {
            // Full (CGROUPS_MAX): the rest are not selected in the kernel.
            let _ = m.insert(id, 1, 0);
        }
    }

    pub fn counters(&self) -> Counters {
        Counters {
            degraded: self.degraded,
            ..read_counters(&self.counters, &self.ebpf, self.skipped_before_backup)
        }
    }
}

fn read_counters(
    map: &PerCpuArray<MapData, u64>,
    ebpf: &Ebpf,
    skipped_before_backup: u64,
) -> Counters {
    let sum = |idx: u32| -> u64 { map.get(&idx, 0).map(|v| u64::sum(&v)).unwrap_or(0) };
    let misses = |name: &str| prog_misses(ebpf, name);
    Counters {
        ringbuf_full: sum(counter::RINGBUF_FULL),
        table_full: sum(counter::TABLE_FULL),
        seeded: sum(counter::SEEDED),
        set_state_skipped: misses(names::PROG_SET_STATE).saturating_sub(skipped_before_backup),
        set_state_recovered: sum(counter::RECOVERED),
        read_failed: sum(counter::READ_FAILED),
        hist_spilled: sum(counter::HIST_SPILLED),
        tw_candidates: sum(counter::TW_CANDIDATES),
        tw_expired: sum(counter::TW_EXPIRED),
        tw_reused: sum(counter::TW_REUSED),
        tw_not_timewait: sum(counter::TW_NOT_TIMEWAIT),
        tw_untracked: sum(counter::TW_UNTRACKED),
        tw_cancelled: sum(counter::TW_CANCELLED),
        tw_skipped: misses(names::PROG_TW_EXPIRE),
        emitted: sum(counter::EMITTED),
        probe_calls: sum(counter::PROBE_RUNS) + misses(names::PROG_SET_STATE),
        degraded: Degraded::default(),
    }
}

/// A loaded program's recursion_misses (0 if it is not loaded).
pub(super) fn prog_misses(ebpf: &Ebpf, name: &str) -> u64 {
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

impl Probe {
    /// The optional parts this kernel refused.
    pub fn degraded(&self) -> Degraded {
        self.degraded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_hists_add_up() {
        let mut k = Hist::zero();
        k.count = 2;
        k.sum_ns = 3000;
        k.max_ns = 2000;
        k.buckets[1] = 1;
        k.buckets[2] = 1;
        let mut k2 = k;
        k2.max_ns = 500;
        let mut h = Hist::zero();
        h.add(&k);
        h.add(&k2);
        assert_eq!((h.count, h.sum_ns, h.max_ns), (4, 6000, 2000));
        assert_eq!(h.buckets[1], 2);
    }
}

#[cfg(test)]
mod tally_tests {
    use super::*;

    #[test]
    fn tallies_are_kept_apart_from_sockets() {
        let mut t = WalkTally::default();
        let tally = |pid, open, nofile| FdRecord {
            pid,
            fd: FD_TALLY,
            open_fds: open,
            nofile,
            ..FdRecord::EMPTY
        };
        assert!(!t.add(&tally(7, 24, 1024)));
        assert!(!t.add(&tally(8, 3, u64::MAX)));
        // A probe that could not read the limit: /proc decides.
        assert!(!t.add(&tally(9, 3, 0)));
        let sock = FdRecord {
            pid: 7,
            fd: 5,
            cookie: 1,
            netns: 4026531840,
            port_range: 32768 | 60999 << 16,
            ..FdRecord::EMPTY
        };
        assert!(t.add(&sock));
        assert_eq!(t.fd_info(7), Some((Some(1024), Some(24))));
        assert_eq!(t.fd_info(8), Some((None, Some(3))), "unlimited");
        assert_eq!(t.fd_info(9), None);
        assert_eq!(t.port_ranges[&4026531840], (32768, 60999));
    }
}
