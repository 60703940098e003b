//! What `/proc` says about processes and the host: a process's name, its fd limit
//! and open fds, the local port range; and the kernel's tick rate.

/// A process's name as the kernel keeps it (NUL-padded), `?` if it is gone.
pub fn comm(pid: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    match std::fs::read(format!("/proc/{pid}/comm")) {
        Ok(b) => {
            let b = b.strip_suffix(b"\n").unwrap_or(&b);
            let n = b.len().min(16);
            c[..n].copy_from_slice(&b[..n]);
        }
        Err(_) => c[0] = b'?',
    }
    c
}

/// How many local ports connect() picks from (`ip_local_port_range`).
pub fn local_port_range() -> u64 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u64>().ok());
            Some(it.next()??.abs_diff(it.next()??) + 1)
        })
        .unwrap_or(28232)
}

/// A process's soft RLIMIT_NOFILE (the `Max open files` line of
/// `/proc/PID/limits`); `None` if gone or `unlimited`.
pub fn fd_limit(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    parse_fd_limit(&text)
}

fn parse_fd_limit(limits: &str) -> Option<u64> {
    let rest = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    rest.split_whitespace().next()?.parse().ok()
}

/// How many fds a process has open. Since 6.2 `stat` of `/proc/PID/fd` says it
/// (its size, `proc_fd_getattr()`: one bitmap count) instead of listing 10k entries;
/// older kernels give size 0, and the directory is counted.
pub fn fd_count(pid: u32) -> Option<u64> {
    let dir = format!("/proc/{pid}/fd");
    match std::fs::metadata(&dir).ok()?.len() {
        0 => Some(std::fs::read_dir(&dir).ok()?.count() as u64),
        n => Some(n),
    }
}

/// The kernel's HZ (jiffies per second), which BTF does not carry: the resolution of
/// CLOCK_MONOTONIC_COARSE is one tick (`posix_get_coarse_res()` returns
/// `LOW_RES_NSEC`, i.e. `TICK_NSEC` = 1 s / HZ, rounded). No privilege, no config
/// file (`/proc/config.gz` and `/boot/config-*` are often absent), no waiting.
pub fn hz() -> Option<u32> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } != 0 {
        return None;
    }
    hz_of_tick(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// HZ from one tick's length: `TICK_NSEC` is `(1e9 + HZ/2) / HZ`, so rounding
/// 1e9 / tick gives HZ back for every HZ the kernel allows (100..1000).
fn hz_of_tick(tick_ns: u64) -> Option<u32> {
    if tick_ns == 0 || tick_ns > 1_000_000_000 {
        return None;
    }
    Some(((1_000_000_000 + tick_ns / 2) / tick_ns) as u32)
}

/// The inode of our network namespace, as `readlink /proc/self/ns/net` shows it.
pub fn netns_inode() -> u32 {
    std::fs::read_link("/proc/self/ns/net")
        .ok()
        .and_then(|p| {
            let s = p.to_string_lossy().into_owned();
            s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn fd_limit_and_count_of_this_process() {
        let me = std::process::id();
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a valid out-pointer.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) }, 0);
        assert_eq!(super::fd_limit(me), Some(rl.rlim_cur));
        assert!(super::fd_count(me).unwrap() >= 3);
        assert_eq!(super::fd_count(u32::MAX), None);
        let text = "Limit                     Soft Limit           Hard Limit           Units\n\
                    Max open files            1024                 524288               files\n";
        assert_eq!(super::parse_fd_limit(text), Some(1024));
        assert_eq!(
            super::parse_fd_limit("Max open files  unlimited  unlimited  files"),
            None
        );
    }

    #[test]
    fn hz_from_the_tick() {
        for hz in [100u64, 250, 300, 1000] {
            let tick = (1_000_000_000 + hz / 2) / hz;
            assert_eq!(super::hz_of_tick(tick), Some(hz as u32));
        }
        assert_eq!(super::hz_of_tick(0), None);
        let hz = super::hz().unwrap();
        assert!((100..=1000).contains(&hz), "{hz}");
    }

    #[test]
    fn own_name_and_a_gone_process() {
        let me = super::comm(std::process::id());
        assert_ne!(me[0], 0);
        assert_eq!(&super::comm(u32::MAX)[..2], b"?\0");
        assert!(super::local_port_range() > 0);
    }
}
