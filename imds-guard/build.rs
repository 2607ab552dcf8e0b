//! Builds the eBPF object (imds-guard-ebpf, target bpfel-unknown-none) with the pinned nightly and
//! bpf-linker that scripts/bootstrap.sh installs; the daemon embeds it with `include_bytes_aligned!`.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Keep in sync with scripts/bootstrap.sh.
const EBPF_TOOLCHAIN: &str = "nightly-2026-10-29";

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?
        .join("imds-guard-ebpf");
    let root = root.to_str().context("non-UTF-8 path")?;
    println!("cargo::rerun-if-changed={root}/../imds-guard-common/src");
    build_identity();
    aya_build::build_ebpf(
        [Package { name: "imds-guard-ebpf", root_dir: root, ..Package::default() }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .context("building the eBPF programs failed; run scripts/bootstrap.sh to install the eBPF toolchain")
}

/// What `imds-guard --version` says of the build: the commit (when built in a git checkout; a
/// source tarball says `unknown`), the profile and the target.
fn build_identity() {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    println!("cargo::rustc-env=IMDS_GUARD_PROFILE={}", env("PROFILE"));
    println!("cargo::rustc-env=IMDS_GUARD_TARGET={}", env("TARGET"));
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_default();
    println!("cargo::rustc-env=IMDS_GUARD_COMMIT={commit}");
    // A new commit changes the git directory's HEAD log (a worktree has a git directory of its own).
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        println!("cargo::rerun-if-changed={dir}/HEAD");
        println!("cargo::rerun-if-changed={dir}/logs/HEAD");
    }
}
