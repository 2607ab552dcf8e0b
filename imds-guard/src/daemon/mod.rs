//! The daemon (`imds-guard run`): install the policy, attach, then report events and keep the
//! policy current (SIGHUP, file changes, identity changes) until SIGTERM/SIGINT. Exiting leaves
//! enforcement in place (the links are pinned).

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use self::install::{Enforcer, NetfilterRuntime};
use crate::{
    host::env,
    kernel::{btf, features},
    netfilter::{self, nflog::Nflog},
    policy::{Host, Policy, Preexisting, source::Source},
    report::{
        Consumers, Event, Reporter,
        event::{DegradedPart, GuardStarted, NetfilterSummary},
        metrics::{BuildInfo, KernelView, Metrics},
        seen::Seen,
        sinks::{Output, SinkConfig},
    },
};

mod event_loop;
pub mod install;
mod installer;
pub mod pins;
pub mod preexisting;
pub mod reload;
pub mod uninspected;
pub mod watch;

/// What the daemon runs with (`imds-guard run`'s arguments).
#[derive(Clone, Debug)]
pub struct Config {
    /// The policy file.
    pub policy: PathBuf,
    /// The cgroup v2 directory to attach to (`None`: the cgroup2 root, the whole host).
    pub cgroup: Option<PathBuf>,
    pub pin_dir: PathBuf,
    /// Kernel BTF, for the struct offsets `exe` rules need.
    pub btf: PathBuf,
    /// Identical repeats within this window are reported once, with a count (zero: every one).
    pub aggregate_window: Duration,
    pub sinks: SinkConfig,
    /// The sinks' event format.
    pub event_format: crate::report::format::EventFormat,
    /// The event socket (`None`: off).
    pub events_socket: Option<PathBuf>,
    /// Where `/metrics` is served (`None`: off), and whether a non-loopback address is allowed.
    pub metrics_addr: Option<SocketAddr>,
    pub metrics_allow_remote: bool,
    /// A Unix socket to serve metrics on too, and its mode (`--metrics-socket`).
    pub metrics_socket: Option<(PathBuf, u32)>,
    /// Start even when the policy asks for what this kernel cannot do (`--allow-degraded`).
    pub allow_degraded: bool,
}

