//! The one owner of the loaded kernel programs and maps: [`Guard`]. Opening it loads the object
//! with its maps (reusing pinned ones); [`super::attach`] attaches or adopts the programs,
//! [`super::generations`] installs compiled policy tables as generations.
//!
//! The running daemon holds a descriptor of each link and map, so that losing the pins (bpffs
//! unmounted) does not detach anything while it runs; see [`crate::daemon::pins`].

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, RingBuf},
    programs::Program,
};
use imds_guard_common::{
    config::{Active, ExeOffsets},
    endpoint::Fast,
    maps,
    rule::RuleKey,
};

use super::{
    bpf_sys::{RcuBarrier, obj_get},
    paths::{PROGRAMS, link_pin, map_pin, maps_dir, other_map_dirs},
};

/// The eBPF object built by build.rs (public for the benchmark, which loads its empty programs).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/imds-guard-ebpf"));

/// How the programs came to be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// Newly attached to the cgroup.
    Attached,
    /// Found pinned from an earlier daemon; its program was replaced in place.
    Adopted,
    /// Reduced mode: the programs are not attached; nftables output rules enforce what they can.
    NotAttached,
}

impl Attachment {
    /// As `guard_started` says it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Attachment::Attached => "attached",
            Attachment::Adopted => "adopted",
            Attachment::NotAttached => "not_attached",
        }
    }
}

/// A pinned object the daemon keeps a descriptor of.
pub struct Held {
    pub pin: PathBuf,
    pub fd: std::os::fd::OwnedFd,
    /// A link (else a map).
    pub link: bool,
}

pub struct Guard {
    pub(super) ebpf: Ebpf,
    pub(super) pin_dir: PathBuf,
    pub(super) cgroup_id: u64,
    pub(super) barrier: std::sync::Arc<RcuBarrier>,
    /// The previous generation's removal, running in the background after a switch (see
    /// [`Guard::finish_removal`]).
    pub(super) removal: Option<std::thread::JoinHandle<anyhow::Result<std::time::Duration>>>,
    /// A program may be reading the maps: only then must a switch wait for running programs
    /// before the old generation goes. False for maps this daemon just created, until it
    /// attaches its programs (the wait took ~13 ms of each start).
    pub(super) readers: bool,
    /// No maps of this layout existed: this daemon made them (first start, or an upgrade).
    pub(super) fresh_maps: bool,
    /// The kernel attaches sk_msg programs through a bpf_link (Linux 6.10+); before that the
    /// message hook is attached through its map ([`super::attach`]).
    pub(super) msg_link: bool,
    /// The request inspector (sockops, message hook) is loaded and attached; false where the
    /// kernel lacks what it needs (only the connect hooks run then).
    pub(super) inspect: bool,
    /// The response hook (credential attribution) is loaded and attached: with the inspector,
    /// where the kernel has sk_skb programs.
    pub(super) attribute: bool,
    /// Map directories of an earlier version's layout, removed once this one's programs took over.
    pub(super) old_maps: Vec<PathBuf>,
    pub(super) generation: u32,
    /// From the kernel's BTF; `None` when it could not be read (exe rules are then refused).
    pub(super) exe_offsets: Option<ExeOffsets>,
    /// What the programs' global holds (written whole on every change).
    pub(super) fast: Fast,
    /// The rule keys of the live generation, once this daemon has installed one: a reload then
    /// deletes exactly those instead of walking the whole map (two walks of 10k-rule maps were
    /// most of a reload's kernel time).
    pub(super) live_keys: Option<Vec<RuleKey>>,
    /// The last install's timings: rules written, switched (enforced), returned (the removal of
    /// the old generation goes on in the background).
    pub(super) last_timings: Option<(std::time::Duration, std::time::Duration, std::time::Duration)>,
    /// A descriptor of every pinned link and map, with its pin: while the daemon runs, the links
    /// stay attached even if their pins go (bpffs unmounted), and can be pinned again.
    pub(super) held: Vec<Held>,
}

/// The order programs are handed to the loading threads: the heaviest to verify first. Measured
/// one at a time on Linux 5.10 under QEMU's software CPU, where a start is slowest: the message
/// hook 7.5 s, the IPv6 send hook 2.2 s, the response hook 1.9 s, the raw-socket hook 1.7 s, the
/// connect hooks and the IPv4 send hook under 1 s each, the socket-operations hook 0.01 s; the
/// instructions the 6.18 verifier walked rank them alike (message 516k, response 484k, the
/// connect and send hooks 70-76k each, raw sockets 32k, socket operations 1.2k; the socket
/// option hook, a few dozen instructions, last).
const LOAD_ORDER: [&str; 9] = [
    "imdsg_msg",
    "imdsg_resp",
    "imdsg_sendmsg6",
    "imdsg_sock_create",
    "imdsg_connect6",
    "imdsg_connect4",
    "imdsg_sendmsg4",
    "imdsg_sockops",
    "imdsg_setsockopt",
];

