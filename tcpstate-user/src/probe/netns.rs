//! Network namespaces: finding every one on the host, and dumping the TCP sockets of
//! each with sock_diag from inside it (sock_diag and `iter/tcp` list only the caller's
//! namespace; the `task_file` walk already crosses them, for sockets held by an fd).
//!
//! - Discovery ([`discover`]): every task's `/proc/PID/task/TID/ns/net` (a thread may
//!   have its own: `unshare`/`setns` act per thread), and the nsfs bind mounts of
//!   `/proc/self/mountinfo` (`ip netns add` -> `/run/netns/*`, docker's
//!   `/run/docker/netns/*`, ...), which keep namespaces with no process alive.
//!   [`Registry::add`] takes namespaces learned elsewhere (a socket's `netns` from the
//!   probe, with the pid that holds it). Cost: a `readdir` per process and a
//!   `readlink` per task: 8 ms for 149 tasks here (~50 µs a task, so ~0.5 s for 10k
//!   threads); run it at startup and on a slow timer, never per event.
//!   [`Registry::scan`] costs a thread, a `setns` and two sock_diag dumps per
//!   namespace (13 ms for this host's one namespace, first call).
//! - Identity: the nsfs inode (`readlink /proc/PID/ns/net` -> `net:[N]`, the kernel's
//!   `net->ns.inum`) is what users see as `netns`. Inode numbers are reused after a
//!   namespace dies, so [`NsId`] also carries the namespace cookie
//!   (`getsockopt(SO_NETNS_COOKIE)` on a socket made inside, since 5.14:
//!   `sock_net(sk)->net_cookie`, a 64-bit counter never reused until reboot); keys that
//!   must not collide across a namespace's death (the TIME_WAIT 4-tuple) use it, and
//!   [`Registry`] notices a reused inode when the cookie changes. The probe can read
//!   the same value as `net->net_cookie`.
//! - Entering: [`in_netns`] runs a closure on a fresh OS thread that `setns()` into the
//!   namespace and exits after it: setns acts on the calling thread only, and doing it
//!   on the runtime's thread would move every later socket there (an exporter's
//!   listener included). Sockets made inside stay in that namespace after the thread
//!   ends.
//! - A namespace that disappears: between discovery and a scan its last process can
//!   exit or its bind mount be removed. Opening it then fails (ENOENT/ESRCH) or finds
//!   another namespace at that pid/path (inode mismatch): that opener is dropped, the
//!   next one tried, and a namespace with none left is forgotten and counted in
//!   [`ScanReport::gone`]; the scan goes on with the others, never aborts. Once its fd
//!   is open, the namespace cannot die until the dump inside it ends (the fd pins it).

#![allow(dead_code)] // Wired by issue 12's commands; see the module doc.

use std::{
    collections::HashMap,
    fs, io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::fs::MetadataExt,
    path::PathBuf,
};

use super::{cgroups::parse_mountinfo, sockdiag};

/// How to open a namespace again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opener {
    /// `/proc/PID/task/TID/ns/net`.
    Task { pid: u32, tid: u32 },
    /// An nsfs bind mount (`/run/netns/NAME`) or any path to the namespace.
    Path(PathBuf),
    /// A socket of the namespace that process `pid` holds as `fd`: the one way into a
    /// namespace that only a socket keeps alive (no task in it, no bind mount).
    Socket { pid: u32, fd: u32 },
}

impl Opener {
    /// The namespace's file, or (for [`Opener::Socket`]) a description.
    pub fn path(&self) -> PathBuf {
        match self {
            Opener::Task { pid, tid } => format!("/proc/{pid}/task/{tid}/ns/net").into(),
            Opener::Path(p) => p.clone(),
            Opener::Socket { pid, fd } => format!("socket fd {fd} of pid {pid}").into(),
        }
    }

    fn open(&self) -> io::Result<fs::File> {
        match self {
            Opener::Socket { pid, fd } => socket_netns(*pid, *fd).map(fs::File::from),
            _ => fs::File::open(self.path()),
        }
    }
}

/// `SIOCGSKNS` (include/uapi/linux/sockios.h): an fd for a socket's network namespace
/// (`sock_ioctl()` -> `get_net_ns()`), since 4.9.
const SIOCGSKNS: libc::c_ulong = 0x894C;

