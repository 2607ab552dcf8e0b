//! `cargo xtask rpm`: builds the RPM package for Amazon Linux 2023 (packaging/rpm/imds-guard.spec)
//! with `rpmbuild` from Debian's `rpm` package, from the same files as the .deb (the release
//! binary and the completions and man pages `deb::assets` makes of it), and checks it with `rpm`:
//! the header's fields and dependencies (the newest glibc symbol version the binary needs is at
//! most Amazon Linux 2023's), the exact file list with modes and owners, the config file marked
//! `%config(noreplace)`, the scriptlets (valid sh, doing what the .deb's maintainer scripts do),
//! that the packaged unit, policy, binary and completions are byte for byte the repository's or
//! the build's; then, as root, installs, upgrades (to the same files as release 2) and erases it
//! in a throwaway root (scripts/rpm-roundtrip.sh in a private mount namespace), never on this
//! machine's own root: with `rpm`, then with the README's `dnf` commands against a repository
//! whose one package stands for Amazon Linux 2023's (docs/HOSTS.md).
//!
//! Why rpmbuild rather than a Rust RPM writer (cargo-generate-rpm): the `rpm` tool that checks
//! the package comes in the same Debian package, the spec file is what an RPM distribution's
//! packager reads and can rebuild with, and it needs no second cargo-installed tool (cargo-deb
//! already takes two minutes to build on a fresh machine).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, ensure};

use crate::{
    deb::{COMPLETIONS, MAN_PAGES, output, tempdir},
    root,
};

/// Amazon Linux 2023's glibc: the binary may need no newer symbol version.
const MAX_GLIBC: (u32, u32) = (2, 34);

/// Every file the package installs besides the man pages (deb::MAN_PAGES), with its mode;
/// directories it owns end in `/`.
const FILES: [(&str, &str); 13] = [
    ("/etc/imds-guard/", "drwxr-xr-x"),
    ("/etc/imds-guard/policy.toml", "-rw-r--r--"),
    ("/usr/bin/imds-guard", "-rwxr-xr-x"),
    ("/usr/lib/systemd/system-preset/50-imds-guard.preset", "-rw-r--r--"),
    ("/usr/lib/systemd/system/imds-guard.service", "-rw-r--r--"),
    ("/usr/share/bash-completion/completions/imds-guard", "-rw-r--r--"),
    ("/usr/share/doc/imds-guard/", "drwxr-xr-x"),
    ("/usr/share/doc/imds-guard/EVENTS.md", "-rw-r--r--"),
    ("/usr/share/doc/imds-guard/POLICY.md", "-rw-r--r--"),
    ("/usr/share/doc/imds-guard/README.md", "-rw-r--r--"),
    ("/usr/share/doc/imds-guard/SECURITY.md", "-rw-r--r--"),
    ("/usr/share/fish/vendor_completions.d/imds-guard.fish", "-rw-r--r--"),
    ("/usr/share/zsh/site-functions/_imds-guard", "-rw-r--r--"),
];

/// Where the RPM puts each completion script (Fedora's and Amazon Linux's zsh path differs from
/// Debian's).
fn completion_path(shell: &str) -> &'static str {
    match shell {
        "bash" => "/usr/share/bash-completion/completions/imds-guard",
        "zsh" => "/usr/share/zsh/site-functions/_imds-guard",
        _ => "/usr/share/fish/vendor_completions.d/imds-guard.fish",
    }
}

pub fn rpm() -> anyhow::Result<()> {
    crate::deb::assets()?;
    let out = root().join("target/rpm");
    let rpm = build(&out, "1")?;
    println!("built {}", rpm.display());
    check(&rpm)?;
    println!(
        "checked: header fields, dependencies, files and modes, %config(noreplace), scriptlets, unit, policy, binary, completions"
    );
    roundtrip(&rpm)
}

