//! Which class of metadata a request path reads: the secrets a restricted workload may not
//! (`read = "no-secrets"`) — credentials (AWS role and instance-identity credentials, Alibaba
//! Cloud RAM role credentials, GCP service-account tokens, Azure managed-identity tokens, OCI
//! instance-principal certificates and keys) and user data — or anything else.
//!
//! The judgement is deliberately one-sided. A path in canonical form (it starts with `/`, has no
//! percent-encoding, no empty, `.` or `..` segment, no backslash, control or non-ASCII byte) is
//! judged exactly: the metadata service reads it as written. Any other path, and one that is not
//! wholly known (longer than the classifier keeps, or whose request line began in an earlier
//! write), is [`class::UNREADABLE`]: what the service would resolve it to is not proven here, so a
//! restricted workload is refused it. No metadata client sends such paths (curl, the AWS SDKs and
//! CLI, cloud-init normalise theirs); an attacker hiding `iam/security-credentials` behind
//! `%2e%2e` or `//` gets nothing. The secret prefixes are compared without regard to case, from
//! the path's first and from its second segment (`/latest/…`, `/2021-07-15/…`, a path with no
//! version at all, and the other clouds' `/computeMetadata/…`, `/metadata/…`, `/opc/…`), so no
//! spelling a service might accept slips through.
//!
//! The kernel runs [`classify`] over the path the HTTP classifier kept ([`crate::http`]), in one
//! bounded loop whose body has no branch: the prefixes are one automaton (a trie of all of them),
//! stepped with one table load per byte from each start position (the first and the second
//! slash), and the path's shape (segments, query string, bytes a canonical path has not) is
//! another.

use crate::http::PATH_MAX;

/// What a path reads.
pub mod class {
    /// Nothing secret (placement, instance id, the token PUT, ...).
    pub const NONE: u32 = 0;
    /// AWS `…/meta-data/iam/security-credentials…` (the role's name and temporary credentials),
    /// and Alibaba Cloud's `…/meta-data/ram/security-credentials…`.
    pub const ROLE_CREDENTIALS: u32 = 1;
    /// AWS `…/meta-data/identity-credentials…`: the instance-identity role's credentials.
    pub const IDENTITY_CREDENTIALS: u32 = 2;
    /// `…/user-data…`: user data, which often holds secrets.
    pub const USER_DATA: u32 = 3;
    /// Not in canonical form or not wholly known: not proven harmless.
    pub const UNREADABLE: u32 = 4;
    /// GCP `/computeMetadata/v1/instance/service-accounts…`: OAuth access and identity tokens.
    pub const SERVICE_ACCOUNT: u32 = 5;
    /// Azure `/metadata/identity…`: managed-identity tokens.
    pub const MANAGED_IDENTITY: u32 = 6;
    /// OCI `/opc/v1/identity…`, `/opc/v2/identity…`: the instance principal's certificate and key.
    pub const INSTANCE_PRINCIPAL: u32 = 7;
    /// Under none of the prefixes a workload's `read` lists ([`crate::lists`]).
    pub const UNLISTED: u32 = 8;

    /// As events and `explain` name it.
    #[must_use]
    pub const fn name(c: u32) -> &'static str {
        match c {
            NONE => "none",
            ROLE_CREDENTIALS => "role-credentials",
            IDENTITY_CREDENTIALS => "identity-credentials",
            USER_DATA => "user-data",
            SERVICE_ACCOUNT => "service-account-token",
            MANAGED_IDENTITY => "managed-identity-token",
            INSTANCE_PRINCIPAL => "instance-principal",
            UNLISTED => "unlisted-path",
            _ => "unreadable-path",
        }
    }
}

/// The secret prefixes, lower-case, as they follow a segment boundary (the first or the second
/// slash of the path), with their class.
pub const SECRETS: [(&[u8], u32); 10] = [
    (b"meta-data/iam/security-credentials", class::ROLE_CREDENTIALS),
    (b"meta-data/ram/security-credentials", class::ROLE_CREDENTIALS),
    (b"meta-data/identity-credentials", class::IDENTITY_CREDENTIALS),
    (b"user-data", class::USER_DATA),
    (b"computemetadata/v1/instance/service-accounts", class::SERVICE_ACCOUNT),
    (b"computemetadata/v1beta1/instance/service-accounts", class::SERVICE_ACCOUNT),
    (b"metadata/identity", class::MANAGED_IDENTITY),
    (b"opc/v1/identity", class::INSTANCE_PRINCIPAL),
    (b"opc/v2/identity", class::INSTANCE_PRINCIPAL),
    (b"openstack/latest/user_data", class::USER_DATA),
];

