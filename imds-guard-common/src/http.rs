//! The HTTP request classifier: which requests to the metadata service are tokenless (IMDSv1),
//! which fetch a token, and which token fetches carry `X-Forwarded-For` (a proxy or SSRF sign).
//!
//! It is a table-driven state machine: one lookup in [`TABLE`] per byte gives the next state,
//! the facts the byte establishes (a method, the token path, one of the three header names) and
//! whether it belongs to the request path. A step has no data-dependent branch, so the kernel can
//! run it in a plain bounded loop over the bytes a process sends (the verifier walks one short
//! body per byte; no `bpf_loop`, which Linux 5.10 and 5.15 lack), carry the state from one
//! `sendmsg` to the next (a request split across writes is judged once, when its header block
//! ends), and the host can drive the very same code over any slice in tests and fuzzing. The
//! table is built by a `const fn` from the three header names and the token path, so the kernel
//! object and userspace hold the same bytes. It never panics and never reads past its state.

use crate::opaque::hide;

/// Bytes of the request path kept for reports.
pub const PATH_MAX: usize = 96;
/// Header bytes of one request the classifier reads before it calls the request `Oversized`.
pub const MAX_HEADER_BYTES: u32 = 8192;

pub const TOKEN_HEADER: &[u8] = b"x-aws-ec2-metadata-token";
pub const TTL_HEADER: &[u8] = b"x-aws-ec2-metadata-token-ttl-seconds";
pub const XFF_HEADER: &[u8] = b"x-forwarded-for";
/// Alibaba Cloud's session token header (its IMDSv2; the token PUT is AWS's path and method).
pub const ALI_TOKEN_HEADER: &[u8] = b"x-aliyun-ecs-metadata-token";
pub const TOKEN_PATH: &[u8] = b"/latest/api/token";

pub mod method {
    pub const UNKNOWN: u8 = 0;
    pub const GET: u8 = 1;
    pub const HEAD: u8 = 2;
    pub const PUT: u8 = 3;
    pub const POST: u8 = 4;
    pub const OTHER: u8 = 5;
}

/// Facts a byte can establish (bits 16..25 of a [`TABLE`] entry), or'ed into [`HttpState::flags`].
pub mod flag {
    /// `X-aws-ec2-metadata-token`.
    pub const TOKEN: u16 = 1 << 0;
    pub const TTL: u16 = 1 << 1;
    pub const XFF: u16 = 1 << 2;
    pub const PUT: u16 = 1 << 3;
    /// The path is `/latest/api/token` (the query string aside).
    pub const TOKEN_PATH: u16 = 1 << 4;
    pub const GET: u16 = 1 << 5;
    pub const HEAD: u16 = 1 << 6;
    pub const POST: u16 = 1 << 7;
    /// `X-aliyun-ecs-metadata-token` (Alibaba Cloud's token: counts only at its own endpoint).
    pub const ALI_TOKEN: u16 = 1 << 8;
}

/// What a request is, once its header block has ended.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finding {
    /// The header block has not ended yet.
    Incomplete = 0,
    /// Not an HTTP request line.
    NotHttp = 1,
    /// A request with the service's session token header (IMDSv2; AWS's
    /// `X-aws-ec2-metadata-token`, Alibaba Cloud's `X-aliyun-ecs-metadata-token` at its endpoint):
    /// nothing to report.
    Imdsv2 = 2,
    /// `PUT /latest/api/token`: fetching a session token.
    TokenPut = 3,
    /// A token PUT with `X-Forwarded-For`: IMDS refuses it; a proxy or an SSRF is at work.
    TokenPutForwarded = 4,
    /// A request without the token header: IMDSv1.
    Imdsv1 = 5,
    /// The header block is longer than [`MAX_HEADER_BYTES`], or the write is larger than the
    /// message hook reads: not classified (denied where v1 is).
    Oversized = 6,
    /// Bytes follow the end of a request's header block in the same write (a body, or a second,
    /// pipelined request, which no metadata client sends): not classified (denied where v1 is).
    Trailing = 7,
    /// A request without the AWS token header, in canonical form, to another cloud's API that
    /// its own service refuses without its own header (GCP `/computeMetadata/`, Azure
    /// `/metadata/`, OCI `/opc/v2/`): not IMDSv1. Set by the message hook from the path
    /// ([`crate::path::other_cloud`]), never by the classifier.
    OtherCloud = 8,
}

impl Finding {
    #[must_use]
    pub const fn from_u32(v: u32) -> Self {
        match v {
            1 => Finding::NotHttp,
            2 => Finding::Imdsv2,
            3 => Finding::TokenPut,
            4 => Finding::TokenPutForwarded,
            5 => Finding::Imdsv1,
            6 => Finding::Oversized,
            7 => Finding::Trailing,
            8 => Finding::OtherCloud,
            _ => Finding::Incomplete,
        }
    }

    /// Whether the request ends a header block (a verdict can be taken).
    #[must_use]
    pub const fn is_final(self) -> bool {
        !matches!(self, Finding::Incomplete)
    }

    /// Whether the message hook treats it as a request it cannot vouch for: reported where
    /// IMDSv1 is reported and refused where IMDSv1 is refused.
    #[must_use]
    pub const fn is_unverified(self) -> bool {
        matches!(self, Finding::Imdsv1 | Finding::Oversized | Finding::NotHttp | Finding::Trailing)
    }
}

// The states. Each is < 128 (7 bits of a table entry); the two final states are the highest, so
// that `(state + 2) >> 7` is 1 exactly for them.
mod st {
    /// The start of the request line.
    pub const METHOD: u8 = 0;
    /// The method nodes: G GE GET H HE HEA HEAD P PU PUT PO POS POST.
    pub const M_G: u8 = 1;
    pub const M_GE: u8 = 2;
    pub const M_GET: u8 = 3;
    pub const M_H: u8 = 4;
    pub const M_HE: u8 = 5;
    pub const M_HEA: u8 = 6;
    pub const M_HEAD: u8 = 7;
    pub const M_P: u8 = 8;
    pub const M_PU: u8 = 9;
    pub const M_PUT: u8 = 10;
    pub const M_PO: u8 = 11;
    pub const M_POS: u8 = 12;
    pub const M_POST: u8 = 13;
    /// Another method of `k` (1..=8) upper-case letters: `M_OTHER + k - 1`.
    pub const M_OTHER: u8 = 14;
    /// The path, `k` (0..=17) bytes of it matching the token path: `PATH + k`.
    pub const PATH: u8 = 22;
    /// The token path followed by its query string.
    pub const PATH_TOKEN_QUERY: u8 = 40;
    /// Any other path.
    pub const PATH_OTHER: u8 = 41;
    /// The rest of the request line (entered as `VALUE`: see `transition`).
    pub const VERSION: u8 = 42;
    /// The start of a header line.
    pub const LINE: u8 = 43;
    // A header name whose first `k` (1..=36) bytes match the TTL header (and so, up to 24, the
    // token header) is state `LINE + k`.
    /// A header name, its first `k` (3..=15) bytes matching `x-forwarded-for`: `NAME_XFF + k - 3`.
    pub const NAME_XFF: u8 = 80;
    /// Any other header name (entered as `VALUE`: see `transition`).
    pub const NAME_OTHER: u8 = 93;
    /// Blanks after a header name, before its colon: the name was none of ours (entered as
    /// `VALUE`: see `transition`), the token header, the TTL header, `x-forwarded-for`.
    pub const BLANK_NONE: u8 = 94;
    pub const BLANK_TOKEN: u8 = 95;
    pub const BLANK_TTL: u8 = 96;
    pub const BLANK_XFF: u8 = 97;
    /// A header value (or a folded continuation line), up to its line's end.
    pub const VALUE: u8 = 98;
    /// A header name, its first `k` (4..=27) bytes matching `x-aliyun-ecs-metadata-token`:
    /// `NAME_ALI + k - 4` (its first three, `x-a`, are the TTL header's).
    pub const NAME_ALI: u8 = 99;
    /// Blanks after the Alibaba token header's name.
    pub const BLANK_ALI: u8 = 123;
    /// The empty line: the header block has ended.
    pub const DONE: u8 = 126;
    pub const NOT_HTTP: u8 = 127;
}

/// Byte classes: bytes that every state treats alike share one (see [`CLASS`]).
pub const CLASSES: usize = 64;
/// Entries of [`TABLE`]: 128 states × 64 byte classes.
pub const TABLE_LEN: usize = 128 * CLASSES;
// A [`TABLE`] entry: bits 8..14 the next state, so that the entry masked with `0x7fff` is the
// byte offset of that state's row (64 entries of 4 bytes): the next lookup needs no shift; bit
// 15 "the next state is final"; bits 16..24 the [`flag`]s the byte establishes; bit 25 "this
// byte comes before the path" (a method letter or the blank after it); bit 29 "this byte is part
// of the path". The kernel does not test these bits (a test would be a branch): it ors each entry
// into one register (the flags) and adds its counting bits into another, where the bytes taken
// in a final state (at most 8: see `scan`) have bits 15..18 to themselves, the bytes before the
// path (at most 9 in a request: a method of up to 8 letters and its blank) bits 25..28, and the
// path's bytes everything from bit 29 up.
const STATE_SHIFT: u32 = 8;
const FLAG_SHIFT: u32 = 16;
const FLAGS: u32 = 0x1ff;
/// The next state is final (`DONE`, `NOT_HTTP`): the scan stops after this byte (or, inside a
/// word, after the word: see `scan`).
const FINAL: u32 = 1 << 15;
const BEFORE_PATH: u32 = 1 << 25;
const CAPTURE: u32 = 1 << 29;
/// The counting bits of an entry.
const COUNTS: u32 = FINAL | BEFORE_PATH | CAPTURE;
/// An entry's row offset: its next state's bits and the bits below them, which are zero.
const ROW: u32 = 0x7fff;

const fn entry(next: u8, flags: u16) -> u32 {
    ((next as u32) << STATE_SHIFT) | ((flags as u32) << FLAG_SHIFT)
}

const fn lower(b: u8) -> u8 {
    if b >= b'A' && b <= b'Z' { b | 0x20 } else { b }
}

