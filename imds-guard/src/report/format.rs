//! The shape of the lines the sinks write (`imds-guard run --event-format`): imds-guard's own
//! JSON (docs/EVENTS.md), OCSF or ECS (`ocsf.rs`, `ecs.rs`, which take what they share from
//! here; `report::render` picks one). The event socket always carries the native shape, which
//! `imds-guard events` and `suggest` read.
//!
//! Both schema mappings are pure functions of the typed [`Event`] and a [`Context`] (the host's
//! name and the time the line is made), so that they are unit-tested and validated against the
//! schemas without a daemon (tests/tests/siem_schemas.rs).

use std::time::SystemTime;

use serde_json::{Map, Value};

use super::{Event, Stamped};

/// `--event-format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EventFormat {
    /// imds-guard's own JSON lines (docs/EVENTS.md).
    #[default]
    Json,
    /// Open Cybersecurity Schema Framework 1.8.0 (Network Activity, HTTP Activity, Application
    /// Lifecycle).
    Ocsf,
    /// Elastic Common Schema 9.4.0.
    Ecs,
}

/// What an event line says besides the event: which host it comes from and when it is written
/// (the time of the daemon's own events, which carry none, and of repeat summaries).
#[derive(Clone, Debug)]
pub struct Context {
    pub hostname: Option<String>,
    pub now: SystemTime,
}

impl Context {
    /// This host (the name of the daemon's UTS namespace, the node's under systemd and in a pod
    /// with `hostNetwork`), now.
    #[must_use]
    pub fn here() -> Self {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
        let hostname = hostname.map(|h| h.trim().to_owned()).filter(|h| !h.is_empty());
        Context { hostname, now: SystemTime::now() }
    }
}

/// The product, as both schemas name it.
pub const PRODUCT: &str = "imds-guard";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// MITRE ATT&CK: what reaching the metadata service without leave is an attempt at.
pub const TACTIC: (&str, &str) = ("TA0006", "Credential Access");
pub const TECHNIQUE: (&str, &str) = ("T1552", "Unsecured Credentials");
pub const SUB_TECHNIQUE: (&str, &str) = ("T1552.005", "Cloud Instance Metadata API");

/// The event's native fields (as docs/EVENTS.md lists them) without `schema` and `event`: what a
/// mapping did not place goes under `unmapped` (OCSF) or `imds_guard` (ECS).
#[must_use]
pub fn native_fields(event: &Event) -> Map<String, Value> {
    match serde_json::to_value(Stamped { schema: super::SCHEMA_VERSION, event: event.clone() }) {
        Ok(Value::Object(mut o)) => {
            o.remove("schema");
            o.remove("event");
            o
        }
        _ => Map::new(),
    }
}

/// The native fields a mapping places in its process object, which a summary (no pid) lacks.
pub const PROCESS_KEYS: [&str; 8] =
    ["pid", "tid", "gid", "comm", "exe", "container_id", "container_runtime", "ancestors"];

/// A summary as its native line shows it: without the first occurrence's pid, tid and executable
/// (the repeats were other processes); other events as they are.
#[must_use]
pub fn as_written(ev: &Event) -> std::borrow::Cow<'_, Event> {
    if !ev.is_summary() {
        return std::borrow::Cow::Borrowed(ev);
    }
    let mut ev = ev.clone();
    let who = match &mut ev {
        Event::ConnectDeniedRepeated(r) => Some(&mut r.sample.who),
        Event::Imdsv1RequestRepeated(r)
        | Event::TokenPutForwardedRepeated(r)
        | Event::ImdsRequestUnclassifiedRepeated(r)
        | Event::RequestDeniedRepeated(r) => Some(&mut r.sample.who),
        Event::CredentialsFetchedRepeated(r) => Some(&mut r.sample.who),
        _ => None,
    };
    if let Some(w) = who {
        (w.pid, w.tid, w.exe) = (0, 0, None);
    }
    std::borrow::Cow::Owned(ev)
}

/// Removes `keys` (mapped elsewhere) from `fields`; `None` when nothing is left.
#[must_use]
pub fn rest(mut fields: Map<String, Value>, keys: &[&str]) -> Option<Value> {
    for k in keys {
        fields.remove(*k);
    }
    fields.retain(|_, v| !v.is_null());
    (!fields.is_empty()).then_some(Value::Object(fields))
}

/// Milliseconds since the Unix epoch of an RFC 3339 time (`None` when it does not parse).
#[must_use]
pub fn millis(rfc3339: &str) -> Option<i64> {
    humantime::parse_rfc3339(rfc3339).ok().map(epoch_millis)
}

