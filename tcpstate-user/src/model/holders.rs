//! Who holds each socket now, and what the kernel said of it: one fd scan (the
//! `task_file` iterator) indexed by cookie. Fork-inherited and SCM_RIGHTS-passed fds
//! count; a reused PID inherits nothing, because the scan is fresh at each report.
//! Connections waiting in a listener's accept queue are held by the listener's
//! holder, with no fd of their own.

use std::collections::HashMap;

use tcpstate_common::{FdRecord, FD_NONE};

/// A process name as the kernel keeps it: up to 16 bytes, NUL-padded.
pub type Comm = [u8; 16];

/// Who holds a socket: the lowest pid (then fd) among its holders, and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// `None`: not accepted yet (in the accept queue of the listener at
    /// `rec.listener_fd`).
    pub fd: Option<u32>,
    pub holders: u32,
    /// The record of that holder's fd: the socket's facts as the walk read them.
    pub rec: FdRecord,
}

/// An fd scan indexed by cookie: the records themselves, sorted by cookie and one
/// per socket (the holder count kept in the record's spare `_pad`), so 500k sockets
/// cost their 120-byte records and nothing more (a hash map's buckets, or a second
/// vector, would double that); process names kept once per process.
#[derive(Debug, Default)]
pub struct Holders {
    recs: Vec<FdRecord>,
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
    /// Adds one fd (or queued connection) to the holders of its socket; call
    /// [`Self::finish`] once all are added.
    pub fn add(&mut self, f: &FdRecord) {
        if f.cookie == 0 {
            return;
        }
        self.recs.push(*f);
        self.comms
            .entry(f.pid)
            .or_insert_with(|| clean_comm(&f.comm));
    }

    /// Indexes what [`Self::add`] collected: one holder per socket, the lowest pid
    /// (then fd) among its holders.
    pub fn finish(&mut self) {
        let recs = &mut self.recs;
        recs.sort_unstable_by_key(|r| (r.cookie, r.pid, r.fd));
        for r in recs.iter_mut() {
            r._pad = 1;
        }
        // In place: each run of one cookie keeps its first record, counting the rest.
        let mut w = 0;
        for i in 0..recs.len() {
            if w > 0 && recs[w - 1].cookie == recs[i].cookie {
                recs[w - 1]._pad += 1;
            } else {
                recs[w] = recs[i];
                w += 1;
            }
        }
        recs.truncate(w);
        recs.shrink_to_fit();
    }

    fn holder(r: &FdRecord) -> Holder {
        Holder {
            pid: r.pid,
            fd: (r.fd != FD_NONE).then_some(r.fd),
            holders: r._pad,
            rec: *r,
        }
    }

    pub fn get(&self, cookie: u64) -> Option<Holder> {
        self.recs
            .binary_search_by_key(&cookie, |r| r.cookie)
            .ok()
            .map(|i| Self::holder(&self.recs[i]))
    }

    /// Hands out every socket's holder (and its name), freeing the records as it
    /// goes: a 500k-socket scan need not coexist with the report built from it.
    pub fn drain(&mut self, mut each: impl FnMut(Holder, Comm)) {
        while let Some(r) = self.recs.pop() {
            each(Self::holder(&r), self.comm(r.pid));
            if self.recs.len().is_multiple_of(1 << 16) {
                self.recs.shrink_to_fit();
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.recs.len()
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
    m.finish();
    m
}

/// An fd record with every fact zero (a test building block).
#[cfg(test)]
pub fn record(cookie: u64, pid: u32, fd: u32, state: u8) -> FdRecord {
    FdRecord {
        cookie,
        pid,
        fd,
        state,
        ..FdRecord::EMPTY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_pid_holds_shared_sockets() {
        let h = holders(&[
            record(7, 20, 4, 8),
            record(7, 10, 9, 8),
            record(7, 10, 3, 8),
        ]);
        let h = h.get(7).unwrap();
        assert_eq!((h.pid, h.fd, h.holders), (10, Some(3), 3));
    }

    #[test]
    fn queued_connections_have_no_fd() {
        let mut q = record(9, 30, FD_NONE, 8);
        q.queued = 1;
        q.listener_fd = 3;
        let h = holders(&[q, record(8, 30, 5, 8)]);
        assert_eq!(h.len(), 2);
        assert_eq!(h.get(9).unwrap().fd, None);
        assert_eq!(h.get(9).unwrap().rec.listener_fd, 3);
        assert_eq!(h.get(8).unwrap().fd, Some(5));
        assert!(h.get(10).is_none());
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
