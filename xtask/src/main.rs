//! Project tasks: `cargo xtask test` builds everything and runs every test (privileged ones
//! included: run as root) and validates the Kubernetes manifests; `cargo xtask demo` runs
//! imds-guard on its embedded policy in a sandbox; `cargo xtask validate-k8s` renders the Helm
//! chart and validates every manifest; `cargo xtask deb` builds and checks the Debian package,
//! `cargo xtask rpm` the RPM (Amazon Linux 2023), `cargo xtask previous-deb` the previous release's
//! package (which `vm-test --host` upgrades from);
//! `cargo xtask vm-test` runs tests in QEMU guests on older kernels (docs/VM.md), and with
//! `--host` checks the .deb on a guest booted with systemd (docs/HOSTS.md).
//! `./x` runs scripts/bootstrap.sh (toolchains, bpf-linker, packages) and then this.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

mod deb;
mod image;
mod k8s;
mod previous;
mod prometheus;
mod rpm;
mod vm;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build everything (the eBPF object through imds-guard's build.rs) and run all tests.
    Test {
        /// Extra arguments for `cargo test` (after `--`, e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Measure what imds-guard costs (root; sandbox): prints a table, writes docs/BENCHMARKS.md
    /// and target/bench/results.json.
    Bench {
        /// Only the metadata path: a metadata connect and a request on a new connection (cold)
        /// and on a kept one (warm; also with botocore's headers; and each 2 ms after the last,
        /// idle), and an empty sk_msg program's floor (back to back and idle), 15 batches each
        /// (median and lowest batch), printed, nothing written: ~40 s, for work on the hooks
        /// (with IMDS_GUARD_LOG=debug, also what the verifier checked of each program).
        #[arg(long)]
        requests: bool,
        /// With --requests: only this many batches of the warm request (what
        /// scripts/profile-msg.sh runs in a guest under QEMU's cache simulator).
        #[arg(long, value_name = "BATCHES", requires = "requests")]
        warm_only: Option<u32>,
    },
    /// Render the Helm chart (defaults and charts/imds-guard/ci/*.yaml), check that
    /// deploy/daemonset.yaml is the default rendering, validate every manifest against the
    /// Kubernetes schemas and with checkov, resolve the rendered policies, and check the alert
    /// rules (with their unit tests), the PrometheusRule and the Grafana dashboard with promtool.
    ValidateK8s {
        /// Regenerate deploy/daemonset.yaml and deploy/prometheus/prometheusrule.yaml from the
        /// chart instead of failing when they differ.
        #[arg(long)]
        write: bool,
    },
    /// Build the container image (Containerfile: the static musl binary alone) with podman,
    /// buildah or docker.
    Image {
        /// Image name and tag.
        #[arg(long, default_value = concat!("imds-guard:", env!("CARGO_PKG_VERSION")))]
        tag: String,
    },
    /// Build the Debian package (target/debian/) and check it: fields, files, conffile, maintainer
    /// scripts, and (as root) install/remove/purge in a throwaway root.
    Deb,
    /// Build the previous release's Debian package (the commit pinned in xtask/src/previous.rs,
    /// which `vm-test --host` upgrades from), or find it cached in target/prev/; print its path.
    PreviousDeb,
    /// Build the RPM package for Amazon Linux 2023 (target/rpm/, rpmbuild of
    /// packaging/rpm/imds-guard.spec) and check it: header, dependencies, files and modes,
    /// %config(noreplace), scriptlets, and (as root) install/upgrade/erase in a throwaway root, with
    /// rpm and with dnf.
    Rpm,
    /// The kernel matrix: boot Debian's cloud kernels 5.10, 6.1 and 6.12 under QEMU (TCG, no
    /// network) and run a subset of the privileged tests in each, or one shell command
    /// (`--shell-cmd`). Fetches and caches kernels and a root image under target/vm/. See docs/VM.md.
    VmTest(vm::Args),
    /// Run the guard in a sandbox with a fake IMDS and show allowed, denied and reported requests.
    Demo {
        /// Rounds of requests (0: until Ctrl-C).
        #[arg(long, default_value_t = 0)]
        rounds: u32,
        /// Seconds between rounds.
        #[arg(long, default_value_t = 3)]
        interval: u32,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(root())
        .status()
        .with_context(|| format!("running cargo {args:?}"))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Builds the daemon and `bin` (a binary of the tests crate) with `profile` flags, then runs `bin`
/// from the workspace root with `IMDS_GUARD_BIN` pointing at the daemon of the same profile.
fn build_and_run(profile: &[&str], bin: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut build = vec!["build"];
    build.extend(profile);
    build.extend(["-p", "imds-guard", "-p", "imds-guard-tests", "--bin", "imds-guard", "--bin", bin]);
    cargo(&build)?;
    let dir = root().join("target").join(if profile.contains(&"--release") { "release" } else { "debug" });
    let status = Command::new(dir.join(bin))
        .env("IMDS_GUARD_BIN", dir.join("imds-guard"))
        .args(args)
        .current_dir(root())
        .status()?;
    if !status.success() {
        bail!("{bin} failed ({status})");
    }
    Ok(())
}

/// Beside the host suite (`cargo xtask test`), on a thread of its own at nice 19 (which what it
/// runs inherits: on Linux a thread's nice value is its own and passes to the processes it
/// starts): the VM caches, the previous release's package and this tree's release daemon. The
/// matrix and the real host then find them ready. The previous release's package comes before
/// this tree's release build: its build removes the workspace crates' release artifacts
/// (previous.rs), so after it this tree's are compiled once, not twice.
fn prepare_vms() -> anyhow::Result<()> {
    // SAFETY: setpriority has no memory effects; who = 0 is the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) } != 0 {
        eprintln!("[vm] could not lower the preparation's priority: {}", std::io::Error::last_os_error());
    }
    vm::run(vm::Args::prepare())?;
    previous::deb()?;
    vm::build_guard()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Test { args } => {
            // The privileged tests run this daemon (inherited by cargo test).
            // SAFETY: single-threaded at this point.
            unsafe { std::env::set_var("IMDS_GUARD_BIN", root().join("target/debug/imds-guard")) };
            // The kernel matrix (5.10, 6.1, 6.12 under QEMU) and the real-host VM: part of every
            // full run. A filtered run (arguments for cargo test) is a developer's quick loop and
            // skips them, and so does IMDSG_VM=0 outside CI.
            let skip = std::env::var("IMDSG_VM").is_ok_and(|v| v == "0");
            if skip && std::env::var("CI").is_ok_and(|v| v == "true") {
                bail!("IMDSG_VM=0 under CI=true: the kernel matrix is part of the test command");
            }
            let vms = args.is_empty() && !skip;
            // What the VMs need is made beside the host's own build and suite, at the lowest CPU
            // priority so that it only takes what they leave idle: the kernels fetched and the
            // root image built (~2 minutes on a fresh clone, mostly downloads and unpacking), the
            // previous release's package and this tree's release build (~5 minutes of compiling
            // on a fresh clone). Made after the suite, they added those minutes to every run.
            let prepared = vms.then(|| std::thread::spawn(prepare_vms));
            let gate = || -> anyhow::Result<()> {
                // The default members: everything but the eBPF crate, which only builds for the
                // BPF target (imds-guard's build.rs builds it).
                cargo(&["build", "--all-targets"])?;
                // The quality gate: formatting and lints (the toolchain and its rustfmt/clippy
                // are pinned).
                cargo(&["fmt", "--all", "--check"])?;
                cargo(&["clippy", "--all-targets", "--quiet", "--", "-D", "warnings"])?;
                // The chart, the plain manifest and the policies they carry.
                k8s::validate(false, &root().join("target/debug/imds-guard"))
            };
            let gate = gate();
            let gate_failed = gate.is_err();
            let host = gate.and_then(|()| {
                let mut test = vec!["test", "--no-fail-fast"];
                if !args.is_empty() {
                    test.push("--");
                    test.extend(args.iter().map(String::as_str));
                }
                cargo(&test)
            });
            // Waited for even when the build failed: nothing it started is left running.
            let prepared =
                prepared.map_or(Ok(()), |t| t.join().unwrap_or_else(|_| bail!("preparing the VMs panicked")));
            if gate_failed {
                return host;
            }
            let (matrix, real_host) = if vms {
                // Then a real host: systemd as PID 1, the .deb installed with dpkg, the service
                // checked live across a reboot (docs/HOSTS.md).
                match prepared {
                    Ok(()) => (vm::run(vm::Args::matrix()), vm::run(vm::Args::host())),
                    Err(e) => (Err(e.context("preparing the kernel matrix and real-host VMs")), Ok(())),
                }
            } else {
                eprintln!(
                    "[test] kernel matrix and real-host VM skipped ({})",
                    if skip { "IMDSG_VM=0" } else { "filtered run" }
                );
                (Ok(()), Ok(()))
            };
            host.and(matrix).and(real_host)
        }
        Cmd::Bench { requests: true, warm_only } => {
            let n = warm_only.map(|n| n.to_string());
            let mut args = vec!["--requests"];
            if let Some(n) = &n {
                args.extend(["--warm-only", n.as_str()]);
            }
            build_and_run(&["--release"], "imds-guard-bench", &args)
        }
        Cmd::Bench { requests: false, .. } => {
            std::fs::create_dir_all(root().join("target/bench"))?;
            build_and_run(
                &["--release"],
                "imds-guard-bench",
                &["--markdown", "docs/BENCHMARKS.md", "--json", "target/bench/results.json"],
            )
        }
        Cmd::ValidateK8s { write } => {
            cargo(&["build", "-p", "imds-guard"])?;
            k8s::validate(write, &root().join("target/debug/imds-guard"))
        }
        Cmd::Image { tag } => image::build(&tag),
        Cmd::Deb => deb::deb(),
        Cmd::PreviousDeb => previous::deb().map(|deb| println!("{}", deb.display())),
        Cmd::Rpm => rpm::rpm(),
        Cmd::VmTest(args) => vm::run(args),
        Cmd::Demo { rounds, interval } => build_and_run(
            &[],
            "imds-guard-demo",
            &["--rounds", &rounds.to_string(), "--interval", &interval.to_string()],
        ),
    }
}
