//! `imds-guard run`: install the policy, attach, then report events and keep the policy current
//! (SIGHUP, file changes, identity changes) until SIGTERM/SIGINT. Exiting leaves enforcement in
//! place (the links are pinned).

use std::{io::Write as _, time::Duration};

use anyhow::Context as _;
use serde_json::json;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    aggregate::Aggregator,
    btf,
    cli::RunArgs,
    config::Source,
    env,
    events::Enricher,
    guard::Guard,
    policy::{Host, Policy, mode_name},
    reload::{Reason, Reloader},
};

/// Events handled per wake-up before other work gets a turn.
const EVENT_BATCH: usize = 256;
/// How often the policy file and the rules' identities are looked at even without a change
/// notification (a safety net behind inotify: a few stat calls and one small read).
const RECHECK: Duration = Duration::from_secs(2);

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    env::check_capabilities()?;
    let cgroup_root = env::cgroup2_root()?;
    let host = Host { cgroup_root: cgroup_root.clone() };
    let source = Source::read(&args.config)?;
    let policy = Policy::from_source(&source, &host)?;
    for w in &policy.warnings {
        tracing::warn!("{w}");
    }
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "policy resolved");
    let exe_offsets = match btf::Btf::from_file(&args.btf).and_then(|b| btf::exe_offsets(&b)) {
        Ok(o) => Some(o),
        Err(e) if policy.needs_exe() => {
            return Err(e.context(
                "the policy has exe rules, which need the kernel's BTF to find a process's executable; \
                 imds-guard refuses to guess kernel struct layouts",
            ));
        }
        Err(e) => {
            tracing::warn!("exe rules will be refused: {e:#}");
            None
        }
    };
    let cgroup = args.cgroup.clone().unwrap_or_else(|| cgroup_root.clone());
    env::check_cgroup2_dir(&cgroup)?;
    let pin_dir = &args.pins.pin_dir;
    env::prepare_pin_dir(pin_dir)?;

    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "kernel BTF read");
    let (mut guard, attachment) = Guard::start(pin_dir, &cgroup, &policy, exe_offsets)?;
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "programs loaded and attached");
    let mut reloader = Reloader::new(args.config.clone(), host, source, policy);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        // Signals first: a reload requested the moment we are ready must not kill us.
        let signals = Signals::new()?;
        // Watch, then look once more, so that nothing that changed since the policy was read (a
        // unit's cgroup appearing, the file being edited) is missed; only then say we are ready.
        let watch = rewatch(&mut reloader, &mut guard, Some(Reason::FileChanged))?;
        let policy = &reloader.policy;
        // Connections opened before the hooks were attached cannot be judged by them: report them.
        for c in crate::preexisting::scan(policy, &cgroup_root) {
            if !c.allowed {
                tracing::warn!(pid = c.pid, uid = c.uid, comm = %c.comm, "a connection to {} was open before imds-guard started, held by a process the policy does not allow", c.dst);
            }
            emit(&c);
        }
        emit(&json!({
            "schema": crate::events::SCHEMA_VERSION,
            "event": "guard_started",
            "attachment": attachment,
            "mode": mode_name(policy.mode),
            "generation": guard.generation(),
            "policy": policy.source,
            "policy_digest": policy.digest,
            "rules": policy.rules.len(),
            "cgroup": cgroup.display().to_string(),
            "pin_dir": pin_dir.display().to_string(),
        }));
        tracing::info!(cgroup = %cgroup.display(), pin_dir = %pin_dir.display(), ?attachment, "enforcing");
        // systemd Type=notify: READY only once the programs are attached with the policy live.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        let window = Duration::from_secs_f64(args.aggregate_window.max(0.0));
        serve(&mut guard, reloader, watch, signals, cgroup_root, window).await
    })
}

struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

async fn serve(
    guard: &mut Guard,
    mut reloader: Reloader,
    mut watch: AsyncFd<Watch>,
    mut sig: Signals,
    cgroup_root: std::path::PathBuf,
    aggregate_window: Duration,
) -> anyhow::Result<()> {
    // SAFETY: the RingBuf owns its map fd, which is neither closed nor replaced while the AsyncFd
    // holds it.
    let mut events =
        unsafe { AsyncFd::register(guard.take_events()?) }.context("watching the ring buffer")?;
    let mut enricher = Enricher::new(cgroup_root);
    let mut aggregator = Aggregator::new(aggregate_window);
    let mut summaries = tokio::time::interval(Duration::from_secs(1));
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.tick().await;
    let mut pins = crate::pins::PinKeeper::default();
    let mut uninspected = crate::uninspected::UninspectedWatch::default();
    uninspected.check(guard);
    loop {
        tokio::select! {
            ready = events.readable_mut() => {
                let mut ready = ready?;
                let ring = ready.get_inner_mut();
                // A bounded batch, so that a flood of events cannot starve reloads and signals.
                let mut drained = true;
                let now = std::time::Instant::now();
                for _ in 0..EVENT_BATCH {
                    let Some(item) = ring.next() else { break };
                    drained = false;
                    if aggregator.is_repeat(&item, now) {
                        continue;
                    }
                    if let Some(ev) = enricher.decode(&item) {
                        // The typed event keeps its documented key order; the Value (sorted
                        // keys) only describes the repeats later.
                        emit(&ev);
                        aggregator.delivered(&item, serde_json::to_value(&ev).unwrap_or_default(), now);
                    }
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
                tokio::time::sleep(crate::reload::SETTLE).await;
                watch = rewatch(&mut reloader, guard, Some(Reason::FileChanged))?;
            }
            _ = recheck.tick() => {
                pins.check(guard);
                uninspected.check(guard);
                watch = rewatch(&mut reloader, guard, Some(Reason::FileChanged))?;
            }
            _ = summaries.tick() => {
                for line in aggregator.flush(std::time::Instant::now(), false) {
                    emit(&line);
                }
            }
            _ = sig.hup.recv() => watch = rewatch(&mut reloader, guard, Some(Reason::Signal))?,
            _ = sig.term.recv() => break,
            _ = sig.int.recv() => break,
        }
    }
    for line in aggregator.flush(std::time::Instant::now(), true) {
        emit(&line);
    }
    pins.at_exit(guard);
    tracing::info!(pin_dir = %guard.pin_dir().display(), "exiting; enforcement stays in place (imds-guard unload removes it)");
    Ok(())
}

/// nix's Inotify is AsFd only; tokio wants AsRawFd.
struct Watch(nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for Watch {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsFd as _;
        self.0.as_fd().as_raw_fd()
    }
}

/// Watches what the current policy depends on, *then* refreshes (or reloads, for a signal), so that
/// a change landing in between is seen by the new watch rather than lost; repeats while the refresh
/// changes what there is to watch.
fn rewatch(
    reloader: &mut Reloader,
    guard: &mut Guard,
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

/// One JSON object per line on stdout, flushed at once.
pub fn emit<T: serde::Serialize>(v: &T) {
    let mut out = std::io::stdout().lock();
    if serde_json::to_writer(&mut out, v).is_ok() {
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
}
