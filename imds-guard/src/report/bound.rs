//! Bounds on what a process controls once it is written out: an executable path, a cgroup or a
//! pod name can be as long as the kernel allows (4 KiB a path, more once JSON escapes its control
//! characters), and several of them go into one event. A value longer than its bound keeps its
//! beginning and its end (an executable's file name, a cgroup's leaf) around a marker that says how
//! much was cut and carries a digest of the whole, so that two long values that differ only in the
//! middle stay apart (a metrics label, a journal field) and the original can still be matched.

use std::borrow::Cow;

use sha2::{Digest as _, Sha256};

/// `s` when it is at most `max` bytes; else its head and tail around
/// `…[cut N bytes, sha256:<12 hex>]…`, at most `max` bytes in all (at least the marker).
#[must_use]
pub fn middle(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let digest: String = Sha256::digest(s.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect();
    // The marker's length depends on N, which depends on how much the marker leaves: take the
    // longest N could be (s.len()).
    let marker_len = format!("…[cut {} bytes, sha256:{digest}]…", s.len()).len();
    let keep = max.saturating_sub(marker_len);
    // A third before the marker, the rest after it: the end names the file.
    let head = floor_char_boundary(s, keep / 3);
    let tail = ceil_char_boundary(s, s.len() - (keep - keep / 3));
    let cut = tail - head;
    Cow::Owned(format!("{}…[cut {cut} bytes, sha256:{digest}]…{}", &s[..head], &s[tail..]))
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// Bytes `s` takes as a JSON string (quotes and escapes included): what a value costs in the event
/// socket's answers and the JSON lines, where a control character becomes six bytes (`\u0001`).
#[must_use]
pub fn json_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..0x20 => 6,
            _ => 1,
        })
        .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_keep_both_ends_and_stay_apart() {
        assert_eq!(middle("short", 10), "short");
        let a = format!("/opt/{}/bin/tool", "é\u{1}x".repeat(2000));
        let b = format!("/opt/{}/bin/tool", "é\u{1}y".repeat(2000));
        let (ma, mb) = (middle(&a, 256), middle(&b, 256));
        assert!(ma.len() <= 256, "{}", ma.len());
        assert!(ma.starts_with("/opt/é") && ma.ends_with("/bin/tool"), "{ma}");
        assert!(ma.contains("…[cut "), "{ma}");
        assert_ne!(ma, mb, "the digest tells values that differ in the middle apart");
        // Tiny bounds still give a marker, never a panic.
        assert!(middle(&a, 0).starts_with("…[cut "));
    }

    #[test]
    fn json_len_is_what_serde_writes() {
        for s in ["", "plain", "a\"b\\c", "\u{1}\u{1f}\n\t\u{7f}é", &"\u{1}".repeat(100)] {
            assert_eq!(json_len(s), serde_json::to_string(s).unwrap().len(), "{s:?}");
        }
    }
}
