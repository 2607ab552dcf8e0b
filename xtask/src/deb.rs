//! `cargo xtask deb`: builds the Debian package with cargo-deb (`[package.metadata.deb]` in
//! imds-guard/Cargo.toml) and checks it: control fields, the exact file list with modes, the
//! conffile, the maintainer scripts, that the packaged unit and policy are the repository's, the
//! binary runs, and the shell completions and man pages (made from the clap definitions before
//! packaging, by the release binary itself) are there and are the binary's; then, as root, installs, removes and purges it in a throwaway root
//! (scripts/deb-roundtrip.sh in a private mount namespace), never on this machine's own root.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

use crate::root;

/// Every file the package installs besides the man pages, with its mode (directories are not
/// listed).
const FILES: [(&str, &str); 11] = [
    ("./etc/imds-guard/policy.toml", "-rw-r--r--"),
    ("./usr/bin/imds-guard", "-rwxr-xr-x"),
    ("./usr/lib/systemd/system/imds-guard.service", "-rw-r--r--"),
    ("./usr/share/bash-completion/completions/imds-guard", "-rw-r--r--"),
    ("./usr/share/doc/imds-guard/EVENTS.md", "-rw-r--r--"),
    ("./usr/share/doc/imds-guard/POLICY.md", "-rw-r--r--"),
    ("./usr/share/doc/imds-guard/README.md", "-rw-r--r--"),
    ("./usr/share/doc/imds-guard/SECURITY.md", "-rw-r--r--"),
    ("./usr/share/doc/imds-guard/copyright", "-rw-r--r--"),
    ("./usr/share/fish/vendor_completions.d/imds-guard.fish", "-rw-r--r--"),
    ("./usr/share/zsh/vendor-completions/_imds-guard", "-rw-r--r--"),
];

/// The man pages: the command's and one per subcommand, gzipped (Debian policy 12.1).
pub const MAN_PAGES: [&str; 9] = [
    "imds-guard",
    "imds-guard-check",
    "imds-guard-events",
    "imds-guard-explain",
    "imds-guard-prepare",
    "imds-guard-run",
    "imds-guard-status",
    "imds-guard-suggest",
    "imds-guard-unload",
];

/// Completion scripts: shell, file in target/assets/completions, where the package puts it.
pub const COMPLETIONS: [(&str, &str, &str); 3] = [
    ("bash", "imds-guard", "usr/share/bash-completion/completions/imds-guard"),
    ("zsh", "_imds-guard", "usr/share/zsh/vendor-completions/_imds-guard"),
    ("fish", "imds-guard.fish", "usr/share/fish/vendor_completions.d/imds-guard.fish"),
];

pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn deb() -> anyhow::Result<()> {
    assets()?;
    let deb = build()?;
    println!("built {}", deb.display());
    check(&deb)?;
    println!(
        "checked: control fields, files and modes, conffile, maintainer scripts, unit, policy, binary, completions, man pages"
    );
    roundtrip(&deb)
}

/// The release binary, and the completions and man pages it makes of its clap definitions, in
/// target/assets/ (where `[package.metadata.deb]` takes them from).
pub fn assets() -> anyhow::Result<()> {
    crate::cargo(&["build", "--release", "-p", "imds-guard", "--bin", "imds-guard"])?;
    assets_of(&root().join("target/release/imds-guard"), &root().join("target/assets"))
}

/// The completions and gzipped man pages that `bin` makes, in `dir` (replaced).
pub fn assets_of(bin: &Path, dir: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("completions"))?;
    for (shell, file, _) in COMPLETIONS {
        let script = output(Command::new(bin).args(["completions", shell]))?;
        std::fs::write(dir.join("completions").join(file), script)?;
    }
    output(Command::new(bin).arg("manpages").arg(dir.join("man")))?;
    // Every page the binary wrote (`check` holds this build's to MAN_PAGES; an earlier release's
    // binary may have other subcommands).
    for page in std::fs::read_dir(dir.join("man"))? {
        let page = page?.path();
        if page.extension().is_some_and(|e| e == "1") {
            // -n: no name or time stamp in the header, so the package is reproducible.
            output(Command::new("gzip").args(["-9nf"]).arg(&page))?;
        }
    }
    Ok(())
}

/// `cargo deb`, which builds imds-guard in release mode and prints the package's path last.
pub fn build() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let probe = Command::new(&cargo).args(["deb", "--version"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        bail!("cargo-deb is not installed; run scripts/bootstrap.sh (or ./x deb)");
    }
    let out = output(Command::new(&cargo).args(["deb", "-p", "imds-guard"]).current_dir(root()))?;
    let path = out
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with(".deb"))
        .context("cargo deb printed no .deb path")?;
    Ok(PathBuf::from(path.trim()))
}

