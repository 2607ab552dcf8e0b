//! `cargo xtask vm-test`: the kernel matrix. Boots Debian's cloud kernels 5.10, 6.1 and 6.12 (the
//! host's own kernel is tested natively by `./x test`) under QEMU TCG with no network device, and
//! runs a subset of the privileged tests inside each guest, unmodified: they make their own
//! cgroup, network namespace, fake IMDS and bpffs there as they do on the host. Or boots a kernel
//! and runs one shell command (`--shell-cmd`). See docs/VM.md.
//!
//! - `kernels`: the pinned kernels, fetched with a private apt configuration and cached.
//! - `rootfs`: the guests' root file system (mmdebstrap) and its image with the kernels' modules.
//! - `guest`: the checks, the run's script and the payload disk that carries them.
//! - `qemu`: one boot, watched until it ends.
//! - `results`: the guest's lines and the verdict per kernel.
//! - `host`: the real-host checks (`--host`): systemd as PID 1, the .deb, a reboot.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::root;

pub mod guest;
pub mod host;
pub mod kernels;
pub mod qemu;
pub mod results;
pub mod rootfs;

#[derive(clap::Args)]
pub struct Args {
    /// A kernel to boot: 5.10, 6.1 or 6.12 (repeatable; default: all three).
    #[arg(long = "kernel", value_name = "SERIES")]
    kernels: Vec<String>,
    /// Run these instead of the default subset: `<file>` (every test of tests/tests/<file>.rs) or
    /// `<file>::<test>` (repeatable or comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "FILE[::TEST]")]
    tests: Vec<String>,
    /// Keep only the checks whose `<file>::<test>` name contains this (repeatable).
    #[arg(long, value_name = "TEXT")]
    filter: Vec<String>,
    /// Boot and run this bash command in the guest instead of tests (as root, with /imdsg/bin on
    /// PATH: imds-guard and the test helpers); prints its output and fails if it fails.
    #[arg(long, value_name = "CMD")]
    shell_cmd: Option<String>,
    /// With --shell-cmd: also build the test binaries and put them in the guest's /imdsg/tests/.
    #[arg(long)]
    with_tests: bool,
    /// Put this imds-guard binary in the guest instead of building target/release/imds-guard.
    #[arg(long, value_name = "PATH")]
    guard_bin: Option<PathBuf>,
    /// Copy this file or directory into the guest's /imdsg/files/ (repeatable).
    #[arg(long, value_name = "PATH")]
    put: Vec<PathBuf>,
    /// Seconds each check may take (default: per check, 180 to 300 under TCG).
    #[arg(long, value_name = "SECS")]
    check_timeout: Option<u32>,
    /// Seconds the --shell-cmd may take.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    shell_timeout: u32,
    /// Keep each kernel's payload disk (target/vm/runs/<kernel>/payload.img: the binaries and every
    /// check's full output under /out) for debugging.
    #[arg(long)]
    keep: bool,
    /// Extra kernel command line arguments (e.g. `lsm=lockdown,yama,apparmor,bpf` to give Debian's
    /// 5.10 the BPF LSM that Amazon Linux 2's 5.10 has in its default list).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    append: Option<String>,
    /// Only fetch the kernels and build the root image (the caches), then stop.
    #[arg(long)]
    prepare: bool,
    /// The real-host checks instead (docs/HOSTS.md): boot with systemd as PID 1 (the 6.12 kernel
    /// unless --kernel says otherwise), install the .deb with dpkg, and check the service live.
    #[arg(long, conflicts_with_all = ["tests", "filter", "shell_cmd", "with_tests", "guard_bin", "put"])]
    host: bool,
}

impl Args {
    /// The default matrix: the subset on every kernel, as `cargo xtask test` runs it.
    pub fn matrix() -> Self {
        Args {
            kernels: Vec::new(),
            tests: Vec::new(),
            filter: Vec::new(),
            shell_cmd: None,
            with_tests: false,
            guard_bin: None,
            put: Vec::new(),
            check_timeout: None,
            shell_timeout: 600,
            keep: false,
            append: None,
            prepare: false,
            host: false,
        }
    }

    /// Only the caches: every kernel fetched, the root image built.
    pub fn prepare() -> Self {
        Args { prepare: true, ..Self::matrix() }
    }

    /// The real-host checks on the default kernel, as `cargo xtask test` runs them.
    pub fn host() -> Self {
        Args { host: true, ..Self::matrix() }
    }
}

/// `target/vm/`: every cache and run of the matrix.
pub fn vm_dir() -> PathBuf {
    root().join("target/vm")
}

