//! A `newc` cpio archive, the format the kernel unpacks an initramfs from
//! (`Documentation/driver-api/early-userspace/buffer-format.rst`): a 110-byte ASCII
//! header per entry, the name, the data, each padded to 4 bytes, and a `TRAILER!!!`.

use std::{collections::BTreeSet, io::Write};

pub struct Cpio<W: Write> {
    out: W,
    ino: u32,
    dirs: BTreeSet<String>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

impl<W: Write> Cpio<W> {
    pub fn new(out: W) -> Self {
        Cpio {
            out,
            ino: 1,
            dirs: BTreeSet::new(),
        }
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        let name = name.trim_start_matches('/');
        let hdr = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0, // check
        );
        self.ino += 1;
        self.out.write_all(hdr.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(hdr.len() + name.len() + 1)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, len: usize) -> std::io::Result<()> {
        let n = (4 - len % 4) % 4;
        self.out.write_all(&[0; 3][..n])
    }

    /// `path`'s parent directories, each once.
    fn parents(&mut self, path: &str) -> std::io::Result<()> {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for i in 1..parts.len() {
            let dir = parts[..i].join("/");
            if self.dirs.insert(dir.clone()) {
                self.entry(&dir, S_IFDIR | 0o755, &[])?;
            }
        }
        Ok(())
    }

    pub fn dir(&mut self, path: &str) -> std::io::Result<()> {
        self.parents(path)?;
        let p = path.trim_start_matches('/').to_string();
        if self.dirs.insert(p.clone()) {
            self.entry(&p, S_IFDIR | 0o755, &[])?;
        }
        Ok(())
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        self.parents(path)?;
        self.entry(path, S_IFREG | mode, data)
    }

    pub fn finish(mut self) -> std::io::Result<W> {
        self.entry("TRAILER!!!", 0, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_aligned_and_parents_come_first() {
        let mut c = Cpio::new(Vec::new());
        c.file("/a/b/c", 0o644, b"hello").unwrap();
        let out = c.finish().unwrap();
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        // a, a/b (directories), a/b/c, the trailer.
        assert_eq!(text.matches("070701").count(), 4);
        let a = text.find("a\0").unwrap();
        let c_at = text.find("a/b/c\0").unwrap();
        assert!(a < c_at);
        assert!(text.contains("hello"));
        assert!(text.contains("TRAILER!!!\0"));
    }
}
