//! Every map of the probe, in one place. Names are literals (`#[map]` takes only a
//! literal) that must equal `tcpstate_common::names`: `tcpstate-user/tests/object.rs`
//! checks the built object against that list.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{bpf_map_type::BPF_MAP_TYPE_SK_STORAGE, BPF_F_CLONE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use tcpstate_common::{
    counter, Hist, HistKey, SeedOwner, SockState, TwKey, TwLive, CGROUPS_MAX, HIST_SPILL_STATES,
    PAIR_SLOTS,
};

use crate::{iter::Tallies, marks::Recent};

/// Transitions to userspace (`trace`, `linger`). Size set by userspace at load time.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Socket-local storage flags: `BPF_F_NO_PREALLOC` (required), and `BPF_F_CLONE`, so
/// that `sk_clone_lock()` copies a listener's record to each new child
/// (`bpf_sk_storage_clone()`) before LISTEN -> SYN_RECV is traced.
const SOCKS_FLAGS: usize = (BPF_F_NO_PREALLOC | BPF_F_CLONE) as usize;

/// A BTF map definition by hand (libbpf's `__uint`/`__type` encoding: the values are
/// array lengths of pointed-to types): aya-ebpf's `btf_maps::SkStorage` hard-codes
/// its flags (no `BPF_F_CLONE`) and keeps its pointer private.
#[repr(C)]
pub struct SkStorageDef {
    r#type: *const [i32; BPF_MAP_TYPE_SK_STORAGE as usize],
    key: *const i32,
    value: *const SockState,
    map_flags: *const [i32; SOCKS_FLAGS],
}
// SAFETY: never dereferenced; only its address is used, as the map's.
unsafe impl Sync for SkStorageDef {}

/// One record per socket (only with `FLAG_TRACK`, or created by the startup seed): no
/// hashing, no table to fill, freed with the socket (`bpf_sk_storage_free`).
#[unsafe(link_section = ".maps")]
#[unsafe(export_name = "SOCKS")]
pub static SOCKS: SkStorageDef = SkStorageDef {
    r#type: core::ptr::null(),
    key: core::ptr::null(),
    value: core::ptr::null(),
    map_flags: core::ptr::null(),
};

/// `sk`'s record; created (zeroed) if missing and `create`. Null when there is none,
/// or it cannot be created (out of memory, or `sk` is being freed).
#[inline(always)]
pub fn sock_rec(sk: *const u8, create: bool) -> *mut SockState {
    let flags = if create {
        aya_ebpf::bindings::BPF_SK_STORAGE_GET_F_CREATE as u64
    } else {
        0
    };
    // SAFETY: `sk` is a BTF `struct sock *` (the tracepoint's or an iterator's).
    unsafe {
        aya_ebpf::helpers::generated::bpf_sk_storage_get(
            core::ptr::addr_of!(SOCKS) as *mut c_void,
            sk as *mut c_void,
            core::ptr::null_mut(),
            flags,
        )
    }
    .cast()
}

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
/// overflow) are swept by userspace. A plain hash, not an LRU: when full, an insert
/// fails and is counted (`TW_UNTRACKED`) instead of silently evicting a live one.
/// Sized at load (`probe::timewait_capacity`); entries are allocated as used.
#[map(name = "TWS")]
pub static TWS: HashMap<TwKey, TwLive> = HashMap::with_max_entries(1 << 18, BPF_F_NO_PREALLOC);

/// The timewait timer's handler (`tw_timer_handler`), learned from the first
/// candidate whose timer fired or was deleted: from then on the timer programs
/// leave every other timer after one load and a compare.
#[map(name = "TW_FN")]
pub static TW_FN: Array<u64> = Array::with_max_entries(1, 0);

/// The cgroup ids `--container`/`--cgroup` select (value unused): userspace adds
/// cgroups as they appear, so containers started after tcpstate match.
#[map(name = "CGROUPS")]
pub static CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(CGROUPS_MAX, 0);

/// Per-CPU counters, indexed by `tcpstate_common::counter`.
/// Transitions by (old, new) state (`FLAG_PAIRS`), slot `pair_slot(old, new)`.
#[map(name = "PAIRS")]
pub static PAIRS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PAIR_SLOTS, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// The primary program's marks for the backup (see `marks`).
#[map(name = "RECENT")]
pub static RECENT: PerCpuArray<Recent> = PerCpuArray::with_max_entries(1, 0);

/// Existing sockets' owners by socket address, from `seed_index` to `seed_adopt`
/// (only where the verifier refuses `seed_owners`). Sized by userspace to the host's
/// TCP sockets; allocated as filled, and freed after the seed.
#[map(name = "SEED_OWNERS")]
pub static SEED_OWNERS: HashMap<u64, SeedOwner> =
    HashMap::with_max_entries(1, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// The fd walk's tally of the process it is in (see `iter::tally`). One reader at a
/// time: each tcpstate process loads its own probe and walks from one thread.
#[map(name = "TALLY")]
pub static TALLY: Array<Tallies> = Array::with_max_entries(1, 0);