// The tables the kernel walks instead of comparing: a comparison compiles to a branch (BPF has no
// set-on-condition), and a branch per byte whose outcome the verifier then knows would multiply
// its states by every way the bytes before could have gone. Loads from tables are values it does
// not know, so each byte is walked once.

/// Bits of [`BYTE`]: the byte is `/`, `?`, `.`, or not allowed in a canonical path (control,
/// non-ASCII, `%`, `\`, `#`); bits 8.. its class in the prefixes' automaton (case folded).
const B_SLASH: u16 = 1 << 0;
const B_QUERY: u16 = 1 << 1;
const B_DOT: u16 = 1 << 2;
const B_BAD: u16 = 1 << 3;

const fn byte_entry(b: u8) -> u16 {
    let class = match b {
        b'/' => B_SLASH,
        b'?' => B_QUERY,
        b'.' => B_DOT,
        b'%' | b'\\' | b'#' => B_BAD,
        _ if b < 0x21 || b > 0x7e => B_BAD,
        _ => 0,
    };
    class | ((trie_class_of(b.to_ascii_lowercase()) as u16) << 8)
}

static BYTE: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = byte_entry(b as u8);
        b += 1;
    }
    t
};

/// 1 for 1..=127 (a positive difference, masked to a byte), else 0.
static POSITIVE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 1;
    while i < 128 {
        t[i] = 1;
        i += 1;
    }
    t
};

/// 1 for 0, else 0.
static ZERO: [u8; 256] = {
    let mut t = [0u8; 256];
    t[0] = 1;
    t
};

/// The automaton's states: 0 the start, then the trie's nodes, [`WAIT_2`] and [`WAIT_1`] (a
/// slash, or two, to go before the start: the walk from the first and from the second slash
/// start there, so that no byte of the loop needs a test of which slash it is past), [`DEAD`]
/// once no prefix can match any more, and one absorbing state per class from [`ACCEPT`] on.
const STATES: usize = 256;
const WAIT_1: u8 = 245;
const WAIT_2: u8 = 246;
const DEAD: u8 = 247;
const ACCEPT: u8 = 248;
/// Byte classes of the automaton: each byte the prefixes use, and everything else.
const CLASSES: usize = 64;

/// The bytes the prefixes are made of (all lower-case), each its own class; class 0 is any other.
const fn trie_class_of(l: u8) -> u8 {
    let mut k = 0;
    let mut seen = [false; 256];
    let mut next = 1u8;
    while k < SECRETS.len() {
        let p = SECRETS[k].0;
        let mut i = 0;
        while i < p.len() {
            if !seen[p[i] as usize] {
                seen[p[i] as usize] = true;
                if p[i] == l {
                    return next;
                }
                next += 1;
            }
            i += 1;
        }
        k += 1;
    }
    if l == b'?' {
        return next; // its own class: the trie's waiting states end on it
    }
    0
}

type Trie = ([u8; STATES * CLASSES], [u8; STATES]);

/// The transitions (state × class → state) and the class each state has read in full (0: none).
const fn build_trie() -> Trie {
    let mut next = [DEAD; STATES * CLASSES];
    let mut accept = [0u8; STATES];
    // Accepting and dead states are absorbing.
    let mut s = DEAD as usize;
    while s < STATES {
        let mut c = 0;
        while c < CLASSES {
            next[s * CLASSES + c] = s as u8;
            c += 1;
        }
        if s >= ACCEPT as usize {
            accept[s] = (s - ACCEPT as usize) as u8;
        }
        s += 1;
    }
    // Waiting for a slash (two, one): any byte but a slash keeps waiting; the query string's `?`
    // ends the path before the start.
    let mut c = 0;
    while c < CLASSES {
        next[WAIT_2 as usize * CLASSES + c] = WAIT_2;
        next[WAIT_1 as usize * CLASSES + c] = WAIT_1;
        c += 1;
    }
    let slash = trie_class_of(b'/') as usize;
    let query = trie_class_of(b'?') as usize;
    assert!(query < CLASSES && slash != 0 && query != 0, "a class of its own for / and ?");
    next[WAIT_2 as usize * CLASSES + slash] = WAIT_1;
    next[WAIT_1 as usize * CLASSES + slash] = 0;
    next[WAIT_2 as usize * CLASSES + query] = DEAD;
    next[WAIT_1 as usize * CLASSES + query] = DEAD;
    let mut nodes = 1usize;
    let mut k = 0;
    while k < SECRETS.len() {
        let (p, class) = SECRETS[k];
        let mut at = 0usize;
        let mut i = 0;
        while i < p.len() {
            let c = trie_class_of(p[i]) as usize;
            let last = i + 1 == p.len();
            let to = next[at * CLASSES + c];
            if last {
                next[at * CLASSES + c] = ACCEPT + class as u8;
            } else if to == DEAD {
                next[at * CLASSES + c] = nodes as u8;
                at = nodes;
                nodes += 1;
                assert!(nodes < WAIT_1 as usize, "too many trie nodes");
            } else {
                assert!(to < DEAD, "a secret prefix is a prefix of another");
                at = to as usize;
            }
            i += 1;
        }
        k += 1;
    }
    (next, accept)
}

