extern crate std;
use std::{borrow::ToOwned, format, string::String, vec, vec::Vec};

use super::*;

const KEY: &str = "ASIAIOSFODNN7EXAMPLE";
const EXPIRY: &str = "2026-12-03T20:15:31Z";
/// Bytes that appear in no key id or expiry of these tests, so that finding one in a kept buffer
/// would show a secret byte kept.
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCY~~secret~~";
const TOKEN: &str = "IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQ~~token~~";

/// The document as the instance metadata service writes it (pretty-printed).
fn document(key: &str, expiry: &str) -> String {
    format!(
        "{{\n  \"Code\" : \"Success\",\n  \"LastUpdated\" : \"2026-12-03T14:05:12Z\",\n  \"Type\" : \
         \"AWS-HMAC\",\n  \"AccessKeyId\" : \"{key}\",\n  \"SecretAccessKey\" : \"{SECRET}\",\n  \
         \"Token\" : \"{TOKEN}\",\n  \"Expiration\" : \"{expiry}\"\n}}"
    )
}

fn response(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nServer: EC2ws\r\n\r\n{body}",
        body.len()
    )
}

fn chunked(body: &str, sizes: &[usize]) -> String {
    let mut out = String::from("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nServer: x\r\n\r\n");
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        let ext = if i % 3 == 1 { ";name=value" } else { "" };
        out.push_str(&format!("{n:x}{ext}\r\n{}\r\n", &rest[..n]));
        rest = &rest[n..];
        i += 1;
    }
    out.push_str("0\r\n\r\n");
    out
}

struct Read {
    st: RespState,
    values: [u8; VALUES_MAX],
}

impl Read {
    fn stream(&self) -> &[u8] {
        &self.values[..self.st.values_len as usize]
    }

    /// A kept value, whole (`None` when absent or cut).
    fn whole_value(v: Option<Value<'_>>) -> Option<&str> {
        v.filter(|v| !v.cut).map(|v| core::str::from_utf8(v.raw).unwrap())
    }

    fn key(&self) -> Option<&str> {
        assert_eq!(self.st.has_key(), values(self.stream()).0.is_some_and(|v| !v.cut));
        Self::whole_value(values(self.stream()).0)
    }

    fn expiry(&self) -> Option<&str> {
        Self::whole_value(values(self.stream()).1)
    }

    /// Nothing but the two values' bytes and their marks was ever written to the stream (it
    /// starts zeroed).
    fn kept_nothing_else(&self) {
        assert!(self.values[self.st.values_len as usize..].iter().all(|&b| b == 0), "{:?}", self.values);
        assert!(!self.values.contains(&b'~'), "a secret byte was kept: {:?}", self.values);
    }
}

fn read(segments: &[&[u8]]) -> Read {
    let r = read_unchecked(segments);
    r.kept_nothing_else();
    r
}

fn read_unchecked(segments: &[&[u8]]) -> Read {
    let mut r = Read { st: RespState::new(), values: [0; VALUES_MAX] };
    for s in segments {
        r.st.segment(&mut r.values, s);
    }
    r
}

fn whole(text: &str) -> Read {
    read(&[text.as_bytes()])
}

#[test]
fn the_metadata_service_s_document_gives_key_and_expiry() {
    let r = whole(&response(&document(KEY, EXPIRY)));
    assert_eq!((r.key(), r.expiry()), (Some(KEY), Some(EXPIRY)));
    assert_eq!(r.st.outcome(), Outcome::Closed);
    assert!(r.st.flags & flag::COMPLETE != 0);
    // Compact, as the fake one in the tests writes it; and keys in another order.
    let compact = format!(
        "{{\"Code\":\"Success\",\"Type\":\"AWS-HMAC\",\"AccessKeyId\":\"{KEY}\",\"SecretAccessKey\":\
         \"{SECRET}\",\"Token\":\"{TOKEN}\",\"Expiration\":\"{EXPIRY}\",\"LastUpdated\":\"x\"}}"
    );
    let r = whole(&response(&compact));
    assert_eq!((r.key(), r.expiry(), r.st.outcome()), (Some(KEY), Some(EXPIRY), Outcome::Closed));
    let reordered =
        format!("{{\"Expiration\":\"{EXPIRY}\",\"Token\":\"{TOKEN}\",\"AccessKeyId\":\"{KEY}\"}}");
    let r = whole(&response(&reordered));
    assert_eq!((r.key(), r.expiry(), r.st.outcome()), (Some(KEY), Some(EXPIRY), Outcome::Closed));
}

