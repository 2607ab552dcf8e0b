//! Empty programs of each attach type imds-guard uses: `cargo xtask bench` attaches them beside
//! the real ones, so the kernel's run statistics show what imds-guard costs above the floor that
//! any program of that type costs. The daemon never loads them.

use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr, cgroup_sockopt, sk_msg, sock_ops},
    programs::{SkMsgContext, SockAddrContext, SockContext, SockOpsContext, SockoptContext},
};

#[cgroup_sock_addr(connect4)]
pub fn bench_connect4(_ctx: SockAddrContext) -> i32 {
    1
}

#[cgroup_sock_addr(connect6)]
pub fn bench_connect6(_ctx: SockAddrContext) -> i32 {
    1
}

#[sock_ops]
pub fn bench_sockops(_ctx: SockOpsContext) -> u32 {
    1
}

#[sk_msg]
pub fn bench_msg(_ctx: SkMsgContext) -> u32 {
    1
}

/// An empty program that also reads the destination address and port, as any program that judges
/// a connect must (the context loads are rewritten by the verifier into loads from the kernel's
/// `sockaddr`): the floor for "judging a connect at all".
#[cgroup_sock_addr(connect4)]
pub fn bench_connect4_addr(ctx: SockAddrContext) -> i32 {
    reads_v4(&ctx)
}

#[inline(always)]
fn reads_v4(ctx: &SockAddrContext) -> i32 {
    // SAFETY: the context of a cgroup/connect4 program is a bpf_sock_addr; volatile so the loads
    // are kept.
    let (ip, port) = unsafe {
        use core::ptr::{addr_of, read_volatile};
        (
            read_volatile(addr_of!((*ctx.sock_addr).user_ip4)),
            read_volatile(addr_of!((*ctx.sock_addr).user_port)),
        )
    };
    // Never true for a real connect (port is 16 bits): keeps the values used.
    if ip == u32::MAX && port == u32::MAX { 0 } else { 1 }
}

/// As [`bench_connect4_addr`], for connect6 (four address words and the port).
#[cgroup_sock_addr(connect6)]
pub fn bench_connect6_addr(ctx: SockAddrContext) -> i32 {
    reads_v6(&ctx)
}

#[inline(always)]
fn reads_v6(ctx: &SockAddrContext) -> i32 {
    // SAFETY: as above; user_ip6 only as 32-bit loads.
    let (a, b, c, d, port) = unsafe {
        use core::ptr::{addr_of, read_volatile as rd};
        let sa = ctx.sock_addr;
        (
            rd(addr_of!((*sa).user_ip6[0])),
            rd(addr_of!((*sa).user_ip6[1])),
            rd(addr_of!((*sa).user_ip6[2])),
            rd(addr_of!((*sa).user_ip6[3])),
            rd(addr_of!((*sa).user_port)),
        )
    };
    if (a & b & c & d) == u32::MAX && port == u32::MAX { 0 } else { 1 }
}

/// The floor for `imdsg_sock_create`, which runs at every `socket()` of the cgroup.
#[cgroup_sock(sock_create)]
pub fn bench_sock_create(_ctx: SockContext) -> i32 {
    1
}

/// The floors for `imdsg_sendmsg4`/`imdsg_sendmsg6`, which run at every unconnected UDP send.
#[cgroup_sock_addr(sendmsg4)]
pub fn bench_sendmsg4(_ctx: SockAddrContext) -> i32 {
    1
}

#[cgroup_sock_addr(sendmsg6)]
pub fn bench_sendmsg6(_ctx: SockAddrContext) -> i32 {
    1
}

/// As [`bench_connect4_addr`], for sendmsg4.
#[cgroup_sock_addr(sendmsg4)]
pub fn bench_sendmsg4_addr(ctx: SockAddrContext) -> i32 {
    reads_v4(&ctx)
}

/// As [`bench_connect6_addr`], for sendmsg6.
#[cgroup_sock_addr(sendmsg6)]
pub fn bench_sendmsg6_addr(ctx: SockAddrContext) -> i32 {
    reads_v6(&ctx)
}

/// The floor for `imdsg_setsockopt`, which runs at every `setsockopt()` of the cgroup.
#[cgroup_sockopt(setsockopt)]
pub fn bench_setsockopt(_ctx: SockoptContext) -> i32 {
    1
}
