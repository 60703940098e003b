//! Man pages (clap_mangen) and shell completions (clap_complete) generated from the
//! clap definitions, so a new subcommand gets its page and completions with no other
//! change. It is a test, not a subcommand: users never see it, the shipped binary
//! carries neither crate, and it needs no second copy of the definitions.
//! `cargo xtask dist` runs it with `TCPSTATE_DOCS_OUT=DIR` (and `TCPSTATE_DOCS_DATE`);
//! without them it writes to a temporary directory and only checks.
//!
//! The sections clap cannot generate (EXAMPLES, OVERHEAD, PRIVILEGES...) are roff
//! written by hand in `deploy/man/<page>.roff`; `common.roff` goes into every page.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

/// Writes `man/tcpstate.1`, `man/tcpstate-<sub>.1` and `completions/{tcpstate.bash,
/// _tcpstate,tcpstate.fish}` under `out`; returns the pages' names.
fn write_all(out: &Path, date: &str) -> std::io::Result<Vec<String>> {
    let extra = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/man");
    let common = fs::read_to_string(extra.join("common.roff"))?;
    // `help` is clap's, and has no page of its own.
    let mut root = Cli::command().disable_help_subcommand(true);
    // Propagates global flags (--log-level) and sets each subcommand's bin name.
    root.build();
    let man_dir = out.join("man");
    fs::create_dir_all(&man_dir)?;
    let subs: Vec<String> = root
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_string())
        .collect();
    let mut pages = Vec::new();
    let mut see_also = vec!["tcpstate".to_string()];
    see_also.extend(subs.iter().map(|s| format!("tcpstate-{s}")));
    for sub in std::iter::once(None).chain(subs.iter().map(Some)) {
        let (name, cmd) = match sub {
            None => ("tcpstate".to_string(), root.clone()),
            Some(s) => {
                // build() set its display name (tcpstate-<sub>, the page's NAME) and
                // bin name (`tcpstate <sub>`, the SYNOPSIS).
                let cmd = root.find_subcommand(s).expect("listed above").clone();
                (format!("tcpstate-{s}"), cmd)
            }
        };
        let own = fs::read_to_string(extra.join(format!("{name}.roff"))).unwrap_or_default();
        let others: Vec<String> = see_also
            .iter()
            .filter(|p| **p != name)
            .map(|p| format!(".BR {p} (1)"))
            .collect();
        let see = format!(
            ".SH \"SEE ALSO\"\n{},\n.BR ss (8),\n.BR bpftool (8)\n",
            others.join(",\n")
        );
        let mut buf = Vec::new();
        page(&cmd, &name, date, &[&own, &common, &see], &mut buf)?;
        fs::write(man_dir.join(format!("{name}.1")), buf)?;
        pages.push(name);
    }
    let comp = out.join("completions");
    fs::create_dir_all(&comp)?;
    for (shell, file) in [
        (Shell::Bash, "tcpstate.bash"),
        (Shell::Zsh, "_tcpstate"),
        (Shell::Fish, "tcpstate.fish"),
    ] {
        let mut f = fs::File::create(comp.join(file))?;
        clap_complete::generate(shell, &mut Cli::command(), "tcpstate", &mut f);
        f.flush()?;
    }
    Ok(pages)
}

/// One page: clap's sections, then the hand-written ones before SEE ALSO.
fn page(
    cmd: &clap::Command,
    name: &str,
    date: &str,
    extra: &[&str],
    out: &mut Vec<u8>,
) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone())
        .title(name.to_uppercase())
        .section("1")
        .date(date)
        .source(format!("tcpstate {}", env!("CARGO_PKG_VERSION")))
        .manual("User Commands");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(out)?;
    }
    for e in extra {
        out.extend_from_slice(e.as_bytes());
        if !e.is_empty() && !e.ends_with('\n') {
            out.push(b'\n');
        }
    }
    // Subcommands have no version of their own (the footer names it).
    if cmd.get_version().is_some() {
        man.render_version_section(out)?;
    }
    Ok(())
}

#[test]
fn generate() {
    let (out, keep) = match std::env::var_os("TCPSTATE_DOCS_OUT") {
        Some(d) => (PathBuf::from(d), true),
        None => (
            std::env::temp_dir().join(format!("tcpstate-docs-{}", std::process::id())),
            false,
        ),
    };
    let date = std::env::var("TCPSTATE_DOCS_DATE").unwrap_or_else(|_| "2026-12-01".into());
    let result = write_all(&out, &date);
    let check = || -> Result<(), String> {
        let pages = result.as_ref().map_err(|e| e.to_string())?;
        for want in [
            "tcpstate",
            "tcpstate-trace",
            "tcpstate-linger",
            "tcpstate-hist",
        ] {
            if !pages.iter().any(|p| p == want) {
                return Err(format!("no page {want}: {pages:?}"));
            }
        }
        let linger = fs::read_to_string(out.join("man/tcpstate-linger.1")).unwrap_or_default();
        for section in ["EXAMPLES", "OVERHEAD", "PRIVILEGES", r"\-\-min\-age"] {
            if !linger.contains(section) {
                return Err(format!("tcpstate-linger(1) has no {section}"));
            }
        }
        Ok(())
    };
    let checked = check();
    if !keep {
        let _ = fs::remove_dir_all(&out);
    }
    checked.unwrap();
}
