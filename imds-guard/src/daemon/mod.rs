//! The daemon (`imds-guard run`): install the policy, attach, then report events and keep the
//! policy current (SIGHUP, file changes, identity changes) until SIGTERM/SIGINT. Exiting leaves
//! enforcement in place (the links are pinned).

pub mod pins;
pub mod preexisting;
pub mod reload;
pub mod uninspected;

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use imds_guard_common::event::Record;
use serde_json::json;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    cli::{RunArgs, Sink},
    daemon::reload::{Reason, Reloader},
    host::env,
    kernel::btf,
    kernel::features,
    kernel::guard::{Guard, NetfilterRuntime},
    netfilter,
    netfilter::nflog::Nflog,
    policy::source::Source,
    policy::{Host, Policy, Preexisting, mode_name},
    report::aggregate::{Aggregator, AnyKey},
    report::enrich::Enricher,
    report::sinks::emit,
    report::sinks::{FileConfig, Hub, Output, SinkConfig},
};

/// Events handled per wake-up before other work gets a turn.
const EVENT_BATCH: usize = 256;
/// How often the policy file and the rules' identities are looked at even without a change
/// notification (a safety net behind inotify: a few stat calls and one small read).
const RECHECK: Duration = Duration::from_secs(2);

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    env::check_capabilities()?;
    let (cgroup_root, _) = env::cgroup2_root_or_mount()?;
    let host = Host { cgroup_root: cgroup_root.clone(), waiting_names: true };
    let source = Source::read(&args.config)?;
    let policy = Policy::from_source(&source, &host)?;
    for w in &policy.warnings {
        tracing::warn!("{w}");
    }
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "policy resolved");
    if policy.preexisting == Preexisting::Close {
        features::require(&[features::Feature::PidfdGetfd])?;
    }
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
    crate::kernel::paths::prepare(pin_dir, false)?;

    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "kernel BTF read");
    let (netfilter, nflog) = start_netfilter(&policy)?;
    let (mut guard, attachment) = Guard::start(pin_dir, &cgroup, &policy, exe_offsets, netfilter)
        .map_err(|e| features::explain_failure(e, &features::ALWAYS))?;
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "programs loaded and attached");
    let mut reloader = Reloader::new(args.config.clone(), host, source, policy);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let hub = Arc::new(start_outputs(args, pin_dir)?);
    Hub::install(hub.clone());
    let socket = crate::report::socket::socket_path(&args.events_socket);
    let result = rt.block_on(async {
        // Consumers first, so that the first events have somewhere to go.
        let mut serving = None;
        if let Some(path) = &socket {
            match crate::report::socket::bind(path) {
                Ok(l) => {
                    tokio::spawn(crate::report::socket::serve(l, hub.clone()));
                    serving = Some(path.display().to_string());
                }
                // The socket is a convenience; enforcement and the sinks do not depend on it.
                Err(e) => tracing::warn!("no event socket: {e:#}"),
            }
        }
        let mut metrics_addr = None;
        if let Some(addr) = args.metrics_addr {
            let l = crate::report::metrics::bind(addr, args.metrics_allow_remote)?;
            let addr = l.local_addr()?;
            tracing::info!(%addr, "serving metrics");
            metrics_addr = Some(addr.to_string());
            tokio::spawn(crate::report::metrics::serve(l, hub.clone()));
        }
        // Signals first: a reload requested the moment we are ready must not kill us.
        let signals = Signals::new()?;
        // Watch, then look once more, so that nothing that changed since the policy was read (a
        // unit's cgroup appearing, the file being edited) is missed; only then say we are ready.
        let watch = rewatch(&mut reloader, &mut guard, Some(Reason::FileChanged))?;
        tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "watching");
        let policy = &reloader.policy;
        // Connections opened before the hooks were attached cannot be judged by them: report them
        // (and, if the policy says so, reset the ones denied processes hold).
        for c in crate::daemon::preexisting::at_start(policy, &cgroup_root, &cgroup) {
            emit(&c);
        }
        tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "connections open before the start looked at");
        emit(&json!({
            "schema": crate::report::enrich::SCHEMA_VERSION,
            "event": "guard_started",
            "attachment": attachment,
            "mode": mode_name(policy.mode),
            "generation": guard.generation(),
            "policy": policy.source,
            "policy_digest": policy.digest,
            "rules": policy.rules.len(),
            "cgroup": cgroup.display().to_string(),
            "pin_dir": pin_dir.display().to_string(),
            "metrics": metrics_addr,
            "events_socket": serving,
            "enforcement": if netfilter.reduced { "reduced" } else { "cgroup" },
            "netfilter": netfilter_summary(&guard),
        }));
        tracing::info!(cgroup = %cgroup.display(), pin_dir = %pin_dir.display(), ?attachment, "enforcing");
        // systemd Type=notify: READY only once the programs are attached with the policy live.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        let window = Duration::from_secs_f64(args.aggregate_window.max(0.0));
        serve(&mut guard, reloader, watch, signals, cgroup_root, window, &hub, nflog).await
    });
    hub.output.flush();
    if let Some(path) = &socket {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// The sinks `args` ask for, and the metrics and table of what was seen.
fn start_outputs(args: &RunArgs, pin_dir: &std::path::Path) -> anyhow::Result<Hub> {
    let journal = match args.sink {
        Sink::Journald => true,
        Sink::Auto => crate::report::sinks::stdout_is_journal(),
        Sink::Stdout | Sink::None => false,
    };
    let sinks = SinkConfig {
        stdout: args.sink == Sink::Stdout || (args.sink == Sink::Auto && !journal),
        journal: journal.then(|| args.journal_socket.clone()),
        file: args.events_file.clone().map(|path| FileConfig {
            path,
            max_bytes: args.events_file_max_bytes.max(4096),
            keep: args.events_file_keep,
        }),
    };
    tracing::debug!(?sinks, "event sinks");
    let output = Output::start(sinks)?;
    let metrics = crate::report::metrics::Metrics::new(pin_dir.to_owned(), output.stats.clone());
    Ok(Hub {
        output,
        metrics,
        observed: crate::report::seen::Observed::default(),
        policy: args.config.clone(),
    })
}

/// Decides reduced mode and binds the NFLOG group before any rule can log to it.
fn start_netfilter(policy: &Policy) -> anyhow::Result<(NetfilterRuntime, Option<Nflog>)> {
    let reduced = netfilter::decide_reduced(&policy.netfilter)?;
    if reduced {
        tracing::warn!(
            "REDUCED MODE: the cgroup programs are not attached{}; nftables output rules enforce the policy's \
             uid/gid rules only (exe, comm and cgroup rules and IMDSv1 treatments are not enforced)",
            if netfilter::cgroup_bpf_supported() {
                " (reduced_mode = \"on\")"
            } else {
                " (this kernel cannot run them)"
            }
        );
    }
    let wants_table = netfilter::Plan::new(policy, 0, reduced).wants_table();
    let nflog = if wants_table { Some(Nflog::bind(policy.netfilter.nflog_group)?) } else { None };
    Ok((
        NetfilterRuntime { reduced, nflog_group: nflog.as_ref().map(|_| policy.netfilter.nflog_group) },
        nflog,
    ))
}

/// The `netfilter` object of `guard_started`: what the table does, and what reduced mode leaves out.
fn netfilter_summary(guard: &Guard) -> serde_json::Value {
    let Some(plan) = guard.netfilter_plan().filter(|p| p.wants_table()) else {
        return json!({"table": null, "forward": false, "reduced": false});
    };
    for n in &plan.not_enforced {
        tracing::warn!(rule = n.rule, "reduced mode does not enforce {}: {}", n.name, n.reason);
    }
    json!({
        "table": format!("inet {}", netfilter::TABLE),
        "forward": plan.forward,
        "reduced": plan.reduced,
        "nflog_group": plan.nflog_group,
        "not_enforced": plan.not_enforced,
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

// Each argument is one of the loop's event sources or sinks; bundling them would only rename them.
#[allow(clippy::too_many_arguments)]
async fn serve(
    guard: &mut Guard,
    mut reloader: Reloader,
    mut watch: AsyncFd<Watch>,
    mut sig: Signals,
    cgroup_root: std::path::PathBuf,
    aggregate_window: Duration,
    hub: &Hub,
    nflog: Option<Nflog>,
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
    // SAFETY: the Nflog owns its socket, which is neither closed nor replaced while the AsyncFd
    // holds it.
    let mut nflog =
        nflog.map(|n| unsafe { AsyncFd::register(n) }).transpose().context("watching the NFLOG socket")?;
    let mut packets = crate::netfilter::nflog::Reporter::default();
    let mut pins = crate::daemon::pins::PinKeeper::default();
    let mut uninspected = crate::daemon::uninspected::UninspectedWatch::default();
    uninspected.check(guard);
    loop {
        tokio::select! {
            ready = async {
                match nflog.as_mut() {
                    Some(fd) => fd.readable_mut().await,
                    None => std::future::pending().await,
                }
            } => {
                let mut ready = ready?;
                let now = std::time::Instant::now();
                let (logged, drained) = ready.get_inner_mut().read(EVENT_BATCH / 8)?;
                for l in logged {
                    let key = AnyKey::Other(crate::netfilter::nflog::aggregation_key(&l));
                    if let Some(sample) = aggregator.is_repeat(&key, now) {
                        hub.repeat(sample);
                        continue;
                    }
                    let report = packets.report(&l);
                    emit(&report);
                    aggregator.delivered(key, serde_json::to_value(&report).unwrap_or_default(), now);
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
                let now = std::time::Instant::now();
                for _ in 0..EVENT_BATCH {
                    let Some(item) = ring.next() else { break };
                    drained = false;
                    // Read once; an unknown kind is skipped.
                    let Some(record) = Record::parse(&item) else { continue };
                    let key = AnyKey::of(&record);
                    if let Some(sample) = aggregator.is_repeat(&key, now) {
                        hub.repeat(sample);
                        continue;
                    }
                    let ev = enricher.report(&record);
                    // The typed event keeps its documented key order; the Value (sorted keys)
                    // only describes the repeats later.
                    emit(&ev);
                    aggregator.delivered(key, serde_json::to_value(&ev).unwrap_or_default(), now);
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
                tokio::time::sleep(crate::daemon::reload::SETTLE).await;
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
