//! Kernel structure offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`),
//! handed to the probe as its `CONFIG` global, so it needs neither CO-RE nor headers.

use super::btf::{Btf, OffsetLookup, KIND_ARRAY, KIND_FUNC, KIND_INT, KIND_PTR, KIND_TYPEDEF};
use tcpstate_common::Config;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error("cannot read kernel BTF at {VMLINUX_BTF} (kernel built without CONFIG_DEBUG_INFO_BTF?): {0}")]
    Load(String),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {0} has no member {1}")]
    NoMember(String, String),
    #[error("kernel BTF: {0}.{1} is a bitfield or not byte-aligned")]
    Unaligned(String, String),
}

/// One list gives both the structs to index (one pass) and each field's offset.
macro_rules! offsets {
    ($btf:expr, also [$($extra:literal),*]; $($(#[$doc:meta])* $field:ident: $s:literal, $p:literal;)*) => {{
        $btf.index(&[$($s,)* $($extra),*]).map_err(|e| OffsetError::Load(e.to_string()))?;
        Ok::<Config, OffsetError>(Config {
            $($field: offset_of($btf, $s, $p)?,)*
            ..Config::default()
        })
    }};
}

/// Resolves every offset the probe uses, in one pass over the kernel's types for
/// all the structs named here.
pub fn kernel_config(btf: &mut Btf) -> Result<Config, OffsetError> {
    // Also indexed: structs of optional offsets, read below.
    offsets!(btf, also ["signal_struct"];
        sk_family: "sock", "__sk_common.skc_family";
        sk_protocol: "sock", "sk_protocol";
        sk_state: "sock", "__sk_common.skc_state";
        sk_dport: "sock", "__sk_common.skc_dport";
        sk_rcv_saddr: "sock", "__sk_common.skc_rcv_saddr";
        sk_daddr: "sock", "__sk_common.skc_daddr";
        sk_v6_rcv_saddr: "sock", "__sk_common.skc_v6_rcv_saddr";
        sk_v6_daddr: "sock", "__sk_common.skc_v6_daddr";
        sk_cookie: "sock", "__sk_common.skc_cookie";
        inet_sport: "inet_sock", "inet_sport";
        task_files: "task_struct", "files";
        task_group_leader: "task_struct", "group_leader";
        task_comm: "task_struct", "comm";
        files_fdt: "files_struct", "fdt";
        fdt_max_fds: "fdtable", "max_fds";
        fdt_fd: "fdtable", "fd";
        file_private_data: "file", "private_data";
        socket_sk: "socket", "sk";
        task_tgid: "task_struct", "tgid";
        file_inode: "file", "f_inode";
        inode_mode: "inode", "i_mode";
        tw_timer: "inet_timewait_sock", "tw_timer";
        tw_substate: "inet_timewait_sock", "tw_substate";
        tw_sport: "inet_timewait_sock", "tw_sport";
        timer_expires: "timer_list", "expires";
        timer_function: "timer_list", "function";
        sk_num: "sock", "__sk_common.skc_num";
        // tcp_sock and inet_connection_sock start with struct sock: offsets from sk.
        tcp_rcv_tstamp: "tcp_sock", "rcv_tstamp";
        tcp_lsndtime: "tcp_sock", "lsndtime";
        icsk_lrcvtime: "inet_connection_sock", "icsk_ack.lrcvtime";
        tcp_rcv_nxt: "tcp_sock", "rcv_nxt";
        tcp_copied_seq: "tcp_sock", "copied_seq";
        icsk_accept_head: "inet_connection_sock", "icsk_accept_queue.rskq_accept_head";
        sk_err: "sock", "sk_err";
        sk_ack_backlog: "sock", "sk_ack_backlog";
        sk_max_ack_backlog: "sock", "sk_max_ack_backlog";
        sk_net: "sock", "__sk_common.skc_net";
        net_ns_inum: "net", "ns.inum";
        req_dl_next: "request_sock", "dl_next";
        req_sk: "request_sock", "sk";
        sk_cgrp: "sock", "sk_cgrp_data.cgroup";
        cgroup_kn: "cgroup", "kn";
        kn_id: "kernfs_node", "id";
        sk_flags: "sock", "__sk_common.skc_flags";
        sk_lingertime: "sock", "sk_lingertime";
        tcp_keepalive_time: "tcp_sock", "keepalive_time";
    )
    .map(|mut c| {
        // Optional (doctor's listener drops): a kernel that renamed or moved it
        // loses only that; 0 tells the probe not to read it.
        c.sk_drops = offset_of(btf, "sock", "sk_drops").unwrap_or(0);
        // Optional too (fd counts and limits, port ranges from the walk): without
        // them those come from /proc and the host's sysctl.
        if let (Ok(sig), Ok(rlim)) = (
            offset_of(btf, "task_struct", "signal"),
            offset_of(btf, "signal_struct", "rlim"),
        ) {
            (c.task_signal, c.signal_rlim) = (sig, rlim);
        }
        // `int range[2]` before 6.7, a packed u32 since: either is read.
        match btf.member("net", "ipv4.ip_local_ports.range") {
            Ok((off, KIND_ARRAY)) => c.net_port_range = off,
            Ok((off, KIND_INT)) => (c.net_port_range, c.port_range_packed) = (off, 1),
            _ => {}
        }
        c
    })
}

/// What aya looks kernel BTF types up for: attaching a BTF tracepoint (a typedef
/// `btf_trace_<name>`) or an iterator (a func `bpf_iter_<name>`).
pub enum AttachType<'a> {
    Typedef(&'a str),
    Func(&'a str),
}

/// A stand-in for the kernel's BTF holding only the types aya looks up by name to
/// attach, each at its kernel type id; every other id is a placeholder `void *`.
/// aya would otherwise parse all of /sys/kernel/btf/vmlinux into memory (5.5 MB of
/// BTF, ~25 MB parsed on this kernel): the largest allocation tcpstate ever made,
/// which set its peak RSS. The probe needs no CO-RE relocation (offsets come from
/// `kernel_config`), so aya needs nothing else from the kernel's BTF.
pub fn attach_btf(btf: &mut Btf, wanted: &[AttachType]) -> Result<aya::Btf, OffsetError> {
    let names: Vec<&str> = wanted
        .iter()
        .map(|w| match w {
            AttachType::Typedef(n) | AttachType::Func(n) => *n,
        })
        .collect();
    btf.index(&names)
        .map_err(|e| OffsetError::Load(e.to_string()))?;
    let mut found: Vec<(u32, u32, &str)> = Vec::new();
    for w in wanted {
        let (name, kind) = match w {
            AttachType::Typedef(n) => (*n, KIND_TYPEDEF),
            AttachType::Func(n) => (*n, KIND_FUNC),
        };
        let id = btf
            .find(name, kind)
            .ok_or_else(|| OffsetError::NoStruct(name.to_string()))?;
        found.push((id, kind, name));
    }
    let last = found.iter().map(|f| f.0).max().unwrap_or(0);
    let mut strings = vec![0u8];
    let mut types = Vec::with_capacity(last as usize * 12);
    for id in 1..=last {
        let (name_off, kind) = match found.iter().find(|f| f.0 == id) {
            Some(&(_, kind, name)) => {
                let off = strings.len() as u32;
                strings.extend_from_slice(name.as_bytes());
                strings.push(0);
                (off, kind)
            }
            None => (0, KIND_PTR),
        };
        for word in [name_off, kind << 24, 0] {
            types.extend_from_slice(&word.to_ne_bytes());
        }
    }
    // struct btf_header: magic, version, flags, hdr_len, type_off, type_len,
    // str_off, str_len.
    let mut blob = Vec::with_capacity(24 + types.len() + strings.len());
    blob.extend_from_slice(&0xeb9fu16.to_ne_bytes());
    blob.extend_from_slice(&[1, 0]);
    for word in [
        24u32,
        0,
        types.len() as u32,
        types.len() as u32,
        strings.len() as u32,
    ] {
        blob.extend_from_slice(&word.to_ne_bytes());
    }
    blob.extend_from_slice(&types);
    blob.extend_from_slice(&strings);
    aya::Btf::parse(&blob, aya::Endianness::default())
        .map_err(|e| OffsetError::Load(format!("building the attach BTF: {e}")))
}

/// The running kernel's BTF, mapped where the kernel allows it and read where not.
pub fn load_vmlinux() -> Result<Btf, OffsetError> {
    Btf::open(VMLINUX_BTF).map_err(|e| OffsetError::Load(e.to_string()))
}

/// Byte offset of `path` (members separated by dots) inside `struct name`, an
/// indexed name (see [`Btf::index`]).
pub fn offset_of(btf: &Btf, name: &str, path: &str) -> Result<u32, OffsetError> {
    btf.offset_of(name, path).map_err(|e| match e {
        OffsetLookup::NoStruct => OffsetError::NoStruct(name.into()),
        OffsetLookup::NoMember => OffsetError::NoMember(name.into(), path.into()),
        OffsetLookup::Unaligned => OffsetError::Unaligned(name.into(), path.into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the running kernel's BTF (readable by any user), so it checks the exact
    /// layout the probe will use here.
    #[test]
    fn resolves_every_offset_on_this_kernel() {
        let mut btf = load_vmlinux().expect("this machine has /sys/kernel/btf/vmlinux");
        let c = kernel_config(&mut btf).unwrap();
        // struct sock_common starts struct sock, and these two are at fixed places
        // in it on every kernel since 4.x: skc_daddr first, skc_rcv_saddr next.
        assert_eq!(c.sk_daddr, 0);
        assert_eq!(c.sk_rcv_saddr, 4);
        assert_eq!(c.sk_dport, 12);
        assert!(c.sk_family > c.sk_dport && c.sk_family < 32);
        assert!(c.sk_v6_daddr > c.sk_family);
        assert!(c.inet_sport > c.sk_protocol);
        // inet_timewait_sock starts with its sock_common, like struct sock.
        assert_eq!(
            offset_of(&btf, "inet_timewait_sock", "__tw_common.skc_cookie").unwrap(),
            c.sk_cookie
        );
        assert!(c.tw_timer > c.tw_sport);
        // Optional, but present on every kernel of the test matrix (atomic_t).
        assert!(c.sk_drops > c.sk_family, "sock.sk_drops");
        assert!(
            c.task_signal > 0 && c.signal_rlim > 0,
            "task -> signal -> rlim"
        );
        assert!(
            c.net_port_range > c.net_ns_inum,
            "net.ipv4.ip_local_ports.range"
        );
        // The stand-in BTF gives aya the kernel's own type ids.
        let small = attach_btf(
            &mut btf,
            &[
                AttachType::Typedef("btf_trace_inet_sock_set_state"),
                AttachType::Func("bpf_iter_task_file"),
            ],
        )
        .unwrap();
        let full = aya::Btf::from_sys_fs().unwrap();
        for (name, kind) in [
            (
                "btf_trace_inet_sock_set_state",
                aya_obj::btf::BtfKind::Typedef,
            ),
            ("bpf_iter_task_file", aya_obj::btf::BtfKind::Func),
        ] {
            assert_eq!(
                small.id_by_type_name_kind(name, kind).unwrap(),
                full.id_by_type_name_kind(name, kind).unwrap(),
                "{name}"
            );
        }
        assert!(matches!(
            offset_of(&btf, "sock", "no_such_field"),
            Err(OffsetError::NoMember(..))
        ));
        assert!(matches!(
            offset_of(&btf, "no_such_struct", "x"),
            Err(OffsetError::NoStruct(..))
        ));
    }
}
