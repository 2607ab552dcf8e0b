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
    event::{AF_INET, AF_INET6},
    sock::SockState,
    stats::Stat,
};

use crate::maps::{IMDSG_SOCKSTATE, SOCKETS, count, live_config, track};

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
            crate::creds::end(unsafe { bpf_get_socket_cookie(ctx.ops.cast()) });
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
        remember_cookie(&ctx, cookie);
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
/// it) finds it to arm a credentials watch.
#[inline(always)]
fn remember_cookie(ctx: &SockOpsContext, cookie: u64) {
    // SAFETY: a read of the sock_ops context's socket pointer.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return;
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
    if !st.is_null() {
        // SAFETY: this socket's storage; sockops runs under the socket's lock.
        unsafe { (*st).cookie = cookie };
    }
}