/// What start-up found on the host: the cgroup2 root, the cgroup to attach to, the policy.
struct Start {
    cgroup_root: PathBuf,
    cgroup: PathBuf,
    host: Host,
    source: Source,
    policy: Policy,
    exe_offsets: Option<imds_guard_common::config::ExeOffsets>,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config: &Config) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let Start { cgroup_root, cgroup, host, source, policy, exe_offsets } = start(config)?;
    let pin_dir = &config.pin_dir;
    let (netfilter, nflog) = start_netfilter(&policy)?;
    let degraded = degradations(netfilter.reduced, config.allow_degraded)?;
    // A feature the kernel has but that fails to load is an error (explained if a probe finds
    // it missing after all); a part found missing up front is not loaded at all.
    let used: &[features::Feature] = match (degraded.inspects(), degraded.attributes()) {
        (true, true) => &features::USED,
        (true, false) => &features::USED[..features::USED.len() - 1],
        (false, _) => &features::REQUIRED,
    };
    let (mut enforcer, attachment) =
        Enforcer::start(pin_dir, &cgroup, &policy, exe_offsets, netfilter, degraded)
            .map_err(|e| features::explain_failure(e, used))?;
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "programs loaded and attached");
    let events = enforcer.kernel.take_events()?;
    let consumers = Arc::new(start_outputs(config, enforcer.degraded())?);
    let reporter: Arc<dyn Reporter> = consumers.clone();
    let mut reloader = reload::Reloader::new(config.policy.clone(), host, source, policy, reporter.clone());
    // Signals first: a reload requested the moment we are ready must not kill us.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let signals = rt.block_on(async { event_loop::Signals::new() })?;
    // Watch, then look once more, so that nothing that changed since the policy was read (a
    // unit's cgroup appearing, the file being edited) is missed; only then say we are ready.
    let watch = watch::rewatch(&mut reloader, &mut enforcer, Some(reload::Reason::FileChanged), false)?;
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "watching");
    // Connections opened before the hooks were attached cannot be judged by them: report them
    // (and, if the policy says so, reset the ones denied processes hold).
    for c in preexisting::at_start(&reloader.policy, &cgroup_root, &cgroup) {
        reporter.report(c);
    }
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "connections open before the start looked at");
    let mut started = GuardStarted {
        attachment: attachment.name().to_owned(),
        mode: reloader.policy.mode.name().to_owned(),
        generation: enforcer.kernel.generation(),
        policy: reloader.policy.source.clone(),
        policy_digest: reloader.policy.digest.clone(),
        rules: reloader.policy.rules.len(),
        cgroup: cgroup.display().to_string(),
        pin_dir: pin_dir.display().to_string(),
        metrics: None,
        events_socket: None,
        enforcement: if netfilter.reduced { "reduced" } else { "cgroup" }.to_owned(),
        netfilter: netfilter_summary(&enforcer),
        degraded: enforcer.degraded().iter().map(degraded_part).collect(),
        msg_attach: enforcer.kernel.msg_attach().map(str::to_owned),
        reports_reads: enforcer.kernel.msg_attach().is_some(),
    };
    let pods = reloader.policy.pods.clone();
    let (updates_tx, updates) = tokio::sync::mpsc::unbounded_channel();
    let installer = installer::Installer::spawn(
        installer::Owned { enforcer, reloader, reporter: reporter.clone() },
        updates_tx,
    )?;
    let result = rt.block_on(async {
        // Consumers first, so that the first events have somewhere to go.
        (started.events_socket, started.metrics) = serve_consumers(config, &consumers)?;
        reporter.report(Event::GuardStarted(started));
        tracing::info!(cgroup = %cgroup.display(), pin_dir = %pin_dir.display(), ?attachment, "enforcing");
        // systemd Type=notify: READY only once the programs are attached with the policy live.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        let sources = event_loop::Sources { events, watch, signals, nflog, updates };
        let setup = event_loop::Setup { cgroup_root, pods, aggregate_window: config.aggregate_window };
        event_loop::serve(sources, setup, &installer, consumers.as_ref()).await
    });
    installer.exit();
    consumers.output.flush();
    if let Some(path) = &config.events_socket {
        let _ = std::fs::remove_file(path);
    }
    result
}

/// Checks the host and reads the policy: capabilities, cgroup2 (mounted if the host has none),
/// the policy resolved, kernel BTF for exe rules, the pin directory.
fn start(config: &Config) -> anyhow::Result<Start> {
    let t0 = Instant::now();
    env::check_capabilities()?;
    let (cgroup_root, _) = env::cgroup2_root_or_mount()?;
    let host = Host { cgroup_root: cgroup_root.clone(), waiting_names: true };
    let source = Source::read(&config.policy)?;
    let policy = Policy::from_source(&source, &host)?;
    for w in &policy.warnings {
        tracing::warn!("{w}");
    }
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "policy resolved");
    if policy.preexisting == Preexisting::Close {
        features::require(&[features::Feature::PidfdGetfd])?;
    }
    let exe_offsets = match btf::Btf::from_file(&config.btf).and_then(|b| btf::exe_offsets(&b)) {
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
    tracing::debug!(ms = t0.elapsed().as_secs_f64() * 1e3, "kernel BTF read");
    let cgroup = config.cgroup.clone().unwrap_or_else(|| cgroup_root.clone());
    env::check_cgroup2_dir(&cgroup)?;
    crate::kernel::paths::prepare(&config.pin_dir, false)?;
    Ok(Start { cgroup_root, cgroup, host, source, policy, exe_offsets })
}

