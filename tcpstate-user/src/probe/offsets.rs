//! Kernel structure offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`),
//! handed to the probe as its `CONFIG` global, so it needs neither CO-RE nor headers.

use btf_rs::{Btf, Type};
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

/// Resolves every offset the probe uses.
pub fn kernel_config(btf: &Btf) -> Result<Config, OffsetError> {
    let o = |s: &str, path: &str| offset_of(btf, s, path);
    Ok(Config {
        sk_family: o("sock", "__sk_common.skc_family")?,
        sk_protocol: o("sock", "sk_protocol")?,
        sk_state: o("sock", "__sk_common.skc_state")?,
        sk_dport: o("sock", "__sk_common.skc_dport")?,
        sk_rcv_saddr: o("sock", "__sk_common.skc_rcv_saddr")?,
        sk_daddr: o("sock", "__sk_common.skc_daddr")?,
        sk_v6_rcv_saddr: o("sock", "__sk_common.skc_v6_rcv_saddr")?,
        sk_v6_daddr: o("sock", "__sk_common.skc_v6_daddr")?,
        sk_cookie: o("sock", "__sk_common.skc_cookie")?,
        inet_sport: o("inet_sock", "inet_sport")?,
        task_files: o("task_struct", "files")?,
        task_group_leader: o("task_struct", "group_leader")?,
        task_comm: o("task_struct", "comm")?,
        files_fdt: o("files_struct", "fdt")?,
        fdt_max_fds: o("fdtable", "max_fds")?,
        fdt_fd: o("fdtable", "fd")?,
        file_private_data: o("file", "private_data")?,
        socket_sk: o("socket", "sk")?,
        task_tgid: o("task_struct", "tgid")?,
        file_inode: o("file", "f_inode")?,
        inode_mode: o("inode", "i_mode")?,
        tw_timer: o("inet_timewait_sock", "tw_timer")?,
        tw_substate: o("inet_timewait_sock", "tw_substate")?,
        tw_sport: o("inet_timewait_sock", "tw_sport")?,
        sk_num: o("sock", "__sk_common.skc_num")?,
        // tcp_sock and inet_connection_sock start with struct sock: offsets from sk.
        tcp_rcv_tstamp: o("tcp_sock", "rcv_tstamp")?,
        tcp_lsndtime: o("tcp_sock", "lsndtime")?,
        icsk_lrcvtime: o("inet_connection_sock", "icsk_ack.lrcvtime")?,
        tcp_rcv_nxt: o("tcp_sock", "rcv_nxt")?,
        tcp_copied_seq: o("tcp_sock", "copied_seq")?,
        icsk_accept_head: o("inet_connection_sock", "icsk_accept_queue.rskq_accept_head")?,
        sk_err: o("sock", "sk_err")?,
        sk_ack_backlog: o("sock", "sk_ack_backlog")?,
        sk_max_ack_backlog: o("sock", "sk_max_ack_backlog")?,
        sk_net: o("sock", "__sk_common.skc_net")?,
        net_ns_inum: o("net", "ns.inum")?,
        req_dl_next: o("request_sock", "dl_next")?,
        req_sk: o("request_sock", "sk")?,
        sk_cgrp: o("sock", "sk_cgrp_data.cgroup")?,
        cgroup_kn: o("cgroup", "kn")?,
        kn_id: o("kernfs_node", "id")?,
        sk_flags: o("sock", "__sk_common.skc_flags")?,
        sk_lingertime: o("sock", "sk_lingertime")?,
        tcp_keepalive_time: o("tcp_sock", "keepalive_time")?,
        ..Config::default()
    })
}

