//! Installing a policy: its compiled tables are written into the maps as a new generation beside
//! the live one, then one 8-byte update makes it live; the old generation's entries are removed
//! in the background once no program that read them still runs.

use std::os::fd::AsFd as _;

use anyhow::{Context as _, anyhow, bail};
use aya::maps::{Array, HashMap, MapData};
use imds_guard_common::{
    config::{Active, GenConfig},
    endpoint::{Fast, Prefilter},
    lists::ReadSlots,
    maps,
    rule::{RuleKey, RuleValue},
};

use super::{bpf_sys::RcuBarrier, guard::Guard};
use crate::policy::compile::KernelTables;

impl Guard {
    /// Installs `tables` as generation `next` (see [`Guard::next_generation`]) and switches to it
    /// atomically. On error the live generation is untouched (whatever was written for the new
    /// one is removed).
    pub fn install(&mut self, tables: KernelTables, next: u32) -> anyhow::Result<()> {
        if tables.config.needs_exe != 0 && self.exe_offsets.is_none() {
            bail!(
                "the policy has exe rules, but the kernel's BTF could not be read at start-up, so imds-guard \
                 cannot find a process's executable without guessing kernel struct layouts; refusing the policy"
            );
        }
        self.finish_removal();
        let [active, config, rules, fast, reads] =
            self.ebpf.maps_disjoint_mut([maps::ACTIVE, maps::CONFIG, maps::RULES, maps::FAST, maps::READS]);
        let reads: Array<_, ReadSlots> = Array::try_from(reads.context("READS map")?)?;
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
        let KernelTables { config: mut cfg, lists, mut keys, values } = tables;
        cfg.generation = next;
        for k in &mut keys {
            k.generation = next;
        }
        cfg.attach_cgroup_id = self.cgroup_id;
        cfg.exe_offsets = self.exe_offsets.unwrap_or_default();
        cfg.credentials = u32::from(self.attribute);

        // Leftovers of an interrupted earlier attempt at `next` (by an earlier daemon: this one
        // cleans up after itself) would be enforced with it.
        if self.live_keys.is_none() {
            remove_where(&mut rules, |k| k.generation == next)?;
        }
        let live = active.get(&0, 0)?.generation;
        if let Err(e) = write_rules(&mut rules, rules_fd, (&keys, &values), live, next) {
            // Entries nobody accounts for may fill the map: the next install sweeps the whole
            // map, not only the keys this daemon knows it wrote.
            self.live_keys = None;
            return Err(e);
        }
        // The generation's `read` lists, in its slot (the live generation's, the other one, is
        // written back as it is: programs reading it see the same bytes). On the heap: the
        // value is 148 KB.
        let written = {
            use aya::maps::IterableMap as _;
            let fd = reads.map().fd().as_fd();
            let mut slots = ReadSlots::empty();
            let slot = (next % imds_guard_common::config::GENERATION_SLOTS) as usize;
            super::bpf_sys::map_lookup_elem_into(fd, &0u32, &mut *slots)
                .context("reading the read lists")
                .and_then(|()| slots.slots[slot].compile(next, &lists).map_err(|e| anyhow!("{e}")))
                .and_then(|()| {
                    super::bpf_sys::map_update_elem(fd, &0u32, &*slots).context("writing the read lists")
                })
        };
        if let Err(e) = written {
            remove_where(&mut rules, |k| k.generation == next)?;
            return Err(e);
        }
        let t_written = t0.elapsed();
        tracing::debug!(rules = keys.len(), lists = lists.len(), "rules written");
        switch((&mut config, &mut active, &mut fast), &mut self.fast, &cfg)?;
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
        self.generation = next;
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
}

/// Writes the entries of generation `next`: one BPF_MAP_UPDATE_BATCH for all (one bpf() call per
/// key took ~1 µs each); a kernel without batch operations on hash maps gets them one by one. On
/// error, nothing of `next` is left in the map and the error says how full it is, and with what.
fn write_rules(
    rules: &mut HashMap<&mut MapData, RuleKey, RuleValue>,
    fd: std::os::fd::BorrowedFd<'_>,
    (keys, values): (&[RuleKey], &[RuleValue]),
    live: u32,
    next: u32,
) -> anyhow::Result<()> {
    let (mut written, mut result) = super::bpf_sys::map_update_batch(fd, keys, values);
    if matches!(&result, Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | 524 /* ENOTSUPP */)))
        && written == 0
    {
        result = Ok(());
        for (k, v) in keys.iter().zip(values) {
            if let Err(e) = rules.insert(k, v, 0) {
                result = Err(std::io::Error::other(e));
                break;
            }
            written += 1;
        }
    }
    let Err(e) = result else { return Ok(()) };
    // The map holds two full generations, so a full map means entries that are neither the
    // live policy's nor this one's.
    let in_map: Vec<RuleKey> = rules.keys().filter_map(Result::ok).collect();
    let live_n = in_map.iter().filter(|k| k.generation == live).count();
    let other = in_map.len().saturating_sub(live_n + written);
    remove_where(rules, |k| k.generation == next)?;
    Err(anyhow!(e).context(format!(
        "writing rule {} of {}: {} of the {} entries of the kernel's rules map are in use ({live_n} \
         by the policy in force, {written} by this one, {other} by neither); the previous policy \
         stays enforced",
        written + 1,
        keys.len(),
        in_map.len(),
        maps::RULES_CAPACITY
    )))
}

/// An array map borrowed from the loaded object.
type ArrayOf<'a, T> = Array<&'a mut MapData, T>;

/// Makes `cfg`'s generation live: its config slot and prefilter first, then the switch, one 8-byte
/// update of the active map, and its mirror in the programs' global (`fast`, kept whole in
/// `mirror`). From then on every program run judges by the new generation.
fn switch(
    (config, active, fast): (&mut ArrayOf<GenConfig>, &mut ArrayOf<Active>, &mut ArrayOf<Fast>),
    mirror: &mut Fast,
    cfg: &GenConfig,
) -> anyhow::Result<()> {
    let next = cfg.generation;
    let slot = next % imds_guard_common::config::GENERATION_SLOTS;
    config.set(slot, cfg, 0)?;
    // The new slot's prefilter, before the switch (the live slot's bytes are rewritten unchanged).
    mirror.filters[slot as usize] = Prefilter::of(cfg);
    fast.set(0, &*mirror, 0)?;
    active.set(0, &Active { generation: next, _pad: 0 }, 0)?;
    mirror.generation = next;
    fast.set(0, &*mirror, 0)?;
    Ok(())
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
