//! `cgroup/setsockopt`: keeps `SO_RCVLOWAT` at 1 on connections whose requests must all be
//! inspected. Their answers pass the response hook, which withholds them once bytes past the
//! message hook were queued (`imds_guard_common::sock::Guard`); TCP runs that hook when it wakes
//! the socket's reader, and with `SO_RCVLOWAT` above an answer's size it does not, so the answer
//! would stay in the receive queue unjudged, where `splice()` (and on 5.10 `recv`) reads it. Every
//! other option, and every other socket, returns at once. (A socket that raised the option before
//! connecting is refused at connect: the connect hook.)

use aya_ebpf::{helpers::generated::bpf_sk_storage_get, macros::cgroup_sockopt, programs::SockoptContext};
use imds_guard_common::{config::Mode, rule::RuleValue, sock::SockState, stats::Stat};

use crate::maps::{IMDSG_SOCKSTATE, count, live_config};

const SOL_SOCKET: i32 = 1;
const SO_RCVLOWAT: i32 = 18;

#[cgroup_sockopt(setsockopt)]
pub fn imdsg_setsockopt(ctx: SockoptContext) -> i32 {
    let so = ctx.sockopt;
    // SAFETY: reads of the sockopt context, each a volatile load at the field's own address.
    let (level, optname) = unsafe {
        use core::ptr::{addr_of, read_volatile as rd};
        (rd(addr_of!((*so).level)), rd(addr_of!((*so).optname)))
    };
    if level != SOL_SOCKET || optname != SO_RCVLOWAT {
        return 1;
    }
    // SAFETY: the context's socket.
    let sk = unsafe { (*so).__bindgen_anon_1.sk };
    if sk.is_null() {
        return 1;
    }
    // SAFETY: helper call with our storage map and the option's socket; no F_CREATE: only a
    // socket the connect hook judged (a connection to a metadata endpoint) has state.
    let st = unsafe {
        bpf_sk_storage_get(
            core::ptr::addr_of!(IMDSG_SOCKSTATE).cast_mut().cast(),
            sk.cast(),
            core::ptr::null_mut(),
            0,
        )
    }
    .cast::<SockState>();
    if st.is_null() {
        return 1;
    }
    // SAFETY: this socket's storage, for this run.
    let st = unsafe { &*st };
    let terms = RuleValue { rule_index: st.rule_index, imdsv1: st.imdsv1, read: st.read };
    if !terms.needs_inspection() {
        return 1;
    }
    // SAFETY: the option's value, inside optval..optval_end (checked).
    let (val, end) =
        unsafe { ((*so).__bindgen_anon_2.optval as usize, (*so).__bindgen_anon_3.optval_end as usize) };
    if val + 4 > end {
        // Shorter than an int: the kernel refuses it itself (EINVAL).
        return 1;
    }
    // SAFETY: four bytes inside the value (checked just above).
    let lowat = unsafe { core::ptr::read_unaligned(val as *const i32) };
    if lowat <= 1 {
        return 1;
    }
    // Monitor mode refuses nothing (the guard then only reports what it finds).
    if !live_config().is_some_and(|c| c.mode() == Mode::Enforce) {
        return 1;
    }
    count(Stat::RcvlowatRefused);
    0
}
