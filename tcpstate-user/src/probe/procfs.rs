//! What `/proc` says about processes and the host: a process's name, the local port
//! range.

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

#[cfg(test)]
mod tests {
    #[test]
    fn own_name_and_a_gone_process() {
        let me = super::comm(std::process::id());
        assert_ne!(me[0], 0);
        assert_eq!(&super::comm(u32::MAX)[..2], b"?\0");
        assert!(super::local_port_range() > 0);
    }
}
