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

/// The message hook's working memory: the bytes of the write being classified, in a per-CPU
/// array (it was in the socket's storage, which made every metadata connect allocate and zero
/// 4.4 KiB: ~80 % of the connect hook's cost). Runs on one CPU may preempt one another (kernels
/// with full preemption, in any order), so the slot carries a word of claims ([`claim`]): a run
/// reads it, claims the slot for its copy, releases it after, and reads it again after its scan;
/// a run another run may have copied over while it copied or scanned judges its write unread
/// (fails closed).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ScanSlot {
    /// Changed only by atomic adds of [`claim::CLAIM`] and [`claim::RELEASE`].
    pub claims: u64,
    pub buf: ScanBuf,
}

/// How runs of the message hook share a CPU's [`ScanSlot`] without a lock or compare-and-exchange
/// (5.10 has only the atomic add): the slot's `claims` word counts, in its low 32 bits, the runs
/// copying into the slot now, and in its high 32 bits the copies done. A run
/// 1. reads the word (`before`),
/// 2. adds [`CLAIM`] (one more copying) — before the copy, so no copy goes unseen,
/// 3. copies its write into the slot,
/// 4. adds [`RELEASE`] (one less copying, one more done),
/// 5. scans, and reads the word again (`after`).
///
/// It had the slot to itself from its copy to its scan's end ([`kept`]) exactly when no run was
/// copying at step 1 and no run claimed the slot between steps 1 and 5: any other copy that
/// overlaps this run's began with a claim either before step 1 (then it was still copying at
/// step 1: the low bits) or after (then it is in the difference: a copy done adds to the high
/// bits, one not done to the low bits). Checked against every interleaving of three runs in
/// this module's tests.
pub mod claim {
    /// Added before a run's copy.
    pub const CLAIM: u64 = 1;
    /// Added after a run's copy (wrapping): −1 in the low half, +1 in the high half.
    pub const RELEASE: u64 = (1 << 32) - 1;

    /// What the claims word reads at step 5 exactly when the run that read it as `before` at step
    /// 1 had the slot to itself: its own copy done, nothing else since; and, when a run was
    /// copying at step 1, a value it never reads (all ones in the low half, which counts runs
    /// copying at once).
    ///
    /// Computed before the scan, without a branch (one value across the scan, one comparison
    /// after it: each way to the end of the message hook is a walk of its tail for the 5.10
    /// verifier). `hide` gives back its argument, and in the kernel keeps the compiler from
    /// seeing that it does (a volatile slot): the zero test below is two values' `x | -y`, which
    /// the compiler would otherwise make a comparison, and so a branch.
    #[inline(always)]
    #[must_use]
    pub fn expected(before: u64, hide: impl Fn(u32) -> u32) -> u64 {
        let low = before as u32;
        // 1 when the low half is non-zero (its top bit, or that of its negation, is set).
        let busy = (hide(low) | hide(low).wrapping_neg()) >> 31;
        before.wrapping_add(1 << 32) | u64::from(0u32.wrapping_sub(busy))
    }

    /// Whether a run that read the claims word as `before` (step 1) and `after` (step 5) had the
    /// slot to itself: nobody copying at step 1, and the only claim since is its own, done.
    #[inline(always)]
    #[must_use]
    pub fn kept(before: u64, after: u64) -> bool {
        after == expected(before, |x| x)
    }

    #[cfg(test)]
    mod tests {
        extern crate std;
        use super::*;
        use std::{vec, vec::Vec};

        /// A run's steps, as [`super`] numbers them, with the copy split in two (its start and
        /// its end: another run's copy may land anywhere inside it).
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        enum Step {
            Before,
            Claim,
            CopyStart,
            CopyEnd,
            Release,
            After,
        }
        const MAX_RUNS: usize = 3;
        const STEPS: [Step; 6] =
            [Step::Before, Step::Claim, Step::CopyStart, Step::CopyEnd, Step::Release, Step::After];

        /// Every interleaving of `runs` runs' steps (each run's in its own order: a preempted run
        /// resumes where it stopped, the scheduler picks any run next), checked at its end: a
        /// run whose check passes saw no other run's copy between its copy's start and its check.
        fn every_interleaving(runs: usize) -> u64 {
            assert!(runs <= MAX_RUNS);
            fn go(next: &mut Vec<usize>, order: &mut Vec<(usize, Step)>, total: usize, leaves: &mut u64) {
                if order.len() == total {
                    judge(order);
                    *leaves += 1;
                    return;
                }
                for r in 0..next.len() {
                    // Runs are alike: only orders where they begin in their numbers' order (a
                    // run's first step comes after the one before it has begun).
                    let may_begin = next[r] > 0 || r == 0 || next[r - 1] > 0;
                    if next[r] < STEPS.len() && may_begin {
                        order.push((r, STEPS[next[r]]));
                        next[r] += 1;
                        go(next, order, total, leaves);
                        next[r] -= 1;
                        order.pop();
                    }
                }
            }
            let mut leaves = 0;
            go(&mut vec![0; runs], &mut Vec::new(), runs * STEPS.len(), &mut leaves);
            leaves
        }

