//! Who a process belongs to, from its cgroup v2 path: the container runtime's id, the
//! Kubernetes pod, and the identity filters (`--container`, `--cgroup`, `--netns`).
//! Pure: paths and directory names come in as strings (read by `probe::cgroups`).
//!
//! Layouts recognised, innermost container wins (the path is read from the leaf up, so
//! a sub-cgroup inside a container, e.g. `libpod-<id>.scope/container`, or a
//! container nested in another, names the innermost one):
//! - docker: `.../docker-<64hex>.scope` (systemd driver), `/docker/<64hex>` (cgroupfs);
//! - containerd/CRI: `.../cri-containerd-<64hex>.scope`; nerdctl `nerdctl-<64hex>.scope`;
//! - CRI-O: `.../crio-<64hex>.scope` or `crio-<64hex>` (cgroupfs); `crio-conmon-<id>`
//!   is CRI-O's monitor process, not the container (no id);
//! - podman: `.../libpod-<64hex>.scope` (systemd), `/libpod_parent/libpod-<64hex>`
//!   (cgroupfs); `libpod-conmon-<id>.scope` is the monitor (no id);
//! - systemd-nspawn (and any machined machine): `/machine.slice/machine-<name>.scope`,
//!   id = the machine name, systemd-unescaped (`\x2d` -> `-`); its `supervisor`
//!   sub-cgroup is nspawn itself (no id), `payload` is the container;
//! - Kubernetes: systemd driver `kubepods[-<qos>].slice/kubepods-<qos>-pod<uid>.slice/
//!   <runtime scope>` (uid with `_` for `-`), cgroupfs driver
//!   `/kubepods[/<qos>]/pod<uid>/<64hex or crio-<id>>` (runtime unnamed by the path);
//!   any cgroup root above (`/kubelet.slice/kubelet-kubepods...`, kind) is accepted.
//!
//! Container ids must be 64 lowercase hex digits (what every runtime above generates):
//! `/docker/build` or `docker-1.scope` are ordinary cgroups, not containers.
//!
//! cgroup namespaces: `/proc/PID/cgroup` and the cgroup2 line of `/proc/self/mountinfo`
//! both print paths relative to the *reader's* cgroup-namespace root (the kernel's
//! `proc_cgroup_show()` and `cgroup_show_path()` both call `kernfs_path_from_node()`
//! against `current`'s namespace root). So a path `/../../kubepods/x` is resolved
//! lexically against the mount's root field (e.g. `/../..`) into the path under the
//! mount point ([`resolve`]), which is the path from the hierarchy's root when the
//! mount shows the whole hierarchy; no id lookup is needed. When a cgroup id is known
//! (from the kernel: `sk_cgrp_data`, `bpf_get_current_cgroup_id`) the id -> path walk
//! of `probe::cgroups` gives the same path directly, and is preferred.

use std::collections::HashMap;

/// The runtime a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Docker,
    Containerd,
    CriO,
    Podman,
    Nspawn,
}

impl Runtime {
    #[allow(dead_code)] // For `doctor` and views that name the runtime.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Podman => "podman",
            Runtime::Nspawn => "systemd-nspawn",
        }
    }
}

/// What a cgroup path says about its processes; all `None` for a host process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    pub container_id: Option<String>,
    /// `None` also when a container id was found but the path does not name the
    /// runtime (Kubernetes' cgroupfs driver: `/kubepods/.../pod<uid>/<64hex>`).
    pub runtime: Option<Runtime>,
    /// Dashed form (`_` of the systemd driver turned back into `-`).
    pub pod_uid: Option<String>,
}

impl Identity {
    pub fn is_container(&self) -> bool {
        self.container_id.is_some()
    }
}

fn is_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Splits a resolved absolute path into components; `None` for what the kernel never
/// prints for a resolved path (relative, `.`/`..`/empty components, NUL).
fn components(path: &str) -> Option<Vec<&str>> {
    let rest = path.strip_prefix('/')?;
    if rest.is_empty() {
        return Some(Vec::new());
    }
    let parts: Vec<&str> = rest.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains('\0'))
    {
        return None;
    }
    Some(parts)
}

