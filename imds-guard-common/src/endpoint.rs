//! Is a destination a metadata endpoint? Checked first on every connect, so it is a handful of
//! compares against the live generation's endpoint list and nothing else.

use crate::config::GenConfig;

pub const MAX_V4: usize = 8;
pub const MAX_V6: usize = 8;

/// `::ffff:0:0/96` third word in network byte order, as read from `user_ip6[2]` on any host.
#[inline(always)]
#[must_use]
pub const fn v4_mapped_marker() -> u32 {
    u32::from_ne_bytes([0, 0, 0xff, 0xff])
}

impl GenConfig {
    /// `ip` in network byte order (as `bpf_sock_addr.user_ip4`).
    #[inline(always)]
    #[must_use]
    pub fn is_endpoint_v4(&self, ip: u32) -> bool {
        let n = self.v4_count as usize;
        let mut i = 0;
        while i < MAX_V4 {
            if i >= n {
                return false;
            }
            if self.v4[i] == ip {
                return true;
            }
            i += 1;
        }
        false
    }

    /// `ip` as four network-byte-order words (as `bpf_sock_addr.user_ip6`). An IPv4-mapped address
    /// (`::ffff:a.b.c.d`, which an AF_INET6 socket connects over IPv4) is the IPv4 endpoint.
    #[inline(always)]
    #[must_use]
    pub fn is_endpoint_v6(&self, ip: [u32; 4]) -> bool {
        if ip[0] == 0 && ip[1] == 0 && ip[2] == v4_mapped_marker() {
            return self.is_endpoint_v4(ip[3]);
        }
        let n = self.v6_count as usize;
        let mut i = 0;
        while i < MAX_V6 {
            if i >= n {
                return false;
            }
            let e = self.v6[i];
            if e[0] == ip[0] && e[1] == ip[1] && e[2] == ip[2] && e[3] == ip[3] {
                return true;
            }
            i += 1;
        }
        false
    }
}
