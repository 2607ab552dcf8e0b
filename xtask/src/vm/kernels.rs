//! The kernels of the matrix: Debian cloud kernels pinned by exact package version and SHA-256,
//! fetched with a private apt configuration (its own sources.list, lists and cache under
//! `target/vm/apt/`, nothing of the host's apt state touched), checked and unpacked once into
//! `target/vm/kernels/<release>/`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};
use sha2::{Digest as _, Sha256};

use super::{run_quiet, vm_dir};

/// The mirror (the one this machine's /etc/apt/sources.list.d/debian.sources names);
/// `IMDSG_VM_MIRROR` overrides it.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// One kernel of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kernel {
    /// What `--kernel` takes and results print: the upstream series.
    pub label: &'static str,
    /// The Debian suite whose main archive carries the package.
    pub suite: &'static str,
    pub package: &'static str,
    /// The exact Debian version.
    pub version: &'static str,
    /// SHA-256 of the .deb (the same as the signed Packages index lists).
    pub sha256: &'static str,
}

/// The matrix. Each is in its suite's main archive (a point release, not only -security). Debian
/// drops superseded kernels from the mirror at point releases: when a pin disappears, pick a version
/// `apt-cache madison` lists (see `docs/VM.md`) and update the version, package and hash here.
pub const KERNELS: [Kernel; 3] = [
    Kernel {
        label: "5.10",
        suite: "bullseye",
        package: "linux-image-5.10.0-32-cloud-amd64",
        version: "5.10.223-1",
        sha256: "fb4a1229952d892138532c1d9f40a7fd0bd408e4dcf969c12e4524b6a89fdcb8",
    },
    Kernel {
        label: "6.1",
        suite: "bookworm",
        package: "linux-image-6.1.0-50-cloud-amd64",
        version: "6.1.176-1",
        sha256: "efe19f605b6f54a8352e68d85a629abb2d30b72a085faef603a9152590baa791",
    },
    Kernel {
        label: "6.12",
        suite: "trixie",
        package: "linux-image-6.12.117+deb13-cloud-amd64",
        version: "6.12.117-1",
        sha256: "e9893e5295d0549b8852611f12a4b8b5f6cc4b8128dcc2086b9847793b904ab7",
    },
];

impl Kernel {
    /// `uname -r` in the guest (the package name without `linux-image-`).
    pub fn release(&self) -> &'static str {
        self.package.strip_prefix("linux-image-").expect("kernel packages are linux-image-*")
    }

    /// The .deb's file name as apt-get download writes it (`+` and `:` stay as they are, an epoch
    /// would be `%3a`).
    pub fn deb_name(&self) -> String {
        format!("{}_{}_amd64.deb", self.package, self.version.replace(':', "%3a"))
    }

    fn dir(&self) -> PathBuf {
        vm_dir().join("kernels").join(self.release())
    }

    /// The unpacked kernel image.
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir().join(format!("boot/vmlinuz-{}", self.release()))
    }

    /// The unpacked modules (`lib/modules/<release>`; trixie's package has them under `usr/`).
    pub fn modules(&self) -> anyhow::Result<PathBuf> {
        ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|d| self.dir().join(d).join(self.release()))
            .find(|p| p.is_dir())
            .with_context(|| {
                format!("{} has no modules directory for {}", self.dir().display(), self.release())
            })
    }
}

/// `--kernel` values: each must name a kernel of the matrix; none means all of them, in matrix order.
pub fn select(labels: &[String]) -> anyhow::Result<Vec<Kernel>> {
    if labels.is_empty() {
        return Ok(KERNELS.to_vec());
    }
    let mut out = Vec::new();
    for l in labels {
        let k = KERNELS.iter().find(|k| k.label == l.as_str()).with_context(|| {
            let known: Vec<_> = KERNELS.iter().map(|k| k.label).collect();
            format!("unknown kernel `{l}` (the matrix has {})", known.join(", "))
        })?;
        if !out.contains(k) {
            out.push(*k);
        }
    }
    Ok(out)
}

