//! Which class of metadata a request path reads: the secrets a restricted workload may not
//! (`read = "no-secrets"`) — the role's credentials, the instance-identity credentials, the user
//! data — or anything else.
//!
//! The judgement is deliberately one-sided. A path in canonical form (it starts with `/`, has no
//! percent-encoding, no empty, `.` or `..` segment, no backslash, control or non-ASCII byte) is
//! judged exactly: the metadata service reads it as written. Any other path, and one that is not
//! wholly known (longer than the classifier keeps, or whose request line began in an earlier
//! write), is [`class::UNREADABLE`]: what the service would resolve it to is not proven here, so a
//! restricted workload is refused it. No metadata client sends such paths (curl, the AWS SDKs and
//! CLI, cloud-init normalise theirs); an attacker hiding `iam/security-credentials` behind
//! `%2e%2e` or `//` gets nothing. The secret prefixes are compared without regard to case, from
//! the path's first and from its second segment (`/latest/…`, `/2021-07-15/…`, and a path with no
//! version at all), so no spelling the service might accept slips through.
//!
//! The kernel runs [`classify`] over the path the HTTP classifier kept ([`crate::http`]), in one
//! bounded loop with no data-dependent branch but the loop's own.

use crate::http::PATH_MAX;

/// What a path reads.
pub mod class {
    /// Nothing secret (placement, instance id, the token PUT, the role's name, ...).
    pub const NONE: u32 = 0;
    /// `…/meta-data/iam/security-credentials…`: the role's temporary credentials.
    pub const ROLE_CREDENTIALS: u32 = 1;
    /// `…/meta-data/identity-credentials…`: the instance-identity role's credentials.
    pub const IDENTITY_CREDENTIALS: u32 = 2;
    /// `…/user-data…`: user data, which often holds secrets.
    pub const USER_DATA: u32 = 3;
    /// Not in canonical form or not wholly known: not proven harmless.
    pub const UNREADABLE: u32 = 4;

    /// As events and `explain` name it.
    #[must_use]
    pub const fn name(c: u32) -> &'static str {
        match c {
            NONE => "none",
            ROLE_CREDENTIALS => "role-credentials",
            IDENTITY_CREDENTIALS => "identity-credentials",
            USER_DATA => "user-data",
            _ => "unreadable-path",
        }
    }
}

/// The secret prefixes, as they follow a segment boundary, lower-case; the index + 1 is the class.
pub const SECRETS: [&[u8]; 3] =
    [b"meta-data/iam/security-credentials", b"meta-data/identity-credentials", b"user-data"];

/// Room for any position in a path ([`PATH_MAX`] < 128; a power of two, for the index masks).
const P: usize = 128;

// The tables the kernel walks instead of comparing: a comparison compiles to a branch (BPF has no
// set-on-condition), and a branch per byte whose outcome the verifier then knows would multiply
// its states by every way the bytes before could have gone. Loads from tables are values it does
// not know, so each byte is walked once.

/// Bits of [`BYTE`]: the byte is `/`, `?`, `.`, or not allowed in a canonical path (control,
/// non-ASCII, `%`, `\`, `#`); bits 8.. the byte in lower case.
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
    class | ((b.to_ascii_lowercase() as u16) << 8)
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

/// The segment being read: empty, `.`, `..`, or anything else (also the state before the first
/// byte, so that the leading `/` ends no empty segment).
const SEG_EMPTY: usize = 0;
const SEG_OTHER: usize = 3;
/// The next segment state on a dot, or on another byte that is not a slash.
static SEG_DOT: [u8; 4] = [1, 2, 3, 3];
/// 1 where a segment in that state may not end at a slash (`//`, `/./`, `/../`) ...
static SLASH_BAD: [u8; 4] = [1, 1, 1, 0];
/// ... or end the path (`/.`, `/..`; a trailing `/` is fine).
static END_BAD: [u8; 4] = [0, 1, 1, 0];

/// One table per secret prefix.
type PerPrefix = [[u8; P]; 3];

