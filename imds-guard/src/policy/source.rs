//! The policy's text and where it came from, and errors that point into it: `file:line:col`, the
//! offending line, the message made printable and bounded whatever the file holds.

use std::{fmt, ops::Range, path::Path};

/// Where a policy came from, to point errors at it.
#[derive(Clone, Debug)]
pub struct Source {
    /// File name as given (or `<embedded>`).
    pub name: String,
    pub text: String,
}

impl Source {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let bytes = read_bytes(path).map_err(|e| ConfigError {
            location: path.display().to_string(),
            message: format!("cannot read the policy file: {e}"),
            snippet: None,
        })?;
        Self::from_bytes(path.display().to_string(), bytes)
    }

    /// The policy text of `bytes`; text that is not UTF-8 is an error at the first bad byte.
    pub fn from_bytes(name: String, bytes: Vec<u8>) -> Result<Self, ConfigError> {
        match String::from_utf8(bytes) {
            Ok(text) => Ok(Source { name, text }),
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                let bad = e.as_bytes()[at];
                // Shown with the bad bytes replaced, which keeps the position of the first one.
                let shown = Source { name, text: String::from_utf8_lossy(e.as_bytes()).into_owned() };
                let start = String::from_utf8_lossy(&e.as_bytes()[..at]).len();
                Err(shown.error_at(
                    Some(start..start + 1),
                    format!(
                        "byte 0x{bad:02x} is not UTF-8: a policy file is UTF-8 text, so a path that is not \
                         UTF-8 cannot be named in it (for `exe`, name a symlink to the file instead)"
                    ),
                ))
            }
        }
    }

    /// Line numbers (1-based) of byte offsets, for many offsets at once (one pass over the text).
    #[must_use]
    pub fn line_index(&self) -> LineIndex {
        LineIndex(self.text.match_indices('\n').map(|(i, _)| i).collect())
    }

    /// `file:line:col` and the offending line for a byte range of the text.
    #[must_use]
    ///
    /// The message and the line are made printable and bounded, whatever the file holds: control
    /// characters in the message (decoded from escapes such as `\u0000`) are escaped, a message
    /// longer than [`MAX_MESSAGE`] characters loses its middle, and only a window of a long line is
    /// shown around the position.
    pub fn error_at(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        let message = printable_message(&message.into());
        let Some(span) = span else {
            return ConfigError { location: self.name.clone(), message, snippet: None };
        };
        let start = floor_char_boundary(&self.text, span.start.min(self.text.len()));
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_no = self.text[..start].matches('\n').count() + 1;
        let col = self.text[line_start..start].chars().count() + 1;
        let line_end = self.text[start..].find('\n').map_or(self.text.len(), |i| start + i);
        let end = floor_char_boundary(&self.text, span.end.clamp(start, line_end));
        let width = self.text[start..end].chars().count().max(1);
        // The line as characters that each take one column, cut to a window around the position.
        let line: Vec<char> = self.text[line_start..line_end]
            .trim_end_matches('\r')
            .chars()
            .map(|c| match c {
                '\t' => ' ',
                c if c.is_control() => '\u{fffd}',
                c => c,
            })
            .collect();
        let first = (col - 1).saturating_sub(SNIPPET_WIDTH / 2).min(line.len().saturating_sub(SNIPPET_WIDTH));
        let last = (first + SNIPPET_WIDTH).min(line.len());
        let mut shown: String = line[first..last].iter().collect();
        let mut pad = col - 1 - first;
        if first > 0 {
            shown.insert_str(0, "...");
            pad += 3;
        }
        if last < line.len() {
            shown.push_str("...");
        }
        let width = width.min(last.saturating_sub(col - 1)).max(1);
        ConfigError {
            location: format!("{}:{line_no}:{col}", self.name),
            message,
            snippet: Some(format!("{line_no:>4} | {shown}\n     | {}{}", " ".repeat(pad), "^".repeat(width))),
        }
    }
}

/// Largest policy file read: the largest policy (16,384 tables) fits in well under this, and
/// parsing costs about a hundred times the file's size in memory, so a runaway file (generated,
/// or appended to in a loop) must not reach the parser.
pub const MAX_POLICY_BYTES: u64 = 2 << 20;

/// The bytes of a policy file, refusing one larger than [`MAX_POLICY_BYTES`] without reading it all.
pub fn read_bytes(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(MAX_POLICY_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_POLICY_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("it is larger than {MAX_POLICY_BYTES} bytes (2 MiB), the most imds-guard reads"),
        ));
    }
    Ok(bytes)
}

