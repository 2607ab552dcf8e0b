//! Watching what the policy depends on (its file's directory, the directories where its users'
//! database, executables, cgroups and pods change) with inotify.

use anyhow::Context as _;

use super::{
    install::Enforcer,
    reload::{Reason, Reloader},
};

/// An inotify instance (nix's Inotify is AsFd only; tokio wants AsRawFd).
pub struct Watch(pub nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for Watch {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd as _;
        self.0.as_fd().as_raw_fd()
    }
}

/// Watches what the current policy depends on, *then* refreshes (or reloads, for a signal), so that
/// a change landing in between is seen by the new watch rather than lost; repeats while the refresh
/// changes what there is to watch.
pub fn rewatch(
    reloader: &mut Reloader,
    enforcer: &mut Enforcer,
    what: Option<Reason>,
) -> anyhow::Result<Watch> {
    let mut what = what;
    loop {
        let dirs = reloader.watched_dirs();
        let ino = reloader.watcher(&dirs).context("setting up inotify")?;
        match what.take() {
            Some(Reason::Signal) => reloader.reload(enforcer, Reason::Signal),
            Some(_) => reloader.refresh(enforcer),
            None => {}
        }
        if reloader.watched_dirs() == dirs {
            return Ok(Watch(ino));
        }
        what = Some(Reason::FileChanged);
    }
}
