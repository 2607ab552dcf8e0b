//! Keeping the enforced policy true to the policy file and to the host: SIGHUP and changes of the
//! file reload it; changes of the things its rules name (an executable replaced on upgrade, a
//! cgroup that appears or is recreated when a unit restarts) re-resolve it. Either way the result
//! is installed as one atomic generation switch, or refused with the old policy left in force.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use super::install::Enforcer;
use crate::{
    host::identity::existing_ancestor,
    policy::source::Source,
    policy::{Host, Policy},
    report::{
        Event, Reporter,
        event::{PolicyReloadFailed, PolicyReloaded},
    },
};

/// How long the policy file must stay unchanged before a change is installed.
pub const SETTLE: Duration = Duration::from_millis(50);

/// How long a changed policy file must stay the same before it is installed when no writer was
/// seen finishing with it (no close after writing, no rename into its directory: a change found by
/// the periodic look, a file on a file system without notifications, a symlink to another
/// directory). A writer that truncates the file and pauses (a slow `cat > policy.toml`) leaves a
/// half-written file for as long as it pauses; 50 ms of agreement once installed such a file with
/// no rules under QEMU.
pub const UNWRITTEN_QUIET: Duration = Duration::from_secs(5);

/// The file's text once two reads `SETTLE` apart agree: a file rewritten in place (truncate, then
/// write) is never installed half-written, which could drop rules or, with only its first line,
/// switch to monitor mode.
fn read_settled(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut last = crate::policy::source::read_bytes(path)?;
    for _ in 0..20 {
        std::thread::sleep(SETTLE);
        let now = crate::policy::source::read_bytes(path)?;
        if now == last {
            return Ok(now);
        }
        last = now;
    }
    Err(std::io::Error::other("the policy file kept changing for a second"))
}

/// Why a reload happened (reported in the `policy_reloaded` event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Signal,
    FileChanged,
    IdentityChanged,
}

impl Reason {
    const fn as_str(self) -> &'static str {
        match self {
            Reason::Signal => "sighup",
            Reason::FileChanged => "file_changed",
            Reason::IdentityChanged => "identity_changed",
        }
    }
}

pub struct Reloader {
    pub config: PathBuf,
    pub host: Host,
    /// The text the enforced policy was built from.
    source: Source,
    pub policy: Policy,
    /// Where the reload events go.
    reporter: std::sync::Arc<dyn Reporter>,
    /// Policies installed and refused since the daemon started (reported in the reload events).
    pub reloads: u64,
    pub failures: u64,
    /// The policy file could not be read at the last look (reported once, when that began).
    unreadable: bool,
    /// A changed text no writer was seen finishing, and since when it has been the same.
    unwritten: Option<(Vec<u8>, Instant)>,
}

impl Reloader {
    #[must_use]
    pub fn new(
        config: PathBuf,
        host: Host,
        source: Source,
        policy: Policy,
        reporter: std::sync::Arc<dyn Reporter>,
    ) -> Self {
        Reloader {
            config,
            host,
            source,
            policy,
            reporter,
            reloads: 0,
            failures: 0,
            unreadable: false,
            unwritten: None,
        }
    }

