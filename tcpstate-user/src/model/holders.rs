//! Who holds each socket now: one fd scan (the `task_file` iterator) indexed by
//! cookie. Fork-inherited and SCM_RIGHTS-passed fds count; a reused PID inherits
//! nothing, because the scan is fresh at each report.

use std::collections::HashMap;

use tcpstate_common::FdRecord;

/// A process name as the kernel keeps it: up to 16 bytes, NUL-padded.
pub type Comm = [u8; 16];

/// Who holds a socket: the lowest pid (then fd) among its holders, and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub fd: u32,
    pub holders: u32,
}

/// An fd scan indexed by cookie; process names kept once per process, not per
/// socket (100k sockets held by a few processes is the case to be small for).
#[derive(Debug, Default)]
pub struct Holders {
    by_cookie: HashMap<u64, Holder>,
    comms: HashMap<u32, Comm>,
}

/// `comm` with every byte after its first NUL zeroed, so equal names compare equal.
pub fn clean_comm(comm: &Comm) -> Comm {
    let mut c = *comm;
    if let Some(end) = c.iter().position(|&b| b == 0) {
        c[end..].fill(0);
    }
    c
}

impl Holders {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            by_cookie: HashMap::with_capacity(n),
            comms: HashMap::new(),
        }
    }

    /// Adds one fd to the holders of its socket.
    pub fn add(&mut self, f: &FdRecord) {
        if f.cookie == 0 {
            return;
        }
        self.by_cookie
            .entry(f.cookie)
            .and_modify(|h| {
                if (f.pid, f.fd) < (h.pid, h.fd) {
                    h.pid = f.pid;
                    h.fd = f.fd;
                }
                h.holders += 1;
            })
            .or_insert(Holder {
                pid: f.pid,
                fd: f.fd,
                holders: 1,
            });
        self.comms
            .entry(f.pid)
            .or_insert_with(|| clean_comm(&f.comm));
    }

    pub fn get(&self, cookie: u64) -> Option<&Holder> {
        self.by_cookie.get(&cookie)
    }

    pub fn comm(&self, pid: u32) -> Comm {
        self.comms.get(&pid).copied().unwrap_or([0; 16])
    }
}

/// Indexes an fd scan by cookie.
#[cfg(test)]
pub fn holders(fds: &[FdRecord]) -> Holders {
    let mut m = Holders::default();
    for f in fds {
        m.add(f);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_pid_holds_shared_sockets() {
        let mk = |pid, fd| FdRecord {
            cookie: 7,
            pid,
            fd,
            comm: [0; 16],
            state: 8,
            _pad: [0; 7],
        };
        let h = holders(&[mk(20, 4), mk(10, 9), mk(10, 3)]);
        let h = h.get(7).unwrap();
        assert_eq!((h.pid, h.fd, h.holders), (10, 3, 3));
    }

    #[test]
    fn names_compare_up_to_their_nul() {
        assert_eq!(
            clean_comm(b"ab\0zzzzzzzzzzzzz"),
            *b"ab\0\0\0\0\0\0\0\0\0\0\0\0\0\0"
        );
        assert_eq!(clean_comm(b"sixteen-chars-ab"), *b"sixteen-chars-ab");
    }
}
