//! `tcpstate trace --json | head -1`: a reader that goes away early makes tcpstate exit
//! quietly, without a panic, and leaves no BPF program or link behind. Its own test
//! binary, so no other tracer runs while it counts loaded programs.

mod common;

use std::{
    io::{BufRead, BufReader, Read},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

/// Names of the BPF programs loaded in the kernel (BPF_PROG_GET_NEXT_ID walk).
fn loaded_program_names() -> Vec<String> {
    #[repr(C)]
    #[derive(Default)]
    struct NextId {
        start_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    const BPF_PROG_GET_NEXT_ID: i64 = 11;
    const BPF_PROG_GET_FD_BY_ID: i64 = 13;
    const BPF_OBJ_GET_INFO_BY_FD: i64 = 15;
    let mut names = Vec::new();
    let mut id = 0u32;
    loop {
        let mut a = NextId {
            start_id: id,
            ..Default::default()
        };
        // SAFETY: bpf(2) with a valid attr.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_GET_NEXT_ID, &mut a, 12usize) };
        if rc != 0 {
            break;
        }
        id = a.next_id;
        let mut g = NextId {
            start_id: id,
            ..Default::default()
        };
        // SAFETY: as above; returns an fd we close below.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_GET_FD_BY_ID, &mut g, 12usize) };
        if fd < 0 {
            continue;
        }
        let mut info = [0u8; 256];
        let mut attr = InfoByFd {
            bpf_fd: fd as u32,
            info_len: 256,
            info: info.as_mut_ptr() as u64,
        };
        // SAFETY: as above.
        let rc =
            unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &mut attr, 16usize) };
        // SAFETY: closing the fd we got.
        unsafe { libc::close(fd as i32) };
        if rc == 0 {
            // struct bpf_prog_info: char name[16] at offset 64.
            let name = &info[64..80];
            let end = name.iter().position(|&b| b == 0).unwrap_or(16);
            names.push(String::from_utf8_lossy(&name[..end]).into_owned());
        }
    }
    names
}

fn ours() -> usize {
    // Program names are cut to 15 bytes by the kernel.
    loaded_program_names()
        .iter()
        .filter(|n| n.starts_with("inet_sock_set_s"))
        .count()
}

#[test]
fn closed_stdout_exits_quietly_and_detaches() {
    let before = ours();
    let port = free_port("127.0.0.1");
    let mut child = Command::new(tcpstate_bin())
        .args(["trace", "--json", "--port", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    wait_attached(&mut err);
    // The transition probe and its backup.
    assert_eq!(ours(), before + 2, "the probe is loaded while tracing");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    run_pair("127.0.0.1", port, 1, "client-close");
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.contains("\"type\":\"transition\""), "{first}");
    drop(out); // `head -1` exits.
    run_pair("127.0.0.1", port, 3, "client-close");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "tcpstate kept running after its reader left"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{status}: {rest}");
    assert!(!rest.contains("panicked"), "{rest}");
    assert!(rest.trim().is_empty(), "quiet exit, got {rest:?}");
    // The kernel frees programs and links with their last fd, shortly after exit.
    let deadline = Instant::now() + Duration::from_secs(5);
    while ours() != before {
        assert!(
            Instant::now() < deadline,
            "BPF program still loaded after exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