/// The method node after `node` reads upper-case letter `c`, or `None` (another method).
const fn method_child(node: u8, c: u8) -> Option<u8> {
    use st::*;
    Some(match (node, c) {
        (METHOD, b'G') => M_G,
        (M_G, b'E') => M_GE,
        (M_GE, b'T') => M_GET,
        (METHOD, b'H') => M_H,
        (M_H, b'E') => M_HE,
        (M_HE, b'A') => M_HEA,
        (M_HEA, b'D') => M_HEAD,
        (METHOD, b'P') => M_P,
        (M_P, b'U') => M_PU,
        (M_PU, b'T') => M_PUT,
        (M_P, b'O') => M_PO,
        (M_PO, b'S') => M_POS,
        (M_POS, b'T') => M_POST,
        _ => return None,
    })
}

/// Letters read so far in method state `s`.
const fn method_len(s: u8) -> u8 {
    use st::*;
    match s {
        M_G | M_H | M_P => 1,
        M_GE | M_HE | M_PU | M_PO => 2,
        M_GET | M_HEA | M_PUT | M_POS => 3,
        M_HEAD | M_POST => 4,
        _ if s >= M_OTHER && s < M_OTHER + 8 => s - M_OTHER + 1,
        _ => 0,
    }
}

/// The header-name node after `node` (`LINE`, a `NAME_TTL`/`NAME_XFF` node or `NAME_OTHER`)
/// reads the lower-cased byte `l`.
const fn name_child(node: u8, l: u8) -> u8 {
    use st::*;
    if node >= LINE && node < LINE + TTL_HEADER.len() as u8 {
        let k = (node - LINE) as usize;
        if TTL_HEADER[k] == l {
            return LINE + k as u8 + 1;
        }
        if k == 2 && XFF_HEADER[2] == l {
            return NAME_XFF;
        }
        if k == 3 && ALI_TOKEN_HEADER[3] == l {
            return NAME_ALI;
        }
        return NAME_OTHER;
    }
    if node >= NAME_ALI && node < NAME_ALI + ALI_TOKEN_HEADER.len() as u8 - 4 {
        let k = (node - NAME_ALI) as usize + 4;
        if ALI_TOKEN_HEADER[k] == l {
            return node + 1;
        }
    }
    if node >= NAME_XFF && node < NAME_XFF + XFF_HEADER.len() as u8 - 3 {
        let k = (node - NAME_XFF) as usize + 3;
        if XFF_HEADER[k] == l {
            return node + 1;
        }
    }
    NAME_OTHER
}

/// The header a name node has read in full: (its flag, its blank state).
const fn name_complete(node: u8) -> (u16, u8) {
    use st::*;
    if node == LINE + TOKEN_HEADER.len() as u8 {
        (flag::TOKEN, BLANK_TOKEN)
    } else if node == NAME_ALI + ALI_TOKEN_HEADER.len() as u8 - 4 {
        (flag::ALI_TOKEN, BLANK_ALI)
    } else if node == LINE + TTL_HEADER.len() as u8 {
        (flag::TTL, BLANK_TTL)
    } else if node == NAME_XFF + XFF_HEADER.len() as u8 - 3 {
        (flag::XFF, BLANK_XFF)
    } else {
        (0, BLANK_NONE)
    }
}

/// The transition of state `s` on byte `b`. The rest of the request line, a header name that is
/// none of ours and the blanks after it tell nothing apart that a header value does not: each
/// goes on to the next line at `\n` and records nothing on the way (no flag, no count, no final
/// state). They are entered as `VALUE`, whose words without a `\n` the scan skips whole
/// ([`HttpState::scan`]); their own rows are left unreachable.
const fn transition(s: u8, b: u8) -> u32 {
    let e = transition_of(s, b);
    let n = next_state(e);
    if n == st::VERSION || n == st::NAME_OTHER || n == st::BLANK_NONE {
        (e & !(0x7f << STATE_SHIFT)) | ((st::VALUE as u32) << STATE_SHIFT)
    } else {
        e
    }
}

/// [`transition`] before the states that behave as a value are merged into it.
const fn transition_of(s: u8, b: u8) -> u32 {
    use st::*;
    let blank = b == b' ' || b == b'\t';
    let eol = b == b'\r' || b == b'\n';
    if s == METHOD || (s >= M_G && s < M_OTHER + 8) {
        if b == b' ' && s != METHOD {
            let f = match s {
                M_GET => flag::GET,
                M_HEAD => flag::HEAD,
                M_PUT => flag::PUT,
                M_POST => flag::POST,
                _ => 0,
            };
            return entry(PATH, f);
        }
        if b >= b'A' && b <= b'Z' {
            if s < M_OTHER
                && let Some(c) = method_child(s, b)
            {
                return entry(c, 0);
            }
            let n = method_len(s);
            return if n < 8 { entry(M_OTHER + n, 0) } else { entry(NOT_HTTP, 0) };
        }
        return entry(NOT_HTTP, 0);
    }
    if s >= PATH && s <= PATH_OTHER {
        if b == b' ' {
            let tok = s == PATH + TOKEN_PATH.len() as u8;
            return entry(VERSION, if tok { flag::TOKEN_PATH } else { 0 });
        }
        if eol {
            return entry(NOT_HTTP, 0); // HTTP/0.9 or garbage
        }
        let next = if s < PATH + TOKEN_PATH.len() as u8 && TOKEN_PATH[(s - PATH) as usize] == b {
            s + 1
        } else if s == PATH + TOKEN_PATH.len() as u8 && b == b'?' {
            return entry(PATH_TOKEN_QUERY, flag::TOKEN_PATH) | CAPTURE;
        } else if s == PATH_TOKEN_QUERY {
            PATH_TOKEN_QUERY
        } else {
            PATH_OTHER
        };
        return entry(next, 0) | CAPTURE;
    }
    if s == VERSION {
        return entry(if b == b'\n' { LINE } else { VERSION }, 0);
    }
    if s == VALUE {
        return entry(if b == b'\n' { LINE } else { VALUE }, 0);
    }
    if s == LINE {
        return match b {
            b'\n' => entry(DONE, 0),
            b'\r' => entry(LINE, 0),
            // An empty name, or a folded continuation line.
            b':' | b' ' | b'\t' => entry(VALUE, 0),
            _ => entry(name_child(LINE, lower(b)), 0),
        };
    }
    if (s > LINE && s <= LINE + TTL_HEADER.len() as u8)
        || (s >= NAME_XFF && s <= NAME_OTHER)
        || (s >= NAME_ALI && s < BLANK_ALI)
    {
        let (f, blank_state) = name_complete(s);
        return match b {
            b'\n' => entry(LINE, 0), // a line without a colon: ignored
            b'\r' => entry(s, 0),
            b':' => entry(VALUE, f),
            _ if blank => entry(blank_state, 0), // blanks before the colon: tolerated
            _ => entry(name_child(s, lower(b)), 0),
        };
    }
    if (s >= BLANK_NONE && s <= BLANK_XFF) || s == BLANK_ALI {
        let f = match s {
            BLANK_TOKEN => flag::TOKEN,
            BLANK_TTL => flag::TTL,
            BLANK_XFF => flag::XFF,
            BLANK_ALI => flag::ALI_TOKEN,
            _ => 0,
        };
        return match b {
            b':' => entry(VALUE, f),
            b'\n' => entry(LINE, 0),
            b' ' | b'\t' | b'\r' => entry(s, 0),
            _ => entry(VALUE, 0), // "name junk: ..." is not the header
        };
    }
    if s == DONE {
        return entry(DONE, 0);
    }
    entry(NOT_HTTP, 0)
}

/// The bytes some state tells apart from others, each a class of its own: the letters of the
/// header names and of the token path in both cases (the names are matched case-insensitively,
/// the method and the path are not), the methods' letters, and the separators. Every other
/// upper-case letter is one class (it may continue a method), every other byte another.
const DISTINCT: &[u8] = b"xawsecmtdoknlfrpiyuXAWSECMTDOKNLFRIYGHPU-2/? \t\r\n:";
const OTHER_UPPER: u8 = DISTINCT.len() as u8;
const OTHER: u8 = OTHER_UPPER + 1;
/// A byte of each of the two catch-all classes.
const OTHER_UPPER_BYTE: u8 = b'B';
const OTHER_BYTE: u8 = b'!';

const fn class_of(b: u8) -> u8 {
    let mut i = 0;
    while i < DISTINCT.len() {
        if DISTINCT[i] == b {
            return i as u8;
        }
        i += 1;
    }
    if b >= b'A' && b <= b'Z' { OTHER_UPPER } else { OTHER }
}

const fn build_class() -> [u8; 256] {
    let mut c = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        c[b] = class_of(b as u8);
        b += 1;
    }
    c
}

/// The class of each byte. 256 bytes, read-only.
pub static CLASS: [u8; 256] = build_class();

/// A byte of class `c`.
const fn representative(c: usize) -> u8 {
    if c < DISTINCT.len() {
        DISTINCT[c]
    } else if c == OTHER_UPPER as usize {
        OTHER_UPPER_BYTE
    } else {
        OTHER_BYTE
    }
}

const fn build() -> [u32; TABLE_LEN + TABLE_SLACK] {
    let mut t = [0u32; TABLE_LEN + TABLE_SLACK];
    let mut s = 0usize;
    while s < 128 {
        let mut c = 0usize;
        while c < CLASSES {
            t[s * CLASSES + c] = table_entry(s as u8, representative(c));
            c += 1;
        }
        s += 1;
    }
    t
}

/// The transitions, and [`TABLE_SLACK`] zeroed entries after them that no step reads.
pub static TABLE: [u32; TABLE_LEN + TABLE_SLACK] = build();

/// Entries after [`TABLE`]'s own: the verifier's bound of a step's offset, `(e & 0x7fff) + 255`,
/// is larger than the offsets a step takes (their low byte is the class's, the entry's is zero),
/// and it must stay inside the table. (Masked with `0x7f00`, the compiler would see the two parts'
/// bits apart and join them with an `|`, of which verifiers before 6.x learn no bound: "math
/// between map_value pointer and register with unbounded min value" on 5.10 and 6.1.)
const TABLE_SLACK: usize = 128;

/// The next state of an entry.
const fn next_state(e: u32) -> u8 {
    ((e >> STATE_SHIFT) & 0x7f) as u8
}

const fn build_class4() -> [u8; 256] {
    let mut c = build_class();
    let mut b = 0usize;
    while b < 256 {
        c[b] <<= 2;
        b += 1;
    }
    c
}