#[must_use]
pub fn epoch_millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// RFC 3339, UTC, microseconds: as the native events write times.
#[must_use]
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// The last name of a path (`/usr/bin/curl` → `curl`), for the schemas' file names.
#[must_use]
pub fn file_name(path: &str) -> &str {
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    path.rsplit('/').next().filter(|n| !n.is_empty()).unwrap_or(path)
}

/// When the event happened, or `ctx.now` for the daemon's events (which carry no time) and for
/// repeat summaries (written when their window ends; their first occurrence is their start).
#[must_use]
pub fn occurred(event: &Event, ctx: &Context) -> SystemTime {
    if event.is_summary() {
        return ctx.now;
    }
    event.time().and_then(|t| humantime::parse_rfc3339(t).ok()).unwrap_or(ctx.now)
}

/// Sets `path` (`a.b.c`) in `obj`, making the objects on the way.
pub fn put(obj: &mut Map<String, Value>, path: &str, value: impl Into<Value>) {
    match path.split_once('.') {
        None => {
            obj.insert(path.to_owned(), value.into());
        }
        Some((head, tail)) => {
            let inner = obj.entry(head.to_owned()).or_insert_with(|| Value::Object(Map::new()));
            if !inner.is_object() {
                *inner = Value::Object(Map::new());
            }
            if let Value::Object(m) = inner {
                put(m, tail, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::render;

    #[test]
    fn helpers() {
        assert_eq!(millis("2026-11-23T20:04:05.123456Z"), Some(1_795_464_245_123));
        assert_eq!(millis("not a time"), None);
        assert_eq!(file_name("/usr/bin/curl (deleted)"), "curl");
        assert_eq!(file_name("curl"), "curl");
        let mut o = Map::new();
        put(&mut o, "a.b.c", 1);
        put(&mut o, "a.b.d", "x");
        put(&mut o, "e", true);
        assert_eq!(Value::Object(o), serde_json::json!({"a": {"b": {"c": 1, "d": "x"}}, "e": true}));
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_795_464_245_123_456);
        assert_eq!(rfc3339(t), "2026-11-23T20:04:05.123456Z");
    }

    fn hostile(comm: String, exe: String, cgroup: String, pod: String) -> Event {
        use crate::report::event::{Ancestor, Connect, Pod, Who};
        Event::ConnectDenied(Connect {
            enforced: true,
            time: "2026-11-23T20:04:05.123456Z".into(),
            who: Who {
                pid: 7,
                tid: 7,
                uid: 1,
                gid: 1,
                comm: comm.clone(),
                exe: Some(exe.clone()),
                cgroup: Some(cgroup),
                cgroup_id: 1,
                pod: Some(Pod { namespace: pod.clone(), name: pod.clone(), uid: pod, container: None }),
                ancestors: vec![Ancestor { pid: 6, comm, exe: Some(exe) }],
                ..Who::default()
            },
            dst: "169.254.169.254".into(),
            port: 80,
            family: "ipv4".into(),
            generation: 1,
            reason: None,
            rule: None,
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 200,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x0c5f),
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]

        /// Whatever a process names itself, its executable, cgroup or pod, an OCSF or ECS line
        /// stays one line of JSON that carries the name as it was, in the field for it.
        #[test]
        fn names_a_process_chose_stay_data(comm in ".*", exe in ".*", cgroup in ".*", pod in ".*") {
            let ev = hostile(comm.clone(), exe.clone(), cgroup.clone(), pod.clone());
            let ctx = Context { hostname: Some("h".into()), now: SystemTime::UNIX_EPOCH };
            for format in [EventFormat::Ocsf, EventFormat::Ecs] {
                let line = render(&ev, format, &ctx).unwrap().to_string();
                proptest::prop_assert!(!line.contains('\n') && !line.contains('\r'), "{line}");
                let v: Value = serde_json::from_str(&line).unwrap();
                let (name, path, group, ns) = match format {
                    EventFormat::Ocsf => (
                        &v["actor"]["process"]["name"],
                        &v["actor"]["process"]["file"]["path"],
                        &v["unmapped"]["cgroup"],
                        &v["unmapped"]["pod"]["namespace"],
                    ),
                    _ => (
                        &v["process"]["name"],
                        &v["process"]["executable"],
                        &v["imds_guard"]["cgroup"],
                        &v["orchestrator"]["namespace"],
                    ),
                };
                proptest::prop_assert_eq!(name.as_str(), Some(comm.as_str()));
                proptest::prop_assert_eq!(path.as_str(), Some(exe.as_str()));
                proptest::prop_assert_eq!(group.as_str(), Some(cgroup.as_str()));
                proptest::prop_assert_eq!(ns.as_str(), Some(pod.as_str()));
            }
        }
    }
}