fn check(deb: &Path) -> anyhow::Result<()> {
    // Control fields.
    let field = |name: &str| -> anyhow::Result<String> {
        Ok(output(Command::new("dpkg-deb").args(["--field"]).arg(deb).arg(name))?.trim().to_owned())
    };
    let version = env!("CARGO_PKG_VERSION");
    ensure!(field("Package")? == "imds-guard", "Package: {}", field("Package")?);
    ensure!(field("Version")? == format!("{version}-1"), "Version: {}", field("Version")?);
    ensure!(field("Architecture")? == "amd64", "Architecture: {}", field("Architecture")?);
    ensure!(field("Section")? == "admin", "Section: {}", field("Section")?);
    ensure!(field("Maintainer")?.contains('@'), "Maintainer: {}", field("Maintainer")?);
    let depends = field("Depends")?;
    ensure!(depends.contains("libc6"), "Depends should name the C library: {depends}");
    // The daemon runs `nft` (the forward table) at start and on every reload.
    ensure!(depends.split(", ").any(|d| d == "nftables"), "Depends should name nftables: {depends}");

    // Files and modes, owned by root.
    let listing = output(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    let mut files = BTreeMap::new();
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        ensure!(f.len() >= 6 && (f[1] == "root/root" || f[1] == "0/0"), "not owned by root: {line}");
        if !f[0].starts_with('d') {
            files.insert(f[5].to_owned(), f[0].to_owned());
        }
    }
    let mut expected: BTreeMap<String, String> =
        FILES.iter().map(|(p, m)| ((*p).to_owned(), (*m).to_owned())).collect();
    for page in MAN_PAGES {
        expected.insert(format!("./usr/share/man/man1/{page}.1.gz"), "-rw-r--r--".into());
    }
    ensure!(files == expected, "package files differ:\n got: {files:#?}\nwant: {expected:#?}");

    // Control archive: the conffile and the maintainer scripts (cargo-deb's systemd snippets plus
    // ours), all valid shell.
    let ctl = tempdir("ctl")?;
    output(Command::new("dpkg-deb").arg("--control").arg(deb).arg(&ctl.0))?;
    let conffiles = std::fs::read_to_string(ctl.0.join("conffiles")).context("no conffiles")?;
    ensure!(conffiles.trim() == "/etc/imds-guard/policy.toml", "conffiles: {conffiles}");
    for script in ["postinst", "prerm", "postrm"] {
        let p = ctl.0.join(script);
        let text = std::fs::read_to_string(&p).with_context(|| format!("no {script}"))?;
        output(Command::new("sh").arg("-n").arg(&p)).with_context(|| format!("{script} is not valid sh"))?;
        ensure!(!text.contains("#DEBHELPER#"), "{script}: the systemd snippet was not filled in");
        let must = match script {
            "postinst" => &["deb-systemd-helper", "enable", "useradd --system"][..],
            "prerm" => &["imds-guard unload", "deb-systemd-invoke stop"][..],
            _ => &["deb-systemd-helper purge", "rm -rf /var/lib/imds-guard"][..],
        };
        for m in must {
            ensure!(text.contains(m), "{script} does not contain `{m}`:\n{text}");
        }
    }

    // The files themselves: the repository's unit and policy, a binary that runs.
    let x = tempdir("x")?;
    output(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&x.0))?;
    for (packaged, source) in [
        ("usr/lib/systemd/system/imds-guard.service", "systemd/imds-guard.service"),
        ("etc/imds-guard/policy.toml", "systemd/policy.toml"),
    ] {
        ensure!(
            std::fs::read(x.0.join(packaged))? == std::fs::read(root().join(source))?,
            "{packaged} is not {source}"
        );
    }
    let bin = x.0.join("usr/bin/imds-guard");
    let v = output(Command::new(&bin).arg("-V"))?;
    ensure!(v.trim() == format!("imds-guard {version}"), "-V: {v}");
    let v = output(Command::new(&bin).arg("--version"))?;
    ensure!(
        v.starts_with(&format!("imds-guard {version} (commit ")) && v.contains("\neBPF object: sha256:"),
        "--version names the build and the eBPF object's digest: {v}"
    );
    check_docs(&bin, &x.0)?;
    let check =
        output(Command::new(&bin).args(["check", "--config"]).arg(x.0.join("etc/imds-guard/policy.toml")))?;
    ensure!(check.contains("mode: monitor"), "the example policy is not in monitor mode:\n{check}");
    Ok(())
}

/// The completions are what the packaged binary makes; the man pages are gzipped roff that names
/// the options `--help` does.
fn check_docs(bin: &Path, x: &Path) -> anyhow::Result<()> {
    for (shell, _, packaged) in COMPLETIONS {
        let want = output(Command::new(bin).args(["completions", shell]))?;
        ensure!(
            std::fs::read_to_string(x.join(packaged))? == want,
            "{packaged} is not `imds-guard completions {shell}`"
        );
    }
    let run = output(Command::new("gzip").arg("-dc").arg(x.join("usr/share/man/man1/imds-guard-run.1.gz")))?;
    ensure!(
        run.starts_with(".ie") || run.contains(".TH imds-guard-run"),
        "imds-guard-run.1 is not a man page:\n{run}"
    );
    ensure!(run.contains("event\\-format"), "imds-guard-run.1 does not name --event-format");
    Ok(())
}

/// scripts/deb-roundtrip.sh in a private mount namespace; root only (under CI=true, required).
fn roundtrip(deb: &Path) -> anyhow::Result<()> {
    let is_root = output(Command::new("id").arg("-u"))?.trim() == "0";
    if !is_root {
        ensure!(
            !std::env::var("CI").is_ok_and(|v| v == "true"),
            "CI=true: the install/remove/purge round trip needs root"
        );
        println!("SKIPPED the install/remove/purge round trip: it needs root");
        return Ok(());
    }
    let host_bin = Path::new("/usr/bin/imds-guard");
    let had_host_bin = host_bin.exists();
    let dir = tempdir("root")?;
    round_trip("scripts/deb-roundtrip.sh", &[deb.as_os_str(), dir.0.as_os_str()])?;
    ensure!(host_bin.exists() == had_host_bin, "the round trip changed this machine's /usr/bin/imds-guard");
    Ok(())
}

/// Runs a package round-trip script (scripts/*-roundtrip.sh) with `args`, in a mount namespace
/// of its own (the mounts it makes in its throwaway root go with it), and prints what it said.
pub fn round_trip(script: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    output(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh"])
            .arg(root().join(script))
            .args(args),
    )
    .map(|out| print!("{out}"))
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

pub fn tempdir(what: &str) -> anyhow::Result<TempDir> {
    let p = std::env::temp_dir().join(format!("imdsg-deb-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p)?;
    Ok(TempDir(p))
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