const TRIE: Trie = build_trie();
/// The transitions, and slack after them: a step's index, `(state << 6) + class`, is bounded by
/// the verifier from a state and a class it knows only as bytes (up to 255 << 6 + 255).
static TRIE_NEXT: [u8; STATES * CLASSES + 256] = {
    let mut t = [DEAD; STATES * CLASSES + 256];
    let mut i = 0;
    while i < STATES * CLASSES {
        t[i] = TRIE.0[i];
        i += 1;
    }
    t
};
static TRIE_ACCEPT: [u8; STATES] = TRIE.1;

// The path's shape, one automaton: the segment being read (empty, `.`, `..`, anything else),
// once the query string has begun, and once the path is known not to be canonical (before and
// after the query string: the `read` lists are walked up to it whatever the shape). Its entries
// are the next state's row offset (8 classes a row) and, in bit 7, whether the byte's successor
// is still part of the path.
const SH_EMPTY: u8 = 0;
const SH_DOT: u8 = 1;
const SH_DOTDOT: u8 = 2;
const SH_OTHER: u8 = 3;
const SH_QUERY: u8 = 4;
const SH_BAD: u8 = 5;
const SH_BAD_QUERY: u8 = 6;
/// The shape classes of a byte: any other, `/`, `?`, `.`, not allowed in a canonical path.
const SC_OTHER: u8 = 0;
const SC_SLASH: u8 = 1;
const SC_QUERY: u8 = 2;
const SC_DOT: u8 = 3;
const SC_BAD: u8 = 4;
/// The byte is part of the path (its next state is not past the query string's start).
const SH_ON: u8 = 1 << 7;

const fn shape_next(s: u8, c: u8) -> u8 {
    match (s, c) {
        (SH_BAD, SC_QUERY) | (SH_BAD_QUERY, _) => SH_BAD_QUERY,
        (SH_BAD, _) => SH_BAD,
        (SH_QUERY, _) => SH_QUERY,
        (_, SC_BAD) => SH_BAD,
        // A slash ends a segment: not an empty one, `.` or `..`.
        (SH_OTHER, SC_SLASH) => SH_EMPTY,
        (_, SC_SLASH) => SH_BAD,
        // So does the query string's start, where a last empty segment is fine.
        (SH_DOT | SH_DOTDOT, SC_QUERY) => SH_BAD_QUERY,
        (_, SC_QUERY) => SH_QUERY,
        (SH_EMPTY, SC_DOT) => SH_DOT,
        (SH_DOT, SC_DOT) => SH_DOTDOT,
        _ => SH_OTHER,
    }
}

/// The shape's transitions (7 states × 8 classes), and slack for the verifier's bound of a
/// step's index (`(entry & 0x3f) + class`, the class known to it only as a byte).
static SHAPE: [u8; 64 + 256] = {
    let mut t = [0u8; 64 + 256];
    let mut s = 0;
    while s <= SH_BAD_QUERY {
        let mut c = 0;
        while c <= SC_BAD {
            let n = shape_next(s, c);
            let on = if n == SH_QUERY || n == SH_BAD_QUERY { 0 } else { SH_ON };
            t[(s * 8 + c) as usize] = (n * 8) | on;
            c += 1;
        }
        s += 1;
    }
    t
};

/// Whether a path whose shape ends in that state (the row offset's state) is not canonical:
/// bad, or its last segment (the query string's start ended none) is `.` or `..`.
static SHAPE_END_BAD: [u8; 8] = [0, 1, 1, 0, 0, 1, 1, 0];

/// Each byte's classes: in the prefixes' automaton (bits 0..7, case folded), in the shape's
/// (bits 8..15).
static PATH_BYTE: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut b = 0;
    while b < 256 {
        let e = byte_entry(b as u8);
        let sc = if e & B_SLASH != 0 {
            SC_SLASH
        } else if e & B_QUERY != 0 {
            SC_QUERY
        } else if e & B_DOT != 0 {
            SC_DOT
        } else if e & B_BAD != 0 {
            SC_BAD
        } else {
            SC_OTHER
        };
        t[b] = (e >> 8) | ((sc as u16) << 8);
        b += 1;
    }
    t
};

