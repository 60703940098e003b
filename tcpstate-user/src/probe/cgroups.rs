//! The cgroup v2 hierarchy as userspace sees it: where it is mounted, cgroup id ->
//! path, and what `/proc/PID/cgroup` says (v2 line and, on hybrid hosts, v1 lines).
//! `model::container` turns the paths into container identities.
//!
//! - The mount: the `cgroup2` line of `/proc/self/mountinfo` (`/sys/fs/cgroup/unified`
//!   on this hybrid host, `/sys/fs/cgroup` on unified ones). Its root field is relative
//!   to tcpstate's cgroup-namespace root, like `/proc/PID/cgroup` paths
//!   (`model::container::resolve`).
//! - cgroup id -> path: the id the kernel gives (`bpf_get_current_cgroup_id()`,
//!   `sk->sk_cgrp_data` -> `cgroup->kn->id`) is the v2 directory's inode number
//!   (`kernfs_ino()`: on 64-bit, `kn->id` itself), which `readdir` returns as `d_ino`,
//!   so one walk of the mount maps every id without a `stat` per directory. Cost: one
//!   `open` + `getdents` per cgroup (not measured at scale: this host has 1 cgroup,
//!   walked in 44 µs). [`CgroupPaths`] caches the
//!   map and re-walks on a miss at most once per [`REWALK_EVERY`], so containers
//!   started after tcpstate resolve within a second, and a stream of unknown ids (a
//!   cgroup already removed) costs at most one walk a second.
//! - `/proc/PID/cgroup`: `0::/path` is the v2 cgroup; other lines are v1 hierarchies,
//!   kept for `model::container::identify_process`'s hybrid fallback (which v1
//!   controller is trusted is documented there: `devices` first).

#![allow(dead_code)] // Wired by issue 12's commands; see the module doc.

use std::{
    collections::HashMap,
    fs, io,
    os::unix::fs::{DirEntryExt, MetadataExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// The slowest rate at which a miss re-walks the hierarchy.
pub const REWALK_EVERY: Duration = Duration::from_secs(1);

/// One line of `/proc/self/mountinfo` (proc(5)), octal escapes (`\040`) undone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The mount's root within its filesystem (for cgroup2: relative to the reader's
    /// cgroup-namespace root; for nsfs: `net:[N]`).
    pub root: String,
    pub mount_point: PathBuf,
    pub fstype: String,
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(o) if b[i] == b'\\' => {
                out.push(
                    (u32::from(o[0] - b'0') * 64
                        + u32::from(o[1] - b'0') * 8
                        + u32::from(o[2] - b'0')) as u8,
                );
                i += 4;
            }
            _ => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text: `id parent maj:min root mount_point opts [optional...] -
/// fstype source super_opts`. Malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let dash = f.iter().position(|x| *x == "-")?;
            if dash < 6 {
                return None;
            }
            Some(Mount {
                root: unescape(f[3]),
                mount_point: PathBuf::from(unescape(f[4])),
                fstype: (*f.get(dash + 1)?).to_string(),
            })
        })
        .collect()
}

/// The cgroup2 mount tcpstate walks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Mount {
    pub path: PathBuf,
    /// mountinfo's root field: `/` normally, `/../..` when tcpstate runs in a cgroup
    /// namespace two levels below the mount's root.
    pub root: String,
    /// Whether the mount shows the hierarchy's root, so paths below it are the v2 paths
    /// from the root (`--cgroup` takes those). The root cgroup alone has no
    /// `cgroup.events` (`CFTYPE_NOT_ON_ROOT` in kernel/cgroup/cgroup.c).
    pub whole: bool,
}

/// The first cgroup2 mount (several are the same hierarchy; the first is the host's
/// own, e.g. `/sys/fs/cgroup/unified`). `None` on a v1-only host.
pub fn find_v2_mount() -> io::Result<Option<V2Mount>> {
    let text = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text)
        .into_iter()
        .find(|m| m.fstype == "cgroup2")
        .map(|m| V2Mount {
            whole: !m.mount_point.join("cgroup.events").exists(),
            path: m.mount_point,
            root: m.root,
        }))
}

