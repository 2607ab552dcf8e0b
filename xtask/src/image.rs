//! `cargo xtask image`: the container image of `Containerfile` — the static (musl) binary and
//! nothing else — built with whichever of podman, buildah or docker is installed.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{cargo, root};

const TARGET: &str = "x86_64-unknown-linux-musl";

pub fn build(tag: &str) -> anyhow::Result<()> {
    let status = Command::new("rustup").args(["target", "add", TARGET]).status().context("running rustup")?;
    if !status.success() {
        bail!("rustup target add {TARGET} failed ({status})");
    }
    cargo(&["build", "--release", "--target", TARGET, "-p", "imds-guard"])?;
    let builder = ["podman", "buildah", "docker"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok_and(|o| o.status.success()))
        .context("no container image builder: install podman, buildah or docker")?;
    let mut cmd = Command::new(builder);
    if builder == "buildah" {
        cmd.arg("bud");
    } else {
        cmd.arg("build");
    }
    let status = cmd.args(["-f", "Containerfile", "-t", tag, "."]).current_dir(root()).status()?;
    if !status.success() {
        bail!("{builder} failed ({status})");
    }
    eprintln!("[image] built {tag} with {builder}");
    Ok(())
}
