//! A fast path for the shape large policies have: top-level `key = value` lines, then `[[allow]]`
//! tables of `key = value` lines (strings and integers; `endpoints` an array of strings).
//!
//! The `toml` crate builds a generic document tree before serde sees a value: for a policy of
//! 10,000 tables that tree is ~10 MB and two thirds of the parse (54 M instructions, ~3.6 ms on
//! the benchmark VM, and most of the pages a reload touches). This reads the same file from the
//! event stream of `toml_parser` (the lexer and parser under `toml`) straight into
//! [`PolicyFile`], with the same positions. It answers only when it is sure: anything else (other
//! tables, dotted keys, inline tables, floats, booleans, an unknown or repeated key, a value of
//! the wrong type or out of range, any syntax error) is `None`, and the caller parses with the
//! `toml` crate, which also gives the error. `tests/policy_fuzz.rs` checks on random documents
//! that an answer is always what the `toml` crate reads.

use std::ops::Range;

use toml::Spanned;
use toml_parser::{
    ErrorSink, ParseError, Source, Span,
    decoder::{Encoding, ScalarKind},
    lexer::{Token, TokenKind},
    parser::{EventReceiver, RecursionGuard, ValidateWhitespace},
};

use super::schema::{AllowTable, PolicyFile};

/// The `toml` crate's nesting limit (it refuses deeper documents).
const NESTING_LIMIT: u32 = 80;

/// Tokens parsed at a time (see [`parse`]): ~100 KB of them.
const CHUNK_TOKENS: usize = 4096;

/// The policy in `text`, when it has the shape this reads; `None` otherwise (see the module).
#[must_use]
pub fn parse(text: &str) -> Option<PolicyFile> {
    parse_in_chunks(text, CHUNK_TOKENS)
}

/// [`parse`], cutting the tokens into pieces of at least `chunk_tokens` (the tests cut at every
/// table header with 1, and not at all with `usize::MAX`).
#[doc(hidden)]
#[must_use]
pub fn parse_in_chunks(text: &str, chunk_tokens: usize) -> Option<PolicyFile> {
    let source = Source::new(text);
    let mut builder = Builder::new(source);
    let mut failed = false;
    let mut errors = |_: ParseError| failed = true;
    {
        // As the `toml` crate drives it: the parser descends into nested arrays and inline tables
        // only as deep as the guard allows (hostile nesting would overflow the stack).
        let mut receiver = ValidateWhitespace::new(&mut builder, source);
        let mut receiver = RecursionGuard::new(&mut receiver, NESTING_LIMIT);
        // The parser takes a slice of tokens, and the whole file's would be ~24 bytes per token
        // (~2.4 MB for 10,000 tables, the largest block a reload touched). It is given the file
        // in pieces instead, cut only where a table header starts: a `[` first on its line,
        // outside any array or inline table. The parser is at the top level there, as at the
        // start of a document, so it sends the same events as for the whole file. Brackets
        // inside strings and comments are part of those tokens, never tokens of their own.
        let mut chunk: Vec<Token> = Vec::with_capacity(chunk_tokens.min(CHUNK_TOKENS));
        let mut depth = 0u32;
        let mut line_start = true;
        for token in source.lex() {
            match token.kind() {
                TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => {
                    if depth == 0 && line_start && chunk.len() >= chunk_tokens {
                        toml_parser::parser::parse_document(&chunk, &mut receiver, &mut errors);
                        chunk.clear();
                    }
                    depth += 1;
                }
                // More closing than opening brackets: the cuts could land where the parser is
                // not at the top level. Not a policy of the common shape anyway.
                TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => {
                    depth = depth.checked_sub(1)?
                }
                _ => {}
            }
            line_start = match token.kind() {
                TokenKind::Newline => true,
                TokenKind::Whitespace => line_start,
                _ => false,
            };
            chunk.push(token);
        }
        toml_parser::parser::parse_document(&chunk, &mut receiver, &mut errors);
    }
    builder.finish(failed)
}

/// A value read for the pending key.
enum Value {
    Str(String),
    Int(i64),
    Strings(Vec<Spanned<String>>),
}

struct Builder<'i> {
    source: Source<'i>,
    file: PolicyFile,
    /// Where the array-table header being read starts, and its name so far: `Some(true)` while
    /// that is `allow`.
    header: Option<(usize, Option<bool>)>,
    /// The key read last, waiting for its value: where it is (decoded when the value comes).
    key: Option<(Span, Option<Encoding>)>,
    /// The array being read: where it starts, the strings in it.
    array: Option<(usize, Vec<Spanned<String>>)>,
    /// Something this does not read (the caller parses the file with the `toml` crate).
    bail: bool,
    /// Keys and integers are decoded here (no allocation per key or number).
    scratch: String,
}

