//! Credential attribution: which requests' responses are read, and the response scanner that finds
//! the access key id and expiry of role credentials in them, so that the process that fetched a
//! key can be named when the key turns up elsewhere (a GuardDuty finding names the key, not the
//! process).
//!
//! The scanner runs in the kernel, on the bytes the metadata service sends back on a connection
//! whose request asked for credentials, and keeps exactly two JSON string values: `AccessKeyId`
//! (an identifier, not a secret) and `Expiration`. Every other byte, the secret access key and
//! the session token included, passes through a register and is never stored: a byte outside
//! those two values is written back as the byte that was already there (see [`Walk::step`]).
//!
//! Like the request classifier (`http.rs`) it is table-driven, with no data-dependent branch per
//! byte, so that the kernel runs it in a plain bounded loop that the verifiers of Linux 5.10 and
//! later accept, carries its state from one segment to the next (a response split anywhere is
//! read as if whole), and the host drives the very same code in tests. Two small automata run
//! side by side:
//! - the *frame* reads the HTTP response head (status line and headers: only
//!   `Transfer-Encoding` matters) and then the body, plain or chunked (`Transfer-Encoding:
//!   chunked`: chunk sizes in hex, extensions, the last chunk), and says which bytes are body;
//! - the *JSON* automaton reads the body: a top-level object whose keys it tells apart (the two it
//!   wants, and any other), string values (with escapes), scalars, and nested objects and arrays up
//!   to four levels (whose keys are never the ones it wants). It captures the two values' raw JSON
//!   text, at most [`KEY_MAX`] and [`EXPIRY_MAX`] bytes (more is cut and flagged).

/// The event's sizes, which the watch fills (the event's layout owns them).
pub use crate::event::{EVENT_PATH_MAX, PATH_TAIL, VALUES_MAX};

/// The stream of kept values: each value's raw JSON string text (escapes as written; a control
/// byte in it as `?`) between an opening and a closing mark. A value the stream had no room for
/// to its end has no closing mark. Marks are control bytes, which a kept value never holds.
pub mod mark {
    pub const KEY_OPEN: u8 = 1;
    pub const KEY_CLOSE: u8 = 2;
    pub const EXPIRY_OPEN: u8 = 3;
    pub const EXPIRY_CLOSE: u8 = 4;
}

/// Bytes of one segment the kernel reads; a longer segment is read this far and the response is
/// not followed further ([`flag::GAP`]).
pub const SEGMENT_MAX: u32 = 4096;
/// Bytes of one response read in all; the credentials document is about 1.5 KiB.
pub const RESPONSE_MAX: u32 = 16384;

/// Facts the scanner establishes, or'ed into [`RespState::flags`] (and an event's `flags`).
pub mod flag {
    /// The `AccessKeyId` string value ended (its closing quote was read).
    pub const KEY_DONE: u32 = 1 << 0;
    /// The `Expiration` string value ended.
    pub const EXPIRY_DONE: u32 = 1 << 1;
    /// The top-level JSON object closed: the whole document was read.
    pub const COMPLETE: u32 = 1 << 4;
    /// A segment longer than [`super::SEGMENT_MAX`], or a response longer than
    /// [`super::RESPONSE_MAX`]: what came after was not read.
    pub const GAP: u32 = 1 << 5;
}

/// What became of a response so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// More of it is to come.
    Reading,
    /// The top-level object closed: the document was read whole.
    Closed,
    /// It will not be read further: not JSON, a framing error, the last chunk without a closed
    /// object, or a [`flag::GAP`].
    Ended,
}

mod scan;

/// A watched response: the event it will be reported as (filled by the message hook when the
/// request is written, its two values by the response hook as it reads), and where the reading
/// stands. The value of [`crate::maps::CREDS`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Watch {
    pub ev: crate::event::CredentialsEvent,
    pub resp: RespState,
}

