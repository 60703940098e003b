//! tcpkit (userspace, test tooling): real loopback TCP workloads for tcpstate's
//! integration tests and benchmark. Servers and clients run as separate processes so
//! that tests can check which process tcpstate names as each socket's owner.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

mod backlog;
mod calib;
mod closewait;
mod leak;
mod loops;
mod nshold;
mod owners;

#[derive(Parser)]
#[command(name = "tcpkit", about = "Loopback TCP workloads for tcpstate's tests")]
struct Cli {
    /// Set this process's name (comm), e.g. to one with escape bytes.
    #[arg(long, global = true)]
    comm: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// The client closes first (client ends in TIME_WAIT).
    ClientClose,
    /// The server closes first (server ends in TIME_WAIT).
    ServerClose,
    /// The client aborts with SO_LINGER 0 (RST).
    Reset,
    /// Whoever is told to hold never closes (leaves the peer's socket in CLOSE_WAIT or
    /// its own in CLOSE_WAIT after the peer closed).
    Hold,
    /// Client only: shutdown(SHUT_WR) and keep the fd, so the server's socket goes to
    /// CLOSE_WAIT without the client's becoming an orphan (the kernel resets orphans
    /// beyond tcp_max_orphans).
    HalfClose,
}

#[derive(Subcommand)]
enum Cmd {
    /// Listen on each ADDR, print `ready PORT...`, serve CONNS connections in all,
    /// spread evenly over the listeners. `hold` prints `held N fds F,F,...`.
    Server {
        #[arg(long, required = true, num_args = 1..)]
        addr: Vec<SocketAddr>,
        #[arg(long, default_value_t = 1)]
        conns: u32,
        #[arg(long, value_enum)]
        mode: Mode,
    },
    /// Make CONNS connections one by one, rotating over the ADDRs. `hold` prints
    /// `done N fds F,F,...`.
    Client {
        #[arg(long, required = true, num_args = 1..)]
        addr: Vec<SocketAddr>,
        #[arg(long, default_value_t = 1)]
        conns: u32,
        #[arg(long, value_enum)]
        mode: Mode,
        /// Connect from this local port every time (SO_REUSEADDR), so that a new
        /// connection can meet the peer's TIME_WAIT socket of the previous one.
        #[arg(long)]
        from_port: Option<u16>,
        /// Pause between connections, in milliseconds.
        #[arg(long, default_value_t = 0)]
        pause_ms: u64,
    },
    /// Server and client in one process, as fast as possible, for CONNS connections
    /// or SECS seconds; prints `conns N secs S rate R`.
    Churn {
        /// Listen addresses; clients rotate over them so TIME_WAIT does not cap the rate.
        #[arg(long, required = true, num_args = 1..)]
        addr: Vec<SocketAddr>,
        #[arg(long)]
        conns: Option<u64>,
        #[arg(long)]
        secs: Option<f64>,
        #[arg(long, value_enum, default_value = "client-close")]
        mode: Mode,
        /// At most this many connections per second (paced), not as fast as possible.
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Load a BPF object and attach its BTF tracepoint program NAME on
    /// inet_sock_set_state (the bench's calibration references); prints `attached`,
    /// then holds it until SIGTERM/SIGINT or DURATION seconds.
    Calib {
        #[arg(long)]
        object: std::path::PathBuf,
        #[arg(long)]
        program: String,
        #[arg(long)]
        duration: Option<f64>,
    },
    /// getppid() as fast as possible for DURATION seconds (an unrelated process for
    /// the bench's syscall tax); prints `calls N secs S rate R`.
    SyscallLoop {
        #[arg(long)]
        duration: f64,
    },
    /// Timer-wheel timers expiring as often as THREADS threads can make them, for
    /// DURATION seconds; prints `timers N secs S rate R`.
    TimerLoop {
        #[arg(long)]
        duration: f64,
        #[arg(long, default_value_t = 64)]
        threads: u32,
    },
    /// Listen, print `ready PORT`, wait for a line on stdin, then accept CONNS
    /// connections and close each after EOF (they can reach CLOSE_WAIT unaccepted).
    LateServer {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        conns: u32,
    },
    /// Connect CONNS times, closing each connection at once; prints `done N`.
    ConnectClose {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        conns: u32,
    },
    /// Connect CONNS times and keep every connection open; prints `done N`, then
    /// closes them all when a line arrives on stdin and prints `closed N`.
    ConnectHold {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        conns: u32,
    },
    /// The parent listens, a forked child accepts CONNS connections and closes each
    /// after EOF; prints `ready PORT child PID`.
    PreforkServer {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        conns: u32,
    },
    /// COUNT sockets in CLOSE_WAIT on loopback, spread over worker processes (the fd
    /// limit is per process); prints `ready COUNT procs P ports P,P,...` and holds
    /// them until stdin closes or SIGTERM, then resets them all (no TIME_WAIT left).
    CloseWait {
        #[arg(long)]
        count: u64,
        /// Internal: run as one worker holding COUNT sockets.
        #[arg(long, hide = true)]
        worker: bool,
    },
    /// Enter the network namespace at NETNS (an nsfs path such as /run/netns/X), make
    /// CONNS sockets in CLOSE_WAIT (held) and TIME_WAIT sockets there on 127.0.0.1,
    /// return to our own namespace, print `ready port P`, hold until stdin closes.
    NetnsHold {
        #[arg(long)]
        netns: std::path::PathBuf,
        #[arg(long, default_value_t = 3)]
        conns: u32,
        #[arg(long, default_value_t = 4)]
        time_wait: u32,
    },
    /// Listen on ADDR with listen(fd, BACKLOG), print `listening fd F port P`, never
    /// accept; until stdin closes.
    BacklogServer {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        backlog: i32,
    },
    /// CONNS non-blocking connects to ADDR at once, print `connecting N`, hold them
    /// until stdin closes.
    BurstClient {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        conns: u32,
    },
    /// A buggy server for `linger`'s diagnosis: listen on ADDR, print `ready PORT`,
    /// serve CONNS connections as BEHAVE says, print `held N fds F,...` (or
    /// `listening fd F`), keep everything open until stdin closes.
    LeakServer {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        conns: u32,
        #[arg(long, value_enum)]
        behave: leak::Behave,
    },
    /// CONNS connections to ADDR, one by one: write SEND bytes, read the reply with
    /// --reply, close (--reset: with a reset); prints `done N`.
    LeakClient {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        conns: u32,
        #[arg(long, default_value_t = 0)]
        send: usize,
        #[arg(long)]
        reply: bool,
        #[arg(long)]
        reset: bool,
    },
}

fn set_comm(name: &str) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated buffer of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr()) };
}