/// The event socket and the metrics server, when asked for: (the socket's path, the metrics
/// address), each `None` when off. A socket that cannot be made is a warning: enforcement and
/// the sinks do not depend on it.
fn serve_consumers(
    config: &Config,
    consumers: &Arc<Consumers>,
) -> anyhow::Result<(Option<String>, Option<String>)> {
    let mut socket = None;
    if let Some(path) = &config.events_socket {
        match crate::report::socket::bind(path) {
            Ok(l) => {
                tokio::spawn(crate::report::socket::serve(l, consumers.clone()));
                socket = Some(path.display().to_string());
            }
            Err(e) => tracing::warn!("no event socket: {e:#}"),
        }
    }
    let mut metrics = None;
    if let Some(addr) = config.metrics_addr {
        let l = crate::report::metrics::bind(addr, config.metrics_allow_remote)?;
        let addr = l.local_addr()?;
        tracing::info!(%addr, "serving metrics");
        metrics = Some(addr.to_string());
        tokio::spawn(crate::report::metrics::serve(
            crate::report::metrics::Listener::Tcp(l),
            consumers.clone(),
        ));
    }
    if let Some((path, mode)) = &config.metrics_socket {
        let l = crate::report::metrics::bind_socket(path, *mode)?;
        tracing::info!(socket = %path.display(), "serving metrics");
        metrics.get_or_insert_with(|| format!("unix:{}", path.display()));
        tokio::spawn(crate::report::metrics::serve(
            crate::report::metrics::Listener::Unix(l),
            consumers.clone(),
        ));
    }
    Ok((socket, metrics))
}

/// The kernel's counters and attachment, read from the pins at each scrape.
struct Pinned(PathBuf);

impl KernelView for Pinned {
    fn counters(&self) -> anyhow::Result<std::collections::BTreeMap<&'static str, u64>> {
        crate::kernel::pinned::counters(&self.0)
    }

    fn enforcing(&self) -> bool {
        crate::kernel::pinned::status_with(&self.0, false).is_ok_and(|s| s.enforcing)
    }
}

/// What this kernel makes the daemon run without, each said once in a warning (nothing in reduced
/// mode, where no program is attached).
fn degradations(reduced: bool, allowed: bool) -> anyhow::Result<install::Degraded> {
    let parts = if reduced { Vec::new() } else { features::degradations()? };
    for d in &parts {
        tracing::warn!(degraded = d.what.name(), "{}", d.sentence());
    }
    Ok(install::Degraded { parts, allowed })
}

/// A degradation as `guard_started` says it.
pub fn degraded_part(d: &features::Degraded) -> DegradedPart {
    DegradedPart {
        feature: d.what.name().to_owned(),
        missing: d.missing.iter().map(|f| f.name().to_owned()).collect(),
        reason: d.sentence(),
    }
}

/// The sinks `config` asks for, and the metrics and table of what was seen.
fn start_outputs(config: &Config, degraded: &[features::Degraded]) -> anyhow::Result<Consumers> {
    tracing::debug!(sinks = ?config.sinks, "event sinks");
    let output = Output::start(config.sinks.clone())?;
    let names: Vec<&str> = degraded.iter().map(|d| d.what.name()).collect();
    let build = BuildInfo::here(&names);
    let metrics = Metrics::new(Box::new(Pinned(config.pin_dir.clone())), output.stats.clone(), build);
    Ok(Consumers {
        output,
        metrics,
        seen: Seen::default(),
        policy: config.policy.clone(),
        format: config.event_format,
        hostname: crate::report::format::Context::here().hostname,
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
fn netfilter_summary(guard: &Enforcer) -> NetfilterSummary {
    let Some(plan) = guard.netfilter_plan().filter(|p| p.wants_table()) else {
        return NetfilterSummary::default();
    };
    for n in &plan.not_enforced {
        tracing::warn!(rule = n.rule, "reduced mode does not enforce {}: {}", n.name, n.reason);
    }
    NetfilterSummary {
        table: Some(format!("inet {}", netfilter::TABLE)),
        forward: plan.forward,
        reduced: plan.reduced,
        nflog_group: Some(plan.nflog_group),
        not_enforced: Some(plan.not_enforced.clone()),
    }
}
