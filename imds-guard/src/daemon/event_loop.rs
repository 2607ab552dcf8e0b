//! The daemon's event loop: one task that drains the kernel's ring buffer and the NFLOG socket
//! into the reporter, and asks the installer thread ([`super::installer`]) for a reload on a
//! signal, a change notification or the periodic re-check, until SIGTERM/SIGINT. Nothing here
//! blocks: installing, `nft` and waiting for the file to settle happen on the installer's thread.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use imds_guard_common::event::Record;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use super::{
    installer::{Command, Installer, Update},
    watch::Watch,
};
use crate::{
    host::workload::PodDirectory,
    netfilter::nflog::{self, Nflog},
    report::{
        Consumers, Reporter,
        aggregate::{Aggregator, AnyKey},
        enrich::Enricher,
    },
};

/// Events handled per wake-up before other work gets a turn.
const EVENT_BATCH: usize = 256;
/// And the time a batch may take: enriching an event reads /proc and may walk the cgroup tree,
/// which on a slow or loaded machine makes 256 of them take seconds; control (signals, the
/// policy watch) gets a turn at least this often.
const BATCH_TIME: Duration = Duration::from_millis(20);
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

/// What the loop waits on.
pub struct Sources {
    pub events: RingBuf<MapData>,
    pub watch: Watch,
    pub signals: Signals,
    pub nflog: Option<Nflog>,
    pub updates: tokio::sync::mpsc::UnboundedReceiver<Update>,
}

/// Where the loop's events come from and go.
pub struct Setup {
    pub cgroup_root: std::path::PathBuf,
    pub pods: PodDirectory,
    pub aggregate_window: Duration,
}

pub async fn serve(
    sources: Sources,
    setup: Setup,
    installer: &Installer,
    consumers: &Consumers,
) -> anyhow::Result<()> {
    let Sources { events, watch, signals: mut sig, nflog, mut updates } = sources;
    // SAFETY (all three): each AsyncFd owns what holds the descriptor (the RingBuf its map fd,
    // the Watch its inotify fd, the Nflog its socket), which is neither closed nor replaced while
    // the AsyncFd holds it.
    let mut events = unsafe { AsyncFd::register(events) }.context("watching the ring buffer")?;
    let mut watch = unsafe { AsyncFd::register(watch) }.context("watching the policy's files")?;
    let mut nflog =
        nflog.map(|n| unsafe { AsyncFd::register(n) }).transpose().context("watching the NFLOG socket")?;
    let mut enricher = Enricher::new(setup.cgroup_root);
    enricher.pods = setup.pods;
    let mut aggregator = Aggregator::new(setup.aggregate_window);
    let mut summaries = tokio::time::interval(Duration::from_secs(1));
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.tick().await;
    let mut packets = nflog::Packets::default();
    let mut nflog_failing = false;
    loop {
        tokio::select! {
            // Control first: a signal, a policy change, the installer's news and the timers are
            // looked at before every batch of events, so a flood of events (each batch bounded)
            // delays a reload by one batch at most. Unbiased, the random pick gave a ready event
            // source five chances in six: under a connect storm on a slow machine (a 2-core VM's
            // QEMU guest) a reload waited for several seconds.
            biased;
            ready = watch.readable() => {
                let mut ready = ready?;
                let seen = ready.get_inner().seen();
                ready.clear_ready();
                installer.send(if seen.written {
                    Command::Written(std::time::Instant::now())
                } else {
                    Command::Changed
                });
            }
            Some(update) = updates.recv() => match update {
                Update::Watch(w) => {
                    // Changes since the installer made this watch may have come after the
                    // refresh read the file: another look. (Read here rather than trusted to the
                    // new registration's readiness.) What the old one still holds unread came
                    // before the new one was made, so before that read, or is in the new one too:
                    // a writer done then was read, and is no news that the file is whole now.
                    let (new, old) = (w.seen(), watch.get_ref().seen());
                    // SAFETY: as above.
                    match unsafe { AsyncFd::register(w) } {
                        Ok(w) => watch = w,
                        // Not fatal: the watch in use stays, and the periodic re-check looks at
                        // what it would have seen.
                        Err(e) => tracing::error!("cannot wait on the new policy watch ({e}); keeping the old one"),
                    }
                    if new.written {
                        installer.send(Command::Written(std::time::Instant::now()));
                    } else if new.changed || old.changed {
                        installer.send(Command::Changed);
                    }
                }
                Update::Pods(p) => enricher.pods = p,
            },
            _ = recheck.tick() => installer.send(Command::Recheck),
            _ = summaries.tick() => {
                for line in aggregator.flush(Instant::now(), false) {
                    consumers.report(line);
                }
            }
            _ = sig.hup.recv() => installer.send(Command::Reload),
            _ = sig.term.recv() => break,
            _ = sig.int.recv() => break,
            ready = async {
                match nflog.as_mut() {
                    Some(fd) => fd.readable_mut().await,
                    None => std::future::pending().await,
                }
            } => {
                let mut ready = ready?;
                let now = Instant::now();
                let (logged, drained) = match ready.get_inner_mut().read(EVENT_BATCH / 8) {
                    Ok(r) => r,
                    // A failed read loses packets' reports, never enforcement: not fatal.
                    Err(e) => {
                        if !nflog_failing {
                            tracing::error!("cannot read the NFLOG socket ({e}); forwarded packets go unreported until it works");
                        }
                        nflog_failing = true;
                        ready.clear_ready();
                        continue;
                    }
                };
                if nflog_failing {
                    nflog_failing = false;
                    tracing::warn!("the NFLOG socket is read again");
                }
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
                } else {
                    drop(ready);
                    // More is waiting: let the runtime look at the other sources (the watch,
                    // signals, timers) before the next batch. Without this, a steady flood kept
                    // this task ready forever and a policy change waited for the flood to end.
                    tokio::task::yield_now().await;
                }
            }
            ready = events.readable_mut() => {
                let mut ready = ready?;
                let ring = ready.get_inner_mut();
                // A bounded batch, so that a flood of events cannot starve reloads and signals.
                let mut drained = true;
                let now = Instant::now();
                for _ in 0..EVENT_BATCH {
                    if now.elapsed() > BATCH_TIME {
                        break;
                    }
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
                } else {
                    drop(ready);
                    // More is waiting: let the runtime look at the other sources (the watch,
                    // signals, timers) before the next batch. Without this, a steady flood kept
                    // this task ready forever and a policy change waited for the flood to end.
                    tokio::task::yield_now().await;
                }
            }
        }
    }
    for line in aggregator.flush(Instant::now(), true) {
        consumers.report(line);
    }
    Ok(())
}
