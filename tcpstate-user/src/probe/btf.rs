//! The kernel's BTF (`/sys/kernel/btf/vmlinux`), read for the few things tcpstate
//! needs: struct member offsets and the ids of named types.
//!
//! Why not btf-rs or aya's parser: both index or parse every one of the kernel's
//! ~100k types up front (btf-rs' cached backend cost ~130 ms of startup, aya's ~25 MB),
//! and btf-rs' lazy backend needs mmap, which 6.1 and 6.12 refuse on this file
//! (ENODEV; 6.18 allows it). This reader maps the file where the kernel allows it
//! and reads it where not, then makes one pass over the type records per
//! [`Btf::index`] call, remembering only where each record starts and the ids of the
//! names asked for (the format: `Documentation/bpf/btf.rst`, `include/uapi/linux/btf.h`).

use std::{collections::HashMap, io, os::fd::AsRawFd, path::Path};

pub const KIND_INT: u32 = 1;
pub const KIND_PTR: u32 = 2;
pub const KIND_ARRAY: u32 = 3;
pub const KIND_STRUCT: u32 = 4;
pub const KIND_UNION: u32 = 5;
pub const KIND_ENUM: u32 = 6;
pub const KIND_FWD: u32 = 7;
pub const KIND_TYPEDEF: u32 = 8;
pub const KIND_VOLATILE: u32 = 9;
pub const KIND_CONST: u32 = 10;
pub const KIND_RESTRICT: u32 = 11;
pub const KIND_FUNC: u32 = 12;
pub const KIND_FUNC_PROTO: u32 = 13;
pub const KIND_VAR: u32 = 14;
pub const KIND_DATASEC: u32 = 15;
pub const KIND_FLOAT: u32 = 16;
pub const KIND_DECL_TAG: u32 = 17;
pub const KIND_TYPE_TAG: u32 = 18;
pub const KIND_ENUM64: u32 = 19;

const MAGIC: u16 = 0xeb9f;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not BTF data (bad magic or header)")]
    Header,
    #[error("type {0} has unknown kind {1} (a newer BTF format than this tcpstate knows)")]
    Kind(u32, u32),
    #[error("BTF data ends inside type {0}")]
    Truncated(u32),
}

/// The file's bytes: mapped read-only where the kernel allows it, else read.
enum Bytes {
    Mapped(*const u8, usize),
    Read(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            // SAFETY: a live private read-only mapping of `len` bytes (unmapped in Drop).
            Bytes::Mapped(p, len) => unsafe { std::slice::from_raw_parts(*p, *len) },
            Bytes::Read(v) => v,
        }
    }
}

impl Drop for Bytes {
    fn drop(&mut self) {
        if let Bytes::Mapped(p, len) = *self {
            // SAFETY: the mapping made in `Btf::open`.
            unsafe { libc::munmap(p as *mut libc::c_void, len) };
        }
    }
}

// SAFETY: the mapping is read-only and owned; nothing aliases it mutably.
unsafe impl Send for Bytes {}

pub struct Btf {
    bytes: Bytes,
    /// Where the type and string sections start and end in `bytes`.
    types: (usize, usize),
    strings: (usize, usize),
    /// Byte offset (from `types.0`) of each type id's record; id 0 is void.
    records: Vec<u32>,
    /// Ids of the names asked for in [`Btf::index`], by name.
    named: HashMap<String, Vec<u32>>,
}

impl Btf {
    /// Whether the file is mapped (false: the kernel refused mmap, it was read).
    pub fn mapped(&self) -> bool {
        matches!(self.bytes, Bytes::Mapped(..))
    }
}

/// One struct or union member.
#[derive(Clone, Copy, Debug)]
pub struct Member {
    pub name_off: u32,
    pub type_id: u32,
    /// In bits; `bitfield_size` non-zero for a bitfield of a kind_flag struct.
    pub bit_offset: u32,
    pub bitfield_size: u32,
}

