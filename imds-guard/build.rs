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
    aya_build::build_ebpf(
        [Package { name: "imds-guard-ebpf", root_dir: root, ..Package::default() }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .context("building the eBPF programs failed; run scripts/bootstrap.sh to install the eBPF toolchain")
}
