//! Per-socket state for connections to a metadata endpoint, kept in socket-local storage: set by
//! the connect hook (who connected, which rule allowed it, what it may do over IMDSv1), then read
//! and advanced by the message hook as the process writes requests.

use crate::{
    event::{AF_INET, AF_INET6},
    http::{HttpState, flag},
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

impl SockState {
    /// The kept tail of the path ([`SockState::path_tail`]) as words: what the message hook
    /// copies in and the credentials matcher reads a word at a time.
    #[inline(always)]
    #[must_use]
    pub fn path_tail_words(&self) -> &[u64; crate::creds::PATH_TAIL / 8] {
        const { assert!(TAIL_AS_WORDS) };
        // SAFETY: PATH_TAIL bytes at an 8-aligned offset of a struct aligned for its u64 fields
        // (map values are 8-aligned): PATH_TAIL / 8 words, borrowed with `self`.
        unsafe { &*self.path_tail.as_ptr().cast::<[u64; crate::creds::PATH_TAIL / 8]>() }
    }

    /// [`SockState::path_tail_words`], to write.
    #[inline(always)]
    pub fn path_tail_words_mut(&mut self) -> &mut [u64; crate::creds::PATH_TAIL / 8] {
        const { assert!(TAIL_AS_WORDS) };
        // SAFETY: as in `path_tail_words`, borrowed mutably with `self`.
        unsafe { &mut *self.path_tail.as_mut_ptr().cast::<[u64; crate::creds::PATH_TAIL / 8]>() }
    }
}

/// What viewing the path's tail as words relies on: whole words, at an 8-aligned offset of an
/// 8-aligned struct.
const TAIL_AS_WORDS: bool = crate::creds::PATH_TAIL.is_multiple_of(8)
    && core::mem::offset_of!(SockState, path_tail).is_multiple_of(8)
    && core::mem::align_of::<SockState>() == 8;

/// A connection whose requests must all be inspected (its workload's `imdsv1 = "deny"`, or a
/// `read` other than "all"), kept by socket cookie in [`crate::maps::GUARDS`].
///
/// The message hook sees the writes made once `sockops` has put the connection into the sockhash,
/// when the handshake completes. A write that entered `sendmsg` before (a blocking `send()` on a
/// socket whose non-blocking `connect()` is still in flight waits inside the call for the
/// handshake, then queues its bytes past the hook) cannot be refused; its response can. Every
/// byte the connection's owner queues, on any path, advances `tcp_sock->write_seq` before it is
/// sent: the response hook, which sees every segment received before the process can read it,
/// compares what was queued since the handshake with what the message hook let through
/// ([`sent_unseen`]). A response to bytes the hook did not see is withheld, and so is everything
/// after it on the connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Guard {
    /// `tcp_sock->write_seq` when the handshake completed.
    pub base: u32,
    /// Bytes of the writes the message hook let through since (wrapping).
    pub passed: u32,
    /// Non-zero once unseen bytes were found: every segment received after is withheld.
    pub tainted: u32,
    /// Who connected, for the report (from the connection's [`SockState`]).
    pub rule_index: u32,
    pub generation: u32,
    pub uid: u32,
    pub gid: u32,
    pub family: u32,
    pub port: u32,
    pub reserved: u32,
    pub pid_tgid: u64,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
    pub addr: [u8; 16],
}

/// [`Guard::tainted`]: unseen bytes found in enforce mode (every response segment withheld, every
/// write refused from then on), or in monitor mode (reported once, nothing withheld).
pub const TAINTED_WITHHELD: u32 = 1;
pub const TAINTED_REPORTED: u32 = 2;

/// Whether bytes the message hook did not see were queued on a guarded connection: `write_seq`
/// less `base` (what was queued since the handshake) is not `passed` (what the hook let through),
/// or one more once the connection's own FIN is queued (`fin_sent`: it takes a sequence number).
/// A write the hook let through is counted before it is queued, under the socket's lock, so
/// the response hook (which runs under the same lock, or when nobody holds it) finds `write_seq`
/// short only while a write too large for the send buffer waits for room: withheld then too
/// (fails closed).
#[inline(always)]
#[must_use]
pub const fn sent_unseen(base: u32, passed: u32, write_seq: u32, fin_sent: bool) -> bool {
    let more = write_seq.wrapping_sub(base).wrapping_sub(passed);
    !(more == 0 || (more == 1 && fin_sent))
}

#[cfg(test)]
mod guard_tests {
    use super::*;

    #[test]
    fn bytes_queued_past_the_hook_are_found_whatever_the_sequence_numbers() {
        for base in [0u32, 1, 0x7fff_ffff, 0xffff_fff0, u32::MAX] {
            // Nothing written; the hook's writes; those and our FIN.
            assert!(!sent_unseen(base, 0, base, false));
            assert!(!sent_unseen(base, 140, base.wrapping_add(140), false));
            assert!(!sent_unseen(base, 140, base.wrapping_add(141), true));
            // One byte or a request past the hook, before, between or after the hook's writes.
            for unseen in [1u32, 57, 4096] {
                for passed in [0u32, 140, 100_000] {
                    let ws = base.wrapping_add(passed).wrapping_add(unseen);
                    assert!(sent_unseen(base, passed, ws, unseen != 1), "{base} {passed} {unseen}");
                    assert!(sent_unseen(base, passed, ws.wrapping_add(1), true));
                }
            }
            // A FIN is one sequence number, only with the state that says it was sent.
            assert!(sent_unseen(base, 140, base.wrapping_add(141), false));
            // Short of what the hook let through (a write still waiting for room): withheld.
            assert!(sent_unseen(base, 140, base.wrapping_add(100), false));
        }
    }
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