const fn prefix_tables() -> (PerPrefix, PerPrefix, PerPrefix) {
    let mut bytes = [[0u8; P]; 3];
    let mut mask = [[0u8; P]; 3];
    let mut reached = [[0u8; P]; 3];
    let mut k = 0;
    while k < 3 {
        let p = SECRETS[k];
        let mut i = 0;
        while i < P {
            if i < p.len() {
                bytes[k][i] = p[i];
                mask[k][i] = 0xff;
            } else {
                reached[k][i] = 1;
            }
            i += 1;
        }
        k += 1;
    }
    (bytes, mask, reached)
}

const TABLES: (PerPrefix, PerPrefix, PerPrefix) = prefix_tables();
/// Each secret prefix, byte by byte ...
static PREFIX: PerPrefix = TABLES.0;
/// ... 0xff where a byte must match it, 0 past its end ...
static MASK: PerPrefix = TABLES.1;
/// ... and 1 from its end on: a comparison that got that far has read the whole prefix.
static REACHED: PerPrefix = TABLES.2;

/// `x & mask`, as an index, passed through memory first: the compiler cannot then drop the mask
/// as redundant (it can prove most of these values in bounds), and the verifier sees it applied.
/// Linux 5.10's verifier forgets what it knew of a value spilled to the stack in fewer than 8
/// bytes, and refused an index left unmasked that way ("math between map_value pointer and
/// register with unbounded min value").
#[inline(always)]
fn ix(x: u32, mask: u32) -> usize {
    let mut v = 0u32;
    // SAFETY: a local variable.
    let v = unsafe {
        core::ptr::write_volatile(&raw mut v, x);
        core::ptr::read_volatile(&raw const v)
    };
    (v & mask) as usize
}

/// The secret prefixes being compared from one start position: `alive` while every byte so far
/// matched, `at` bytes in.
#[derive(Clone, Copy)]
struct Track {
    alive: [u32; 3],
    at: u32,
}

impl Track {
    const fn new() -> Self {
        Track { alive: [1; 3], at: 0 }
    }

    /// Feeds lower-cased byte `l` when `on` (1), not when 0.
    #[inline(always)]
    fn step(&mut self, l: u32, on: u32) {
        let at = ix(self.at, P as u32 - 1);
        let mut k = 0;
        while k < 3 {
            let differs = (l ^ u32::from(PREFIX[k][at])) & u32::from(MASK[k][at]);
            self.alive[k] &= u32::from(ZERO[ix(differs, 0xff)]) | (on ^ 1);
            k += 1;
        }
        self.at += on;
    }

    /// The class this start position reads (the first prefix that matched in full), or 0.
    #[inline(always)]
    fn class(&self) -> u32 {
        let at = ix(self.at, P as u32 - 1);
        let hit = |k: usize| self.alive[k] & u32::from(REACHED[k][at]);
        let (a, b, c) = (hit(0), hit(1), hit(2));
        // The first that hit, without a branch.
        a * class::ROLE_CREDENTIALS
            + (a ^ 1) * (b * class::IDENTITY_CREDENTIALS + (b ^ 1) * c * class::USER_DATA)
    }
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
    let len = len & 0xff;
    // Non-zero once the path is known not to be in canonical form: not wholly known, or not
    // starting with a slash.
    let d = len ^ total;
    let whole =
        u32::from(ZERO[ix(d | d >> 8 | d >> 16 | d >> 24, 0xff)]) & u32::from(POSITIVE[ix(len, 0xff)]);
    let mut bad: u32 = (whole ^ 1) | (u32::from(BYTE[usize::from(path[0])] & B_SLASH) ^ 1);
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
        let e = u32::from(BYTE[usize::from(path[i as usize])]);
        let inside = u32::from(POSITIVE[ix(len.wrapping_sub(i), 0xff)]);
        // The path ends at a `?`: its last segment ends there.
        let ends = live & inside & ((e >> 1) & 1);
        live &= ends ^ 1;
        let on = live & inside;
        let slash = e & 1 & on;
        let seg_i = ix(seg, 3);
        bad |= (slash & u32::from(SLASH_BAD[seg_i])) | (ends & u32::from(END_BAD[seg_i]));
        bad |= on & ((e >> 3) & 1);
        let l = e >> 8;
        first.step(l, after_first & on);
        second.step(l, after_second & on);
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
            for (k, prefix) in SECRETS.iter().enumerate() {
                if rest.starts_with(prefix) {
                    return k as u32 + 1;
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
        ] {
            assert_eq!(class::name(of(p.as_bytes())), class::name(c), "{p}");
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
}
