//! Watching what the policy depends on (its file's directory, the directories where its users'
//! database, executables, cgroups and pods change) with inotify.

use std::ffi::OsString;

use anyhow::Context as _;
use nix::sys::inotify::{AddWatchFlags, Inotify, InotifyEvent, WatchDescriptor};

use super::{
    install::Enforcer,
    reload::{Reason, Reloader},
};

/// An inotify instance (nix's Inotify is AsFd only; tokio wants AsRawFd), and which of its watches
/// is the policy file's directory.
pub struct Watch {
    pub ino: Inotify,
    /// The policy file's directory's watch and the file's name in it.
    pub policy: Option<(WatchDescriptor, OsString)>,
}

/// What a read of the watch's queue found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// Anything at all.
    pub changed: bool,
    /// A writer is done with the policy file: it was closed after being opened for writing, or
    /// something was renamed into its directory (an editor's or configuration tool's atomic
    /// replace, a Kubernetes ConfigMap's `..data` switch).
    pub written: bool,
}

impl Watch {
    /// Drains the queue (non-blocking) and says what it held.
    pub fn seen(&self) -> Seen {
        let Ok(events) = self.ino.read_events() else { return Seen::default() };
        Seen { changed: !events.is_empty(), written: events.iter().any(|e| self.is_written(e)) }
    }

    fn is_written(&self, e: &InotifyEvent) -> bool {
        let Some((wd, name)) = &self.policy else { return false };
        e.wd == *wd
            && (e.mask.contains(AddWatchFlags::IN_MOVED_TO)
                || (e.mask.contains(AddWatchFlags::IN_CLOSE_WRITE) && e.name.as_ref() == Some(name)))
    }
}

impl std::os::fd::AsRawFd for Watch {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd as _;
        self.ino.as_fd().as_raw_fd()
    }
}

/// Watches what the current policy depends on, *then* refreshes (or reloads, for a signal), so that
/// a change landing in between is seen by the new watch rather than lost; repeats while the refresh
/// changes what there is to watch.
///
/// `written`: a writer is known to be done with the policy file ([`Seen::written`]); without
/// that, a changed file is installed only once it has stayed the same for a while.
pub fn rewatch(
    reloader: &mut Reloader,
    enforcer: &mut Enforcer,
    what: Option<Reason>,
    written: bool,
) -> anyhow::Result<Watch> {
    let mut what = what;
    loop {
        let dirs = reloader.watched_dirs();
        let (ino, policy) = reloader.watcher(&dirs).context("setting up inotify")?;
        match what.take() {
            Some(Reason::Signal) => reloader.reload(enforcer, Reason::Signal),
            Some(_) => reloader.refresh(enforcer, written),
            None => {}
        }
        if reloader.watched_dirs() == dirs {
            return Ok(Watch { ino, policy });
        }
        what = Some(Reason::FileChanged);
    }
}
