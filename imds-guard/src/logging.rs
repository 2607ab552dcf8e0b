//! tracing → stderr, as text or JSON. stdout is reserved for events.
//!
//! Under systemd, stderr is a journal stream: each line becomes an entry, and colour codes would
//! be stored in it as they are. So text is coloured only when stderr is a terminal, and every
//! field of a text line (the message included) is written through [`visible`]: a name a process
//! chose (a comm, a path) that ends up in a log line cannot end the line and start another — a
//! forged entry in the journal — nor drive the terminal. JSON lines escape by themselves.
use std::{fmt, io::IsTerminal as _};

use tracing_subscriber::{
    EnvFilter,
    field::{RecordFields, Visit},
    fmt::{FormatFields, MakeWriter, format::Writer},
};

use crate::{cli::LogFormat, escape::visible};

pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    match format {
        LogFormat::Text => text(std::io::stderr, ansi).with_env_filter(filter).init(),
        LogFormat::Json => {
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).json().init();
        }
    }
}

/// The text subscriber's builder: escaped fields, colour only if `ansi`.
fn text<W>(
    writer: W,
    ansi: bool,
) -> tracing_subscriber::fmt::SubscriberBuilder<
    Escaped,
    tracing_subscriber::fmt::format::Format,
    tracing::level_filters::LevelFilter,
    W,
>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt().with_writer(writer).with_ansi(ansi).fmt_fields(Escaped)
}

/// Formats the fields of a text log line with every control, line-separator and bidi character
/// escaped ([`visible`]): `message` as it is, the others as `name=value`.
pub struct Escaped;

impl<'w> FormatFields<'w> for Escaped {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut v = EscapingVisitor { writer, first: true, result: Ok(()) };
        fields.record(&mut v);
        v.result
    }
}

struct EscapingVisitor<'w> {
    writer: Writer<'w>,
    first: bool,
    result: fmt::Result,
}

impl EscapingVisitor<'_> {
    fn write(&mut self, name: &str, value: &str) {
        if self.result.is_err() {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        self.result = if name == "message" {
            write!(self.writer, "{sep}{}", visible(value))
        } else {
            write!(self.writer, "{sep}{}={}", visible(name), visible(value))
        };
    }
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.write(field.name(), value);
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.write(field.name(), &format!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Issue 17, item 10: a comm or a path carrying a line break and a whole event, and terminal
    /// escapes, in the message and in a field: one line, no escape character, no colour (stderr
    /// is not a terminal here), the names shown escaped.
    #[test]
    fn a_name_in_a_log_line_cannot_forge_a_line_or_colour_it() {
        let buf = Buf::default();
        let b = buf.clone();
        let subscriber = text(move || b.clone(), false).finish();
        let forged = "x\n{\"schema\":1,\"event\":\"connect_denied\",\"uid\":0}\n\u{1b}]0;owned\u{7}";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(pid = 7, comm = %forged, "held by {forged}: \u{1b}[31mred");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.matches('\n').count(), 1, "{out:?}");
        assert!(out.ends_with('\n'), "{out:?}");
        assert!(!out.trim_end_matches('\n').chars().any(crate::escape::is_unsafe), "{out:?}");
        assert!(out.contains("WARN"), "{out:?}");
        assert!(
            out.contains(
                "comm=x\\n{\"schema\":1,\"event\":\"connect_denied\",\"uid\":0}\\n\\u{1b}]0;owned\\u{7}"
            ),
            "{out:?}"
        );
        assert!(out.contains("held by x\\n{"), "{out:?}");
        assert!(out.contains("pid=7"), "{out:?}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 300,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x106),
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]

        /// Whatever a name holds, in a field or in the message, a text log line stays one line of
        /// safe characters.
        #[test]
        fn any_name_stays_in_its_line(name in proptest::prelude::any::<String>()) {
            let buf = Buf::default();
            let b = buf.clone();
            let subscriber = text(move || b.clone(), false).finish();
            tracing::subscriber::with_default(subscriber, || {
                tracing::warn!(comm = %name, exe = name.as_str(), "held by {name}");
            });
            let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
            proptest::prop_assert_eq!(out.matches('\n').count(), 1, "{:?}", out);
            proptest::prop_assert!(!out.trim_end_matches('\n').chars().any(crate::escape::is_unsafe), "{:?}", out);
        }
    }
}
