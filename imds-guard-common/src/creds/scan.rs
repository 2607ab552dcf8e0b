//! The response scanner: the byte classes, the two automata's tables, and the step the kernel
//! runs per byte (see the parent module for what it reads and why it is built this way).

use super::{Outcome, RESPONSE_MAX, SEGMENT_MAX, VALUES_MAX, flag, mark};
use crate::opaque::hide;

// ---------------------------------------------------------------------------------------------
// Byte classes, shared by both automata.

/// Bytes some state of either automaton tells apart, each a class of its own: JSON's structure
/// and blanks, the chunk-size digits (each has its own value), the letters of the two keys (case
/// matters) and of `transfer-encoding` (case does not). Every other byte is one class.
const DISTINCT: &[u8] = b"{}[]\"\\:,;- \t\r\n0123456789abcdefginoprstxyABCDEFGIKNORST";
/// The other control bytes (and DEL): never part of a JSON string, and never kept as they are
/// (they could pass for the stream's marks, see [`super::mark`]).
const CONTROL: u8 = DISTINCT.len() as u8;
pub(super) const OTHER: u8 = CONTROL + 1;
/// A byte of the catch-all class.
const OTHER_BYTE: u8 = b'!';
/// Classes (a power of two: the tables' rows).
pub const CLASSES: usize = 64;

