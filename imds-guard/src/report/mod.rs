//! What imds-guard tells operators. Producers (the daemon's event loop with kernel records and
//! NFLOG packets, reloads, the pin watch) hand typed [`Event`]s to a [`Reporter`]; the daemon's
//! reporter, [`Consumers`], gives each to the metrics and the table of what was seen (by
//! variant), then makes its JSON line once ([`Line`]) for the sinks (stdout, journal, file) and
//! the event socket.
//!
//! ```text
//! kernel record ─ enrich ─┐
//! NFLOG packet ───────────┼─ aggregate ─ Reporter ─┬─ metrics, seen (typed)
//! daemon (reload, pins) ──┘                        └─ Line (JSON once) ─ sinks, socket
//! ```

use std::{path::PathBuf, sync::Arc};

pub mod aggregate;
pub mod enrich;
pub mod event;
pub mod human;
pub mod journal;
pub mod metrics;
pub mod seen;
pub mod sinks;
pub mod socket;
pub mod suggest;

pub use event::{Event, SCHEMA_VERSION, Stamped};

/// Where producers hand their events. Implemented by the daemon's [`Consumers`]; a test can
/// collect events instead.
pub trait Reporter: Send + Sync {
    /// One event, delivered on its own.
    fn report(&self, event: Event);
    /// One repeat of `sample` that was aggregated: counted, not written.
    fn repeat(&self, _sample: &Event) {}
}

/// One event, serialised once (with `schema`) for every sink: its JSON line, and its top-level
/// fields (for the journal).
#[derive(Clone, Debug)]
pub struct Line {
    pub event: Arc<Event>,
    pub fields: Arc<serde_json::Map<String, serde_json::Value>>,
    pub json: Arc<str>,
}

impl Line {
    #[must_use]
    pub fn of(event: Event) -> Self {
        let fields = match serde_json::to_value(Stamped { schema: SCHEMA_VERSION, event: event.clone() }) {
            Ok(serde_json::Value::Object(o)) => o,
            // Every event serialises to an object; nothing else is ever written.
            _ => serde_json::Map::new(),
        };
        let json = serde_json::Value::Object(fields.clone()).to_string();
        Line { event: Arc::new(event), fields: Arc::new(fields), json: json.into() }
    }
}

/// The daemon's consumers of events: the sinks and the live stream, the metrics, and the table
/// of what was seen (for `suggest`).
pub struct Consumers {
    pub output: sinks::Output,
    pub metrics: metrics::Metrics,
    pub seen: seen::Seen,
    /// The policy file the daemon runs with (for `suggest`).
    pub policy: PathBuf,
}

impl Reporter for Consumers {
    fn report(&self, event: Event) {
        // A `*_repeated` line summarises repeats already counted one by one (`repeat`).
        if !event.is_summary() {
            self.metrics.observe(&event, false);
            self.seen.observe(&event, 1);
        }
        self.output.send(&Line::of(event));
    }

    fn repeat(&self, sample: &Event) {
        self.metrics.observe(sample, true);
        self.seen.observe(sample, 1);
    }
}

/// A reporter that prints each event as a JSON line on stdout (commands outside the daemon).
pub struct Stdout;

impl Reporter for Stdout {
    fn report(&self, event: Event) {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", Line::of(event).json);
        let _ = out.flush();
    }
}