/// The instructions the verifier processed for a loaded `program` (Linux 5.16+), if known.
fn verified_insns(program: &Program) -> Option<u32> {
    let info = match program {
        Program::CgroupSockAddr(p) => p.info(),
        Program::CgroupSock(p) => p.info(),
        Program::CgroupSockopt(p) => p.info(),
        Program::SockOps(p) => p.info(),
        Program::SkMsg(p) => p.info(),
        Program::SkSkb(p) => p.info(),
        _ => return None,
    };
    info.ok()?.verified_instruction_count()
}

/// How much of the verifier's log a refused program brings back. By default the kernel's
/// message and its statistics only: the instruction trace of the message hook's loop runs to
/// tens of megabytes, more than the largest buffer aya offers, and a kernel before 6.4 then keeps
/// only its start and fails the load with ENOSPC, hiding the reason. `IMDS_GUARD_VERIFIER_LOG`
/// = `stats` (default), `debug` (the trace) or `verbose` (the trace with every state).
fn verifier_log_level() -> aya::VerifierLogLevel {
    use aya::VerifierLogLevel as L;
    match std::env::var("IMDS_GUARD_VERIFIER_LOG").as_deref() {
        Ok("debug") => L::DEBUG | L::STATS,
        Ok("verbose") => L::VERBOSE | L::STATS,
        _ => L::STATS,
    }
}

impl Guard {
    /// Loads the object (not yet its programs), reusing the maps pinned in `pin_dir` when they
    /// are of this build's layout, and holds a descriptor of each map. `cgroup` is where the
    /// programs will be attached; `inspect`: the request inspector too (else the connect hooks
    /// alone); `attribute`: and the response hook (credential attribution).
    pub fn open(
        pin_dir: &Path,
        cgroup: &Path,
        exe_offsets: Option<ExeOffsets>,
        inspect: bool,
        attribute: bool,
    ) -> anyhow::Result<Self> {
        let cgroup_id = crate::host::env::cgroup_id(cgroup)?;
        let maps_dir = maps_dir(pin_dir);
        let fresh_maps = !maps_dir.join(maps::ACTIVE).exists();
        let old_maps = other_map_dirs(pin_dir);
        let ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .verifier_log_level(verifier_log_level())
            .load(EBPF_OBJECT)
            .map_err(|e| anyhow!(e))
            .context(
                "loading the eBPF programs failed (the maps pinned in the pin directory may be \
                 from an incompatible version: `imds-guard unload` removes them)",
            )?;
        let barrier = std::sync::Arc::new(RcuBarrier::new().context("creating the RCU barrier map")?);
        // Without the inspector there is no message hook to attach (and the probe means nothing).
        let msg_link = inspect && msg_attach_by_link()?;
        let mut guard = Guard {
            ebpf,
            pin_dir: pin_dir.to_owned(),
            cgroup_id,
            barrier,
            removal: None,
            readers: !fresh_maps,
            fresh_maps,
            msg_link,
            inspect,
            attribute: inspect && attribute,
            old_maps,
            generation: 0,
            exe_offsets,
            fast: Fast::default(),
            live_keys: None,
            last_timings: None,
            held: Vec::new(),
        };
        for name in maps::ALL {
            let pin = map_pin(pin_dir, name);
            let fd = obj_get(&pin).with_context(|| format!("opening {}", pin.display()))?;
            guard.held.push(Held { pin, fd, link: false });
        }
        Ok(guard)
    }

    /// The pin of a link an earlier daemon left, if any is pinned.
    #[must_use]
    pub fn pinned_link(&self) -> Option<PathBuf> {
        PROGRAMS.iter().map(|(_, l)| link_pin(&self.pin_dir, l)).find(|p| p.exists())
    }

