//! `cargo xtask dist`: the release binary with the probe embedded, its man pages and
//! completions, packaged as `target/dist/tcpstate_<version>_<arch>.deb` (cargo-deb,
//! from `[package.metadata.deb]` in tcpstate-user/Cargo.toml) and a `.tar.gz` of the
//! same files. `cargo xtask test-dist`: builds them and checks what is inside.

use std::{
    collections::BTreeSet,
    env, fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use crate::{build_ebpf, build_user, cargo_home, host_cargo, is_root, status};

/// Builds with rustc 1.85+ (here 1.95); pinned so every run packages the same way.
const CARGO_DEB_VERSION: &str = "3.8.0";
const VERSION: &str = env!("CARGO_PKG_VERSION");

pub struct Dist {
    pub deb: PathBuf,
    pub tarball: PathBuf,
    pub bin: PathBuf,
}

/// Builds everything and writes the .deb and the .tar.gz under target/dist.
pub fn dist() -> Result<Dist> {
    let obj = build_ebpf()?;
    let bin = build_user(true)?;
    let release_dir = bin.parent().context("the binary's directory")?;
    // cargo-deb maps the assets' `target/release/` to this same directory.
    let docs = release_dir.join("dist-docs");
    gen_docs(&obj, &docs)?;
    let cargo_deb = ensure_cargo_deb()?;
    let dist = release_dir
        .parent()
        .context("the target directory")?
        .join("dist");
    fs::create_dir_all(&dist)?;
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    let stem = format!("tcpstate_{VERSION}_{}", arch.trim());
    let deb = dist.join(format!("{stem}.deb"));
    eprintln!("xtask: packaging {}", deb.display());
    status(
        Command::new(&cargo_deb)
            .args(["--quiet", "--package", "tcpstate-user", "--no-build"])
            .arg("--output")
            .arg(&deb)
            .stdout(Stdio::null()),
        "cargo deb",
    )?;
    // The tarball holds exactly the package's files: extracted from the .deb itself.
    let staging = dist.join(&stem);
    let _ = fs::remove_dir_all(&staging);
    status(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&staging),
        "dpkg-deb -x",
    )?;
    let tarball = dist.join(format!("{stem}.tar.gz"));
    status(
        Command::new("tar")
            .args([
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--sort=name",
                "-czf",
            ])
            .arg(&tarball)
            .arg("-C")
            .arg(&dist)
            .arg(&stem),
        "tar",
    )?;
    fs::remove_dir_all(&staging)?;
    println!("{}\n{}", deb.display(), tarball.display());
    Ok(Dist { deb, tarball, bin })
}

/// Man pages and completions from the clap definitions: the generator is a test in
/// tcpstate-user (src/cli/docs.rs), built with the same flags as `cargo xtask test`'s
/// so it reuses that build. Pages are gzipped (-n: no name or time, reproducible).
fn gen_docs(obj: &Path, out: &Path) -> Result<()> {
    eprintln!("xtask: generating man pages and completions");
    let _ = fs::remove_dir_all(out);
    status(
        host_cargo()
            .args([
                "test",
                "--quiet",
                "--release",
                "--package",
                "tcpstate-user",
                "--bin",
                "tcpstate",
                "--",
                "--exact",
                "cli::docs::generate",
            ])
            .env("TCPSTATE_BPF_OBJECT", obj)
            .env("TCPSTATE_DOCS_OUT", out)
            .env("TCPSTATE_DOCS_DATE", changelog_date()?)
            .stdout(Stdio::null()),
        "generating the man pages",
    )?;
    for page in fs::read_dir(out.join("man"))? {
        let page = page?.path();
        if page.extension().is_some_and(|e| e == "1") {
            status(Command::new("gzip").args(["-9nf"]).arg(&page), "gzip")?;
        }
    }
    Ok(())
}

