//! Per-socket state for connections to a metadata endpoint, kept in socket-local storage: set by
//! the connect hook (who connected, which rule allowed it, what it may do over IMDSv1), then read
//! and advanced by the message hook as the process writes requests.

use crate::{
    event::{AF_INET, AF_INET6},
    http::{HttpState, ScanBuf, flag},
    rule::COMM_LEN,
};

pub use crate::http::SCAN_MAX;

/// `rule_index` when no rule matched (the connect was let through by monitor mode).
pub const NO_RULE: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockState {
    /// [`crate::rule::Imdsv1Action`] for this connection's workload.
    pub imdsv1: u32,
    pub rule_index: u32,
    pub generation: u32,
    pub uid: u32,
    pub gid: u32,
    /// [`crate::rule::Read`] as u32: what the connecting workload may read.
    pub read: u32,
    /// Who connected (the fallback attribution when the sender cannot be read).
    pub pid_tgid: u64,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
    /// The last writer that was not the connecting process (tgid, uid/gid as
    /// `bpf_get_current_uid_gid` gives them, and the generation it was judged in), and how the
    /// policy judged it ([`crate::verdict::ConnectVerdict`] as u32, see `writer_verdict`): a socket
    /// handed to another process is judged for its new holder once, not on every write.
    pub writer_tgid: u32,
    pub writer_generation: u32,
    pub writer_uid_gid: u64,
    pub writer_verdict: u32,
    pub writer_flags: u32,
    /// What that writer may read ([`crate::rule::Read`] as u32).
    pub writer_read: u32,
    /// The session token header ([`crate::http::flag`]) of the service this connection goes to
    /// ([`token_flag`]): a request without it is tokenless there.
    pub token: u32,
    /// The socket's cookie (its key in the sockhash), written by `sockops` when the connection is
    /// established: the message hook has no helper for it, and the response hook finds the
    /// credentials watch by it ([`crate::creds`]).
    pub cookie: u64,
    /// The request path's bytes after the first `http::PATH_MAX` (kept by the message hook from
    /// the write that holds the path), and how many.
    pub path_tail: [u8; crate::creds::PATH_TAIL],
    pub path_tail_len: u32,
    /// Non-zero while a request on this connection may have a credentials watch
    /// ([`crate::maps::CREDS`]): set when the message hook makes one, cleared when the next
    /// request ends it. A connection that never asked for credentials looks none up.
    pub watching: u32,
    /// Where the request being written stands.
    pub http: HttpState,
}

/// The message hook's working memory: the bytes of the write being classified, in a per-CPU
/// array (it was in the socket's storage, which made every metadata connect allocate and zero
/// 4.4 KiB: ~80 % of the connect hook's cost). A run on one CPU may be preempted by another
/// (kernels with full preemption), so a run marks the slot with `owner` first (one past the last
/// run's mark: a run that preempts it takes another) and checks the mark after its scan: a run
/// that another ran inside of judges its write unread (fails closed). Runs that interleave out of
/// order are a known gap (docs/SECURITY.md).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ScanSlot {
    pub owner: u64,
    pub buf: ScanBuf,
}

/// Alibaba Cloud's metadata service address.
pub const ALIBABA_V4: [u8; 4] = [100, 100, 100, 200];

/// The session token header ([`flag`]) of the metadata service at a destination (`family`
/// `AF_INET` or `AF_INET6`, the address as events carry it): Alibaba Cloud's at `100.100.100.200`
/// (also IPv4-mapped), AWS's everywhere else. Judged once per connection (at connect, kept in
/// [`SockState::token`]).
#[inline(always)]
#[must_use]
pub const fn token_flag(family: u32, addr: &[u8; 16]) -> u16 {
    let v4 = (family == AF_INET) as u32;
    // ::ffff:a.b.c.d: ten zero bytes, two 0xff, then the IPv4 address.
    let mapped = (family == AF_INET6) as u32
        & ((u64::from_ne_bytes([addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7]]) == 0)
            as u32)
        & ((addr[8] | addr[9]) == 0) as u32
        & ((addr[10] & addr[11]) == 0xff) as u32;
    let at = 12 * mapped as usize;
    let ali = (v4 | mapped)
        & (addr[at] == ALIBABA_V4[0]
            && addr[at + 1] == ALIBABA_V4[1]
            && addr[at + 2] == ALIBABA_V4[2]
            && addr[at + 3] == ALIBABA_V4[3]) as u32;
    if ali != 0 { flag::ALI_TOKEN } else { flag::TOKEN }
}

#[cfg(test)]
mod token_tests {
    use super::*;

    #[test]
    fn alibaba_s_token_header_at_its_address_only() {
        let mut ali = [0u8; 16];
        ali[..4].copy_from_slice(&ALIBABA_V4);
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&ALIBABA_V4);
        let mut aws = [0u8; 16];
        aws[..4].copy_from_slice(&[169, 254, 169, 254]);
        assert_eq!(token_flag(AF_INET, &ali), flag::ALI_TOKEN);
        assert_eq!(token_flag(AF_INET6, &mapped), flag::ALI_TOKEN);
        assert_eq!(token_flag(AF_INET, &aws), flag::TOKEN);
        assert_eq!(token_flag(AF_INET6, &ali), flag::TOKEN, "an IPv6 address starting 100.100.100.200");
        let mut not_mapped = mapped;
        not_mapped[11] = 0xfe;
        assert_eq!(token_flag(AF_INET6, &not_mapped), flag::TOKEN);
    }
}
