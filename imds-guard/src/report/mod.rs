//! What imds-guard tells operators. Producers (the daemon's event loop with kernel records and
//! NFLOG packets, reloads, the pin watch) hand typed [`Event`]s to a [`Reporter`]; the daemon's
//! reporter, [`Consumers`], gives each to the metrics and the table of what was seen (by
//! variant), then makes its JSON line once ([`Line`]) for the sinks (stdout, journal, file) and
//! the event socket; the sinks' line is in the format `--event-format` chose (native, OCSF or
//! ECS: [`format`]), the socket's always native.
//!
//! ```text
//! kernel record ─ enrich ─┐
//! NFLOG packet ───────────┼─ aggregate ─ Reporter ─┬─ metrics, seen (typed)
//! daemon (reload, pins) ──┘                        └─ Line (JSON once) ─ sinks, socket
//! ```

use std::{path::PathBuf, sync::Arc};

pub mod aggregate;
pub mod bound;
pub mod ecs;
pub mod enrich;
pub mod event;
pub mod format;
pub mod human;
pub mod journal;
pub mod metrics;
pub mod ocsf;
pub mod seen;
pub mod sinks;
pub mod socket;
pub mod suggest;

pub use event::{Event, SCHEMA_VERSION, Stamped};

/// `event` in `format`; `None` for the native format (its line is the native one). Here, above
/// `format`, `ocsf` and `ecs`, so that the mappings take shared pieces from `format` without
/// `format` importing them back.
#[must_use]
pub fn render(
    event: &Event,
    format: format::EventFormat,
    ctx: &format::Context,
) -> Option<serde_json::Value> {
    match format {
        format::EventFormat::Json => None,
        format::EventFormat::Ocsf => Some(ocsf::event(event, ctx)),
        format::EventFormat::Ecs => Some(ecs::event(event, ctx)),
    }
}

/// Where producers hand their events. Implemented by the daemon's [`Consumers`]; a test can
/// collect events instead.
pub trait Reporter: Send + Sync {
    /// One event, delivered on its own.
    fn report(&self, event: Event);
    /// One repeat of `sample` that was aggregated: counted, not written.
    fn repeat(&self, _sample: &Event) {}
}

/// One event, serialised once (with `schema`) for every sink: its native JSON line (the event
/// socket's) and top-level fields (the journal's fields), and the line in the sinks' format.
#[derive(Clone, Debug)]
pub struct Line {
    pub event: Arc<Event>,
    pub fields: Arc<serde_json::Map<String, serde_json::Value>>,
    pub json: Arc<str>,
    /// What stdout, the file and the journal's `IMDS_GUARD_JSON` get: `json`, or the event as
    /// OCSF or ECS.
    pub out: Arc<str>,
}

impl Line {
    /// The native line only.
    #[must_use]
    pub fn of(event: Event) -> Self {
        let fields = match serde_json::to_value(Stamped { schema: SCHEMA_VERSION, event: event.clone() }) {
            Ok(serde_json::Value::Object(o)) => o,
            // Every event serialises to an object; nothing else is ever written.
            _ => serde_json::Map::new(),
        };
        let json: Arc<str> = serde_json::Value::Object(fields.clone()).to_string().into();
        Line { event: Arc::new(event), fields: Arc::new(fields), out: json.clone(), json }
    }

    /// The native line, and the sinks' line in `format`.
    #[must_use]
    pub fn formatted(event: Event, format: format::EventFormat, ctx: &format::Context) -> Self {
        let mut line = Line::of(event);
        if let Some(v) = render(&line.event, format, ctx) {
            line.out = v.to_string().into();
        }
        line
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
    /// The sinks' format (`--event-format`).
    pub format: format::EventFormat,
    /// This host's name, for the OCSF and ECS lines.
    pub hostname: Option<String>,
}

impl Reporter for Consumers {
    fn report(&self, event: Event) {
        // A `*_repeated` line summarises repeats already counted one by one (`repeat`).
        if !event.is_summary() {
            self.metrics.observe(&event, false);
            self.seen.observe(&event, 1);
        }
        let ctx = format::Context { hostname: self.hostname.clone(), now: std::time::SystemTime::now() };
        self.output.send(&Line::formatted(event, self.format, &ctx));
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