/// `x & mask`, as an index, passed through memory first: the compiler cannot then drop the mask
/// as redundant (it can prove most of these values in bounds), and the verifier sees it applied.
/// Linux 5.10's verifier forgets what it knew of a value spilled to the stack in fewer than 8
/// bytes, and refused an index left unmasked that way ("math between map_value pointer and
/// register with unbounded min value").
#[inline(always)]
pub(crate) fn ix(x: u32, mask: u32) -> usize {
    let mut v = 0u32;
    // SAFETY: a local variable.
    let v = unsafe {
        core::ptr::write_volatile(&raw mut v, x);
        core::ptr::read_volatile(&raw const v)
    };
    (v & mask) as usize
}

/// The class of the path in `path[..len]` (`len` at most [`PATH_MAX`]), of which `total` bytes
/// were written: the path is wholly known when they are the same (not when the request line
/// began in an earlier write, `len` 0, or the path is longer than what is kept). The query string
/// (from `?`) is not part of the path.
///
/// For the verifier: the loop's body has no branch but the one that ends it with the path.
#[inline(always)]
#[must_use]
pub fn classify(path: &[u8; PATH_MAX], len: u32, total: u32) -> u32 {
    classify_with(path, len, total, |_, _| {})
}

/// The path's length (masked for the verifier) and 1 if the path is already known not to be in
/// canonical form: not wholly known (`len` is not `total`, or 0), or not starting with a slash.
#[inline(always)]
fn start(path: &[u8; PATH_MAX], len: u32, total: u32) -> (u32, u32) {
    let len = len & 0xff;
    let d = len ^ total;
    let whole =
        u32::from(ZERO[ix(d | d >> 8 | d >> 16 | d >> 24, 0xff)]) & u32::from(POSITIVE[ix(len, 0xff)]);
    (len, (whole ^ 1) | (u32::from(BYTE[usize::from(path[0])] & B_SLASH) ^ 1))
}

/// [`classify`], handing `each` every byte of the path with 1 while it is part of the path
/// (before the query string), 0 after: the message hook walks the `read` lists
/// ([`crate::lists::Walk`]) in this same loop, so that the verifier walks one loop, not one more
/// per list.
///
/// Three automata, each a table load a byte and no test: the path's shape (segments, the query
/// string, bytes a canonical path has not) and the secret prefixes from the first and from the
/// second slash (two walks of one automaton, started a slash or two early). Their states are
/// kept in 64 bits (a spill of fewer bytes is a value Linux 5.10's verifier forgets the bounds
/// of) and each step's index is a sum the compiler cannot turn into an `|` (which 5.10 bounds
/// not at all): a state shifted or masked to its row, plus a class it does not know to be
/// below the row's width.
#[inline(always)]
#[must_use]
pub fn classify_with<F: FnMut(u8, u32)>(path: &[u8; PATH_MAX], len: u32, total: u32, mut each: F) -> u32 {
    let (len, bad) = start(path, len, total);
    // The shape's row offset (the state before the first byte ends no empty segment), and the
    // two walks' states.
    let mut shape = u64::from(SH_OTHER * 8);
    let mut first = u64::from(WAIT_1);
    let mut second = u64::from(WAIT_2);
    let mut i: u32 = 0;
    while i < PATH_MAX as u32 {
        // The one branch: the path's end (what follows is walked once per way out by the
        // verifier, which the caller keeps short).
        if i >= len {
            break;
        }
        let b = path[i as usize];
        let e = u64::from(PATH_BYTE[usize::from(b)]);
        let c = e & 0xff;
        first = u64::from(TRIE_NEXT[((first << 6) + c) as usize]);
        second = u64::from(TRIE_NEXT[((second << 6) + c) as usize]);
        shape = u64::from(SHAPE[((shape & 0x3f) + (e >> 8)) as usize]);
        each(b, (shape >> 7) as u32);
        i += 1;
    }
    let bad = bad | u32::from(SHAPE_END_BAD[((shape >> 3) & 7) as usize]);
    let found = u32::from(TRIE_ACCEPT[(first & 0xff) as usize]);
    let found = found + u32::from(ZERO[ix(found, 0xff)]) * u32::from(TRIE_ACCEPT[(second & 0xff) as usize]);
    // bad != 0 → UNREADABLE, without a branch.
    let ok = u32::from(ZERO[ix(bad, 0xff)]);
    ok * found + (ok ^ 1) * class::UNREADABLE
}