/// The date of the newest changelog entry (YYYY-MM-DD), the pages' date: the same
/// sources give the same pages.
fn changelog_date() -> Result<String> {
    let text = fs::read_to_string("deploy/debian/changelog")?;
    let line = text
        .lines()
        .find(|l| l.starts_with(" -- "))
        .context("deploy/debian/changelog has no trailer line")?;
    let rfc2822 = line.rsplit("  ").next().unwrap_or_default();
    let out = output(Command::new("date").args(["-u", "-d", rfc2822, "+%F"]))?;
    Ok(out.trim().to_string())
}

/// cargo-deb, installed with `cargo install` when missing (as bpf-linker is).
fn ensure_cargo_deb() -> Result<PathBuf> {
    let path = cargo_home().join("bin/cargo-deb");
    let ok = Command::new(&path)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_DEB_VERSION));
    if !ok {
        eprintln!(
            "xtask: installing cargo-deb {CARGO_DEB_VERSION} (first run only, about 3 minutes)"
        );
        status(
            host_cargo().args([
                "install",
                "cargo-deb",
                "--locked",
                "--version",
                CARGO_DEB_VERSION,
            ]),
            "cargo install cargo-deb",
        )?;
    }
    Ok(path)
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    ensure!(
        out.status.success(),
        "{:?} failed ({})",
        cmd.get_program(),
        out.status
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The packaged binary's subcommands, from its own --help ("Commands:" section).
fn subcommands(bin: &Path) -> Result<Vec<String>> {
    let help = output(Command::new(bin).arg("--help"))?;
    Ok(help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|s| *s != "help")
        .map(str::to_string)
        .collect())
}

/// `cargo xtask test-dist`: the package's file list, its man pages rendering without
/// warnings, the completions loading, the deploy files' fields, the alert rules'
/// unit tests, and every PromQL expression run against a real Prometheus.
pub fn test_dist() -> Result<()> {
    let d = dist()?;
    let subs = subcommands(&d.bin)?;
    eprintln!(
        "xtask: checking {} (subcommands: {})",
        d.deb.display(),
        subs.join(" ")
    );
    let listing = output(Command::new("dpkg-deb").arg("--contents").arg(&d.deb))?;
    let files: BTreeSet<String> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_string())
        .collect();
    let mut want: Vec<String> = [
        "/usr/bin/tcpstate",
        "/usr/share/man/man1/tcpstate.1.gz",
        "/usr/share/bash-completion/completions/tcpstate",
        "/usr/share/zsh/vendor-completions/_tcpstate",
        "/usr/share/fish/vendor_completions.d/tcpstate.fish",
        "/usr/lib/systemd/system/tcpstate-serve.service",
        "/usr/share/tcpstate/kubernetes/daemonset.yaml",
        "/usr/share/tcpstate/prometheus/tcpstate.rules.yml",
        "/usr/share/tcpstate/prometheus/tcpstate.rules.test.yml",
        "/usr/share/tcpstate/grafana/tcpstate.json",
        "/usr/share/doc/tcpstate/changelog.Debian.gz",
        "/usr/share/doc/tcpstate/copyright",
        "/usr/share/doc/tcpstate/README.md",
        "/usr/share/lintian/overrides/tcpstate",
    ]
    .map(String::from)
    .to_vec();
    for s in ["trace", "linger", "hist"] {
        ensure!(subs.iter().any(|x| x == s), "no `{s}` in tcpstate --help");
    }
    want.extend(
        subs.iter()
            .map(|s| format!("/usr/share/man/man1/tcpstate-{s}.1.gz")),
    );
    let want: BTreeSet<String> = want.into_iter().collect();
    let missing: Vec<_> = want.difference(&files).collect();
    let extra: Vec<_> = files.difference(&want).collect();
    ensure!(
        missing.is_empty() && extra.is_empty(),
        "package file list: missing {missing:?}, unexpected {extra:?}"
    );
    let control = output(Command::new("dpkg-deb").arg("--field").arg(&d.deb))?;
    for field in ["Section: net", "libc6 (>=", "libgcc-s1", "Description: "] {
        ensure!(
            control.contains(field),
            "control has no {field:?}:\n{control}"
        );
    }
    eprintln!("xtask: {} files, as expected", files.len());

    let tmp = TempDir::new("tcpstate-test-dist")?;
    let root = tmp.0.join("root");
    status(
        Command::new("dpkg-deb").arg("-x").arg(&d.deb).arg(&root),
        "dpkg-deb -x",
    )?;
    let tar_list = output(Command::new("tar").arg("-tzf").arg(&d.tarball))?;
    let tar_files = tar_list.lines().filter(|l| !l.ends_with('/')).count();
    ensure!(
        tar_files == files.len(),
        "the tarball has {tar_files} files, the .deb {}",
        files.len()
    );
    check_man_pages(&root, &subs)?;
    check_completions(&root)?;
    check_manifests(&root)?;
    check_rules(&root)?;
    check_promql(&root, &d.bin, &subs, &tmp.0)?;
    eprintln!("xtask: test-dist passed");
    Ok(())
}

