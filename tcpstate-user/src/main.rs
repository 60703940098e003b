//! tcpstate (userspace side): loads the kernel probe, follows every TCP socket's
//! lifetime with its true owner, and prints what the user asked for.
//!
//! Layers, each depending only on those below it: `probe` (load, attach, read the
//! kernel's maps and ring buffer: plain data) -> `model` (events, filters, tables,
//! histograms, reports, the summary: pure) -> `render` (tables, JSON lines) ->
//! `cli` (clap, and its conversions into the model) -> `cmd` (each command wires
//! the three) -> `main`. A transition's path: kernel `set_state` -> ring ->
//! `probe::ring` -> `model::events`/`model::filter` -> `render::trace` -> stdout.

mod cli;
mod cmd;
mod model;
mod probe;
mod render;

use std::{io, process::ExitCode};

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            eprintln!("{}", one_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    // Before the runtime: a usage error is one line and status 2, as clap's.
    if let Err(e) = cli.check() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    init_logging(cli.log_level);
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
            None => cmd::trace::run(cli.trace).await.map(|()| ExitCode::SUCCESS),
            Some(Command::Trace(t)) => cmd::trace::run(t).await.map(|()| ExitCode::SUCCESS),
            Some(Command::Hist(h)) => cmd::hist::run(h).await.map(|()| ExitCode::SUCCESS),
            Some(Command::Serve(s)) => cmd::serve::run(s).await.map(|()| ExitCode::SUCCESS),
            Some(Command::Top(t)) => cmd::top::run(t).await.map(|()| ExitCode::SUCCESS),
            // 0 nothing above info, 1 a warning or worse, 3 could not check.
            Some(Command::Doctor(d)) => cmd::doctor::run(d).await.map(ExitCode::from),
            Some(Command::Linger(l)) => {
                let fail_if_any = l.fail_if_any;
                let nonempty = cmd::linger::run(l).await?;
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

/// `log` to stderr: off unless `--log-level` or RUST_LOG asks. The flag sets the
/// level of tcpstate's own records and the probe's (targets `tcpstate*`); RUST_LOG
/// can name any target (`RUST_LOG=aya=debug`). The probe logs only what passes (see
/// `probe::Probe::load`).
fn init_logging(level: Option<cli::LogLevel>) {
    let mut b = env_logger::Builder::new();
    b.filter_level(log::LevelFilter::Off);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    if let Some(l) = level {
        b.filter_module("tcpstate", l.into());
    }
    let _ = b.try_init();
}

/// A usage error on one line (clap spreads it over a usage block, value lists and a
/// hint): scripts and logs read one line per error.
fn one_line(rendered: &str) -> String {
    rendered
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("Usage:")
                && !l.starts_with("For more information")
                && !l.starts_with("tip:")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{one_line, Cli};

    #[test]
    fn usage_errors_fit_one_line() {
        for args in [
            &["tcpstate", "hist", "--unit", "parsecs"][..],
            &["tcpstate", "--port", "0"],
            &["tcpstate", "linger", "--bogus"],
            &["tcpstate", "--duration", "abc"],
            &["tcpstate", "top", "--interval", "0"],
            &["tcpstate", "top", "--interval", "10ms"],
            &["tcpstate", "top", "--interval", "fast"],
        ] {
            let e = Cli::try_parse_from(args).expect_err("bad input must fail");
            let line = one_line(&e.render().to_string());
            assert!(line.starts_with("error: "), "{line}");
            assert!(!line.contains('\n'), "{line}");
            assert!(!line.contains("Usage:"), "{line}");
        }
        let e = Cli::try_parse_from(["tcpstate", "hist", "--unit", "parsecs"]).unwrap_err();
        let line = one_line(&e.render().to_string());
        assert!(
            line.contains("parsecs") && line.contains("us, ms, s"),
            "{line}"
        );
    }
}
