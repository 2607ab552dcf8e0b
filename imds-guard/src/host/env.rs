//! The host environment: where cgroup v2 and bpffs are (mounting them when the host has none), and
//! making sure the pin directory is on a bpffs so that pinned programs and maps outlive the daemon.
//! What the kernel itself must support is checked in [`crate::kernel::features`].

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Where imds-guard mounts a cgroup v2 hierarchy of its own when the host has none mounted (a pure
/// cgroup v1 host such as Amazon Linux 2). The hierarchy is the same everywhere it is mounted:
/// every process of a v1 host is in its root cgroup, which is what the hooks attach to.
pub const PRIVATE_CGROUP2: &str = "/run/imds-guard/cgroup2";

/// The cgroup v2 mount point, from /proc/self/mountinfo (`/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one, [`PRIVATE_CGROUP2`] once imds-guard mounted one).
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let root = cgroup2_root_from(&info).with_context(|| {
        format!(
            "no cgroup v2 filesystem is mounted on this host; run `imds-guard prepare` as root to mount one \
             at {PRIVATE_CGROUP2} (or mount one yourself: mount -t cgroup2 none {PRIVATE_CGROUP2})"
        )
    })?;
    not_a_namespace_view(&root)?;
    Ok(root)
}

/// In a cgroup namespace (an unprivileged container on a cgroup v2 host) the mount that looks like
/// the root is the namespace's own subtree: attaching there would judge only the container, and
/// every path would be off. Only non-root cgroups have `cgroup.events`.
fn not_a_namespace_view(root: &Path) -> anyhow::Result<()> {
    if root.join("cgroup.events").exists() {
        bail!(
            "the cgroup2 filesystem at {} is a cgroup namespace's view of a subtree, not the host's hierarchy: \
             run imds-guard in the host's cgroup namespace (in Kubernetes, a privileged container: containerd \
             and CRI-O give those the host's cgroup namespace)",
            root.display()
        );
    }
    Ok(())
}

/// How the cgroup v2 mount was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cgroup2 {
    /// Mounted by the host (or by an earlier `imds-guard prepare`).
    Found,
    /// None was mounted; imds-guard mounted one at [`PRIVATE_CGROUP2`] just now.
    Mounted,
}

/// The cgroup v2 mount point; when none is mounted, mounts one at [`PRIVATE_CGROUP2`] (which needs
/// CAP_SYS_ADMIN: without it, the error says to run `imds-guard prepare` as root first).
pub fn cgroup2_root_or_mount() -> anyhow::Result<(PathBuf, Cgroup2)> {
    let info = fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    if let Some(root) = cgroup2_root_from(&info) {
        not_a_namespace_view(&root)?;
        return Ok((root, Cgroup2::Found));
    }
    let dir = Path::new(PRIVATE_CGROUP2);
    fs::create_dir_all(dir).with_context(|| {
        format!("no cgroup v2 filesystem is mounted, and creating {} to mount one failed", dir.display())
    })?;
    tracing::info!(path = %dir.display(), "no cgroup v2 filesystem is mounted: mounting one");
    match nix::mount::mount(
        Some("cgroup2"),
        dir,
        Some("cgroup2"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    ) {
        Ok(()) => {}
        Err(nix::errno::Errno::EPERM) => bail!(
            "no cgroup v2 filesystem is mounted, and mounting one at {} needs CAP_SYS_ADMIN, which this \
             process does not have: run `imds-guard prepare` as root first (the systemd unit does, in \
             ExecStartPre=), or mount one yourself (mount -t cgroup2 none {})",
            dir.display(),
            dir.display()
        ),
        Err(nix::errno::Errno::ENODEV) => bail!(
            "this kernel has no cgroup v2 filesystem (Linux 4.5+, CONFIG_CGROUPS), which the connect \
             hooks are attached to"
        ),
        Err(e) => {
            bail!("no cgroup v2 filesystem is mounted, and mounting one at {} failed: {e}", dir.display())
        }
    }
    check_cgroup2_dir(dir)?;
    Ok((dir.to_owned(), Cgroup2::Mounted))
}

fn cgroup2_root_from(mountinfo: &str) -> Option<PathBuf> {
    super::mounts::parse(mountinfo)
        .into_iter()
        .find(|m| m.fstype == "cgroup2" && m.root == Path::new("/"))
        .map(|m| m.mount_point)
}

fn fs_magic(path: &Path) -> anyhow::Result<i64> {
    let st = nix::sys::statfs::statfs(path).with_context(|| format!("statfs {}", path.display()))?;
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    Ok(st.filesystem_type().0 as i64)
}

/// Checks that `dir` is a cgroup v2 directory.
pub fn check_cgroup2_dir(dir: &Path) -> anyhow::Result<()> {
    if !dir.is_dir() {
        bail!("cgroup {} does not exist", dir.display());
    }
    if fs_magic(dir)? != CGROUP2_SUPER_MAGIC {
        bail!("{} is not a cgroup v2 directory (the connect hooks need cgroup v2)", dir.display());
    }
    Ok(())
}

/// The cgroup id (as `bpf_get_current_cgroup_id` reports it) of a cgroup v2 directory.
pub fn cgroup_id(dir: &Path) -> anyhow::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(fs::metadata(dir).with_context(|| format!("stat {}", dir.display()))?.ino())
}