/// One component: a container (`Some(Some(..))`), a runtime's monitor that is not the
/// container (`Some(None)`: stop looking, no id), or neither (`None`).
fn container_component(c: &str, parent: Option<&str>) -> Option<Option<(String, Option<Runtime>)>> {
    let scoped = |prefix: &str| {
        c.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(".scope"))
    };
    for (prefix, rt) in [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("nerdctl-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("libpod-", Runtime::Podman),
    ] {
        if let Some(rest) = c.strip_prefix(prefix) {
            if rest.starts_with("conmon-") {
                return Some(None);
            }
            let id = scoped(prefix);
            // cgroupfs drivers drop `.scope`: crio-<id>, libpod-<id>.
            let id = id.or(match rt {
                Runtime::CriO | Runtime::Podman => Some(rest),
                _ => None,
            });
            if let Some(id) = id.filter(|i| is_id(i)) {
                return Some(Some((id.to_string(), Some(rt))));
            }
            return None;
        }
    }
    if let Some(name) = scoped("machine-") {
        if parent == Some("machine.slice") {
            let name = systemd_unescape(name)?;
            if !name.is_empty() {
                return Some(Some((name, Some(Runtime::Nspawn))));
            }
        }
        return None;
    }
    // cgroupfs: /docker/<id>; Kubernetes cgroupfs: pod<uid>/<id>.
    if is_id(c) {
        match parent {
            Some("docker") => return Some(Some((c.to_string(), Some(Runtime::Docker)))),
            Some(p) if pod_component(p).is_some() => return Some(Some((c.to_string(), None))),
            _ => {}
        }
    }
    None
}

/// `\xNN` escapes of systemd unit names (`systemd-escape`); `None` when malformed.
fn systemd_unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            let hex = s
                .get(i + 2..i + 4)
                .filter(|_| b.get(i + 1) == Some(&b'x'))?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A pod's uid, dashed: what the path's `pod<uid>` part is in either driver.
fn pod_uid(raw: &str) -> Option<String> {
    let uid = raw.replace('_', "-");
    let ok = (uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            if [8, 13, 18, 23].contains(&i) {
                b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        }))
        // Static pods: the kubelet's hash of the manifest, 32 hex, no dashes.
        || (uid.len() == 32 && uid.bytes().all(|b| b.is_ascii_hexdigit()));
    ok.then(|| uid.to_ascii_lowercase())
}

/// The pod uid a component names: `kubepods-<qos>-pod<uid>.slice` (systemd, any prefix
/// containing `kubepods`) or `pod<uid>` (cgroupfs; the caller checks it is under a
/// `kubepods` component).
fn pod_component(c: &str) -> Option<String> {
    if let Some(slice) = c.strip_suffix(".slice") {
        let at = slice.rfind("-pod")?;
        if !slice[..at].contains("kubepods") {
            return None;
        }
        return pod_uid(&slice[at + 4..]);
    }
    pod_uid(c.strip_prefix("pod")?)
}

/// The identity of a resolved cgroup v2 path (from the hierarchy root, or from the
/// mount's root: see [`resolve`]). Paths that are not clean absolute paths have no
/// identity.
pub fn identify(path: &str) -> Identity {
    let Some(parts) = components(path) else {
        return Identity::default();
    };
    let mut id = Identity::default();
    // Pod: systemd slice anywhere, or cgroupfs `pod<uid>` below a `kubepods` component.
    for (i, c) in parts.iter().enumerate() {
        let uid = if c.ends_with(".slice") {
            pod_component(c)
        } else if parts[..i].contains(&"kubepods") {
            c.strip_prefix("pod").and_then(pod_uid)
        } else {
            None
        };
        if uid.is_some() {
            id.pod_uid = uid;
        }
    }
    for i in (0..parts.len()).rev() {
        let parent = i.checked_sub(1).map(|p| parts[p]);
        // Inside a machine: `supervisor` is systemd-nspawn itself.
        if parts[i] == "supervisor"
            && parent.is_some_and(|p| p.starts_with("machine-") && p.ends_with(".scope"))
        {
            return id;
        }
        // cgroupfs pod<uid> only counts under kubepods.
        let parent = parent.filter(|p| {
            !p.starts_with("pod") || p.ends_with(".slice") || parts[..i].contains(&"kubepods")
        });
        match container_component(parts[i], parent) {
            Some(Some((cid, rt))) => {
                id.container_id = Some(cid);
                id.runtime = rt;
                return id;
            }
            Some(None) => return id,
            None => {}
        }
    }
    id
}

/// How a process's identity was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// From its v2 cgroup: the kernel sees the same cgroup id, so kernel-side
    /// container filters work.
    Unified,
    /// From a v1 controller's path, because its v2 cgroup names no container (a
    /// cgroupfs-driver runtime on a hybrid host left it in its parent's v2 cgroup):
    /// the kernel's cgroup id is the parent's, so container filters must be applied in
    /// userspace for it.
    V1,
}

/// The v1 controllers trusted for naming, in order. `devices` first: runc/crun always
/// put a container into the devices hierarchy on v1 (its allowlist is mandatory there),
/// then the controllers every runtime joins; `name=systemd` last, it is systemd's
/// tracking hierarchy and names services, not containers.
const V1_ORDER: &[&str] = &[
    "devices",
    "pids",
    "memory",
    "cpu",
    "cpuacct",
    "blkio",
    "freezer",
    "cpuset",
    "name=systemd",
];

