//! `imds-guard prepare`: environment discovery ahead of `run`, with the privileges `run` does not
//! keep. The systemd unit runs it as full root in the host's mount namespace (ExecStartPre=+), so
//! that what it mounts outlives the daemon's private namespace: bpffs, so that pins outlive the
//! daemon, and on a host without cgroup v2 (pure cgroup v1, e.g. Amazon Linux 2) a cgroup2 of
//! imds-guard's own. Reports on stderr; stdout stays for `run`'s events.

use crate::{
    cli::PinArgs,
    env::{self, Cgroup2},
    features,
};

pub fn prepare(args: &PinArgs) -> anyhow::Result<()> {
    let (root, how) = env::cgroup2_root_or_mount()?;
    match how {
        Cgroup2::Found => tracing::info!(path = %root.display(), "cgroup v2 is mounted"),
        Cgroup2::Mounted => tracing::info!(path = %root.display(), "no cgroup v2 was mounted: mounted one"),
    }
    let mounted = env::prepare_pin_dir(&args.pin_dir)?;
    tracing::info!(pin_dir = %args.pin_dir.display(), bpffs_mounted_now = mounted, "pin directory is on a bpffs");
    features::require(&features::ALWAYS)?;
    tracing::info!(features = features::ALWAYS.len(), "the kernel has every feature imds-guard needs");
    Ok(())
}
