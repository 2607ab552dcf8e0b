//! The daemon's event loop: one task that drains the kernel's ring buffer and the NFLOG socket
//! into the reporter, and reloads the policy on a signal, a change notification or the periodic
//! re-check, until SIGTERM/SIGINT.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use imds_guard_common::event::Record;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use super::{
    install::Enforcer,
    pins::PinKeeper,
    reload::{Reason, Reloader, SETTLE},
    uninspected::UninspectedWatch,
};
use crate::{
    netfilter::nflog::{self, Nflog},
    report::{
        Consumers, Reporter,
        aggregate::{Aggregator, AnyKey},
        enrich::Enricher,
    },
};

/// Events handled per wake-up before other work gets a turn.
const EVENT_BATCH: usize = 256;
/// How often the policy file and the rules' identities are looked at even without a change
/// notification (a safety net behind inotify: a few stat calls and one small read).
const RECHECK: Duration = Duration::from_secs(2);

pub struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> std::io::Result<Self> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

/// What the loop waits on besides the kernel's ring buffer.
pub struct Sources {
    pub watch: AsyncFd<Watch>,
    pub signals: Signals,
    pub nflog: Option<Nflog>,
}

pub async fn serve(
    guard: &mut Enforcer,
    mut reloader: Reloader,
    sources: Sources,
    cgroup_root: std::path::PathBuf,
    aggregate_window: Duration,
    consumers: &Consumers,
) -> anyhow::Result<()> {
    let Sources { mut watch, signals: mut sig, nflog } = sources;
    // SAFETY: the RingBuf owns its map fd, which is neither closed nor replaced while the AsyncFd
    // holds it.
    let mut events =
        unsafe { AsyncFd::register(guard.kernel.take_events()?) }.context("watching the ring buffer")?;
    let mut enricher = Enricher::new(cgroup_root);
    let mut aggregator = Aggregator::new(aggregate_window);
    let mut summaries = tokio::time::interval(Duration::from_secs(1));
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.tick().await;
    // SAFETY: the Nflog owns its socket, which is neither closed nor replaced while the AsyncFd
    // holds it.
    let mut nflog =
        nflog.map(|n| unsafe { AsyncFd::register(n) }).transpose().context("watching the NFLOG socket")?;
    let mut packets = nflog::Packets::default();
    let mut pins = PinKeeper::default();
    let mut uninspected = UninspectedWatch::default();
    uninspected.check(&guard.kernel, consumers);
    loop {
        tokio::select! {
            ready = async {
                match nflog.as_mut() {
                    Some(fd) => fd.readable_mut().await,
                    None => std::future::pending().await,
                }
            } => {
                let mut ready = ready?;
                let now = Instant::now();
                let (logged, drained) = ready.get_inner_mut().read(EVENT_BATCH / 8)?;
                for l in logged {
                    let key = AnyKey::Other(nflog::aggregation_key(&l));
                    if let Some(sample) = aggregator.is_repeat(&key, now) {
                        consumers.repeat(sample);
                        continue;
                    }
                    let event = packets.event(&l);
                    consumers.report(event.clone());
                    aggregator.delivered(key, event, now);
                }
                if drained {
                    ready.clear_ready();
                }
            }
            ready = events.readable_mut() => {
                let mut ready = ready?;
                // Where pods are named from follows the policy's [kubernetes].
                if enricher.pods != reloader.policy.pods {
                    enricher.pods = reloader.policy.pods.clone();
                }
                let ring = ready.get_inner_mut();
                // A bounded batch, so that a flood of events cannot starve reloads and signals.
                let mut drained = true;
                let now = Instant::now();
                for _ in 0..EVENT_BATCH {
                    let Some(item) = ring.next() else { break };
                    drained = false;
                    // Read once; an unknown kind is skipped.
                    let Some(record) = Record::parse(&item) else { continue };
                    let key = AnyKey::of(&record);
                    if let Some(sample) = aggregator.is_repeat(&key, now) {
                        consumers.repeat(sample);
                        continue;
                    }
                    let event = enricher.event(&record);
                    consumers.report(event.clone());
                    aggregator.delivered(key, event, now);
                }
                if drained {
                    ready.clear_ready();
                }
            }
            ready = watch.readable() => {
                let mut ready = ready?;
                let _ = ready.get_inner().0.read_events();
                ready.clear_ready();
                drop(ready);
                tokio::time::sleep(SETTLE).await;
                watch = rewatch(&mut reloader, guard, Some(Reason::FileChanged))?;
            }
            _ = recheck.tick() => {
                pins.check(&guard.kernel, consumers);
                uninspected.check(&guard.kernel, consumers);
                watch = rewatch(&mut reloader, guard, Some(Reason::FileChanged))?;
            }
            _ = summaries.tick() => {
                for line in aggregator.flush(Instant::now(), false) {
                    consumers.report(line);
                }
            }
            _ = sig.hup.recv() => watch = rewatch(&mut reloader, guard, Some(Reason::Signal))?,
            _ = sig.term.recv() => break,
            _ = sig.int.recv() => break,
        }
    }
    for line in aggregator.flush(Instant::now(), true) {
        consumers.report(line);
    }
    pins.at_exit(&guard.kernel);
    tracing::info!(pin_dir = %guard.kernel.pin_dir().display(), "exiting; enforcement stays in place (imds-guard unload removes it)");
    Ok(())
}

/// nix's Inotify is AsFd only; tokio wants AsRawFd.
pub struct Watch(nix::sys::inotify::Inotify);

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
    guard: &mut Enforcer,
    what: Option<Reason>,
) -> anyhow::Result<AsyncFd<Watch>> {
    let mut what = what;
    loop {
        let dirs = reloader.watched_dirs();
        let ino = reloader.watcher(&dirs).context("setting up inotify")?;
        match what.take() {
            Some(Reason::Signal) => reloader.reload(guard, Reason::Signal),
            Some(_) => reloader.refresh(guard),
            None => {}
        }
        if reloader.watched_dirs() == dirs {
            // SAFETY: the Watch owns the inotify fd for as long as the AsyncFd holds it.
            return Ok(unsafe { AsyncFd::register(Watch(ino)) }?);
        }
        what = Some(Reason::FileChanged);
    }
}