/// cgroup id -> path below the mount point (`/` for the mount's top), cached.
pub struct CgroupPaths {
    mount: PathBuf,
    by_id: HashMap<u64, String>,
    last_walk: Option<Instant>,
    /// How often a miss may re-walk ([`REWALK_EVERY`]; tests shorten it).
    pub rewalk_every: Duration,
    /// Walks done (reported; tests check the throttle).
    pub walks: u64,
    /// Directories that vanished or could not be read during walks (skipped).
    pub walk_errors: u64,
}

impl CgroupPaths {
    /// No walk yet: the first lookup walks.
    pub fn new(mount: impl Into<PathBuf>) -> Self {
        Self {
            mount: mount.into(),
            by_id: HashMap::new(),
            last_walk: None,
            rewalk_every: REWALK_EVERY,
            walks: 0,
            walk_errors: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// The path of cgroup `id`, re-walking on a miss unless the last walk is more
    /// recent than `rewalk_every`.
    pub fn path(&mut self, id: u64) -> Option<&str> {
        if !self.by_id.contains_key(&id)
            && self
                .last_walk
                .is_none_or(|t| t.elapsed() >= self.rewalk_every)
        {
            // A failed walk (mount gone) leaves the old map: ids seen stay named.
            let _ = self.walk();
        }
        self.by_id.get(&id).map(String::as_str)
    }

    /// Every id whose path `matches` (e.g. `CgroupPrefix::matches`), from the
    /// last walk: what a kernel-side filter map is filled with.
    pub fn ids_matching(&self, mut matches: impl FnMut(&str) -> bool) -> Vec<u64> {
        self.by_id
            .iter()
            .filter(|(_, p)| matches(p))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Walks the whole mount again, replacing the map. Directories removed meanwhile
    /// are skipped (counted in `walk_errors`).
    pub fn walk(&mut self) -> io::Result<()> {
        self.last_walk = Some(Instant::now());
        self.walks += 1;
        let top = fs::metadata(&self.mount)?.ino();
        let mut map = HashMap::with_capacity(self.by_id.len().max(64));
        map.insert(top, "/".to_string());
        let mut stack = vec![(self.mount.clone(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let Ok(rd) = fs::read_dir(&dir) else {
                self.walk_errors += 1;
                continue;
            };
            for e in rd.flatten() {
                // Only directories are cgroups; d_type is always set by kernfs.
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = e.file_name().to_string_lossy().into_owned();
                let path = format!("{rel}/{name}");
                map.insert(e.ino(), path.clone());
                stack.push((e.path(), path));
            }
        }
        self.by_id = map;
        Ok(())
    }

    /// tcpstate's own cgroup-namespace root below the mount (for
    /// `model::container::resolve`): `/` when the mount's root is the namespace root;
    /// when the mount shows more (`/../..`), the directory at the right depth whose
    /// path ends with tcpstate's own `/proc/self/cgroup` path (`own_path`) and whose
    /// `cgroup.procs` holds tcpstate's pid (`own_pid`, `std::process::id()`), minus
    /// that path. Cost: one `cgroup.procs` read per directory at that depth with that
    /// name, once.
    pub fn ns_root(&mut self, mount_root: &str, own_path: &str, own_pid: u32) -> Option<String> {
        if mount_root == "/" {
            return Some("/".into());
        }
        let ups = mount_root.split('/').filter(|c| *c == "..").count();
        if mount_root.split('/').any(|c| !c.is_empty() && c != "..") || own_path.contains("..") {
            return None;
        }
        if self.last_walk.is_none() {
            let _ = self.walk();
        }
        let own: Vec<&str> = own_path.split('/').filter(|c| !c.is_empty()).collect();
        let me = own_pid.to_string();
        self.by_id.values().find_map(|p| {
            let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
            if parts.len() != ups + own.len() || !parts.ends_with(&own) {
                return None;
            }
            let procs = fs::read_to_string(
                self.mount
                    .join(p.trim_start_matches('/'))
                    .join("cgroup.procs"),
            )
            .ok()?;
            procs
                .lines()
                .any(|l| l == me)
                .then(|| format!("/{}", parts[..ups].join("/")))
        })
    }
}

/// A process's `/proc/PID/cgroup`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcCgroup {
    /// The `0::` line's path: relative to tcpstate's cgroup-namespace root.
    pub unified: Option<String>,
    /// `(controllers, path)` of each v1 line, e.g. `("cpu,cpuacct", "/docker/<id>")`.
    pub v1: Vec<(String, String)>,
}

impl ProcCgroup {
    /// The v1 lines as `model::container::identify_process` takes them.
    pub fn v1_refs(&self) -> Vec<(&str, &str)> {
        self.v1
            .iter()
            .map(|(c, p)| (c.as_str(), p.as_str()))
            .collect()
    }
}

/// Parses `hierarchy-id:controllers:path` lines (cgroups(7)); the path may hold `:`.
pub fn parse_proc_cgroup(text: &str) -> ProcCgroup {
    let mut out = ProcCgroup::default();
    for l in text.lines() {
        let mut f = l.splitn(3, ':');
        let (Some(h), Some(ctrl), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if h == "0" && ctrl.is_empty() {
            out.unified = Some(path.to_string());
        } else if !ctrl.is_empty() {
            out.v1.push((ctrl.to_string(), path.to_string()));
        }
    }
    out
}

/// `/proc/PID/cgroup` (ENOENT/ESRCH when the process is gone).
pub fn read_proc_cgroup(pid: u32) -> io::Result<ProcCgroup> {
    fs::read_to_string(format!("/proc/{pid}/cgroup")).map(|t| parse_proc_cgroup(&t))
}

/// Where the kubelet keeps one directory per pod, `<namespace>_<name>_<uid>`.
pub const POD_LOG_DIR: &str = "/var/log/pods";

/// The names of the directories in `dir` (for `model::container::pod_names`); empty
/// when it is missing (not a Kubernetes node). Read again when a new pod uid appears.
pub fn pod_log_dirs(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// The v1 devices hierarchy on hybrid hosts (for tests of the v1 fallback).
pub const V1_DEVICES: &str = "/sys/fs/cgroup/devices";

/// The mount's directory for a path below it.
pub fn dir_of(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

/// For privileged tests: whether to run. Root runs; otherwise under `cargo xtask test`
/// or CI (`TCPSTATE_BIN` / `CI` set) the test fails rather than pass without checking,
/// and a plain `cargo test` says why it skips (as tests/object.rs does).
#[cfg(test)]
pub(crate) fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if let Some(v) = ["TCPSTATE_BIN", "CI"]
        .into_iter()
        .find(|v| std::env::var_os(v).is_some())
    {
        panic!("{test}: needs root (it makes cgroups/namespaces) although {v} is set; run `cargo xtask test` as root");
    }
    eprintln!("{test}: skipped, not root (it makes real cgroups/namespaces)");
    false
}

/// Real cgroups for privileged tests (here and in `model::container`): made under a
/// hierarchy, with `sleep` children moved in; the children are moved out and killed
/// and the directories removed on drop, even when the test fails.
#[cfg(test)]
pub(crate) mod testutil {
    use std::{
        fs,
        path::{Path, PathBuf},
        process::{Child, Command},
    };

    pub(crate) use super::require_root;

    pub struct TestCgroup {
        pub mount: PathBuf,
        pub top: PathBuf,
        dirs: Vec<PathBuf>,
        children: Vec<Child>,
    }

    impl TestCgroup {
        /// `<mount>/<name>-<pid>`, created now.
        pub fn new(mount: &Path, name: &str) -> Self {
            let top = mount.join(format!("{name}-{}", std::process::id()));
            fs::create_dir(&top).unwrap_or_else(|e| panic!("mkdir {}: {e}", top.display()));
            Self {
                mount: mount.to_path_buf(),
                top,
                dirs: Vec::new(),
                children: Vec::new(),
            }
        }

        /// The top's name, as a path from the hierarchy's root (`/<name>-<pid>`).
        pub fn top_path(&self) -> String {
            format!("/{}", self.top.file_name().unwrap().to_string_lossy())
        }

        /// Makes `<top>/<rel>` (and its parents).
        pub fn mkdir(&mut self, rel: &str) -> PathBuf {
            let mut d = self.top.clone();
            for c in rel.split('/') {
                d.push(c);
                if !self.dirs.contains(&d) {
                    fs::create_dir(&d).unwrap();
                    self.dirs.push(d.clone());
                }
            }
            d
        }

        /// Starts `sleep 30` and moves it into `dir`; returns its pid.
        pub fn spawn_in(&mut self, dir: &Path) -> u32 {
            let child = Command::new("sleep").arg("30").spawn().unwrap();
            let pid = child.id();
            self.children.push(child);
            fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
            pid
        }
    }

    /// From a shell moved into `ns_dir` and then into a new cgroup namespace (rooted
    /// there): `pid`'s v2 path and the cgroup2 mount's root field, as it sees them.
    pub fn namespace_view(ns_dir: &Path, pid: u32) -> (String, String) {
        let script = format!(
            "echo $$ > {} && exec unshare --cgroup sh -c 'cat /proc/{pid}/cgroup; grep \" cgroup2 \" /proc/self/mountinfo'",
            ns_dir.join("cgroup.procs").display()
        );
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let rel = super::parse_proc_cgroup(&text).unified.expect("a 0:: line");
        let mount = super::parse_mountinfo(&text)
            .into_iter()
            .find(|x| x.fstype == "cgroup2")
            .expect("cgroup2 in mountinfo");
        (rel, mount.root)
    }

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            for c in &mut self.children {
                let _ = fs::write(self.mount.join("cgroup.procs"), c.id().to_string());
                let _ = c.kill();
                let _ = c.wait();
            }
            for d in self.dirs.iter().rev() {
                let _ = fs::remove_dir(d);
            }
            let _ = fs::remove_dir(&self.top);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        testutil::{namespace_view, TestCgroup},
        *,
    };

    #[test]
    fn mountinfo_lines() {
        let text = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                    31 23 0:28 / /sys/fs/cgroup rw,relatime shared:9 master:2 - tmpfs tmpfs rw\n\
                    600 29 0:4 net:[4026532283] /run/netns/my\\040ns rw - nsfs nsfs rw\n\
                    77 1 0:5 /../.. /host/cg rw - cgroup2 cgroup2 rw\n\
                    garbage\n\
                    1 2 3 4 5 6\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].fstype, "cgroup2");
        assert_eq!(m[0].mount_point, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(m[1].fstype, "tmpfs", "optional fields before '-'");
        assert_eq!(m[2].root, "net:[4026532283]");
        assert_eq!(m[2].mount_point, Path::new("/run/netns/my ns"));
        assert_eq!(m[3].root, "/../..");
        assert_eq!(unescape("a\\134b\\"), "a\\b\\");
    }

    #[test]
    fn proc_cgroup_lines() {
        let p = parse_proc_cgroup(
            "12:name=systemd:/system.slice/x.service\n4:cpu,cpuacct:/docker/abc\n0::/system.slice/x.service\nbad\n",
        );
        assert_eq!(p.unified.as_deref(), Some("/system.slice/x.service"));
        assert_eq!(
            p.v1,
            vec![
                ("name=systemd".into(), "/system.slice/x.service".into()),
                ("cpu,cpuacct".into(), "/docker/abc".into())
            ]
        );
        // A path holding ':' (a cgroup name may) and a namespace-relative path.
        let p = parse_proc_cgroup("0::/../../a:b\n");
        assert_eq!(p.unified.as_deref(), Some("/../../a:b"));
        // v1-only host: no 0:: line.
        assert_eq!(parse_proc_cgroup("1:memory:/\n").unified, None);
        // This process, on this host.
        let me = read_proc_cgroup(std::process::id()).unwrap();
        assert!(me.unified.is_some());
        assert!(read_proc_cgroup(u32::MAX).is_err());
    }

    #[test]
    fn real_cgroup_id_to_path() {
        if !require_root("real_cgroup_id_to_path") {
            return;
        }
        let m = find_v2_mount().unwrap().expect("a cgroup2 mount");
        assert!(
            m.whole,
            "{m:?}: tcpstate's tests run outside cgroup namespaces"
        );
        let mut cache = CgroupPaths::new(&m.path);
        cache.rewalk_every = Duration::from_millis(300);
        cache.walk().unwrap();
        assert_eq!(cache.path(fs::metadata(&m.path).unwrap().ino()), Some("/"));

        let mut g = TestCgroup::new(&m.path, "tcpstate-test");
        let scope = format!("docker-{}.scope", "ab".repeat(32));
        let dir = g.mkdir(&scope);
        let pid = g.spawn_in(&dir);
        let want = format!("{}/{scope}", g.top_path());
        assert_eq!(
            read_proc_cgroup(pid).unwrap().unified.as_deref(),
            Some(want.as_str())
        );
        let id = fs::metadata(&dir).unwrap().ino();
        // Made after the last walk, which is recent: the miss does not re-walk ...
        assert_eq!(cache.path(id), None);
        assert_eq!(cache.path(id), None);
        assert_eq!(cache.walks, 1, "a miss re-walks at most once per period");
        // ... until the period is over.
        std::thread::sleep(cache.rewalk_every);
        assert_eq!(cache.path(id), Some(want.as_str()));
        assert_eq!(cache.walks, 2);
        assert_eq!(cache.path(id), Some(want.as_str()));
        assert_eq!(cache.walks, 2, "hits never walk");
        // Our own namespace root is the mount's top.
        let me = read_proc_cgroup(std::process::id()).unwrap();
        assert_eq!(
            cache
                .ns_root(&m.root, me.unified.as_deref().unwrap(), std::process::id())
                .as_deref(),
            Some("/")
        );
        // The ids of a subtree, for a kernel-side filter map.
        let top = g.top_path();
        let mut ids = cache.ids_matching(|p| p == top || p.starts_with(&format!("{top}/")));
        ids.sort();
        let mut want_ids = vec![fs::metadata(&g.top).unwrap().ino(), id];
        want_ids.sort();
        assert_eq!(ids, want_ids);
    }

    /// What /proc/PID/cgroup and mountinfo print from inside a cgroup namespace (both
    /// relative to the reader's namespace root), and `ns_root` finding that root.
    #[test]
    fn cgroup_namespace_view() {
        if !require_root("cgroup_namespace_view") {
            return;
        }
        let m = find_v2_mount().unwrap().expect("a cgroup2 mount");
        let mut g = TestCgroup::new(&m.path, "tcpstate-test-ns");
        let scope = format!("docker-{}.scope", "cd".repeat(32));
        let target = g.mkdir(&scope);
        let tpid = g.spawn_in(&target);
        let ns = g.mkdir("ns");
        let out = namespace_view(&ns, tpid);
        assert_eq!(out.0, format!("/../{scope}"));
        assert_eq!(out.1, "/../..");
        // ns_root finds the namespace root from a pid sitting there.
        let npid = g.spawn_in(&ns);
        let mut cache = CgroupPaths::new(&m.path);
        assert_eq!(
            cache.ns_root(&out.1, "/", npid),
            Some(format!("{}/ns", g.top_path()))
        );
        assert_eq!(cache.ns_root(&out.1, "/", u32::MAX), None);
    }

    #[test]
    fn pod_log_dir_names() {
        let dir = std::env::temp_dir().join(format!("tcpstate-pods-{}", std::process::id()));
        fs::create_dir_all(dir.join("default_web_0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9")).unwrap();
        fs::write(dir.join("not-a-dir_x_y"), "").unwrap();
        let names = pod_log_dirs(&dir);
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(
            names,
            vec!["default_web_0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9".to_string()]
        );
        assert!(pod_log_dirs(Path::new("/nonexistent/pods")).is_empty());
    }

    /// Hybrid host: a process in v1 `devices:/…/docker/<id>` keeps its v2 cgroup.
    #[test]
    fn hybrid_v1_lines() {
        if !require_root("hybrid_v1_lines") {
            return;
        }
        let v1 = Path::new(V1_DEVICES);
        if !v1.join("cgroup.procs").exists() {
            eprintln!("hybrid_v1_lines: no v1 devices hierarchy, skipped");
            return;
        }
        let before = read_proc_cgroup(std::process::id()).unwrap().unified;
        let mut g = TestCgroup::new(v1, "tcpstate-test-v1");
        let rel = format!("docker/{}", "ef".repeat(32));
        let dir = g.mkdir(&rel);
        let pid = g.spawn_in(&dir);
        let seen = read_proc_cgroup(pid).unwrap();
        assert_eq!(seen.unified, before, "v2 stayed the parent's");
        let want = format!("{}/{rel}", g.top_path());
        assert!(
            seen.v1.iter().any(|(c, p)| c == "devices" && *p == want),
            "{seen:?}"
        );
    }
}