impl<'i> Builder<'i> {
    fn new(source: Source<'i>) -> Self {
        let file = PolicyFile {
            mode: None,
            endpoints: None,
            imdsv1: None,
            preexisting: None,
            raw_sockets: None,
            read: None,
            allow: Vec::new(),
            netfilter: None,
            kubernetes: None,
        };
        Builder { source, file, header: None, key: None, array: None, bail: false, scratch: String::new() }
    }

    fn finish(self, failed: bool) -> Option<PolicyFile> {
        let complete = self.header.is_none() && self.key.is_none() && self.array.is_none();
        (!failed && !self.bail && complete).then_some(self.file)
    }

    /// Decodes the key or scalar at `span` into `self.scratch`.
    fn decode(&mut self, span: Span, encoding: Option<Encoding>, key: bool) -> Option<ScalarKind> {
        let raw = self.source.get(span)?;
        let raw = toml_parser::Raw::new_unchecked(raw.as_str(), encoding, span);
        let mut failed = false;
        let mut errors = |_: ParseError| failed = true;
        self.scratch.clear();
        let kind = if key {
            raw.decode_key(&mut self.scratch, &mut errors);
            ScalarKind::String
        } else {
            raw.decode_scalar(&mut self.scratch, &mut errors)
        };
        (!failed).then_some(kind)
    }

    /// Sets the pending key to `value`, read at `span`. (The value is decoded already, so the
    /// key is decoded into the scratch buffer only now: no allocation for it.)
    fn set(&mut self, span: Range<usize>, value: Value) {
        let Some((key_span, encoding)) = self.key.take() else {
            self.bail = true;
            return;
        };
        if self.decode(key_span, encoding, true).is_none() {
            self.bail = true;
            return;
        }
        let key = self.scratch.as_str();
        let done = match self.file.allow.last_mut() {
            None => set_top(&mut self.file, key, span, value),
            Some(table) => set_allow(table.get_mut(), key, span, value),
        };
        if !done {
            self.bail = true;
        }
    }
}

fn string(span: Range<usize>, value: Value) -> Option<Spanned<String>> {
    match value {
        Value::Str(s) => Some(Spanned::new(span, s)),
        _ => None,
    }
}

fn read_spec(span: Range<usize>, value: Value) -> Option<Spanned<super::schema::ReadSpec>> {
    use super::schema::ReadSpec;
    Some(Spanned::new(
        span,
        match value {
            Value::Str(s) => ReadSpec::Class(s),
            Value::Strings(list) => ReadSpec::Prefixes(list),
            Value::Int(_) => return None,
        },
    ))
}

/// `slot = value` if the slot is empty (a repeated key is the `toml` crate's error to give).
fn fill<T>(slot: &mut Option<T>, value: Option<T>) -> bool {
    match (slot.is_none(), value) {
        (true, Some(v)) => {
            *slot = Some(v);
            true
        }
        _ => false,
    }
}

fn set_top(file: &mut PolicyFile, key: &str, span: Range<usize>, value: Value) -> bool {
    match key {
        "mode" => fill(&mut file.mode, string(span, value)),
        "imdsv1" => fill(&mut file.imdsv1, string(span, value)),
        "preexisting" => fill(&mut file.preexisting, string(span, value)),
        "raw_sockets" => fill(&mut file.raw_sockets, string(span, value)),
        "read" => fill(&mut file.read, read_spec(span, value)),
        "endpoints" => match value {
            Value::Strings(list) => fill(&mut file.endpoints, Some(Spanned::new(span, list))),
            _ => false,
        },
        _ => false,
    }
}

fn set_allow(t: &mut AllowTable, key: &str, span: Range<usize>, value: Value) -> bool {
    let id = |span: Range<usize>, value: Value| match value {
        Value::Int(v) => u32::try_from(v).ok().map(|v| Spanned::new(span, v)),
        _ => None,
    };
    let text = |span, value| string(span, value).map(Box::new);
    match key {
        "uid" => fill(&mut t.uid, id(span, value)),
        "gid" => fill(&mut t.gid, id(span, value)),
        "name" => fill(&mut t.name, text(span, value)),
        "user" => fill(&mut t.user, text(span, value)),
        "group" => fill(&mut t.group, text(span, value)),
        "exe" => fill(&mut t.exe, text(span, value)),
        "cgroup" => fill(&mut t.cgroup, text(span, value)),
        "comm" => fill(&mut t.comm, text(span, value)),
        "pod" => fill(&mut t.pod, text(span, value)),
        "namespace" => fill(&mut t.namespace, text(span, value)),
        "container" => fill(&mut t.container, text(span, value)),
        "imdsv1" => fill(&mut t.imdsv1, text(span, value)),
        "read" => fill(&mut t.read, read_spec(span, value).map(Box::new)),
        _ => false,
    }
}

