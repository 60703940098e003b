//! tcpstate (userspace side): loads the kernel probe, follows every TCP socket's
//! lifetime with its true owner, and prints what the user asked for.
//!
//! Event path, by module: `loader` (load and attach the probe from `tcpstate-ebpf`)
//! -> `events` (decode ring-buffer records) -> `filter` -> `output` (table or JSON).
//! `trace` wires them for the `trace` command.

mod cli;
mod events;
mod filter;
mod hist;
mod histogram;
mod linger;
mod loader;
mod offsets;
mod output;
mod session;
mod sockdiag;
mod sockets;
mod trace;
mod tracefs;

use std::{io, process::ExitCode};

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tcpstate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            None => trace::run(cli.trace).await.map(|()| ExitCode::SUCCESS),
            Some(Command::Trace(t)) => trace::run(t).await.map(|()| ExitCode::SUCCESS),
            Some(Command::Hist(h)) => hist::run(h).await.map(|()| ExitCode::SUCCESS),
            Some(Command::Linger(l)) => {
                let fail_if_any = l.fail_if_any;
                let nonempty = linger::run(l).await?;
                Ok(if fail_if_any && nonempty {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                })
            }
        }
    });
    match result {
        Ok(code) => code,
        // The reader went away (`| head`): nothing left to say, and nowhere to say it.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcpstate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}