#[test]
fn split_anywhere_reads_the_same() {
    let text = response(&document(KEY, EXPIRY));
    let b = text.as_bytes();
    for cut in 0..=b.len() {
        let r = read(&[&b[..cut], &b[cut..]]);
        assert_eq!(
            (r.key(), r.expiry(), r.st.outcome()),
            (Some(KEY), Some(EXPIRY), Outcome::Closed),
            "{cut}"
        );
    }
    let bytes: Vec<&[u8]> = b.chunks(1).collect();
    let r = read(&bytes);
    assert_eq!((r.key(), r.expiry()), (Some(KEY), Some(EXPIRY)));
}

#[test]
fn blanks_anywhere_json_allows_them() {
    for (a, b) in [("", ""), (" ", " "), ("\t", "\r\n"), ("\n\n", "  \t")] {
        let body = format!(
            "{a}{{{a}\"Token\"{b}:{a}\"{TOKEN}\"{b},{a}\"AccessKeyId\"{a}:{b}\"{KEY}\"{a},{b}\"Expiration\"{a}:\"{EXPIRY}\"{b}}}{a}"
        );
        let r = whole(&response(&body));
        assert_eq!(
            (r.key(), r.expiry(), r.st.outcome()),
            (Some(KEY), Some(EXPIRY), Outcome::Closed),
            "{body:?}"
        );
    }
}

#[test]
fn access_key_id_elsewhere_than_a_top_level_key_is_not_taken() {
    for body in [
        // Other keys that contain it, differ in case, or begin like it.
        format!(
            "{{\"NotAccessKeyId\":\"WRONG1\",\"AccessKeyIdX\":\"WRONG2\",\"accesskeyid\":\"WRONG3\",\"AccessKeyI\":\"W4\",\"AccessKeyId\":\"{KEY}\"}}"
        ),
        // Nested objects and arrays, with strings holding brackets.
        format!(
            "{{\"Nested\":{{\"AccessKeyId\":\"WRONG\",\"x\":[\"]\",{{\"AccessKeyId\":\"W\"}}]}},\"AccessKeyId\":\"{KEY}\"}}"
        ),
        format!("{{\"List\":[[\"AccessKeyId\",\"WRONG\"]],\"AccessKeyId\":\"{KEY}\"}}"),
        // As a value, and inside another value.
        format!(
            "{{\"Type\":\"AccessKeyId\",\"Token\":\"\\\"AccessKeyId\\\":\\\"WRONG\\\"\",\"AccessKeyId\":\"{KEY}\"}}"
        ),
        // Scalars before it.
        format!("{{\"n\":12.5e3,\"t\":true,\"z\":null,\"AccessKeyId\":\"{KEY}\"}}"),
        // An escape in another key.
        format!("{{\"Access\\\"KeyId\":\"WRONG\",\"AccessKeyId\":\"{KEY}\"}}"),
    ] {
        let r = whole(&response(&body));
        assert_eq!((r.key(), r.st.outcome()), (Some(KEY), Outcome::Closed), "{body}");
    }
    for body in [
        "{\"Nested\":{\"AccessKeyId\":\"WRONG\"}}",
        "[{\"AccessKeyId\":\"WRONG\"}]",
        "{\"Token\":\"{\\\"AccessKeyId\\\":\\\"WRONG\\\"}\"}",
        "\"AccessKeyId\":\"WRONG\"",
        "{\"a\":{\"b\":{\"c\":{\"d\":{\"AccessKeyId\":\"WRONG\"}}}}}",
    ] {
        assert_eq!(whole(&response(body)).key(), None, "{body}");
    }
}

#[test]
fn not_json_is_not_read() {
    for body in ["imdsg-test-role", "<html><body>404 - Not Found</body></html>", "", "AccessKeyId: WRONG"] {
        let r = whole(&response(body));
        assert_eq!(r.key(), None, "{body}");
        assert_ne!(r.st.outcome(), Outcome::Closed, "{body}");
    }
    assert_eq!(whole(&response("imdsg-test-role")).st.outcome(), Outcome::Ended);
}