/// Whether a path of class `class` reads credentials (any cloud's; not user data, not a path
/// that is not proven harmless).
#[must_use]
pub const fn is_credentials(class: u32) -> bool {
    matches!(
        class,
        class::ROLE_CREDENTIALS
            | class::IDENTITY_CREDENTIALS
            | class::SERVICE_ACCOUNT
            | class::MANAGED_IDENTITY
            | class::INSTANCE_PRINCIPAL
    )
}

/// The class of a path the daemon has as text (a reported request's): its first [`PATH_MAX`]
/// bytes judged as the whole path, so that the secret prefixes decide and a long role name does
/// not make it unreadable.
#[must_use]
pub fn classify_text(path: &[u8]) -> u32 {
    let mut p = [0u8; PATH_MAX];
    let n = path.len().min(PATH_MAX);
    p[..n].copy_from_slice(&path[..n]);
    classify(&p, n as u32, n as u32)
}

/// Whether a tokenless request for `path` (of class `class`, from [`classify`]) is another
/// cloud's request, which its own service refuses without its own header: GCP
/// `/computeMetadata/` (`Metadata-Flavor: Google`), Azure `/metadata/` (`Metadata: true`), OCI
/// `/opc/v2/` (`Authorization: Bearer Oracle`). Only a path in canonical form counts (an AWS
/// service that resolved `/metadata/../latest/…` would otherwise be asked for IMDSv1 data
/// unseen); exact case, as those services spell them. OCI's `/opc/v1/` and `/openstack/` are its
/// legacy tokenless API, like IMDSv1, and Alibaba Cloud's paths are AWS's: not counted. Only
/// the path's own `len` bytes count: what follows them in `path` may be an earlier request's.
#[inline(always)]
#[must_use]
pub fn other_cloud(path: &[u8; PATH_MAX], len: u32, class: u32) -> bool {
    const MARKERS: [&[u8]; 3] = [b"/computeMetadata/", b"/metadata/", b"/opc/v2/"];
    if class == self::class::UNREADABLE {
        return false;
    }
    let mut m = 0;
    while m < MARKERS.len() {
        let marker = MARKERS[m];
        let mut same = true;
        let mut i = 0;
        while i < marker.len() {
            same &= path[i] == marker[i];
            i += 1;
        }
        if same && len as usize >= marker.len() {
            return true;
        }
        m += 1;
    }
    false
}

/// The loop the shape automaton replaced (2026-12-05), kept to hold the new one to it
/// (`the_shape_automaton_matches_the_loop_it_replaced`).
#[cfg(test)]
mod before {
    use super::*;

    /// The segment being read: empty, `.`, `..`, or anything else.
    const SEG_EMPTY: usize = 0;
    const SEG_OTHER: usize = 3;
    static SEG_DOT: [u8; 4] = [1, 2, 3, 3];
    static SLASH_BAD: [u8; 4] = [1, 1, 1, 0];
    static END_BAD: [u8; 4] = [0, 1, 1, 0];

    /// One start position's walk through the automaton.
    #[derive(Clone, Copy)]
    struct Track {
        state: u32,
    }

    impl Track {
        const fn new() -> Self {
            Track { state: 0 }
        }

        /// Feeds a byte of trie class `c` when `on` (1), not when 0.
        #[inline(always)]
        fn step(&mut self, c: u32, on: u32) {
            let next = u32::from(TRIE_NEXT[ix((self.state << 6) | c, (STATES * CLASSES) as u32 - 1)]);
            // on ? next : state, without a branch.
            self.state ^= (self.state ^ next) & on.wrapping_neg();
        }

        /// The class this start position has read in full, or 0.
        #[inline(always)]
        fn class(&self) -> u32 {
            u32::from(TRIE_ACCEPT[ix(self.state, STATES as u32 - 1)])
        }
    }