/// A process's identity from its v2 path and, on hybrid hosts, its v1 lines
/// (`(controllers, path)`, e.g. `("cpu,cpuacct", "/docker/<id>")`): the v2 path when
/// it names a container, else the first trusted v1 controller's that does.
pub fn identify_process(unified: Option<&str>, v1: &[(&str, &str)]) -> (Identity, Source) {
    let from_v2 = unified.map(identify).unwrap_or_default();
    if from_v2.is_container() {
        return (from_v2, Source::Unified);
    }
    for want in V1_ORDER {
        for (ctrls, path) in v1 {
            if ctrls.split(',').any(|c| c == *want) {
                let id = identify(path);
                if id.is_container() {
                    return (id, Source::V1);
                }
            }
        }
    }
    (from_v2, Source::Unified)
}

/// A path's leading `..` count and its named components, `.`/`..` folded.
fn ups_and_names(p: &str) -> Option<(usize, Vec<&str>)> {
    let rest = p.strip_prefix('/')?;
    let mut ups = 0;
    let mut named = Vec::new();
    for c in rest.split('/').filter(|c| !c.is_empty() && *c != ".") {
        if c == ".." {
            if named.pop().is_none() {
                ups += 1;
            }
        } else {
            named.push(c);
        }
    }
    Some((ups, named))
}

/// Resolves a `/proc/PID/cgroup` path into the path below the cgroup2 mount point
/// (the path from the hierarchy's root when the mount shows all of it).
///
/// Both that path and the mount's root field in `/proc/self/mountinfo` are relative
/// to the reader's cgroup-namespace root (see the module doc). With `ns_root`, the
/// namespace root's own path below the mount point (found by `probe::cgroups` from
/// the directory whose `cgroup.procs` holds tcpstate's pid), any path resolves:
/// `ns_root + proc_path`, normalised. Without it, only paths that climb exactly as
/// far as the mount's root resolve, lexically: `/../../a/b` with mount root `/../..`
/// is `/a/b`. `None` when the path lies outside what the mount shows or names
/// directories that cannot be known (`/sub` with mount root `/../..`).
pub fn resolve(proc_path: &str, mount_root: &str, ns_root: Option<&str>) -> Option<String> {
    let (p_ups, p_named) = ups_and_names(proc_path)?;
    if let Some(root) = ns_root {
        let (r_ups, mut named) = ups_and_names(root)?;
        if r_ups > 0 || p_ups > named.len() {
            return None;
        }
        named.truncate(named.len() - p_ups);
        named.extend(p_named);
        return Some(format!("/{}", named.join("/")));
    }
    let (r_ups, r_named) = ups_and_names(mount_root)?;
    if p_ups != r_ups {
        return None;
    }
    let rest = p_named.strip_prefix(r_named.as_slice())?;
    Some(format!("/{}", rest.join("/")))
}

/// A kubelet pod log directory's parts (`/var/log/pods/<namespace>_<name>_<uid>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

/// Pod names by uid (dashed, lowercase) from the names of the directories in
/// `/var/log/pods`. Namespaces and pod names are DNS labels/subdomains and uids are
/// hex and dashes, none holds `_`, so a name that does not split into exactly three
/// non-empty parts with a valid uid is ignored.
pub fn pod_names<'a>(dirs: impl IntoIterator<Item = &'a str>) -> HashMap<String, PodName> {
    let mut out = HashMap::new();
    for d in dirs {
        let parts: Vec<&str> = d.split('_').collect();
        let [ns, name, uid] = parts[..] else { continue };
        let dns = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        };
        if !dns(ns) || !dns(name) || uid.contains('_') {
            continue;
        }
        if let Some(uid) = pod_uid(uid) {
            out.insert(
                uid,
                PodName {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                },
            );
        }
    }
    out
}

/// A cgroup's identity as every output shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ident {
    /// The v2 path from the hierarchy's root; `None` when unknown.
    pub cgroup: Option<String>,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
    pub pod: Option<PodName>,
    /// Found from a v1 controller (hybrid host, cgroupfs driver): the kernel's
    /// cgroup id is the parent's, so kernel-side container filters miss it.
    pub from_v1: bool,
}

impl Ident {
    /// The first 12 characters of the container id (`docker ps`), or `-`.
    pub fn short(&self) -> &str {
        self.container_id
            .as_deref()
            .map_or("-", |c| &c[..c.len().min(12)])
    }

