//! A network namespace's TCP sysctls and `/proc/net/netstat` counters, read from the
//! calling thread's namespace: run it inside `netns::in_netns`. `/proc/thread-self/net`
//! is the thread's own namespace (`proc_tgid_net`/`get_proc_task_net()` take the
//! task's nsproxy), and a `/proc/sys/net/*` file shows the namespace of whoever opens
//! it (`net_ctl_header_lookup()` uses `current->nsproxy->net_ns`).

use std::fs;

/// One sysctl under `/proc/sys/net/`, as whitespace-separated integers.
pub fn sysctl(name: &str) -> Option<Vec<i64>> {
    let text = fs::read_to_string(format!("/proc/sys/net/{name}")).ok()?;
    text.split_whitespace().map(|v| v.parse().ok()).collect()
}

/// `ip_local_port_range` (low, high).
pub fn port_range() -> Option<(u16, u16)> {
    match sysctl("ipv4/ip_local_port_range")?.as_slice() {
        [lo, hi] => Some((u16::try_from(*lo).ok()?, u16::try_from(*hi).ok()?)),
        _ => None,
    }
}

/// A single-valued sysctl.
pub fn sysctl1(name: &str) -> Option<i64> {
    sysctl(name)?.first().copied()
}

/// `TcpExt` counters by name from this thread's namespace's `/proc/net/netstat`.
pub fn tcp_ext(names: &[&str]) -> Option<Vec<u64>> {
    let text = fs::read_to_string("/proc/thread-self/net/netstat").ok()?;
    parse_tcp_ext(&text, names)
}

/// The file holds pairs of lines, `TcpExt: Name Name ...` then `TcpExt: 1 2 ...`.
pub fn parse_tcp_ext(text: &str, names: &[&str]) -> Option<Vec<u64>> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let head: Vec<&str> = lines.next()?.split_whitespace().skip(1).collect();
    let vals: Vec<&str> = lines.next()?.split_whitespace().skip(1).collect();
    names
        .iter()
        .map(|n| {
            let i = head.iter().position(|h| h == n)?;
            vals.get(i)?.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netstat_pairs_and_own_namespace() {
        let t = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 7 9\nIpExt: A\nIpExt: 1\n";
        assert_eq!(
            parse_tcp_ext(t, &["ListenDrops", "ListenOverflows"]),
            Some(vec![9, 7])
        );
        assert_eq!(parse_tcp_ext(t, &["Nope"]), None);
        assert_eq!(parse_tcp_ext("", &["ListenDrops"]), None);
        assert!(tcp_ext(&["ListenOverflows", "ListenDrops"]).is_some());
        let (lo, hi) = port_range().unwrap();
        assert!(lo <= hi);
        assert!(sysctl1("ipv4/tcp_fin_timeout").is_some());
        assert!(sysctl("ipv4/nope").is_none());
    }
}