#[test]
fn a_truncated_response_never_gives_a_wrong_key() {
    let text = response(&document(KEY, EXPIRY));
    for cut in 0..text.len() {
        let r = whole(&text[..cut]);
        match r.key() {
            None => {}
            Some(k) => assert_eq!(k, KEY, "{cut}"),
        }
        assert_ne!(r.st.outcome(), Outcome::Closed, "{cut}");
        if let Some(e) = r.expiry() {
            assert_eq!(e, EXPIRY);
        }
    }
}

#[test]
fn chunked_bodies_are_read_through_their_framing() {
    let body = document(KEY, EXPIRY);
    let key_at = body.find(KEY).unwrap();
    for sizes in [vec![1], vec![2, 3], vec![7], vec![key_at + 5], vec![64], vec![4000], vec![key_at, 3, 1]] {
        let text = chunked(&body, &sizes);
        let r = whole(&text);
        assert_eq!(
            (r.key(), r.expiry(), r.st.outcome()),
            (Some(KEY), Some(EXPIRY), Outcome::Closed),
            "{sizes:?}"
        );
        for cut in (0..text.len()).step_by(7) {
            let r = read(&[&text.as_bytes()[..cut], &text.as_bytes()[cut..]]);
            assert_eq!(r.key(), Some(KEY), "{sizes:?} cut at {cut}");
        }
    }
    // Upper-case hex, the header's name in any case, blanks before its colon.
    let text = format!(
        "HTTP/1.1 200 OK\r\nTRANSFER-ENCODING : chunked\r\n\r\n1A\r\n{}\r\n0\r\n\r\n",
        &format!("{{\"AccessKeyId\":\"{KEY}\"}}")[..26]
    );
    assert_eq!(whole(&text).key(), None, "cut inside the value by the chunk's end");
    let doc = format!("{{\"AccessKeyId\":\"{KEY}\"}}");
    let text =
        format!("HTTP/1.1 200 OK\r\nTransfer-encoding: chunked\r\n\r\n{:X}\r\n{doc}\r\n0\r\n\r\n", doc.len());
    assert_eq!(whole(&text).key(), Some(KEY));
    // Without the header, the same bytes are a plain body that is not JSON.
    let plain = chunked(&body, &[9]).replace("Transfer-Encoding: chunked\r\n", "");
    assert_eq!(whole(&plain).key(), None);
    // The last chunk before the object closed: ended, nothing complete.
    let r = whole("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"A\r\n0\r\n\r\n");
    assert_eq!(r.st.outcome(), Outcome::Ended);
}

#[test]
fn long_values_are_cut_and_marked() {
    let long = "A".repeat(200);
    let r = whole(&response(&format!("{{\"AccessKeyId\":\"{long}\",\"Expiration\":\"{EXPIRY}\"}}")));
    let (key, expiry) = values(r.stream());
    let key = key.unwrap();
    assert_eq!((key.raw, key.cut), (&long.as_bytes()[..VALUES_MAX - 1], true));
    assert_eq!(expiry, None, "no room left");
    assert!(r.st.has_key(), "the value did end, though past what was kept");
    assert_eq!(r.st.outcome(), Outcome::Closed);
    // What fits is kept whole.
    let exact = "B".repeat(VALUES_MAX - 2);
    let r = whole(&response(&format!("{{\"AccessKeyId\":\"{exact}\"}}")));
    assert_eq!(r.key(), Some(exact.as_str()));
    assert_eq!(r.st.values_len as usize, VALUES_MAX);
}

#[test]
fn control_bytes_are_never_kept_and_escapes_stay_as_written() {
    let r =
        whole(&response("{\"AccessKeyId\":\"AK\\\"IA\\u001b[2J\x1b\n\x01\x02\",\"Expiration\":\"x\\\\\"}"));
    assert_eq!(r.key(), Some("AK\\\"IA\\u001b[2J????"));
    assert_eq!(r.expiry(), Some("x\\\\"));
}

#[test]
fn a_second_access_key_id_replaces_the_first() {
    let r = whole(&response("{\"AccessKeyId\":\"FIRSTFIRSTFIRST\",\"AccessKeyId\":\"SECOND\"}"));
    assert_eq!(r.key(), Some("SECOND"));
}

#[test]
fn a_segment_longer_than_the_kernel_reads_ends_the_response() {
    let pad = "x".repeat(SEGMENT_MAX as usize);
    let text =
        response(&format!("{{\"AccessKeyId\":\"{KEY}\",\"Token\":\"{pad}\",\"Expiration\":\"{EXPIRY}\"}}"));
    let r = whole(&text);
    assert_eq!((r.key(), r.expiry(), r.st.outcome()), (Some(KEY), None, Outcome::Ended));
    assert!(r.st.flags & flag::GAP != 0);
    // In segments the kernel reads whole, the same response is read to its end.
    let parts: Vec<&[u8]> = text.as_bytes().chunks(1500).collect();
    let r = read(&parts);
    assert_eq!((r.key(), r.expiry(), r.st.outcome()), (Some(KEY), Some(EXPIRY), Outcome::Closed));
    // But not past RESPONSE_MAX in all.
    let huge = "y".repeat(RESPONSE_MAX as usize);
    let text =
        response(&format!("{{\"AccessKeyId\":\"{KEY}\",\"Token\":\"{huge}\",\"Expiration\":\"{EXPIRY}\"}}"));
    let parts: Vec<&[u8]> = text.as_bytes().chunks(1500).collect();
    let r = read(&parts);
    assert_eq!((r.key(), r.expiry(), r.st.outcome()), (Some(KEY), None, Outcome::Ended));
}

#[test]
fn every_state_fits_its_bits() {
    for e in FRAME.iter() {
        assert!(e & 0xe0e0 == 0, "states are below 32: {e:#x}");
        assert!(matches!((e >> 20) & 15, 0 | 4) && (e >> 28) == 0, "{e:#x}");
    }
    for (i, e) in JSON.iter().enumerate() {
        assert!(e & 63 <= 53, "entry {i}: {e:#x}");
        let (mine, instead, keep, advance) = ((e >> 8) & 0xff, (e >> 16) & 0xff, (e >> 24) & 15, e >> 28);
        assert!(mine == 0 || mine == 0xff, "entry {i}: {e:#x}");
        assert!(mine == 0 || instead == 0, "entry {i}: {e:#x}");
        // What is there stays exactly when nothing is written and the position stays.
        assert_eq!(keep == 0, advance == 0, "entry {i}: {e:#x}");
        assert_eq!(keep == 0, mine == 0 && instead == 0, "entry {i}: {e:#x}");
        assert!(matches!(keep, 0 | 8) && advance <= 1, "entry {i}: {e:#x}");
    }
    const { assert!((super::scan::OTHER as usize) < CLASSES) };
}

#[test]
fn the_paths_whose_responses_are_read() {
    for p in [
        "/latest/meta-data/iam/security-credentials/role",
        "/latest/meta-data/iam/security-credentials/",
        "/2021-07-15/meta-data/iam/security-credentials/role",
        "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
        "/v2/credentials/7d43a6b7-7d0f-4b1c-9d51-1bd0d3c3e0a4",
        "/v1/credentials",
        "/latest/meta-data/iam/SECURITY-CREDENTIALS/role",
        "/latest/meta-data/iam/security-cr%65dentials/role",
        "/latest//meta-data/iam/./security-credentials/role?x=1",
        "/ccredentials",
    ] {
        assert!(wants_response(p.as_bytes(), true), "{p}");
    }
    for p in [
        "/latest/meta-data/instance-id",
        "/latest/api/token",
        "/latest/meta-data/placement/region",
        "/",
        "/credential",
    ] {
        assert!(!wants_response(p.as_bytes(), true), "{p}");
        assert!(wants_response(p.as_bytes(), false), "a path not kept whole: {p}");
    }
}

#[test]
fn every_needle_entry_is_a_row_offset() {
    // What a step's offset relies on (see `needle_load`): bits 0..9 of every entry zero.
    assert!(NEEDLE_TABLE.iter().all(|e| e & 0x1ff == 0 && (e >> NEEDLE_ROW_SHIFT) <= u16::from(FOUND)));
}

/// `bytes` as the kernel sees a kept path: words of 8 bytes, zero past the slice.
fn words<const W: usize>(bytes: &[u8]) -> [u64; W] {
    let mut out = [0u64; W];
    for (i, b) in bytes.iter().enumerate().take(8 * W) {
        out[i / 8] |= u64::from(*b) << (8 * (i % 8));
    }
    out
}

/// The matcher a byte at a time, as `wants_response` runs it: the reference for the word loop.
fn byte_walk(s: u32, bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .fold(s, |s, &b| u32::from(NEEDLE_TABLE[((s >> NEEDLE_ROW_SHIFT) as usize) << 8 | usize::from(b)]))
}

const PATH_WORDS: usize = crate::http::PATH_MAX / 8;
const TAIL_WORDS: usize = PATH_TAIL / 8;

/// A generated path cut at `cut` (at most its length) into the kept path and its tail (at most
/// PATH_TAIL bytes of the rest).
fn cut_path(path: &str, cut: usize) -> (&[u8], &[u8]) {
    let (a, b) = path.as_bytes().split_at(cut.min(path.len()));
    (a, &b[..b.len().min(PATH_TAIL)])
}

/// A part of the kept path as the kernel may hold it: its bytes, then `stale` ones (what the
/// storage held from before), as words.
fn kept<const W: usize>(part: &[u8], stale: &str) -> [u64; W] {
    words(&[part, stale.as_bytes()].concat())
}

/// The quick test's verdict on a kept path and its tail, as the message hook runs it.
fn may_match(path: &[u64; PATH_WORDS], path_len: u32, tail: &[u64; TAIL_WORDS], tail_len: u32) -> bool {
    letters(letters(Letters::default(), path, path_len), tail, tail_len).may_match()
}

#[test]
fn the_kernel_s_path_loop_matches() {
    let p =
        b"/latest/meta-data/iam/security-credentials/a-role-name-long-enough-to-go-past-ninety-six-bytes-x";
    let (a, b) = p.split_at(crate::http::PATH_MAX);
    let s = needle_words(0, &words::<PATH_WORDS>(a), 96);
    assert!(found(needle_words(s, &words::<TAIL_WORDS>(b), b.len() as u32)));
    let path = words::<PATH_WORDS>(b"/latest/meta-data/instance-id/");
    assert!(!found(needle_words(needle_words(0, &path, 30), &[0; TAIL_WORDS], 0)));
    // Split across the two parts.
    let mut a = [b'x'; crate::http::PATH_MAX];
    a[90..].copy_from_slice(b"/crede");
    let tail = words::<TAIL_WORDS>(b"ntials");
    let path = words::<PATH_WORDS>(&a);
    assert!(found(needle_words(needle_words(0, &path, 96), &tail, 6)));
    assert!(!found(needle_words(needle_words(0, &path, 96), &tail, 5)));
    // Stale bytes past `len` count for nothing, in a skipped word or a stepped one.
    let path = words::<PATH_WORDS>(b"/latest/credentials");
    assert!(!found(needle_words(0, &path, 8)));
    assert!(!found(needle_words(0, &path, 18)));
    assert!(found(needle_words(0, &path, 19)));
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(4000))]

    /// The word loop ends where the byte walk ends, for any path of the needle's letters, escapes
    /// and others, split anywhere into the kept path and its tail, with stale bytes after each.
    #[test]
    fn the_word_loop_walks_as_the_bytes(
        path in "[cCrReEdDnNtTiIaAlLsS%/x-]{0,128}",
        stale in "[cCrReEdDnNtTiIaAlLsS%]{16}",
        cut in 0usize..=96,
    ) {
        let (a, b) = cut_path(&path, cut);
        let s = needle_words(0, &kept::<PATH_WORDS>(a, &stale), a.len() as u32);
        proptest::prop_assert_eq!(s, byte_walk(0, a));
        let s = needle_words(s, &kept::<TAIL_WORDS>(b, &stale), b.len() as u32);
        proptest::prop_assert_eq!(s, byte_walk(byte_walk(0, a), b));
    }

    /// The quick test before the matcher never skips a path the matcher would find, whatever
    /// the stale bytes after each part; and it skips every path with no `c` or no `r` (either
    /// case) and no `%`, whatever the stale bytes past the word each part ends in.
    #[test]
    fn the_letters_test_skips_only_what_the_matcher_would(
        path in "[cCrReEdDnNtTiIaAlLsS%/x-]{0,128}",
        stale in "[cCrR%x]{16}",
        cut in 0usize..=96,
    ) {
        let (a, b) = cut_path(&path, cut);
        let (ka, kb) = (kept::<PATH_WORDS>(a, &stale), kept::<TAIL_WORDS>(b, &stale));
        let (la, lb) = (a.len() as u32, b.len() as u32);
        if found(needle_words(needle_words(0, &ka, la), &kb, lb)) {
            proptest::prop_assert!(may_match(&ka, la, &kb, lb));
        }
        // Stale bytes only past each part's last word: then nothing but the part counts.
        let whole = |part: &[u8]| {
            let mut k = part.to_vec();
            k.resize(part.len().div_ceil(8) * 8, b'x');
            k
        };
        let (ka, kb) = (kept::<PATH_WORDS>(&whole(a), &stale), kept::<TAIL_WORDS>(&whole(b), &stale));
        let has = |x: u8| a.iter().chain(b).any(|&y| y == b'%' || y.to_ascii_lowercase() == x);
        proptest::prop_assert_eq!(may_match(&ka, la, &kb, lb), has(b'c') && has(b'r'));
    }
}