impl EventReceiver for Builder<'_> {
    fn std_table_open(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        self.bail = true;
    }

    fn array_table_open(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        if self.header.is_some() || self.key.is_some() || self.array.is_some() {
            self.bail = true;
        }
        self.header = Some((span.start(), None));
    }

    fn array_table_close(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        match self.header.take() {
            Some((start, Some(true))) => {
                self.file.allow.push(Spanned::new(start..span.end(), AllowTable::default()));
            }
            _ => self.bail = true,
        }
    }

    fn inline_table_open(&mut self, _span: Span, _error: &mut dyn ErrorSink) -> bool {
        // Not read here: the parser need not descend into it.
        self.bail = true;
        false
    }

    fn array_open(&mut self, span: Span, _error: &mut dyn ErrorSink) -> bool {
        if self.bail || self.array.is_some() || self.key.is_none() {
            self.bail = true;
            return false;
        }
        self.array = Some((span.start(), Vec::new()));
        true
    }

    fn array_close(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        match self.array.take() {
            Some((start, list)) => self.set(start..span.end(), Value::Strings(list)),
            None => self.bail = true,
        }
    }

    fn simple_key(&mut self, span: Span, encoding: Option<Encoding>, _error: &mut dyn ErrorSink) {
        if self.bail {
            return;
        }
        if self.header.is_some() {
            // `[[allow]]`: one key, `allow` (a dotted name has a key_sep and bails there).
            let allow = self.decode(span, encoding, true).is_some() && self.scratch == "allow";
            if let Some((_, name)) = &mut self.header {
                *name = Some(name.is_none() && allow);
            }
        } else if self.key.is_some() || self.array.is_some() {
            self.bail = true;
        } else {
            self.key = Some((span, encoding));
        }
    }

    fn key_sep(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        // Dotted keys (`a.b = 1`, `[[a.b]]`).
        self.bail = true;
    }

    fn scalar(&mut self, span: Span, encoding: Option<Encoding>, _error: &mut dyn ErrorSink) {
        if self.bail {
            return;
        }
        let value = match self.decode(span, encoding, false) {
            // A copy of its exact length (the scratch buffer stays for the next).
            Some(ScalarKind::String) => Value::Str(self.scratch.as_str().to_owned()),
            Some(ScalarKind::Integer(radix)) => match i64::from_str_radix(&self.scratch, radix.value()) {
                Ok(v) => Value::Int(v),
                Err(_) => {
                    self.bail = true;
                    return;
                }
            },
            _ => {
                self.bail = true;
                return;
            }
        };
        match (&mut self.array, value) {
            (Some((_, list)), Value::Str(s)) => list.push(Spanned::new(span.start()..span.end(), s)),
            (Some(_), _) => self.bail = true,
            (None, value) => self.set(span.start()..span.end(), value),
        }
    }

    fn error(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        self.bail = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cut at every table header, the parser still sees arrays, inline tables and strings whole.
    #[test]
    fn cuts_fall_only_between_top_level_lines() {
        let text = "mode = \"enforce\"\nendpoints = [\n\"aws-imds\",\n]\n[[allow]]\nuid = 1\n  [[allow]]\n\
                    name = '''\n[[allow]]\nuid = 9\n'''\nuid = 2\n# [[allow]]\n[[allow]] # [\nuid = 3\n";
        let full: PolicyFile = toml::from_str(text).unwrap();
        assert_eq!(full.allow.len(), 3);
        for chunk in [1, 2, 5, usize::MAX] {
            let fast = parse_in_chunks(text, chunk).expect("the fast path reads it");
            assert_eq!(format!("{fast:?}"), format!("{full:?}"), "cut at {chunk} tokens");
        }
        // An array whose next line starts with `[` is not cut there: still one value.
        let text = "endpoints = [\n[\"aws-imds\"],\n]\n[[allow]]\nuid = 1\n";
        assert!(toml::from_str::<PolicyFile>(text).is_err());
        assert!(parse_in_chunks(text, 1).is_none());
        // More closing brackets than opening ones: left to the `toml` crate.
        assert!(parse_in_chunks("[[allow]]]\nuid = 1\n", 1).is_none());
    }
}
