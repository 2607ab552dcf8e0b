//! `cgroup/connect4` and `cgroup/connect6`, and `cgroup/sendmsg4` and `cgroup/sendmsg6` for UDP
//! datagrams sent without a connect.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::bpf_get_current_cgroup_id,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use imds_guard_common::{
    config::GenConfig,
    event::{AF_INET, AF_INET6, flags},
    rule::{Identity, Read, RuleValue},
    sock::token_flag,
    stats::Stat,
    verdict::{ConnectContext, ConnectVerdict, admit, judge_connect, monitored_terms},
};

/// `SOCK_STREAM` and `IPPROTO_TCP`, as the context reports them.
const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;

use crate::maps::{IMDSG_SOCKSTATE, count, live_config, may_be_endpoint_v4, may_be_endpoint_v6};

/// Lets the connect through: not a metadata endpoint, or no policy loaded.
const PASS: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn imdsg_connect4(ctx: SockAddrContext) -> i32 {
    v4(&ctx, true)
}

#[cgroup_sock_addr(connect6)]
pub fn imdsg_connect6(ctx: SockAddrContext) -> i32 {
    v6(&ctx, true)
}

/// `sendto()`/`sendmsg()` with a destination on an unconnected UDP socket (connected ones were
/// judged at `connect()`): judged like a connect, refused with EPERM.
#[cgroup_sock_addr(sendmsg4)]
pub fn imdsg_sendmsg4(ctx: SockAddrContext) -> i32 {
    v4(&ctx, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn imdsg_sendmsg6(ctx: SockAddrContext) -> i32 {
    v6(&ctx, false)
}

#[inline(always)]
fn v4(ctx: &SockAddrContext, connect: bool) -> i32 {
    // SAFETY: the context of a cgroup/connect4 or sendmsg4 program is a bpf_sock_addr.
    let (ip, port) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port) };
    if !may_be_endpoint_v4(ip) {
        return PASS;
    }
    let Some(cfg) = live_config() else {
        return PASS;
    };
    if !cfg.is_endpoint_v4(ip) {
        return PASS;
    }
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&ip.to_ne_bytes());
    judge(ctx, cfg, AF_INET, port, addr, connect)
}

#[inline(always)]
fn v6(ctx: &SockAddrContext, connect: bool) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the context of a cgroup/connect6 or sendmsg6 program is a bpf_sock_addr. The
    // verifier allows user_ip6 only as 32-bit loads, one word at a time (the indices are constants
    // once inlined).
    let word = |i: usize| unsafe { (*sa).user_ip6[i] };
    if !may_be_endpoint_v6(word) {
        return PASS;
    }
    let ip = [word(0), word(1), word(2), word(3)];
    let Some(cfg) = live_config() else {
        return PASS;
    };
    if !cfg.is_endpoint_v6(ip) {
        return PASS;
    }
    // SAFETY: as above.
    let port = unsafe { (*ctx.sock_addr).user_port };
    let mut addr = [0u8; 16];
    addr[0..4].copy_from_slice(&ip[0].to_ne_bytes());
    addr[4..8].copy_from_slice(&ip[1].to_ne_bytes());
    addr[8..12].copy_from_slice(&ip[2].to_ne_bytes());
    addr[12..16].copy_from_slice(&ip[3].to_ne_bytes());
    judge(ctx, cfg, AF_INET6, port, addr, connect)
}