/// Makes sure `k` is downloaded, verified and unpacked (nothing is downloaded when it is).
pub fn fetch(k: &Kernel) -> anyhow::Result<()> {
    let dir = k.dir();
    let marker = dir.join(".unpacked");
    if std::fs::read_to_string(&marker).is_ok_and(|s| s.trim() == k.sha256) && k.vmlinuz().is_file() {
        return Ok(());
    }
    let debs = vm_dir().join("kernels/debs");
    std::fs::create_dir_all(&debs)?;
    let deb = debs.join(k.deb_name());
    if !deb.is_file() || sha256_file(&deb)? != k.sha256 {
        download(k, &debs)?;
    }
    let got = sha256_file(&deb)?;
    if got != k.sha256 {
        let _ = std::fs::remove_file(&deb);
        bail!(
            "{} {}: SHA-256 {got} is not the pinned {} (xtask/src/vm/kernels.rs); removed the download",
            k.package,
            k.version,
            k.sha256
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    run_quiet(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    ensure!(k.vmlinuz().is_file(), "{} has no {}", deb.display(), k.vmlinuz().display());
    k.modules()?;
    std::fs::write(&marker, k.sha256)?;
    eprintln!("[vm] kernel {} ({} {}) unpacked in {}", k.label, k.package, k.version, dir.display());
    Ok(())
}

fn sha256_file(p: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The private sources.list: main of every suite the matrix uses, from the mirror.
fn sources_list(mirror: &str) -> String {
    let mut suites: Vec<&str> = KERNELS.iter().map(|k| k.suite).collect();
    suites.dedup();
    suites
        .iter()
        .map(|s| {
            format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} {s} main\n")
        })
        .collect()
}

/// `apt-get download <package>=<version>` with a private configuration into `dest`.
fn download(k: &Kernel, dest: &Path) -> anyhow::Result<()> {
    let apt = vm_dir().join("apt");
    for d in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(apt.join(d))?;
    }
    let mirror = std::env::var("IMDSG_VM_MIRROR").unwrap_or_else(|_| DEFAULT_MIRROR.to_owned());
    let list = apt.join("sources.list");
    let text = sources_list(&mirror);
    let changed = std::fs::read_to_string(&list).ok().as_deref() != Some(text.as_str());
    std::fs::write(&list, &text)?;
    let opts = |cmd: &mut Command| {
        cmd.arg("-o")
            .arg(format!("Dir::Etc::sourcelist={}", list.display()))
            .args(["-o", "Dir::Etc::sourceparts=-"])
            .arg("-o")
            .arg(format!("Dir::State::lists={}", apt.join("lists").display()))
            .arg("-o")
            .arg(format!("Dir::Cache={}", apt.join("cache").display()))
            // Nothing of the host's installed packages matters to a download.
            .args(["-o", "Dir::State::status=/dev/null", "-o", "Acquire::Languages=none"])
            // The host's appstream hook would fetch DEP-11 metadata we never read.
            .args(["-o", "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"])
            .args(["-o", "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"])
            .args(["-o", "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false"])
            .args(["-o", "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false"])
            .args(["-o", "APT::Sandbox::User=root"]);
    };
    let spec = format!("{}={}", k.package, k.version);
    let try_download = || -> anyhow::Result<()> {
        let mut cmd = Command::new("apt-get");
        opts(&mut cmd);
        run_quiet(cmd.args(["-q", "download", &spec]).current_dir(dest))
    };
    // The lists are refreshed only when a pinned version is not in them (or the sources changed).
    if changed || try_download().is_err() {
        eprintln!("[vm] apt-get update (private lists in {})", apt.display());
        let mut cmd = Command::new("apt-get");
        opts(&mut cmd);
        run_quiet(cmd.args(["-q", "update"]))?;
        try_download().with_context(|| {
            format!(
                "{mirror} has no {spec} any more (Debian drops superseded kernels at point releases): \
                 pick another version of the {} kernel and pin it with its SHA-256 in \
                 xtask/src/vm/kernels.rs (docs/VM.md says how)",
                k.label
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_exact_and_consistent() {
        for k in KERNELS {
            assert_eq!(k.sha256.len(), 64, "{k:?}");
            assert!(k.sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{k:?}");
            // The package is the kernel series it claims; the version is exact (a revision, no
            // wildcard) and its upstream part is the series too.
            assert!(k.release().starts_with(&format!("{}.", k.label)), "{k:?}");
            assert!(k.release().ends_with("-cloud-amd64"), "{k:?}");
            assert!(k.version.starts_with(&format!("{}.", k.label)), "{k:?}");
            let (upstream, revision) = k.version.rsplit_once('-').expect("a Debian revision");
            assert!(!revision.is_empty() && upstream.split('.').all(|p| p.parse::<u32>().is_ok()), "{k:?}");
            assert!(!k.version.contains(['*', '?', ' ']), "{k:?}");
        }
        let labels: Vec<_> = KERNELS.iter().map(|k| k.label).collect();
        assert_eq!(labels, ["5.10", "6.1", "6.12"]);
    }

    #[test]
    fn deb_names_and_selection() {
        assert_eq!(KERNELS[2].deb_name(), "linux-image-6.12.117+deb13-cloud-amd64_6.12.117-1_amd64.deb");
        assert_eq!(KERNELS[0].release(), "5.10.0-32-cloud-amd64");
        assert_eq!(select(&[]).unwrap(), KERNELS.to_vec());
        let picked = select(&["6.12".into(), "5.10".into(), "6.12".into()]).unwrap();
        assert_eq!(picked.iter().map(|k| k.label).collect::<Vec<_>>(), ["6.12", "5.10"]);
        assert!(select(&["6.6".into()]).unwrap_err().to_string().contains("5.10, 6.1, 6.12"));
    }

    #[test]
    fn sources_list_names_each_suite_once() {
        let s = sources_list("http://m/debian");
        assert_eq!(s.lines().count(), 3);
        assert!(s.contains("http://m/debian bullseye main") && s.contains("http://m/debian trixie main"));
    }
}
