//! The one owner of the loaded kernel programs and maps.
//!
//! The links keep the programs attached after the daemon exits; only `unload` removes them. A new
//! daemon that finds the links replaces their programs in place (BPF_LINK_UPDATE): there is no
//! instant with no program attached. An upgrade whose maps have another layout creates its own
//! maps, installs the policy in them, swaps its programs into the same links (and attaches the
//! message hook to its new sockhash), then removes the old maps: still no unguarded instant.
//! The running daemon also holds a descriptor of each link and map, so that losing the pins (bpffs
//! unmounted) does not detach anything while it runs; see [`crate::daemon::pins`].

use std::{
    fs::File,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::SockHash,
    maps::{Array, HashMap, MapData, RingBuf},
    programs::{CgroupAttachMode, Program, links::FdLink},
};
use imds_guard_common::{
    config::{Active, ExeOffsets, GenConfig},
    endpoint::{Fast, Prefilter},
    maps,
    rule::{RuleKey, RuleValue},
};

use super::{
    bpf_sys::{RcuBarrier, link_attached, link_update, obj_get},
    paths::{PROGRAMS, link_pin, map_pin, maps_dir, other_map_dirs, remove_map_dir},
};
use crate::policy::Policy;

/// The eBPF object built by build.rs (public for the benchmark, which loads its empty programs).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/imds-guard-ebpf"));

/// How the programs came to be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attachment {
    /// Newly attached to the cgroup.
    Attached,
    /// Found pinned from an earlier daemon; its program was replaced in place.
    Adopted,
    /// Reduced mode: the programs are not attached; nftables output rules enforce what they can.
    NotAttached,
}

/// How the netfilter layer runs for this daemon (fixed at start: changing it needs a restart).
#[derive(Clone, Copy, Debug)]
pub struct NetfilterRuntime {
    /// Reduced mode: nftables output rules instead of the cgroup programs.
    pub reduced: bool,
    /// The NFLOG group the daemon has bound (`None`: none, so the policy may not want the table).
    pub nflog_group: Option<u16>,
}

pub struct Guard {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    cgroup_id: u64,
    barrier: std::sync::Arc<RcuBarrier>,
    /// The previous generation's removal, running in the background after a switch (see
    /// [`Guard::finish_removal`]).
    removal: Option<std::thread::JoinHandle<anyhow::Result<std::time::Duration>>>,
    /// A program may be reading the maps: only then must a switch wait for running programs
    /// before the old generation goes. False for maps this daemon just created, until it
    /// attaches its programs (the wait took ~13 ms of each start).
    readers: bool,
    generation: u32,
    /// From the kernel's BTF; `None` when it could not be read (exe rules are then refused).
    exe_offsets: Option<ExeOffsets>,
    /// What the programs' global holds (written whole on every change).
    fast: Fast,
    /// The rule keys of the live generation, once this daemon has installed one: a reload then
    /// deletes exactly those instead of walking the whole map (two walks of 10k-rule maps were
    /// most of a reload's kernel time).
    live_keys: Option<Vec<RuleKey>>,
    /// The last install's timings: rules written, switched (enforced), returned (the removal of
    /// the old generation goes on in the background).
    last_timings: Option<(std::time::Duration, std::time::Duration, std::time::Duration)>,
    netfilter: NetfilterRuntime,
    /// The nftables table as last installed (to restore it if the maps cannot follow).
    nft_plan: Option<crate::netfilter::Plan>,
    /// A descriptor of every pinned link and map, with its pin: while the daemon runs, the links
    /// stay attached even if their pins go (bpffs unmounted), and can be pinned again.
    held: Vec<Held>,
}

/// A pinned object the daemon keeps a descriptor of.
pub struct Held {
    pub pin: PathBuf,
    pub fd: std::os::fd::OwnedFd,
    /// A link (else a map).
    pub link: bool,
}

