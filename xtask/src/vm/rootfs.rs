//! The guests' root: one Debian bookworm file system made with `mmdebstrap --variant=minbase`
//! (cached in `target/vm/rootfs-<key>/`, the key a hash of the package list and this recipe), and
//! one ext4 image of it with every matrix kernel's modules in `/usr/lib/modules/<release>`
//! (depmod run in a chroot), the matrix's init, `/sbin/imdsg-init`, and the real-host checks'
//! `imdsg-host.service` with its `/sbin/imdsg-host` (cached as
//! `target/vm/root-<key>.img`, the key adding the kernels and the init). The image is made with
//! `mke2fs -d`, no loop mount; guests boot it with `snapshot=on`, so it never changes.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, ensure};
use sha2::{Digest as _, Sha256};

use super::{guest::set_mode, kernels::Kernel, run_quiet, vm_dir};

pub const SUITE: &str = "bookworm";

/// What the privileged tests use (iproute2, curl, python3 + botocore, nftables, util-linux's
/// setpriv, procps, kmod for modprobe, bpftool, iptables, passwd's useradd), plus systemd, udev
/// and dbus so that the same image can boot with systemd as PID 1 (the real-host checks), and for
/// their containers podman (with crun, conmon and a network stack as its dependencies) and
/// busybox-static, the one program of the containers' local root directory.
pub const PACKAGES: [&str; 18] = [
    "iproute2",
    "curl",
    "python3",
    "python3-botocore",
    "nftables",
    "iptables",
    "util-linux",
    "procps",
    "kmod",
    "bpftool",
    "passwd",
    "systemd",
    "systemd-sysv",
    "dbus",
    "udev",
    "e2fsprogs",
    "podman",
    "busybox-static",
];

/// Changes to what `customize` does must change this, so that caches are rebuilt.
const RECIPE: &str = "rootfs-v1";

/// The matrix's PID 1 in the image.
pub const INIT_SH: &str = include_str!("init.sh");
pub const INIT_PATH: &str = "/sbin/imdsg-init";

/// The real-host checks' entry (`vm-test --host`, systemd as PID 1): a unit in the image that only
/// a `systemd.wants=imdsg-host.service` on the kernel command line starts, and the script it runs.
pub const HOST_BOOT_SH: &str = include_str!("host-boot.sh");
pub const HOST_BOOT_PATH: &str = "/sbin/imdsg-host";
pub const HOST_UNIT_NAME: &str = "imdsg-host.service";
pub const HOST_UNIT: &str = "\
[Unit]
Description=imds-guard VM host checks (cargo xtask vm-test --host)
# Once the boot's own units, imds-guard among them, have started.
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/sbin/imdsg-host
# The checks reboot the guest once and take minutes under TCG; the host side keeps the time limit.
TimeoutStartSec=infinity
StandardOutput=journal+console
StandardError=journal+console
";

/// The image's size (a sparse file; the guest's writes go to QEMU's snapshot, not here).
const IMAGE_SIZE: &str = "3G";

fn key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    super::kernels::hex(&h.finalize()[..8])
}

/// The cache key of the file system: the suite, the package list and the recipe.
pub fn rootfs_key() -> String {
    let mut parts = vec![SUITE, RECIPE];
    parts.extend(PACKAGES);
    key(&parts)
}

/// The cache key of the image: the file system, each kernel (package, version, hash) and the init.
pub fn image_key(kernels: &[Kernel]) -> String {
    let fs = rootfs_key();
    let mut parts = vec![fs.as_str(), INIT_SH, HOST_BOOT_SH, HOST_UNIT];
    for k in kernels {
        parts.extend([k.package, k.version, k.sha256]);
    }
    key(&parts)
}

/// The file system, built when it is not cached.
pub fn rootfs() -> anyhow::Result<PathBuf> {
    let dir = vm_dir().join(format!("rootfs-{}", rootfs_key()));
    if dir.join(".complete").is_file() {
        return Ok(dir);
    }
    remove_stale("rootfs-", &dir)?;
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    let mirror =
        std::env::var("IMDSG_VM_MIRROR").unwrap_or_else(|_| super::kernels::DEFAULT_MIRROR.to_owned());
    eprintln!("[vm] building the guest root file system (mmdebstrap {SUITE}, {} packages)", PACKAGES.len());
    let t = std::time::Instant::now();
    run_quiet(
        Command::new("mmdebstrap")
            .args(["--quiet", "--mode=root", "--variant=minbase", "--format=directory"])
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg("--aptopt=Acquire::Languages \"none\"")
            .args(["--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/locale/*"])
            .args([
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            ])
            .arg(SUITE)
            .arg(&tmp)
            .arg(&mirror),
    )?;
    customize(&tmp)?;
    std::fs::write(tmp.join(".complete"), rootfs_key())?;
    std::fs::rename(&tmp, &dir)?;
    eprintln!("[vm] root file system built in {:.0} s: {}", t.elapsed().as_secs_f64(), dir.display());
    Ok(dir)
}