/// Runs `cmd`; on failure the error carries the end of its output.
pub fn run_quiet(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("{cmd:?} failed ({}):\n{}", out.status, tail.join("\n"));
    }
    Ok(())
}

const TOOLS: [(&str, &str); 6] = [
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("mmdebstrap", "mmdebstrap"),
    ("mke2fs", "e2fsprogs"),
    ("dpkg-deb", "dpkg"),
    ("apt-get", "apt"),
    ("chroot", "coreutils"),
];

fn check_tools() -> anyhow::Result<()> {
    let path = std::env::var("PATH").unwrap_or_default();
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(bin, _)| !path.split(':').any(|d| Path::new(d).join(bin).is_file()))
        .map(|(_, pkg)| *pkg)
        .collect();
    ensure!(missing.is_empty(), "missing {}: run scripts/bootstrap.sh", missing.join(", "));
    Ok(())
}

/// One VM at a time on this machine (2 cores), also across worktrees sharing this cache.
fn lock() -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(vm_dir())?;
    let f = std::fs::File::create(vm_dir().join("lock"))?;
    if f.try_lock().is_err() {
        eprintln!("[vm] waiting for another vm-test ({} is locked)", vm_dir().join("lock").display());
        f.lock()?;
    }
    Ok(f)
}

/// The binaries the guest gets: on PATH (the daemon, the tests' helper programs) and the test
/// binaries by target name.
struct Built {
    bins: Vec<(String, PathBuf)>,
    tests: Vec<(String, PathBuf)>,
}

fn cargo_cmd() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// The daemon the guests run: the release build of this tree, target/release/imds-guard.
pub fn build_guard() -> anyhow::Result<PathBuf> {
    crate::cargo(&["build", "--release", "-p", "imds-guard", "--bin", "imds-guard"])?;
    Ok(root().join("target/release/imds-guard"))
}