pub(crate) fn linger0(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket and option buffer.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
}

fn drain_to_eof(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
}

/// Server side of one connection: greet (so the client knows it was accepted), then
/// act per mode. Returns the socket when it must stay open.
fn serve(mut s: TcpStream, mode: Mode) -> Option<TcpStream> {
    let _ = s.write_all(b"A");
    match mode {
        Mode::ClientClose | Mode::Reset => {
            drain_to_eof(&mut s);
            None
        }
        Mode::ServerClose => None,
        Mode::Hold | Mode::HalfClose => Some(s),
    }
}

/// A connection from a fixed local port (std's TcpStream cannot bind before connect).
fn connect_from(addr: SocketAddr, port: u16) -> Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = addr else {
        anyhow::bail!("--from-port supports IPv4 only");
    };
    // SAFETY: plain socket calls on a fresh fd, owned by the TcpStream on success.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        anyhow::ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            4,
        );
        let sin = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip.octets()),
            },
            sin_zero: [0; 8],
        };
        let local = sin(*v4.ip(), port);
        let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        anyhow::ensure!(
            libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) == 0,
            "bind port {port}: {}",
            std::io::Error::last_os_error()
        );
        let remote = sin(*v4.ip(), v4.port());
        anyhow::ensure!(
            libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) == 0,
            "connect {addr}: {}",
            std::io::Error::last_os_error()
        );
        Ok(stream)
    }
}

/// Client side of one connection.
fn client(addr: SocketAddr, mode: Mode, from_port: Option<u16>) -> Result<Option<TcpStream>> {
    let mut s = match from_port {
        Some(p) => connect_from(addr, p)?,
        None => TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?,
    };
    let mut b = [0u8; 1];
    s.read_exact(&mut b).context("reading the greeting")?;
    match mode {
        Mode::ClientClose => Ok(None),
        Mode::ServerClose => {
            drain_to_eof(&mut s);
            Ok(None)
        }
        Mode::Reset => {
            linger0(&s);
            Ok(None)
        }
        Mode::Hold => {
            drain_to_eof(&mut s);
            Ok(Some(s))
        }
        Mode::HalfClose => {
            s.shutdown(std::net::Shutdown::Write)?;
            Ok(Some(s))
        }
    }
}

