//! The previous release's Debian package: what `vm-test --host`'s `upgrade-from-previous`
//! installs and then upgrades to this build's package on a live host (docs/HOSTS.md).
//!
//! It is built from the pinned commit's own tree — its manifests, eBPF programs, unit, policy,
//! maintainer scripts and `[package.metadata.deb]` — checked out by a local clone under
//! `target/prev/src` (`git clone --shared`: no copy of the history, and the clone's own HEAD is
//! the commit, so the binary's `--version` names it). Its build shares this tree's target
//! directory (`CARGO_TARGET_DIR`), so the dependencies compiled for this tree's release build are
//! reused and only the workspace crates and the eBPF object are compiled again. The package is
//! cached in `target/prev/<commit>/`; a later run finds it there and builds nothing.
//!
//! Sharing has one trap: cargo names a workspace crate's artifacts after its path relative to the
//! workspace root, so the two trees' crates have the same names in target/release, and cargo
//! judges them fresh by file times. Built one after the other, each tree could take the other's
//! binary — and, through the build script's `rerun-if-changed` paths, the other's eBPF object and
//! commit — for its own. So the workspace crates' release artifacts are removed
//! (`cargo clean -p`) before the previous release's build and again after it: this tree's next
//! release build compiles its own.
//!
//! Its version is the commit's own with `~prev.<short commit>` after the upstream part
//! (`0.1.0~prev.4993a8e-1`), which dpkg orders before this build's (`0.1.0-1`): installing this
//! build's package over it is an upgrade, as for a user going from one release to the next.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};

use crate::{deb::output, root};

/// The previous release: the commit whose package is upgraded from. It is the last commit that
/// passed CI and whose package was proven on the VM (`vm-test --host`).
///
/// To bump it (after a release): put the full SHA-1 of such a commit on main's history here
/// (`git rev-parse <commit>`). The next `vm-test --host` (or `cargo xtask previous-deb`) builds
/// its package once — a release build of the workspace crates and the eBPF object against this
/// tree's compiled dependencies, 104-151 s here, and this tree's own workspace crates are then
/// compiled again (docs/HOSTS.md) — and caches it. The commit must build with this tree's toolchains
/// (rust-toolchain.toml, the eBPF nightly in imds-guard/build.rs): with another Rust every
/// dependency is compiled again, and one that is not installed fails the build
/// (`RUSTUP_AUTO_INSTALL=0`).
pub const PREVIOUS: &str = "4993a8e04f9bc700269cbea8ff25ed6d48504339";

/// The package of [`PREVIOUS`], built once and cached.
pub fn deb() -> anyhow::Result<PathBuf> {
    let short = &PREVIOUS[..7];
    let dir = root().join("target/prev").join(PREVIOUS);
    if let Some(deb) = cached(&dir)? {
        eprintln!("[prev] the package of {short}, cached: {}", deb.display());
        return Ok(deb);
    }
    let t = Instant::now();
    let src = root().join("target/prev/src");
    checkout(&src)?;
    eprintln!("[prev] building the package of {short} (the previous release) from {}", src.display());
    let target = root().join("target");
    clean_workspace_crates()?;
    let built = old_cargo(&src, &target, &["build", "--release", "-p", "imds-guard", "--bin", "imds-guard"])
        .status()
        .context("running cargo build in the previous release's tree");
    let packaged = built.and_then(|status| {
        ensure!(status.success(), "the release build of {short} failed ({status})");
        package(&src, &target, &dir)
    });
    // Whatever happened, this tree's next release build must not find the previous release's
    // artifacts under its own names.
    clean_workspace_crates()?;
    let deb = packaged?;
    eprintln!("[prev] built {} in {:.0} s", deb.display(), t.elapsed().as_secs_f64());
    Ok(deb)
}

