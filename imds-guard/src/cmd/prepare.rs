//! `imds-guard prepare`: environment discovery ahead of `run`, with the privileges `run` does not
//! keep. The systemd unit runs it as full root in the host's mount namespace (ExecStartPre=+), so
//! that what it mounts outlives the daemon's private namespace: bpffs, so that pins outlive the
//! daemon, and on a host without cgroup v2 (pure cgroup v1, e.g. Amazon Linux 2) a cgroup2 of
//! imds-guard's own. Reports on stderr; stdout stays for `run`'s events.

use std::path::Path;

use anyhow::Context as _;

use crate::{
    cli::PrepareArgs,
    host::env::{self, Cgroup2},
    kernel::features,
};

pub fn prepare(args: &PrepareArgs) -> anyhow::Result<()> {
    let pin_dir = &args.pins.pin_dir;
    let (root, how) = env::cgroup2_root_or_mount()?;
    match how {
        Cgroup2::Found => tracing::info!(path = %root.display(), "cgroup v2 is mounted"),
        Cgroup2::Mounted => tracing::info!(path = %root.display(), "no cgroup v2 was mounted: mounted one"),
    }
    let mounted = crate::kernel::paths::prepare(pin_dir, false)?;
    tracing::info!(pin_dir = %pin_dir.display(), bpffs_mounted_now = mounted, "pin directory is on a bpffs");
    if let Some(owner) = &args.owner {
        let (uid, gid) = owner_ids(owner)?;
        let n = chown_tree(pin_dir, uid, gid)?;
        tracing::info!(pin_dir = %pin_dir.display(), owner, entries = n, "pin directory handed to the daemon's user");
    }
    match env::ptrace_scope() {
        (None | Some(0), why) => tracing::warn!("{why}"),
        (Some(_), why) => tracing::info!("{why}"),
    }
    features::require(&features::REQUIRED)?;
    let degraded = features::degradations()?;
    for d in &degraded {
        tracing::warn!(degraded = d.what.name(), "{}", d.sentence());
    }
    if degraded.is_empty() {
        tracing::info!("the kernel has every feature imds-guard uses");
        // A fact, not a degradation: how the message hook will be attached.
        if features::Feature::SkMsgLink.probe()? {
            tracing::info!("the request inspector will be attached through a bpf_link (Linux 6.10+)");
        } else {
            tracing::info!(
                "the request inspector will be attached through its socket map (BPF_PROG_ATTACH): this \
                 kernel has no sockmap links (Linux 6.10+)"
            );
        }
    } else {
        tracing::info!("the kernel has every feature the connect rules need");
    }
    Ok(())
}

/// `--owner`: a user name (its uid and primary gid), or numeric `UID[:GID]`.
fn owner_ids(owner: &str) -> anyhow::Result<(nix::unistd::Uid, nix::unistd::Gid)> {
    use nix::unistd::{Gid, Uid};
    if let Some((u, g)) = owner.split_once(':').or(Some((owner, owner)))
        && let (Ok(u), Ok(g)) = (u.parse::<u32>(), g.parse::<u32>())
    {
        return Ok((Uid::from_raw(u), Gid::from_raw(g)));
    }
    let user = nix::unistd::User::from_name(owner)
        .with_context(|| format!("looking up the user {owner}"))?
        .with_context(|| {
        format!(
            "no user {owner} (the daemon's User=): create it (the package does: useradd --system \
                 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {owner})"
        )
    })?;
    Ok((user.uid, user.gid))
}

/// chown -R without following symbolic links (there are none on a bpffs); returns the entries.
fn chown_tree(dir: &Path, uid: nix::unistd::Uid, gid: nix::unistd::Gid) -> anyhow::Result<usize> {
    use nix::unistd::{FchownatFlags, fchownat};
    let mut n = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(p) = stack.pop() {
        fchownat(nix::fcntl::AT_FDCWD, &p, Some(uid), Some(gid), FchownatFlags::AT_SYMLINK_NOFOLLOW)
            .with_context(|| format!("chown {}", p.display()))?;
        n += 1;
        if p.is_dir() && !p.is_symlink() {
            for e in std::fs::read_dir(&p).with_context(|| format!("reading {}", p.display()))? {
                stack.push(e?.path());
            }
        }
    }
    Ok(n)
}