fn fd_list(s: &[TcpStream]) -> String {
    s.iter()
        .map(|s| s.as_raw_fd().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Holding 100k sockets needs more than the default 1024 fds: raise the soft limit to
/// the hard one.
pub(crate) fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

pub(crate) fn wait_for_stdin_eof() {
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(c) = &cli.comm {
        set_comm(c);
    }
    let mut out = std::io::stdout();
    match cli.cmd {
        Cmd::Server { addr, conns, mode } => {
            raise_nofile();
            let listeners: Vec<TcpListener> = addr
                .iter()
                .map(|a| TcpListener::bind(a).with_context(|| format!("bind {a}")))
                .collect::<Result<_>>()?;
            let ports: Vec<String> = listeners
                .iter()
                .map(|l| l.local_addr().map(|a| a.port().to_string()))
                .collect::<std::io::Result<_>>()?;
            writeln!(out, "ready {}", ports.join(" "))?;
            out.flush()?;
            let n = listeners.len() as u32;
            let threads: Vec<_> = listeners
                .into_iter()
                .enumerate()
                .map(|(i, l)| {
                    let share = conns / n + u32::from((i as u32) < conns % n);
                    std::thread::spawn(move || -> std::io::Result<Vec<TcpStream>> {
                        let mut held = Vec::new();
                        for _ in 0..share {
                            let (s, _) = l.accept()?;
                            held.extend(serve(s, mode));
                        }
                        Ok(held)
                    })
                })
                .collect();
            let mut held = Vec::new();
            for t in threads {
                held.extend(t.join().expect("server thread")?);
            }
            if matches!(mode, Mode::Hold | Mode::HalfClose) {
                writeln!(out, "held {} fds {}", held.len(), fd_list(&held))?;
                out.flush()?;
                wait_for_stdin_eof();
            }
        }
        Cmd::Client {
            addr,
            conns,
            mode,
            from_port,
            pause_ms,
        } => {
            raise_nofile();
            let mut held = Vec::new();
            for i in 0..conns {
                if i > 0 && pause_ms > 0 {
                    std::thread::sleep(Duration::from_millis(pause_ms));
                }
                held.extend(client(addr[i as usize % addr.len()], mode, from_port)?);
            }
            writeln!(out, "done {conns} fds {}", fd_list(&held))?;
            out.flush()?;
            if matches!(mode, Mode::Hold | Mode::HalfClose) {
                wait_for_stdin_eof();
            }
        }
        Cmd::Churn {
            addr,
            conns,
            secs,
            mode,
            rate,
        } => {
            let listeners: Vec<TcpListener> = addr
                .iter()
                .map(|a| TcpListener::bind(a).with_context(|| format!("bind {a}")))
                .collect::<Result<_>>()?;
            let targets: Vec<SocketAddr> = listeners
                .iter()
                .map(|l| l.local_addr())
                .collect::<std::io::Result<_>>()?;
            for l in listeners {
                std::thread::spawn(move || {
                    for s in l.incoming().flatten() {
                        serve(s, mode);
                    }
                });
            }
            let start = Instant::now();
            let limit = secs.map(Duration::from_secs_f64);
            let mut n = 0u64;
            // Paced: connection n starts no earlier than n / rate s after the start.
            let gap = rate.map(|r| Duration::from_secs_f64(1.0 / r.max(1e-3)));
            while conns.is_none_or(|c| n < c) && limit.is_none_or(|l| start.elapsed() < l) {
                if let Some(gap) = gap {
                    let due = start + gap.mul_f64(n as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                client(targets[n as usize % targets.len()], mode, None)?;
                n += 1;
            }
            let secs = start.elapsed().as_secs_f64();
            writeln!(out, "conns {n} secs {secs:.3} rate {:.1}", n as f64 / secs)?;
        }
        Cmd::Calib {
            object,
            program,
            duration,
        } => calib::run(&object, &program, duration)?,
        Cmd::SyscallLoop { duration } => {
            let (n, secs) = loops::syscalls(duration);
            writeln!(out, "calls {n} secs {secs:.3} rate {:.1}", n as f64 / secs)?;
        }
        Cmd::TimerLoop { duration, threads } => {
            let (n, secs) = loops::timers(duration, threads)?;
            writeln!(out, "timers {n} secs {secs:.3} rate {:.1}", n as f64 / secs)?;
        }
        Cmd::LateServer { addr, conns } => owners::late_server(addr, conns)?,
        Cmd::ConnectClose { addr, conns } => owners::connect_close(addr, conns)?,
        Cmd::ConnectHold { addr, conns } => owners::connect_hold(addr, conns)?,
        Cmd::PreforkServer { addr, conns } => owners::prefork_server(addr, conns)?,
        Cmd::BacklogServer { addr, backlog } => backlog::server(addr, backlog)?,
        Cmd::BurstClient { addr, conns } => backlog::client(addr, conns)?,
        Cmd::LeakServer {
            addr,
            conns,
            behave,
        } => leak::server(addr, conns, behave)?,
        Cmd::LeakClient {
            addr,
            conns,
            send,
            reply,
            reset,
        } => leak::client(addr, conns, send, reply, reset)?,
        Cmd::NetnsHold {
            netns,
            conns,
            time_wait,
        } => nshold::run(&netns, conns, time_wait)?,
        Cmd::CloseWait { count, worker } => {
            raise_nofile();
            if worker {
                closewait::worker(count)?
            } else {
                closewait::run(count)?
            }
        }
    }
    Ok(())
}
