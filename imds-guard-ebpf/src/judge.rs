//! Who the current task is, as the rules see it, and which rule admits it: shared by the connect
//! hooks and by the message hook (which judges a writer that is not the process that connected).

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid,
    generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_ktime_get_boot_ns},
};
use imds_guard_common::{
    config::GenConfig,
    event::{ConnectEvent, TaskInfo, flags, kind},
    rule::{Identity, comm_words},
    stats::Stat,
    verdict::{Match, Refusal, TRACE_SENSITIVE, find_match},
};

use crate::maps::{EVENTS, RULES, count};

/// The current task's identity: `uid_gid` as `bpf_get_current_uid_gid` gives it, its comm, and
/// its executable when the policy has `exe` rules.
#[inline(always)]
pub fn identity(cfg: &GenConfig, uid_gid: u64, comm: [u8; 16]) -> Identity {
    let (exe_dev, exe_ino) =
        if cfg.needs_exe != 0 { crate::task::current_exe(&cfg.exe_offsets) } else { (0, 0) };
    Identity { uid: uid_gid as u32, gid: (uid_gid >> 32) as u32, exe_dev, exe_ino, comm: comm_words(&comm) }
}

/// The deciding rule for `id` in the current task's cgroup: a bounded loop (verifier 5.3+) over
/// the probes, no bpf_loop (5.17+), no callback subprogram.
#[inline(always)]
pub fn find(cfg: &GenConfig, id: &Identity) -> Option<Match> {
    find_match(
        cfg,
        id,
        // SAFETY: plain helper call; returns 0 past the process's own cgroup depth.
        |level| unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) },
        // SAFETY: the value is copied out at once.
        |key| unsafe { RULES.get(key).copied() },
    )
}

/// The current task is traced and `m` rests on what a tracer can borrow.
#[inline(always)]
pub fn traced(cfg: &GenConfig, m: Match) -> bool {
    m.shape & TRACE_SENSITIVE != 0 && crate::task::traced(&cfg.exe_offsets)
}

/// The event flag of a refusal a matching rule earned (counted), 0 for none or for "no rule".
#[inline(always)]
pub fn refusal_flag(refusal: Option<Refusal>) -> u32 {
    match refusal {
        Some(Refusal::Traced) => {
            count(Stat::DeniedTraced);
            flags::TRACED
        }
        Some(Refusal::Uninspectable) => {
            count(Stat::DeniedUninspectable);
            flags::UNINSPECTABLE
        }
        Some(Refusal::NoRule) | None => 0,
    }
}

/// A `connect_denied` event for the current task.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn report(
    cfg: &GenConfig,
    id: &Identity,
    comm: [u8; 16],
    flags: u32,
    rule_index: u32,
    family: u32,
    port: u32,
    addr: [u8; 16],
) {
    let Some(mut entry) = EVENTS.reserve::<ConnectEvent>(0) else {
        count(Stat::EventsDropped);
        return;
    };
    // SAFETY: plain helper calls.
    let (time_boot_ns, cgroup_id) = unsafe { (bpf_ktime_get_boot_ns(), bpf_get_current_cgroup_id()) };
    let ev = entry.write(ConnectEvent {
        kind: kind::CONNECT_DENIED,
        flags,
        time_boot_ns,
        pid_tgid: bpf_get_current_pid_tgid(),
        uid: id.uid,
        gid: id.gid,
        cgroup_id,
        comm,
        family,
        port: u32::from(u16::from_be(port as u16)),
        addr,
        generation: cfg.generation,
        rule_index,
        task: TaskInfo::default(),
    });
    crate::task::fill(&mut ev.task, &cfg.exe_offsets);
    entry.submit(0);
    count(Stat::EventsSent);
}

/// `x`, through a volatile stack slot: the compiler forgets what it knew about its value, and so
/// does the verifier. Used where a decision reached in several ways is followed by a lot of code
/// (the report): with the decision opaque, the verifier walks that code once, not once per way.
#[inline(always)]
pub fn opaque(x: u32) -> u32 {
    let mut v = 0u32;
    // SAFETY: a local variable.
    unsafe {
        core::ptr::write_volatile(&mut v, x);
        core::ptr::read_volatile(&v)
    }
}
