//! Who a socket or process is: cgroup id or pid -> v2 path -> container and pod,
//! cached per cgroup id (the kernel's `sk_cgrp_data` id, so no /proc read per event)
//! and per pid. Also keeps the probe's `CGROUPS` filter map current.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    rc::Rc,
};

use crate::{
    model::{
        container::{identify, identify_process, pod_names, resolve, Ident, PodName, Source},
        filter::Filter,
    },
    probe::{
        cgroups::{find_v2_mount, pod_log_dirs, read_proc_cgroup, CgroupPaths, POD_LOG_DIR},
        Probe,
    },
};

/// The resolver; all lookups are cached.
pub struct Resolver {
    paths: Option<CgroupPaths>,
    mount_root: String,
    by_id: HashMap<u64, Rc<Ident>>,
    by_pid: HashMap<u32, Rc<Ident>>,
    pods: HashMap<String, PodName>,
    pods_dir: PathBuf,
    none: Rc<Ident>,
    /// Ids last put in the probe's `CGROUPS` map.
    in_map: Vec<u64>,
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new()
    }
}

impl Resolver {
    pub fn new() -> Self {
        let mount = find_v2_mount().ok().flatten();
        Self {
            mount_root: mount.as_ref().map_or("/".into(), |m| m.root.clone()),
            paths: mount.map(|m| CgroupPaths::new(m.path)),
            by_id: HashMap::new(),
            by_pid: HashMap::new(),
            pods: HashMap::new(),
            pods_dir: std::env::var_os("TCPSTATE_POD_LOG_DIR")
                .map_or_else(|| PathBuf::from(POD_LOG_DIR), PathBuf::from),
            none: Rc::new(Ident::default()),
            in_map: Vec::new(),
        }
    }

    fn named(&mut self, path: Option<String>) -> Ident {
        let id = path.as_deref().map(identify).unwrap_or_default();
        self.ident_of(path, id, false)
    }

    fn ident_of(
        &mut self,
        cgroup: Option<String>,
        id: crate::model::container::Identity,
        from_v1: bool,
    ) -> Ident {
        let pod = id.pod_uid.as_ref().and_then(|u| {
            if !self.pods.contains_key(u) {
                // A new pod uid: the kubelet made its log directory before its containers.
                let dirs = pod_log_dirs(Path::new(&self.pods_dir));
                self.pods = pod_names(dirs.iter().map(String::as_str));
            }
            self.pods.get(u).cloned()
        });
        Ident {
            cgroup,
            container_id: id.container_id,
            pod_uid: id.pod_uid,
            pod,
            from_v1,
        }
    }

    /// A socket's identity from its cgroup id (0: not read -> all null).
    pub fn cgroup(&mut self, id: u64) -> Rc<Ident> {
        if id == 0 {
            return self.none.clone();
        }
        if let Some(i) = self.by_id.get(&id) {
            return i.clone();
        }
        let path = self
            .paths
            .as_mut()
            .and_then(|p| p.path(id))
            .map(str::to_string);
        // An id not found yet (the walk is throttled) is retried later, not cached.
        let known = path.is_some();
        let i = Rc::new(self.named(path));
        if known {
            self.by_id.insert(id, i.clone());
        }
        i
    }

    /// A process's identity from /proc/PID/cgroup (v1 fallback on hybrid hosts).
    pub fn process(&mut self, pid: u32) -> Rc<Ident> {
        if pid == 0 {
            return self.none.clone();
        }
        if let Some(i) = self.by_pid.get(&pid) {
            return i.clone();
        }
        let Ok(pc) = read_proc_cgroup(pid) else {
            return self.none.clone();
        };
        let unified = pc
            .unified
            .as_deref()
            .and_then(|p| resolve(p, &self.mount_root, None).or_else(|| Some(p.to_string())));
        let (id, src) = identify_process(unified.as_deref(), &pc.v1_refs());
        let i = Rc::new(self.ident_of(unified, id, src == Source::V1));
        self.by_pid.insert(pid, i.clone());
        i
    }

    /// Forgets pids (their process may have exited and the pid be reused).
    pub fn forget_processes(&mut self) {
        self.by_pid.clear();
    }

    /// Whether any process on the host is in a container cgroup now (the table's
    /// CONTAINER column): one walk of the hierarchy, no /proc reads.
    pub fn any_container(&mut self) -> bool {
        let Some(p) = self.paths.as_mut() else {
            return false;
        };
        let _ = p.walk();
        !p.ids_matching(|path| identify(path).is_container())
            .is_empty()
    }

    /// Refills the probe's `CGROUPS` map with every cgroup the filter selects, so
    /// containers started after tcpstate match (called at start and every second).
    pub fn refresh_filter(&mut self, f: &Filter, probe: &mut Probe) {
        if !f.by_cgroup() {
            return;
        }
        let Some(p) = self.paths.as_mut() else {
            return;
        };
        let _ = p.walk();
        let mut ids = p.ids_matching(|path| {
            f.matches_cgroup(Some(path), identify(path).container_id.as_deref())
        });
        ids.sort_unstable();
        if ids != self.in_map {
            probe.set_cgroups(&self.in_map, &ids);
            self.in_map = ids;
        }
        // Renamed or reused ids: resolve again.
        self.by_id.clear();
    }
}