/// Makes sure `pin_dir`'s parent is on a bpffs, so that what is pinned there outlives the
/// daemon; when it is not and `may_mount`, mounts one there (returns whether it did).
pub fn ensure_bpffs(pin_dir: &Path, may_mount: bool) -> anyhow::Result<bool> {
    let mut mounted = false;
    let parent = pin_dir.parent().context("the pin directory has no parent")?;
    if !parent.exists() {
        bail!("{} does not exist (the pin directory's parent must be on a bpffs)", parent.display());
    }
    if fs_magic(parent)? != BPF_FS_MAGIC {
        if may_mount {
            tracing::info!(path = %parent.display(), "mounting bpffs");
            nix::mount::mount(
                Some("bpf"),
                parent,
                Some("bpf"),
                nix::mount::MsFlags::MS_NOSUID
                    | nix::mount::MsFlags::MS_NODEV
                    | nix::mount::MsFlags::MS_NOEXEC,
                Some("mode=0700"),
            )
            .map_err(|e| match e {
                nix::errno::Errno::EPERM => anyhow::anyhow!(
                    "no bpffs is mounted on {0}, and mounting one needs CAP_SYS_ADMIN, which this process \
                     does not have: run `imds-guard prepare` as root first (the systemd unit does, in \
                     ExecStartPre=), or mount it yourself (mount -t bpf bpf {0})",
                    parent.display()
                ),
                nix::errno::Errno::ENODEV => anyhow::anyhow!(
                    "this kernel has no bpf filesystem (CONFIG_BPF_SYSCALL), where enforcement is pinned"
                ),
                e => anyhow::anyhow!("mounting bpffs on {}: {e}", parent.display()),
            })?;
            mounted = true;
        } else {
            bail!(
                "{} is not on a bpffs, so pins there would not survive the daemon; \
                 mount one (mount -t bpf bpf {}) or choose another --pin-dir",
                parent.display(),
                parent.display()
            );
        }
    }
    Ok(mounted)
}

/// How far processes may debug one another (Yama's `kernel.yama.ptrace_scope`), and what that
/// means for `exe` and `cgroup` rules: a process that can attach a debugger to an allowed one can
/// make it fetch credentials. (level, sentence); level `None` when Yama is not there.
#[must_use]
pub fn ptrace_scope() -> (Option<u8>, &'static str) {
    let level =
        fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").ok().and_then(|s| s.trim().parse().ok());
    let why = match level {
        None | Some(0) => {
            "any process may attach a debugger to any other of its uid (no Yama, or kernel.yama.ptrace_scope = 0): \
             exe and cgroup rules do not stand against code that runs as the same uid as an allowed process; set \
             kernel.yama.ptrace_scope = 1 or higher"
        }
        Some(1) => {
            "a process may attach a debugger only to its own descendants (kernel.yama.ptrace_scope = 1)"
        }
        Some(2) => "only processes with CAP_SYS_PTRACE may attach a debugger (kernel.yama.ptrace_scope = 2)",
        Some(_) => "no process may attach a debugger (kernel.yama.ptrace_scope = 3)",
    };
    (level, why)
}

/// Checks the capabilities `run` needs before trying anything, naming each one that is missing
/// and what it is for. Missing ones that only degrade reports are warnings.
pub fn check_capabilities() -> anyhow::Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .context("no CapEff in /proc/self/status")?;
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    const NET_ADMIN: u32 = 12;
    const SYS_PTRACE: u32 = 19;
    const SYS_ADMIN: u32 = 21;
    const DAC_READ_SEARCH: u32 = 2;
    const PERFMON: u32 = 38;
    const BPF: u32 = 39;
    let mut missing = Vec::new();
    if !has(BPF) && !has(SYS_ADMIN) {
        missing.push("CAP_BPF, to load the programs and create and pin their maps");
    }
    if !has(NET_ADMIN) {
        missing.push("CAP_NET_ADMIN, to attach the cgroup socket programs and the socket map");
    }
    if !has(PERFMON) && !has(SYS_ADMIN) {
        missing.push("CAP_PERFMON, for the helpers that read a process's executable (exe rules)");
    }
    if !missing.is_empty() {
        bail!("imds-guard run is missing {}", missing.join("; and "));
    }
    if !has(SYS_PTRACE) {
        tracing::warn!("without CAP_SYS_PTRACE, events cannot name the executable of other users' processes");
    }
    if !has(DAC_READ_SEARCH) {
        tracing::warn!(
            "without CAP_DAC_READ_SEARCH, files and directories the policy names may be unreadable"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_and_unified_layouts() {
        let hybrid = "25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_root_from(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_root_from(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        // A container's bind mount of a sub-cgroup is not the root.
        let sub = "30 24 0:26 /kubepods /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_root_from(sub), None);
        assert_eq!(cgroup2_root_from("1 2 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }
}