/// What aya looks kernel BTF types up for: attaching a BTF tracepoint (a typedef
/// `btf_trace_<name>`) or an iterator (a func `bpf_iter_<name>`).
pub enum AttachType<'a> {
    Typedef(&'a str),
    Func(&'a str),
}

const BTF_KIND_PTR: u32 = 2;
const BTF_KIND_TYPEDEF: u32 = 8;
const BTF_KIND_FUNC: u32 = 12;

/// A stand-in for the kernel's BTF holding only the types aya looks up by name to
/// attach, each at its kernel type id; every other id is a placeholder `void *`.
/// aya would otherwise parse all of /sys/kernel/btf/vmlinux into memory (5.5 MB of
/// BTF, ~25 MB parsed on this kernel): the largest allocation tcpstate ever made,
/// which set its peak RSS. The probe needs no CO-RE relocation (offsets come from
/// `kernel_config`), so aya needs nothing else from the kernel's BTF.
pub fn attach_btf(btf: &Btf, wanted: &[AttachType]) -> Result<aya::Btf, OffsetError> {
    let mut found: Vec<(u32, u32, &str)> = Vec::new();
    for w in wanted {
        let (name, kind) = match w {
            AttachType::Typedef(n) => (*n, BTF_KIND_TYPEDEF),
            AttachType::Func(n) => (*n, BTF_KIND_FUNC),
        };
        let id = btf
            .resolve_ids_by_name(name)
            .unwrap_or_default()
            .into_iter()
            .find(|&id| {
                matches!(
                    (kind, btf.resolve_type_by_id(id)),
                    (BTF_KIND_TYPEDEF, Ok(Type::Typedef(_))) | (BTF_KIND_FUNC, Ok(Type::Func(_)))
                )
            })
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
            None => (0, BTF_KIND_PTR),
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

pub fn load_vmlinux() -> Result<Btf, OffsetError> {
    // Mmap: resolves the few structs we need lazily (the cached backend indexes all
    // ~100k kernel types first, which cost ~130 ms of startup here).
    Btf::from_file_with_backend(VMLINUX_BTF, btf_rs::Backend::Mmap)
        .map_err(|e| OffsetError::Load(e.to_string()))
}

/// Byte offset of `path` (members separated by dots) inside `struct name`, looking
/// through anonymous structs and unions as C does.
pub fn offset_of(btf: &Btf, name: &str, path: &str) -> Result<u32, OffsetError> {
    let mut ty = btf
        .resolve_types_by_name(name)
        .map_err(|_| OffsetError::NoStruct(name.into()))?
        .into_iter()
        .find(|t| matches!(t, Type::Struct(_)))
        .ok_or_else(|| OffsetError::NoStruct(name.into()))?;
    let mut bits = 0u32;
    for member in path.split('.') {
        let (off, next) = find_member(btf, &ty, member)?
            .ok_or_else(|| OffsetError::NoMember(name.into(), path.into()))?;
        bits += off;
        ty = next;
    }
    if !bits.is_multiple_of(8) {
        return Err(OffsetError::Unaligned(name.into(), path.into()));
    }
    Ok(bits / 8)
}

/// Finds `name` in a struct or union: (bit offset, member type with typedefs and
/// qualifiers stripped).
fn find_member(btf: &Btf, ty: &Type, name: &str) -> Result<Option<(u32, Type)>, OffsetError> {
    let members = match ty {
        Type::Struct(s) | Type::Union(s) => &s.members,
        _ => return Ok(None),
    };
    for m in members {
        if m.bitfield_size().is_some_and(|b| b != 0) {
            continue;
        }
        let mname = btf.resolve_name(m).unwrap_or_default();
        let mty = strip(btf, btf.resolve_chained_type(m).ok());
        if mname == name {
            return Ok(Some((m.bit_offset(), mty.unwrap_or(Type::Void))));
        }
        if mname.is_empty() {
            if let Some(inner) = mty {
                if let Some((off, t)) = find_member(btf, &inner, name)? {
                    return Ok(Some((m.bit_offset() + off, t)));
                }
            }
        }
    }
    Ok(None)
}

fn strip(btf: &Btf, mut ty: Option<Type>) -> Option<Type> {
    for _ in 0..16 {
        let next = match &ty {
            Some(Type::Typedef(t)) => btf.resolve_chained_type(t).ok(),
            Some(Type::Volatile(t)) => btf.resolve_chained_type(t).ok(),
            Some(Type::Const(t)) => btf.resolve_chained_type(t).ok(),
            Some(Type::Restrict(t)) => btf.resolve_chained_type(t).ok(),
            Some(Type::TypeTag(t)) => btf.resolve_chained_type(t).ok(),
            _ => return ty,
        };
        ty = next;
    }
    ty
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the running kernel's BTF (readable by any user), so it checks the exact
    /// layout the probe will use here.
    #[test]
    fn resolves_every_offset_on_this_kernel() {
        let btf = load_vmlinux().expect("this machine has /sys/kernel/btf/vmlinux");
        let c = kernel_config(&btf).unwrap();
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
        // The stand-in BTF gives aya the kernel's own type ids.
        let small = attach_btf(
            &btf,
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
