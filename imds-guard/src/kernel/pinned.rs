//! Read-only view of what a pin directory enforces, for `status` and `unload`; works whether or not
//! a daemon is running.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use imds_guard_common::{
    config::{Active, GENERATION_SLOTS, GenConfig, Mode},
    maps,
    rule::{RuleKey, RuleValue},
    stats::Stat,
};
use serde::Serialize;

use super::paths::{PROGRAMS, SOCKMAP_PROGS, attached_pin, link_pin, map_pin};

fn open(pin_dir: &Path, name: &str) -> anyhow::Result<Map> {
    let path = map_pin(pin_dir, name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Map::from_map_data(data)?)
}

/// The maps a verdict depends on, opened from their pins.
pub struct PinnedMaps {
    pub active: Active,
    pub config: Array<MapData, GenConfig>,
    pub rules: HashMap<MapData, RuleKey, RuleValue>,
}

pub fn open_maps(pin_dir: &Path) -> anyhow::Result<PinnedMaps> {
    if !map_pin(pin_dir, maps::ACTIVE).exists() {
        not_mine(pin_dir)?;
        anyhow::bail!("nothing is pinned in {}: imds-guard is not enforcing there", pin_dir.display());
    }
    let active: Array<_, Active> = Array::try_from(open(pin_dir, maps::ACTIVE)?)?;
    Ok(PinnedMaps {
        active: active.get(&0, 0)?,
        config: Array::try_from(open(pin_dir, maps::CONFIG)?)?,
        rules: HashMap::try_from(open(pin_dir, maps::RULES)?)?,
    })
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub pin_dir: PathBuf,
    /// Link pins present (each one keeps a program attached).
    pub links: Vec<String>,
    /// How many programs a daemon on this kernel attaches.
    #[serde(skip)]
    pub wanted: usize,
    pub enforcing: bool,
    pub generation: u32,
    pub mode: &'static str,
    pub endpoints: Vec<String>,
    pub rules: u32,
    /// Kernel rule entries of the live generation (counting them walks the rules map, so health
    /// checks, which only need `enforcing`, leave it out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_entries: Option<usize>,
    pub policy_digest: String,
    pub cgroup_id: u64,
    pub counters: std::collections::BTreeMap<&'static str, u64>,
    /// What this kernel makes the guard run without (probed now, as the daemon did at start):
    /// (name, one sentence). Empty when nothing is missing.
    pub degraded: Vec<DegradedStatus>,
}

/// A part of the guard this kernel cannot run, as `status` shows it.
#[derive(Debug, Serialize)]
pub struct DegradedStatus {
    pub feature: &'static str,
    pub reason: String,
}

pub fn status(pin_dir: &Path) -> anyhow::Result<Status> {
    status_with(pin_dir, true)
}

/// [`status`], counting the live generation's rule entries only if `count_entries`.
pub fn status_with(pin_dir: &Path, count_entries: bool) -> anyhow::Result<Status> {
    let degraded = super::features::degradations()?;
    let inspects = !degraded.iter().any(|d| d.what == super::features::Degradation::Imdsv1Inspection);
    let attributes = !degraded.iter().any(|d| d.what == super::features::Degradation::CredentialAttribution);
    let links: Vec<String> = PROGRAMS
        .iter()
        .filter(|(_, l)| attached_pin(pin_dir, l).is_some())
        .map(|(_, l)| (*l).to_owned())
        .collect();
    if links.is_empty() && !map_pin(pin_dir, maps::ACTIVE).exists() {
        anyhow::bail!("nothing is pinned in {}: imds-guard is not enforcing there", pin_dir.display());
    }
    if !map_pin(pin_dir, maps::ACTIVE).exists() {
        not_mine(pin_dir)?;
    }
    let PinnedMaps { active, config, rules } = open_maps(pin_dir)?;
    let cfg = config.get(&(active.generation % GENERATION_SLOTS), 0)?;
    let rule_entries = count_entries
        .then(|| rules.keys().filter_map(Result::ok).filter(|k| k.generation == active.generation).count());
    let counters = counters(pin_dir)?;
    let mut endpoints: Vec<String> = cfg.v4[..cfg.v4_count as usize]
        .iter()
        .map(|w| std::net::Ipv4Addr::from(w.to_ne_bytes()).to_string())
        .collect();
    for w in &cfg.v6[..cfg.v6_count as usize] {
        let mut b = [0u8; 16];
        for (i, x) in w.iter().enumerate() {
            b[4 * i..4 * i + 4].copy_from_slice(&x.to_ne_bytes());
        }
        endpoints.push(std::net::Ipv6Addr::from(b).to_string());
    }
    Ok(Status {
        pin_dir: pin_dir.to_owned(),
        // Every program a daemon on this kernel attaches: without the inspector, the connect
        // hooks; without the response hook, all but it.
        wanted: super::paths::wanted(inspects, attributes).count(),
        enforcing: super::paths::wanted(inspects, attributes)
            .all(|(_, l)| links.iter().any(|have| have == l))
            && cfg.generation == active.generation
            && active.generation != 0,
        links,
        generation: active.generation,
        mode: (Mode::from_u32(cfg.mode)).name(),
        endpoints,
        rules: cfg.rule_count,
        rule_entries,
        policy_digest: cfg.digest.iter().map(|b| format!("{b:02x}")).collect(),
        cgroup_id: cfg.attach_cgroup_id,
        counters,
        degraded: degraded
            .iter()
            .map(|d| DegradedStatus { feature: d.what.name(), reason: d.sentence() })
            .collect(),
    })
}