/// What a guest needs beyond the packages: a machine id, a hostname, and no unit that would wait
/// on the console when systemd boots it.
fn customize(root: &Path) -> anyhow::Result<()> {
    // A fixed id: the image is one machine, booted again and again.
    std::fs::write(root.join("etc/machine-id"), "8f2c0e7a4b1d4f6e9a3c5b7d2e1f0a9b\n")?;
    std::fs::write(root.join("etc/hostname"), "imdsg-vm\n")?;
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost imdsg-vm\n::1 localhost ip6-localhost\n")?;
    std::fs::write(root.join("etc/fstab"), "# the root is mounted by the kernel (root=/dev/nvme0n1 rw)\n")?;
    let units = root.join("etc/systemd/system");
    std::fs::create_dir_all(&units)?;
    for u in [
        "systemd-firstboot.service",
        "serial-getty@ttyS0.service",
        "serial-getty@ttyS1.service",
        "getty@tty1.service",
    ] {
        let p = units.join(u);
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink("/dev/null", &p)?;
    }
    Ok(())
}

/// The root image for `kernels` (all of the matrix), built when it is not cached.
pub fn image(kernels: &[Kernel]) -> anyhow::Result<PathBuf> {
    let img = vm_dir().join(format!("root-{}.img", image_key(kernels)));
    let done = img.with_extension("img.complete");
    if img.is_file() && done.is_file() {
        return Ok(img);
    }
    let fs = rootfs()?;
    remove_stale("root-", &img)?;
    let t = std::time::Instant::now();
    // A staging tree of hard links to the cached file system (nothing in it is written to: the
    // modules, depmod's files and the init are new files), then the image of it.
    let staging = vm_dir().join("root-staging");
    let _ = std::fs::remove_dir_all(&staging);
    run_quiet(Command::new("cp").arg("-al").arg(&fs).arg(&staging))?;
    let result = (|| -> anyhow::Result<()> {
        let _ = std::fs::remove_file(staging.join(".complete"));
        let mods = staging.join("usr/lib/modules");
        std::fs::create_dir_all(&mods)?;
        for k in kernels {
            run_quiet(Command::new("cp").arg("-a").arg(k.modules()?).arg(mods.join(k.release())))?;
            run_quiet(Command::new("chroot").arg(&staging).args(["depmod", "-a", k.release()]))
                .with_context(|| format!("depmod for {}", k.release()))?;
            ensure!(mods.join(k.release()).join("modules.dep").is_file(), "depmod wrote no modules.dep");
        }
        let init = staging.join(INIT_PATH.trim_start_matches('/'));
        std::fs::write(&init, INIT_SH)?;
        set_mode(&init, 0o755)?;
        let host_boot = staging.join(HOST_BOOT_PATH.trim_start_matches('/'));
        std::fs::write(&host_boot, HOST_BOOT_SH)?;
        set_mode(&host_boot, 0o755)?;
        std::fs::write(staging.join("etc/systemd/system").join(HOST_UNIT_NAME), HOST_UNIT)?;
        let _ = std::fs::remove_file(&img);
        run_quiet(
            Command::new("mke2fs")
                .args(["-q", "-F", "-t", "ext4", "-L", "imdsg-root", "-d"])
                .arg(&staging)
                .arg(&img)
                .arg(IMAGE_SIZE),
        )?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result?;
    std::fs::write(&done, "")?;
    eprintln!("[vm] root image built in {:.0} s: {}", t.elapsed().as_secs_f64(), img.display());
    Ok(img)
}

/// Removes older caches named `<prefix>*` beside `keep` (another package list or kernel set).
fn remove_stale(prefix: &str, keep: &Path) -> anyhow::Result<()> {
    let keep_name = keep.file_name().unwrap_or_default().to_string_lossy().into_owned();
    for e in std::fs::read_dir(vm_dir())?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && !name.starts_with(&keep_name) {
            let p = e.path();
            eprintln!("[vm] removing the stale cache {}", p.display());
            if p.is_dir() { std::fs::remove_dir_all(&p)? } else { std::fs::remove_file(&p)? }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_what_they_cache() {
        let k = super::super::kernels::KERNELS;
        assert_eq!(rootfs_key().len(), 16);
        assert_eq!(image_key(&k), image_key(&k));
        assert_ne!(image_key(&k), image_key(&k[..2]));
        let mut bumped = k;
        bumped[0].version = "5.10.224-1";
        assert_ne!(image_key(&k), image_key(&bumped));
    }
}