const WITH_EXAMPLES: &[&str] = &[
    "tcpstate",
    "tcpstate-trace",
    "tcpstate-linger",
    "tcpstate-hist",
    "tcpstate-serve",
    "tcpstate-doctor",
    "tcpstate-top",
];

/// Every page renders with no groff or man warning and has the sections users look
/// for; the hand-written ones wherever deploy/man has a fragment for the page.
fn check_man_pages(root: &Path, subs: &[String]) -> Result<()> {
    let pages =
        std::iter::once("tcpstate".to_string()).chain(subs.iter().map(|s| format!("tcpstate-{s}")));
    for page in pages {
        let path = root.join(format!("usr/share/man/man1/{page}.1.gz"));
        let out = Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l"])
            .arg(&path)
            .env("MANWIDTH", "80")
            .env_remove("MAN_KEEP_FORMATTING")
            .output()
            .context("running man -l (apt-get install man-db groff-base)")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let warnings = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success() && warnings.trim().is_empty(),
            "{page}(1) renders with warnings: {warnings}"
        );
        let mut sections = vec!["NAME", "SYNOPSIS", "OPTIONS", "PRIVILEGES", "SEE ALSO"];
        // Pages with measured transcripts (deploy/man/<page>.roff).
        let fragment = fs::read_to_string(format!("deploy/man/{page}.roff")).unwrap_or_default();
        if WITH_EXAMPLES.contains(&page.as_str()) || fragment.contains(".SH EXAMPLES") {
            sections.extend(["EXAMPLES", "OVERHEAD"]);
        }
        for s in sections {
            ensure!(
                text.lines().any(|l| l.trim_end() == s),
                "{page}(1) has no {s} section"
            );
        }
    }
    eprintln!(
        "xtask: man pages render: tcpstate and {} subcommand pages",
        subs.len()
    );
    Ok(())
}

/// bash loads the completion and registers it; zsh and fish parse theirs when they
/// are installed.
fn check_completions(root: &Path) -> Result<()> {
    let bash = root.join("usr/share/bash-completion/completions/tcpstate");
    let out = output(Command::new("bash").arg("-c").arg(format!(
        "source '{}' && complete -p tcpstate",
        bash.display()
    )))?;
    ensure!(
        out.contains("tcpstate"),
        "bash completion not registered: {out}"
    );
    for (shell, file) in [
        ("zsh", "usr/share/zsh/vendor-completions/_tcpstate"),
        ("fish", "usr/share/fish/vendor_completions.d/tcpstate.fish"),
    ] {
        match Command::new(shell).arg("-n").arg(root.join(file)).status() {
            Ok(st) => ensure!(st.success(), "{shell} -n {file} failed"),
            Err(_) => eprintln!("xtask: {shell} not installed: its completion is not parsed"),
        }
    }
    Ok(())
}