    /// Loads every program (the verifier runs here), none attached yet; without the inspector,
    /// only the connect hooks. Verification is most of the start-up time and each load is
    /// independent, so they run on as many threads as there are CPUs, the heaviest first
    /// ([`LOAD_ORDER`]): the message hook's alone is over a third of the total, and started
    /// beside seven others on two CPUs it had a share of one and ended last (a start in 5.10's
    /// emulated guest: 20-21 s so, 18-19 s now).
    pub fn load_programs(&mut self) -> anyhow::Result<()> {
        let wanted = self.programs();
        let mut jobs: Vec<(&str, &mut Program)> =
            self.ebpf.programs_mut().filter(|(name, _)| wanted.iter().any(|(w, _)| w == name)).collect();
        if let Some((missing, _)) = wanted.iter().find(|(w, _)| !jobs.iter().any(|(n, _)| n == w)) {
            bail!("program {missing} missing");
        }
        jobs.sort_by_key(|(name, _)| LOAD_ORDER.iter().position(|w| w == name));
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZero::get)
            .clamp(1, jobs.len().max(1));
        let queue = std::sync::Mutex::new(jobs.into_iter());
        let results: std::sync::Mutex<Vec<(&str, anyhow::Result<()>)>> = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    loop {
                        let Some((name, program)) =
                            queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).next()
                        else {
                            break;
                        };
                        let t = std::time::Instant::now();
                        let r = match program {
                            Program::CgroupSockAddr(p) => p.load().map_err(anyhow::Error::from),
                            Program::CgroupSock(p) => p.load().map_err(anyhow::Error::from),
                            Program::CgroupSockopt(p) => p.load().map_err(anyhow::Error::from),
                            Program::SockOps(p) => p.load().map_err(anyhow::Error::from),
                            Program::SkMsg(p) => p.load().map_err(anyhow::Error::from),
                            Program::SkSkb(p) => p.load().map_err(anyhow::Error::from),
                            _ => Err(anyhow!("program {name} has an unexpected type")),
                        }
                        .with_context(|| format!("loading {name} (verifier)"));
                        // What the verifier walked (Linux 5.16+ says), for whoever makes a
                        // program cheaper to load.
                        let walked = r.is_ok().then(|| verified_insns(program)).flatten();
                        tracing::debug!(
                            program = name,
                            ms = t.elapsed().as_secs_f64() * 1e3,
                            verified_insns = walked,
                            "loaded (verified)"
                        );
                        results.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((name, r));
                    }
                });
            }
        });
        let mut results = results.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        // The first failure in PROGRAMS order, as a serial load would have reported it.
        results.sort_by_key(|(name, _)| wanted.iter().position(|(w, _)| w == name));
        results.into_iter().try_for_each(|(_, r)| r)
    }

    /// The programs this guard loads and attaches (of [`PROGRAMS`]): all of them, or without the
    /// request inspector the connect hooks alone, or without the response hook all but it.
    pub(super) fn programs(&self) -> Vec<(&'static str, &'static str)> {
        super::paths::wanted(self.inspect, self.attribute).collect()
    }

    /// Whether the response hook (credential attribution) is loaded (see [`Guard::open`]).
    #[must_use]
    pub const fn attributes(&self) -> bool {
        self.attribute
    }

    /// Whether the request inspector is loaded (see [`Guard::open`]).
    #[must_use]
    pub const fn inspects(&self) -> bool {
        self.inspect
    }

    /// How the message hook is attached: `"link"` (a bpf_link, Linux 6.10+), `"map"` (through
    /// its socket map), or `None` without the inspector.
    #[must_use]
    pub const fn msg_attach(&self) -> Option<&'static str> {
        match (self.inspect, self.msg_link) {
            (false, _) => None,
            (true, true) => Some("link"),
            (true, false) => Some("map"),
        }
    }

    /// The generation an install would make live next (generations continue across daemons:
    /// the live one is in the pinned maps).
    pub fn next_generation(&self) -> anyhow::Result<u32> {
        let active: Array<_, Active> = Array::try_from(self.ebpf.map(maps::ACTIVE).context("ACTIVE map")?)?;
        let live = active.get(&0, 0)?.generation;
        Ok(match live.wrapping_add(1) {
            0 => 1,
            n => n,
        })
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

    /// Whether exe rules can be enforced (the kernel's BTF was read).
    #[must_use]
    pub const fn knows_exe_offsets(&self) -> bool {
        self.exe_offsets.is_some()
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

    /// The ring buffer of events, for the event reader task.
    pub fn take_events(&mut self) -> anyhow::Result<RingBuf<aya::maps::MapData>> {
        let map = self.ebpf.take_map(maps::EVENTS).context("EVENTS map missing")?;
        Ok(RingBuf::try_from(map)?)
    }
}

/// Whether the message hook (and the response hook: sockmap links came for both in 6.10) is
/// attached through a bpf_link: the kernel's answer, unless `IMDS_GUARD_SK_MSG_ATTACH=map` asks
/// for the older way for both (tests use it to run the path kernels before 6.10 take on any
/// kernel).
fn msg_attach_by_link() -> anyhow::Result<bool> {
    if std::env::var("IMDS_GUARD_SK_MSG_ATTACH").is_ok_and(|v| v == "map") {
        return Ok(false);
    }
    super::features::Feature::SkMsgLink.probe().context("probing for sockmap links")
}

impl Drop for Guard {
    /// The daemon ends after the previous generation is gone (a later start would sweep it, but
    /// `status` and the map's room are tidier without it).
    fn drop(&mut self) {
        self.finish_removal();
    }
}