/// rpmbuild -bb of the spec, release `release`, into `out`; returns the package's path.
pub fn build(out: &Path, release: &str) -> anyhow::Result<PathBuf> {
    let probe = Command::new("rpmbuild").arg("--version").output();
    ensure!(
        probe.is_ok_and(|o| o.status.success()),
        "rpmbuild is not installed; run scripts/bootstrap.sh (Debian package `rpm`)"
    );
    std::fs::create_dir_all(out)?;
    let top = tempdir(&format!("rpmbuild-{release}"))?;
    let version = env!("CARGO_PKG_VERSION");
    rpmbuild(
        &root().join("packaging/rpm/imds-guard.spec"),
        &top.0,
        out,
        &[("src", &root().to_string_lossy()), ("pkg_version", version), ("pkg_release", release)],
    )
    .context("rpmbuild")?;
    let rpm = out.join(format!("imds-guard-{version}-{release}.x86_64.rpm"));
    ensure!(rpm.is_file(), "rpmbuild made no {}", rpm.display());
    Ok(rpm)
}

/// `rpmbuild -bb` of `spec` in the build tree `top`, the package into `out` as
/// `<name>-<version>-<release>.<arch>.rpm`, with these macros defined.
fn rpmbuild(spec: &Path, top: &Path, out: &Path, defines: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut cmd = Command::new("rpmbuild");
    cmd.args(["-bb", "--quiet"]);
    let dirs = [("_topdir", top.to_string_lossy()), ("_rpmdir", out.to_string_lossy())];
    let dirs = dirs.iter().map(|(k, v)| (*k, v.as_ref()));
    let name = [("_build_name_fmt", "%%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm")];
    for (k, v) in dirs.chain(name).chain(defines.iter().copied()) {
        cmd.arg("--define").arg(format!("{k} {v}"));
    }
    output(cmd.arg(spec)).map(drop)
}

fn query(rpm: &Path, args: &[&str]) -> anyhow::Result<String> {
    output(Command::new("rpm").args(["-qp", "--nosignature", "--nodigest"]).args(args).arg(rpm))
}

/// The newest `GLIBC_x.y` symbol version among `libc.so.6(GLIBC_x.y)(64bit)` requirements.
pub fn newest_glibc(requires: &str) -> Option<(u32, u32)> {
    requires
        .lines()
        .filter_map(|l| l.trim().strip_prefix("libc.so.6(GLIBC_")?.split_once(')').map(|(v, _)| v))
        .filter_map(|v| {
            let mut it = v.split('.');
            Some((it.next()?.parse().ok()?, it.next().unwrap_or("0").parse().ok()?))
        })
        .max()
}

fn sha256(path: &Path) -> anyhow::Result<String> {
    let out = output(Command::new("sha256sum").arg(path))?;
    Ok(out.split_whitespace().next().unwrap_or_default().to_owned())
}