const MANIFEST_CHECK: &str = r#"
import json, sys, yaml
root = sys.argv[1]
ds = yaml.safe_load(open(root + "/usr/share/tcpstate/kubernetes/daemonset.yaml"))
assert ds["kind"] == "DaemonSet", ds["kind"]
tpl = ds["spec"]["template"]
spec = tpl["spec"]
assert spec["hostPID"] is True, "hostPID"
ann = tpl["metadata"]["annotations"]
assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "9977", ann
(c,) = spec["containers"]
sc = c["securityContext"]
assert sc.get("privileged") is False, "privileged"
assert {"BPF", "PERFMON"} <= set(sc["capabilities"]["add"]), sc["capabilities"]
assert sc["capabilities"]["drop"] == ["ALL"], sc["capabilities"]
assert c["readinessProbe"]["httpGet"]["path"] == "/metrics", c["readinessProbe"]
assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"], c["resources"]
paths = {v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
assert {"/sys/fs/cgroup", "/proc", "/var/log/pods", "/run/netns"} <= paths, paths
mounted = {m["name"] for m in c["volumeMounts"]}
assert mounted == {v["name"] for v in spec["volumes"]}, mounted
assert any("--listen" in a for a in c["args"]), c["args"]
rules = yaml.safe_load(open(root + "/usr/share/tcpstate/prometheus/tcpstate.rules.yml"))
alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
expected = {"TcpstateCloseWaitLeak", "TcpstateProcessNearFdLimit", "TcpstateTimeWaitPortExhaustion",
            "TcpstateConnectionsNeverAccepted", "TcpstateEventsLost", "TcpstateDegraded"}
assert alerts == expected, (alerts ^ expected)
tests = yaml.safe_load(open(root + "/usr/share/tcpstate/prometheus/tcpstate.rules.test.yml"))
tested = {t["alertname"] for u in tests["tests"] for t in u["alert_rule_test"]}
assert tested == alerts, (tested, alerts)
dash = json.load(open(root + "/usr/share/tcpstate/grafana/tcpstate.json"))
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
assert len(exprs) >= 10 and all("tcpstate_" in e for e in exprs), exprs
print(f"daemonset, {len(alerts)} alerts (all unit-tested), dashboard with {len(exprs)} queries")
"#;

/// The manifests parse as YAML (python3-yaml) and have the fields the issue names.
fn check_manifests(root: &Path) -> Result<()> {
    let python = python_with_yaml()?;
    let out = output(Command::new(python).args(["-c", MANIFEST_CHECK]).arg(root))?;
    eprintln!("xtask: manifests: {}", out.trim());
    Ok(())
}

fn python_with_yaml() -> Result<&'static str> {
    for py in ["python3", "/usr/bin/python3"] {
        if Command::new(py)
            .args(["-c", "import yaml"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Ok(py);
        }
    }
    apt_install(&["python3-yaml"])?;
    Ok("/usr/bin/python3")
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    if !is_root() {
        bail!(
            "missing; install as root: apt-get install -y {}",
            pkgs.join(" ")
        );
    }
    eprintln!(
        "xtask: installing {} from Debian (first run only)",
        pkgs.join(" ")
    );
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )
}

/// `promtool check rules` and the rules' unit tests.
fn check_rules(root: &Path) -> Result<()> {
    if Command::new("promtool").arg("--version").output().is_err() {
        apt_install(&["prometheus"])?;
    }
    let dir = root.join("usr/share/tcpstate/prometheus");
    let check = output(
        Command::new("promtool")
            .args(["check", "rules", "tcpstate.rules.yml"])
            .current_dir(&dir),
    )?;
    let test = output(
        Command::new("promtool")
            .args(["test", "rules", "tcpstate.rules.test.yml"])
            .current_dir(&dir),
    )?;
    ensure!(test.contains("SUCCESS"), "promtool test rules: {test}");
    eprintln!(
        "xtask: promtool: {}; rule unit tests pass",
        check
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or_default()
            .trim()
    );
    Ok(())
}

