//! `cgroup/sock_create`: raw IPv4/IPv6 sockets for processes the policy does not admit
//! (`raw_sockets = "deny"`). A raw socket can hand-craft packets to a metadata endpoint past the
//! connect hooks. Every other socket returns at once.
//!
//! This program type has neither `bpf_get_current_ancestor_cgroup_id` nor
//! `bpf_get_current_pid_tgid` before Linux 6.4: the task's cgroup, its ancestors and its pid are
//! read through the offsets the daemon took from the kernel's BTF.

use aya_ebpf::{
    helpers::{bpf_get_current_uid_gid, generated::bpf_ktime_get_boot_ns},
    macros::cgroup_sock,
    programs::SockContext,
};
use imds_guard_common::{
    config::RawSockets,
    event::{ConnectEvent, TaskInfo, flags, kind},
    sock::NO_RULE,
    stats::Stat,
    verdict::{ConnectVerdict, connect_verdict, find_match},
};

use crate::maps::{EVENTS, RULES, count, live_config};

const SOCK_RAW: u32 = 3;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[cgroup_sock(sock_create)]
pub fn imdsg_sock_create(ctx: SockContext) -> i32 {
    // SAFETY: the context of a cgroup/sock_create program is a bpf_sock.
    let (ty, family) = unsafe { ((*ctx.sock).type_, (*ctx.sock).family) };
    if ty != SOCK_RAW || (family != AF_INET && family != AF_INET6) {
        return 1;
    }
    let Some(cfg) = live_config() else { return 1 };
    if cfg.raw_sockets != RawSockets::Deny as u32 {
        return 1;
    }
    let o = &cfg.exe_offsets;
    let uid_gid = bpf_get_current_uid_gid();
    let comm = crate::task::current_comm(o);
    let id = crate::judge::identity(cfg, uid_gid, comm);
    let matched = find_match(
        cfg,
        &id,
        |level| crate::task::ancestor_cgroup_id(o, level),
        // SAFETY: the value is copied out at once.
        |key| unsafe { RULES.get(key).copied() },
    );
    let verdict = connect_verdict(cfg.mode(), matched.map(|m| m.value));
    if verdict == ConnectVerdict::Allow {
        return 1;
    }
    let enforced = verdict == ConnectVerdict::Deny;
    count(if enforced { Stat::RawSocketsDenied } else { Stat::Monitored });
    let Some(mut entry) = EVENTS.reserve::<ConnectEvent>(0) else {
        count(Stat::EventsDropped);
        return verdict.retval();
    };
    let tgid = u64::from(crate::task::current_tgid(o));
    let ev = entry.write(ConnectEvent {
        kind: kind::CONNECT_DENIED,
        flags: flags::RAW_SOCKET | if enforced { flags::ENFORCED } else { 0 },
        // SAFETY: plain helper call.
        time_boot_ns: unsafe { bpf_ktime_get_boot_ns() },
        pid_tgid: (tgid << 32) | tgid,
        uid: id.uid,
        gid: id.gid,
        cgroup_id: crate::task::current_cgroup_id(o),
        comm,
        family,
        port: 0,
        addr: [0; 16],
        generation: cfg.generation,
        rule_index: NO_RULE,
        task: TaskInfo::default(),
    });
    crate::task::fill(&mut ev.task, o);
    entry.submit(0);
    count(Stat::EventsSent);
    verdict.retval()
}
