//! Is a destination a metadata endpoint? Checked first on every connect, so it is a handful of
//! compares against the live generation's endpoint list and nothing else.

use crate::config::GenConfig;
pub use crate::config::{MAX_V4, MAX_V6};

/// `::ffff:0:0/96` third word in network byte order, as read from `user_ip6[2]` on any host.
#[inline(always)]
#[must_use]
pub const fn v4_mapped_marker() -> u32 {
    u32::from_ne_bytes([0, 0, 0xff, 0xff])
}

/// The IPv4 address of an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, which an AF_INET6 socket
/// connects to over IPv4), as four network-byte-order words.
#[inline(always)]
#[must_use]
pub fn mapped_v4(ip: [u32; 4]) -> Option<u32> {
    mapped_v4_from(|i| ip[i])
}

/// [`mapped_v4`] of the address whose words `word(0..4)` returns, asking for them only as far as
/// the answer needs: a program pays two dependent loads per word of `user_ip6`, and only an
/// address whose first word is zero (IPv4-mapped, `::1`, `::`) needs more. The marker word comes
/// before the second: `::1` and `::` are then settled with two words, not three.
#[inline(always)]
#[must_use]
pub fn mapped_v4_from(word: impl Fn(usize) -> u32) -> Option<u32> {
    if word(0) == 0 && word(2) == v4_mapped_marker() && word(1) == 0 { Some(word(3)) } else { None }
}

/// The prefilter's test on one address word: it agrees with the endpoints on the bits they share.
#[inline(always)]
#[must_use]
pub const fn passes(word: u32, net: u32, mask: u32) -> bool {
    word & mask == net
}

/// The prefilter's test of an AF_INET6 destination whose words `word(0..4)` returns (read as far
/// as [`mapped_v4_from`] needs): an IPv4-mapped one on the IPv4 filter, any other on the first
/// word. The filter's (net, mask) pairs come from `v4` and `v6`, and only the one needed is read:
/// the kernel reads them from a global that the daemon may be writing, the host from a
/// [`Prefilter`]. False means "certainly not an endpoint".
#[inline(always)]
#[must_use]
pub fn may_be_v6_with(
    word: impl Fn(usize) -> u32,
    v4: impl FnOnce() -> (u32, u32),
    v6: impl FnOnce() -> (u32, u32),
) -> bool {
    if let Some(ip) = mapped_v4_from(&word) {
        let (net, mask) = v4();
        return passes(ip, net, mask);
    }
    let (net, mask) = v6();
    passes(word(0), net, mask)
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
        if let Some(v4) = mapped_v4(ip) {
            return self.is_endpoint_v4(v4);
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

/// A necessary condition for being one of a generation's endpoints, checked before anything else
/// so that a connect to anywhere else costs two loads and a compare: the address must agree with
/// the endpoints on every bit in which they all agree (`addr & mask == net`). Any mask is sound;
/// with the default endpoints it is exact. IPv6 is filtered on its first word; an IPv4-mapped
/// address on the IPv4 filter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prefilter {
    pub v4_net: u32,
    pub v4_mask: u32,
    pub v6_net: u32,
    pub v6_mask: u32,
}

/// What the programs read without a map lookup (a global of theirs): the live generation and the
/// prefilter of each config slot. Written by the daemon in the same order as the maps (the slot's
/// filter before the switch), so a reader sees the filter of the generation it then judges by, or
/// of the one before (as if it had run a moment earlier).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fast {
    pub generation: u32,
    pub _pad: u32,
    pub filters: [Prefilter; crate::config::GENERATION_SLOTS as usize],
}

/// No address passes (`x & 0 == 1` never holds).
const NONE_NET: u32 = 1;

fn agree(words: impl Iterator<Item = u32>) -> (u32, u32) {
    let mut first = None;
    let mut differ = 0u32;
    for w in words {
        let f = *first.get_or_insert(w);
        differ |= f ^ w;
    }
    match first {
        Some(f) => (f & !differ, !differ),
        None => (NONE_NET, 0),
    }
}

impl Prefilter {
    /// The filter of a generation's endpoints.
    #[must_use]
    pub fn of(cfg: &GenConfig) -> Self {
        let (v4_net, v4_mask) = agree(cfg.v4[..(cfg.v4_count as usize).min(MAX_V4)].iter().copied());
        let (v6_net, v6_mask) = agree(cfg.v6[..(cfg.v6_count as usize).min(MAX_V6)].iter().map(|w| w[0]));
        Prefilter { v4_net, v4_mask, v6_net, v6_mask }
    }