/// Every expression of the rules and the dashboard, run by a real Prometheus that
/// scrapes a target every second: each must parse, and each dashboard query must
/// return data. The target is `tcpstate serve` once the binary has it (then the
/// lingering series need a leaking process, so only parsing is required of the
/// queries over them); until then a static exposition of serve's metric set
/// (deploy/prometheus/testdata/serve-sample.prom) stands in.
fn check_promql(root: &Path, bin: &Path, subs: &[String], tmp: &Path) -> Result<()> {
    let (target, serve_child) = if subs.iter().any(|s| s == "serve") && is_root() {
        let port = free_port()?;
        let child = Command::new(bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .spawn()
            .context("starting tcpstate serve")?;
        (format!("127.0.0.1:{port}"), Some(Killed(child)))
    } else {
        let body = fs::read("deploy/prometheus/testdata/serve-sample.prom")?;
        (serve_fixture(body)?, None)
    };
    let fixture = serve_child.is_none();
    let prom_port = free_port()?;
    let cfg = tmp.join("prometheus.yml");
    fs::write(
        &cfg,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  - job_name: tcpstate\n    static_configs: [{{targets: ['{target}']}}]\n"
        ),
    )?;
    let _prom = Killed(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting prometheus")?,
    );
    let api = format!("http://127.0.0.1:{prom_port}");
    // Three scrapes, so rate() and deriv() over the 1m windows have points.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(v) = query(&api, "sum_over_time(up{job=\"tcpstate\"}[1m]) >= 3") {
            if v["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
            {
                break;
            }
        }
        ensure!(
            Instant::now() < deadline,
            "prometheus did not scrape {target} 3 times in 30 s"
        );
        thread::sleep(Duration::from_millis(300));
    }
    let mut exprs: Vec<(String, bool)> = Vec::new();
    let rules: serde_json::Value = serde_json::from_str(&output(
        Command::new(python_with_yaml()?)
            .args([
                "-c",
                "import json,sys,yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
            ])
            .arg(root.join("usr/share/tcpstate/prometheus/tcpstate.rules.yml")),
    )?)?;
    for g in rules["groups"].as_array().context("rules: groups")? {
        for r in g["rules"].as_array().context("rules: rules")? {
            exprs.push((r["expr"].as_str().context("rule expr")?.to_string(), false));
        }
    }
    let dash: serde_json::Value = serde_json::from_slice(&fs::read(
        root.join("usr/share/tcpstate/grafana/tcpstate.json"),
    )?)?;
    for p in dash["panels"].as_array().context("dashboard panels")? {
        for t in p["targets"].as_array().into_iter().flatten() {
            let e = t["expr"].as_str().context("target expr")?;
            let e = e
                .replace("$__rate_interval", "1m")
                .replace("\"$instance\"", "\".*\"")
                .replace("\"$state\"", "\".+\"");
            // Against serve, these series exist only while something lingers or
            // waits (the test makes neither yet).
            let needs_data = fixture
                || !["lingering", "fd_usage", "time_wait_sockets"]
                    .iter()
                    .any(|m| e.contains(m));
            exprs.push((e, needs_data));
        }
    }
    let mut with_data = 0;
    for (e, needs_data) in &exprs {
        let v = query(&api, e).with_context(|| format!("query {e}"))?;
        ensure!(v["status"] == "success", "{e}: {v}");
        let has = v["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty());
        ensure!(has || !needs_data, "no data for {e}");
        with_data += usize::from(has);
    }
    eprintln!(
        "xtask: {} PromQL expressions parse in Prometheus scraping {}; {with_data} returned data",
        exprs.len(),
        if fixture {
            "the sample exposition"
        } else {
            "tcpstate serve"
        }
    );
    Ok(())
}

fn query(api: &str, expr: &str) -> Result<serde_json::Value> {
    // curl: the standard library has no HTTP client, and one query per call is enough.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-G"])
        .arg(format!("{api}/api/v1/query"))
        .arg("--data-urlencode")
        .arg(format!("query={expr}"))
        .output()
        .context("running curl")?;
    ensure!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Serves `body` as /metrics on a loopback port, from a thread that lives as long as
/// xtask.
fn serve_fixture(body: Vec<u8>) -> Result<String> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?.to_string();
    thread::spawn(move || {
        for conn in l.incoming().flatten() {
            let _ = respond(conn, &body);
        }
    });
    Ok(addr)
}

fn respond(mut conn: TcpStream, body: &[u8]) -> std::io::Result<()> {
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        req.extend_from_slice(&buf[..n]);
    }
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    conn.write_all(body)
}

/// A child process killed (by its own pid) and reaped when dropped, test failed or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Result<Self> {
        let dir = env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
