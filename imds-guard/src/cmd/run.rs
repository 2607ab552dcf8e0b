//! `imds-guard run`: the daemon, in the foreground.

use std::time::Duration;

use crate::{
    cli::{RunArgs, Sink},
    daemon,
    report::sinks::{FileConfig, SinkConfig, stdout_is_journal},
};

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    raise_nofile();
    daemon::run(&config(args))
}

/// The soft limit on open descriptors raised to the hard one. The soft default (1,024) is what a
/// local user exhausted with idle connections to `/metrics`, after which inotify, /proc reads and
/// the journal's memfd failed; the hard limit (systemd's default: 524,288) is what the kernel lets
/// us have. Nothing here uses `select()`, the reason the soft default is low. A failure is logged,
/// not fatal: the daemon enforces either way.
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "descriptor limit raised"),
            Err(e) => tracing::warn!("cannot raise the descriptor limit from {soft} to {hard}: {e}"),
        },
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the descriptor limit: {e}"),
    }
}

/// The daemon's configuration from the arguments.
fn config(args: &RunArgs) -> daemon::Config {
    let journal = match args.sink {
        Sink::Journald => true,
        Sink::Auto => stdout_is_journal(),
        Sink::Stdout | Sink::None => false,
    };
    daemon::Config {
        policy: args.config.clone(),
        cgroup: args.cgroup.clone(),
        pin_dir: args.pins.pin_dir.clone(),
        btf: args.btf.clone(),
        aggregate_window: Duration::from_secs_f64(args.aggregate_window.max(0.0)),
        event_format: args.event_format,
        sinks: SinkConfig {
            stdout: args.sink == Sink::Stdout || (args.sink == Sink::Auto && !journal),
            journal: journal.then(|| args.journal_socket.clone()),
            file: args.events_file.clone().map(|path| FileConfig {
                path,
                max_bytes: args.events_file_max_bytes.max(4096),
                keep: args.events_file_keep,
            }),
        },
        events_socket: crate::report::socket::socket_path(&args.events_socket),
        metrics_addr: args.metrics_addr,
        metrics_allow_remote: args.metrics_allow_remote,
        metrics_socket: args.metrics_socket.clone().map(|p| (p, args.metrics_socket_mode)),
        allow_degraded: args.allow_degraded,
    }
}
