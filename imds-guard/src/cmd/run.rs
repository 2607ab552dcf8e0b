//! `imds-guard run`: install the policy, attach, then report events and reload on SIGHUP until
//! SIGTERM/SIGINT. Exiting leaves enforcement in place (the links are pinned).

use std::{io::Write as _, path::Path};

use anyhow::Context as _;
use serde_json::json;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    cli::RunArgs,
    config::Source,
    env,
    events::Enricher,
    guard::Guard,
    policy::{Policy, mode_name},
};

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let source = Source::read(&args.config)?;
    let policy = Policy::from_source(&source)?;
    let cgroup_root = env::cgroup2_root()?;
    let cgroup = args.cgroup.clone().unwrap_or_else(|| cgroup_root.clone());
    env::check_cgroup2_dir(&cgroup)?;
    let pin_dir = &args.pins.pin_dir;
    env::prepare_pin_dir(pin_dir)?;

    let (mut guard, attachment) = Guard::start(pin_dir, &cgroup, &policy)?;
    emit(&json!({
        "schema": crate::events::SCHEMA_VERSION,
        "event": "guard_started",
        "attachment": attachment,
        "mode": mode_name(policy.mode),
        "generation": guard.generation(),
        "policy": source.name,
        "policy_digest": policy.digest,
        "rules": policy.rules.len(),
        "cgroup": cgroup.display().to_string(),
        "pin_dir": pin_dir.display().to_string(),
    }));
    tracing::info!(
        mode = mode_name(policy.mode),
        cgroup = %cgroup.display(),
        pin_dir = %pin_dir.display(),
        ?attachment,
        "enforcing"
    );
    // systemd Type=notify: READY only once the programs are attached with the policy live.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(serve(&mut guard, &args.config, cgroup_root))
}

async fn serve(
    guard: &mut Guard,
    config: &Path,
    cgroup_root: std::path::PathBuf,
) -> anyhow::Result<()> {
    // SAFETY: the RingBuf owns its map fd, which is neither closed nor replaced while the AsyncFd
    // holds it.
    let mut events =
        unsafe { AsyncFd::register(guard.take_events()?) }.context("watching the ring buffer")?;
    let mut enricher = Enricher::new(cgroup_root);
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            ready = events.readable_mut() => {
                let mut ready = ready?;
                let ring = ready.get_inner_mut();
                while let Some(item) = ring.next() {
                    if let Some(ev) = enricher.decode(&item) {
                        emit(&ev);
                    }
                }
                ready.clear_ready();
            }
            _ = hup.recv() => reload(guard, config),
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!(pin_dir = %guard.pin_dir().display(), "exiting; enforcement stays in place (imds-guard unload removes it)");
    Ok(())
}

fn reload(guard: &mut Guard, config: &Path) {
    let started = std::time::Instant::now();
    let result = Source::read(config)
        .and_then(|s| Policy::from_source(&s))
        .map_err(anyhow::Error::from)
        .and_then(|p| guard.apply(&p).map(|g| (g, p)));
    match result {
        Ok((generation, policy)) => {
            tracing::info!(generation, digest = %policy.digest, "policy reloaded");
            emit(&json!({
                "schema": crate::events::SCHEMA_VERSION,
                "event": "policy_reloaded",
                "generation": generation,
                "mode": mode_name(policy.mode),
                "policy_digest": policy.digest,
                "rules": policy.rules.len(),
                "elapsed_us": started.elapsed().as_micros(),
            }));
        }
        Err(e) => {
            tracing::error!(
                generation = guard.generation(),
                "policy reload refused, previous policy stays enforced: {e:#}"
            );
            emit(&json!({
                "schema": crate::events::SCHEMA_VERSION,
                "event": "policy_reload_failed",
                "generation": guard.generation(),
                "error": format!("{e:#}"),
            }));
        }
    }
}

/// One JSON object per line on stdout, flushed at once.
fn emit<T: serde::Serialize>(v: &T) {
    let mut out = std::io::stdout().lock();
    if serde_json::to_writer(&mut out, v).is_ok() {
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
}
