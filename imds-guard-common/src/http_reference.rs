//! The byte-at-a-time classifier that the table-driven one replaced (it ran from a `bpf_loop`
//! callback, which Linux 5.10 and 5.15 lack). Kept as the reference the table is tested against:
//! on every input both must reach the same finding, method and path.
#![allow(dead_code)]

use super::{Finding, MAX_HEADER_BYTES, PATH_MAX, TOKEN_HEADER, TOKEN_PATH, TTL_HEADER, XFF_HEADER, method};

mod phase {
    pub const METHOD: u8 = 0;
    pub const PATH: u8 = 1;
    pub const VERSION: u8 = 2;
    pub const NAME: u8 = 3;
    pub const NAME_END: u8 = 4;
    pub const VALUE: u8 = 5;
    pub const DONE: u8 = 6;
    pub const NOT_HTTP: u8 = 7;
}

mod flag {
    pub const TOKEN: u8 = 1 << 0;
    pub const TTL: u8 = 1 << 1;
    pub const XFF: u8 = 1 << 2;
    pub const OVERSIZED: u8 = 1 << 3;
}

// Per-line match state of each header name we look for: still matching, or not.
const ALIVE_TOKEN: u8 = 1 << 0;
const ALIVE_TTL: u8 = 1 << 1;
const ALIVE_XFF: u8 = 1 << 2;

/// 8-byte aligned and reset field by field: in the kernel, a byte-wise copy or clear of it would
/// become a loop the verifier has to walk.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefState {
    /// Header bytes of this request so far.
    pub bytes: u32,
    pub phase: u8,
    pub method: u8,
    /// Bytes of the current token (method) or header name seen.
    pub pos: u8,
    /// `ALIVE_*` bits for the current header line.
    pub alive: u8,
    pub flags: u8,
    pub path_len: u8,
    pub _pad: [u8; 6],
    pub method_buf: [u8; 8],
    /// The first `path_len` bytes are the request path; the rest is stale.
    pub path: [u8; PATH_MAX],
}

impl Default for RefState {
    fn default() -> Self {
        RefState {
            bytes: 0,
            phase: phase::METHOD,
            method: method::UNKNOWN,
            pos: 0,
            alive: 0,
            flags: 0,
            path_len: 0,
            _pad: [0; 6],
            method_buf: [0; 8],
            path: [0; PATH_MAX],
        }
    }
}

#[inline(always)]
const fn lower(b: u8) -> u8 {
    if b >= b'A' && b <= b'Z' { b | 0x20 } else { b }
}

/// `name[pos] == b`, false past its end.
#[inline(always)]
fn at(name: &[u8], pos: u8, b: u8) -> bool {
    let p = pos as usize;
    p < name.len() && name[p] == b
}

impl RefState {
    /// Feeds one byte. After the header block ends (`finding()` is final) further bytes are
    /// ignored until [`RefState::reset`].
    #[inline(always)]
    pub fn step(&mut self, b: u8) {
        if self.phase >= phase::DONE {
            return;
        }
        self.bytes += 1;
        if self.bytes > MAX_HEADER_BYTES {
            self.flags |= flag::OVERSIZED;
            self.phase = phase::DONE;
            return;
        }
        match self.phase {
            phase::METHOD => {
                if b == b' ' && self.pos > 0 {
                    self.method = self.method_code();
                    self.phase = phase::PATH;
                } else if b.is_ascii_uppercase() && (self.pos as usize) < self.method_buf.len() {
                    self.method_buf[self.pos as usize] = b;
                    self.pos += 1;
                } else {
                    self.phase = phase::NOT_HTTP;
                }
            }
            phase::PATH => {
                if b == b' ' {
                    self.phase = phase::VERSION;
                } else if b == b'\r' || b == b'\n' {
                    self.phase = phase::NOT_HTTP; // HTTP/0.9 or garbage
                } else if (self.path_len as usize) < PATH_MAX {
                    self.path[self.path_len as usize] = b;
                    self.path_len += 1;
                }
            }
            phase::VERSION => {
                if b == b'\n' {
                    self.new_line();
                }
            }
            phase::NAME => {
                if b == b'\n' {
                    if self.pos == 0 {
                        self.phase = phase::DONE; // the empty line: end of the header block
                    } else {
                        self.new_line(); // a line without a colon: ignore it
                    }
                } else if b == b'\r' {
                    // CR before LF; a lone CR is treated the same.
                } else if b == b':' {
                    self.end_name();
                } else if b == b' ' || b == b'\t' {
                    if self.pos == 0 {
                        self.phase = phase::VALUE; // folded continuation line
                    } else {
                        self.phase = phase::NAME_END; // spaces before the colon: tolerated
                    }
                } else {
                    let l = lower(b);
                    let mut alive = self.alive;
                    if !at(TOKEN_HEADER, self.pos, l) {
                        alive &= !ALIVE_TOKEN;
                    }
                    if !at(TTL_HEADER, self.pos, l) {
                        alive &= !ALIVE_TTL;
                    }
                    if !at(XFF_HEADER, self.pos, l) {
                        alive &= !ALIVE_XFF;
                    }
                    self.alive = alive;
                    self.pos = self.pos.saturating_add(1);
                }
            }
            phase::NAME_END => {
                if b == b':' {
                    self.end_name();
                } else if b == b'\n' {
                    self.new_line();
                } else if b != b' ' && b != b'\t' && b != b'\r' {
                    self.phase = phase::VALUE; // "name junk: ..." is not the header
                }
            }
            _ => {
                // VALUE: skip to the end of the line.
                if b == b'\n' {
                    self.new_line();
                }
            }
        }
    }