/// The class of each byte times 4: the byte offset of its entry in a row of [`TABLE`].
static CLASS4: [u8; 256] = build_class4();

/// The path most requests begin with, as far as the word loop takes it whole: from a state that
/// has matched `k` (at most 8) bytes of the token path, both being `/latest/` so far, a word that
/// is the next 8 bytes of this one.
const COMMON_PATH: &[u8] = b"/latest/meta-data/";
/// The word the request line most often begins with.
const COMMON_START: &[u8; 8] = b"GET /lat";

/// The 8 bytes that the word loop takes whole from state `s`, and whether in any case: the next 8
/// of the header name the state is matching (the TTL header's, and so the token header's, from
/// `LINE`; `x-forwarded-for`'s; Alibaba Cloud's token header's), where 8 more of that name follow
/// it, in any case; the start of a `GET` of the metadata tree from the request line's start and
/// from the first 8 states of the path, exactly; or `None`.
const fn word_bytes(s: u8) -> Option<([u8; 8], bool)> {
    use st::*;
    let (text, k, any_case): (&[u8], usize, bool) = if s == METHOD {
        (COMMON_START, 0, false)
    } else if s >= PATH && s <= PATH + 8 {
        (COMMON_PATH, (s - PATH) as usize, false)
    } else if s >= LINE && s <= LINE + TTL_HEADER.len() as u8 {
        (TTL_HEADER, (s - LINE) as usize, true)
    } else if s >= NAME_XFF && s < NAME_OTHER {
        (XFF_HEADER, (s - NAME_XFF) as usize + 3, true)
    } else if s >= NAME_ALI && s < BLANK_ALI {
        (ALI_TOKEN_HEADER, (s - NAME_ALI) as usize + 4, true)
    } else {
        return None;
    };
    if k + 8 > text.len() {
        return None;
    }
    let mut w = [0u8; 8];
    let mut j = 0;
    while j < 8 {
        w[j] = text[k + j];
        j += 1;
    }
    Some((w, any_case))
}

/// What the word loop takes whole in one state (see [`WORDS`]): a word that is the next 8 bytes of
/// the header name the state is matching, in any case, or of the request's usual start, exactly
/// (`word | fold == expect`); or a word of the state's run, none of whose bytes ends it (a
/// header value's bytes up to its `\n`; the path's, once it is not the token path's, up to a
/// blank or line end). Taking it sets the last entry to `next` (the next state's row offset, as
/// in [`TABLE`], and the flags its bytes set) and adds `count` to the counts: what stepping its
/// bytes one by one ends at, sets and adds up. No state has both a word and a run.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WordSkip {
    pub expect: u64,
    pub fold: u64,
    pub next: u64,
    pub count: u64,
    /// A byte below this one, in every byte, ends the run (0: none does).
    pub below: u64,
    /// The high bit of every byte where the state has no run (every word ends it), else 0.
    pub no_run: u64,
    /// The byte that usually ends the state's run (a value's `\n`, the path's blank), or
    /// [`NO_END`]: where the first byte of a word that ends the run is this one, the scan takes
    /// the run's bytes before it and this byte (see [`HttpState::scan`]).
    pub end_byte: u64,
    /// The entry of that byte from the state, as in [`TABLE`] (with its counts: `count / 8` is a
    /// run byte's).
    pub end_next: u64,
}

/// [`WordSkip::end_byte`] of a state with no run: no byte.
pub const NO_END: u64 = 0x100;

/// A state with no word (`word | 1` is never 0) and no run.
const NO_WORD: WordSkip = WordSkip {
    expect: 0,
    fold: 1,
    next: 0,
    count: 0,
    below: 0,
    no_run: u64::from_le_bytes([0x80; 8]),
    end_byte: NO_END,
    end_next: 0,
};

/// [`TABLE`]'s entry for state `s` and byte `b` (as [`build`] makes it).
const fn table_entry(s: u8, b: u8) -> u32 {
    let e = transition(s, b);
    let before_path = if s < st::PATH { BEFORE_PATH } else { 0 };
    let last = if next_state(e) >= st::DONE { FINAL } else { 0 };
    e | before_path | last
}

const fn build_words() -> [WordSkip; 128] {
    let mut t = [NO_WORD; 128];
    let mut s = 0usize;
    while s < 128 {
        if let Some((bytes, any_case)) = word_bytes(s as u8) {
            // Step the bytes through the table: what they set and count is what taking the word
            // sets and counts. Not taken where a step is final (the loop stops there).
            let mut state = s as u8;
            let (mut flags, mut count, mut stops) = (0u32, 0u64, false);
            let (mut expect, mut fold) = (0u64, 0u64);
            let mut j = 0;
            while j < 8 {
                let b = bytes[j];
                let e = table_entry(state, b);
                if e & FINAL != 0 {
                    stops = true;
                }
                flags |= e & (FLAGS << FLAG_SHIFT);
                count += (e & COUNTS) as u64;
                state = next_state(e);
                expect |= (b as u64) << (8 * j);
                if any_case && b >= b'a' && b <= b'z' {
                    fold |= 0x20 << (8 * j);
                }
                j += 1;
            }
            if !stops {
                t[s] = WordSkip { expect, fold, next: (entry(state, 0) | flags) as u64, count, ..NO_WORD };
            }
        }
        s += 1;
    }
    // A header value's run: up to a `\n`, the state unchanged, nothing counted. Every byte up to
    // `\n` ends it (a tab or a control byte in a value is stepped: correct, if slower).
    t[st::VALUE as usize] = WordSkip {
        next: entry(st::VALUE, 0) as u64,
        below: u64::from_le_bytes([b'\n' + 1; 8]),
        no_run: 0,
        end_byte: b'\n' as u64,
        end_next: table_entry(st::VALUE, b'\n') as u64,
        ..NO_WORD
    };
    // The path's, once it is not the token path's: up to a blank or a line end (every byte up to
    // a blank ends it, `\r` and `\n` among them), 8 of its bytes counted.
    t[st::PATH_OTHER as usize] = WordSkip {
        next: entry(st::PATH_OTHER, 0) as u64,
        count: 8 * CAPTURE as u64,
        below: u64::from_le_bytes([b' ' + 1; 8]),
        no_run: 0,
        end_byte: b' ' as u64,
        end_next: table_entry(st::PATH_OTHER, b' ') as u64,
        ..NO_WORD
    };
    t
}

/// Per state, the word the scan takes whole (see [`HttpState::scan`]): 64 bytes a state, at the
/// state's row offset divided by 4.
pub static WORDS: [WordSkip; 128] = build_words();

/// Bytes of one write the message hook reads (one page; a power of two; more is flagged as
/// `Oversized`, not skipped).
pub const SCAN_MAX: u32 = 4096;

/// Where [`HttpState::scan`] reads the bytes of one write, in place: in the kernel the message
/// itself (between its `data` and `data_end`, each access checked against the end where the
/// verifier sees it), on the host a slice.
///
/// # Safety
/// A pointer [`Source::word`] returns must be valid for reads of 8 bytes, one [`Source::byte`]
/// returns for a read of 1, until the next call.
pub unsafe trait Source {
    /// The 8 bytes at `at` (below `2 * SCAN_MAX`), or `None` where the write has fewer.
    fn word(&mut self, at: usize) -> Option<*const u8>;
    /// The byte at `at` (below `2 * SCAN_MAX`), or `None` past the write's end.
    fn byte(&mut self, at: usize) -> Option<*const u8>;
    /// Called once the scan's loops are done.
    fn done(&mut self) {}
}

/// The 8 bytes at `p`, as one load. On the host, unaligned; in the kernel, where `p` points
/// into a message at any offset, one 8-byte load (the eBPF target splits a load it may not
/// assume aligned into bytes; a load has no alignment requirement there, and the verifier checks
/// a packet's alignment only where the architecture needs it, which x86-64 and arm64 do not).
///
/// # Safety
/// `p` valid for reads of 8 bytes.
#[inline(always)]
#[must_use]
pub unsafe fn load8(p: *const u8) -> u64 {
    // SAFETY: as the caller promises.
    unsafe {
        #[cfg(target_arch = "bpf")]
        {
            core::ptr::read_volatile(p.cast::<u64>())
        }
        #[cfg(not(target_arch = "bpf"))]
        {
            p.cast::<u64>().read_unaligned()
        }
    }
}

/// A write's bytes on the host.
pub struct Bytes<'a>(pub &'a [u8]);

// SAFETY: pointers into the slice, checked against its length.
unsafe impl Source for Bytes<'_> {
    fn word(&mut self, at: usize) -> Option<*const u8> {
        self.0.get(at..at + 8).map(<[u8]>::as_ptr)
    }

    fn byte(&mut self, at: usize) -> Option<*const u8> {
        self.0.get(at).map(core::ptr::from_ref)
    }
}

/// Copies the bytes of `src` from `at` into `out`: the first `len`, rounded up to whole words,
/// as many of them as the write has there (at most `8 * W`); the rest of `out` keeps what it
/// held. Whole words, then the last 0..=7 bytes one by one: bounded loops, each access checked
/// by `src`.
///
/// The word loop stays a loop: its bound goes through a stack slot, which the compiler cannot
/// see through (unrolled, each word copied was code of its own, ~a 64-byte line of it, and the
/// kernel's TCP path evicts the hook's code between two requests: a line is a miss on every
/// request). The verifier walks it as before, at most `W` turns (`get_mut` ends it there).
#[inline(always)]
pub fn copy_window<S: Source, const W: usize>(src: &mut S, at: usize, len: usize, out: &mut [u64; W]) {
    let mut j = 0;
    let words = hide(W as u64) as usize;
    while j < words {
        if 8 * j >= len {
            break;
        }
        let Some(p) = src.word(at + 8 * j) else { break };
        let Some(slot) = out.get_mut(j) else { break };
        // SAFETY: 8 readable bytes (`Source`).
        *slot = unsafe { load8(p) };
        j += 1;
    }
    let out = out.as_mut_ptr().cast::<u8>();
    let mut m = 0;
    while m < 8 {
        let i = 8 * j + m;
        if i >= 8 * W || i >= len {
            break;
        }
        let Some(p) = src.byte(at + i) else { break };
        // SAFETY: a readable byte (`Source`), written inside `out` (`i` below its 8 * W bytes).
        unsafe { *out.add(i) = *p };
        m += 1;
    }
    src.done();
}