/// The namespace of the socket `pid` holds as `fd`: a copy of that fd
/// (`pidfd_getfd`, 5.6; ptrace access to the process, CAP_SYS_PTRACE for others'),
/// then `SIOCGSKNS` on it. The copy is closed at once.
pub fn socket_netns(pid: u32, fd: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscalls; every returned fd is owned at once.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0);
        if pidfd < 0 {
            return Err(io::Error::last_os_error());
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let sock = libc::syscall(
            libc::SYS_pidfd_getfd,
            pidfd.as_raw_fd(),
            fd as libc::c_int,
            0,
        );
        if sock < 0 {
            return Err(io::Error::last_os_error());
        }
        let sock = OwnedFd::from_raw_fd(sock as i32);
        let ns = libc::ioctl(sock.as_raw_fd(), SIOCGSKNS as _);
        if ns < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(ns))
    }
}

/// A namespace as users see it and as tcpstate keys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NsId {
    /// `net->ns.inum`: what `readlink /proc/PID/ns/net` prints.
    pub inode: u32,
    /// `net->net_cookie`: unique for the boot.
    pub cookie: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum NsError {
    #[error("network namespace {0} is gone")]
    Gone(u32),
    #[error("network namespace {inode}: {source}")]
    Io { inode: u32, source: io::Error },
}

/// `net:[N]` -> N.
pub fn parse_ns_link(s: &str) -> Option<u32> {
    s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// The calling thread's namespace inode.
pub fn current_inode() -> io::Result<u32> {
    let l = fs::read_link("/proc/thread-self/ns/net")?;
    parse_ns_link(&l.to_string_lossy()).ok_or_else(|| io::Error::other("unexpected ns link"))
}

/// Opens a namespace and checks it is still the one with `inode`.
pub fn open(inode: u32, opener: &Opener) -> Result<OwnedFd, NsError> {
    let f = match opener.open() {
        Ok(f) => f,
        // Gone: the path or process (ENOENT, ESRCH), or the holder's fd (EBADF).
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ESRCH | libc::EBADF)
            ) =>
        {
            return Err(NsError::Gone(inode))
        }
        Err(source) => return Err(NsError::Io { inode, source }),
    };
    let meta = f
        .metadata()
        .map_err(|source| NsError::Io { inode, source })?;
    if meta.ino() != u64::from(inode) {
        // The pid or path now names another namespace (or nothing nsfs at all).
        return Err(NsError::Gone(inode));
    }
    Ok(f.into())
}