    #[inline(always)]
    fn new_line(&mut self) {
        self.phase = phase::NAME;
        self.pos = 0;
        self.alive = ALIVE_TOKEN | ALIVE_TTL | ALIVE_XFF;
    }

    #[inline(always)]
    fn end_name(&mut self) {
        let n = self.pos as usize;
        if self.alive & ALIVE_TOKEN != 0 && n == TOKEN_HEADER.len() {
            self.flags |= flag::TOKEN;
        }
        if self.alive & ALIVE_TTL != 0 && n == TTL_HEADER.len() {
            self.flags |= flag::TTL;
        }
        if self.alive & ALIVE_XFF != 0 && n == XFF_HEADER.len() {
            self.flags |= flag::XFF;
        }
        self.phase = phase::VALUE;
    }

    #[inline(always)]
    fn method_code(&self) -> u8 {
        let m = &self.method_buf;
        match (self.pos, m[0], m[1], m[2], m[3]) {
            (3, b'G', b'E', b'T', _) => method::GET,
            (4, b'H', b'E', b'A', b'D') => method::HEAD,
            (3, b'P', b'U', b'T', _) => method::PUT,
            (4, b'P', b'O', b'S', b'T') => method::POST,
            _ => method::OTHER,
        }
    }

    /// Whether the request path is `/latest/api/token` (the query string aside).
    #[must_use]
    pub fn is_token_path(&self) -> bool {
        let n = TOKEN_PATH.len();
        let p = self.path_len as usize;
        (p == n || (p > n && self.path[n] == b'?')) && self.path[..n] == *TOKEN_PATH
    }

    #[inline(always)]
    #[must_use]
    pub fn finding(&self) -> Finding {
        match self.phase {
            phase::NOT_HTTP => Finding::NotHttp,
            phase::DONE if self.flags & flag::OVERSIZED != 0 => Finding::Oversized,
            phase::DONE => {
                let put_token = self.method == method::PUT && self.is_token_path();
                if put_token && self.flags & flag::XFF != 0 {
                    Finding::TokenPutForwarded
                } else if put_token {
                    Finding::TokenPut
                } else if self.flags & flag::TOKEN != 0 {
                    Finding::Imdsv2
                } else {
                    Finding::Imdsv1
                }
            }
            _ => Finding::Incomplete,
        }
    }

    /// Ready for the next request on the same connection (keep-alive). The path bytes are left
    /// as they are (only `path_len` counts).
    #[inline(always)]
    pub fn reset(&mut self) {
        self.bytes = 0;
        self.phase = phase::METHOD;
        self.method = method::UNKNOWN;
        self.pos = 0;
        self.alive = 0;
        self.flags = 0;
        self.path_len = 0;
        self.method_buf = [0; 8];
    }

    /// The request path (at most [`PATH_MAX`] bytes).
    #[must_use]
    pub fn path(&self) -> &[u8] {
        &self.path[..(self.path_len as usize).min(PATH_MAX)]
    }

    /// Feeds a whole slice (host side; the kernel feeds bytes from `bpf_loop`).
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.step(b);
        }
    }
}
