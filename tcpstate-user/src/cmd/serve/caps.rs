//! Dropping capabilities once the probe is attached and the port bound: `serve` runs
//! for weeks on every host, so it keeps only what each scrape and fd walk needs.

use std::io;

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
const LAST_CAP: u32 = 63;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets in two words.
const VERSION_3: u32 = 0x2008_0522;

fn capget() -> io::Result<u64> {
    let mut h = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: capget with a v3 header and two data words.
    if unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(d[0].effective) | (u64::from(d[1].effective) << 32))
}

/// Names of the capabilities kept, for the startup line.
pub fn names(set: u64) -> Vec<&'static str> {
    [
        (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_BPF, "CAP_BPF"),
    ]
    .into_iter()
    .filter(|(c, _)| set & (1 << c) != 0)
    .map(|(_, n)| n)
    .collect()
}

/// The capabilities `serve` needs after attaching, out of those it has: CAP_BPF and
/// CAP_PERFMON to run the `task_file` iterator at each walk (CAP_SYS_ADMIN instead on
/// kernels that had no CAP_BPF). The walk itself counts each holder's fds and reads
/// its limit; only where BTF lacks `task_struct.signal` (`counts_fds` false) are they
/// read from /proc, which takes CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE for other
/// users' processes (`/proc/PID/fd` is theirs alone, `proc_fd_access_allowed()`).
/// Not CAP_SYS_ADMIN: only startup enters namespaces (`setns()` of a net namespace
/// checks it, `netns_install()`), for the TIME_WAIT sockets older than the probe and
/// each namespace's port range; after that TIME_WAIT comes from the probe's records.
pub fn needed(have: u64, counts_fds: bool) -> u64 {
    let mut keep = 1 << CAP_PERFMON;
    if !counts_fds {
        keep |= 1 << CAP_DAC_READ_SEARCH | 1 << CAP_SYS_PTRACE;
    }
    if have & (1 << CAP_BPF) != 0 {
        keep |= 1 << CAP_BPF;
    } else {
        // Kernels before CAP_BPF (5.8): the iterator needs CAP_SYS_ADMIN.
        keep |= 1 << CAP_SYS_ADMIN;
    }
    keep & have
}

/// Drops every other capability from the effective, permitted and inheritable sets
/// and from the bounding set, for good; returns the kept set. Without CAP_SETPCAP the
/// bounding set cannot shrink (`cap_prctl_drop()`): one warning says so.
pub fn drop_unneeded(counts_fds: bool) -> io::Result<u64> {
    let have = capget()?;
    let keep = needed(have, counts_fds);
    // The bounding set first: dropping from it needs CAP_SETPCAP, given up below.
    let mut refused = 0;
    for cap in 0..=LAST_CAP {
        // SAFETY: prctl with integer arguments; EINVAL past the kernel's last cap.
        let in_bset = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) };
        if keep & (1 << cap) == 0 && in_bset == 1 {
            // SAFETY: as above.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
                refused += 1;
            }
        }
    }
    if refused > 0 {
        log::warn!(
            "{refused} capabilities (CAP_SYS_ADMIN among them if granted) stay in the bounding \
             set: dropping them needs CAP_SETPCAP at startup (add it to the unit or pod); \
             the effective and permitted sets are dropped all the same"
        );
    }
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let mut h = Header {
        version: VERSION_3,
        pid: 0,
    };
    let lo = keep as u32;
    let hi = (keep >> 32) as u32;
    let d = [
        Data {
            effective: lo,
            permitted: lo,
            inheritable: 0,
        },
        Data {
            effective: hi,
            permitted: hi,
            inheritable: 0,
        },
    ];
    // SAFETY: capset with a v3 header and two data words.
    if unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_what_walks_need() {
        let all = u64::MAX >> 23; // caps 0..=40
        let k = needed(all, true);
        assert_eq!(names(k), ["CAP_PERFMON", "CAP_BPF"]);
        assert_eq!(k & (1 << CAP_SYS_ADMIN), 0);
        // Without the walk's fd counts, /proc/PID/fd needs two more.
        assert_eq!(
            names(needed(all, false)),
            [
                "CAP_DAC_READ_SEARCH",
                "CAP_SYS_PTRACE",
                "CAP_PERFMON",
                "CAP_BPF"
            ]
        );
        // Nothing is gained that was not held.
        assert_eq!(needed(1 << CAP_BPF, true), 1 << CAP_BPF);
        // Kernels before CAP_BPF: CAP_SYS_ADMIN stands in for it too.
        assert_eq!(names(needed(1 << CAP_SYS_ADMIN, true)), ["CAP_SYS_ADMIN"]);
    }
}