/// Packages the previous release's build in `target` with its tree's cargo-deb metadata, as
/// `dir/imds-guard_<its version>~prev.<short commit>-1_amd64.deb`.
fn package(src: &Path, target: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let short = &PREVIOUS[..7];
    // The binary says which commit it was built from; this one must be the previous release.
    let bin = target.join("release/imds-guard");
    let version = output(Command::new(&bin).arg("--version"))?;
    ensure!(
        version.contains(&format!("(commit {}", &PREVIOUS[..12])),
        "{} is not the build of {short}: {version}",
        bin.display()
    );
    crate::deb::assets_of(&bin, &src.join("target/assets"))?;
    let upstream = upstream_version(src)?;
    let deb_version = format!("{upstream}~prev.{short}-1");
    std::fs::create_dir_all(dir)?;
    let part = dir.join("building.deb");
    // --no-build: the binary above is the package's (cargo-deb would run the same build again).
    output(
        old_cargo(
            src,
            target,
            &["deb", "-p", "imds-guard", "--no-build", "--deb-version", &deb_version, "-o"],
        )
        .arg(&part),
    )?;
    let deb = dir.join(format!("imds-guard_{deb_version}_amd64.deb"));
    std::fs::rename(&part, &deb)?;
    Ok(deb)
}

/// Removes the release artifacts of the workspace crates that both trees build (their names are
/// the same in both: see the module's comment), and nothing else.
fn clean_workspace_crates() -> anyhow::Result<()> {
    crate::cargo(&[
        "clean",
        "--quiet",
        "--release",
        "-p",
        "imds-guard",
        "-p",
        "imds-guard-common",
        "-p",
        "imds-guard-ebpf",
    ])
}

/// cargo in the previous release's tree `src`, building into `target` (this tree's). Not $CARGO
/// (this toolchain's cargo itself) but the rustup proxy, which reads the commit's
/// rust-toolchain.toml; nor the toolchain this process was started with.
fn old_cargo(src: &Path, target: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("cargo");
    c.args(args)
        .current_dir(src)
        .env("CARGO_TARGET_DIR", target)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO");
    c
}

/// The one finished package in `dir`, if there is one.
fn cached(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(None) };
    for e in entries {
        let p = e?.path();
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("imds-guard_") && n.ends_with(".deb"))
        {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// `src` checked out at [`PREVIOUS`]: a local clone sharing this repository's objects, made once.
fn checkout(src: &Path) -> anyhow::Result<()> {
    let git = |dir: &Path, args: &[&str]| output(Command::new("git").arg("-C").arg(dir).args(args));
    if git(&root(), &["cat-file", "-e", &format!("{PREVIOUS}^{{commit}}")]).is_err() {
        bail!(
            "the previous release {PREVIOUS} is not in this repository's history (a shallow clone? \
             `git fetch --unshallow`); xtask/src/previous.rs pins it"
        );
    }
    // Made once: it reads this repository's objects (--shared), so it has every later pin too.
    if !src.join(".git").exists() {
        let _ = std::fs::remove_dir_all(src);
        output(
            Command::new("git").args(["clone", "--quiet", "--shared", "--no-checkout"]).arg(root()).arg(src),
        )?;
    }
    git(src, &["checkout", "--quiet", "--force", "--detach", PREVIOUS])?;
    git(src, &["clean", "--quiet", "-fdx"])?;
    Ok(())
}

/// The version of the imds-guard crate in `src`'s manifests (the package's upstream version).
fn upstream_version(src: &Path) -> anyhow::Result<String> {
    let meta = output(
        Command::new("cargo")
            .args(["metadata", "--no-deps", "--format-version", "1"])
            .current_dir(src)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO"),
    )?;
    let meta: serde_json::Value = serde_json::from_str(&meta).context("cargo metadata's JSON")?;
    meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "imds-guard"))
        .and_then(|p| p["version"].as_str())
        .map(str::to_owned)
        .context("cargo metadata names no package imds-guard")
}

/// The binary packaged in `deb`: the `--version` it prints, and its SHA-256.
pub fn packaged_binary(deb: &Path) -> anyhow::Result<(String, String)> {
    let dir =
        crate::deb::tempdir(&format!("bin-{}", deb.file_name().and_then(|n| n.to_str()).unwrap_or("deb")))?;
    output(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&dir.0))?;
    let bin = dir.0.join("usr/bin/imds-guard");
    let version = output(Command::new(&bin).arg("--version"))?;
    let bytes = std::fs::read(&bin)?;
    use sha2::Digest as _;
    Ok((
        version.lines().next().unwrap_or_default().to_owned(),
        crate::vm::kernels::hex(&sha2::Sha256::digest(&bytes)),
    ))
}