impl Guard {
    /// Loads the programs (reusing pinned maps), installs `policy`, then attaches — or, when an
    /// earlier daemon's links are pinned, swaps the new programs into them atomically. The policy
    /// is live in the maps before any program can run, so there is no unconfigured instant.
    pub fn start(
        pin_dir: &Path,
        cgroup: &Path,
        policy: &Policy,
        exe_offsets: Option<ExeOffsets>,
        netfilter: NetfilterRuntime,
    ) -> anyhow::Result<(Self, Attachment)> {
        let cgroup_id = crate::host::env::cgroup_id(cgroup)?;
        let maps_dir = maps_dir(pin_dir);
        // No maps of this layout yet: this daemon makes them (first start, or an upgrade).
        let fresh_maps = !maps_dir.join(maps::ACTIVE).exists();
        let old_maps = other_map_dirs(pin_dir);
        let ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(EBPF_OBJECT)
            .map_err(|e| anyhow!(e))
            .context(
                "loading the eBPF programs failed (the maps pinned in the pin directory may be \
                 from an incompatible version: `imds-guard unload` removes them)",
            )?;
        let barrier = std::sync::Arc::new(RcuBarrier::new().context("creating the RCU barrier map")?);
        if netfilter.reduced
            && let Some((_, l)) = PROGRAMS.iter().find(|(_, l)| link_pin(pin_dir, l).exists())
        {
            bail!(
                "reduced mode, but an earlier daemon's programs are attached ({} is pinned); \
                 `imds-guard unload` them first, or let this daemon adopt them (reduced_mode = \"auto\")",
                link_pin(pin_dir, l).display()
            );
        }
        let mut guard = Guard {
            ebpf,
            pin_dir: pin_dir.to_owned(),
            cgroup_id,
            barrier,
            removal: None,
            readers: !fresh_maps,
            generation: 0,
            exe_offsets,
            fast: Fast::default(),
            live_keys: None,
            last_timings: None,
            netfilter,
            nft_plan: None,
            held: Vec::new(),
        };
        for name in maps::ALL {
            let pin = map_pin(pin_dir, name);
            let fd = obj_get(&pin).with_context(|| format!("opening {}", pin.display()))?;
            guard.held.push(Held { pin, fd, link: false });
        }
        // `nft` is a process of its own: the verifier checks the programs meanwhile. Both must
        // succeed before the maps are written or anything is attached.
        let (next, plan, unchanged) = guard.prepare(policy).context("installing the policy")?;
        std::thread::scope(|s| {
            let nft = (!unchanged).then(|| s.spawn(|| crate::netfilter::apply(&plan)));
            let loaded = if netfilter.reduced { Ok(()) } else { guard.load_programs() };
            let nft = nft.map_or(Ok(()), |h| {
                h.join().unwrap_or_else(|_| Err(anyhow!("installing the nftables table panicked")))
            });
            loaded.and(nft)
        })
        .context("installing the policy")?;
        guard.commit(policy, next, plan, unchanged).context("installing the policy")?;
        if netfilter.reduced {
            // The maps hold the policy (status, explain), but no program is attached to read them.
            return Ok((guard, Attachment::NotAttached));
        }

        let cgroup_file =
            File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        let sockets = SockHash::<_, u64>::try_from(guard.ebpf.map(maps::SOCKETS).context("SOCKETS map")?)?
            .fd()
            .try_clone()?;
        let mut attachment = Attachment::Attached;
        // The message hook's link of an upgrade, pinned beside the old one until all is swapped.
        let mut new_msg_link = None;
        for (prog_name, link_name) in PROGRAMS {
            let link_path = link_pin(pin_dir, link_name);
            let mut adopt = link_path.exists();
            if adopt && !obj_get(&link_path).and_then(|l| link_attached(l.as_fd())).unwrap_or(true) {
                // Detached behind our back (`bpftool link detach`, or its cgroup was removed):
                // adopting it would enforce nothing. Attach afresh instead.
                tracing::warn!(link = %link_path.display(), "the pinned link is detached; attaching anew");
                std::fs::remove_file(&link_path)
                    .with_context(|| format!("removing the detached link {}", link_path.display()))?;
                adopt = false;
            }
            let program =
                guard.ebpf.program_mut(prog_name).with_context(|| format!("program {prog_name} missing"))?;
            // Either swap the (loaded) program into the pinned link of an earlier daemon, or attach
            // it afresh. A cgroup bpf_link always coexists with other programs (links are
            // multi-attach by nature) and the kernel refuses attach flags on link creation, so
            // `Single` (no flag) is what asks for a link.
            // The two cgroup program types have the same attach/take_link shape.
            macro_rules! cgroup_link {
                ($p:expr) => {{
                    if adopt {
                        None
                    } else {
                        let id = $p.attach(&cgroup_file, CgroupAttachMode::Single)?;
                        Some($p.take_link(id)?.try_into()?)
                    }
                }};
            }
            let fresh: Option<FdLink> = match program {
                Program::CgroupSockAddr(p) => cgroup_link!(p),
                Program::SockOps(p) => cgroup_link!(p),
                Program::SkMsg(p) => {
                    if adopt && !fresh_maps {
                        None
                    } else {
                        let id = p.attach(&sockets)?;
                        Some(p.take_link(id)?.try_into().map_err(|e| {
                            anyhow!(
                                "{e}: this kernel attached the message hook without a bpf_link (Linux < 6.10)"
                            )
                        })?)
                    }
                }
                _ => bail!("program {prog_name} has an unexpected type"),
            };
            let link = match fresh {
                Some(link) if adopt => {
                    // An upgrade: the old link is attached to the old sockhash; this one to the new
                    // sockhash, which the new sockops program (swapped in below) fills. It takes the
                    // old link's pin once everything is swapped.
                    // (bpffs reserves '.' in names.)
                    let tmp = link_path.with_file_name(format!("{link_name}_new"));
                    let _ = std::fs::remove_file(&tmp);
                    link.pin(&tmp)
                        .map_err(|e| anyhow!("{e}"))
                        .with_context(|| format!("pinning {}", tmp.display()))?;
                    let fd = obj_get(&tmp).with_context(|| format!("opening {}", tmp.display()))?;
                    new_msg_link = Some((tmp, link_path.clone()));
                    attachment = Attachment::Adopted;
                    fd
                }
                Some(link) => {
                    link.pin(&link_path)
                        .map_err(|e| anyhow!("{e}"))
                        .with_context(|| format!("pinning {}", link_path.display()))?;
                    obj_get(&link_path).with_context(|| format!("opening {}", link_path.display()))?
                }
                None => {
                    let link =
                        obj_get(&link_path).with_context(|| format!("opening {}", link_path.display()))?;
                    link_update(link.as_fd(), program.fd()?.as_fd())
                        .with_context(|| format!("replacing the program of {}", link_path.display()))?;
                    attachment = Attachment::Adopted;
                    link
                }
            };
            guard.held.push(Held { pin: link_path, fd: link, link: true });
        }
        guard.readers = true;
        if let Some((tmp, path)) = new_msg_link {
            // rename(2) on bpffs replaces the old pin in one step; the old link, attached to the old
            // sockhash, goes with its last reference.
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("replacing {} with {}", path.display(), tmp.display()))?;
        }
        if !old_maps.is_empty() {
            if attachment == Attachment::Adopted {
                tracing::info!(
                    ?old_maps,
                    "upgraded: programs swapped onto maps of a new layout; removing the old maps"
                );
            }
            for d in &old_maps {
                remove_map_dir(d);
            }
        }
        Ok((guard, attachment))
    }

    /// The last install's timings, from the start of writing its rules: written, switched (the new
    /// policy enforced), returned to the caller.
    #[must_use]
    pub const fn last_timings(
        &self,
    ) -> Option<(std::time::Duration, std::time::Duration, std::time::Duration)> {
        self.last_timings
    }

    #[must_use]
    pub const fn generation(&self) -> u32 {
        self.generation
    }

    #[must_use]
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// A kernel counter, summed over the CPUs.
    pub fn stat(&self, stat: imds_guard_common::stats::Stat) -> anyhow::Result<u64> {
        let map = self.ebpf.map(maps::STATS).context("STATS map")?;
        let stats: aya::maps::PerCpuArray<_, u64> = aya::maps::PerCpuArray::try_from(map)?;
        Ok(stats.get(&(stat as u32), 0)?.iter().sum())
    }

    /// The pinned links and maps, by descriptor (see [`crate::daemon::pins`]).
    #[must_use]
    pub fn held(&self) -> &[Held] {
        &self.held
    }

    /// Installs `policy` as a new generation and switches to it atomically. On error the live
    /// generation is untouched (whatever was written for the new one is removed).
    pub fn apply(&mut self, policy: &Policy) -> anyhow::Result<u32> {
        let (next, plan, unchanged) = self.prepare(policy)?;
        // The nftables table first: it is one transaction, and a refusal leaves everything as it was.
        if !unchanged {
            crate::netfilter::apply(&plan)?;
        }
        self.commit(policy, next, plan, unchanged)
    }

    /// Loads every program (the verifier runs here), none attached yet.
    fn load_programs(&mut self) -> anyhow::Result<()> {
        for (prog_name, _) in PROGRAMS {
            let t = std::time::Instant::now();
            let program =
                self.ebpf.program_mut(prog_name).with_context(|| format!("program {prog_name} missing"))?;
            match program {
                Program::CgroupSockAddr(p) => p.load(),
                Program::SockOps(p) => p.load(),
                Program::SkMsg(p) => p.load(),
                _ => bail!("program {prog_name} has an unexpected type"),
            }
            .with_context(|| format!("loading {prog_name} (verifier)"))?;
            tracing::debug!(program = prog_name, ms = t.elapsed().as_secs_f64() * 1e3, "loaded (verified)");
        }
        Ok(())
    }

    /// What installing `policy` takes: its generation, the nftables table, and whether that
    /// table is the one installed already. Refuses what this daemon cannot enforce.
    fn prepare(&self, policy: &Policy) -> anyhow::Result<(u32, crate::netfilter::Plan, bool)> {
        if policy.needs_exe() && self.exe_offsets.is_none() {
            bail!(
                "the policy has exe rules, but the kernel's BTF could not be read at start-up, so imds-guard \
                 cannot find a process's executable without guessing kernel struct layouts; refusing the policy"
            );
        }
        let active: Array<_, Active> = Array::try_from(self.ebpf.map(maps::ACTIVE).context("ACTIVE map")?)?;
        let live = active.get(&0, 0)?.generation;
        let next = match live.wrapping_add(1) {
            0 => 1,
            n => n,
        };
        let plan = crate::netfilter::Plan::new(policy, next, self.netfilter.reduced);
        self.check_netfilter(policy, &plan)?;
        // A reload that leaves the table as it is (the common case: a change of [[allow]] tables
        // that nftables does not express) keeps the installed rules, and their log prefixes keep
        // naming the generation that installed them.
        let unchanged = self.nft_plan.as_ref().is_some_and(|p| p.same_table(policy, self.netfilter.reduced));
        Ok((next, plan, unchanged))
    }

    /// Writes `policy` into the maps as `next` and switches to it, once its nftables table `plan`
    /// is installed (or `unchanged`); if the maps cannot take it, the previous table comes back.
    fn commit(
        &mut self,
        policy: &Policy,
        next: u32,
        plan: crate::netfilter::Plan,
        unchanged: bool,
    ) -> anyhow::Result<u32> {
        match self.apply_maps(policy, next) {
            Ok(()) => {
                if !unchanged {
                    self.nft_plan = Some(plan);
                }
                self.generation = next;
                Ok(next)
            }
            Err(e) => {
                if let Some(prev) = &self.nft_plan
                    && let Err(r) = crate::netfilter::apply(prev)
                {
                    tracing::error!("restoring the previous nftables table failed: {r:#}");
                }
                Err(e)
            }
        }
    }

    /// What the netfilter layer cannot change without a restart.
    fn check_netfilter(&self, policy: &Policy, plan: &crate::netfilter::Plan) -> anyhow::Result<()> {
        if crate::netfilter::decide_reduced(&policy.netfilter)? != self.netfilter.reduced {
            bail!(
                "[netfilter] reduced_mode now asks to {} the cgroup programs; that takes a restart of the daemon",
                if self.netfilter.reduced { "use" } else { "stop using" }
            );
        }
        if plan.wants_table() && self.netfilter.nflog_group != Some(plan.nflog_group) {
            bail!(
                "the netfilter rules would log to NFLOG group {}, which this daemon has not bound{}; \
                 that takes a restart of the daemon",
                plan.nflog_group,
                self.netfilter.nflog_group.map(|g| format!(" (it reads group {g})")).unwrap_or_default()
            );
        }
        Ok(())
    }

    /// The nftables table as installed last.
    #[must_use]
    pub fn netfilter_plan(&self) -> Option<&crate::netfilter::Plan> {
        self.nft_plan.as_ref()
    }

    /// Writes `policy` into the maps as generation `next` and switches to it.
    fn apply_maps(&mut self, policy: &Policy, next: u32) -> anyhow::Result<()> {
        self.finish_removal();
        let [active, config, rules, fast] =
            self.ebpf.maps_disjoint_mut([maps::ACTIVE, maps::CONFIG, maps::RULES, maps::FAST]);
        let mut fast: Array<_, Fast> = Array::try_from(fast.context("the programs' global (.data.imdsg)")?)?;
        let mut active: Array<_, Active> = Array::try_from(active.context("ACTIVE map")?)?;
        let mut config: Array<_, GenConfig> = Array::try_from(config.context("CONFIG map")?)?;
        let mut rules: HashMap<_, RuleKey, RuleValue> = HashMap::try_from(rules.context("RULES map")?)?;
        let rules_fd = {
            use aya::maps::IterableMap as _;
            use std::os::fd::AsRawFd as _;
            rules.map().fd().as_fd().as_raw_fd()
        };
        // SAFETY: the map (owned by self.ebpf) outlives this function.
        let rules_fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(rules_fd) };
        let t0 = std::time::Instant::now();
        let n = policy.rules.len();
        let (mut keys, mut values) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut cfg = policy.kernel_tables_with(next, |k, v| {
            keys.push(k);
            values.push(v);
        });
        cfg.attach_cgroup_id = self.cgroup_id;
        cfg.rule_count = u32::try_from(policy.rules.len()).unwrap_or(u32::MAX);
        cfg.exe_offsets = self.exe_offsets.unwrap_or_default();

        // Leftovers of an interrupted earlier attempt at `next` (by an earlier daemon: this one
        // cleans up after itself) would be enforced with it.
        if self.live_keys.is_none() {
            remove_where(&mut rules, |k| k.generation == next)?;
        }
        let live = active.get(&0, 0)?.generation;
        // One BPF_MAP_UPDATE_BATCH for the whole generation (one bpf() call per key took ~1 µs
        // each); a kernel without batch operations on hash maps gets them one by one.
        let (mut written, mut result) = crate::kernel::bpf_sys::map_update_batch(rules_fd, &keys, &values);
        if matches!(&result, Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | 524 /* ENOTSUPP */)))
            && written == 0
        {
            result = Ok(());
            for (k, v) in keys.iter().zip(&values) {
                if let Err(e) = rules.insert(k, v, 0) {
                    result = Err(std::io::Error::other(e));
                    break;
                }
                written += 1;
            }
        }
        if let Err(e) = result {
            // Say how full the map is, and with what: it holds two full generations, so a
            // full map means entries that are neither the live policy's nor this one's.
            let total = keys.len();
            let keys: Vec<RuleKey> = rules.keys().filter_map(Result::ok).collect();
            let live_n = keys.iter().filter(|k| k.generation == live).count();
            let other = keys.len().saturating_sub(live_n + written);
            remove_where(&mut rules, |k| k.generation == next)?;
            // Entries nobody accounts for fill the map: the next install sweeps the whole map,
            // not only the keys this daemon knows it wrote.
            self.live_keys = None;
            return Err(anyhow!(e).context(format!(
                "writing rule {} of {}: {} of the {} entries of the kernel's rules map are in use ({live_n} \
                 by the policy in force, {written} by this one, {other} by neither); the previous policy \
                 stays enforced",
                written + 1,
                total,
                keys.len(),
                maps::RULES_CAPACITY
            )));
        }
        let t_written = t0.elapsed();
        tracing::debug!(rules = keys.len(), "rules written");
        let slot = next % imds_guard_common::config::GENERATION_SLOTS;
        config.set(slot, &cfg, 0)?;
        // The new slot's prefilter, before the switch (the live slot's bytes are rewritten unchanged).
        self.fast.filters[slot as usize] = Prefilter::of(&cfg);
        fast.set(0, &self.fast, 0)?;
        // The switch: one 8-byte map update, then its mirror in the programs' global.
        active.set(0, &Active { generation: next, _pad: 0 }, 0)?;
        self.fast.generation = next;
        fast.set(0, &self.fast, 0)?;
        // From here every program run judges by the new generation.
        let t_switched = t0.elapsed();
        // The switch is done: a failure to remove the old generation's keys leaves them unused
        // (they are looked for by generation), so it is reported, not an error.
        match self.live_keys.replace(keys) {
            // A reload: the keys this daemon wrote last time go, in the background. Their removal
            // must wait until no program that read the old generation still runs (an RCU grace
            // period, ~10-20 ms here, whatever the policy's size); the daemon's loop (events,
            // metrics, signals) need not wait with it. The next install waits for it first.
            // Nothing after the switch may fail the install (the new policy is live): a removal
            // that cannot start or complete leaves entries nobody reads, and the next install
            // sweeps the whole map instead (`live_keys` unknown).
            Some(old) => {
                let (barrier, readers) = (self.barrier.clone(), self.readers);
                let started = rules_fd.try_clone_to_owned().and_then(|map| {
                    std::thread::Builder::new()
                        .name("imdsg-removal".into())
                        .spawn(move || remove_generation(&barrier, readers, &map, &old))
                });
                match started {
                    Ok(removal) => self.removal = Some(removal),
                    Err(e) => {
                        tracing::warn!(
                            "could not start removing the previous generation's rules ({e}); the next install sweeps them"
                        );
                        self.live_keys = None;
                    }
                }
            }
            // The first install of this daemon, or one after the map was found full: whatever
            // else is in the map (a walk of it, with the map object: done here).
            None => {
                let waited = if self.readers {
                    self.barrier.wait().context("waiting for running programs (RCU barrier)")
                } else {
                    Ok(())
                };
                if let Err(e) = waited.and_then(|()| remove_where(&mut rules, |k| k.generation != next)) {
                    tracing::warn!(
                        "removing the previous generation's rules: {e:#}; the next install sweeps them"
                    );
                    self.live_keys = None;
                }
            }
        }
        tracing::debug!(
            written_ms = t_written.as_secs_f64() * 1e3,
            switched_ms = t_switched.as_secs_f64() * 1e3,
            returned_ms = t0.elapsed().as_secs_f64() * 1e3,
            "switched"
        );
        self.last_timings = Some((t_written, t_switched, t0.elapsed()));
        Ok(())
    }

    /// Waits for the background removal of the previous generation, if one runs, and reports how
    /// it went. Every install calls it before it writes (the map then holds at most the live
    /// generation and the one being written), and so does dropping the guard.
    pub fn finish_removal(&mut self) {
        let Some(removal) = self.removal.take() else { return };
        match removal.join().unwrap_or_else(|_| Err(anyhow!("the thread panicked"))) {
            Ok(took) => tracing::debug!(ms = took.as_secs_f64() * 1e3, "previous generation removed"),
            Err(e) => {
                tracing::warn!(
                    "removing the previous generation's rules: {e:#}; the next install sweeps them"
                );
                self.live_keys = None;
            }
        }
    }

    /// The ring buffer of events, for the event reader task.
    pub fn take_events(&mut self) -> anyhow::Result<RingBuf<aya::maps::MapData>> {
        let map = self.ebpf.take_map(maps::EVENTS).context("EVENTS map missing")?;
        Ok(RingBuf::try_from(map)?)
    }
}