    /// `ip` in network byte order: false means "certainly not an endpoint".
    #[inline(always)]
    #[must_use]
    pub const fn may_be_v4(&self, ip: u32) -> bool {
        passes(ip, self.v4_net, self.v4_mask)
    }

    /// `ip` as four network-byte-order words; see [`may_be_v6_with`].
    #[inline(always)]
    #[must_use]
    pub fn may_be_v6(&self, ip: [u32; 4]) -> bool {
        may_be_v6_with(|i| ip[i], || (self.v4_net, self.v4_mask), || (self.v6_net, self.v6_mask))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn cfg(v4: &[[u8; 4]], v6: &[std::net::Ipv6Addr]) -> GenConfig {
        let mut c = GenConfig::default();
        for (i, a) in v4.iter().enumerate() {
            c.v4[i] = u32::from_ne_bytes(*a);
        }
        c.v4_count = v4.len() as u32;
        for (i, a) in v6.iter().enumerate() {
            let o = a.octets();
            for w in 0..4 {
                c.v6[i][w] = u32::from_ne_bytes(o[4 * w..4 * w + 4].try_into().unwrap());
            }
        }
        c.v6_count = v6.len() as u32;
        c
    }

    fn words(a: std::net::Ipv6Addr) -> [u32; 4] {
        let o = a.octets();
        core::array::from_fn(|w| u32::from_ne_bytes(o[4 * w..4 * w + 4].try_into().unwrap()))
    }

    #[test]
    fn mapped_v4_from_reads_only_the_words_it_needs() {
        for (addr, mapped, reads) in [
            ("::ffff:169.254.169.254", Some([169, 254, 169, 254]), 4),
            ("::1", None, 2),
            ("::", None, 2),
            ("::1:0:ffff:a9fe:a9fe", None, 3),
            ("0:0:1::ffff:1", None, 2),
            ("fd00:ec2::254", None, 1),
            ("2001:db8::ffff:a9fe:a9fe", None, 1),
        ] {
            let ip = words(addr.parse().unwrap());
            let read = core::cell::Cell::new(0);
            let got = mapped_v4_from(|i| {
                read.set(read.get() + 1);
                ip[i]
            });
            assert_eq!(got, mapped.map(u32::from_ne_bytes), "{addr}");
            assert_eq!(read.get(), reads, "{addr}");
        }
    }

    #[test]
    fn every_endpoint_passes_and_other_traffic_does_not() {
        let v6: Vec<std::net::Ipv6Addr> =
            ["fd00:ec2::254", "fd00:ec2::23"].iter().map(|s| s.parse().unwrap()).collect();
        let c = cfg(&[[169, 254, 169, 254], [169, 254, 170, 2], [169, 254, 170, 23]], &v6);
        let f = Prefilter::of(&c);
        for i in 0..c.v4_count as usize {
            assert!(f.may_be_v4(c.v4[i]) && c.is_endpoint_v4(c.v4[i]));
            let mapped = [0, 0, v4_mapped_marker(), c.v4[i]];
            assert!(f.may_be_v6(mapped));
        }
        for a in &v6 {
            assert!(f.may_be_v6(words(*a)));
        }
        for other in [[127, 0, 0, 1], [10, 0, 0, 1], [8, 8, 8, 8], [0, 0, 0, 0]] {
            assert!(!f.may_be_v4(u32::from_ne_bytes(other)), "{other:?}");
        }
        assert!(!f.may_be_v6(words("::1".parse().unwrap())));
        assert!(!f.may_be_v6(words("2001:db8::1".parse().unwrap())));
        // Sound for any set: whatever passes the exact check passes the filter.
        let odd = cfg(&[[1, 2, 3, 4], [200, 100, 50, 25]], &[]);
        let f = Prefilter::of(&odd);
        assert!(f.may_be_v4(odd.v4[0]) && f.may_be_v4(odd.v4[1]));
        assert!(!f.may_be_v6(words("fd00:ec2::254".parse().unwrap())), "no v6 endpoints: nothing passes");
        let none = Prefilter::of(&GenConfig::default());
        assert!(!none.may_be_v4(0) && !none.may_be_v4(u32::MAX));
    }

    #[test]
    fn default_filter_lets_everything_through_to_the_exact_check() {
        let f = Prefilter::default();
        assert!(f.may_be_v4(u32::from_ne_bytes([127, 0, 0, 1])));
    }
}