fn check(rpm: &Path) -> anyhow::Result<()> {
    let version = env!("CARGO_PKG_VERSION");
    let fields = query(rpm, &["--qf", "%{NAME}|%{VERSION}|%{RELEASE}|%{ARCH}|%{LICENSE}|%{SUMMARY}"])?;
    let f: Vec<&str> = fields.split('|').collect();
    ensure!(f.len() == 6, "header fields: {fields}");
    ensure!(f[..4] == ["imds-guard", version, "1", "x86_64"], "name, version, release, arch: {fields}");
    ensure!(f[4] == "MIT OR Apache-2.0", "License: {}", f[4]);
    ensure!(f[5].contains("169.254.169.254"), "Summary: {}", f[5]);

    // Dependencies: nftables (the daemon runs nft), the scriptlets' tools, and a C library no newer
    // than Amazon Linux 2023's.
    let requires = query(rpm, &["--requires"])?;
    for need in ["nftables", "shadow-utils", "glibc-common", "systemd", "libc.so.6()(64bit)"] {
        ensure!(requires.lines().any(|l| l.trim() == need), "Requires lacks {need}:\n{requires}");
    }
    let glibc = newest_glibc(&requires).context("no libc.so.6(GLIBC_*) requirement")?;
    ensure!(
        glibc <= MAX_GLIBC,
        "the binary needs glibc {}.{}, newer than Amazon Linux 2023's {}.{}",
        glibc.0,
        glibc.1,
        MAX_GLIBC.0,
        MAX_GLIBC.1
    );

    // Files, modes and owners (root), and the one config file, noreplace.
    let listing = query(
        rpm,
        &[
            "--qf",
            "[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEFLAGS:fflags}| %{FILENAMES}\n]",
        ],
    )?;
    let mut files = BTreeMap::new();
    let mut configs = Vec::new();
    for line in listing.lines() {
        let (meta, name) = line.split_once("| ").with_context(|| format!("listing line: {line}"))?;
        let m: Vec<&str> = meta.split_whitespace().collect();
        ensure!(m.len() >= 2 && m[1] == "root:root", "not owned by root: {line}");
        let flags = m.get(2).copied().unwrap_or("");
        if flags.contains('c') {
            configs.push((name.to_owned(), flags.to_owned()));
        }
        let key = if m[0].starts_with('d') { format!("{name}/") } else { name.to_owned() };
        files.insert(key, m[0].to_owned());
    }
    let mut expected: BTreeMap<String, String> =
        FILES.iter().map(|(p, m)| ((*p).to_owned(), (*m).to_owned())).collect();
    for page in MAN_PAGES {
        expected.insert(format!("/usr/share/man/man1/{page}.1.gz"), "-rw-r--r--".into());
    }
    ensure!(files == expected, "package files differ:\n got: {files:#?}\nwant: {expected:#?}");
    ensure!(
        configs == [("/etc/imds-guard/policy.toml".to_owned(), "cn".to_owned())],
        "the policy must be the one %config(noreplace) file: {configs:?}"
    );

    // Scriptlets: all four, valid sh, each doing its part.
    let scripts = query(rpm, &["--scripts"])?;
    let sections = scriptlets(&scripts);
    let dir = tempdir("rpm-scripts")?;
    for (name, must) in [
        ("preinstall", &["groupadd --system imds-guard", "useradd --system"][..]),
        ("postinstall", &["preset imds-guard.service", "systemctl start imds-guard.service"][..]),
        ("preuninstall", &["systemctl stop imds-guard.service", "disable", "imds-guard unload"][..]),
        ("postuninstall", &["try-restart imds-guard.service", "rm -rf /var/lib/imds-guard"][..]),
    ] {
        let body = sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_str())
            .with_context(|| format!("no {name} scriptlet:\n{scripts}"))?;
        let p = dir.0.join(name);
        std::fs::write(&p, body)?;
        output(Command::new("sh").arg("-n").arg(&p)).with_context(|| format!("{name} is not valid sh"))?;
        for m in must {
            ensure!(body.contains(m), "{name} does not contain `{m}`:\n{body}");
        }
    }

    // Contents: the repository's unit and policy, this build's binary and completions (by digest).
    let dump = query(rpm, &["--dump"])?;
    let digest_of = |path: &str| -> Option<String> {
        dump.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&path)).then(|| f.get(3).map(|d| (*d).to_owned())).flatten()
        })
    };
    let mut same = vec![
        ("/usr/lib/systemd/system/imds-guard.service", root().join("systemd/imds-guard.service")),
        ("/etc/imds-guard/policy.toml", root().join("systemd/policy.toml")),
        ("/usr/bin/imds-guard", root().join("target/release/imds-guard")),
    ];
    for (shell, file, _) in COMPLETIONS {
        same.push((completion_path(shell), root().join("target/assets/completions").join(file)));
    }
    for (packaged, source) in same {
        let want = sha256(&source)?;
        ensure!(
            digest_of(packaged).as_deref() == Some(want.as_str()),
            "{packaged} is not {} (sha256 {want}):\n{dump}",
            source.display()
        );
    }
    println!(
        "rpm: needs glibc >= {}.{} (Amazon Linux 2023: {}.{}); {} files",
        glibc.0,
        glibc.1,
        MAX_GLIBC.0,
        MAX_GLIBC.1,
        files.len()
    );
    Ok(())
}

