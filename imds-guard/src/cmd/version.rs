//! `imds-guard --version`: the build, the SHA-256 of the eBPF object built into it (the programs
//! that will run in the kernel), and the kernel features it would use on this host. `-V` is the
//! short form (`imds-guard 0.1.0`).

use std::fmt::Write as _;

use sha2::{Digest as _, Sha256};

use crate::kernel::{features, guard::EBPF_OBJECT};

/// The build: version, commit (when built from a git checkout), profile and target.
#[must_use]
pub fn build() -> String {
    let commit = option_env!("IMDS_GUARD_COMMIT").filter(|c| !c.is_empty()).unwrap_or("unknown");
    format!(
        "{} (commit {commit}, {} build for {})",
        env!("CARGO_PKG_VERSION"),
        env!("IMDS_GUARD_PROFILE"),
        env!("IMDS_GUARD_TARGET")
    )
}

/// SHA-256 of the embedded eBPF object, 64 hex digits.
#[must_use]
pub fn ebpf_digest() -> String {
    Sha256::digest(EBPF_OBJECT).iter().map(|b| format!("{b:02x}")).collect()
}

/// The text after `imds-guard ` for `--version`.
#[must_use]
pub fn long_version() -> String {
    let mut out = build();
    let _ = write!(out, "\neBPF object: sha256:{} ({} bytes)", ebpf_digest(), EBPF_OBJECT.len());
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let _ = write!(out, "\nkernel {}:", release.trim());
    for (f, found) in features::probe_each(&features::SHOWN) {
        let said = match found {
            Ok(true) => "yes".to_owned(),
            Ok(false) => "no".to_owned(),
            Err(e) => format!("unknown ({e}; probing needs root)"),
        };
        let _ = write!(out, "\n  {}: {said}", f.label());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_names_the_build_the_object_and_each_feature() {
        let v = long_version();
        let lines: Vec<&str> = v.lines().collect();
        assert!(lines[0].starts_with(env!("CARGO_PKG_VERSION")), "{v}");
        assert!(lines[1].starts_with("eBPF object: sha256:") && lines[1].len() > 80, "{v}");
        assert!(lines[2].starts_with("kernel "), "{v}");
        assert_eq!(lines.len(), 3 + features::SHOWN.len(), "{v}");
        assert!(lines[3].starts_with("  BTF: "), "{v}");
    }
}