/// What viewing the kept path as words relies on: whole words, at an 8-aligned offset of an
/// 8-aligned struct.
const PATH_AS_WORDS: bool =
    PATH_MAX.is_multiple_of(8) && core::mem::offset_of!(HttpState, path).is_multiple_of(8);

/// 8-byte aligned and reset field by field: in the kernel, a byte-wise copy or clear of it would
/// become a loop the verifier has to walk.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpState {
    /// Header bytes of this request so far.
    pub bytes: u32,
    /// Bytes of the request before its path (the method and its blank).
    pub path_at: u32,
    /// Bytes of the path read so far.
    pub path_bytes: u32,
    /// The state (see `st`).
    pub state: u8,
    /// Bytes of the path kept in `path` (at most [`PATH_MAX`]); 0 when the request line began in
    /// an earlier write than its header block's end (the path is then not kept).
    pub path_len: u8,
    /// [`flag`]s established so far.
    pub flags: u16,
    /// The first `path_len` bytes are the request path; the rest is stale.
    pub path: [u8; PATH_MAX],
}

impl Default for HttpState {
    fn default() -> Self {
        HttpState {
            bytes: 0,
            path_at: 0,
            path_bytes: 0,
            state: st::METHOD,
            flags: 0,
            path_len: 0,
            path: [0; PATH_MAX],
        }
    }
}

/// The [`WordSkip`] of the state whose row an entry (`last`, as in [`TABLE`]) leads to, as a
/// reader of its fields by byte offset (0, 8, .., 56): at the row offset over 4 in [`WORDS`].
#[inline(always)]
fn words_field(last: u32) -> impl Fn(usize) -> u64 {
    let ws = ((last & ROW) >> 2) as usize & 0x1fc0;
    // SAFETY: `ws` is a multiple of 64 below 8,192: a WordSkip of WORDS, aligned; `off` is one
    // of its fields' offsets.
    move |off: usize| unsafe { WORDS.as_ptr().cast::<u8>().add(ws + off).cast::<u64>().read() }
}

/// The run test of a state ([`WordSkip::below`], [`WordSkip::no_run`]) on a word: non-zero where
/// a byte of it ends the run, one below `below`'s bytes (the classic test for a byte less than n,
/// exact as to whether there is one, its lowest high bit exact as to where); always, in a state
/// with no run.
#[inline(always)]
const fn run_test(word: u64, below: u64, no_run: u64) -> u64 {
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    (word.wrapping_sub(below) & !word & HIGHS) | no_run
}

/// Which byte of a word first ends the state's run (0..=7), from the run test's `ended` (not 0):
/// its high bit is the lowest set (exact there, whatever the bytes above it), `low >> 7` a 1 in
/// that byte, and the product's top byte its index. 0 in a state with no run.
#[inline(always)]
const fn first_ended(ended: u64) -> u64 {
    let low = ended.isolate_lowest_one();
    (low >> 7).wrapping_mul(0x0001_0203_0405_0607) >> 56
}

/// The fields of [`HttpState`] that one byte changes, held in locals while a write is scanned.
struct Walk {
    /// The last entry taken: its bits 8..14, the next state, are the byte offset of its row.
    last: u32,
    /// Every entry taken, or'ed: the flags are its bits 16..24.
    seen: u32,
    /// The entries' counting bits, added up (see [`COUNTS`]).
    counts: u64,
}

impl Walk {
    /// Feeds one byte. No branch at all: two table loads, two masks, an `|` and additions; from
    /// one entry to the next, a mask and two additions (the table's address and the class's).
    #[inline(always)]
    fn step(&mut self, b: u8) {
        let at = (self.last & ROW) as usize + usize::from(CLASS4[usize::from(b)]);
        // SAFETY: an entry's low byte is zero (`entry`) and CLASS4 holds multiples of 4 up to
        // 252: `at` is at most 0x7f00 + 252 = 32,764, a multiple of 4, a whole `u32` of TABLE's
        // transitions, aligned. (A byte offset, not an index: the shift an index takes would
        // lengthen the chain from one byte's entry to the next.)
        let e = unsafe { TABLE.as_ptr().cast::<u8>().add(at).cast::<u32>().read() };
        self.last = e;
        self.seen |= e;
        self.counts += u64::from(e & COUNTS);
    }
}

impl HttpState {
    /// Whether the request's header block has ended (or the bytes are not HTTP, or too many).
    #[inline(always)]
    #[must_use]
    pub fn at_end(&self) -> bool {
        self.state >= st::DONE || self.bytes > MAX_HEADER_BYTES
    }

    /// Feeds the first `len` (at most [`SCAN_MAX`]) bytes of `src`: the loops the kernel runs.
    /// Returns how many bytes belong to this request; fewer than `len` when its header block
    /// ended before them, or when the loop's 512 words ended first (a write of many very short
    /// header lines: each word that ends a run early advances less than 8 bytes; the write is
    /// then `Oversized`, see [`HttpState::write_finding_for`]), or, past [`MAX_HEADER_BYTES`],
    /// when it is `Oversized` whatever it returns. Keeps the path when this write holds the start
    /// of the request.
    ///
    /// The bytes go by in words of 8: a word that starts in a header value and holds no `\n`
    /// leaves the state as it was (a value's row sends every byte but `\n` back to the value, and
    /// counts nothing), so it is skipped with one test (for a byte up to `\n`: a tab or a control
    /// byte is stepped); the rest of the request line and header names that are none of ours are
    /// entered as values (see [`transition`]). So is a word inside the path (once it is not the
    /// token path's) with no byte up to a blank (the blank, `\r`, `\n`), counted as 8 bytes of
    /// the path; and a word that is the next 8 bytes, in any case, of the header name the state
    /// is matching (the token header's, say), or of a request line's usual start
    /// (`GET /latest/meta-data/`), is taken whole: the state moves 8 nodes on, with the flags and
    /// counts of its bytes ([`WORDS`]). A word in which a value's run ends at its `\n`, or the
    /// path's at its blank, is taken up to and with that byte (the run's bytes change nothing
    /// but the path's count, the ending byte's entry is the state's `end_next`), and the next
    /// word starts after it: at the next header line's start, whose name can then be taken
    /// whole. Any other word has its first byte stepped (one table load); where the state that
    /// byte leads to has a run that holds the other seven (a header line whose name is none of
    /// ours leads into a value), they are taken as one, else stepped byte by byte (one table
    /// load each, no branch).
    /// Then the last 0..=7 bytes, one by one. The loops are bounded by [`SCAN_MAX`] / 8 and 8,
    /// with at most six branches a word and one a byte: the verifier walks them word by word (it
    /// keeps one pending state per branch it walks, at most 8,192: a loop of 4096 bytes can
    /// afford one a byte, no more).
    #[inline(always)]
    pub fn scan<S: Source>(&mut self, src: &mut S, len: u32) -> u32 {
        let before = self.bytes;
        // The state in locals (registers) for the loop: through memory, each byte would wait for
        // the previous byte's store.
        let mut w = Walk { last: u32::from(self.state) << STATE_SHIFT, seen: 0, counts: 0 };
        // The loops end at the header block's end: the last entry's FINAL bit (worth more than
        // any count of words or bytes) is added to the position in each loop's one test. Before
        // the first byte, the bit comes from the state (final: 126 and 127, `(state + 2) >> 7`
        // is 1), hidden from the compiler, which would otherwise turn the comparison it sees into
        // a branch. In 64 bits: a sum of 32-bit values would be cut back to 32 bits each time.
        const TO_FINAL: u32 = FINAL.trailing_zeros() - 7;
        let mut stop = ((hide(u64::from(self.state)) + 2) << TO_FINAL) & u64::from(FINAL);
        let end = u64::from(len);
        // Where the next word starts: 8 bytes on from the last, or just after the byte that
        // ended a run.
        let mut pos = 0u64;
        let mut k = 0u64;
        while k < u64::from(SCAN_MAX / 8) {
            // Through memory: the verifier then knows nothing of the position but its type, and
            // the ways through the last word, which left it at different places, meet at the
            // loop's head (a position it knew would keep them apart: each way on its own through
            // the rest of the loop, past the 1M instructions it walks).
            // SAFETY: a write and a read of our own field.
            pos = u64::from(unsafe {
                core::ptr::write_volatile(&raw mut self.bytes, pos as u32);
                core::ptr::read_volatile(&raw const self.bytes)
            });
            if pos + 8 + stop > end {
                break;
            }
            let at = pos as usize & (SCAN_MAX as usize - 1);
            // In the kernel, a second test a word, which never ends the loop before the first
            // (`len` is at most what the message has): the one the verifier learns the
            // message's bounds from.
            let Some(from) = src.word(at) else { break };
            // SAFETY: 8 readable bytes (`Source`).
            let word = unsafe { load8(from) };
            // What the state takes whole. These ways meet the stepping way before `k += 1`,
            // where the verifier finds their states inside the stepping way's (it walks that
            // first) and goes no further on them.
            let field = words_field(w.last);
            // Non-zero where a byte of the word ends the state's run (see `run_test`).
            let ended = run_test(word, field(32), field(40));
            // Non-zero unless the word is the state's own (a header name's next 8 bytes in any
            // case, the request line's usual start).
            let other = (word | field(8)) ^ field(0);
            // A word of the state's run (a header value's bytes up to `\n`, the path's up to a
            // blank or line end), or the state's own word: taken whole, from the state's entry,
            // flags and counts with it. Otherwise stepped byte by byte. (No state has both.)
            if ended == 0 || other == 0 {
                w.counts += field(24);
                w.last = field(16) as u32;
                w.seen |= w.last;
                pos += 8;
            } else {
                // The first byte that ends the run: its own (below) or any other (stepped).
                let idx = first_ended(ended);
                if (word >> (8 * idx)) & 0xff == field(48) {
                    // The run's usual end (a value's `\n`, the path's blank): the run's bytes before
                    // it and that byte are taken, and the next word starts after it (at a header
                    // line's start, say, whose name can then be taken whole).
                    w.counts += (field(24) >> 3) * idx + (field(56) & u64::from(COUNTS));
                    w.last = field(56) as u32;
                    w.seen |= w.last;
                    pos += idx + 1;
                } else {
                    // Each byte loaded on its own (volatile: one load each; left to itself the
                    // compiler cut them out of the word with a shift and a mask each, and kept the
                    // eight in spilled registers: the kernel has ten). The first, then the run
                    // test of the state it leads to on the other seven (a header line's first
                    // byte, of a name that is none of ours, leads into a value, say): where
                    // they are all of its run, they are taken as one, as a word of it is.
                    // SAFETY: a byte of the 8 at `from`.
                    w.step(unsafe { core::ptr::read_volatile(from) });
                    let then = words_field(w.last);
                    // The other seven bytes, and in the top byte one that ends no run.
                    let rest = (word >> 8) | (0xff << 56);
                    if run_test(rest, then(32), then(40)) == 0 {
                        // A run byte's counts are a run word's over 8.
                        w.counts += (then(24) >> 3) * 7;
                        w.last = then(16) as u32;
                        w.seen |= w.last;
                    } else {
                        let mut j = 1;
                        while j < 8 {
                            // SAFETY: a byte of the 8 at `from`.
                            w.step(unsafe { core::ptr::read_volatile(from.add(j)) });
                            j += 1;
                        }
                        // Once final, the state stays final and the word's later bytes count as
                        // taken in a final state (bits 15..18 of `counts`): how many of its bytes
                        // followed the block's end. (A final state has no run.)
                        stop = u64::from(w.last & FINAL);
                    }
                    pos += 8;
                }
            }
            k += 1;
        }
        // The bytes after the last whole word, from a position read back from memory: the
        // verifier, which cannot follow it there, walks this loop once, not once per way out of
        // the one above.
        // SAFETY: a write and a read of our own field.
        let mut i = u64::from(unsafe {
            core::ptr::write_volatile(&raw mut self.bytes, pos as u32);
            core::ptr::read_volatile(&raw const self.bytes)
        });
        let mut j = 0;
        while j < 8 {
            if i + stop >= end {
                break;
            }
            let Some(p) = src.byte((i & u64::from(SCAN_MAX - 1)) as usize) else { break };
            // SAFETY: a readable byte (`Source`).
            w.step(unsafe { core::ptr::read_volatile(p) });
            stop = u64::from(w.last & FINAL);
            i += 1;
            j += 1;
        }
        // Bytes taken: where the loops stopped, less those that followed the block's end inside
        // its last word (the steps into and in a final state, less the one that ended it).
        let finals = (w.counts >> FINAL.trailing_zeros()) & 15;
        let i = (i - finals + ((finals + 15) >> 4)) as u32;
        self.state = next_state(w.last);
        self.flags |= ((w.seen >> FLAG_SHIFT) & FLAGS) as u16;
        self.bytes = before + i;
        self.path_at += ((w.counts >> BEFORE_PATH.trailing_zeros()) & 15) as u32;
        self.path_bytes += (w.counts >> CAPTURE.trailing_zeros()) as u32;
        // Past the loop, read the state back from memory rather than from the loop's registers:
        // every way out of the loop then looks the same to the verifier, which checks what
        // follows once instead of once per byte (Linux 5.10 exceeded its 1M instructions).
        // SAFETY: reads of our own fields.
        let (bytes, path_at, path_bytes) = unsafe {
            use core::ptr::{addr_of, read_volatile as rd};
            (rd(addr_of!(self.bytes)), rd(addr_of!(self.path_at)), rd(addr_of!(self.path_bytes)))
        };
        src.done();
        if before == 0 {
            // The request began in this write, at its first byte: its path is in `src`. Copy its
            // words (the path's bytes scanned, `path_bytes`, rounded up to words, at most
            // PATH_MAX): past `path_len`, the kept path holds whatever it held (the rest of the
            // path's last word, or an earlier request's bytes).
            let at = (path_at & (SCAN_MAX - 1)) as usize;
            copy_window(src, at, path_bytes as usize, self.path_words_mut());
            self.path_len = if path_bytes < PATH_MAX as u32 { path_bytes as u8 } else { PATH_MAX as u8 };
        }
        bytes - before
    }