/// `rpm --scripts` output split into (`preinstall`, body) sections.
pub fn scriptlets(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_suffix("):")
            && let Some((name, _)) = rest.split_once(" scriptlet (using ")
            && !name.contains(' ')
        {
            out.push((name.to_owned(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

/// scripts/rpm-roundtrip.sh in a private mount namespace; root only (under CI=true, required).
/// The upgrade goes to a release 2 of the same files, built here.
fn roundtrip(rpm: &Path) -> anyhow::Result<()> {
    let is_root = output(Command::new("id").arg("-u"))?.trim() == "0";
    if !is_root {
        ensure!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "CI=true: the install/upgrade/erase round trip needs root"
        );
        println!("SKIPPED the install/upgrade/erase round trip: it needs root");
        return Ok(());
    }
    let upgrade_dir = tempdir("rpm-upgrade")?;
    let upgrade = build(&upgrade_dir.0, "2")?;
    let host_bin = Path::new("/usr/bin/imds-guard");
    let had_host_bin = host_bin.exists();
    // With rpm, then with dnf as the README says (its repository: a stand-in for AL2023's).
    let repo = tempdir("rpm-repo")?;
    stand_in_repo(rpm, &repo.0)?;
    for repo in [None, Some(&repo.0)] {
        let dir = tempdir("rpm-root")?;
        let mut args = vec![rpm.as_os_str(), upgrade.as_os_str(), dir.0.as_os_str()];
        args.extend(repo.map(|r| r.as_os_str()));
        crate::deb::round_trip("scripts/rpm-roundtrip.sh", &args)?;
    }
    ensure!(host_bin.exists() == had_host_bin, "the round trip changed this machine's /usr/bin/imds-guard");
    Ok(())
}

/// A dnf repository in `dir` holding one package that provides everything `rpm` requires but
/// rpm's own features: what Amazon Linux 2023's repositories would (no repository of theirs is
/// reachable here), for `dnf install ./imds-guard-….rpm` to resolve.
fn stand_in_repo(rpm: &Path, dir: &Path) -> anyhow::Result<()> {
    for (tool, pkg) in [("dnf", "dnf"), ("createrepo_c", "createrepo-c")] {
        ensure!(
            Command::new(tool).arg("--version").output().is_ok_and(|o| o.status.success()),
            "{tool} is not installed; run scripts/bootstrap.sh (Debian package `{pkg}`)"
        );
    }
    let requires = query(rpm, &["--requires"])?;
    let mut provides: Vec<&str> = requires
        .lines()
        .map(str::trim)
        .filter(|r| !r.is_empty() && !r.starts_with("rpmlib(") && !r.starts_with("config("))
        .collect();
    provides.sort_unstable();
    provides.dedup();
    let top = tempdir("rpm-stand-in")?;
    let spec = top.0.join("stand-in.spec");
    let mut text = String::from(
        "Name: imdsg-al2023-stand-in\nVersion: 2023\nRelease: 1\nLicense: MIT\nBuildArch: noarch\n\
         Summary: Stands for the Amazon Linux 2023 packages imds-guard requires\n",
    );
    for p in provides {
        text.push_str(&format!("Provides: {p}\n"));
    }
    text.push_str("%description\nA test repository's stand-in.\n%files\n");
    std::fs::write(&spec, text)?;
    rpmbuild(&spec, &top.0, dir, &[]).context("rpmbuild of the stand-in")?;
    output(Command::new("createrepo_c").arg("--quiet").arg(dir)).context("createrepo_c")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_versions_and_scriptlets_are_read() {
        let req = "libc.so.6()(64bit)\nlibc.so.6(GLIBC_2.2.5)(64bit)\nlibc.so.6(GLIBC_2.34)(64bit)\n\
                   libc.so.6(GLIBC_2.9)(64bit)\nnftables\n";
        assert_eq!(newest_glibc(req), Some((2, 34)));
        assert_eq!(newest_glibc("nftables\n"), None);
        let s = "preinstall scriptlet (using /bin/sh):\na\nb\npostinstall scriptlet (using /bin/sh):\nc\n";
        assert_eq!(
            scriptlets(s),
            [("preinstall".to_owned(), "a\nb\n".to_owned()), ("postinstall".to_owned(), "c\n".to_owned())]
        );
    }
}