        fn judge(order: &[(usize, Step)]) {
            let runs = order.iter().map(|&(r, _)| r + 1).max().unwrap_or(0);
            let mut word = 0u64.wrapping_sub(1 << 32); // not zero: wrapping is part of the test
            let mut before = [0u64; MAX_RUNS];
            // Per run: when its copy started and ended, when its check was made and how it went
            // (positions in `order`).
            let mut copy = [(0usize, 0usize); MAX_RUNS];
            let mut check = [(0usize, false); MAX_RUNS];
            for (at, &(r, step)) in order.iter().enumerate() {
                match step {
                    Step::Before => before[r] = word,
                    Step::Claim => word = word.wrapping_add(CLAIM),
                    Step::CopyStart => copy[r].0 = at,
                    Step::CopyEnd => copy[r].1 = at,
                    Step::Release => word = word.wrapping_add(RELEASE),
                    Step::After => check[r] = (at, kept(before[r], word)),
                }
            }
            for r in 0..runs {
                let (checked_at, passed) = check[r];
                if !passed {
                    continue;
                }
                for o in (0..runs).filter(|&o| o != r) {
                    // The other's copy [start, end] must not meet this run's [copy start, check].
                    let (s, e) = copy[o];
                    assert!(
                        e < copy[r].0 || s > checked_at,
                        "run {r} passed its check though run {o} copied into the slot meanwhile: {order:?}"
                    );
                }
            }
            // Runs that do not overlap at all all pass (no false alarm without a reason).
            let alone = |r: usize| {
                let first = order.iter().position(|&(x, _)| x == r).unwrap_or(0);
                let last = order.iter().rposition(|&(x, _)| x == r).unwrap_or(0);
                order[first..=last].iter().all(|&(x, _)| x == r)
            };
            for r in (0..runs).filter(|&r| alone(r)) {
                // Alone from its first step to its last, and no run was mid-copy when it began.
                let open = order.iter().take_while(|&&(x, _)| x != r).fold(0i32, |n, &(_, s)| match s {
                    Step::Claim => n + 1,
                    Step::Release => n - 1,
                    _ => n,
                });
                if open == 0 {
                    assert!(check[r].1, "run {r} ran alone and failed its check: {order:?}");
                }
            }
        }

        #[test]
        fn expected_is_the_claim_done_or_unreachable() {
            for before in
                [0, 1 << 32, u64::MAX << 32, 7 << 32, (7 << 32) + 1, (7 << 32) + 0xffff_ffff, 1, 2, u64::MAX]
            {
                let e = expected(before, |x| x);
                if before as u32 == 0 {
                    assert_eq!(e, before.wrapping_add(1 << 32));
                } else {
                    assert_eq!(e as u32, u32::MAX, "{before:#x}");
                }
            }
        }

        #[test]
        fn two_runs_in_any_order() {
            // 12! / (6! 6!) interleavings, over the 2 orders of beginning.
            assert_eq!(every_interleaving(2), 924 / 2);
        }

        #[test]
        fn three_runs_in_any_order() {
            // 18! / (6!)^3 interleavings: every way a fully preemptive scheduler can run three
            // writes on one CPU (over the 3! orders in which they begin).
            assert_eq!(every_interleaving(3), 17_153_136 / 6);
        }

        #[test]
        fn a_run_nested_inside_anothers_copy_fails_closed_as_does_the_other() {
            use Step::*;
            let mut order: Vec<(usize, Step)> = [Before, Claim, CopyStart].map(|s| (0, s)).to_vec();
            order.extend(STEPS.map(|s| (1, s)));
            order.extend([CopyEnd, Release, After].map(|s| (0, s)));
            let mut word = 0u64;
            let (mut b0, mut b1, mut ok) = (0, 0, [false; 2]);
            for &(r, s) in &order {
                match s {
                    Before if r == 0 => b0 = word,
                    Before => b1 = word,
                    Claim => word += CLAIM,
                    Release => word = word.wrapping_add(RELEASE),
                    After => ok[r] = kept(if r == 0 { b0 } else { b1 }, word),
                    _ => {}
                }
            }
            // The inner run began while the outer one was copying: it cannot know whose bytes it
            // scanned either (the outer one's copy resumes over them), so both fail closed.
            assert_eq!(ok, [false, false]);
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