const fn class_of(b: u8) -> u8 {
    let mut i = 0;
    while i < DISTINCT.len() {
        if DISTINCT[i] == b {
            return i as u8;
        }
        i += 1;
    }
    if b < 0x20 || b == 0x7f { CONTROL } else { OTHER }
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

/// The class of each byte.
pub static CLASS: [u8; 256] = build_class();

const fn representative(c: usize) -> u8 {
    if c < DISTINCT.len() {
        DISTINCT[c]
    } else if c == CONTROL as usize {
        0x1b
    } else {
        OTHER_BYTE
    }
}

pub(super) const fn lower(b: u8) -> u8 {
    if b >= b'A' && b <= b'Z' { b | 0x20 } else { b }
}

const fn hex_value(b: u8) -> Option<u32> {
    match b {
        b'0'..=b'9' => Some((b - b'0') as u32),
        b'a'..=b'f' => Some((b - b'a') as u32 + 10),
        b'A'..=b'F' => Some((b - b'A') as u32 + 10),
        _ => None,
    }
}

const fn blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

// ---------------------------------------------------------------------------------------------
// The frame: the response head, then the body, plain or chunked.

mod fs {
    /// The status line.
    pub const STATUS: u8 = 0;
    /// The start of a header line.
    pub const LINE: u8 = 1;
    /// A header name whose first `k` (1..=17) bytes match `transfer-encoding`: `NAME + k`.
    pub const NAME: u8 = 1;
    /// The rest of a header line.
    pub const REST: u8 = 19;
    /// A CR at the start of a line (the head ends at its LF).
    pub const HEAD_CR: u8 = 20;
    /// The same three once a `Transfer-Encoding` header was read: the body is chunked.
    pub const LINE_C: u8 = 21;
    pub const REST_C: u8 = 22;
    pub const HEAD_CR_C: u8 = 23;
    /// A plain body: every byte is body.
    pub const BODY: u8 = 24;
    /// A chunk-size line: its hex digits, its extension, its CR.
    pub const SIZE: u8 = 25;
    pub const EXT: u8 = 26;
    pub const SIZE_CR: u8 = 27;
    /// Chunk data (`remaining` bytes of it left), then the CRLF after it.
    pub const DATA: u8 = 28;
    pub const DATA_END: u8 = 29;
    /// After the last chunk (trailers are not read).
    pub const END: u8 = 30;
    /// Not a response this reads.
    pub const DEAD: u8 = 31;
}

const TE: &[u8] = b"transfer-encoding";

// A frame entry: bits 0..5 the next state when `remaining` is zero after this byte, bits 8..13
// the next state when it is not (the same state when that does not matter: the step picks one by
// shifting the entry 0 or 8 bits, not by a test); bit 16 "this byte is body"; bit 17 "count this
// byte off the chunk"; bits 20..24 how far `remaining` shifts left and bits 24..28 what is added
// to it (a chunk-size digit: 4 and its value).
const F_BODY: u32 = 1 << 16;
const F_DEC: u32 = 1 << 17;

const fn frame_entry(next: u8, when_zero: u8) -> u32 {
    (when_zero as u32) | ((next as u32) << 8)
}

/// A transition that does not care about `remaining`.
const fn to(n: u8) -> u32 {
    frame_entry(n, n)
}

const fn frame_transition(s: u8, b: u8) -> u32 {
    use fs::*;
    let lf = b == b'\n';
    let cr = b == b'\r';
    if s == STATUS {
        return to(if lf { LINE } else { STATUS });
    }
    if s == LINE {
        return to(if cr {
            HEAD_CR
        } else if lf {
            BODY
        } else if lower(b) == TE[0] {
            NAME + 1
        } else {
            REST
        });
    }
    if s > NAME && s <= NAME + TE.len() as u8 {
        let k = (s - NAME) as usize;
        if lf {
            return to(LINE);
        }
        if k < TE.len() {
            return to(if lower(b) == TE[k] { s + 1 } else { REST });
        }
        return to(if b == b':' {
            REST_C
        } else if blank(b) {
            s
        } else {
            REST
        });
    }
    match s {
        REST => to(if lf { LINE } else { REST }),
        HEAD_CR => to(if lf { BODY } else { REST }),
        LINE_C => to(if cr {
            HEAD_CR_C
        } else if lf {
            SIZE
        } else {
            REST_C
        }),
        REST_C => to(if lf { LINE_C } else { REST_C }),
        HEAD_CR_C => to(if lf { SIZE } else { REST_C }),
        BODY => to(BODY) | F_BODY,
        SIZE => {
            if let Some(v) = hex_value(b) {
                to(SIZE) | (4 << 20) | (v << 24)
            } else if b == b';' || blank(b) {
                to(EXT)
            } else if cr {
                to(SIZE_CR)
            } else if lf {
                frame_entry(DATA, END)
            } else {
                to(DEAD)
            }
        }
        EXT => {
            if cr {
                to(SIZE_CR)
            } else if lf {
                frame_entry(DATA, END)
            } else {
                to(EXT)
            }
        }
        SIZE_CR => {
            if lf {
                frame_entry(DATA, END)
            } else {
                to(DEAD)
            }
        }
        DATA => frame_entry(DATA, DATA_END) | F_BODY | F_DEC,
        DATA_END => to(if cr {
            DATA_END
        } else if lf {
            SIZE
        } else {
            DEAD
        }),
        _ => to(s), // END, DEAD
    }
}

/// Frame states (a power of two).
const FRAME_STATES: usize = 32;
pub const FRAME_LEN: usize = FRAME_STATES * CLASSES;

const fn build_frame() -> [u32; FRAME_LEN] {
    let mut t = [0u32; FRAME_LEN];
    let mut s = 0usize;
    while s < FRAME_STATES {
        let mut c = 0usize;
        while c < CLASSES {
            t[s * CLASSES + c] = frame_transition(s as u8, representative(c));
            c += 1;
        }
        s += 1;
    }
    t
}

pub static FRAME: [u32; FRAME_LEN] = build_frame();

// ---------------------------------------------------------------------------------------------
// The JSON body.

mod js {
    /// Before the top-level object.
    pub const START: u8 = 0;
    /// Where a key (or the object's end) is due: after `{` or `,`.
    pub const KEY: u8 = 1;
    /// Just inside a key's opening quote.
    pub const K0: u8 = 2;
    /// A key whose first `k` (1..=11) bytes match `AccessKeyId`: `KA + k - 1`.
    pub const KA: u8 = 3;
    /// A key whose first `k` (1..=10) bytes match `Expiration`: `KE + k - 1`.
    pub const KE: u8 = 14;
    /// Any other key, and a backslash in it.
    pub const KO: u8 = 24;
    pub const KO_ESC: u8 = 25;
    /// After a key's closing quote, before its colon: the key was `AccessKeyId`, `Expiration`,
    /// or another.
    pub const COLON_KEY: u8 = 26;
    pub const COLON_EXP: u8 = 27;
    pub const COLON_OTHER: u8 = 28;
    /// After the colon, before the value.
    pub const VAL_KEY: u8 = 29;
    pub const VAL_EXP: u8 = 30;
    pub const VAL_OTHER: u8 = 31;
    /// Inside the two string values kept (and after a backslash in them).
    pub const STR_KEY: u8 = 32;
    pub const STR_KEY_ESC: u8 = 33;
    pub const STR_EXP: u8 = 34;
    pub const STR_EXP_ESC: u8 = 35;
    /// Inside any other string value: the secret and the token are read here, and kept nowhere.
    pub const STR: u8 = 36;
    pub const STR_ESC: u8 = 37;
    /// A number, `true`, `false` or `null`.
    pub const SCALAR: u8 = 38;
    /// After a value: `,` or `}` is due.
    pub const AFTER: u8 = 39;
    /// A nested object or array `d` (1..=4) levels deep: `NEST + d - 1`; a string inside it, and
    /// a backslash in that string.
    pub const NEST: u8 = 40;
    pub const NEST_STR: u8 = 44;
    pub const NEST_ESC: u8 = 48;
    /// The top-level object closed.
    pub const DONE: u8 = 52;
    /// Not the document this reads.
    pub const DEAD: u8 = 53;
}

const AKID: &[u8] = b"AccessKeyId";
const EXPIRATION: &[u8] = b"Expiration";

// A JSON entry: bits 0..6 the next state; bit 6 the `AccessKeyId` value ended, bit 7 the
// `Expiration` value ended (as [`flag::KEY_DONE`] and [`flag::EXPIRY_DONE`]); then what the byte
// writes into the stream of kept values ([`super::mark`]), at its next position: bits 8..16 the
// mask of the byte itself (0xff: it is part of a kept value), bits 16..24 a byte written instead
// (a mark, or `?` for a control byte inside a kept value), bits 24..28 how far 0xff shifts right
// to mask what is already there (0: kept, 8: replaced), bit 28 "the position advances". A byte
// that is no part of a kept value writes back what is there and does not advance.
const J_KEY_DONE: u32 = 1 << 6;
const J_EXP_DONE: u32 = 1 << 7;
/// A byte of a kept value, as it is.
const J_KEEP: u32 = (0xff << 8) | (8 << 24) | (1 << 28);

/// The byte `w` written into the stream in place of the one read.
const fn writes(w: u8) -> u32 {
    ((w as u32) << 16) | (8 << 24) | (1 << 28)
}

/// A byte inside a kept value: itself, or `?` for a control byte.
const fn kept(b: u8) -> u32 {
    if b < 0x20 || b == 0x7f { writes(b'?') } else { J_KEEP }
}

const fn jn(x: u8) -> u32 {
    x as u32
}

const fn json_transition(s: u8, b: u8) -> u32 {
    use js::*;
    let ws = b == b' ' || b == b'\t' || b == b'\r' || b == b'\n';
    let open = b == b'{' || b == b'[';
    let close = b == b'}' || b == b']';
    if s == START {
        return jn(if ws {
            START
        } else if b == b'{' {
            KEY
        } else {
            DEAD
        });
    }
    if s == KEY {
        return jn(if ws {
            KEY
        } else if b == b'"' {
            K0
        } else if b == b'}' {
            DONE
        } else {
            DEAD
        });
    }
    // Inside a key: how far it matches either name.
    if s == K0 || (s >= KA && s < KO) {
        if b == b'\\' {
            return jn(KO_ESC);
        }
        let (name, base, colon) = if s >= KE { (EXPIRATION, KE, COLON_EXP) } else { (AKID, KA, COLON_KEY) };
        let k = if s == K0 { 0 } else { (s - base) as usize + 1 };
        if b == b'"' {
            return jn(if s != K0 && k == name.len() { colon } else { COLON_OTHER });
        }
        if s == K0 {
            return jn(if b == AKID[0] {
                KA
            } else if b == EXPIRATION[0] {
                KE
            } else {
                KO
            });
        }
        return jn(if k < name.len() && b == name[k] { s + 1 } else { KO });
    }
    match s {
        KO => jn(if b == b'"' {
            COLON_OTHER
        } else if b == b'\\' {
            KO_ESC
        } else {
            KO
        }),
        KO_ESC => jn(KO),
        COLON_KEY | COLON_EXP | COLON_OTHER => {
            if ws {
                jn(s)
            } else if b == b':' {
                jn(s - COLON_KEY + VAL_KEY)
            } else {
                jn(DEAD)
            }
        }
        VAL_KEY | VAL_EXP | VAL_OTHER => {
            if ws {
                jn(s)
            } else if b == b'"' {
                match s {
                    VAL_KEY => jn(STR_KEY) | writes(mark::KEY_OPEN),
                    VAL_EXP => jn(STR_EXP) | writes(mark::EXPIRY_OPEN),
                    _ => jn(STR),
                }
            } else if open {
                jn(NEST)
            } else if close || b == b',' || b == b':' {
                jn(DEAD)
            } else {
                jn(SCALAR)
            }
        }
        STR_KEY => {
            if b == b'"' {
                jn(AFTER) | J_KEY_DONE | writes(mark::KEY_CLOSE)
            } else if b == b'\\' {
                jn(STR_KEY_ESC) | J_KEEP
            } else {
                jn(STR_KEY) | kept(b)
            }
        }
        STR_KEY_ESC => jn(STR_KEY) | kept(b),
        STR_EXP => {
            if b == b'"' {
                jn(AFTER) | J_EXP_DONE | writes(mark::EXPIRY_CLOSE)
            } else if b == b'\\' {
                jn(STR_EXP_ESC) | J_KEEP
            } else {
                jn(STR_EXP) | kept(b)
            }
        }
        STR_EXP_ESC => jn(STR_EXP) | kept(b),
        STR => jn(if b == b'"' {
            AFTER
        } else if b == b'\\' {
            STR_ESC
        } else {
            STR
        }),
        STR_ESC => jn(STR),
        SCALAR => jn(if b == b',' {
            KEY
        } else if b == b'}' {
            DONE
        } else if ws {
            AFTER
        } else if b == b'"' || open || b == b']' || b == b':' {
            DEAD
        } else {
            SCALAR
        }),
        AFTER => jn(if ws {
            AFTER
        } else if b == b',' {
            KEY
        } else if b == b'}' {
            DONE
        } else {
            DEAD
        }),
        _ if s >= NEST && s < NEST + 4 => {
            let d = s - NEST; // depth - 1
            jn(if b == b'"' {
                NEST_STR + d
            } else if open {
                if d == 3 { DEAD } else { s + 1 }
            } else if close {
                if d == 0 { AFTER } else { s - 1 }
            } else {
                s
            })
        }
        _ if s >= NEST_STR && s < NEST_STR + 4 => {
            let d = s - NEST_STR;
            jn(if b == b'"' {
                NEST + d
            } else if b == b'\\' {
                NEST_ESC + d
            } else {
                s
            })
        }
        _ if s >= NEST_ESC && s < NEST_ESC + 4 => jn(NEST_STR + (s - NEST_ESC)),
        _ => jn(s), // DONE, DEAD
    }
}

/// JSON states (a power of two).
const JSON_STATES: usize = 64;
/// Entries of [`JSON`]: each state has a row, the same for every class, for bytes that are not
/// body (the head, chunk framing), which leave it as it is, and one for body bytes by class. The
/// row is picked by arithmetic, not by a test.
pub const JSON_LEN: usize = JSON_STATES * 2 * CLASSES;

const fn build_json() -> [u32; JSON_LEN] {
    let mut t = [0u32; JSON_LEN];
    let mut s = 0usize;
    while s < JSON_STATES {
        let mut c = 0usize;
        // States past the last one are never entered; they lead to DEAD like a bad byte.
        let state = if s > js::DEAD as usize { js::DEAD } else { s as u8 };
        while c < CLASSES {
            t[(s << 7) | c] = state as u32;
            t[(s << 7) | CLASSES | c] = json_transition(state, representative(c));
            c += 1;
        }
        s += 1;
    }
    t
}

pub static JSON: [u32; JSON_LEN] = build_json();

// ---------------------------------------------------------------------------------------------
// The state of one response, and the step.

/// Where the reading of one response stands. Kept with the connection between segments; the kept
/// values are in the caller's stream (an event's field, written in place).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RespState {
    /// The frame's and the JSON automaton's states.
    pub frame: u32,
    pub json: u32,
    /// Bytes left of the current chunk (while a chunk size is read: its value so far).
    pub remaining: u32,
    /// Bytes of the stream of kept values written ([`VALUES_MAX`] when full).
    pub values_len: u32,
    /// [`flag`]s.
    pub flags: u32,
    /// Bytes of the response read so far.
    pub read: u32,
    pub _pad: [u32; 2],
}