    /// Feeds a whole slice (host side) through [`HttpState::scan`], write by write of at most
    /// [`SCAN_MAX`] bytes; returns the bytes that belong to this request.
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        let mut took = 0;
        while took < bytes.len() && !self.at_end() {
            let chunk = &bytes[took..bytes.len().min(took + SCAN_MAX as usize)];
            // Fewer than the chunk's bytes where the request's header block ended, or where the
            // loop's bound in words came first (then the next write goes on from there).
            took += self.scan(&mut Bytes(chunk), chunk.len() as u32) as usize;
        }
        took
    }

    /// The kept path's bytes as words: what [`copy_window`] fills and the credentials matcher
    /// reads a word at a time.
    #[inline(always)]
    #[must_use]
    pub fn path_words(&self) -> &[u64; PATH_MAX / 8] {
        const { assert!(PATH_AS_WORDS) };
        // SAFETY: PATH_MAX bytes at an 8-aligned offset of an 8-aligned struct: PATH_MAX / 8
        // words, borrowed with `self`.
        unsafe { &*self.path.as_ptr().cast::<[u64; PATH_MAX / 8]>() }
    }

    /// [`HttpState::path_words`], to write.
    #[inline(always)]
    fn path_words_mut(&mut self) -> &mut [u64; PATH_MAX / 8] {
        const { assert!(PATH_AS_WORDS) };
        // SAFETY: as in `path_words`, borrowed mutably with `self`.
        unsafe { &mut *self.path.as_mut_ptr().cast::<[u64; PATH_MAX / 8]>() }
    }

    /// The request method ([`method`]), once the request line has its path.
    #[must_use]
    pub fn method(&self) -> u8 {
        let f = self.flags;
        if f & flag::GET != 0 {
            method::GET
        } else if f & flag::HEAD != 0 {
            method::HEAD
        } else if f & flag::PUT != 0 {
            method::PUT
        } else if f & flag::POST != 0 {
            method::POST
        } else if self.state >= st::PATH && self.state != st::NOT_HTTP {
            method::OTHER
        } else {
            method::UNKNOWN
        }
    }

    /// Whether the request path is `/latest/api/token` (the query string aside).
    #[must_use]
    pub fn is_token_path(&self) -> bool {
        self.flags & flag::TOKEN_PATH != 0
    }

    /// What the request is to AWS's metadata service (whose token header is
    /// `X-aws-ec2-metadata-token`).
    #[inline(always)]
    #[must_use]
    pub fn finding(&self) -> Finding {
        self.finding_for(flag::TOKEN)
    }

    /// What the request is to a service whose session token header is `token`
    /// ([`crate::sock::token_flag`]):
    /// another cloud's token header makes no request IMDSv2.
    #[inline(always)]
    #[must_use]
    pub fn finding_for(&self, token: u16) -> Finding {
        if self.bytes > MAX_HEADER_BYTES {
            return Finding::Oversized;
        }
        match self.state {
            st::NOT_HTTP => Finding::NotHttp,
            st::DONE => {
                let f = self.flags;
                let put_token = f & flag::PUT != 0 && f & flag::TOKEN_PATH != 0;
                if put_token && f & flag::XFF != 0 {
                    Finding::TokenPutForwarded
                } else if put_token {
                    Finding::TokenPut
                } else if f & token != 0 {
                    Finding::Imdsv2
                } else {
                    Finding::Imdsv1
                }
            }
            _ => Finding::Incomplete,
        }
    }

    /// The finding of a write of `size` bytes, of which the first `read` were scanned and `took`
    /// belonged to the request: bytes after the end of the request's header block in the same
    /// write make it `Trailing`, and unread bytes of a request still going on `Oversized` (no
    /// metadata request needs a write that large; what is not read could hide a request).
    #[inline(always)]
    #[must_use]
    pub fn write_finding(&self, took: u32, read: u32, size: u32) -> Finding {
        self.write_finding_for(took, read, size, flag::TOKEN)
    }

    /// [`HttpState::write_finding`] for a service whose token header is `token`
    /// ([`crate::sock::token_flag`]).
    #[inline(always)]
    #[must_use]
    pub fn write_finding_for(&self, took: u32, read: u32, size: u32, token: u16) -> Finding {
        let f = self.finding_for(token);
        if f.is_unverified() {
            f
        } else if f.is_final() {
            if took < read || size > read { Finding::Trailing } else { f }
        } else if size > read || took < read {
            // Bytes of the write not scanned (the scan's loop has a bound in words, and a word
            // may end early: see `HttpState::scan`) could hide a request.
            Finding::Oversized
        } else {
            f
        }
    }

    /// Ready for the next request on the same connection (keep-alive). The path bytes are left
    /// as they are (only `path_len` counts).
    #[inline(always)]
    pub fn reset(&mut self) {
        // Each store volatile: left to itself, the compiler merged the six into a call of
        // `memset` (in the kernel a BPF-to-BPF call, and a loop of 16 byte stores, on every
        // request: ~110 x86 instructions and a return, which this machine's SRSO mitigation
        // makes dear).
        // SAFETY: volatile writes of our own fields.
        unsafe {
            use core::ptr::{addr_of_mut, write_volatile as wr};
            wr(addr_of_mut!(self.bytes), 0);
            wr(addr_of_mut!(self.path_at), 0);
            wr(addr_of_mut!(self.path_bytes), 0);
            wr(addr_of_mut!(self.state), st::METHOD);
            wr(addr_of_mut!(self.flags), 0);
            wr(addr_of_mut!(self.path_len), 0);
        }
    }

    /// The request path (at most [`PATH_MAX`] bytes).
    #[must_use]
    pub fn path(&self) -> &[u8] {
        &self.path[..(self.path_len as usize).min(PATH_MAX)]
    }
}

