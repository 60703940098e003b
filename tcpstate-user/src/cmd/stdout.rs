//! Notices that the reader of stdout has gone (`tcpstate ... | head -1`), so that a
//! command on a quiet host exits at once instead of at its next write.
//!
//! A pipe whose reader closed reports POLLERR (`pipe_poll()`), a socket whose peer
//! closed or a terminal that hung up reports POLLHUP; `poll(2)` with no requested
//! events reports exactly those. Regular files and other character devices (such as
//! /dev/null) never hang up, and epoll refuses them: they are not watched.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::sync::oneshot;

/// Whether stdout is something whose reader can go away.
fn watchable(fd: i32) -> bool {
    // SAFETY: fstat with a valid pointer; a zeroed stat is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return false;
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFIFO | libc::S_IFSOCK => true,
        // SAFETY: isatty has no preconditions.
        libc::S_IFCHR => unsafe { libc::isatty(fd) == 1 },
        _ => false,
    }
}

/// A future that resolves when stdout's reader has gone, and never if stdout cannot
/// be watched. One thread blocks in `poll(2)` on a duplicate of fd 1 meanwhile.
pub async fn reader_gone() {
    if let Some(rx) = watch() {
        // An Err: the watcher stopped without seeing a hang-up (poll failed).
        if rx.await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

fn watch() -> Option<oneshot::Receiver<()>> {
    if !watchable(libc::STDOUT_FILENO) {
        return None;
    }
    // SAFETY: F_DUPFD_CLOEXEC on fd 1 returns a new fd that we own.
    let fd = unsafe { libc::fcntl(libc::STDOUT_FILENO, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd was just returned by fcntl and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("stdout-watch".into())
        .spawn(move || {
            let mut p = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: 0,
                revents: 0,
            };
            loop {
                // SAFETY: one valid pollfd.
                let rc = unsafe { libc::poll(&mut p, 1, -1) };
                if rc > 0 && p.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                    let _ = tx.send(());
                    return;
                }
                if rc < 0
                    && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
                {
                    return;
                }
            }
        })
        .ok()?;
    Some(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_watched() {
        let mut fds = [0; 2];
        // SAFETY: pipe with a valid array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        assert!(watchable(fds[1]));
        let null = std::fs::File::open("/dev/null").unwrap();
        assert!(!watchable(null.as_raw_fd()));
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert!(!watchable(file.as_raw_fd()));
        // SAFETY: closing the fds pipe() returned.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}