/// The fields one byte changes, held in locals (registers) while a segment is read.
pub struct Walk {
    frame: u32,
    json: u32,
    remaining: u32,
    values_len: u32,
    flags: u32,
}

/// `i` masked to a table of `len` entries (a power of two), through [`hide`]: the compiler keeps
/// the mask (it would drop it as redundant, the indices being in range by construction), and the
/// verifier needs it: before Linux 5.13 it knows nothing of an `|` of two unknown values, so an
/// index so made is unbounded to it ("math between map_value pointer and register with unbounded
/// min value" on 5.10) until an `&` with a constant bounds it again.
#[inline(always)]
pub(super) fn index(i: u64, len: usize) -> usize {
    (hide(i) as usize) & (len - 1)
}

impl Walk {
    /// Reads one byte. No branch: three table loads and arithmetic. A byte of a kept value (or
    /// a mark) is stored at the stream's next position; any other byte stores, at that position,
    /// the byte already there (so the secret and the token are written nowhere, not even in a
    /// scratch slot).
    #[inline(always)]
    pub fn step(&mut self, values: &mut [u8; VALUES_MAX], b: u8) {
        let c = u32::from(CLASS[usize::from(b)]) & (CLASSES as u32 - 1);
        let fe = FRAME[index(u64::from((self.frame << 6) | c), FRAME_LEN)];
        let body = (fe >> 16) & 1;
        self.remaining =
            (self.remaining << ((fe >> 20) & 15)).wrapping_add((fe >> 24) & 15).wrapping_sub((fe >> 17) & 1);
        // Bit 63 of `r | -r` is set exactly when `r` is not zero: shifted to bit 3, it picks the
        // entry's state for "not zero" (bits 8..13) or for "zero" (bits 0..5).
        let r = u64::from(self.remaining);
        let nonzero = (hide(r | r.wrapping_neg()) >> 60) & 8;
        self.frame = (fe >> nonzero) & 31;
        let je = JSON[index(u64::from((self.json << 7) | (body << 6) | c), JSON_LEN)];
        self.json = je & 63;
        self.flags |= (je >> 6) & 3;
        // A full stream (VALUES_MAX written) takes nothing more: 8 exactly then.
        let full = (self.values_len >> 4) & 8;
        let mine = ((je >> 8) & 0xff) >> full;
        let instead = ((je >> 16) & 0xff) >> full;
        let keep = (0xff >> ((je >> 24) & 15)) | (0xff - (0xff >> full));
        let at = (self.values_len & (VALUES_MAX as u32 - 1)) as usize;
        values[at] = (b & mine as u8) | instead as u8 | (values[at] & keep as u8);
        self.values_len += ((je >> 28) & 1) >> full;
    }
}

