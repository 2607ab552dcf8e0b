//! Text a process controls (its comm, executable path, cgroup, unit, container and pod names) made
//! safe to write into generated text: a `#` comment of a suggested policy, a line on a terminal, a
//! log line. Every such string goes through [`visible`] on its way out, so that it cannot end a
//! comment or a line, move the cursor, recolour the terminal or reorder what is shown around it.

use std::{borrow::Cow, fmt::Write as _};

/// Whether `c` must not be written raw: control characters (C0, DEL, C1, which end lines and start
/// terminal escape sequences), the Unicode line and paragraph separators, and the bidirectional
/// formatting characters (which make a reader see text in another order than a parser reads it).
#[must_use]
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// `s` with every [unsafe](is_unsafe) character and every backslash escaped (`\n`, `\t`, `\r`,
/// `\\`, `\u{1b}`, ...): one line of printable text from which the original can be read back.
#[must_use]
pub fn visible(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c == '\\' || is_unsafe(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(visible("/usr/bin/curl"), Cow::Borrowed(_)));
        assert!(matches!(visible("kube-system/aws-node-x7k2p é"), Cow::Borrowed(_)));
    }

    #[test]
    fn line_breaks_and_escapes_are_shown_not_acted_on() {
        assert_eq!(visible("\n[[allow]]\n#"), "\\n[[allow]]\\n#");
        assert_eq!(visible("a\r\tb\\"), "a\\r\\tb\\\\");
        assert_eq!(visible("\u{1b}[2J"), "\\u{1b}[2J");
        assert_eq!(visible("x\u{85}y\u{2028}z"), "x\\u{85}y\\u{2028}z");
        assert_eq!(visible("abc\u{202e}fdp.exe"), "abc\\u{202e}fdp.exe");
        assert_eq!(visible("\0"), "\\u{0}");
    }

    #[test]
    fn output_is_one_line_of_safe_characters() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        let v = visible(&all);
        assert!(!v.chars().any(is_unsafe));
    }
}