/// The cookie of the calling thread's namespace (kernel >= 5.14).
pub fn current_cookie() -> io::Result<u64> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: valid pointers to a u64 and its length.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Runs `f` inside the namespace open at `ns` on a fresh OS thread, which ends with it.
/// A panic in `f` is resumed in the caller.
pub fn in_netns_fd<T: Send>(ns: &OwnedFd, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let raw = ns.as_raw_fd();
    std::thread::scope(|s| {
        let h = s.spawn(move || {
            // SAFETY: raw is an open nsfs fd borrowed for the thread's life (scoped).
            if unsafe { libc::setns(raw, libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        });
        h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Opens the namespace (checking its inode) and runs `f` inside it on a fresh thread.
pub fn in_netns<T: Send>(
    inode: u32,
    opener: &Opener,
    f: impl FnOnce() -> T + Send,
) -> Result<T, NsError> {
    let fd = open(inode, opener)?;
    in_netns_fd(&fd, f).map_err(|source| NsError::Io { inode, source })
}

/// What one discovery pass found.
#[derive(Debug, Default)]
pub struct Discovered {
    /// Each namespace once, with every way found to open it (bind mounts first: they
    /// outlive processes).
    pub namespaces: HashMap<u32, Vec<Opener>>,
    /// Tasks that exited while being read (normal; not an error for the user).
    pub vanished: u64,
}

/// Finds every namespace visible from here: bind mounts, then every task's.
pub fn discover() -> Discovered {
    let mut d = Discovered::default();
    if let Ok(text) = fs::read_to_string("/proc/self/mountinfo") {
        for m in parse_mountinfo(&text) {
            if m.fstype != "nsfs" {
                continue;
            }
            if let Some(ino) = parse_ns_link(&m.root) {
                push(&mut d.namespaces, ino, Opener::Path(m.mount_point));
            }
        }
    }
    let pids = fs::read_dir("/proc").into_iter().flatten().flatten();
    for p in pids {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            d.vanished += 1;
            continue;
        };
        for t in tasks.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let opener = Opener::Task { pid, tid };
            match fs::read_link(opener.path()) {
                Ok(l) => {
                    if let Some(ino) = parse_ns_link(&l.to_string_lossy()) {
                        push(&mut d.namespaces, ino, opener);
                    }
                }
                // Exited, or a kernel thread's ns link we may not read.
                Err(_) => d.vanished += 1,
            }
        }
    }
    d
}

impl Discovered {
    /// A namespace seen on a socket that `pid` holds as `fd` (an fd walk's record):
    /// the way in to one that no task is in and no mount names, which only its
    /// sockets keep alive. Namespaces found otherwise keep their own openers.
    pub fn add_socket(&mut self, inode: u32, pid: u32, fd: u32) {
        let known = self
            .namespaces
            .get(&inode)
            .is_some_and(|v| v.iter().any(|o| !matches!(o, Opener::Socket { .. })));
        if !known {
            push(&mut self.namespaces, inode, Opener::Socket { pid, fd });
        }
    }
}

/// Keeps at most a few openers per namespace: one task is enough while it lives, and
/// a handful covers the first ones exiting.
const MAX_OPENERS: usize = 4;

fn push(map: &mut HashMap<u32, Vec<Opener>>, ino: u32, o: Opener) {
    let v = map.entry(ino).or_default();
    if v.len() < MAX_OPENERS && !v.contains(&o) {
        v.push(o);
    }
}

/// What a scan of every namespace did.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// Namespaces dumped.
    pub scanned: u64,
    /// Namespaces that had disappeared (forgotten).
    pub gone: Vec<u32>,
    /// Namespaces that could not be entered or dumped (kept; tried again next scan).
    pub failed: Vec<(u32, String)>,
    /// Inodes that now belong to a new namespace (a different cookie).
    pub reused: Vec<u32>,
}

#[derive(Debug, Default)]
struct Entry {
    cookie: Option<u64>,
    openers: Vec<Opener>,
}

/// The namespaces tcpstate knows, with how to enter each.
#[derive(Debug, Default)]
pub struct Registry {
    entries: HashMap<u32, Entry>,
}

impl Registry {
    /// A namespace learned elsewhere (e.g. a socket's `netns` and the pid holding it:
    /// `Opener::Task { pid, tid: pid }`).
    pub fn add(&mut self, inode: u32, opener: Opener) {
        let e = self.entries.entry(inode).or_default();
        if e.openers.len() < MAX_OPENERS && !e.openers.contains(&opener) {
            e.openers.push(opener);
        }
    }

    pub fn add_discovered(&mut self, d: Discovered) {
        for (ino, openers) in d.namespaces {
            for o in openers {
                self.add(ino, o);
            }
        }
    }

    pub fn inodes(&self) -> impl Iterator<Item = u32> + '_ {
        self.entries.keys().copied()
    }

    /// The cookie last seen for `inode` (known once it was scanned).
    pub fn cookie(&self, inode: u32) -> Option<u64> {
        self.entries.get(&inode)?.cookie
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Dumps the TCP sockets whose state bit is set in `states` in every namespace,
    /// each from inside it on its own thread, calling `each` with the namespace.
    /// Namespaces are dumped one after the other (one thread at a time).
    pub fn scan(
        &mut self,
        states: u32,
        mut each: impl FnMut(NsId, &sockdiag::DiagSocket) + Send,
    ) -> ScanReport {
        let mut report = ScanReport::default();
        let mut inodes: Vec<u32> = self.entries.keys().copied().collect();
        inodes.sort_unstable();
        for inode in inodes {
            let entry = self.entries.get_mut(&inode).expect("listed");
            let fd = loop {
                let Some(o) = entry.openers.first() else {
                    break None;
                };
                match open(inode, o) {
                    Ok(fd) => break Some(fd),
                    Err(NsError::Gone(_)) => {
                        entry.openers.remove(0);
                    }
                    Err(e) => {
                        report.failed.push((inode, e.to_string()));
                        break None;
                    }
                }
            };
            let Some(fd) = fd else {
                if entry.openers.is_empty() {
                    self.entries.remove(&inode);
                    report.gone.push(inode);
                }
                continue;
            };
            let each = &mut each;
            let res = in_netns_fd(&fd, move || -> io::Result<u64> {
                let cookie = current_cookie()?;
                let id = NsId { inode, cookie };
                sockdiag::for_each_tcp(states, |s| each(id, s))?;
                Ok(cookie)
            });
            match res.and_then(|r| r) {
                Ok(cookie) => {
                    if entry.cookie.is_some_and(|c| c != cookie) {
                        report.reused.push(inode);
                    }
                    entry.cookie = Some(cookie);
                    report.scanned += 1;
                }
                Err(e) => report.failed.push((inode, e.to_string())),
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Shutdown, TcpListener, TcpStream},
        process::{Child, Command, Stdio},
    };

    use super::*;
    use crate::probe::cgroups::require_root;

    const LISTEN: u8 = 10;
    const CLOSE_WAIT: u8 = 8;

    #[test]
    fn links_and_own_namespace() {
        assert_eq!(parse_ns_link("net:[4026531840]"), Some(4026531840));
        for bad in ["net:[]", "mnt:[1]", "net:[x]", "net:4026531840", ""] {
            assert_eq!(parse_ns_link(bad), None, "{bad}");
        }
        let me = current_inode().unwrap();
        assert!(current_cookie().unwrap() > 0);
        let d = discover();
        // Found, with at most MAX_OPENERS ways in, one of which opens it.
        let openers = &d.namespaces[&me];
        assert!(!openers.is_empty() && openers.len() <= MAX_OPENERS);
        assert!(openers.iter().any(|o| open(me, o).is_ok()));
        // A path that now names another namespace (or none) is "gone".
        assert!(matches!(
            open(12345, &Opener::Path("/proc/self/ns/net".into())),
            Err(NsError::Gone(12345))
        ));
        assert!(matches!(
            open(
                me,
                &Opener::Task {
                    pid: u32::MAX,
                    tid: u32::MAX
                }
            ),
            Err(NsError::Gone(_))
        ));
    }

    /// The kernel fields the probe reads for a socket's identity resolve in the
    /// running kernel's BTF. Their offsets move between builds (`ns_common` gained
    /// `ns_type` in 6.18; another 6.18.44 build has `net_cookie` at 4096, not 4160),
    /// so only relations that hold on every kernel are checked.
    #[test]
    fn identity_fields_in_kernel_btf() {
        let mut btf = crate::probe::offsets::load_vmlinux().expect("kernel BTF");
        btf.index(&["sock", "net", "cgroup", "kernfs_node"])
            .unwrap();
        let o = |s: &str, p: &str| crate::probe::offsets::offset_of(&btf, s, p).unwrap();
        // netns: sk->__sk_common.skc_net.net -> net->ns.inum (sock_net(), net_eq()),
        // possible_net_t being a struct of one pointer.
        assert_eq!(
            o("sock", "__sk_common.skc_net.net"),
            o("sock", "__sk_common.skc_net")
        );
        // struct net starts with its refcounts and list heads; ns and the cookie
        // (SO_NETNS_COOKIE, sk_getsockopt()) come later, inside it.
        assert!(o("net", "ns.inum") > 0);
        assert!(o("net", "net_cookie") > o("net", "ns.inum"));
        // cgroup: sk->sk_cgrp_data.cgroup (sock_cgroup_ptr(), set by cgroup_sk_alloc()
        // at sk_alloc(), copied by cgroup_sk_clone() to accepted children) ->
        // cgroup->kn -> kernfs_node.id (cgroup_id()); cgroup->level and ->ancestors[]
        // (cgroup_ancestor()), the flexible array, last.
        assert_eq!(o("sock", "sk_cgrp_data.cgroup"), o("sock", "sk_cgrp_data"));
        assert!(o("sock", "sk_cgrp_data") > o("sock", "__sk_common.skc_net"));
        assert!(o("cgroup", "ancestors") > o("cgroup", "level"));
        assert!(o("cgroup", "ancestors") > o("cgroup", "kn"));
        let _ = o("kernfs_node", "id");
    }

    /// Namespaces made with `ip netns add` and processes started in them; all deleted
    /// and killed even when the test fails.
    #[derive(Default)]
    struct Guard {
        names: Vec<String>,
        children: Vec<Child>,
    }

    impl Guard {
        fn add(&mut self, name: &str) -> u32 {
            self.names.push(name.into());
            ip(&["netns", "add", name]);
            ip(&["-n", name, "link", "set", "lo", "up"]);
            let m = fs::metadata(format!("/run/netns/{name}")).unwrap();
            m.ino() as u32
        }
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            for c in &mut self.children {
                let _ = c.kill();
                let _ = c.wait();
            }
            for n in &self.names {
                let _ = Command::new("ip").args(["netns", "del", n]).status();
            }
        }
    }

    fn ip(args: &[&str]) {
        let st = Command::new("ip").args(args).status().unwrap();
        assert!(st.success(), "ip {args:?}: {st}");
    }

    /// A listener and a CLOSE_WAIT socket (accepted, its peer closed) on `addr`.
    fn server(addr: &str) -> (TcpListener, TcpStream, u64) {
        let l = TcpListener::bind(addr).unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        c.shutdown(Shutdown::Both).unwrap();
        drop(c);
        let cookie = current_cookie().unwrap();
        (l, s, cookie)
    }

    #[test]
    fn dumps_inside_each_namespace() {
        if !require_root("dumps_inside_each_namespace") {
            return;
        }
        let mut g = Guard::default();
        let name = format!("tcpstate-t{}", std::process::id());
        let gone_name = format!("tcpstate-g{}", std::process::id());
        let inode = g.add(&name);
        let gone_inode = g.add(&gone_name);
        // A process inside: its /proc/PID/ns/net must name the same inode.
        let child = Command::new("ip")
            .args(["netns", "exec", &name, "sleep", "30"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        g.children.push(child);
        let link = (0..100)
            .find_map(|_| {
                let l = fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
                let ino = parse_ns_link(&l.to_string_lossy())?;
                if ino == inode {
                    Some(ino)
                } else {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    None
                }
            })
            .expect("ip netns exec moved the child");
        assert_eq!(link, inode);
        let out = Command::new("ip")
            .args(["netns", "identify", &pid.to_string()])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), name);

        // Sockets made on a thread inside stay there after it ends.
        let opener = Opener::Path(format!("/run/netns/{name}").into());
        let (v4, v6, ns_cookie) = in_netns(inode, &opener, || {
            assert_eq!(current_inode().unwrap(), inode, "the thread is inside");
            (
                server("127.0.0.1:0"),
                server("[::1]:0"),
                current_cookie().unwrap(),
            )
        })
        .unwrap();
        assert_eq!(v4.2, ns_cookie);
        assert_ne!(
            ns_cookie,
            current_cookie().unwrap(),
            "cookies differ per namespace"
        );
        assert_ne!(current_inode().unwrap(), inode, "the caller never moved");

        let d = discover();
        let openers = &d.namespaces[&inode];
        assert!(openers.contains(&opener), "bind mount found: {openers:?}");
        assert!(openers
            .iter()
            .any(|o| matches!(o, Opener::Task { pid: p, .. } if *p == pid)));
        assert!(d.namespaces.contains_key(&gone_inode));

        let mut reg = Registry::default();
        reg.add_discovered(d);
        // The second namespace disappears between discovery and the scan.
        ip(&["netns", "del", &gone_name]);
        g.names.retain(|n| *n != gone_name);

        let states = (1 << LISTEN) | (1 << CLOSE_WAIT);
        let mut seen: Vec<(NsId, sockdiag::DiagSocket)> = Vec::new();
        let report = reg.scan(states, |id, s| seen.push((id, *s)));
        // Other tests' namespaces may vanish meanwhile too: only ours are asserted.
        assert!(report.gone.contains(&gone_inode), "{report:?}");
        assert!(!report.gone.contains(&inode), "{report:?}");
        assert!(report.failed.is_empty(), "{report:?}");
        assert!(
            report.scanned >= 2,
            "the others were still scanned: {report:?}"
        );
        assert!(reg.cookie(gone_inode).is_none());
        assert_eq!(reg.cookie(inode), Some(ns_cookie));

        let mine: Vec<&sockdiag::DiagSocket> = seen
            .iter()
            .filter(|(id, _)| id.inode == inode)
            .map(|(_, s)| s)
            .collect();
        assert!(seen
            .iter()
            .filter(|(id, _)| id.inode == inode)
            .all(|(id, _)| id.cookie == ns_cookie));
        for (l, s, fam) in [(&v4.0, &v4.1, "127.0.0.1"), (&v6.0, &v6.1, "::1")] {
            let port = l.local_addr().unwrap().port();
            assert!(
                mine.iter()
                    .any(|d| d.state == LISTEN && d.sport == port && d.saddr.to_string() == fam),
                "{fam} listener in {mine:?}"
            );
            let sport = s.local_addr().unwrap().port();
            let dport = s.peer_addr().unwrap().port();
            assert!(
                mine.iter()
                    .any(|d| d.state == CLOSE_WAIT && d.sport == sport && d.dport == dport),
                "{fam} CLOSE_WAIT in {mine:?}"
            );
        }
        assert_eq!(
            mine.len(),
            4,
            "only this test's sockets are inside: {mine:?}"
        );
        // The host's own dump (this thread's namespace) has none of them.
        let theirs: Vec<u64> = mine.iter().map(|d| d.cookie).collect();
        let mut host = Vec::new();
        sockdiag::for_each_tcp(states, |s| host.push(s.cookie)).unwrap();
        assert!(host.iter().all(|c| !theirs.contains(c)));

        // A second scan: same cookie, nothing reused.
        let report = reg.scan(states, |_, _| {});
        assert!(
            report.reused.is_empty() && report.gone.is_empty(),
            "{report:?}"
        );
    }
}
