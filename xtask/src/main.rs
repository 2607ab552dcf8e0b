//! Project tasks: `cargo xtask test` builds everything and runs every test (privileged ones
//! included: run as root); `cargo xtask demo` runs imds-guard on its embedded policy in a sandbox.
//! `./x` runs scripts/bootstrap.sh (toolchains, bpf-linker, packages) and then this.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

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
    Bench,
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

fn main() -> anyhow::Result<()> {
    let bin = root().join("target/debug/imds-guard");
    // SAFETY: single-threaded at this point.
    unsafe { std::env::set_var("IMDS_GUARD_BIN", &bin) };
    match Cli::parse().cmd {
        Cmd::Test { args } => {
            // The default members: everything but the eBPF crate, which only builds for the BPF
            // target (imds-guard's build.rs builds it).
            cargo(&["build", "--all-targets"])?;
            // The quality gate: formatting and lints (the toolchain and its rustfmt/clippy are pinned).
            cargo(&["fmt", "--all", "--check"])?;
            cargo(&["clippy", "--all-targets", "--quiet", "--", "-D", "warnings"])?;
            let mut test = vec!["test", "--no-fail-fast"];
            if !args.is_empty() {
                test.push("--");
                test.extend(args.iter().map(String::as_str));
            }
            cargo(&test)
        }
        Cmd::Bench => {
            cargo(&[
                "build",
                "--release",
                "-p",
                "imds-guard",
                "-p",
                "imds-guard-tests",
                "--bin",
                "imds-guard",
                "--bin",
                "imds-guard-bench",
            ])?;
            std::fs::create_dir_all(root().join("target/bench"))?;
            let status = Command::new(root().join("target/release/imds-guard-bench"))
                .env("IMDS_GUARD_BIN", root().join("target/release/imds-guard"))
                .args(["--markdown", "docs/BENCHMARKS.md", "--json", "target/bench/results.json"])
                .current_dir(root())
                .status()?;
            if !status.success() {
                bail!("bench failed ({status})");
            }
            Ok(())
        }
        Cmd::Demo { rounds, interval } => {
            cargo(&[
                "build",
                "-p",
                "imds-guard",
                "-p",
                "imds-guard-tests",
                "--bin",
                "imds-guard",
                "--bin",
                "imds-guard-demo",
            ])?;
            let status = Command::new(root().join("target/debug/imds-guard-demo"))
                .args(["--rounds", &rounds.to_string(), "--interval", &interval.to_string()])
                .status()?;
            if !status.success() {
                bail!("demo failed ({status})");
            }
            Ok(())
        }
    }
}