impl RespState {
    /// A response about to be read.
    #[must_use]
    pub const fn new() -> Self {
        RespState {
            frame: fs::STATUS as u32,
            json: js::START as u32,
            remaining: 0,
            values_len: 0,
            flags: 0,
            read: 0,
            _pad: [0; 2],
        }
    }

    /// The state in locals, for a segment's loop.
    #[inline(always)]
    #[must_use]
    pub fn walk(&self) -> Walk {
        Walk {
            frame: self.frame,
            json: self.json,
            remaining: self.remaining,
            values_len: self.values_len,
            flags: self.flags,
        }
    }

    /// Back from the loop's locals. Volatile stores: the compiler cannot hand what follows the
    /// values in the loop's registers instead of reading them back, so every way out of the loop
    /// looks the same to the verifier past this point (the registers' ranges differ from one
    /// iteration to the next, and a verifier that kept them apart would check what follows once
    /// per byte).
    #[inline(always)]
    pub fn store(&mut self, w: &Walk) {
        // SAFETY: volatile writes of our own fields.
        unsafe {
            use core::ptr::{addr_of_mut, write_volatile};
            write_volatile(addr_of_mut!(self.frame), w.frame);
            write_volatile(addr_of_mut!(self.json), w.json);
            write_volatile(addr_of_mut!(self.remaining), w.remaining);
            write_volatile(addr_of_mut!(self.values_len), w.values_len);
            write_volatile(addr_of_mut!(self.flags), w.flags);
        }
    }