#[test]
fn the_letters_test_on_paths_a_workload_reads() {
    let may = |p: &[u8]| {
        let (a, b) = p.split_at(p.len().min(crate::http::PATH_MAX));
        may_match(&words(a), a.len() as u32, &words(b), b.len() as u32)
    };
    for skipped in [
        &b"/latest/meta-data/instance-id"[..],
        b"/latest/meta-data/placement/availability-zone",
        b"/latest/meta-data/local-ipv4",
        b"/latest/meta-data/ami-id",
        b"/latest/meta-data/hostname",
        b"/latest/api/token",
        b"/",
    ] {
        assert!(!may(skipped), "{}", String::from_utf8_lossy(skipped));
    }
    for run in [
        &b"/latest/meta-data/iam/security-credentials/"[..],
        b"/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
        b"/LATEST/META-DATA/IAM/SECURITY-CREDENTIALS/",
        b"/latest/meta-data/iam/security-%63redentials/",
        b"/latest/meta-data/placement/region",
        // `c` in the kept path, `r` only in its tail.
        b"/latest/meta-data/c/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxr",
    ] {
        assert!(may(run), "{}", String::from_utf8_lossy(run));
    }
}

#[test]
fn what_a_path_says() {
    assert_eq!(
        source(b"/latest/meta-data/iam/security-credentials/my-role"),
        Source::InstanceRole(b"my-role")
    );
    assert_eq!(source(b"/2021-07-15/meta-data/iam/security-credentials/r?x=1"), Source::InstanceRole(b"r"));
    assert_eq!(
        source(b"/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance"),
        Source::InstanceIdentity
    );
    for p in [
        &b"/latest/meta-data/iam/security-credentials/"[..],
        b"/latest/meta-data/iam/security-credentials/a/b",
        b"//meta-data/iam/security-credentials/r",
        b"/v2/credentials/uuid",
        b"latest/meta-data/iam/security-credentials/r",
        b"",
    ] {
        assert_eq!(source(p), Source::Other, "{}", String::from_utf8_lossy(p));
    }
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(2000))]

    /// Any bytes, split anywhere: no panic, the same state as read whole (in segments of at most
    /// SEGMENT_MAX, as the kernel reads them), nothing kept beyond the two lengths.
    #[test]
    fn any_bytes_split_anywhere(data in proptest::collection::vec(proptest::num::u8::ANY, 0..700), cut in 0usize..700) {
        let cut = cut.min(data.len());
        let a = read(&[&data]);
        let b = read(&[&data[..cut], &data[cut..]]);
        proptest::prop_assert_eq!(a.st, RespState { read: a.st.read, ..b.st });
        proptest::prop_assert_eq!(a.values, b.values);
        proptest::prop_assert!(a.st.values_len as usize <= VALUES_MAX);
    }

    /// Generated documents: keys and values of every kind in any order, blanks, chunking and
    /// splits; the scanner finds exactly the top-level values.
    #[test]
    fn generated_documents(
        others in proptest::collection::vec(("[A-Za-z]{0,14}", value()), 0..6),
        key in "[A-Z0-9]{16,24}",
        expiry in "[0-9TZ:-]{20}",
        at in 0usize..7,
        ws in proptest::sample::select(&["", " ", "\n  ", "\t"][..]),
        chunk in proptest::option::of(1usize..50),
        cut in 0usize..2000,
    ) {
        let mut fields: Vec<String> = others.iter().map(|(k, v)| format!("\"{k}\"{ws}:{ws}{v}")).collect();
        let at = at.min(fields.len());
        fields.insert(at, format!("\"AccessKeyId\"{ws}:{ws}\"{key}\""));
        fields.push(format!("\"Expiration\":\"{expiry}\""));
        let body = format!("{{{ws}{}{ws}}}", fields.join(&format!(",{ws}")));
        let text = match chunk { Some(n) => chunked(&body, &[n]), None => response(&body) };
        let cut = cut.min(text.len());
        let r = read(&[&text.as_bytes()[..cut], &text.as_bytes()[cut..]]);
        let got_key = r.key().map(str::to_owned);
        let got_expiry = r.expiry().map(str::to_owned);
        // Another field may be called AccessKeyId or Expiration too (then the last one counts).
        let last_key = others.iter().skip(at).rfind(|(k, v)| k == "AccessKeyId" && v.starts_with('"'));
        let want_key = last_key.map_or(key.clone(), |(_, v)| v.trim_matches('"').to_owned());
        proptest::prop_assert_eq!(got_key, Some(want_key), "{}", body);
        proptest::prop_assert_eq!(got_expiry, Some(expiry), "{}", body);
        proptest::prop_assert_eq!(r.st.outcome(), Outcome::Closed);
    }
}

