//! `imds-guard completions SHELL` and `imds-guard manpages DIR` (hidden): shell completions and
//! man pages made from the clap definitions, so that they say what `--help` says. `cargo xtask
//! deb` ships them at the distributions' paths.

use std::path::Path;

use anyhow::Context as _;
use clap::CommandFactory as _;

use crate::cli::Cli;

/// The completion script for `shell`, on stdout.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "imds-guard", &mut script);
    std::io::stdout().lock().write_all(&script).context("writing the completion script")
}

/// `imds-guard.1` and one page per subcommand (`imds-guard-run.1`, ...) in `dir`.
pub fn manpages(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd, dir).with_context(|| format!("writing man pages to {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_subcommand_has_a_page_and_completions_name_them() {
        let dir = std::env::temp_dir().join(format!("imdsg-man-{}", std::process::id()));
        super::manpages(&dir).unwrap();
        for page in ["imds-guard.1", "imds-guard-run.1", "imds-guard-suggest.1"] {
            let text = std::fs::read_to_string(dir.join(page)).unwrap();
            assert!(text.contains(".TH"), "{page}");
        }
        let run = std::fs::read_to_string(dir.join("imds-guard-run.1")).unwrap();
        assert!(run.contains("event\\-format"), "the run page lists --event-format");
        assert!(!dir.join("imds-guard-completions.1").exists(), "hidden commands get no page");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
