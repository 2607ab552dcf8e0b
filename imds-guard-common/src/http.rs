//! The HTTP request classifier: which requests to the metadata service are tokenless (IMDSv1),
//! which fetch a token, and which token fetches carry `X-Forwarded-For` (a proxy or SSRF sign).
//!
//! It is a byte-at-a-time state machine ([`HttpState::step`]) with a fixed-size state, so that the
//! kernel can drive it from a `bpf_loop` callback over the bytes a process sends, carry the state
//! from one `sendmsg` to the next (a request split across writes is judged once, when its header
//! block ends), and the host can drive it over any slice in tests and fuzzing. It never panics and
//! never reads past its state.

/// Bytes of the request path kept for reports.
pub const PATH_MAX: usize = 96;
/// Header bytes of one request the classifier reads before it calls the request `Oversized`.
pub const MAX_HEADER_BYTES: u32 = 8192;

pub const TOKEN_HEADER: &[u8] = b"x-aws-ec2-metadata-token";
pub const TTL_HEADER: &[u8] = b"x-aws-ec2-metadata-token-ttl-seconds";
pub const XFF_HEADER: &[u8] = b"x-forwarded-for";
pub const TOKEN_PATH: &[u8] = b"/latest/api/token";
pub const CREDENTIALS_PATH: &[u8] = b"/latest/meta-data/iam/security-credentials/";

pub mod method {
    pub const UNKNOWN: u8 = 0;
    pub const GET: u8 = 1;
    pub const HEAD: u8 = 2;
    pub const PUT: u8 = 3;
    pub const POST: u8 = 4;
    pub const OTHER: u8 = 5;
}

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

/// What a request is, once its header block has ended.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finding {
    /// The header block has not ended yet.
    Incomplete = 0,
    /// Not an HTTP request line.
    NotHttp = 1,
    /// A request with the `X-aws-ec2-metadata-token` header (IMDSv2): nothing to report.
    Imdsv2 = 2,
    /// `PUT /latest/api/token`: fetching a session token.
    TokenPut = 3,
    /// A token PUT with `X-Forwarded-For`: IMDS refuses it; a proxy or an SSRF is at work.
    TokenPutForwarded = 4,
    /// A request without the token header: IMDSv1.
    Imdsv1 = 5,
    /// The header block is longer than [`MAX_HEADER_BYTES`]: not classified (denied where v1 is).
    Oversized = 6,
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
            _ => Finding::Incomplete,
        }
    }

    /// Whether the request ends a header block (a verdict can be taken).
    #[must_use]
    pub const fn is_final(self) -> bool {
        !matches!(self, Finding::Incomplete)
    }
}

/// 8-byte aligned and reset field by field: in the kernel, a byte-wise copy or clear of it would
/// become a loop the verifier has to walk.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpState {
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

impl Default for HttpState {
    fn default() -> Self {
        HttpState {
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

impl HttpState {
    /// Feeds one byte. After the header block ends (`finding()` is final) further bytes are
    /// ignored until [`HttpState::reset`].
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

    /// Whether the request asks for role credentials.
    #[must_use]
    pub fn is_credentials_path(&self) -> bool {
        let n = CREDENTIALS_PATH.len();
        (self.path_len as usize) >= n && self.path[..n] == *CREDENTIALS_PATH
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

    #[test]
    fn tokenless_get_and_head_are_imdsv1() {
        let (f, s) = classify(
            "GET /latest/meta-data/iam/security-credentials/role HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n",
        );
        assert_eq!(f, Finding::Imdsv1);
        assert!(s.is_credentials_path());
        assert_eq!(s.path(), b"/latest/meta-data/iam/security-credentials/role");
        assert_eq!(s.method, method::GET);
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
            proptest::prop_assert_eq!(whole, parts);
            let _ = whole.finding();
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
}
