//! Command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::env::DEFAULT_PIN_DIR;

pub const DEFAULT_CONFIG: &str = "/etc/imds-guard/policy.toml";

/// Host firewall for the cloud instance metadata service (169.254.169.254, fd00:ec2::254).
///
/// Kernel programs on cgroup connect hooks let only the identities a policy allows reach the
/// metadata endpoints; everyone else gets EPERM at connect(), and each violation is reported as a
/// JSON line on stdout. Enforcement is pinned and outlives the daemon; `unload` removes it.
#[derive(Debug, Parser)]
#[command(name = "imds-guard", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `imds_guard=debug`.
    #[arg(long, global = true, default_value = "info", env = "IMDS_GUARD_LOG")]
    pub log: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the policy, attach the kernel programs, and report violations (foreground).
    Run(RunArgs),
    /// Get the host ready for `run` (as root, e.g. from the systemd unit's ExecStartPre=): find
    /// cgroup v2 or mount one, mount bpffs for the pin directory if missing, and check that the
    /// kernel has every feature imds-guard needs (one sentence per missing feature).
    Prepare(PinArgs),
    /// Validate a policy file and show what each rule resolves to; exits non-zero on error.
    Check(CheckArgs),
    /// Show what is attached and enforced, the policy digest and the counters.
    Status(StatusArgs),
    /// Stop enforcing: detach the programs and remove the pins. The only way to stop enforcement.
    Unload(PinArgs),
    /// Would this process be allowed to reach the metadata service? By which rule, or why not?
    Explain(ExplainArgs),
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The process to judge.
    #[arg(long)]
    pub pid: u32,
    #[command(flatten)]
    pub pins: PinArgs,
    /// Policy file, for per-rule reasons (the verdict itself comes from the kernel's maps).
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct PinArgs {
    /// Directory on a bpffs where programs and maps are pinned.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Policy file (TOML).
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// cgroup v2 directory to attach to; its processes and all descendants' are judged.
    /// Default: the cgroup2 root (the whole host).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    #[command(flatten)]
    pub pins: PinArgs,
    /// Report identical repeated events (same identity, verdict and destination) once per this
    /// many seconds, with a count; 0 reports every event.
    #[arg(long, default_value_t = 10.0)]
    pub aggregate_window: f64,
    /// Kernel BTF, for the struct offsets that `exe` rules need.
    #[arg(long, default_value = "/sys/kernel/btf/vmlinux")]
    pub btf: PathBuf,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Policy file (TOML).
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Print the resolved policy as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}