pub use scan::{CLASS, CLASSES, FRAME, FRAME_LEN, JSON, JSON_LEN, RespState, Walk};

/// A kept value read back from the stream: its raw text, and whether it was cut (no closing mark).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Value<'a> {
    pub raw: &'a [u8],
    pub cut: bool,
}

/// The last access key id and the last expiry in `stream` (the first `len` bytes of an event's
/// `values`), as the scanner kept them.
#[must_use]
pub fn values(stream: &[u8]) -> (Option<Value<'_>>, Option<Value<'_>>) {
    let (mut key, mut expiry) = (None, None);
    let mut i = 0;
    while i < stream.len() {
        let close = match stream[i] {
            mark::KEY_OPEN => mark::KEY_CLOSE,
            mark::EXPIRY_OPEN => mark::EXPIRY_CLOSE,
            _ => {
                i += 1;
                continue;
            }
        };
        let rest = &stream[i + 1..];
        let end = rest.iter().position(|&b| b <= mark::EXPIRY_CLOSE);
        let v = match end {
            Some(n) => Value { raw: &rest[..n], cut: rest[n] != close },
            None => Value { raw: rest, cut: true },
        };
        if close == mark::KEY_CLOSE {
            key = Some(v);
        } else {
            expiry = Some(v);
        }
        i += 1 + v.raw.len();
    }
    (key, expiry)
}

// ---------------------------------------------------------------------------------------------
// Which requests' responses are read.

/// States of the `credentials` matcher; the last (found) absorbs.
const NEEDLE: &[u8] = b"credentials";
const FOUND: u8 = NEEDLE.len() as u8;

const fn needle_step(s: u8, b: u8) -> u8 {
    let l = scan::lower(b);
    if s == FOUND || b == b'%' {
        FOUND
    } else if l == NEEDLE[s as usize] {
        s + 1
    } else if l == NEEDLE[0] {
        1
    } else {
        0
    }
}

const fn build_needle() -> [u16; 16 * 256 + NEEDLE_SLACK] {
    let mut t = [0u16; 16 * 256 + NEEDLE_SLACK];
    let mut s = 0usize;
    while s < 16 {
        let mut b = 0usize;
        while b < 256 {
            let next = if s <= FOUND as usize { needle_step(s as u8, b as u8) } else { FOUND };
            t[(s << 8) | b] = (next as u16) << NEEDLE_ROW_SHIFT;
            b += 1;
        }
        s += 1;
    }
    t
}

/// A state's row in [`NEEDLE_TABLE`] is 256 entries of 2 bytes: an entry holds its next state
/// shifted by this, the byte offset of that state's row (the next lookup needs no shift).
const NEEDLE_ROW_SHIFT: u32 = 9;

/// The matcher's table: state × byte → the next state's row (see [`NEEDLE_ROW_SHIFT`]), and
/// [`NEEDLE_SLACK`] zeroed entries that no step reads.
pub static NEEDLE_TABLE: [u16; 16 * 256 + NEEDLE_SLACK] = build_needle();

/// Entries after the table's own: the verifier's bound of a step's offset, `(s & 0x1fff) + 510`,
/// must stay inside it (see `http::TABLE_SLACK` for why the mask keeps bits the entries never
/// have).
const NEEDLE_SLACK: usize = 256;

