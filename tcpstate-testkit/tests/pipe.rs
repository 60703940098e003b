//! `tcpstate ... --json | head -1`: a reader that goes away early makes tcpstate exit
//! quietly, without a panic, and leaves no BPF program or link behind: whether or not
//! anything is written after the reader left (the issue: a quiet host, where today
//! nothing is written for 20 s and more). Each test checks the programs its own
//! tcpstate held (from /proc/PID/fdinfo), so tests and other tracers may run alongside.

mod common;

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    time::{Duration, Instant},
};

use common::*;

/// The name of BPF program `id`, or `None` once the kernel has freed it
/// (BPF_PROG_GET_FD_BY_ID, then BPF_OBJ_GET_INFO_BY_FD). IDs are allocated
/// cyclically (bpf_prog_alloc_id: idr_alloc_cyclic), so a freed one is not reused soon.
fn prog_name(id: u32) -> Option<String> {
    #[repr(C)]
    struct GetById {
        id: u32,
        next_id: u32,
        open_flags: u32,
    }
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    const BPF_PROG_GET_FD_BY_ID: i64 = 13;
    const BPF_OBJ_GET_INFO_BY_FD: i64 = 15;
    let mut g = GetById {
        id,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: bpf(2) with a valid attr; returns an fd we close below.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_GET_FD_BY_ID, &mut g, 12usize) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "program {id}: {e}");
        return None;
    }
    let mut info = [0u8; 256];
    let mut attr = InfoByFd {
        bpf_fd: fd as u32,
        info_len: 256,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: as above.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &mut attr, 16usize) };
    // SAFETY: closing the fd we got.
    unsafe { libc::close(fd as i32) };
    assert_eq!(rc, 0, "info of program {id}");
    // struct bpf_prog_info: char name[16] at offset 64 (cut to 15 bytes).
    let name = &info[64..80];
    let end = name.iter().position(|&b| b == 0).unwrap_or(16);
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// The BPF programs process `pid` holds, by id: its program fds and the programs of
/// its link fds (fdinfo shows `prog_id:` for both).
fn programs_held_by(pid: u32) -> BTreeSet<u32> {
    let dir = format!("/proc/{pid}/fdinfo");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|f| std::fs::read_to_string(f.ok()?.path()).ok())
        .flat_map(|info| {
            info.lines()
                .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Until the kernel has freed every one of `ids` (it frees a program after its last
/// fd closes, with the process, through RCU), for up to 5 s.
fn assert_freed(ids: &BTreeSet<u32>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<(u32, String)> = ids
            .iter()
            .filter_map(|&id| Some((id, prog_name(id)?)))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "BPF programs still loaded 5 s after tcpstate exited: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Plays `tcpstate ARGS | head -1`: starts it, lets `first_line` (given its pid) make
/// its first line of output, reads that line (a JSON object of type `kind`), lets it
/// finish writing what that
/// first report holds, and closes the read end. `after` then runs (traffic, or none).
/// tcpstate must be gone within `bound`, with status 0, nothing more on stderr, and
/// every BPF program it held freed.
fn head_one(
    args: &[&str],
    first_line: impl FnOnce(u32),
    kind: &str,
    after: impl FnOnce(),
    bound: Duration,
) {
    let mut t = Tracer::start(args);
    let mut held = programs_held_by(t.pid());
    assert!(
        !held.is_empty(),
        "tcpstate holds no BPF program while running"
    );
    let mut out = BufReader::new(t.stdout());
    first_line(t.pid());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let tag = format!("\"type\":\"{kind}\"");
    assert!(first.contains(&tag), "{args:?}: first line {first:?}");
    // `head` reads a block: whatever the same report wrote is gone with it.
    std::thread::sleep(Duration::from_millis(300));
    // And what it loaded for that report (linger's iterator, for one).
    held.extend(programs_held_by(t.pid()));
    drop(out);
    let left = Instant::now();
    after();
    let status = t
        .exit_within(bound)
        .unwrap_or_else(|| panic!("{args:?}: still running {bound:?} after its reader left"));
    eprintln!(
        "{args:?}: exited {:?} after its reader left",
        left.elapsed()
    );
    let rest = t.stderr_rest();
    assert_eq!(status.code(), Some(0), "{args:?}: {status}: {rest:?}");
    assert!(rest.is_empty(), "{args:?}: a quiet exit, got {rest:?}");
    assert_freed(&held);
}

/// `n` loopback connections to `port`, the client closing first.
fn connections(port: u16, n: u32) {
    run_pair("127.0.0.1", port, n, "client-close");
}

#[test]
fn closed_stdout_exits_quietly_and_detaches() {
    let port = free_port("127.0.0.1");
    let p = port.to_string();
    let loaded = |pid| {
        // The transition probe and its backup (names are cut to 15 bytes).
        let ours = programs_held_by(pid)
            .into_iter()
            .filter_map(prog_name)
            .filter(|n| n.starts_with("inet_sock_set_s"))
            .count();
        assert_eq!(ours, 2, "the probe is loaded while tracing");
        connections(port, 1);
    };
    // The next connection's transitions are written after the reader left.
    head_one(
        &["trace", "--json", "--port", &p],
        loaded,
        "transition",
        || connections(port, 3),
        Duration::from_secs(10),
    );
}

// The same with nothing written after the reader left: tcpstate must notice the
// closed pipe by itself, within about a second (5 s allowed here).

#[test]
fn trace_head_exits_without_further_traffic() {
    let port = free_port("127.0.0.1");
    head_one(
        &["trace", "--json", "--port", &port.to_string()],
        |_| connections(port, 1),
        "transition",
        || {},
        Duration::from_secs(5),
    );
}

// linger and hist write one report per --interval. The interval is longer than the
// bound, so a tcpstate that only notices on its next write fails; 1 s would not.

#[test]
fn linger_head_exits_without_further_output() {
    let port = free_port("127.0.0.1");
    head_one(
        &[
            "linger",
            "--json",
            "--min-age",
            "0",
            "--interval",
            "8s",
            "--port",
            &port.to_string(),
        ],
        |_| {},
        "linger_report",
        || {},
        Duration::from_secs(5),
    );
}

#[test]
fn hist_head_exits_without_further_output() {
    let port = free_port("127.0.0.1");
    head_one(
        &[
            "hist",
            "--json",
            "--interval",
            "8s",
            "--port",
            &port.to_string(),
        ],
        |_| {},
        "hist",
        || {},
        Duration::from_secs(5),
    );
}