    #[must_use]
    pub(super) fn classify_with_old<F: FnMut(u8, u32)>(
        path: &[u8; PATH_MAX],
        len: u32,
        total: u32,
        mut each: F,
    ) -> u32 {
        let (len, mut bad) = start(path, len, total);
        // Segment state, and whether the first and the second slash have been read.
        let mut seg = SEG_OTHER as u32;
        let mut after_first: u32 = 0;
        let mut after_second: u32 = 0;
        // 1 until the query string begins.
        let mut live: u32 = 1;
        // The prefixes compared from the byte after the first slash, and after the second.
        let mut first = Track::new();
        let mut second = Track::new();
        let mut i: u32 = 0;
        while i < PATH_MAX as u32 {
            // The one branch: the path's end (what follows is walked once per way out by the
            // verifier, which the caller keeps short).
            if i >= len {
                break;
            }
            let b = path[i as usize];
            let e = u32::from(BYTE[usize::from(b)]);
            let inside = u32::from(POSITIVE[ix(len.wrapping_sub(i), 0xff)]);
            // The path ends at a `?`: its last segment ends there.
            let ends = live & inside & ((e >> 1) & 1);
            live &= ends ^ 1;
            let on = live & inside;
            let slash = e & 1 & on;
            let seg_i = ix(seg, 3);
            bad |= (slash & u32::from(SLASH_BAD[seg_i])) | (ends & u32::from(END_BAD[seg_i]));
            bad |= on & ((e >> 3) & 1);
            let c = e >> 8;
            each(b, on);
            first.step(c, after_first & on);
            second.step(c, after_second & on);
            after_second |= slash & after_first;
            after_first |= slash;
            // The segment state: reset by a slash, advanced by any other byte of the path.
            let dot = (e >> 2) & 1;
            let next = u32::from(SEG_DOT[seg_i]) * dot + (dot ^ 1) * SEG_OTHER as u32;
            let next = next * (slash ^ 1) + slash * SEG_EMPTY as u32;
            seg = seg * (on ^ 1) + next * on;
            i += 1;
        }
        // The last segment ends with the path (if no `?` ended it).
        bad |= live & u32::from(END_BAD[ix(seg, 3)]);
        let found = first.class();
        let found = found + u32::from(ZERO[ix(found, 0xff)]) * second.class();
        // bad != 0 → UNREADABLE, without a branch.
        let ok = u32::from(ZERO[ix(bad, 0xff)]);
        ok * found + (ok ^ 1) * class::UNREADABLE
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{string::String, vec, vec::Vec};

    use proptest::prelude::*;

    use super::*;

    fn of(p: &[u8]) -> u32 {
        let mut buf = [0u8; PATH_MAX];
        let n = p.len().min(PATH_MAX);
        buf[..n].copy_from_slice(&p[..n]);
        classify(&buf, n as u32, p.len() as u32)
    }

    /// What the metadata service could read for `path`, resolved every way a server might: the
    /// query cut, percent-escapes decoded (repeatedly, as a proxy in front might), backslashes taken
    /// as slashes, dot segments removed (RFC 3986 5.2.4), empty segments dropped, case folded.
    /// The secret class, if the result (or the result without its version segment) begins with a
    /// secret prefix.
    fn reference(path: &[u8]) -> u32 {
        let mut p: Vec<u8> = path.split(|&b| b == b'?').next().unwrap_or_default().to_vec();
        for _ in 0..3 {
            p = decode(&p);
        }
        let p: Vec<u8> = p.iter().map(|&b| if b == b'\\' { b'/' } else { b.to_ascii_lowercase() }).collect();
        let mut segs: Vec<&[u8]> = Vec::new();
        for s in p.split(|&b| b == b'/') {
            match s {
                b"" | b"." => {}
                b".." => {
                    segs.pop();
                }
                s => segs.push(s),
            }
        }
        let joined = |from: usize| segs.get(from..).unwrap_or_default().join(&b'/');
        for from in [0, 1] {
            let rest = joined(from);
            for (prefix, class) in SECRETS {
                if rest.starts_with(prefix) {
                    return class;
                }
            }
        }
        class::NONE
    }

    fn decode(p: &[u8]) -> Vec<u8> {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        let mut out = Vec::new();
        let mut i = 0;
        while i < p.len() {
            if p[i] == b'%'
                && let (Some(h), Some(l)) =
                    (p.get(i + 1).and_then(|&b| hex(b)), p.get(i + 2).and_then(|&b| hex(b)))
            {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
            out.push(p[i]);
            i += 1;
        }
        out
    }

    /// In canonical form: what [`classify`] judges exactly.
    fn canonical(p: &[u8]) -> bool {
        let path = p.split(|&b| b == b'?').next().unwrap_or_default();
        p.len() <= PATH_MAX
            && path.first() == Some(&b'/')
            && !path.iter().any(|&b| b <= b' ' || b >= 0x7f || b"%\\#".contains(&b))
            && path[1..].split(|&b| b == b'/').enumerate().all(|(i, s)| {
                let last = i == path[1..].split(|&b| b == b'/').count() - 1;
                !matches!(s, b"." | b"..") && (!s.is_empty() || last)
            })
    }

    #[test]
    fn what_real_clients_ask_for() {
        use class::*;
        for (p, c) in [
            ("/latest/meta-data/placement/region", NONE),
            ("/latest/meta-data/instance-id", NONE),
            ("/latest/api/token", NONE),
            ("/latest/meta-data/", NONE),
            ("/", NONE),
            ("/latest", NONE),
            ("/latest/meta-data/iam/info", NONE),
            ("/latest/dynamic/instance-identity/document", NONE),
            ("/latest/meta-data/iam/security-credentials/", ROLE_CREDENTIALS),
            ("/latest/meta-data/iam/security-credentials/my-role", ROLE_CREDENTIALS),
            ("/latest/meta-data/iam/security-credentials", ROLE_CREDENTIALS),
            ("/2021-07-15/meta-data/iam/security-credentials/r", ROLE_CREDENTIALS),
            ("/meta-data/iam/security-credentials/r", ROLE_CREDENTIALS),
            ("/LATEST/Meta-Data/IAM/Security-Credentials/r", ROLE_CREDENTIALS),
            (
                "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
                IDENTITY_CREDENTIALS,
            ),
            ("/latest/user-data", USER_DATA),
            ("/latest/user-data/", USER_DATA),
            ("/latest/user-data?x=1", USER_DATA),
            ("/latest/meta-data/placement/region?/../../user-data", NONE),
            ("/latest/user-dat", NONE),
            ("/latest/meta-data/iam/security-credential", NONE),
            // The other clouds' secrets, and their harmless facts.
            ("/latest/meta-data/ram/security-credentials/role", ROLE_CREDENTIALS),
            ("/computeMetadata/v1/instance/service-accounts/default/token", SERVICE_ACCOUNT),
            ("/computeMetadata/v1/instance/service-accounts/default/identity?audience=x", SERVICE_ACCOUNT),
            ("/computeMetadata/v1beta1/instance/service-accounts/", SERVICE_ACCOUNT),
            ("/computeMetadata/v1/instance/zone", NONE),
            ("/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x", MANAGED_IDENTITY),
            ("/metadata/instance?api-version=2021-02-01", NONE),
            ("/metadata/instance/compute/location?api-version=2021-02-01&format=text", NONE),
            ("/opc/v2/identity/key.pem", INSTANCE_PRINCIPAL),
            ("/opc/v1/identity/cert.pem", INSTANCE_PRINCIPAL),
            ("/opc/v2/instance/region", NONE),
            ("/openstack/latest/user_data", USER_DATA),
            ("/openstack/latest/meta_data.json", NONE),
        ] {
            assert_eq!(class::name(of(p.as_bytes())), class::name(c), "{p}");
        }
    }

    #[test]
    fn other_clouds_requests_are_told_apart_only_in_canonical_form() {
        let judge = |p: &str| {
            let mut buf = [0u8; PATH_MAX];
            buf[..p.len()].copy_from_slice(p.as_bytes());
            other_cloud(&buf, p.len() as u32, of(p.as_bytes()))
        };
        for p in [
            "/computeMetadata/v1/instance/zone",
            "/computeMetadata/v1/instance/service-accounts/default/token",
            "/metadata/instance?api-version=2021-02-01",
            "/opc/v2/instance/",
        ] {
            assert!(judge(p), "{p}");
        }
        for p in [
            "/latest/meta-data/",
            "/opc/v1/instance/",
            "/openstack/latest/meta_data.json",
            "/computemetadata/v1/",
            "/metadata/../latest/meta-data/iam/security-credentials/r",
            "/metadata/%2e%2e/latest/user-data",
            "/metadata",
            "/",
        ] {
            assert!(!judge(p), "{p}");
        }
    }

    #[test]
    fn a_path_is_another_clouds_by_its_own_bytes_not_an_earlier_requests() {
        // The connection's state keeps the last request's path past the next one's (the scan
        // copies a request's path, rounded up to words, and no more): a short tokenless path
        // after another cloud's request is still AWS's.
        let mut h = crate::http::HttpState::default();
        h.feed(b"GET /computeMetadata/v1/instance/zone HTTP/1.1\r\nMetadata-Flavor: Google\r\n\r\n");
        assert!(other_cloud(&h.path, u32::from(h.path_len), of(h.path())));
        for short in ["/", "/c", "/computeMetadata", "/metadata", "/opc/v2"] {
            h.reset();
            h.feed(std::format!("GET {short} HTTP/1.1\r\n\r\n").as_bytes());
            assert_eq!(h.path(), short.as_bytes());
            assert!(!other_cloud(&h.path, u32::from(h.path_len), of(h.path())), "{short}");
        }
    }

    #[test]
    fn spellings_the_service_might_resolve_are_unreadable() {
        for p in [
            "/latest/meta-data/iam/../iam/security-credentials/r",
            "/latest/meta-data/placement/../iam/security-credentials/r",
            "/latest/meta-data/./iam/security-credentials/r",
            "/latest//meta-data/iam/security-credentials/r",
            "//latest/user-data",
            "/latest/%75ser-data",
            "/latest/meta-data/iam/%2e%2e/iam/security-credentials/",
            "/latest\\user-data",
            "/latest/user-data#",
            "/latest/meta-data/..",
            "/latest/meta-data/.",
            "/latest/meta-data/..?q",
            "latest/user-data",
            "http://169.254.169.254/latest/user-data",
            "",
            "/latest/meta-data/placement/region\x7f",
        ] {
            assert_eq!(class::name(of(p.as_bytes())), "unreadable-path", "{p:?}");
        }
        // Too long to be known whole, and a path whose request line began in an earlier write.
        let long = std::format!("/latest/meta-data/{}", "a".repeat(PATH_MAX));
        assert_eq!(of(long.as_bytes()), class::UNREADABLE);
        let mut buf = [0u8; PATH_MAX];
        buf[..10].copy_from_slice(b"/latest/me");
        assert_eq!(classify(&buf, 10, 20), class::UNREADABLE);
    }

    /// Segments that meet in the interesting ways.
    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("latest".into()),
            Just("2021-07-15".into()),
            Just("meta-data".into()),
            Just("Meta-Data".into()),
            Just("iam".into()),
            Just("security-credentials".into()),
            Just("security-credential".into()),
            Just("identity-credentials".into()),
            Just("user-data".into()),
            Just("USER-data".into()),
            Just("placement".into()),
            Just("computeMetadata".into()),
            Just("v1".into()),
            Just("instance".into()),
            Just("service-accounts".into()),
            Just("metadata".into()),
            Just("identity".into()),
            Just("opc".into()),
            Just("v2".into()),
            Just("ram".into()),
            Just("openstack".into()),
            Just("user_data".into()),
            Just("region".into()),
            Just("role".into()),
            Just("".into()),
            Just(".".into()),
            Just("..".into()),
            Just("%2e%2e".into()),
            Just("%2E".into()),
            Just("%75ser-data".into()),
            Just("meta-data%2fiam".into()),
            Just("a\\..".into()),
            Just("x?y".into()),
            "[a-zA-Z0-9._%-]{0,6}",
        ]
    }