    /// The identity fields as JSON object members, with a leading comma.
    pub fn json_members(&self) -> String {
        let s = |v: &Option<String>| serde_json::to_string(v).expect("strings serialise");
        let (ns, name) = match &self.pod {
            Some(p) => (Some(p.namespace.clone()), Some(p.name.clone())),
            None => (None, None),
        };
        format!(
            ",\"cgroup\":{},\"container_id\":{},\"pod_uid\":{},\"pod_namespace\":{},\"pod_name\":{}",
            s(&self.cgroup),
            s(&self.container_id),
            s(&self.pod_uid),
            s(&ns),
            s(&name)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error(
        "--container needs a container id or a prefix of one (like docker), not an empty string"
    )]
    EmptyContainer,
    #[error("--container {0:?}: a container id has no '/', whitespace or control characters")]
    BadContainer(String),
    #[error("--cgroup {0:?}: give a cgroup v2 path from the hierarchy's root, starting with '/' (e.g. /kubepods.slice)")]
    CgroupNotAbsolute(String),
    #[error("--cgroup {0:?}: '.' and '..' are not allowed in the path")]
    CgroupDots(String),
    #[error("--netns {0:?}: give the namespace's inode number, as `readlink /proc/PID/ns/net` prints it (net:[N] or N)")]
    BadNetns(String),
}

/// `--container ID`: a prefix of the container id, as docker takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPrefix(String);

impl ContainerPrefix {
    pub fn parse(s: &str) -> Result<Self, FilterError> {
        if s.is_empty() {
            return Err(FilterError::EmptyContainer);
        }
        if s.chars()
            .any(|c| c == '/' || c.is_whitespace() || c.is_control())
        {
            return Err(FilterError::BadContainer(s.to_string()));
        }
        Ok(Self(s.to_string()))
    }

    pub fn matches(&self, container_id: Option<&str>) -> bool {
        container_id.is_some_and(|id| id.starts_with(&self.0))
    }
}

/// `--cgroup PATH`: a prefix of the v2 path matched by whole components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPrefix(Vec<String>);

impl CgroupPrefix {
    pub fn parse(s: &str) -> Result<Self, FilterError> {
        let Some(rest) = s.strip_prefix('/') else {
            return Err(FilterError::CgroupNotAbsolute(s.to_string()));
        };
        let parts: Vec<String> = rest
            .split('/')
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
        if parts.iter().any(|c| c == "." || c == "..") {
            return Err(FilterError::CgroupDots(s.to_string()));
        }
        Ok(Self(parts))
    }

    /// The prefix as a path (`/` for the root).
    #[allow(dead_code)] // For `doctor`.
    pub fn path(&self) -> String {
        format!("/{}", self.0.join("/"))
    }

    pub fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        let mut have = rest.split('/').filter(|c| !c.is_empty());
        self.0.iter().all(|want| have.next() == Some(want.as_str()))
    }
}