/// Fails, saying so, when the maps in `pin_dir` are of another imds-guard version's layout.
fn not_mine(pin_dir: &Path) -> anyhow::Result<()> {
    if let Some(d) = crate::kernel::paths::other_map_dirs(pin_dir).first() {
        anyhow::bail!(
            "the maps in {} were made by an imds-guard version with another map layout, which this \
             binary cannot read; enforcement is unaffected. Restart the daemon with this version to \
             upgrade them in place, or use the matching `imds-guard` binary",
            d.display()
        );
    }
    Ok(())
}

/// The kernel programs' counters, summed over CPUs.
pub fn counters(pin_dir: &Path) -> anyhow::Result<std::collections::BTreeMap<&'static str, u64>> {
    let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(open(pin_dir, maps::STATS)?)?;
    let mut counters = std::collections::BTreeMap::new();
    for s in Stat::ALL {
        let v = stats.get(&(s as u32), 0)?;
        counters.insert(s.name(), v.iter().sum());
    }
    Ok(counters)
}

/// Detaches the programs (`BPF_LINK_DETACH`, so that they stop even while a running daemon holds
/// the links) and removes the link and map pins and the directories. Returns what was removed.
pub fn unload(pin_dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    // `<link>_new`: an upgrade's new message-hook link, if one was interrupted before taking over.
    let names = PROGRAMS.iter().flat_map(|(_, l)| [(*l).to_owned(), format!("{l}_new")]);
    for l in names {
        let p = link_pin(pin_dir, &l);
        if p.exists() {
            let link =
                crate::kernel::bpf_sys::obj_get(&p).with_context(|| format!("opening {}", p.display()))?;
            crate::kernel::bpf_sys::link_detach(std::os::fd::AsFd::as_fd(&link))
                .with_context(|| format!("detaching {}", p.display()))?;
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            removed.push(format!("link {} (program detached)", p.display()));
        }
    }
    // The sockhash programs attached through their map (Linux < 6.10): detached from the map,
    // whoever else holds the map (a running daemon).
    for (link, prog_pin) in SOCKMAP_PROGS {
        use crate::kernel::bpf_sys::SockmapHook;
        let hook = if link == "msg" { SockmapHook::Msg } else { SockmapHook::StreamVerdict };
        let prog = link_pin(pin_dir, prog_pin);
        if !prog.exists() {
            continue;
        }
        use std::os::fd::AsFd as _;
        let fd =
            crate::kernel::bpf_sys::obj_get(&prog).with_context(|| format!("opening {}", prog.display()))?;
        if let Ok(map) = crate::kernel::bpf_sys::obj_get(&map_pin(pin_dir, maps::SOCKETS)) {
            match crate::kernel::bpf_sys::sockmap_prog_detach(map.as_fd(), fd.as_fd(), hook) {
                // Not (or no longer) attached to this map: nothing to detach.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) => {}
                r => r.with_context(|| format!("detaching {} from its map", prog.display()))?,
            }
        }
        std::fs::remove_file(&prog).with_context(|| format!("removing {}", prog.display()))?;
        removed.push(format!("program {} (detached from its map)", prog.display()));
    }
    for d in crate::kernel::paths::other_map_dirs(pin_dir) {
        removed.extend(super::paths::remove_map_dir(&d));
    }
    for name in maps::ALL {
        let p = map_pin(pin_dir, name);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
            removed.push(format!("map {}", p.display()));
        }
    }
    for d in [pin_dir.join("links"), crate::kernel::paths::maps_dir(pin_dir), pin_dir.to_owned()] {
        if d.exists() {
            std::fs::remove_dir(&d).with_context(|| {
                format!("removing {} (it holds pins imds-guard did not make)", d.display())
            })?;
        }
    }
    Ok(removed)
}
