//! `imds-guard run`: the daemon, in the foreground.

use crate::cli::RunArgs;

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    crate::daemon::run(args)
}