    /// Called when something watched changed, or periodically: reloads if the file's text changed,
    /// else re-resolves the current text and installs it if what it resolves to changed.
    ///
    /// `written`: a writer was seen finishing with the file (see [`super::watch::Seen`]); a
    /// changed text is then installed once it settles. Otherwise it is installed only after it
    /// has stayed the same for [`UNWRITTEN_QUIET`]: a file being rewritten in place is never
    /// installed half-written because its writer paused.
    pub fn refresh(&mut self, guard: &mut Enforcer, written: bool) {
        let read = crate::policy::source::read_bytes(&self.config);
        if read.is_ok() && std::mem::take(&mut self.unreadable) {
            tracing::info!(policy = %self.config.display(), "the policy file can be read again");
        }
        match read {
            Ok(bytes)
                if bytes != self.source.text.as_bytes() && !written && !self.quiet_since_changed(&bytes) =>
            {
                tracing::debug!(
                    policy = %self.config.display(),
                    "the policy file changed; installing it once its writer closes it or it stays the same for {} s",
                    UNWRITTEN_QUIET.as_secs()
                );
            }
            Ok(bytes) if bytes != self.source.text.as_bytes() => match read_settled(&self.config) {
                // What a writer leaves between truncating the file and writing it, whatever notice
                // came before: its open(O_TRUNC) can wait for the old data's writeback (200 ms
                // seen here), longer than the reads take to agree. An empty file is installed
                // once it has stayed so for UNWRITTEN_QUIET.
                Ok(bytes)
                    if bytes.iter().all(u8::is_ascii_whitespace) && !self.quiet_since_changed(&bytes) =>
                {
                    tracing::debug!(
                        policy = %self.config.display(),
                        "the policy file is empty; installing it once it stays so for {} s",
                        UNWRITTEN_QUIET.as_secs()
                    );
                }
                Ok(bytes) => {
                    let started = Instant::now();
                    let strict = self.strict_host();
                    let parsed = Source::from_bytes(self.config.display().to_string(), bytes)
                        .and_then(|s| Policy::from_source(&s, &strict).map(|p| (s, p)));
                    match parsed {
                        Ok((source, p)) => self.install(guard, source, p, Reason::FileChanged, started),
                        Err(e) => self.refused(guard, &anyhow::Error::from(e)),
                    }
                }
                Err(e) => tracing::debug!("policy file still changing or unreadable: {e}"),
            },
            Ok(_) => match Policy::from_source(&self.source, &self.host) {
                Ok(p) if p.digest != self.policy.digest => {
                    self.install(guard, self.source.clone(), p, Reason::IdentityChanged, Instant::now());
                }
                Ok(_) => {}
                Err(e) => self.refused(guard, &anyhow::Error::from(e)),
            },
            // A file being replaced may be missing for an instant; one that stays missing (deleted,
            // its directory gone, permissions changed) is reported once. The enforced policy
            // stays; the file is read again on every change notification and re-check.
            Err(_) if self.unreadable => {}
            Err(_) => {
                std::thread::sleep(SETTLE);
                if let Err(e) = crate::policy::source::read_bytes(&self.config) {
                    self.unreadable = true;
                    tracing::warn!(
                        policy = %self.config.display(),
                        "cannot read the policy file ({e}); the policy in force stays enforced until it can be read again"
                    );
                    let e = anyhow::anyhow!("{}: cannot read the policy file: {e}", self.config.display());
                    self.refused(guard, &e);
                }
            }
        }
    }

    /// Whether `bytes`, a changed text, has been what the file held for [`UNWRITTEN_QUIET`];
    /// remembers it otherwise.
    fn quiet_since_changed(&mut self, bytes: &[u8]) -> bool {
        match &self.unwritten {
            Some((text, since)) if text == bytes => since.elapsed() >= UNWRITTEN_QUIET,
            _ => {
                self.unwritten = Some((bytes.to_vec(), Instant::now()));
                false
            }
        }
    }

    /// Reads and installs the policy file.
    pub fn reload(&mut self, guard: &mut Enforcer, reason: Reason) {
        let started = Instant::now();
        // The text in force may keep waiting for users and groups; an edited one may not.
        let parsed = Source::read(&self.config).and_then(|s| {
            let host = if s.text == self.source.text { self.host.clone() } else { self.strict_host() };
            Policy::from_source(&s, &host).map(|p| (s, p))
        });
        match parsed {
            // An edit followed by `systemctl reload` is seen twice: the file watch installs it,
            // then the SIGHUP finds it in force. Installing it again would switch to an identical
            // generation and report a second reload of one edit.
            Ok((source, policy)) if reason == Reason::Signal && policy.digest == self.policy.digest => {
                tracing::info!(
                    generation = guard.kernel.generation(),
                    digest = %policy.digest,
                    "reload asked: the policy file resolves to the policy in force, nothing to install"
                );
                self.source = source;
            }
            Ok((source, policy)) => self.install(guard, source, policy, reason, started),
            Err(e) => self.refused(guard, &anyhow::Error::from(e)),
        }
    }

