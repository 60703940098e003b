//! `tcpkit calib`: attaches one BTF tracepoint program of a BPF object on
//! inet_sock_set_state and holds it, so that the bench can measure what the kernel's
//! dispatch to an empty (or merely counting) program costs per transition, next to
//! tcpstate's probe, in the same round.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result};
use aya::{programs::BtfTracePoint, Btf, Ebpf};

pub fn run(object: &Path, program: &str, duration: Option<f64>) -> Result<()> {
    // Block the stop signals first: they are then taken synchronously below, and one
    // that arrives while loading still ends the wait at once.
    let set = stop_signals();
    // SAFETY: a valid, initialised signal set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    let mut ebpf =
        Ebpf::load_file(object).with_context(|| format!("loading {}", object.display()))?;
    let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("{} has no program {program}", object.display()))?
        .try_into()
        .with_context(|| format!("{program} is not a BTF tracepoint program"))?;
    prog.load("inet_sock_set_state", &btf)
        .with_context(|| format!("loading {program}"))?;
    prog.attach()
        .with_context(|| format!("attaching {program}"))?;
    eprintln!("tcpkit: calib {program} attached");
    let limit = duration.map(Duration::from_secs_f64);
    let ts = limit.map(|d| libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    loop {
        let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const _);
        // SAFETY: valid signal set and optional timespec.
        let r = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), tsp) };
        if r > 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break; // a stop signal, or the duration is over (EAGAIN)
        }
    }
    // Dropping `ebpf` detaches and unloads the program.
    Ok(())
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        set
    }
}
