//! `cargo xtask vm-test --host`: imds-guard on a real host. Boots the bookworm image with systemd
//! as PID 1 (Debian's 6.12 cloud kernel by default, no network device) and runs `host.sh` in it
//! (through the image's `imdsg-host.service`): the .deb built by `cargo xtask deb` installed with
//! `dpkg -i` as the README says, the service's user and capabilities, an enforce policy and
//! `systemctl reload`, denied and allowed identities against a fake IMDS on the guest's own `lo`,
//! stop/start/restart, `systemd-analyze security`, a workload unit's first attempt at boot after a
//! reboot, `dpkg -r` and `-P`, and last the upgrade from the previous release's package
//! (`crate::previous`) to this one under a connect storm. One line per check (docs/HOSTS.md).
//!
//! What is cached under target/vm is the matrix's (kernels, root image), and under target/prev
//! the previous release's package; the run adds only its payload disk (the .debs, `host.sh`,
//! `host.py`).

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, bail, ensure};

use super::{Live, Ran, guest, kernels, qemu, results, rootfs, run_quiet, vm_dir};

/// The guest's checks, in the order it runs them (up to `early-unit` before the reboot).
pub const CHECKS: [&str; 19] = [
    "systemd",
    "install",
    "user-caps",
    "fake-imds",
    "enforce-reload",
    "denied",
    "root-allowed",
    "stop-keeps",
    "start-adopts",
    "restart-no-window",
    "upgrade-no-window",
    "security",
    "early-unit",
    "boot-order",
    "container-denied",
    "container-rule",
    "remove",
    "purge",
    "upgrade-from-previous",
];

pub const HOST_SH: &str = include_str!("host.sh");
pub const HOST_PY: &str = include_str!("host.py");
/// The label of the guest's lines.
const LABEL: &str = "host";
/// The kernel booted unless `--kernel` says otherwise (AL2023's newer kernel, Bottlerocket's).
pub const DEFAULT_KERNEL: &str = "6.12";
/// The whole VM's limit: two systemd boots under TCG and the checks (268-502 s measured; with
/// another session's QEMU on the same two cores the second boot alone took over 300 s).
const TIMEOUT: Duration = Duration::from_secs(1200);
/// The longest silence of a booted guest: a check, or the reboot between the two phases.
const IDLE_TIMEOUT: Duration = Duration::from_secs(600);

