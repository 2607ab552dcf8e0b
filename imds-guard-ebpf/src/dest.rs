//! What the message hook and the credentials watch read of an `sk_msg` context: the
//! connection's destination (a leaf: both import it, it imports neither).

use aya_ebpf::programs::SkMsgContext;
use imds_guard_common::event::AF_INET;

/// The connection's destination as events give it: family, port (network order in the low 16
/// bits) and address.
#[inline(always)]
pub(crate) fn destination(ctx: &SkMsgContext) -> (u32, u32, [u8; 16]) {
    let md = ctx.msg;
    // SAFETY: reads of the sk_msg context, each a volatile 32-bit load at the field's own address
    // (the verifier refuses loads through a ctx pointer the compiler has moved).
    let (family, port, ip4, ip6) = unsafe {
        use core::ptr::{addr_of, read_volatile as rd};
        (
            rd(addr_of!((*md).family)),
            rd(addr_of!((*md).remote_port)),
            rd(addr_of!((*md).remote_ip4)),
            [
                rd(addr_of!((*md).remote_ip6[0])),
                rd(addr_of!((*md).remote_ip6[1])),
                rd(addr_of!((*md).remote_ip6[2])),
                rd(addr_of!((*md).remote_ip6[3])),
            ],
        )
    };
    let mut addr = [0u8; 16];
    if family == AF_INET {
        addr[..4].copy_from_slice(&ip4.to_ne_bytes());
    } else {
        addr[0..4].copy_from_slice(&ip6[0].to_ne_bytes());
        addr[4..8].copy_from_slice(&ip6[1].to_ne_bytes());
        addr[8..12].copy_from_slice(&ip6[2].to_ne_bytes());
        addr[12..16].copy_from_slice(&ip6[3].to_ne_bytes());
    }
    // sk_msg_md.remote_port holds the network-order port in its upper 16 bits.
    (family, port >> 16, addr)
}