    /// After a segment of `len` bytes of which `read` were read (the loop's state stored).
    #[inline(always)]
    pub fn account(&mut self, read: u32, len: u32) {
        self.read = self.read.saturating_add(read);
        if read < len || self.read > RESPONSE_MAX {
            self.flags |= flag::GAP;
        }
        if self.json == u32::from(js::DONE) {
            self.flags |= flag::COMPLETE;
        }
    }

    #[must_use]
    pub const fn outcome(&self) -> Outcome {
        if self.json == js::DONE as u32 {
            Outcome::Closed
        } else if self.flags & flag::GAP != 0
            || self.json == js::DEAD as u32
            || self.frame == fs::DEAD as u32
            || self.frame == fs::END as u32
        {
            Outcome::Ended
        } else {
            Outcome::Reading
        }
    }

    /// Whether an access key id was read (its value ended).
    #[must_use]
    pub const fn has_key(&self) -> bool {
        self.flags & flag::KEY_DONE != 0
    }

    /// Reads one segment (host side; the kernel runs the same steps over the packet): at most
    /// [`SEGMENT_MAX`] bytes of it, as the kernel does.
    pub fn segment(&mut self, values: &mut [u8; VALUES_MAX], seg: &[u8]) {
        if self.outcome() != Outcome::Reading {
            return;
        }
        let n = seg.len().min(SEGMENT_MAX as usize);
        let mut w = self.walk();
        for &b in &seg[..n] {
            w.step(values, b);
        }
        self.store(&w);
        self.account(n as u32, u32::try_from(seg.len()).unwrap_or(u32::MAX));
    }
}