pub fn run(kernel_labels: &[String], keep: bool, append: Option<&str>) -> anyhow::Result<()> {
    super::check_tools()?;
    let labels =
        if kernel_labels.is_empty() { vec![DEFAULT_KERNEL.to_owned()] } else { kernel_labels.to_vec() };
    let selected = kernels::select(&labels)?;
    // The packages first (release builds; cargo-deb), outside the VM lock. The previous
    // release's first: its build shares target/ and leaves its binary in target/release/, which
    // this build's then replaces (checked below).
    let previous = crate::previous::deb()?;
    crate::deb::assets()?;
    let deb = crate::deb::build()?;
    check_builds(&deb, &previous)?;
    let _lock = super::lock()?;
    let t = std::time::Instant::now();
    for k in &kernels::KERNELS {
        kernels::fetch(k)?;
    }
    let root_img = rootfs::image(&kernels::KERNELS)?;
    let names: Vec<String> = CHECKS.iter().map(|c| (*c).to_owned()).collect();
    let mut reports = Vec::new();
    for k in &selected {
        let run_dir = vm_dir().join("runs").join(format!("host-{}", k.label));
        std::fs::create_dir_all(&run_dir)?;
        let payload_dir = run_dir.join("payload");
        let payload_img = run_dir.join("payload.img");
        payload(&payload_dir, &payload_img, &deb, &previous)?;
        // The guest's own copy of the root image (sparse: ~3 s), booted writable so that what
        // the first boot installed is there after the reboot, in a new QEMU (qemu.rs).
        let host_root = run_dir.join("root.img");
        run_quiet(Command::new("cp").arg("--sparse=always").arg(&root_img).arg(&host_root))?;
        eprintln!("[vm host] booting {} with systemd as PID 1 ({} {})", k.release(), k.package, k.version);
        let vmlinuz = k.vmlinuz();
        // nowatchdog: under TCG on a loaded host the emulated CPUs starve for tens of seconds
        // (systemd zeroing pages "stuck for 47 s"), which the soft-lockup detector reports as a
        // kernel BUG and results.rs rightly fails; that is the host's load, not the guest.
        let cmdline = format!("systemd.wants={} nowatchdog {}", rootfs::HOST_UNIT_NAME, append.unwrap_or(""));
        let start = std::time::Instant::now();
        let boot = |timeout: Duration| qemu::Boot {
            vmlinuz: &vmlinuz,
            root_img: &host_root,
            payload_img: &payload_img,
            run_dir: &run_dir,
            timeout,
            boot_timeout: Duration::from_secs(240),
            idle_timeout: IDLE_TIMEOUT,
            init: "/lib/systemd/systemd",
            append: &cmdline,
            root_writable: true,
        };
        let mut live = Live { label: LABEL, shown: Vec::new() };
        let mut outcome = qemu::boot(&boot(TIMEOUT), |line| live.line(line))?;
        // The guest's reboot between the two phases ends the first QEMU (an orderly reboot: the
        // kernel's "reboot: Restarting system", no result line saying it is done).
        let done = |lines: &str| {
            lines.lines().any(|l| matches!(results::parse_line(l), Some(results::Line::Done { .. })))
        };
        if outcome.end == results::End::Exited
            && !done(&outcome.lines)
            && outcome.console.contains("reboot: Restarting system")
        {
            eprintln!("[vm host] the guest rebooted: booting its root image again");
            let second = qemu::boot_again(&boot(TIMEOUT.saturating_sub(start.elapsed())), true, |line| {
                live.line(line)
            })?;
            outcome.lines.push_str(&second.lines);
            outcome.console.push_str(&second.console);
            outcome.end = second.end;
            outcome.wall += second.wall;
        }
        if keep {
            eprintln!("[vm host] kept the guest's root image {}", host_root.display());
        } else {
            let _ = std::fs::remove_file(&host_root);
        }
        let mut report =
            results::evaluate(LABEL, k.release(), &names, &outcome.lines, &outcome.console, &outcome.end);
        report.label = format!("{LABEL}-{}", k.label);
        if !report.ok() && (report.booted.is_none() || !report.vm_failures.is_empty()) {
            eprintln!(
                "[vm host] the kernel console's last lines ({}):",
                run_dir.join("console.log").display()
            );
            for l in outcome.console.lines().rev().take(12).collect::<Vec<_>>().iter().rev() {
                eprintln!("[vm host]   > {l}");
            }
        }
        if keep {
            eprintln!(
                "[vm host] kept {} (each check's output: debugfs -R 'cat /out/<check>.log' {})",
                payload_img.display(),
                payload_img.display()
            );
        } else {
            let _ = std::fs::remove_file(&payload_img);
            let _ = std::fs::remove_dir_all(&payload_dir);
        }
        reports.push(Ran { report, to_first_line: outcome.to_first_line, wall: outcome.wall });
    }
    println!();
    let failed = super::summary(&reports);
    println!(
        "vm-test --host: {:.0} s in all; logs in {}",
        t.elapsed().as_secs_f64(),
        vm_dir().join("runs").display()
    );
    if !failed.is_empty() {
        bail!("vm-test --host failed on {}", failed.join(", "));
    }
    Ok(())
}