impl Btf {
    /// Maps or reads `path` and checks its header; indexes nothing yet.
    pub fn open(path: impl AsRef<Path>) -> Result<Btf, BtfError> {
        let f = std::fs::File::open(path.as_ref())?;
        let len = f.metadata()?.len() as usize;
        // SAFETY: a fresh private read-only mapping of the whole file, checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        let bytes = if p == libc::MAP_FAILED || len == 0 {
            // 6.1 and 6.12 refuse mmap of /sys/kernel/btf/vmlinux (ENODEV).
            log::debug!(
                "mmap of the kernel BTF refused ({}): reading it",
                io::Error::last_os_error()
            );
            Bytes::Read(std::fs::read(path.as_ref())?)
        } else {
            Bytes::Mapped(p as *const u8, len)
        };
        Self::from_bytes(bytes)
    }

    /// Parses BTF held in memory.
    #[cfg(test)]
    pub fn parse(data: Vec<u8>) -> Result<Btf, BtfError> {
        Self::from_bytes(Bytes::Read(data))
    }

    fn from_bytes(bytes: Bytes) -> Result<Btf, BtfError> {
        let b = bytes.as_slice();
        if b.len() < 24 || u16::from_ne_bytes([b[0], b[1]]) != MAGIC {
            return Err(BtfError::Header);
        }
        let word = |at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        let hdr_len = word(4);
        let (type_off, type_len, str_off, str_len) = (word(8), word(12), word(16), word(20));
        let types = (hdr_len + type_off, hdr_len + type_off + type_len);
        let strings = (hdr_len + str_off, hdr_len + str_off + str_len);
        if types.1 > b.len() || strings.1 > b.len() {
            return Err(BtfError::Header);
        }
        let mut btf = Btf {
            bytes,
            types,
            strings,
            records: vec![0],
            named: HashMap::new(),
        };
        btf.records = btf.walk(&[])?;
        Ok(btf)
    }

    fn u32_at(&self, at: usize) -> u32 {
        let b = self.bytes.as_slice();
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// The NUL-terminated string at `off` in the string section.
    pub fn str_at(&self, off: u32) -> &str {
        let b = &self.bytes.as_slice()[self.strings.0..self.strings.1];
        let s = b.get(off as usize..).unwrap_or_default();
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or_default()
    }

    /// One pass over every type record: each record's offset, and (when `wanted` is
    /// not empty) the ids of those names, added to `named`.
    fn walk(&mut self, wanted: &[&str]) -> Result<Vec<u32>, BtfError> {
        let (start, end) = self.types;
        let mut records = Vec::with_capacity(if wanted.is_empty() {
            (end - start) / 16
        } else {
            0
        });
        if wanted.is_empty() {
            records.push(0);
        }
        let mut found: Vec<(usize, u32)> = Vec::new();
        let strings = &self.bytes.as_slice()[self.strings.0..self.strings.1];
        // The wanted names' first two bytes, one bit each: almost every type's name
        // is ruled out by one bit test before any compare.
        let mut first = vec![0u64; 1024];
        let pair = |n: &[u8]| {
            usize::from(n.first().copied().unwrap_or(0)) << 8
                | usize::from(n.get(1).copied().unwrap_or(0))
        };
        for w in wanted {
            let k = pair(w.as_bytes());
            first[k / 64] |= 1 << (k % 64);
        }
        let mut at = start;
        let mut id = 1u32;
        while at < end {
            if at + 12 > end {
                return Err(BtfError::Truncated(id));
            }
            let name_off = self.u32_at(at);
            let info = self.u32_at(at + 4);
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                k => return Err(BtfError::Kind(id, k)),
            };
            if wanted.is_empty() {
                records.push((at - start) as u32);
            } else if name_off != 0 {
                // Bytes against bytes: no length scan or UTF-8 check per type (this
                // loop runs for each of the kernel's ~150k types).
                let name = strings.get(name_off as usize..).unwrap_or_default();
                let k = pair(name);
                if first[k / 64] & (1 << (k % 64)) != 0 {
                    let is =
                        |w: &&str| name.starts_with(w.as_bytes()) && name.get(w.len()) == Some(&0);
                    if let Some(i) = wanted.iter().position(is) {
                        found.push((i, id));
                    }
                }
            }
            at += 12 + extra;
            id += 1;
        }
        if at != end {
            return Err(BtfError::Truncated(id));
        }
        for (i, id) in found {
            self.named
                .entry(wanted[i].to_string())
                .or_default()
                .push(id);
        }
        Ok(records)
    }

    /// Finds the ids of `names` in one pass (names indexed before are not searched
    /// again); [`Btf::find`] then answers for them.
    pub fn index(&mut self, names: &[&str]) -> Result<(), BtfError> {
        let new: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| !self.named.contains_key(*n))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        for n in &new {
            self.named.insert(n.to_string(), Vec::new());
        }
        self.walk(&new)?;
        Ok(())
    }

    /// The number of types (ids 1..=count).
    #[cfg(test)]
    pub fn count(&self) -> u32 {
        self.records.len() as u32 - 1
    }

    /// (kind, name_off, size_or_type, vlen, kind_flag) of type `id`.
    pub fn header(&self, id: u32) -> Option<(u32, u32, u32, usize, bool)> {
        if id == 0 || id as usize >= self.records.len() {
            return None;
        }
        let at = self.types.0 + self.records[id as usize] as usize;
        let info = self.u32_at(at + 4);
        Some((
            (info >> 24) & 0x1f,
            self.u32_at(at),
            self.u32_at(at + 8),
            (info & 0xffff) as usize,
            info >> 31 != 0,
        ))
    }

    /// The id of an indexed name with this kind.
    pub fn find(&self, name: &str, kind: u32) -> Option<u32> {
        self.named
            .get(name)?
            .iter()
            .copied()
            .find(|&id| self.header(id).is_some_and(|h| h.0 == kind))
    }

    /// The members of a struct or union.
    pub fn members(&self, id: u32) -> Vec<Member> {
        let Some((kind, _, _, vlen, kind_flag)) = self.header(id) else {
            return Vec::new();
        };
        if kind != KIND_STRUCT && kind != KIND_UNION {
            return Vec::new();
        }
        let base = self.types.0 + self.records[id as usize] as usize + 12;
        (0..vlen)
            .map(|i| {
                let at = base + 12 * i;
                let off = self.u32_at(at + 8);
                let (bit_offset, bitfield_size) = if kind_flag {
                    (off & 0xff_ffff, off >> 24)
                } else {
                    (off, 0)
                };
                Member {
                    name_off: self.u32_at(at),
                    type_id: self.u32_at(at + 4),
                    bit_offset,
                    bitfield_size,
                }
            })
            .collect()
    }

    /// `id` with typedefs and qualifiers (const, volatile, restrict, type tags)
    /// looked through.
    pub fn strip(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.header(id) {
                Some((
                    KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG,
                    _,
                    next,
                    _,
                    _,
                )) => id = next,
                _ => break,
            }
        }
        id
    }

    /// Byte offset of `path` (members separated by dots) inside the indexed struct
    /// `name`, looking through anonymous structs and unions as C does.
    pub fn offset_of(&self, name: &str, path: &str) -> Result<u32, OffsetLookup> {
        self.member(name, path).map(|(off, _)| off)
    }

    /// The byte offset of `path` in `name` (as [`Self::offset_of`]) and the BTF kind
    /// of its type, typedefs looked through (`KIND_INT`, `KIND_ARRAY`, ...).
    pub fn member(&self, name: &str, path: &str) -> Result<(u32, u32), OffsetLookup> {
        let mut id = self.find(name, KIND_STRUCT).ok_or(OffsetLookup::NoStruct)?;
        let mut bits = 0u32;
        for member in path.split('.') {
            let (off, next) = self
                .find_member(id, member, 0)
                .ok_or(OffsetLookup::NoMember)?;
            bits += off;
            id = self.strip(next);
        }
        if !bits.is_multiple_of(8) {
            return Err(OffsetLookup::Unaligned);
        }
        let kind = self.header(id).map_or(0, |h| h.0);
        Ok((bits / 8, kind))
    }

    /// (bit offset, type id) of member `name` of struct or union `id`.
    fn find_member(&self, id: u32, name: &str, depth: u32) -> Option<(u32, u32)> {
        if depth > 8 {
            return None;
        }
        for m in self.members(id) {
            if m.bitfield_size != 0 {
                continue;
            }
            let mname = self.str_at(m.name_off);
            if mname == name {
                return Some((m.bit_offset, m.type_id));
            }
            if mname.is_empty() {
                if let Some((off, t)) = self.find_member(self.strip(m.type_id), name, depth + 1) {
                    return Some((m.bit_offset + off, t));
                }
            }
        }
        None
    }
}