fn build(guard_bin: Option<&Path>, with_tests: bool) -> anyhow::Result<Built> {
    let guard = match guard_bin {
        Some(p) => {
            ensure!(p.is_file(), "--guard-bin {} is not a file", p.display());
            p.to_owned()
        }
        // The release build, what users run on these kernels (the eBPF object is the same in
        // both profiles): under TCG the debug daemon's own work (ELF, BTF, policy) nearly doubled
        // each check's time. The host suite keeps the debug build and its overflow checks.
        None => build_guard()?,
    };
    let mut built = Built { bins: vec![("imds-guard".to_owned(), guard)], tests: Vec::new() };
    if !with_tests {
        return Ok(built);
    }
    // The tests crate's test binaries and its helper programs, as cargo reports them. Built as
    // `cargo test` builds the workspace (no `-p`: that would unify features differently and
    // rebuild its dependencies, ~45 s after a host run), then only the tests crate's are taken.
    let out = cargo_cmd()
        .args(["test", "--no-run", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    ensure!(out.status.success(), "cargo test --no-run failed ({})", out.status);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let tests_crate =
            v["manifest_path"].as_str().is_some_and(|m| Path::new(m) == root().join("tests/Cargo.toml"));
        if v["reason"] != "compiler-artifact" || !tests_crate {
            continue;
        }
        let (Some(exe), Some(name)) = (v["executable"].as_str(), v["target"]["name"].as_str()) else {
            continue;
        };
        let kinds = v["target"]["kind"].as_array().cloned().unwrap_or_default();
        if kinds.iter().any(|k| k == "test") {
            built.tests.push((name.to_owned(), PathBuf::from(exe)));
        } else if kinds.iter().any(|k| k == "bin")
            && name.starts_with("imdsg-")
            // Not the bin's own unit-test harness, which cargo test also builds (and which,
            // run as a helper, prints "running 0 tests").
            && v["profile"]["test"] == false
        {
            built.bins.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    ensure!(!built.tests.is_empty(), "cargo test --no-run reported no test binaries");
    Ok(built)
}

/// The tests of one test binary (`--list`), on the host.
fn list_tests(built: &Built, target: &str) -> anyhow::Result<Vec<String>> {
    let (_, exe) = built.tests.iter().find(|(n, _)| n == target).with_context(|| {
        let names: Vec<&str> = built.tests.iter().map(|(n, _)| n.as_str()).collect();
        format!("no test binary `{target}` (there are: {})", names.join(", "))
    })?;
    let out = Command::new(exe).args(["--list", "--format", "terse"]).output()?;
    ensure!(out.status.success(), "{} --list failed", exe.display());
    Ok(guest::parse_test_list(&String::from_utf8_lossy(&out.stdout)))
}

/// Log lines of a failed check printed as they come (the rest is in results.log).
const LOG_LINES_SHOWN: usize = 15;

/// Prints one guest's lines as they arrive.
struct Live {
    label: &'static str,
    /// Log lines shown so far, per check.
    shown: Vec<(String, usize)>,
}

impl Live {
    fn line(&mut self, line: &str) {
        let label = self.label;
        match results::parse_line(line) {
            Some(results::Line::Booted { release, uptime, .. }) => eprintln!(
                "[vm {label}] booted {release}: its script started {:.1} s after the kernel",
                uptime.unwrap_or(0.0)
            ),
            Some(results::Line::Result(c)) => {
                let secs = c.secs.map(|s| format!(" ({s:.1} s)")).unwrap_or_default();
                if c.ok && c.detail.is_empty() {
                    eprintln!("[vm {label}] ok   {}{secs}", c.check);
                } else if c.ok {
                    eprintln!("[vm {label}] ok   {}{secs}: {}", c.check, c.detail);
                } else {
                    eprintln!("[vm {label}] FAIL {}{secs}: {}", c.check, c.detail);
                }
            }
            Some(results::Line::Log { check, text }) => {
                let n = match self.shown.iter_mut().find(|(c, _)| c == check) {
                    Some((_, n)) => n,
                    None => {
                        self.shown.push((check.to_owned(), 0));
                        &mut self.shown.last_mut().expect("just pushed").1
                    }
                };
                *n += 1;
                if *n <= LOG_LINES_SHOWN {
                    eprintln!("[vm {label}]      | {text}");
                }
            }
            Some(results::Line::Out(text)) => println!("{text}"),
            Some(results::Line::Setup { what, .. }) => eprintln!("[vm {label}] guest setup failed: {what}"),
            Some(results::Line::InitFail(why)) => eprintln!("[vm {label}] guest init failed: {why}"),
            Some(results::Line::Done { .. }) | None => {}
        }
    }
}

/// One kernel's run.
struct Ran {
    report: results::Report,
    to_first_line: Option<f64>,
    wall: Duration,
}

/// Prints one summary line per kernel (and what failed); returns the kernels that failed.
fn summary(runs: &[Ran]) -> Vec<String> {
    let mut failed = Vec::new();
    for Ran { report: r, to_first_line, wall } in runs {
        let passed = r.verdicts.iter().filter(|v| v.ok).count();
        let boot = match (r.boot_uptime, to_first_line) {
            (Some(u), Some(f)) => format!("boot {u:.1} s (first line {f:.1} s after QEMU started)"),
            _ => "no boot".to_owned(),
        };
        println!(
            "vm-test {:<5} {:<4} {passed}/{} checks ok, {boot}, VM {:.0} s, kernel {}",
            r.label,
            if r.ok() { "ok" } else { "FAIL" },
            r.verdicts.len(),
            wall.as_secs_f64(),
            r.booted.as_deref().unwrap_or("-"),
        );
        for f in &r.vm_failures {
            println!("    {} VM: {f}", r.label);
        }
        for v in r.verdicts.iter().filter(|v| !v.ok) {
            println!("    {} FAIL {}: {}", r.label, v.check, v.why);
        }
        for n in &r.notes {
            println!("    {} note: {n}", r.label);
        }
        if !r.ok() {
            failed.push(r.label.clone());
        }
    }
    failed
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.host {
        return host::run(&a.kernels, a.keep, a.append.as_deref());
    }
    check_tools()?;
    let kernels = kernels::select(&a.kernels)?;
    let _lock = lock()?;
    let t = Instant::now();
    // The root image carries every matrix kernel's modules, so all of them are fetched.
    for k in &kernels::KERNELS {
        kernels::fetch(k)?;
    }
    let root_img = rootfs::image(&kernels::KERNELS)?;
    eprintln!("[vm] kernels and root image ready ({:.1} s)", t.elapsed().as_secs_f64());
    if a.prepare {
        return Ok(());
    }

    let shell = a.shell_cmd.as_deref();
    let built = build(a.guard_bin.as_deref(), shell.is_none() || a.with_tests)?;
    let checks = match shell {
        Some(_) => Vec::new(),
        None => guest::plan(&a.tests, &a.filter, a.check_timeout, |t| list_tests(&built, t))?,
    };
    if shell.is_none() {
        eprintln!("[vm] {} check(s) on {} kernel(s)", checks.len(), kernels.len());
    }
    let check_count = checks.len();

    // Only the test binaries the checks need (debug test binaries are 17 to 110 MB each).
    let tests: Vec<(String, PathBuf)> = match shell {
        Some(_) => built.tests.clone(),
        None => built.tests.iter().filter(|(t, _)| checks.iter().any(|c| &c.target == t)).cloned().collect(),
    };
    let mut reports = Vec::new();
    for k in &kernels {
        // The default subset (no test or filter named) runs whole on 6.1, in part on the newest
        // (guest::ON_NEWEST) and the oldest (guest::NOT_ON_OLDEST).
        let default = a.tests.is_empty() && a.filter.is_empty();
        let checks = guest::for_kernel(&checks, k.label, default);
        if shell.is_none() && checks.is_empty() {
            continue;
        }
        let mode = match shell {
            Some(cmd) => guest::Mode::Shell { cmd, timeout_secs: a.shell_timeout },
            None => guest::Mode::Tests(&checks),
        };
        let check_names: Vec<String> = match shell {
            Some(_) => vec!["shell".to_owned()],
            None => checks.iter().map(guest::Check::name).collect(),
        };
        let budget: u64 = match shell {
            Some(_) => u64::from(a.shell_timeout) + 30,
            None => checks.iter().map(|c| u64::from(c.timeout_secs) + 15).sum(),
        };
        // A check's own limit is kept in the guest (timeout(1)); these catch a guest that hangs.
        let longest: u64 = match shell {
            Some(_) => u64::from(a.shell_timeout),
            None => checks.iter().map(|c| u64::from(c.timeout_secs)).max().unwrap_or(0),
        };
        let idle_timeout = Duration::from_secs(longest + 60);
        let boot_timeout = Duration::from_secs(180);
        let timeout = boot_timeout + Duration::from_secs(budget + 30);
        if shell.is_none() && checks.len() < check_count {
            eprintln!(
                "[vm {}] {} of the {check_count} check(s) (guest::ON_NEWEST, NOT_ON_OLDEST; name others with --tests)",
                k.label,
                checks.len()
            );
        }
        let run_dir = vm_dir().join("runs").join(k.label);
        let payload_dir = run_dir.join("payload");
        let payload_img = run_dir.join("payload.img");
        std::fs::create_dir_all(&run_dir)?;
        let files = guest::Files { bins: &built.bins, tests: &tests, extra: &a.put, workspace: &root() };
        guest::payload(&payload_dir, &payload_img, k.label, &mode, &files)?;
        eprintln!("[vm {}] booting {} ({} {})", k.label, k.release(), k.package, k.version);
        let boot = qemu::Boot {
            vmlinuz: &k.vmlinuz(),
            root_img: &root_img,
            payload_img: &payload_img,
            run_dir: &run_dir,
            timeout,
            boot_timeout,
            idle_timeout,
            init: rootfs::INIT_PATH,
            append: a.append.as_deref().unwrap_or(""),
            root_writable: false,
        };
        let mut live = Live { label: k.label, shown: Vec::new() };
        let label = k.label;
        let outcome = qemu::boot(&boot, |line| live.line(line))?;
        let report = results::evaluate(
            k.label,
            k.release(),
            &check_names,
            &outcome.lines,
            &outcome.console,
            &outcome.end,
        );
        if !report.ok() {
            let tail: Vec<&str> = outcome.console.lines().rev().take(12).collect();
            if report.booted.is_none() || !report.vm_failures.is_empty() {
                eprintln!(
                    "[vm {label}] the kernel console's last lines ({}):",
                    run_dir.join("console.log").display()
                );
                for l in tail.iter().rev() {
                    eprintln!("[vm {label}]   > {l}");
                }
            }
        }
        if a.keep {
            eprintln!(
                "[vm {label}] kept {} (each check's output: debugfs -R 'cat /out/<check>.log' {})",
                payload_img.display(),
                payload_img.display()
            );
        } else {
            let _ = std::fs::remove_file(&payload_img);
            let _ = std::fs::remove_dir_all(&payload_dir);
        }
        reports.push(Ran { report, to_first_line: outcome.to_first_line, wall: outcome.wall });
    }

    println!();
    let failed = summary(&reports);
    println!(
        "vm-test: {:.0} s in all; logs in {}",
        t.elapsed().as_secs_f64(),
        vm_dir().join("runs").display()
    );
    if !failed.is_empty() {
        bail!("vm-test failed on {}", failed.join(", "));
    }
    Ok(())
}
