//! Every map of the probe, in one place. Names are literals (`#[map]` takes only a
//! literal) that must equal `tcpstate_common::names`: `tcpstate-user/tests/object.rs`
//! checks the built object against that list.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use tcpstate_common::{counter, Hist, HistKey, SockState, TwKey, TwLive, HIST_SPILL_STATES};

use crate::marks::Recent;

/// Transitions to userspace (`trace`, `linger`). Size set by userspace at load time.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Live sockets by cookie (only with `FLAG_TRACK`). Bounded; a failed insert is
/// counted (`TABLE_FULL`). Preallocated (~24 MiB of kernel memory, charged to
/// tcpstate's memory cgroup, while attached): inserting and deleting from a
/// preallocated table measured ~100 ns cheaper per transition under churn than
/// allocating each entry, and every connection does both twice.
#[map(name = "SOCKS")]
pub static SOCKS: HashMap<u64, SockState> = HashMap::with_max_entries(1 << 18, 0);

/// Time-in-state histograms (`hist`), per CPU so updates need no atomics.
/// Preallocated (userspace sizes it): inserting a new key then never allocates, which
/// in softirq or timer context fails whenever the allocator's small per-CPU cache of
/// 4.5 KiB values runs dry.
#[map(name = "HIST")]
pub static HIST: PerCpuHashMap<HistKey, Hist> = PerCpuHashMap::with_max_entries(64, 0);

/// Histograms without a --by key, and where a keyed sample goes when its HIST key
/// cannot be inserted (then counted as spilled): the map is full, or the
/// bucket is locked by the program this one interrupted (`htab_lock_bucket` returns
/// -EBUSY when nested on a CPU). Indexed by `hist_spill_slot` (generation, state);
/// array lookups take no lock. Userspace merges it, without the --by key.
#[map(name = "HIST_SPILL")]
pub static HIST_SPILL: PerCpuArray<Hist> = PerCpuArray::with_max_entries(2 * HIST_SPILL_STATES, 0);

/// A zeroed histogram to insert new keys from (too big for the BPF stack).
#[map(name = "HIST_ZERO")]
pub static HIST_ZERO: PerCpuArray<Hist> = PerCpuArray::with_max_entries(1, 0);

/// Current histogram generation, flipped by userspace at each --interval.
#[map(name = "GEN")]
pub static GEN: Array<u32> = Array::with_max_entries(1, 0);

/// TIME_WAIT candidates by 4-tuple (a 4-tuple has at most one timewait socket): the
/// expiry timer and a new connection on the same 4-tuple both find them here. Entries
/// whose end the probe cannot see (a reset in TIME_WAIT, a tcp_max_tw_buckets
/// overflow) are swept by userspace; LRU bounds the rest.
#[map(name = "TWS")]
pub static TWS: LruHashMap<TwKey, TwLive> = LruHashMap::with_max_entries(1 << 18, 0);

/// Per-CPU counters, indexed by `tcpstate_common::counter`.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// The primary program's marks for the backup (see `marks`).
#[map(name = "RECENT")]
pub static RECENT: PerCpuArray<Recent> = PerCpuArray::with_max_entries(1, 0);