    fn path() -> impl Strategy<Value = Vec<u8>> {
        (proptest::collection::vec(segment(), 0..8), any::<bool>()).prop_map(|(segs, slash)| {
            let mut p = String::new();
            for s in segs {
                p.push('/');
                p.push_str(&s);
            }
            if slash {
                p.push('/');
            }
            p.into_bytes()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// Whatever a path resolves to, a secret is never judged harmless; a canonical path is
        /// judged as the service reads it.
        #[test]
        fn a_secret_is_never_judged_harmless(p in path()) {
            let (got, want) = (of(&p), reference(&p));
            let shown = String::from_utf8_lossy(&p);
            if want != class::NONE {
                prop_assert!(got != class::NONE, "{shown}: judged harmless, resolves to {}", class::name(want));
            }
            if canonical(&p) {
                prop_assert_eq!(class::name(got), class::name(want), "{}", shown);
            } else {
                prop_assert_eq!(got, class::UNREADABLE, "{}", shown);
            }
        }

        #[test]
        fn arbitrary_bytes(p in proptest::collection::vec(any::<u8>(), 0..120)) {
            let (got, want) = (of(&p), reference(&p));
            if want != class::NONE {
                prop_assert!(got != class::NONE);
            }
            if canonical(&p) {
                prop_assert_eq!(got, want);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4_000))]

        /// The loop of three automata against the loop it replaced: the same class, and the
        /// same bytes handed on as the path's, for any bytes, lengths and totals.
        #[test]
        fn the_shape_automaton_matches_the_loop_it_replaced(
            p in proptest::collection::vec(prop_oneof![any::<u8>(), Just(b'/'), Just(b'.'), Just(b'?'), Just(b'a')], 0..PATH_MAX),
            extra in 0u32..3,
            real in path(),
        ) {
            for p in [p, real] {
                let mut buf = [0u8; PATH_MAX];
                let n = p.len().min(PATH_MAX);
                buf[..n].copy_from_slice(&p[..n]);
                for (len, total) in [(n as u32, n as u32), (n as u32, n as u32 + extra), (0, n as u32)] {
                    let (mut a, mut b) = (Vec::new(), Vec::new());
                    let new = classify_with(&buf, len, total, |x, on| a.push((x, on)));
                    let old = before::classify_with_old(&buf, len, total, |x, on| b.push((x, on)));
                    prop_assert_eq!(new, old, "{:?} len {} total {}", String::from_utf8_lossy(&p), len, total);
                    prop_assert_eq!(a, b);
                }
            }
        }
    }
}
