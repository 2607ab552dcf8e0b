//! Empty programs of each attach type imds-guard uses: `cargo xtask bench` attaches them beside
//! the real ones, so the kernel's run statistics show what imds-guard costs above the floor that
//! any program of that type costs. The daemon never loads them.

use aya_ebpf::{
    macros::{cgroup_sock_addr, sk_msg, sock_ops},
    programs::{SkMsgContext, SockAddrContext, SockOpsContext},
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
