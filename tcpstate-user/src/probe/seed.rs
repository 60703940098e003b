//! Owners of the sockets that predate tcpstate, given to the probe before it says
//! "attached", in the kernel: every TCP socket some process holds an fd for, and
//! every connection waiting in the accept queue of a held listener (the listener's
//! holder, `owner_from: listener`), gets its owner in the probe's `SEED_OWNERS`
//! index, which the transition probe takes into the socket's record at its next
//! transition. Listeners get their records at once, so that every connection they
//! accept later starts with a copy of it (and so has an owner before accept()).
//!
//! Two routes to a listener's record, the first the kernel's verifier accepts
//! (trying the load is the feature check, see `Probe::load`):
//! - [`Route::Direct`]: `seed_owners` (`iter/task_file`) makes it from the socket
//!   behind the listener's file.
//! - [`Route::Indexed`], where that socket pointer is untrusted (some 6.18 builds):
//!   `seed_index` (`iter/task_file`) says which namespaces hold listeners, with a
//!   socket fd in each; then `seed_adopt` (`iter/tcp`, whose socket pointer is
//!   trusted) makes their records, once per namespace, from a thread inside it
//!   (`iter/tcp` lists the namespace its fd was opened in).
//!
//! Both walks run once; their programs are unloaded afterwards. The index lives
//! until tcpstate exits (one entry per socket that has not changed state since).

use std::{collections::HashMap, io};

use aya::programs::Iter;
use tcpstate_common::{names, SeedRecord, SEED_LISTENER};

use super::{
    maps::{read_file, read_iter},
    netns::{self, Opener},
    Probe,
};

/// How this kernel lets the probe seed owners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Direct,
    Indexed,
    /// Refused: owners of existing sockets stay unknown (a degraded feature).
    None,
}

/// What a seed did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Seeded {
    /// Sockets that got a record naming their owner.
    pub sockets: usize,
    /// Namespaces that could not be entered (their sockets stay unnamed), with why.
    pub failed: Vec<(u32, String)>,
}

/// `SEED_OWNERS`' capacity: twice the host's TCP sockets now (every namespace's:
/// `tcp_sockets_allocated`, /proc/net/sockstat's `alloc`), for those made during the
/// walk; entries are allocated as they are filled, so only the size bound is set.
pub fn index_capacity() -> u32 {
    let alloc = std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|t| sockstat_alloc(&t))
        .unwrap_or(0);
    (alloc.saturating_mul(2).saturating_add(1024)).min(u32::MAX as u64 / 2) as u32
}

/// `alloc` of the `TCP:` line of /proc/net/sockstat.
fn sockstat_alloc(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "alloc" {
            return words.next()?.parse().ok();
        }
    }
    None
}

impl Probe {
    /// Whether this kernel lets the probe seed owners (the route it took).
    pub fn seed_route(&self) -> Route {
        self.seed
    }

    /// Seeds the owners of existing sockets by this kernel's route; records the
    /// probe already made win.
    pub fn seed_owners(&mut self) -> io::Result<Seeded> {
        let walk = match self.seed {
            Route::None => return Ok(Seeded::default()),
            Route::Direct => names::PROG_SEED_OWNERS,
            Route::Indexed => names::PROG_SEED_INDEX,
        };
        let r = self.seed_with(walk);
        self.drop_seed_index();
        r
    }

    /// Runs the fd walk `walk`, then `seed_adopt` in each namespace with sockets it
    /// indexed.
    fn seed_with(&mut self, walk: &str) -> io::Result<Seeded> {
        let mut seeded = Seeded::default();
        // Each namespace with indexed sockets, with a few (pid, fd) to enter it by.
        let mut namespaces: HashMap<u32, Vec<Opener>> = HashMap::new();
        read_iter::<{ std::mem::size_of::<SeedRecord>() }>(&mut self.ebpf, walk, |c| {
            // SAFETY: plain old data; each chunk is one whole record.
            let r = unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<SeedRecord>()) };
            if r.how != SEED_LISTENER {
                // A record made now, or an owner the probe takes at the next
                // transition.
                seeded.sockets += 1;
                return;
            }
            let v = namespaces.entry(r.netns).or_default();
            if v.len() < 4 {
                v.push(Opener::Socket {
                    pid: r.pid,
                    fd: r.fd,
                });
            }
        })?;
        if namespaces.is_empty() {
            return Ok(seeded);
        }
        let adopt = self
            .ebpf
            .program(names::PROG_SEED_ADOPT)
            .is_some_and(|p| p.fd().is_ok());
        if !adopt {
            return Ok(seeded);
        }
        let own = netns::current_inode().ok();
        let mut inodes: Vec<u32> = namespaces.keys().copied().collect();
        inodes.sort_unstable();
        for inode in inodes {
            let adopted = if Some(inode) == own {
                self.adopt_here()
            } else {
                self.adopt_in(inode, &namespaces[&inode])
            };
            match adopted {
                Ok(n) => seeded.sockets += n,
                Err(e) => seeded.failed.push((inode, e.to_string())),
            }
        }
        Ok(seeded)
    }

    /// Runs `seed_adopt` over the listeners of the calling thread's namespace.
    fn adopt_here(&mut self) -> io::Result<usize> {
        let mut n = 0;
        read_iter::<8>(&mut self.ebpf, names::PROG_SEED_ADOPT, |_| n += 1)?;
        Ok(n)
    }

    /// Runs `seed_adopt` over the listeners of namespace `inode`: its iterator fd is
    /// made on a thread inside it (the namespace is bound when the fd is made),
    /// then read here.
    fn adopt_in(&mut self, inode: u32, openers: &[Opener]) -> io::Result<usize> {
        let mut last = io::Error::other("no way into it");
        for o in openers {
            let ns = match netns::open(inode, o) {
                Ok(ns) => ns,
                Err(e) => {
                    last = io::Error::other(e.to_string());
                    continue;
                }
            };
            let iter: &mut Iter = self
                .ebpf
                .program_mut(names::PROG_SEED_ADOPT)
                .and_then(|p| p.try_into().ok())
                .ok_or_else(|| io::Error::other("seed_adopt not loaded"))?;
            let id = iter.attach().map_err(io::Error::other)?;
            let link = iter.take_link(id).map_err(io::Error::other)?;
            let file =
                netns::in_netns_fd(&ns, move || link.into_file())?.map_err(io::Error::other)?;
            let mut n = 0;
            read_file::<8>(file, |_| n += 1)?;
            return Ok(n);
        }
        Err(last)
    }

    /// Unloads the seed's programs: they run once (the index stays: the transition
    /// probe takes owners from it).
    fn drop_seed_index(&mut self) {
        for name in [
            names::PROG_SEED_OWNERS,
            names::PROG_SEED_INDEX,
            names::PROG_SEED_ADOPT,
        ] {
            if let Some(p) = self.ebpf.program_mut(name) {
                let iter: Result<&mut Iter, _> = p.try_into();
                if let Ok(iter) = iter {
                    let _ = iter.unload();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockstat_alloc_is_read() {
        let text =
            "sockets: used 290\nTCP: inuse 7 orphan 0 tw 2 alloc 1234 mem 3\nUDP: inuse 1 mem 0\n";
        assert_eq!(sockstat_alloc(text), Some(1234));
        assert_eq!(sockstat_alloc("TCP: inuse 7\n"), None);
        assert_eq!(sockstat_alloc(""), None);
    }
}