impl Drop for Guard {
    /// The daemon ends after the previous generation is gone (a later start would sweep it, but
    /// `status` and the map's room are tidier without it).
    fn drop(&mut self) {
        self.finish_removal();
    }
}

/// The background half of a reload: once no program that read the old generation still runs
/// (`readers`: a program may be running at all), deletes `old`, its keys. How long it took.
fn remove_generation(
    barrier: &RcuBarrier,
    readers: bool,
    map: &std::os::fd::OwnedFd,
    old: &[RuleKey],
) -> anyhow::Result<std::time::Duration> {
    use std::os::fd::AsFd as _;
    let t0 = std::time::Instant::now();
    if readers {
        barrier.wait().context("waiting for running programs (RCU barrier)")?;
    }
    let (done, r) = crate::kernel::bpf_sys::map_delete_batch(map.as_fd(), old);
    // A key already gone (ENOENT) or no batch support: the rest one by one.
    if r.is_err() {
        for k in &old[done.min(old.len())..] {
            match crate::kernel::bpf_sys::map_delete_elem(map.as_fd(), k) {
                Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                    return Err(anyhow!(e).context("deleting a rule"));
                }
                _ => {}
            }
        }
    }
    Ok(t0.elapsed())
}

fn remove_where(
    rules: &mut HashMap<&mut MapData, RuleKey, RuleValue>,
    pred: impl Fn(&RuleKey) -> bool,
) -> anyhow::Result<()> {
    let stale: Vec<RuleKey> = rules.keys().filter_map(Result::ok).filter(|k| pred(k)).collect();
    for k in stale {
        match rules.remove(&k) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