    fn install(
        &mut self,
        guard: &mut Enforcer,
        source: Source,
        policy: Policy,
        reason: Reason,
        started: Instant,
    ) {
        let resolved = started.elapsed();
        match guard.apply(&policy) {
            Ok(generation) => {
                let elapsed = started.elapsed();
                // What the install did after the switch (starting the old generation's removal,
                // which goes on in the background) does not delay enforcement.
                let after =
                    guard.kernel.last_timings().map(|(_, switched, done)| done.saturating_sub(switched));
                let enforced = elapsed.saturating_sub(after.unwrap_or_default());
                self.reloads += 1;
                for w in &policy.warnings {
                    tracing::warn!("{w}");
                }
                tracing::info!(generation, digest = %policy.digest, reason = reason.as_str(), "policy installed");
                tracing::debug!(
                    read_and_resolved_ms = resolved.as_secs_f64() * 1e3,
                    enforced_ms = enforced.as_secs_f64() * 1e3,
                    "reload timings"
                );
                self.reporter.report(Event::PolicyReloaded(PolicyReloaded {
                    reason: reason.as_str().to_owned(),
                    generation,
                    mode: policy.mode.name().to_owned(),
                    policy_digest: policy.digest.clone(),
                    rules: policy.rules.len(),
                    elapsed_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                    enforced_us: u64::try_from(enforced.as_micros()).unwrap_or(u64::MAX),
                    reloads: self.reloads,
                    reload_failures: self.failures,
                }));
                self.source = source;
                self.policy = policy;
                self.unwritten = None;
            }
            Err(e) => self.refused(guard, &e),
        }
    }

    fn refused(&mut self, guard: &Enforcer, e: &anyhow::Error) {
        self.failures += 1;
        self.unwritten = None;
        tracing::error!(
            generation = guard.kernel.generation(),
            "policy refused, the previous policy stays enforced: {e:#}"
        );
        self.reporter.report(Event::PolicyReloadFailed(PolicyReloadFailed {
            generation: guard.kernel.generation(),
            error: format!("{e:#}"),
            reloads: self.reloads,
            reload_failures: self.failures,
        }));
    }

    /// An inotify instance watching the policy file's directory and every directory whose change
    /// can change what the rules resolve to.
    /// Also returns the watch of the policy file's directory and the file's name in it.
    pub fn watcher(
        &self,
        dirs: &BTreeSet<PathBuf>,
    ) -> nix::Result<(Inotify, Option<(WatchDescriptor, std::ffi::OsString)>)> {
        let ino = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let dir_events = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF;
        let policy_dir = self.config.parent();
        let mut policy = None;
        for dir in dirs {
            match ino.add_watch(dir.as_path(), dir_events) {
                Ok(wd) if Some(dir.as_path()) == policy_dir => {
                    policy = self.config.file_name().map(|n| (wd, n.to_owned()));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(dir = %dir.display(), "cannot watch: {e}"),
            }
        }
        Ok((ino, policy))
    }

    #[must_use]
    /// [`Host`] for a policy text that was edited: unknown user and group names are errors.
    fn strict_host(&self) -> Host {
        Host { waiting_names: false, ..self.host.clone() }
    }

    pub fn watched_dirs(&self) -> BTreeSet<PathBuf> {
        let mut dirs = BTreeSet::new();
        let parent = |p: &Path| p.parent().map(Path::to_owned);
        dirs.extend(parent(&self.config));
        // The user and group databases (NSS sources other than files are seen by the periodic
        // re-check).
        if self.policy.rules.iter().any(|r| r.waiting_for.is_some()) {
            dirs.insert(PathBuf::from("/etc"));
        }
        for r in &self.policy.rules {
            if let Some(exe) = &r.exe {
                // Where the file (or the symlink naming it) is removed, replaced or appears; for
                // a path whose directory is gone too, the deepest one that exists.
                dirs.extend(
                    parent(Path::new(&exe.path))
                        .map(|d| existing_ancestor(Path::new("/"), &d.to_string_lossy())),
                );
                dirs.extend(
                    parent(&exe.file).map(|d| existing_ancestor(Path::new("/"), &d.to_string_lossy())),
                );
            }
            if let Some(cg) = &r.cgroup {
                let dir = existing_ancestor(&self.host.cgroup_root, &cg.path);
                dirs.extend(parent(&dir).filter(|_| cg.id.is_some()));
                dirs.insert(dir);
            }
        }
        dirs.extend(self.policy.pod_watch.iter().cloned());
        dirs.retain(|d| d.is_dir());
        dirs
    }
}
