//! Command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::kernel::paths::DEFAULT_PIN_DIR;
pub use crate::report::format::EventFormat;

pub const DEFAULT_CONFIG: &str = "/etc/imds-guard/policy.toml";

/// Host firewall for the cloud instance metadata service (169.254.169.254, fd00:ec2::254).
///
/// Kernel programs on cgroup connect hooks let only the identities a policy allows reach the
/// metadata endpoints; everyone else gets EPERM at connect(), and each violation is reported as a
/// JSON line on stdout. Enforcement is pinned and outlives the daemon; `unload` removes it.
///
/// `--version` also names the commit, the SHA-256 of the eBPF object inside the binary and the
/// kernel features this host offers.
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
    Prepare(PrepareArgs),
    /// Validate a policy file and show what each rule resolves to; exits non-zero on error.
    Check(CheckArgs),
    /// Show what is attached and enforced, the policy digest and the counters.
    Status(StatusArgs),
    /// Stop enforcing: detach the programs and remove the pins. The only way to stop enforcement.
    Unload(PinArgs),
    /// Would this process be allowed to reach the metadata service? By which rule, or why not?
    Explain(ExplainArgs),
    /// Show the running daemon's events: the recent ones, or (--follow) live as they happen.
    Events(EventsArgs),
    /// Print a policy (TOML, enforce mode) that allows every workload the running daemon saw
    /// reaching the metadata service without a rule (run in monitor mode first).
    Suggest(SuggestArgs),
    /// Print the shell completion script for SHELL (packaged at the distributions' paths).
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (imds-guard.1 and one per subcommand) into DIR.
    #[command(hide = true)]
    Manpages { dir: PathBuf },
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep printing new events as they happen (until interrupted).
    #[arg(long, short)]
    pub follow: bool,
    /// Print the JSON lines as the daemon writes them, instead of one readable line per event.
    #[arg(long)]
    pub json: bool,
    /// The daemon's event socket.
    #[arg(long, default_value = crate::report::socket::DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

#[derive(Debug, Args)]
pub struct SuggestArgs {
    /// The daemon's event socket (where the table of what was seen is read from).
    #[arg(long, default_value = crate::report::socket::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Read events from these JSON-lines files instead of the daemon (`-` for stdin), e.g. an
    /// `--events-file` and its rotated files, or `journalctl -u imds-guard -o json` (the daemon's
    /// IMDS_GUARD_JSON fields; never MESSAGE or log lines). Native lines only (`run
    /// --event-format json`, the default); other lines are skipped with a warning.
    #[arg(long = "events", value_name = "FILE")]
    pub events: Vec<PathBuf>,
    /// The current policy, whose endpoints and [[allow]] tables are kept. Default: the policy the
    /// daemon runs with (with --events: /etc/imds-guard/policy.toml when it exists).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// Where events go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Sink {
    /// The journal (with every event field as a journal field) when stdout is connected to it
    /// (running under systemd), else stdout.
    Auto,
    /// JSON lines on stdout.
    Stdout,
    /// The systemd journal's native protocol.
    Journald,
    /// Neither (use --events-file, the event socket or metrics).
    None,
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
pub struct PrepareArgs {
    #[command(flatten)]
    pub pins: PinArgs,
    /// Give the pin directory (and what is pinned in it) to this user and its group (a name, or
    /// numeric UID[:GID]), the one `run` runs as (the systemd unit's User=): it keeps no
    /// capability to write what root owns.
    #[arg(long, value_name = "USER")]
    pub owner: Option<String>,
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
    /// Where events go (besides --events-file, the event socket and metrics).
    #[arg(long, value_enum, default_value_t = Sink::Auto)]
    pub sink: Sink,
    /// The shape of the event lines on stdout, in the journal (IMDS_GUARD_JSON) and in
    /// --events-file: imds-guard's own JSON, OCSF 1.8.0 or ECS 9.4.0 (docs/EVENTS.md). The event
    /// socket (`events`, `suggest`) keeps the native shape.
    #[arg(long, value_enum, default_value_t = EventFormat::Json)]
    pub event_format: EventFormat,
    /// The journal's socket (for --sink journald).
    #[arg(long, default_value = crate::report::journal::JOURNAL_SOCKET, hide = true)]
    pub journal_socket: PathBuf,
    /// Also append events (JSON lines) to this file, rotated by size.
    #[arg(long, value_name = "PATH")]
    pub events_file: Option<PathBuf>,
    /// Rotate the event file when it would grow past this many bytes.
    #[arg(long, default_value_t = 64 << 20, value_name = "BYTES")]
    pub events_file_max_bytes: u64,
    /// Rotated event files to keep (PATH.1 … PATH.N).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub events_file_keep: u32,
    /// Local socket for `imds-guard events` and `suggest` (mode 0600); `none` disables it.
    #[arg(long, default_value = crate::report::socket::DEFAULT_SOCKET, value_name = "PATH")]
    pub events_socket: PathBuf,
    /// Serve Prometheus metrics (GET /metrics) and a health check (GET /healthz: 200 while
    /// enforcing) on this address, e.g. 127.0.0.1:9464. Off by default.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Allow --metrics-addr to be a non-loopback address (the metrics name workloads).
    #[arg(long)]
    pub metrics_allow_remote: bool,
    /// Also (or instead of --metrics-addr) serve metrics and the health check on this Unix socket,
    /// which only its owner (mode 0600) or group (0660) can open: the workload labels name other
    /// users' executables, units and pods, which a TCP port shows every local user.
    #[arg(long, value_name = "PATH")]
    pub metrics_socket: Option<PathBuf>,
    /// The metrics socket's mode: 0600 (the daemon's user) or 0660 (and its group).
    #[arg(long, value_name = "OCTAL", default_value = "0600", value_parser = parse_mode)]
    pub metrics_socket_mode: u32,
    /// Start even if the policy asks for what this kernel cannot do. Without sk_msg/sockhash
    /// (CONFIG_BPF_STREAM_PARSER) the guard always runs without IMDSv1 inspection and says so; a
    /// policy with imdsv1 = "deny" is then refused unless this is given (its tokenless requests
    /// would go through, unreported).
    #[arg(long)]
    pub allow_degraded: bool,
}

/// An octal file mode (`0660`, `660`).
fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8).map_err(|e| format!("{s:?} is not an octal mode: {e}"))
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
    /// Exit non-zero unless every program is attached with a live policy (for health probes);
    /// prints one line.
    #[arg(long, conflicts_with = "json")]
    pub check: bool,
}