/// The matcher over a byte string held as words of 8 bytes (little-endian: byte `k` of a word is
/// its bits `8k..8k + 8`), at most its first `len` bytes (at most 8 × `W`), from state `s` (0 at the
/// start; what a previous call returned to go on): the kernel runs it over the two parts of a kept
/// path. From the start state, a word that holds no `c`, `C` or `%` leaves the state where it is
/// (none of its bytes begins `credentials` or an escape), so it is skipped with one test; so is
/// any word once the needle is found (that state absorbs). Other words, and the last 0..=7 bytes,
/// go byte by byte, one table load each: from one byte's entry to the next, a mask and an
/// addition. Bounded loops, at most two branches a word and one a byte.
#[inline(always)]
#[must_use]
pub fn needle_words<const W: usize>(mut s: u32, words: &[u64; W], len: u32) -> u32 {
    let full = len / 8;
    let mut q = 0u32;
    while (q as usize) < W {
        if q >= full {
            break;
        }
        let word = words[q as usize];
        // Non-zero unless the matcher is at its start and no byte of the word could move it.
        let stirs = u64::from(s) | has_byte(word, b'c') | has_byte(word, b'C') | has_byte(word, b'%');
        if stirs != 0 && s != FOUND_STATE {
            let mut j = 0;
            while j < 8 {
                s = needle_load(s, (word >> (8 * j)) as u8);
                j += 1;
            }
        }
        q += 1;
    }
    // The bytes of the word `len` ends in, below `len`.
    if (q as usize) < W {
        let word = words[q as usize];
        let mut j = 0;
        while j < 8 {
            if 8 * q + j >= len {
                break;
            }
            s = needle_load(s, (word >> (8 * j)) as u8);
            j += 1;
        }
    }
    s
}

/// What [`letters`] gathers over a path's parts: where its words hold a `c` and an `r`, each in
/// either case (or a `%`, counted as both).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Letters {
    c: u64,
    r: u64,
}

impl Letters {
    /// Whether the matcher could find `credentials` in what was gathered: the bytes hold a `c`
    /// and an `r`, in either case, or a `%`. False is exact (the matcher then finds nothing);
    /// true says only that it must be run. No branch.
    #[inline(always)]
    #[must_use]
    pub const fn may_match(self) -> bool {
        // 1 where non-zero: the top bit of `x | -x`.
        let (c, r) = ((self.c | self.c.wrapping_neg()) >> 63, (self.r | self.r.wrapping_neg()) >> 63);
        c & r != 0
    }
}

/// A quick test before the matcher ([`needle_words`], same arguments): gathers into `acc` where
/// the first `len` bytes of `words` hold a `c`, an `r` or a `%` (and maybe some bytes after them,
/// in the word `len` ends in: those can make [`Letters::may_match`] true, never false). Most
/// paths a workload reads (the instance id, the availability zone, the AMI, the local address,
/// the hostname) hold no `c` or no `r`, and skip the matcher and its byte walk: three SWAR tests
/// a word, one branch. (The region's, `placement/region`, holds both: the matcher runs.)
#[inline(always)]
#[must_use]
pub fn letters<const W: usize>(mut acc: Letters, words: &[u64; W], len: u32) -> Letters {
    // The letters' case bit, set in every byte: `C` becomes `c`, `R` `r`; no other byte becomes
    // either (`%` has the bit already).
    const CASE: u64 = u64::from_le_bytes([0x20; 8]);
    let n = len.div_ceil(8);
    let mut q = 0u32;
    while (q as usize) < W {
        if q >= n {
            break;
        }
        let word = words[q as usize];
        let pct = has_byte(word, b'%');
        acc.c |= has_byte(word | CASE, b'c') | pct;
        acc.r |= has_byte(word | CASE, b'r') | pct;
        q += 1;
    }
    acc
}