/// A connect (or, `connect` false, an unconnected UDP send) to a metadata endpoint: find the rule,
/// decide, count, report. Only a connect leaves state on the socket for the message hook.
#[inline(always)]
fn judge(
    ctx: &SockAddrContext,
    cfg: &GenConfig,
    family: u32,
    port: u32,
    addr: [u8; 16],
    connect: bool,
) -> i32 {
    count(Stat::MetadataConnects);
    // The header that carries this endpoint's token, found here and made opaque: its branches
    // (an IPv4-mapped address or not, Alibaba's or not) would otherwise each carry on through the
    // rest, the report's loops included (connect6 walked 259k instructions on 6.18, connect4 67k).
    let token = crate::judge::opaque(u32::from(token_flag(family, &addr))) as u16;
    let comm = bpf_get_current_comm().unwrap_or_default();
    let id = crate::judge::identity(cfg, bpf_get_current_uid_gid(), comm);
    // The rule that admits it, or the others' terms where the policy lets them read a part.
    let matched = admit(cfg, crate::judge::find(cfg, &id));
    // What a matching rule may not vouch for: only looked at when a rule matched, and the traced
    // check only for rules that rest on what a debugger can borrow.
    let context = match matched {
        Some(m) => ConnectContext {
            traced: crate::judge::traced(cfg, m),
            uninspectable: m.value.needs_inspection() && uninspectable(ctx, cfg),
        },
        None => ConnectContext::default(),
    };
    let (verdict, refusal) = judge_connect(cfg.mode(), matched, context);
    // Opaque from here: otherwise the verifier walks the rest (the report's loops) once per
    // combination of the checks above, 10x the instructions.
    let flag = crate::judge::opaque(crate::judge::refusal_flag(refusal));
    let verdict = ConnectVerdict::from_u32(crate::judge::opaque(verdict.as_u32()));
    // The terms the connection gets, likewise (a process no rule admits: monitor mode's, whose
    // reads of secrets are reported, not refused).
    let terms = matched.map_or(monitored_terms(cfg), |m| m.value);
    let terms = RuleValue {
        rule_index: crate::judge::opaque(terms.rule_index),
        imdsv1: crate::judge::opaque(terms.imdsv1),
        read: crate::judge::opaque(terms.read),
    };
    if connect && verdict != ConnectVerdict::Deny {
        remember(ctx, cfg, &id, comm, terms, token);
    }
    match verdict {
        ConnectVerdict::Allow => count(Stat::Allowed),
        ConnectVerdict::Deny | ConnectVerdict::AllowAndReport => {
            count(if verdict == ConnectVerdict::Deny { Stat::Denied } else { Stat::Monitored });
            let enforced = if verdict == ConnectVerdict::Deny { flags::ENFORCED } else { 0 };
            crate::judge::report(cfg, &id, comm, enforced | flag, terms.rule_index, family, port, addr);
        }
    }
    verdict.retval()
}

/// The message hook will not see what is written on this TCP socket: an MPTCP subflow
/// (`tcp_sock->is_mptcp`), which the sockhash does not take, or a Fast Open connect, whose first
/// data leaves with the SYN before the connection is established (`sendto(MSG_FASTOPEN)`:
/// `tcp_sock->fastopen_req` is set; `TCP_FASTOPEN_CONNECT`: its flag), or any connection once the
/// sockhash is about to be full (it would stay out of it). False for anything else, and for
/// members this kernel's BTF does not have.
#[inline(always)]
fn uninspectable(ctx: &SockAddrContext, cfg: &GenConfig) -> bool {
    let o = &cfg.exe_offsets;
    // SAFETY: the context of a cgroup/connect program.
    let (ty, proto) = unsafe { ((*ctx.sock_addr).type_, (*ctx.sock_addr).protocol) };
    if ty != SOCK_STREAM || proto != IPPROTO_TCP {
        return false;
    }
    // SAFETY: the context's socket (a full socket in a connect hook).
    let sk = crate::task::address_of(unsafe { (*ctx.sock_addr).__bindgen_anon_1.sk });
    let mptcp = o.tcp_is_mptcp != 0 && crate::task::read_at::<u8>(sk, o.tcp_is_mptcp).is_some_and(|b| b != 0);
    let fastopen_req = o.tcp_fastopen_req != 0
        && crate::task::read_at::<u64>(sk, o.tcp_fastopen_req).is_some_and(|p| p != 0);
    let fastopen_connect = o.tcp_fastopen_connect != 0
        && crate::task::read_at::<u8>(sk, o.tcp_fastopen_connect)
            .is_some_and(|b| u32::from(b) & o.tcp_fastopen_connect_mask != 0);
    // SO_RCVLOWAT above 1 would keep the answers from the response hook (see `sockopt`).
    let rcvlowat =
        o.sock_rcvlowat != 0 && crate::task::read_at::<i32>(sk, o.sock_rcvlowat).is_some_and(|v| v > 1);
    mptcp || fastopen_req || fastopen_connect || rcvlowat || crate::maps::nearly_full()
}

/// Keeps, with the socket, who connected and what its workload may do over IMDSv1, for the
/// message hook (the socket-local storage goes away with the socket).
#[inline(always)]
fn remember(
    ctx: &SockAddrContext,
    cfg: &GenConfig,
    id: &Identity,
    comm: [u8; 16],
    terms: RuleValue,
    token: u16,
) {
    let st = IMDSG_SOCKSTATE.get_or_insert_ptr_mut(ctx, None);
    if st.is_null() {
        return;
    }
    // SAFETY: a valid storage pointer for this socket, owned by this program run.
    let st = unsafe { &mut *st };
    st.imdsv1 = terms.imdsv1;
    st.read = terms.read;
    st.rule_index = terms.rule_index;
    st.generation = cfg.generation;
    st.uid = id.uid;
    st.gid = id.gid;
    st.pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: plain helper call.
    st.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    st.comm = comm;
    st.writer_tgid = 0;
    st.writer_generation = 0;
    st.writer_read = Read::All as u32;
    st.token = u32::from(token);
    st.http.reset();
}
