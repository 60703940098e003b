//! What `/proc` says that only `serve` needs: a process's fd usage, the kernel
//! release.

/// Open fds over the soft RLIMIT_NOFILE (`None`: gone, unreadable, or no limit).
pub fn fd_usage(pid: u32) -> Option<f64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let soft = soft_nofile(&limits)?;
    let open = crate::probe::procfs::fd_count(pid)?;
    Some(open as f64 / soft as f64)
}

/// The soft limit of "Max open files" in `/proc/PID/limits`.
fn soft_nofile(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    soft.parse().ok().filter(|&n| n > 0)
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_own_usage() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             95432                95432                processes \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(soft_nofile(text), Some(1024));
        assert_eq!(
            soft_nofile("Max open files  unlimited unlimited files"),
            None
        );
        let me = fd_usage(std::process::id()).unwrap();
        assert!(me > 0.0 && me < 1.0, "{me}");
        assert_eq!(fd_usage(u32::MAX), None);
        assert!(!kernel_release().is_empty());
    }
}