/// Longest error message shown whole (values from the file are quoted in messages).
pub const MAX_MESSAGE: usize = 512;
/// Characters of the offending line shown around the position.
const SNIPPET_WIDTH: usize = 100;

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// `message` on one line with control characters escaped, and at most [`MAX_MESSAGE`] characters:
/// a longer one keeps its beginning and end (what is wrong, and why) around a note of what was cut.
pub fn printable_message(message: &str) -> String {
    let escaped: Vec<char> = message
        .chars()
        .flat_map(|c| {
            let e: Vec<char> = if c.is_control() { c.escape_debug().collect() } else { vec![c] };
            e
        })
        .collect();
    if escaped.len() <= MAX_MESSAGE {
        return escaped.into_iter().collect();
    }
    let (head, tail) = (MAX_MESSAGE * 3 / 4, MAX_MESSAGE / 8);
    let cut = escaped.len() - head - tail;
    format!(
        "{} [... {cut} characters not shown ...] {}",
        escaped[..head].iter().collect::<String>(),
        escaped[escaped.len() - tail..].iter().collect::<String>()
    )
}

/// Offsets of the newlines of a text.
pub struct LineIndex(Vec<usize>);

impl LineIndex {
    /// 1-based line of byte offset `at`.
    #[must_use]
    pub fn line(&self, at: usize) -> usize {
        self.0.partition_point(|&nl| nl < at) + 1
    }
}

/// A policy error that names where in the file it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `file:line:col`, or just the file when the problem has no position.
    pub location: String,
    pub message: String,
    pub snippet: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)?;
        if let Some(s) = &self.snippet {
            write!(f, "\n{s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(text: &str) -> Source {
        Source { name: "policy.toml".into(), text: text.into() }
    }

    #[test]
    fn text_that_is_not_utf8_is_an_error_at_its_first_bad_byte() {
        let e = Source::from_bytes("p.toml".into(), b"[[allow]]\nexe = \"/tmp/\xff\xfe\"\n".to_vec())
            .unwrap_err();
        assert_eq!(e.location, "p.toml:2:13");
        assert!(e.message.contains("byte 0xff is not UTF-8"), "{e}");
        assert!(e.to_string().contains("exe = \"/tmp/\u{fffd}\u{fffd}\""), "{e}");
    }

    #[test]
    fn errors_are_printable_and_bounded_whatever_the_file_holds() {
        let s = src("[[allow]]\nuser = \"a\\u001b[2Jb\\u0000\"\n");
        let e = s.error_at(Some(17..32), "unknown user `a\u{1b}[2Jb\0`");
        assert_eq!(e.message, "unknown user `a\\u{1b}[2Jb\\0`");
        assert!(!e.to_string().chars().any(|c| c.is_control() && c != '\n'), "{e}");

        let huge = format!("[[allow]]\nexe = \"/{}\" # {}\n", "a".repeat(100_000), "b".repeat(1000));
        let s = src(&huge);
        let e = s.error_at(Some(16..100_018), format!("exe `/{}`: File name too long", "a".repeat(100_000)));
        assert!(e.message.len() <= MAX_MESSAGE + 64, "{}", e.message.len());
        assert!(e.message.starts_with("exe `/aaa") && e.message.ends_with("aaa`: File name too long"));
        assert!(e.message.contains("characters not shown"));
        assert!(e.to_string().len() < 1024, "{}", e.to_string().len());
        assert_eq!(e.location, "policy.toml:2:7");
        // A position far into a long line: the window shows it, the marker is under it.
        let e = s.error_at(Some(50_000..50_001), "here");
        let snippet = e.snippet.unwrap();
        let (line, marker) = snippet.split_once('\n').unwrap();
        let caret = marker.find('^').unwrap();
        assert_eq!(&line[caret..=caret], "a", "{snippet}");
        assert!(line.len() < 200 && line.contains("...a"), "{snippet}");
        assert_eq!(e.location, format!("policy.toml:2:{}", 50_000 - 10 + 1));
    }

    #[test]
    fn a_runaway_file_is_refused_without_being_read_whole() {
        let p = std::env::temp_dir().join(format!("imdsg-big-{}.toml", std::process::id()));
        std::fs::write(&p, vec![b'#'; MAX_POLICY_BYTES as usize + 1]).unwrap();
        let e = Source::read(&p).unwrap_err();
        std::fs::write(&p, vec![b'#'; MAX_POLICY_BYTES as usize]).unwrap();
        let at_the_limit = Source::read(&p);
        std::fs::remove_file(&p).unwrap();
        assert_eq!(e.location, p.display().to_string());
        assert!(e.message.contains("larger than 2097152 bytes (2 MiB)"), "{e}");
        assert!(at_the_limit.is_ok());
    }
}
