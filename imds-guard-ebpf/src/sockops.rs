//! `sockops`: when a connection to a metadata endpoint is established, put it into the sockhash
//! that the message hook is attached to. Every other callback returns at once.

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_SK_STORAGE_GET_F_CREATE, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_CLOSE,
    },
    helpers::generated::{bpf_get_socket_cookie, bpf_sk_storage_get},
    macros::sock_ops,
    programs::SockOpsContext,
};
use imds_guard_common::{
    config::GenConfig,
    event::{AF_INET, AF_INET6},
    rule::RuleValue,
    sock::{Guard, SockState},
    stats::Stat,
};

use crate::maps::{GUARDS, IMDSG_SOCKSTATE, SOCKETS, count, live_config, track};

const E2BIG: i32 = 7;
const ENOMEM: i32 = 12;

#[sock_ops]
pub fn imdsg_sockops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_STATE_CB {
        // Only connections this program put into the sockhash ask for state callbacks.
        if ctx.arg(1) == BPF_TCP_CLOSE {
            track(u64::MAX);
            // A response to a request for credentials that did not end is reported now.
            // SAFETY: the sock_ops context pointer, as the helper expects.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
            crate::creds::end(cookie);
            let _ = GUARDS.remove(&cookie);
        }
        return 1;
    }
    if op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        return 1;
    }
    let Some(cfg) = live_config() else { return 1 };
    let metadata = match ctx.family() {
        AF_INET => cfg.is_endpoint_v4(ctx.remote_ip4()),
        AF_INET6 => cfg.is_endpoint_v6(ctx.remote_ip6()),
        _ => false,
    };
    if metadata {
        // SAFETY: the sock_ops context pointer, as the helper expects.
        let mut cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
        // Before it joins the sockhash: the message hook counts its writes from then on.
        if let Some(st) = remember_cookie(&ctx, cookie) {
            guard(&ctx, &cfg, st, cookie);
        }
        // SAFETY: as above.
        let added = SOCKETS.update(&mut cookie, unsafe { &mut *ctx.ops }, u64::from(BPF_ANY));
        // Counted while it is in the table: its close (a state callback, asked for here) takes
        // it away again.
        if added.is_ok() && ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32).is_ok() {
            track(1);
        }
        if let Err(e) = added {
            // The message hook will not see this connection. Nothing here can refuse it any more;
            // count it, by cause, so that the daemon says so. The sockhash is full (E2BIG), or
            // out of memory; anything else is a socket it does not take: one with an upper
            // layer protocol, which is what an MPTCP subflow is (EINVAL from sk_psock_init).
            // Connects that needed inspection were refused for that already (connect hook).
            count(if e == -E2BIG || e == -ENOMEM {
                Stat::ConnectionsUninspected
            } else {
                Stat::ConnectionsUnsupported
            });
        }
    }
    1
}

/// Writes the connection's cookie into its state, where the message hook (which has no helper for
/// it) finds it to arm a credentials watch. The state, if the connection has (or now gets) one.
#[inline(always)]
fn remember_cookie(ctx: &SockOpsContext, cookie: u64) -> Option<&'static SockState> {
    // SAFETY: a read of the sock_ops context's socket pointer.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: helper call with our storage map and the connection's socket. With F_CREATE: a
    // connection no connect hook of this map layout judged gets (zeroed) state here, which the
    // message hook then adopts.
    let st = unsafe {
        bpf_sk_storage_get(
            core::ptr::addr_of!(IMDSG_SOCKSTATE).cast_mut().cast(),
            sk.cast(),
            core::ptr::null_mut(),
            u64::from(BPF_SK_STORAGE_GET_F_CREATE),
        )
    }
    .cast::<SockState>();
    if st.is_null() {
        return None;
    }
    // SAFETY: this socket's storage; sockops runs under the socket's lock.
    let st = unsafe { &mut *st };
    st.cookie = cookie;
    Some(st)
}

/// Makes the connection's guard (see `imds_guard_common::sock::Guard`) when its workload's
/// requests must all be inspected: where its byte count starts (`tcp_sock->write_seq` now) and
/// who connected. (The offset comes from the kernel's BTF, which the daemon needs to run; 0 only
/// before a configuration is installed.)
#[inline(always)]
fn guard(ctx: &SockOpsContext, cfg: &GenConfig, st: &SockState, cookie: u64) {
    let terms = RuleValue { rule_index: st.rule_index, imdsv1: st.imdsv1, read: st.read };
    let off = cfg.exe_offsets.tcp_write_seq;
    if !terms.needs_inspection() || off == 0 {
        return;
    }
    // SAFETY: a read of the sock_ops context's socket pointer.
    let sk = crate::task::address_of(unsafe { (*ctx.ops).__bindgen_anon_2.sk });
    let Some(base) = crate::task::read_at::<u32>(sk, off) else { return };
    let ops = ctx.ops;
    // SAFETY: reads of the sock_ops context, each a volatile 32-bit load at the field's own
    // address (the verifier refuses loads through a ctx pointer the compiler has moved).
    let (family, port, ip4, ip6) = unsafe {
        use core::ptr::{addr_of, read_volatile as rd};
        (
            rd(addr_of!((*ops).family)),
            rd(addr_of!((*ops).remote_port)),
            rd(addr_of!((*ops).remote_ip4)),
            [
                rd(addr_of!((*ops).remote_ip6[0])),
                rd(addr_of!((*ops).remote_ip6[1])),
                rd(addr_of!((*ops).remote_ip6[2])),
                rd(addr_of!((*ops).remote_ip6[3])),
            ],
        )
    };
    // The address as `dest::destination` builds it from an sk_msg context. Kept apart on purpose:
    // one function shared by both changed the message hook's code layout enough to take it from
    // 404,000 to 942,000 verified instructions on 6.18 (measured 2026-12-05), near 5.10's limit.
    let mut addr = [0u8; 16];
    if family == AF_INET {
        addr[..4].copy_from_slice(&ip4.to_ne_bytes());
    } else {
        addr[0..4].copy_from_slice(&ip6[0].to_ne_bytes());
        addr[4..8].copy_from_slice(&ip6[1].to_ne_bytes());
        addr[8..12].copy_from_slice(&ip6[2].to_ne_bytes());
        addr[12..16].copy_from_slice(&ip6[3].to_ne_bytes());
    }
    let g = Guard {
        base,
        passed: 0,
        tainted: 0,
        rule_index: st.rule_index,
        generation: st.generation,
        uid: st.uid,
        gid: st.gid,
        family,
        // The network-order port is in the upper 16 bits.
        port: u32::from(u16::from_be((port >> 16) as u16)),
        reserved: 0,
        pid_tgid: st.pid_tgid,
        cgroup_id: st.cgroup_id,
        comm: st.comm,
        addr,
    };
    if GUARDS.insert(&cookie, &g, u64::from(BPF_ANY)).is_err() {
        // No room (the table holds as many as the sockhash): its writes are still inspected, but
        // a write past the message hook would go unnoticed. Counted as uninspected.
        count(Stat::ConnectionsUninspected);
    }
}
