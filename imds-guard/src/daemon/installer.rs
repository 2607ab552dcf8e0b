//! The thread that owns the kernel programs and the nftables table once the daemon runs: it
//! installs policies (reading and resolving the file, waiting for it to settle, running `nft`,
//! waiting for running programs before the old generation goes) and looks after the pins, so that
//! none of that blocking work holds up the event loop, which keeps draining the kernel's events.
//! The loop talks to it through a channel and gets back what it needs: a new inotify watch after
//! each refresh, and where pods are named from.

use std::sync::mpsc::{Receiver, Sender, channel};

use super::{
    install::Enforcer,
    pins::PinKeeper,
    reload::{Reason, Reloader, SETTLE},
    uninspected::UninspectedWatch,
    watch::{Watch, rewatch},
};
use crate::{host::workload::PodDirectory, report::Reporter};

/// What the event loop asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Something watched changed: re-read the file (once it settles) and re-resolve.
    Changed,
    /// As `Changed`, and a writer is done with the policy file (closed it, or renamed a file into
    /// its directory): a changed text can be installed at once. When the event loop read that
    /// notification: the writer was done before then, so a refresh that began later has read
    /// what it wrote, and the notice says nothing about what the file holds after that refresh
    /// (see [`run`]).
    Written(std::time::Instant),
    /// SIGHUP: reload the file.
    Reload,
    /// The periodic look: pins, uninspected connections, and a re-resolution.
    Recheck,
}

/// What the installer hands back to the event loop.
pub enum Update {
    /// The watch to wait on from now on.
    Watch(Watch),
    /// Where pods are named from changed (the policy's `[kubernetes]`).
    Pods(PodDirectory),
}

/// The installer thread.
pub struct Installer {
    tx: Option<Sender<Command>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the thread owns.
pub struct Owned {
    pub enforcer: Enforcer,
    pub reloader: Reloader,
    pub reporter: std::sync::Arc<dyn Reporter>,
}

impl Installer {
    /// Starts the thread; its updates go to `updates`.
    pub fn spawn(owned: Owned, updates: tokio::sync::mpsc::UnboundedSender<Update>) -> std::io::Result<Self> {
        let (tx, rx) = channel();
        let thread = std::thread::Builder::new()
            .name("imdsg-install".into())
            .spawn(move || run(owned, &rx, &updates))?;
        Ok(Installer { tx: Some(tx), thread: Some(thread) })
    }

    pub fn send(&self, c: Command) {
        if let Some(tx) = &self.tx {
            // The thread only ends when asked to (or on a panic, which the join reports).
            let _ = tx.send(c);
        }
    }

    /// Ends the thread once what it is doing is done, and waits for it.
    pub fn exit(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("the installer thread panicked");
        }
    }
}

fn run(owned: Owned, rx: &Receiver<Command>, updates: &tokio::sync::mpsc::UnboundedSender<Update>) {
    let Owned { mut enforcer, mut reloader, reporter } = owned;
    let mut pins = PinKeeper::default();
    let mut uninspected = UninspectedWatch::default();
    uninspected.check(&enforcer.kernel, reporter.as_ref());
    let mut pods = reloader.policy.pods.clone();
    // When the last refresh began, before it read the policy file (the daemon read it at start-up,
    // before this thread began).
    let mut looked = std::time::Instant::now();
    while let Ok(first) = rx.recv() {
        // What queued up meanwhile is done once.
        let mut asked = vec![first];
        asked.extend(rx.try_iter());
        if asked.iter().any(|c| matches!(c, Command::Changed | Command::Written(_))) {
            // Let a burst of changes (an editor's save, a package upgrade) end first.
            std::thread::sleep(SETTLE);
        }
        // What came meanwhile is done with the rest: this refresh reads the file after `now`.
        let now = std::time::Instant::now();
        asked.extend(rx.try_iter());
        if asked.contains(&Command::Recheck) {
            pins.check(&enforcer.kernel, reporter.as_ref());
            uninspected.check(&enforcer.kernel, reporter.as_ref());
        }
        // Only a writer done after the last refresh began says that the text now in the file is
        // whole. One done before was read by that refresh; its notice, queued while that refresh
        // ran, was once taken for a new one, and the text then in the file was installed at
        // once: under a reload storm, the next writer's, which had truncated the file and not yet
        // written (its open(O_TRUNC) waited up to 200 ms for the old data's writeback), an
        // enforce policy with no rules that refused every process (`reload_storm`, 1 run in 5).
        let written = asked.iter().any(|c| matches!(c, Command::Written(at) if *at >= looked));
        looked = now;
        let reason = if asked.contains(&Command::Reload) { Reason::Signal } else { Reason::FileChanged };
        match rewatch(&mut reloader, &mut enforcer, Some(reason), written) {
            Ok(w) => {
                let _ = updates.send(Update::Watch(w));
            }
            // Nothing enforced is lost: the watch in use stays, and the next re-check tries again.
            Err(e) => {
                tracing::error!("cannot watch the policy's files: {e:#}; looking again at the next re-check")
            }
        }
        if reloader.policy.pods != pods {
            pods = reloader.policy.pods.clone();
            let _ = updates.send(Update::Pods(pods.clone()));
        }
    }
    pins.at_exit(&enforcer.kernel);
    tracing::info!(
        pin_dir = %enforcer.kernel.pin_dir().display(),
        "exiting; enforcement stays in place (imds-guard unload removes it)"
    );
}
