//! `imds-guard run`: the daemon, in the foreground.

use std::time::Duration;

use crate::{
    cli::{RunArgs, Sink},
    daemon,
    report::sinks::{FileConfig, SinkConfig, stdout_is_journal},
};

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    daemon::run(&config(args))
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
        allow_degraded: args.allow_degraded,
    }
}