#[cfg(test)]
#[path = "http_reference.rs"]
mod reference;

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{format, string::String, vec::Vec};

    use super::*;

    fn classify(req: &str) -> (Finding, HttpState) {
        let mut s = HttpState::default();
        s.feed(req.as_bytes());
        (s.finding(), s)
    }

    /// Alibaba Cloud's token header makes a request IMDSv2 at its own endpoint only, in any
    /// case and split anywhere; AWS's token header counts nowhere but at AWS's.
    #[test]
    fn alibaba_s_token_counts_only_at_its_own_endpoint() {
        for (req, at_ali, at_aws) in [
            (
                "GET /latest/meta-data/instance-id HTTP/1.1\r\nX-aliyun-ecs-metadata-token: t\r\n\r\n",
                Finding::Imdsv2,
                Finding::Imdsv1,
            ),
            (
                "GET /latest/meta-data/ HTTP/1.1\r\nx-ALIYUN-ecs-METADATA-token : t\r\n\r\n",
                Finding::Imdsv2,
                Finding::Imdsv1,
            ),
            (
                "GET /latest/meta-data/ HTTP/1.1\r\nX-aws-ec2-metadata-token: t\r\n\r\n",
                Finding::Imdsv1,
                Finding::Imdsv2,
            ),
            (
                "GET /latest/meta-data/ HTTP/1.1\r\nX-aliyun-ecs-metadata-tokens: t\r\n\r\n",
                Finding::Imdsv1,
                Finding::Imdsv1,
            ),
            (
                "GET /latest/meta-data/ HTTP/1.1\r\nX-aliyun-ecs-metadata: t\r\n\r\n",
                Finding::Imdsv1,
                Finding::Imdsv1,
            ),
            (
                "PUT /latest/api/token HTTP/1.1\r\nX-aliyun-ecs-metadata-token-ttl-seconds: 60\r\n\r\n",
                Finding::TokenPut,
                Finding::TokenPut,
            ),
        ] {
            for cut in 0..req.len() {
                let mut s = HttpState::default();
                s.feed(&req.as_bytes()[..cut]);
                s.feed(&req.as_bytes()[cut..]);
                assert_eq!(
                    (s.finding_for(flag::ALI_TOKEN), s.finding_for(flag::TOKEN), s.finding()),
                    (at_ali, at_aws, at_aws),
                    "{req:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn tokenless_get_and_head_are_imdsv1() {
        let (f, s) = classify(
            "GET /latest/meta-data/iam/security-credentials/role HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
        );
        assert_eq!(f, Finding::Imdsv1);
        assert!(crate::path::is_credentials(crate::path::classify_text(s.path())));
        assert_eq!(s.path(), b"/latest/meta-data/iam/security-credentials/role");
        assert_eq!(s.method(), method::GET);
        assert_eq!(classify("HEAD / HTTP/1.0\r\n\r\n").0, Finding::Imdsv1);
        assert_eq!(
            classify("POST /latest/meta-data/ HTTP/1.1\r\nContent-Length: 0\r\n\r\n").0,
            Finding::Imdsv1
        );
        assert_eq!(classify("GET / HTTP/1.1\n\n").0, Finding::Imdsv1, "bare LF line ends");
    }

    #[test]
    fn token_header_in_any_case_with_spaces_is_imdsv2() {
        for h in [
            "X-aws-ec2-metadata-token: AQAE",
            "x-aws-ec2-metadata-token:AQAE",
            "X-AWS-EC2-METADATA-TOKEN:\tAQAE",
            "X-Aws-Ec2-Metadata-Token : AQAE",
            "x-aws-ec2-metadata-token\t:AQAE",
        ] {
            let req = format!("GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\n{h}\r\n\r\n");
            assert_eq!(classify(&req).0, Finding::Imdsv2, "{h}");
        }
    }

    #[test]
    fn near_misses_are_not_the_token_header() {
        for h in [
            "X-aws-ec2-metadata-tokens: x",
            "X-aws-ec2-metadata-toke: x",
            "X-aws-ec2-metadata-token-ttl-seconds: 21600",
            "Y-aws-ec2-metadata-token: x",
            "X-aws-ec2-metadata-token junk: x",
            "Referer: http://x/?X-aws-ec2-metadata-token: x",
            " X-aws-ec2-metadata-token: x",
        ] {
            let req = format!("GET / HTTP/1.1\r\nHost: x\r\n{h}\r\n\r\n");
            assert_eq!(classify(&req).0, Finding::Imdsv1, "{h}");
        }
    }

    #[test]
    fn token_header_after_a_long_header_block_counts() {
        let mut req = String::from("GET /latest/meta-data/ HTTP/1.1\r\n");
        for i in 0..100 {
            req.push_str(&format!("X-Padding-{i}: {}\r\n", "a".repeat(50)));
        }
        req.push_str("X-aws-ec2-metadata-token: t\r\n\r\n");
        assert!(req.len() < MAX_HEADER_BYTES as usize);
        assert_eq!(classify(&req).0, Finding::Imdsv2);
    }

    #[test]
    fn oversized_header_blocks_are_not_classified() {
        let mut req = String::from("GET / HTTP/1.1\r\n");
        while req.len() < MAX_HEADER_BYTES as usize {
            req.push_str("X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        req.push_str("X-aws-ec2-metadata-token: t\r\n\r\n");
        assert_eq!(classify(&req).0, Finding::Oversized);
    }

    #[test]
    fn token_put_with_and_without_ttl_and_forwarded() {
        let put = "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\nX-aws-ec2-metadata-token-ttl-seconds: 21600\r\n\r\n";
        assert_eq!(classify(put).0, Finding::TokenPut);
        let (f, s) = classify("PUT /latest/api/token HTTP/1.1\r\n\r\n");
        assert_eq!(f, Finding::TokenPut);
        assert_eq!(s.flags & flag::TTL, 0);
        assert!(classify(put).1.flags & flag::TTL != 0);
        let fwd = "PUT /latest/api/token HTTP/1.1\r\nX-Forwarded-For: 10.0.0.1\r\nx-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n";
        assert_eq!(classify(fwd).0, Finding::TokenPutForwarded);
        assert_eq!(classify("PUT /latest/api/token?x=1 HTTP/1.1\r\n\r\n").0, Finding::TokenPut);
        assert_eq!(classify("PUT /latest/api/tokens HTTP/1.1\r\n\r\n").0, Finding::Imdsv1);
        assert_eq!(classify("GET /latest/api/token HTTP/1.1\r\n\r\n").0, Finding::Imdsv1);
    }

    #[test]
    fn split_anywhere_gives_the_same_answer_and_nothing_early() {
        let reqs = [
            "GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\nX-aws-ec2-metadata-token: t\r\n\r\n",
            "GET /latest/meta-data/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "PUT /latest/api/token HTTP/1.1\r\nX-Forwarded-For: a\r\n\r\n",
        ];
        for req in reqs {
            let whole = classify(req).0;
            for cut in 1..req.len() {
                let mut s = HttpState::default();
                s.feed(&req.as_bytes()[..cut]);
                assert_eq!(s.finding(), Finding::Incomplete, "{req:?} cut at {cut}");
                s.feed(&req.as_bytes()[cut..]);
                assert_eq!(s.finding(), whole, "{req:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn not_http() {
        assert_eq!(classify("\x16\x03\x01 tls hello").0, Finding::NotHttp);
        assert_eq!(classify("get / HTTP/1.1\r\n\r\n").0, Finding::NotHttp);
        assert_eq!(classify("GETTINGLONG / HTTP/1.1\r\n\r\n").0, Finding::NotHttp);
        assert_eq!(classify("GET /\r\n").0, Finding::NotHttp);
    }

    #[test]
    fn keep_alive_reset() {
        let mut s = HttpState::default();
        s.feed(b"PUT /latest/api/token HTTP/1.1\r\n\r\n");
        assert_eq!(s.finding(), Finding::TokenPut);
        s.feed(b"GET / HTTP/1.1\r\n\r\n"); // ignored until reset
        assert_eq!(s.finding(), Finding::TokenPut);
        s.reset();
        s.feed(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(s.finding(), Finding::Imdsv1);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_split_invariant(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600), cut in 0usize..600) {
            let mut whole = HttpState::default();
            whole.feed(&data);
            let cut = cut.min(data.len());
            let mut parts = HttpState::default();
            parts.feed(&data[..cut]);
            parts.feed(&data[cut..]);
            // The path is kept only from the write that holds the request's start.
            proptest::prop_assert_eq!(
                (whole.finding(), whole.flags, whole.state, whole.bytes),
                (parts.finding(), parts.flags, parts.state, parts.bytes)
            );
            proptest::prop_assert!(whole.path().len() <= PATH_MAX);
        }

        #[test]
        fn header_lines_are_judged_by_name(name in "[A-Za-z-]{1,40}", value in "[ -~]{0,40}", sep in "( |\t)*") {
            let req = format!("GET / HTTP/1.1\r\n{name}{sep}: {value}\r\n\r\n");
            let f = classify(&req).0;
            let is_token = name.eq_ignore_ascii_case("x-aws-ec2-metadata-token");
            proptest::prop_assert_eq!(f, if is_token { Finding::Imdsv2 } else { Finding::Imdsv1 });
        }
    }

    #[test]
    fn path_is_bounded() {
        let long: Vec<u8> = core::iter::repeat_n(b'a', 500).collect();
        let req = [b"GET /".as_slice(), &long, b" HTTP/1.1\r\n\r\n"].concat();
        let mut s = HttpState::default();
        s.feed(&req);
        assert_eq!(s.finding(), Finding::Imdsv1);
        assert_eq!(s.path().len(), PATH_MAX);
    }

    /// The table-driven classifier against the byte-at-a-time one it replaced: same finding on
    /// every input, and the same method and path once a request is complete.
    fn same_as_reference(data: &[u8]) -> Result<(), proptest::test_runner::TestCaseError> {
        let mut new = HttpState::default();
        new.feed(data);
        let mut old = reference::RefState::default();
        old.feed(data);
        let f = new.finding();
        proptest::prop_assert_eq!(f, old.finding(), "{:?}", String::from_utf8_lossy(data));
        if f.is_final() && f != Finding::NotHttp && f != Finding::Oversized {
            proptest::prop_assert_eq!(new.method(), old.method);
            proptest::prop_assert_eq!(new.path(), old.path());
        }
        Ok(())
    }

    fn piece() -> impl proptest::strategy::Strategy<Value = &'static str> {
        proptest::sample::select(
            &[
                "GET",
                "PUT",
                "HEAD",
                "POST",
                "PATCH",
                "GETX",
                "get",
                "P",
                " ",
                "  ",
                "\t",
                "/",
                "/latest/api/token",
                "/latest/api/token?ttl",
                "/latest/api/tokens",
                "?",
                "/latest/meta-data/iam/security-credentials/role",
                " HTTP/1.1",
                "\r\n",
                "\n",
                "\r",
                "X-aws-ec2-metadata-token",
                "x-AWS-ec2-metadata-TOKEN",
                "X-aws-ec2-metadata-token-ttl-seconds",
                "X-Forwarded-For",
                "x-forwarded-fo",
                "X-aws-ec2-metadata-toke",
                "X-AWS-EC2-METADATA-TOKEN-TTL-SECONDS",
                "x\raws\rec2\rmetadata\rtoken",
                "X-Aliyun-Ecs-Metadata-Token",
                "x-aliyun-ecs-metadata-tokens",
                "X-FORWARDED-FOR",
                "Accept-Encoding",
                "x-",
                "X",
                ":",
                ": ",
                "AQAEAGqg5iyk_vDzkU1i0wNz3rF1XtB8YWW8bT3Ll6fPwaT8EvQJzQ==",
                "Boto3/1.35.0 md/Botocore#1.35.0 ua/2.0 os/linux#6.1.0 md/arch#x86_64 lang/python#3.11",
                "User-Agent",
                " : ",
                "Host: 169.254.169.254",
                "abc",
                "21600",
                "\0",
                "\u{7f}",
            ][..],
        )
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(4000))]
        #[test]
        fn table_matches_the_reference_on_http_like_input(parts in proptest::collection::vec(piece(), 0..40)) {
            same_as_reference(parts.concat().as_bytes())?;
        }

        #[test]
        fn table_matches_the_reference_on_any_bytes(data in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            same_as_reference(&data)?;
        }

        #[test]
        fn the_kernel_loop_matches_feed(parts in proptest::collection::vec(piece(), 0..40), len in 0u32..2000) {
            let data = parts.concat();
            let n = data.len().min(SCAN_MAX as usize);
            let len = len.min(n as u32);
            let mut a = HttpState::default();
            // The write's bytes end at `len`: the loops must not read past them.
            let took = a.scan(&mut Bytes(&data.as_bytes()[..len as usize]), len);
            let mut b = HttpState::default();
            let fed = b.feed(&data.as_bytes()[..len as usize]);
            proptest::prop_assert_eq!(took as usize, fed);
            proptest::prop_assert_eq!(
                (a.bytes, a.state, a.flags, a.path_at, a.path_bytes, a.path()),
                (b.bytes, b.state, b.flags, b.path_at, b.path_bytes, b.path())
            );
        }
    }

    /// One byte at a time through the table, as the kernel did before words: the state, flags,
    /// counts and bytes taken of `scan` from `s` over `bytes`.
    fn walk_bytes(s: &HttpState, bytes: &[u8]) -> (u8, u16, u32, u32, u32) {
        let (mut state, mut flags, mut path_at, mut path_bytes, mut took) =
            (s.state, s.flags, s.path_at, s.path_bytes, 0u32);
        for &b in bytes {
            if state >= st::DONE {
                break;
            }
            let e = TABLE[usize::from(state) * CLASSES + usize::from(CLASS[usize::from(b)])];
            state = next_state(e);
            flags |= ((e >> FLAG_SHIFT) & FLAGS) as u16;
            path_at += u32::from(e & BEFORE_PATH != 0);
            path_bytes += u32::from(e & CAPTURE != 0);
            took += 1;
        }
        (state, flags, path_at, path_bytes, took)
    }

    /// Steps `bytes` from state `s` through the table: the last entry, and every entry or'ed.
    fn step_all(s: u8, bytes: &[u8]) -> (u32, u32) {
        let (mut state, mut seen, mut last) = (s, 0, 0);
        for &b in bytes {
            last = TABLE[usize::from(state) * CLASSES + usize::from(CLASS[usize::from(b)])];
            seen |= last;
            state = next_state(last);
        }
        (last, seen)
    }

    #[test]
    fn a_word_taken_whole_is_what_its_bytes_step_to() {
        // What taking a word whole relies on (see `scan`): its bytes (a name's in any case, the
        // request line's exactly) step to its entry's state, set its flags and add up its counts,
        // none of them final; and the word test matches no other bytes (a byte that differs from
        // a name's letter by its case bit alone is that letter).
        let (mut names, mut starts) = (0, 0);
        for s in 0..128u8 {
            let nw = WORDS[usize::from(s)];
            if nw.fold == NO_WORD.fold {
                // No word; a value's and the other path's runs: `a_run_is_what_its_bytes_step_to`.
                if s != st::VALUE && s != st::PATH_OTHER {
                    assert_eq!(nw, NO_WORD, "state {s}");
                }
                continue;
            }
            assert_eq!(nw.no_run, NO_WORD.no_run, "state {s}: a word and no run");
            let any_case = nw.fold != 0;
            if any_case {
                names += 1;
            } else {
                starts += 1;
            }
            let lower = nw.expect.to_le_bytes();
            for variant in 0..=255u8 {
                let bytes: Vec<u8> = lower
                    .iter()
                    .enumerate()
                    .map(|(j, &b)| if any_case && variant >> j & 1 == 1 { b.to_ascii_uppercase() } else { b })
                    .collect();
                let word = u64::from_le_bytes(bytes.clone().try_into().unwrap());
                assert_eq!(word | nw.fold, nw.expect, "state {s} {bytes:?}");
                let from = HttpState { state: s, ..HttpState::default() };
                let (state, flags, path_at, path_bytes, took) = walk_bytes(&from, &bytes);
                assert_eq!(took, 8, "state {s} {bytes:?}");
                let (last, seen) = step_all(s, &bytes);
                assert_eq!(last & FINAL, 0, "state {s} {bytes:?}");
                assert_eq!(next_state(nw.next as u32), state, "state {s} {bytes:?}");
                assert_eq!(nw.next as u32 & !ROW, seen & (FLAGS << FLAG_SHIFT), "state {s} {bytes:?}");
                assert_eq!(((nw.next as u32 >> FLAG_SHIFT) & FLAGS) as u16, flags, "state {s} {bytes:?}");
                assert_eq!(nw.next as u32 & ROW, u32::from(state) << STATE_SHIFT, "state {s}");
                assert_eq!((nw.count >> BEFORE_PATH.trailing_zeros()) & 15, u64::from(path_at), "state {s}");
                assert_eq!(nw.count >> CAPTURE.trailing_zeros(), u64::from(path_bytes), "state {s}");
                assert_eq!(nw.count & u64::from(FINAL | (FINAL << 1) | (FINAL << 2) | (FINAL << 3)), 0);
                if !any_case {
                    break;
                }
            }
            for j in 0..8 {
                for b in 0..=255u8 {
                    let mut bytes = lower;
                    let same = if any_case { b.to_ascii_lowercase() == lower[j] } else { b == lower[j] };
                    if same {
                        continue;
                    }
                    bytes[j] = b;
                    assert_ne!(u64::from_le_bytes(bytes) | nw.fold, nw.expect, "state {s} byte {j} = {b:#x}");
                }
            }
        }
        // From the start of a line to 8 before the TTL header's end; then x-forwarded-for and
        // Alibaba's token header, each to 8 before its end.
        let want = (TTL_HEADER.len() - 8 + 1)
            + (XFF_HEADER.len() - 8 + 1 - 3)
            + (ALI_TOKEN_HEADER.len() - 8 + 1 - 4);
        assert_eq!(names, want);
        assert_ne!(WORDS[usize::from(st::LINE)], NO_WORD);
        // The request line's start, and the path's first nine states (0..=8 bytes of `/latest/`).
        assert_eq!(starts, 1 + 9);
        assert_eq!(WORDS[usize::from(st::METHOD)].expect, u64::from_le_bytes(*b"GET /lat"));
        let get = HttpState { state: st::METHOD, ..HttpState::default() };
        assert_eq!(walk_bytes(&get, b"GET /lat").1, flag::GET);
    }

    /// The scan's run test (see `scan`): non-zero where a byte of `word` ends state `s`'s run.
    fn run_ended(s: u8, word: u64) -> u64 {
        let nw = WORDS[usize::from(s)];
        run_test(word, nw.below, nw.no_run)
    }

    /// Whether the scan's run test finds a byte of `word` that ends state `s`'s run.
    fn ends_run(s: u8, word: u64) -> bool {
        run_ended(s, word) != 0
    }

    #[test]
    fn a_word_is_what_its_bytes_step_to_from_every_state() {
        // One word from every state, whichever way the scan takes it (whole, up to its run's
        // end, its first byte and then the next state's run, or byte by byte): the same state,
        // flags, counts and bytes taken as stepping its bytes one by one. Words of a first byte
        // and fillers, with a line end, blank or colon at some places.
        let fillers = b"a/%0 \t:-.?\x7f\xff";
        let enders = [None, Some((1, b'\n')), Some((3, b' ')), Some((7, b'\r')), Some((5, b':'))];
        let mut onward = 0;
        for s in 0..128u8 {
            for b in 0..=255u8 {
                for &f in fillers {
                    for end in enders {
                        let mut bytes = [f; 8];
                        bytes[0] = b;
                        if let Some((at, e)) = end {
                            bytes[at] = e;
                        }
                        let from = HttpState { state: s, bytes: 1, ..HttpState::default() };
                        let mut h = from;
                        let took = h.scan(&mut Bytes(&bytes), 8);
                        let (state, flags, path_at, path_bytes, want) = walk_bytes(&from, &bytes);
                        assert_eq!(
                            (h.state, h.flags, h.path_at, h.path_bytes, took),
                            (state, flags, path_at, path_bytes, want),
                            "state {s} word {bytes:?}"
                        );
                        let t = next_state(table_entry(s, b));
                        onward += u32::from(
                            s < st::DONE
                                && WORDS[usize::from(t)].no_run == 0
                                && !ends_run(t, u64::from_le_bytes(bytes) >> 8 | 0xff << 56),
                        );
                    }
                }
            }
        }
        // Words whose first byte leads into a run that holds the other seven were among them.
        assert!(onward > 1000, "{onward}");
    }

    #[test]
    fn a_run_is_what_its_bytes_step_to() {
        // What taking a word of a run whole relies on (see `scan`): every byte the test lets by
        // steps the state to itself with the run's counts and no flag; the test finds each other
        // byte at any position of a word; and it finds exactly the bytes up to a `\n` in a value
        // and up to a blank in the path (the blank, `\r` and `\n` among them).
        let mut runs = 0;
        for s in 0..128u8 {
            let nw = WORDS[usize::from(s)];
            if nw.no_run != 0 {
                assert_eq!(nw.no_run, NO_WORD.no_run, "state {s}");
                continue;
            }
            runs += 1;
            assert_eq!(nw.fold, NO_WORD.fold, "state {s}: a run and no word");
            for b in 0..=255u8 {
                let e = TABLE[usize::from(s) * CLASSES + usize::from(CLASS[usize::from(b)])];
                let quiet = e & !(COUNTS & !FINAL) == u32::from(s) << STATE_SHIFT
                    && u64::from(e & COUNTS) * 8 == nw.count;
                let filler = if s == st::VALUE { b'a' } else { b'x' };
                for j in 0..8 {
                    let mut bytes = [filler; 8];
                    bytes[j] = b;
                    let ended = ends_run(s, u64::from_le_bytes(bytes));
                    assert!(ended || quiet, "state {s} byte {b:#x} at {j}");
                    let want = if s == st::VALUE { b <= b'\n' } else { b <= b' ' };
                    assert_eq!(ended, want, "state {s} byte {b:#x} at {j}");
                }
            }
            assert!(!ends_run(s, u64::from_le_bytes([b'a'; 8])), "state {s}");
            assert_eq!(nw.next, u64::from(entry(s, 0)), "state {s}");
        }
        assert_eq!(runs, 2);
        assert_eq!(WORDS[usize::from(st::VALUE)].count, 0);
        assert_eq!(WORDS[usize::from(st::PATH_OTHER)].count, 8 * u64::from(CAPTURE));
    }

    #[test]
    fn a_run_ended_by_its_end_byte_is_what_its_bytes_step_to() {
        // What taking a word up to the byte that ends its run relies on (see `scan`): the index
        // `first_ended` gives is the first byte that ends the run, whatever follows; and the run's
        // bytes before it and the end byte step to `end_next`, with the counts taken.
        let mut ends = 0;
        for s in 0..128u8 {
            let nw = WORDS[usize::from(s)];
            if nw.end_byte == NO_END {
                continue;
            }
            ends += 1;
            assert_eq!(nw.no_run, 0, "state {s}: an end and no run");
            let fillers: &[u8] = if s == st::VALUE { b"a\r\x7f\xff :" } else { b"x!?%\x7f\xff" };
            for &filler in fillers {
                assert!(!ends_run(s, u64::from_le_bytes([filler; 8])), "state {s} filler {filler:#x}");
                for idx in 0..8usize {
                    for b in 0..=255u8 {
                        for &later in &[0u8, b'\n', b'a', 0xff] {
                            let mut bytes = [later; 8];
                            bytes[..idx].fill(filler);
                            bytes[idx] = b;
                            let word = u64::from_le_bytes(bytes);
                            let ended = run_ended(s, word);
                            if !ends_run(
                                s,
                                u64::from_le_bytes([
                                    filler, filler, filler, filler, filler, filler, filler, b,
                                ]),
                            ) {
                                continue; // `b` does not end the run
                            }
                            assert_eq!(first_ended(ended), idx as u64, "state {s} byte {b:#x} at {idx}");
                            if u64::from(b) != nw.end_byte {
                                continue;
                            }
                            let (mut e, mut counts, mut seen) = (0u32, 0u64, 0u32);
                            let mut state = s;
                            for &x in &bytes[..=idx] {
                                e = table_entry(state, x);
                                counts += u64::from(e & COUNTS);
                                seen |= e;
                                state = next_state(e);
                            }
                            assert_eq!(u64::from(e), nw.end_next, "state {s} at {idx}");
                            assert_eq!(
                                counts,
                                (nw.count >> 3) * idx as u64 + (nw.end_next & u64::from(COUNTS)),
                                "state {s} at {idx}"
                            );
                            assert_eq!(seen & (FLAGS << FLAG_SHIFT), e & (FLAGS << FLAG_SHIFT), "state {s}");
                            assert_eq!(e & FINAL, 0, "state {s}: an end byte ends no block");
                        }
                    }
                }
            }
        }
        assert_eq!(ends, 2);
        assert_eq!(WORDS[usize::from(st::VALUE)].end_byte, u64::from(b'\n'));
        assert_eq!(WORDS[usize::from(st::PATH_OTHER)].end_byte, u64::from(b' '));
    }

    #[test]
    fn a_value_row_keeps_every_byte_but_a_newline() {
        // What skipping a word in a value relies on (see `scan`).
        for b in 0..=255u8 {
            let e = TABLE[usize::from(st::VALUE) * CLASSES + usize::from(CLASS[usize::from(b)])];
            let want = if b == b'\n' { entry(st::LINE, 0) } else { entry(st::VALUE, 0) };
            assert_eq!(e, want, "byte {b:#x}");
        }
    }

    #[test]
    fn the_other_path_row_counts_every_byte_but_a_blank_or_a_line_end() {
        // What skipping a word of the path relies on (see `scan`).
        for b in 0..=255u8 {
            let e = TABLE[usize::from(st::PATH_OTHER) * CLASSES + usize::from(CLASS[usize::from(b)])];
            if matches!(b, b' ' | b'\r' | b'\n') {
                assert_ne!(next_state(e), st::PATH_OTHER, "byte {b:#x}");
            } else {
                assert_eq!(e, entry(st::PATH_OTHER, 0) | CAPTURE, "byte {b:#x}");
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(4000))]
        /// The word loop against one byte at a time: any split of a request into two writes
        /// (so the second starts in any state, mid-value too), any length, and stale bytes of
        /// an earlier write after it in the buffer.
        #[test]
        fn the_word_loop_matches_a_byte_walk(
            parts in proptest::collection::vec(piece(), 0..60),
            split in 0usize..400,
            len in 0u32..800,
            stale in proptest::num::u8::ANY,
        ) {
            let data = parts.concat().into_bytes();
            let split = split.min(data.len());
            let mut s = HttpState::default();
            s.feed(&data[..split]);
            let rest = &data[split..];
            let len = len.min(rest.len() as u32);
            // Bytes after `len` (a message the scan reads less of than it holds) change nothing.
            let mut buf = [stale; SCAN_MAX as usize];
            buf[..len as usize].copy_from_slice(&rest[..len as usize]);
            let want = walk_bytes(&s, &rest[..len as usize]);
            let before = s.bytes;
            let took = s.scan(&mut Bytes(&buf), len);
            proptest::prop_assert_eq!((s.state, s.flags, s.path_at, s.path_bytes, took), want);
            proptest::prop_assert_eq!(s.bytes, before + took);
        }
    }

    #[test]
    fn a_write_the_loop_cannot_finish_is_oversized() {
        // Lines that end a value's run early in almost every word: the loop's 512 words cover
        // fewer bytes than the write holds.
        let mut req = String::from("GET / HTTP/1.1\r\n");
        while req.len() < 4000 {
            req.push_str("a:\n");
        }
        let n = req.len() as u32;
        let mut s = HttpState::default();
        let took = s.scan(&mut Bytes(req.as_bytes()), n);
        assert!(took < n, "{took} of {n}");
        assert_eq!(s.write_finding(took, n, n), Finding::Oversized);
        // Fed on (the next write goes on from there), it is what a byte walk makes of it.
        let mut whole = HttpState::default();
        assert_eq!(whole.feed(req.as_bytes()), req.len());
        assert_eq!(walk_bytes(&HttpState::default(), req.as_bytes()).0, whole.state);
    }

    #[test]
    fn header_block_over_the_limit_is_oversized_at_once() {
        let mut s = HttpState::default();
        let mut req = String::from("GET / HTTP/1.1\r\n");
        while req.len() <= MAX_HEADER_BYTES as usize + 10 {
            req.push_str("X-Padding: aaaaaaaa\r\n");
        }
        let took = s.feed(req.as_bytes());
        assert!(took > MAX_HEADER_BYTES as usize);
        assert_eq!(s.finding(), Finding::Oversized);
    }

    #[test]
    fn every_state_fits_seven_bits_and_finals_are_the_top_two() {
        // What a step's offset relies on (see `Walk::step`): the low byte of every entry is zero,
        // every class offset a multiple of 4 below 256.
        for e in TABLE.iter() {
            assert_eq!(e & 0xff, 0);
            assert!(next_state(*e) <= st::NOT_HTTP);
        }
        assert!(CLASS4.iter().all(|c| c % 4 == 0 && usize::from(*c) < CLASSES * 4));
        assert_eq!(st::LINE + TTL_HEADER.len() as u8, st::NAME_XFF - 1);
        assert!(st::NAME_XFF + (XFF_HEADER.len() as u8 - 3) < st::NAME_OTHER);
        const { assert!(st::VALUE < st::DONE && st::DONE < st::NOT_HTTP) };
    }

    #[test]
    fn a_write_is_judged_with_what_follows_its_request() {
        let write = |bytes: &[u8], size: u32| {
            let mut s = HttpState::default();
            let n = bytes.len().min(SCAN_MAX as usize);
            let took = s.scan(&mut Bytes(&bytes[..n]), n as u32);
            s.write_finding(took, n as u32, size)
        };
        let v2 = b"GET / HTTP/1.1\r\nX-aws-ec2-metadata-token: t\r\n\r\n";
        assert_eq!(write(v2, v2.len() as u32), Finding::Imdsv2);
        assert_eq!(write(&[&v2[..], b"GET / HTTP/1.1\r\n\r\n"].concat(), 80), Finding::Trailing);
        assert_eq!(write(v2, v2.len() as u32 + 1), Finding::Trailing, "unread bytes after the request");
        assert_eq!(
            write(b"GET / HTTP/1.1\r\nHost: x\r\n", 5000),
            Finding::Oversized,
            "unread bytes of the request"
        );
        assert_eq!(
            write(b"GET / HTTP/1.1\r\nHost: x\r\n", 25),
            Finding::Incomplete,
            "goes on in the next write"
        );
        assert_eq!(
            write(b"GET / HTTP/1.1\r\n\r\nmore", 25),
            Finding::Imdsv1,
            "IMDSv1 says more than trailing"
        );
    }

    #[test]
    fn the_byte_classes_lose_nothing() {
        const { assert!((OTHER as usize) < CLASSES) };
        for s in 0..128u8 {
            for b in 0..=255u8 {
                let e = TABLE[usize::from(s) * CLASSES + usize::from(CLASS[usize::from(b)])];
                assert_eq!(e & !(BEFORE_PATH | FINAL), transition(s, b), "state {s} byte {b:#x}");
                assert_eq!(e & FINAL != 0, next_state(e) >= st::DONE, "state {s} byte {b:#x}");
                assert_eq!(CLASS4[usize::from(b)], CLASS[usize::from(b)] * 4);
            }
        }
    }
}
