use clap::{CommandFactory as _, FromArgMatches as _};
use imds_guard::{
    cli::{Cli, Command},
    cmd, logging,
};

fn main() -> std::process::ExitCode {
    let mut command = Cli::command();
    // `--version` probes the kernel: only when asked (`-V` stays the one-line version).
    if std::env::args_os().any(|a| a == "--version") {
        let text: &'static str = Box::leak(cmd::version::long_version().into_boxed_str());
        command = command.long_version(text);
    }
    let cli = Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    if !matches!(cli.command, Command::Run(_)) {
        // A command whose reader goes away (`imds-guard status | head -5`) ends quietly, as Unix
        // tools do, instead of panicking in println!. Not the daemon: its sinks handle a closed
        // stdout themselves, and it must outlive one.
        // SAFETY: setting a signal's disposition to the default, before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    logging::init(cli.log_format, &cli.log);
    let result = match &cli.command {
        Command::Run(a) => cmd::run::run(a),
        Command::Prepare(a) => cmd::prepare::prepare(a),
        Command::Check(a) => cmd::check::check(a),
        Command::Status(a) => cmd::status::status(a),
        Command::Unload(a) => cmd::unload::unload(a),
        Command::Explain(a) => cmd::explain::explain(a),
        Command::Events(a) => cmd::events::events(a),
        Command::Suggest(a) => cmd::suggest::suggest(a),
        Command::Completions { shell } => cmd::generate::completions(*shell),
        Command::Manpages { dir } => cmd::generate::manpages(dir),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imds-guard: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