/// The payload disk: host.sh, host.py, the .deb in files/, the previous release's in
/// files/previous/, out/ for the checks' logs.
fn payload(dir: &Path, img: &Path, deb: &Path, previous: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    for d in ["files/previous", "out"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    for (from, to) in [(deb, "files"), (previous, "files/previous")] {
        let name = from.file_name().context("a .deb has no file name")?;
        std::fs::copy(from, dir.join(to).join(name))
            .with_context(|| format!("copying {}", from.display()))?;
    }
    upgrade_deb(deb, &dir.join("files/upgrade"))?;
    for (file, text, mode) in [("host.sh", HOST_SH, 0o755), ("host.py", HOST_PY, 0o644)] {
        std::fs::write(dir.join(file), text)?;
        guest::set_mode(&dir.join(file), mode)?;
    }
    let bytes = guest::du(dir)?;
    let mib = (bytes + bytes / 4) / (1 << 20) + 64;
    let _ = std::fs::remove_file(img);
    run_quiet(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-L", "imdsg-payload", "-d"])
            .arg(dir)
            .arg(img)
            .arg(format!("{mib}M")),
    )
}

/// That `deb` is this build's package and `previous` the previous release's: the binary in
/// `deb` names this checkout's commit (the previous release's build, in the same target
/// directory, must not have been packaged in its place), the two binaries differ, and dpkg
/// orders the previous version first (installing `deb` over it is an upgrade).
fn check_builds(deb: &Path, previous: &Path) -> anyhow::Result<()> {
    let head = crate::deb::output(
        Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).current_dir(crate::root()),
    )?;
    let (now, now_sha) = crate::previous::packaged_binary(deb)?;
    let (prev, prev_sha) = crate::previous::packaged_binary(previous)?;
    ensure!(
        now.contains(&format!("(commit {}", head.trim())),
        "{} does not hold this checkout's build (commit {}): {now}",
        deb.display(),
        head.trim()
    );
    ensure!(
        now_sha != prev_sha,
        "{} and {} hold the same binary ({now_sha})",
        deb.display(),
        previous.display()
    );
    let version = |p: &Path| {
        crate::deb::output(Command::new("dpkg-deb").args(["--field"]).arg(p).arg("Version"))
            .map(|v| v.trim().to_owned())
    };
    let (v_now, v_prev) = (version(deb)?, version(previous)?);
    run_quiet(Command::new("dpkg").args(["--compare-versions", &v_prev, "lt", &v_now]))
        .with_context(|| format!("the previous release's version {v_prev} is not before {v_now}"))?;
    eprintln!("[vm host] upgrading from {v_prev} ({prev}) to {v_now} ({now})");
    Ok(())
}

/// The version `upgrade-no-window` upgrades to.
pub const UPGRADE_SUFFIX: &str = "+vmupgrade1";

/// `deb` with its version raised by [`UPGRADE_SUFFIX`], in `dir` (made here rather than in the
/// guest, where unpacking and packing the binary under TCG took 30 s): the later version the
/// guest upgrades the live package to.
fn upgrade_deb(deb: &Path, dir: &Path) -> anyhow::Result<()> {
    let tree = dir.join("tree");
    std::fs::create_dir_all(dir)?;
    run_quiet(Command::new("dpkg-deb").arg("-R").arg(deb).arg(&tree))?;
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control)?;
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .context("the .deb's control file has no Version")?
        .to_owned();
    let raised = format!("{version}{UPGRADE_SUFFIX}");
    std::fs::write(
        &control,
        text.replace(&format!("Version: {version}\n"), &format!("Version: {raised}\n")),
    )?;
    let out = dir.join(format!("imds-guard_{raised}_amd64.deb"));
    let built = run_quiet(
        Command::new("dpkg-deb").args(["-Zgzip", "-z1", "--root-owner-group", "-b"]).arg(&tree).arg(&out),
    );
    std::fs::remove_dir_all(&tree)?;
    built
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_has_its_line_in_the_guest_script() {
        for c in CHECKS {
            assert!(HOST_SH.contains(&format!("\tcheck {c} c_")), "host.sh runs no check {c}");
        }
        assert_eq!(HOST_SH.matches("\tcheck ").count(), CHECKS.len(), "host.sh runs a check CHECKS lacks");
    }
}
