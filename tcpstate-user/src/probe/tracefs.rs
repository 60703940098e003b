//! tracefs: classic tracepoints are attached by id, read from tracefs, which a fresh
//! machine may not have mounted, and whose files are root's alone by default. Only
//! the `syscalls:sys_exit_accept*` tracepoints need it; BTF tracepoints and iterators
//! do not, so a command without them never touches tracefs.

use std::{ffi::CString, io, path::Path};

pub const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("tracefs is not mounted at {TRACEFS} and mounting it failed ({0}); mount it with `mount -t tracefs tracefs {TRACEFS}` or run as root")]
    NotMounted(io::Error),
    #[error("tracefs is mounted at {0} but this user cannot read it ({1}); the syscalls:sys_exit_accept tracepoints (`trace`, and `hist` with --by process or --pid) read their ids there: run as root, add CAP_DAC_READ_SEARCH, or remount it readable (`mount -o remount,gid=GROUP,mode=0750 {0}`); `linger` and `hist` otherwise need no tracefs")]
    Unreadable(String, io::Error),
}

fn populated(dir: &str) -> bool {
    Path::new(dir)
        .read_dir()
        .is_ok_and(|mut d| d.next().is_some())
}

/// Mount points of tracefs, from mountinfo (field 5 is the mount point; the file
/// system type follows the ` - ` separator).
fn tracefs_mounts(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            let mp = pre.split_whitespace().nth(4)?;
            // Mount points escape spaces as \040: ours never have one.
            (fstype == "tracefs").then(|| mp.to_string())
        })
        .collect()
}

/// Makes tracefs usable at /sys/kernel/tracing (or the debugfs copy, where aya also
/// looks): mounts it unless mountinfo shows it there, and checks it can be read.
/// Returns whether it mounted it. The mount is left in place, as systemd would have it.
pub fn ensure_usable() -> Result<bool, TracefsError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mounts = tracefs_mounts(&mountinfo);
    let at = [TRACEFS, DEBUGFS_TRACING]
        .into_iter()
        .find(|d| mounts.iter().any(|m| m == d));
    if let Some(dir) = at {
        return match Path::new(dir).read_dir() {
            Ok(_) => Ok(false),
            Err(e) => Err(TracefsError::Unreadable(dir.to_string(), e)),
        };
    }
    // debugfs's tracing directory is an automount: mountinfo lists it once used.
    if populated(TRACEFS) || populated(DEBUGFS_TRACING) {
        return Ok(false);
    }
    let src = CString::new("tracefs").expect("no NUL");
    let target = CString::new(TRACEFS).expect("no NUL");
    // SAFETY: valid C strings; no mount data.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        // Another tcpstate may have mounted it meanwhile.
        if populated(TRACEFS) {
            return Ok(false);
        }
        return Err(TracefsError::NotMounted(err));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_from_mountinfo() {
        let info = "22 27 0:20 / /sys rw,nosuid shared:7 - sysfs sysfs rw\n\
                    35 22 0:12 / /sys/kernel/tracing rw,nosuid,nodev,noexec,relatime shared:12 - tracefs tracefs rw\n\
                    36 22 0:7 / /sys/kernel/debug rw - debugfs debugfs rw\n\
                    40 29 0:44 / /tmp/x\\040y rw - tracefs none rw,mode=700\n";
        assert_eq!(
            tracefs_mounts(info),
            vec![
                "/sys/kernel/tracing".to_string(),
                "/tmp/x\\040y".to_string()
            ]
        );
        assert!(tracefs_mounts("garbage\n\n").is_empty());
    }
}