/// A JSON value of any kind, none holding a quote that would end it early.
fn value() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::strategy::Strategy as _;
    proptest::prop_oneof![
        "[ -!#-\\[\\]-~]{0,30}".prop_map(|s| format!("\"{s}\"")),
        "[ -!#-\\[\\]-~]{0,10}".prop_map(|s| format!("\"esc\\\\ \\\"{s}\\\"\"")),
        "-?[0-9]{1,6}(\\.[0-9]{1,3})?".prop_map(|s| s),
        proptest::sample::select(&["true", "false", "null"][..]).prop_map(str::to_owned),
        "[A-Za-z]{1,12}".prop_map(|k| format!("{{\"AccessKeyId\":\"WRONG\",\"{k}\":[1,\"]\",{{}}]}}")),
        proptest::sample::select(&["[]", "{}", "[[[\"x\"]]]", "{\"a\":{\"b\":[\"}\"]}}"][..])
            .prop_map(str::to_owned),
    ]
}

#[test]
fn keep_below_keeps_exactly_the_bytes_below_the_length() {
    let bytes: [u8; 32] = core::array::from_fn(|i| 0xa0 ^ i as u8);
    let words: [u64; 4] =
        core::array::from_fn(|q| u64::from_le_bytes(bytes[8 * q..8 * q + 8].try_into().unwrap()));
    for len in 0..=40u32 {
        let mut out = [0u64; 4];
        super::keep_below(&words, len, &mut out);
        for (i, b) in bytes.iter().enumerate() {
            let got = out[i / 8].to_le_bytes()[i % 8];
            assert_eq!(got, if (i as u32) < len { *b } else { 0 }, "len {len} byte {i}");
        }
    }
}

#[test]
fn words_are_aligned() {
    // What the message hook's word copy of the path relies on (imds-guard-ebpf's creds.rs).
    use crate::{event::CredentialsEvent, http::HttpState, sock::SockState};
    use core::mem::{align_of, offset_of};
    assert!(align_of::<CredentialsEvent>() >= 8 && align_of::<SockState>() >= 8);
    assert_eq!(offset_of!(CredentialsEvent, path) % 8, 0);
    assert_eq!(offset_of!(SockState, path_tail) % 8, 0);
    assert_eq!((offset_of!(SockState, http) + offset_of!(HttpState, path)) % 8, 0);
    assert!(align_of::<Watch>() >= 8 && offset_of!(Watch, ev) % 8 == 0);
}
