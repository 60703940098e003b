//! tracefs: classic tracepoints are attached by id, read from tracefs, which a fresh
//! machine may not have mounted.

use std::{ffi::CString, io, path::Path};

pub const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

fn populated(dir: &str) -> bool {
    Path::new(dir)
        .read_dir()
        .map(|mut d| d.next().is_some())
        .unwrap_or(false)
}

/// Mounts tracefs at /sys/kernel/tracing unless it (or the debugfs copy) is there.
/// Returns whether it mounted it. The mount is left in place, as systemd would have it.
pub fn ensure_mounted() -> io::Result<bool> {
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
        return Err(err);
    }
    Ok(true)
}