/// `--netns INODE`: the number `readlink /proc/PID/ns/net` prints (`net:[N]` taken too).
pub fn parse_netns(s: &str) -> Result<u32, FilterError> {
    let n = s
        .strip_prefix("net:[")
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    match n.parse::<u32>() {
        Ok(v) if v != 0 && !n.starts_with('+') => Ok(v),
        _ => Err(FilterError::BadNetns(s.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e5c8a1b2d4e6f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7";
    const UID: &str = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9";

    fn uid_us() -> String {
        UID.replace('-', "_")
    }

    fn c(path: &str) -> (Option<String>, Option<Runtime>, Option<String>) {
        let i = identify(path);
        (i.container_id, i.runtime, i.pod_uid)
    }

    fn container(rt: Option<Runtime>) -> (Option<String>, Option<Runtime>, Option<String>) {
        (Some(ID.into()), rt, None)
    }

    #[test]
    fn docker() {
        let d = Some(Runtime::Docker);
        assert_eq!(c(&format!("/system.slice/docker-{ID}.scope")), container(d));
        assert_eq!(c(&format!("/docker/{ID}")), container(d));
        // Rootless, under the user's manager.
        assert_eq!(
            c(&format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/docker-{ID}.scope"
            )),
            container(d)
        );
        // systemd inside a container: a sub-cgroup of the scope is still the container.
        assert_eq!(
            c(&format!("/system.slice/docker-{ID}.scope/init.scope")),
            container(d)
        );
        // The daemon itself is no container.
        assert_eq!(c("/system.slice/docker.service"), (None, None, None));
        // Docker in docker: the innermost container.
        let inner = "a".repeat(64);
        assert_eq!(
            c(&format!("/docker/{ID}/docker/{inner}")),
            (Some(inner), d, None)
        );
    }

    #[test]
    fn containerd_crio_podman() {
        assert_eq!(
            c(&format!("/system.slice/cri-containerd-{ID}.scope")),
            container(Some(Runtime::Containerd))
        );
        assert_eq!(
            c(&format!("/system.slice/nerdctl-{ID}.scope")),
            container(Some(Runtime::Containerd))
        );
        assert_eq!(
            c(&format!("/crio-{ID}.scope")),
            container(Some(Runtime::CriO))
        );
        // CRI-O's and podman's monitors are not the container.
        assert_eq!(
            c(&format!("/system.slice/crio-conmon-{ID}.scope")),
            (None, None, None)
        );
        assert_eq!(
            c(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            (None, None, None)
        );
        let p = Some(Runtime::Podman);
        assert_eq!(
            c(&format!("/machine.slice/libpod-{ID}.scope")),
            container(p)
        );
        assert_eq!(
            c(&format!("/machine.slice/libpod-{ID}.scope/container")),
            container(p)
        );
        assert_eq!(c(&format!("/libpod_parent/libpod-{ID}")), container(p));
        // A podman pod is a slice of machine.slice: not an nspawn machine.
        assert_eq!(
            c(&format!(
                "/machine.slice/machine-libpod_pod_{}.slice/libpod-{ID}.scope",
                "b".repeat(64)
            )),
            container(p)
        );
        assert_eq!(
            c(&format!(
                "/machine.slice/machine-libpod_pod_{}.slice",
                "b".repeat(64)
            )),
            (None, None, None)
        );
    }

    #[test]
    fn nspawn() {
        let n = Some(Runtime::Nspawn);
        assert_eq!(
            c("/machine.slice/machine-web.scope"),
            (Some("web".into()), n, None)
        );
        assert_eq!(
            c("/machine.slice/machine-my\\x2dbox.scope/payload"),
            (Some("my-box".into()), n, None)
        );
        // nspawn's own process, and a `machine-` scope elsewhere.
        assert_eq!(
            c("/machine.slice/machine-web.scope/supervisor"),
            (None, None, None)
        );
        assert_eq!(c("/system.slice/machine-web.scope"), (None, None, None));
        assert_eq!(c("/machine.slice/machine-.scope"), (None, None, None));
        assert_eq!(
            c("/machine.slice/machine-bad\\x2.scope"),
            (None, None, None)
        );
    }

    #[test]
    fn kubernetes_systemd_driver() {
        let u = uid_us();
        for (qos_slice, pod_slice) in [
            (
                "kubepods-burstable.slice/",
                format!("kubepods-burstable-pod{u}.slice"),
            ),
            (
                "kubepods-besteffort.slice/",
                format!("kubepods-besteffort-pod{u}.slice"),
            ),
            // Guaranteed pods sit directly under kubepods.slice.
            ("", format!("kubepods-pod{u}.slice")),
        ] {
            let pod = format!("/kubepods.slice/{qos_slice}{pod_slice}");
            for (scope, rt) in [
                (format!("cri-containerd-{ID}.scope"), Runtime::Containerd),
                (format!("crio-{ID}.scope"), Runtime::CriO),
                (format!("docker-{ID}.scope"), Runtime::Docker),
            ] {
                assert_eq!(
                    c(&format!("{pod}/{scope}")),
                    (Some(ID.into()), Some(rt), Some(UID.into())),
                    "{pod}/{scope}"
                );
            }
            // The pod's own cgroup and CRI-O's monitor: the pod, no container.
            assert_eq!(c(&pod), (None, None, Some(UID.into())));
            assert_eq!(
                c(&format!("{pod}/crio-conmon-{ID}.scope")),
                (None, None, Some(UID.into()))
            );
        }
        // kind: the kubelet's cgroup root is /kubelet.slice.
        assert_eq!(
            c(&format!(
                "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice/cri-containerd-{ID}.scope"
            )),
            (Some(ID.into()), Some(Runtime::Containerd), Some(UID.into()))
        );
        // A static pod's uid is a 32-hex hash.
        let h = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            c(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{h}.slice"
            ))
            .2,
            Some(h.into())
        );
        // Not kubepods: an unrelated slice that says -pod.
        assert_eq!(
            c(&format!("/system.slice/my-pod{u}.slice")),
            (None, None, None)
        );
    }

    #[test]
    fn kubernetes_cgroupfs_driver() {
        for pod in [
            format!("/kubepods/burstable/pod{UID}"),
            format!("/kubepods/besteffort/pod{UID}"),
            format!("/kubepods/pod{UID}"),
            format!("/kubelet/kubepods/burstable/pod{UID}"),
        ] {
            assert_eq!(
                c(&format!("{pod}/{ID}")),
                (Some(ID.into()), None, Some(UID.into())),
                "{pod}"
            );
            assert_eq!(
                c(&format!("{pod}/crio-{ID}")),
                (Some(ID.into()), Some(Runtime::CriO), Some(UID.into()))
            );
            assert_eq!(c(&pod), (None, None, Some(UID.into())));
        }
        // `pod<uid>/<id>` outside kubepods is not a pod.
        assert_eq!(c(&format!("/other/pod{UID}/{ID}")), (None, None, None));
    }

    #[test]
    fn host_and_hostile_paths() {
        for p in [
            "/",
            "",
            "relative/docker-x",
            "/init.scope",
            "/user.slice/user-1000.slice/session-2.scope",
            "/system.slice/docker.service",
            "/docker",
            "/docker/build",
            // Wrong length, case, suffix or characters.
            &format!("/docker/{}", &ID[..63]),
            &format!("/docker/{ID}0"),
            &format!("/docker/{}", ID.to_uppercase()),
            &format!("/system.slice/docker-{ID}.mount"),
            &format!("/system.slice/docker-{ID}.scope.bak"),
            &format!("/system.slice/docker-{ID}"),
            &format!("/system.slice/docker-{}.scope", "g".repeat(64)),
            &format!("/system.slice/cri-containerd-{ID}"),
            // Unclean paths the kernel never prints for a resolved cgroup.
            &format!("/../../system.slice/docker-{ID}.scope"),
            &format!("/system.slice/../docker-{ID}.scope"),
            &format!("/system.slice//docker-{ID}.scope"),
            &format!("/system.slice/./docker-{ID}.scope"),
            &format!("/docker/{ID}\0"),
            // This host's management cgroup (32 hex) is not a container.
            "/process_api/3cb06852436323583cecfabca2e4eae8",
        ] {
            assert_eq!(identify(p), Identity::default(), "{p:?}");
        }
        // A trailing slash is an empty component: not a clean path either.
        assert_eq!(identify(&format!("/docker/{ID}/")), Identity::default());
        // Bad uids: wrong shape, wrong length.
        assert_eq!(c("/kubepods/burstable/podnot-a-uid"), (None, None, None));
        assert_eq!(
            c(&format!("/kubepods.slice/kubepods-pod{}.slice", &UID[..35])),
            (None, None, None)
        );
        assert_eq!(systemd_unescape("a\\x"), None);
        assert_eq!(systemd_unescape("\\xff").as_deref(), None, "not UTF-8");
    }

    #[test]
    fn hybrid_falls_back_to_v1() {
        let v2 = "/system.slice/containerd.service";
        let d = format!("/docker/{ID}");
        // A cgroupfs-driver runtime joined every v1 controller; v2 stayed the parent's.
        let v1 = [
            ("name=systemd", "/system.slice/containerd.service"),
            ("memory", d.as_str()),
            ("devices", d.as_str()),
        ];
        let (id, src) = identify_process(Some(v2), &v1);
        assert_eq!(src, Source::V1);
        assert_eq!(id.container_id.as_deref(), Some(ID));
        // The v2 path wins when it names a container.
        let v2c = format!("/system.slice/docker-{}.scope", "c".repeat(64));
        let (id, src) = identify_process(Some(&v2c), &v1);
        assert_eq!(
            (src, id.container_id),
            (Source::Unified, Some("c".repeat(64)))
        );
        // devices before memory.
        let other = format!("/docker/{}", "d".repeat(64));
        let v1 = [("memory", other.as_str()), ("devices", d.as_str())];
        assert_eq!(
            identify_process(None, &v1).0.container_id.as_deref(),
            Some(ID)
        );
        // Combined controllers, and nothing anywhere.
        let v1 = [("cpu,cpuacct", d.as_str())];
        assert_eq!(
            identify_process(Some("/"), &v1).0.container_id.as_deref(),
            Some(ID)
        );
        let (id, src) = identify_process(Some("/"), &[("memory", "/process_api/x")]);
        assert_eq!((id, src), (Identity::default(), Source::Unified));
        // The v2 path's pod survives when no container is named anywhere.
        let pod = format!("/kubepods/pod{UID}");
        assert_eq!(
            identify_process(Some(&pod), &[]).0.pod_uid.as_deref(),
            Some(UID)
        );
    }

    #[test]
    fn cgroup_namespaces() {
        // A DaemonSet pod in its own cgroup namespace that mounts the host's hierarchy:
        // the mount's root and other pods' paths both climb out of the namespace.
        let other = format!(
            "/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{ID}.scope",
            uid_us()
        );
        let rel = format!("/../../..{other}");
        assert_eq!(
            resolve(&rel, "/../../..", None).as_deref(),
            Some(other.as_str())
        );
        assert_eq!(
            identify(&resolve(&rel, "/../../..", None).unwrap())
                .container_id
                .as_deref(),
            Some(ID)
        );
        // A process in our own namespace: its path is below the namespace root, whose
        // names above are not printed: unresolvable lexically (use the cgroup id).
        assert_eq!(resolve("/sub", "/../..", None), None);
        // Fewer ups than the mount root: partially named.
        assert_eq!(resolve("/../b/c", "/../../a", None).as_deref(), None);
        assert_eq!(
            resolve("/../../a/b/c", "/../../a", None).as_deref(),
            Some("/b/c")
        );
        assert_eq!(resolve("/../../x/b", "/../../a", None), None);
        // No namespace: plain paths, the mount at the hierarchy root.
        assert_eq!(resolve("/a/b", "/", None).as_deref(), Some("/a/b"));
        assert_eq!(resolve("/", "/", None).as_deref(), Some("/"));
        // A mount of a subtree.
        assert_eq!(resolve("/a/b", "/a", None).as_deref(), Some("/b"));
        assert_eq!(resolve("/ab/b", "/a", None), None);
        // Outside what the mount shows, or not absolute.
        assert_eq!(resolve("/../a", "/", None), None);
        assert_eq!(resolve("a", "/", None), None);
        assert_eq!(resolve("/a", "a", None), None);
        // With the namespace root known (below the mount), every path resolves.
        let ns = "/kubepods.slice/kubepods-podx.slice/cri-containerd-y.scope";
        assert_eq!(resolve("/", "/../../..", Some(ns)).as_deref(), Some(ns));
        assert_eq!(
            resolve("/sub", "/../../..", Some(ns)).as_deref(),
            Some(format!("{ns}/sub").as_str())
        );
        assert_eq!(
            resolve("/../other.scope", "/../../..", Some(ns)).as_deref(),
            Some("/kubepods.slice/kubepods-podx.slice/other.scope")
        );
        assert_eq!(
            resolve("/../../../..", "/", Some(ns)),
            None,
            "above the root"
        );
        assert_eq!(resolve("/../../..", "/", Some(ns)).as_deref(), Some("/"));
        assert_eq!(resolve("/x", "/", Some("/../a")), None);
    }

    #[test]
    fn pod_log_dirs() {
        let names = pod_names([
            format!("default_web-7d4b9c_{UID}").as_str(),
            "kube-system_kube-apiserver-node1_0123456789abcdef0123456789abcdef",
            "no_uid_here",
            "a_b",
            "a_b_c_d",
            "_web_0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9",
            "Default_web_0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f0",
            "",
        ]);
        assert_eq!(names.len(), 2, "{names:?}");
        assert_eq!(
            names[UID],
            PodName {
                namespace: "default".into(),
                name: "web-7d4b9c".into()
            }
        );
        assert_eq!(
            names["0123456789abcdef0123456789abcdef"].name,
            "kube-apiserver-node1"
        );
        // The uid from a systemd-driver path finds its name.
        let uid = c(&format!("/kubepods.slice/kubepods-pod{}.slice", uid_us()))
            .2
            .unwrap();
        assert_eq!(names[&uid].namespace, "default");
    }

    #[test]
    fn filters() {
        let p = ContainerPrefix::parse(&ID[..12]).unwrap();
        assert!(p.matches(Some(ID)));
        assert!(!p.matches(Some(&"a".repeat(64))));
        assert!(!p.matches(None));
        assert_eq!(ContainerPrefix::parse(""), Err(FilterError::EmptyContainer));
        assert!(ContainerPrefix::parse("a b").is_err());
        assert!(ContainerPrefix::parse("a/b").is_err());

        let k = CgroupPrefix::parse("/kubepods").unwrap();
        assert!(k.matches("/kubepods"));
        assert!(k.matches("/kubepods/burstable/pod1"));
        assert!(!k.matches("/kubepods2"));
        assert!(!k.matches("/kubepods2/x"));
        assert!(!k.matches("/a/kubepods"));
        assert!(!k.matches("kubepods"));
        assert!(CgroupPrefix::parse("/kubepods/")
            .unwrap()
            .matches("/kubepods/x"));
        assert_eq!(CgroupPrefix::parse("/a//b/").unwrap().path(), "/a/b");
        let root = CgroupPrefix::parse("/").unwrap();
        assert!(root.matches("/") && root.matches("/x/y"));
        assert!(matches!(
            CgroupPrefix::parse("kubepods"),
            Err(FilterError::CgroupNotAbsolute(_))
        ));
        assert!(matches!(
            CgroupPrefix::parse(""),
            Err(FilterError::CgroupNotAbsolute(_))
        ));
        assert!(matches!(
            CgroupPrefix::parse("/a/../b"),
            Err(FilterError::CgroupDots(_))
        ));

        assert_eq!(parse_netns("4026531840"), Ok(4026531840));
        assert_eq!(parse_netns("net:[4026531840]"), Ok(4026531840));
        for bad in ["abc", "", "0", "-1", "+5", "4294967296", "net:[x]", " 1"] {
            assert!(parse_netns(bad).is_err(), "{bad:?}");
        }
        // Every error is one line.
        for e in [
            FilterError::EmptyContainer,
            FilterError::BadNetns("abc".into()),
            FilterError::CgroupNotAbsolute("x".into()),
        ] {
            assert!(!e.to_string().contains('\n'));
        }
    }
}

/// The parser over what the kernel really prints, for cgroups made by the tests
/// (privileged; `probe::cgroups::testutil` removes them even on failure).
#[cfg(test)]
mod kernel_tests {
    use std::path::Path;

    use super::*;
    use crate::probe::cgroups::{
        find_v2_mount, pod_log_dirs, read_proc_cgroup,
        testutil::{namespace_view, require_root, TestCgroup},
        CgroupPaths, V1_DEVICES,
    };

    #[test]
    fn docker_scope_from_proc_and_from_id() {
        if !require_root("docker_scope_from_proc_and_from_id") {
            return;
        }
        let m = find_v2_mount().unwrap().expect("a cgroup2 mount");
        let id = "12".repeat(32);
        let mut g = TestCgroup::new(&m.path, "tcpstate-test-id");
        let dir = g.mkdir(&format!("docker-{id}.scope"));
        let pid = g.spawn_in(&dir);
        let seen = read_proc_cgroup(pid).unwrap();
        let path = resolve(seen.unified.as_deref().unwrap(), &m.root, None).unwrap();
        let (ident, src) = identify_process(Some(&path), &seen.v1_refs());
        assert_eq!(src, Source::Unified);
        assert_eq!(ident.container_id.as_deref(), Some(id.as_str()));
        assert_eq!(ident.runtime, Some(Runtime::Docker));
        // The same from the cgroup id, as the kernel will give it.
        use std::os::unix::fs::MetadataExt;
        let cg_id = std::fs::metadata(&dir).unwrap().ino();
        let mut cache = CgroupPaths::new(&m.path);
        assert_eq!(cache.path(cg_id).map(identify), Some(ident.clone()));
        assert!(ContainerPrefix::parse(&id[..12])
            .unwrap()
            .matches(ident.container_id.as_deref()));
        assert!(CgroupPrefix::parse(&g.top_path()).unwrap().matches(&path));
        // A host process (this test) is no container.
        let me = read_proc_cgroup(std::process::id()).unwrap();
        let (host, _) = identify_process(me.unified.as_deref(), &me.v1_refs());
        assert_eq!(host, Identity::default());
    }

    #[test]
    fn cgroup_namespace_paths_resolve() {
        if !require_root("cgroup_namespace_paths_resolve") {
            return;
        }
        let m = find_v2_mount().unwrap().expect("a cgroup2 mount");
        let id = "34".repeat(32);
        let mut g = TestCgroup::new(&m.path, "tcpstate-test-cgns");
        let scope = format!("docker-{id}.scope");
        let target = g.mkdir(&scope);
        let tpid = g.spawn_in(&target);
        let ns = g.mkdir("ns");
        let (rel, mount_root) = namespace_view(&ns, tpid);
        let want = format!("{}/{scope}", g.top_path());
        let ns_root = format!("{}/ns", g.top_path());
        assert_eq!(
            resolve(&rel, &mount_root, Some(&ns_root)),
            Some(want.clone())
        );
        // Without the namespace root, the parent's name is unknown: not guessed.
        assert_eq!(resolve(&rel, &mount_root, None), None);
        assert_eq!(identify(&want).container_id, Some(id));
    }

    #[test]
    fn hybrid_host_names_from_v1() {
        if !require_root("hybrid_host_names_from_v1") {
            return;
        }
        if !Path::new(V1_DEVICES).join("cgroup.procs").exists() {
            eprintln!("hybrid_host_names_from_v1: no v1 devices hierarchy, skipped");
            return;
        }
        let id = "56".repeat(32);
        let mut g = TestCgroup::new(Path::new(V1_DEVICES), "tcpstate-test-v1");
        let dir = g.mkdir(&format!("docker/{id}"));
        let pid = g.spawn_in(&dir);
        let seen = read_proc_cgroup(pid).unwrap();
        let v2 = seen.unified.clone().unwrap();
        assert!(
            !identify(&v2).is_container(),
            "v2 stayed the parent's: {v2}"
        );
        let (ident, src) = identify_process(Some(&v2), &seen.v1_refs());
        assert_eq!(src, Source::V1, "{seen:?}");
        assert_eq!(ident.container_id, Some(id));
        assert_eq!(ident.runtime, Some(Runtime::Docker));
    }

    #[test]
    fn pod_name_from_a_log_dir() {
        let dir = std::env::temp_dir().join(format!("tcpstate-pods-m-{}", std::process::id()));
        let uid = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9";
        std::fs::create_dir_all(dir.join(format!("shop_cart-5f7_{uid}"))).unwrap();
        let names = pod_log_dirs(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let pods = pod_names(names.iter().map(String::as_str));
        let path = format!(
            "/kubepods.slice/kubepods-pod{}.slice",
            uid.replace('-', "_")
        );
        let pod = &pods[identify(&path).pod_uid.as_deref().unwrap()];
        assert_eq!(
            (pod.namespace.as_str(), pod.name.as_str()),
            ("shop", "cart-5f7")
        );
    }
}