/// Why [`Btf::offset_of`] found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetLookup {
    NoStruct,
    NoMember,
    Unaligned,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small BTF blob built by hand: the test's own types at known ids.
    pub(crate) struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next: u32,
    }

    impl Builder {
        pub(crate) fn new() -> Self {
            Builder {
                types: Vec::new(),
                strings: vec![0],
                next: 1,
            }
        }
        fn name(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }
        fn words(&mut self, w: &[u32]) -> u32 {
            for x in w {
                self.types.extend_from_slice(&x.to_ne_bytes());
            }
            self.next += 1;
            self.next - 1
        }
        pub(crate) fn int(&mut self, name: &str, size: u32) -> u32 {
            let n = self.name(name);
            self.words(&[n, KIND_INT << 24, size, size * 8])
        }
        pub(crate) fn typedef(&mut self, name: &str, to: u32) -> u32 {
            let n = self.name(name);
            self.words(&[n, KIND_TYPEDEF << 24, to])
        }
        pub(crate) fn func(&mut self, name: &str) -> u32 {
            let n = self.name(name);
            self.words(&[n, KIND_FUNC << 24, 0])
        }
        /// A struct (or union) of (name, type, bit offset) members.
        pub(crate) fn record(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let n = self.name(name);
            let mut w = vec![n, (kind << 24) | members.len() as u32, size];
            for (mname, ty, off) in members {
                let mn = self.name(mname);
                w.extend_from_slice(&[mn, *ty, *off]);
            }
            self.words(&w)
        }
        pub(crate) fn build(&self) -> Vec<u8> {
            let mut b = Vec::new();
            b.extend_from_slice(&MAGIC.to_ne_bytes());
            b.extend_from_slice(&[1, 0]);
            let tl = self.types.len() as u32;
            for w in [24u32, 0, tl, tl, self.strings.len() as u32] {
                b.extend_from_slice(&w.to_ne_bytes());
            }
            b.extend_from_slice(&self.types);
            b.extend_from_slice(&self.strings);
            b
        }
    }

    #[test]
    fn offsets_through_anonymous_members_and_typedefs() {
        let mut t = Builder::new();
        let int = t.int("int", 4);
        let u16t = t.int("unsigned short", 2);
        let td = t.typedef("__u16", u16t);
        let inner = t.record(KIND_STRUCT, "inner", 8, &[("a", int, 0), ("b", td, 32)]);
        let anon = t.record(KIND_UNION, "", 8, &[("x", int, 0), ("deep", inner, 0)]);
        let outer = t.record(
            KIND_STRUCT,
            "outer",
            24,
            &[("first", int, 0), ("", anon, 64), ("named", inner, 128)],
        );
        let f = t.func("bpf_iter_task_file");
        let mut btf = Btf::parse(t.build()).unwrap();
        assert_eq!(btf.count(), 7);
        btf.index(&["outer", "bpf_iter_task_file", "absent"])
            .unwrap();
        assert_eq!(btf.find("outer", KIND_STRUCT), Some(outer));
        assert_eq!(btf.find("outer", KIND_TYPEDEF), None);
        assert_eq!(btf.find("bpf_iter_task_file", KIND_FUNC), Some(f));
        assert_eq!(btf.find("absent", KIND_STRUCT), None);
        assert_eq!(btf.offset_of("outer", "first"), Ok(0));
        // x and deep come from the anonymous union at byte 8.
        assert_eq!(btf.offset_of("outer", "x"), Ok(8));
        assert_eq!(btf.offset_of("outer", "deep.b"), Ok(12));
        assert_eq!(btf.offset_of("outer", "named.b"), Ok(20));
        assert_eq!(btf.offset_of("outer", "nope"), Err(OffsetLookup::NoMember));
        assert_eq!(btf.offset_of("inner", "a"), Err(OffsetLookup::NoStruct));
        // Indexing more names later is another pass.
        btf.index(&["inner"]).unwrap();
        assert_eq!(btf.offset_of("inner", "b"), Ok(4));
        let _ = anon;
    }

    #[test]
    fn bad_data_is_refused_not_misread() {
        assert!(matches!(Btf::parse(vec![0; 10]), Err(BtfError::Header)));
        let mut t = Builder::new();
        t.int("int", 4);
        let mut b = t.build();
        // Claim a longer type section than the file holds.
        b[12..16].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(matches!(Btf::parse(b), Err(BtfError::Header)));
        let mut t = Builder::new();
        t.words(&[0, 31 << 24, 0]);
        assert!(matches!(Btf::parse(t.build()), Err(BtfError::Kind(1, 31))));
    }

    /// The running kernel's BTF, mapped (or read where mmap is refused), gives the
    /// same records as when read into memory.
    #[test]
    fn kernel_btf_mapped_or_read_alike() {
        let Ok(mut a) = Btf::open(crate::probe::offsets::VMLINUX_BTF) else {
            panic!("no {}", crate::probe::offsets::VMLINUX_BTF);
        };
        let mut b = Btf::parse(std::fs::read(crate::probe::offsets::VMLINUX_BTF).unwrap()).unwrap();
        assert_eq!(a.count(), b.count());
        assert!(a.count() > 1000);
        a.index(&["sock"]).unwrap();
        b.index(&["sock"]).unwrap();
        assert_eq!(
            a.offset_of("sock", "sk_protocol"),
            b.offset_of("sock", "sk_protocol")
        );
    }
}