/// Non-zero exactly when a byte of `word` is `b` (the zero-byte test on the word xor'ed with `b`
/// in every byte).
#[inline(always)]
const fn has_byte(word: u64, b: u8) -> u64 {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    let x = word ^ (ONES * b as u64);
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// The matcher's found state, as [`needle_words`] returns it.
const FOUND_STATE: u32 = (FOUND as u32) << NEEDLE_ROW_SHIFT;

/// One byte of the matcher: state `s` (a row offset, as [`NEEDLE_TABLE`]'s entries hold them)
/// reads `b`.
#[inline(always)]
fn needle_load(s: u32, b: u8) -> u32 {
    let at = (s as usize & 0x1fff) + usize::from(b) * 2;
    // SAFETY: an entry's low 9 bits are zero: `at` is at most 0x1e00 + 510 = 8,190, even, a whole
    // `u16` of the table's own 8,192 bytes, aligned.
    u32::from(unsafe { NEEDLE_TABLE.as_ptr().cast::<u8>().add(at).cast::<u16>().read() })
}

/// Whether the response to a request for `path` is read: when the path names credentials
/// (`credentials` in any case: the instance role's and the instance identity's, ECS's and EKS Pod
/// Identity's), when it has a `%` (an escape could spell it), or when the path was not kept whole
/// (`known` false: longer than kept, or begun in an earlier write): a request the kernel cannot
/// read whole is one it cannot rule out.
#[must_use]
pub fn wants_response(path: &[u8], known: bool) -> bool {
    let mut s = 0u16;
    for &b in path {
        s = NEEDLE_TABLE[(usize::from(s >> NEEDLE_ROW_SHIFT) << 8) | usize::from(b)];
    }
    !known || found(u32::from(s))
}

/// [`wants_response`] on the matcher's final state.
#[must_use]
pub const fn found(state: u32) -> bool {
    state == FOUND_STATE
}

// ---------------------------------------------------------------------------------------------
// What a path says (userspace: the event's `source` and `role`).

/// What kind of credentials a request path asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source<'a> {
    /// `/<version>/meta-data/iam/security-credentials/<role>`: the instance profile's role.
    InstanceRole(&'a [u8]),
    /// `/<version>/meta-data/identity-credentials/ec2/security-credentials/ec2-instance`.
    InstanceIdentity,
    /// Any other path whose response carried credentials (a container credentials endpoint, an
    /// unusual spelling of the paths above).
    Other,
}

const ROLE_PREFIX: &[u8] = b"/meta-data/iam/security-credentials/";
const IDENTITY_PATH: &[u8] = b"/meta-data/identity-credentials/ec2/security-credentials/ec2-instance";

/// The source of the credentials a request for `path` got (the query string aside).
#[must_use]
pub fn source(path: &[u8]) -> Source<'_> {
    let end = path.iter().position(|&b| b == b'?' || b == b'#').unwrap_or(path.len());
    let path = &path[..end];
    let Some(rest) = path.strip_prefix(b"/") else { return Source::Other };
    let Some(slash) = rest.iter().position(|&b| b == b'/') else { return Source::Other };
    if slash == 0 {
        return Source::Other; // no version
    }
    let rest = &rest[slash..];
    if rest == IDENTITY_PATH {
        return Source::InstanceIdentity;
    }
    match rest.strip_prefix(ROLE_PREFIX) {
        Some(role) if !role.is_empty() && !role.contains(&b'/') => Source::InstanceRole(role),
        _ => Source::Other,
    }
}

/// Keeps the bytes of `words` that lie below `len` and zeroes the rest: the words are a byte
/// string's, 8 bytes each (little-endian: byte `k` of a word is its bits `8k..8k + 8`). For an
/// event's copy of the request path, which must carry the path's own bytes and nothing that
/// followed them: a mask a word, no branch (a byte at a time, the copy took ~1,500 instructions).
#[inline(always)]
pub fn keep_below<const N: usize>(words: &[u64; N], len: u32, out: &mut [u64; N]) {
    let mut q = 0;
    while q < N {
        // Bytes of this word below `len`, clamped to 0..=8 with arithmetic shifts.
        let d = i64::from(len) - 8 * q as i64;
        let lo = d & !(d >> 63);
        let m = lo - 8;
        let r = (8 + (m & (m >> 63))) as u32;
        // 8r bits of ones, r = 8 included (two shifts of 4r: a shift by 64 is not one).
        out[q] = words[q] & ((1u64 << (4 * r)) << (4 * r)).wrapping_sub(1);
        q += 1;
    }
}

#[cfg(test)]
mod tests;
