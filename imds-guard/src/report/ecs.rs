//! Events as ECS 9.4.0 (Elastic Common Schema) documents, for Elastic and the SIEMs that read ECS.
//!
//! `event.kind` is `event` throughout (imds-guard reports what it saw and did; it raises no
//! alerts of a detection rule). Categories and types, from ECS's allowed values:
//!
//! | native event | `event.category` | `event.type` | `event.outcome` |
//! | --- | --- | --- | --- |
//! | `connect_denied`, `forward_denied`, `output_denied` | `network` | `connection`, `denied` (enforced) / `allowed` (monitor mode) | `failure` / `success` |
//! | request events | `network`, `web` | `access`, `denied` / `allowed` | `failure` / `success` |
//! | `preexisting_connection` | `network` | `connection`, `end` (closed) / `info` | `success` |
//! | `guard_started` | `process` | `start` | `success` |
//! | `policy_reloaded`, `policy_reload_failed` | `configuration` | `change` | `success` / `failure` |
//! | `programs_detached` | `configuration` | `deletion` | `success` |
//! | `pins_lost`, `pins_restored` | `configuration` | `change` | `failure` / `success` |
//! | `connections_uninspected` | `network` | `info` | `unknown` |
//!
//! `event.action` is the native event name. The process (`process.*`, its parent as
//! `process.parent.*`), user (`user.*`, `group.*`), destination, container and Kubernetes pod
//! (`orchestrator.*`) have their ECS fields; violations name MITRE ATT&CK T1552.005 under
//! `threat.*`. Everything else is under `imds_guard.*` by its native name (ECS custom fields:
//! one namespace of our own, never a field ECS defines).

use serde_json::{Map, Value};

use super::{
    event::{Event, Packet, Preexisting, Request, Who},
    format::{self, Context, put},
};

/// The ECS version the documents follow (`ecs.version`).
pub const VERSION: &str = "9.4.0";

/// The event as one ECS document (nested objects).
#[must_use]
pub fn event(ev: &Event, ctx: &Context) -> Value {
    let ev = &*format::as_written(ev);
    let mut o = base(ev, ctx);
    let mapped: &[&str] = match ev {
        Event::ConnectDenied(c) => {
            violation(&mut o, c.enforced, &["network"], "connection");
            process(&mut o, &c.who);
            destination(&mut o, &c.dst, c.port, Some(&c.family), "tcp");
            CONNECT_KEYS
        }
        Event::ConnectDeniedRepeated(r) => {
            let c = &r.sample;
            violation(&mut o, c.enforced, &["network"], "connection");
            process(&mut o, &c.who);
            destination(&mut o, &c.dst, c.port, Some(&c.family), "tcp");
            CONNECT_KEYS
        }
        Event::Imdsv1Request(q)
        | Event::TokenPutForwarded(q)
        | Event::ImdsRequestUnclassified(q)
        | Event::RequestDenied(q) => {
            request(&mut o, q);
            REQUEST_KEYS
        }
        Event::Imdsv1RequestRepeated(r)
        | Event::TokenPutForwardedRepeated(r)
        | Event::ImdsRequestUnclassifiedRepeated(r)
        | Event::RequestDeniedRepeated(r) => {
            request(&mut o, &r.sample);
            REQUEST_KEYS
        }
        Event::CredentialsFetched(c) => {
            credentials(&mut o, c);
            CREDENTIALS_KEYS
        }
        Event::CredentialsFetchedRepeated(r) => {
            credentials(&mut o, &r.sample);
            CREDENTIALS_KEYS
        }
        Event::ForwardDenied(p) | Event::OutputDenied(p) => {
            packet(&mut o, p);
            PACKET_KEYS
        }
        Event::ForwardDeniedRepeated(r) | Event::OutputDeniedRepeated(r) => {
            packet(&mut o, &r.sample);
            PACKET_KEYS
        }
        Event::PreexistingConnection(p) => {
            preexisting(&mut o, p);
            PREEXISTING_KEYS
        }
        _ => {
            lifecycle(&mut o, ev);
            if matches!(ev, Event::PolicyReloadFailed(_)) { &["error"] } else { &[] }
        }
    };
    if ev.is_summary() {
        if let Some(first) = ev.time() {
            put(&mut o, "event.start", first);
        }
        put(&mut o, "event.end", format::rfc3339(ctx.now));
    }
    let mut mapped = mapped.to_vec();
    if ev.who().is_some_and(|w| w.pid == 0) {
        mapped.retain(|k| !format::PROCESS_KEYS.contains(k));
    }
    if let Some(rest) = format::rest(format::native_fields(ev), &mapped) {
        o.insert("imds_guard".into(), rest);
    }
    Value::Object(o)
}

const CONNECT_KEYS: &[&str] = &[
    "time",
    "pid",
    "tid",
    "uid",
    "gid",
    "user",
    "comm",
    "exe",
    "container_id",
    "container_runtime",
    "pod",
    "dst",
    "port",
    "family",
    "first_time",
];
const REQUEST_KEYS: &[&str] = &[
    "time",
    "pid",
    "tid",
    "uid",
    "gid",
    "user",
    "comm",
    "exe",
    "container_id",
    "container_runtime",
    "pod",
    "dst",
    "port",
    "family",
    "method",
    "path",
    "first_time",
];
const CREDENTIALS_KEYS: &[&str] = &[
    "time",
    "pid",
    "tid",
    "uid",
    "gid",
    "user",
    "comm",
    "exe",
    "container_id",
    "container_runtime",
    "pod",
    "dst",
    "port",
    "family",
    "path",
    "first_time",
];
const PACKET_KEYS: &[&str] =
    &["time", "src", "dst", "port", "protocol", "family", "in_interface", "uid", "gid", "user", "first_time"];
const PREEXISTING_KEYS: &[&str] = &["pid", "uid", "gid", "comm", "exe", "dst", "port"];

/// `@timestamp`, `ecs`, `message`, `event` basics, the observer (imds-guard) and the host.
fn base(ev: &Event, ctx: &Context) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("@timestamp".into(), format::rfc3339(format::occurred(ev, ctx)).into());
    put(&mut o, "ecs.version", VERSION);
    o.insert("message".into(), super::human::line(ev).into());
    put(&mut o, "event.kind", "event");
    put(&mut o, "event.action", ev.name());
    put(&mut o, "event.module", "imds_guard");
    put(&mut o, "event.dataset", "imds_guard.events");
    put(&mut o, "event.provider", format::PRODUCT);
    put(&mut o, "observer.type", "firewall");
    put(&mut o, "observer.vendor", format::PRODUCT);
    put(&mut o, "observer.product", format::PRODUCT);
    put(&mut o, "observer.version", format::VERSION);
    if let Some(h) = &ctx.hostname {
        put(&mut o, "observer.hostname", h.as_str());
        put(&mut o, "host.hostname", h.as_str());
    }
    o
}

/// Severity as Elastic's rules number it: 21 low, 47 medium, 73 high.
fn classify(o: &mut Map<String, Value>, categories: &[&str], types: &[&str], outcome: &str, severity: u32) {
    put(o, "event.category", categories.to_vec());
    put(o, "event.type", types.to_vec());
    put(o, "event.outcome", outcome);
    put(o, "event.severity", severity);
}

/// A violation: refused (`denied`, `failure`) or, in monitor mode, let through (`allowed`,
/// `success`), with the ATT&CK technique it is an attempt at.
fn violation(o: &mut Map<String, Value>, enforced: bool, categories: &[&str], kind: &str) {
    let (verdict, outcome) = if enforced { ("denied", "failure") } else { ("allowed", "success") };
    classify(o, categories, &[kind, verdict], outcome, 47);
    put(o, "threat.framework", "MITRE ATT&CK");
    put(o, "threat.tactic.id", vec![format::TACTIC.0]);
    put(o, "threat.tactic.name", vec![format::TACTIC.1]);
    put(o, "threat.technique.id", vec![format::TECHNIQUE.0]);
    put(o, "threat.technique.name", vec![format::TECHNIQUE.1]);
    put(o, "threat.technique.subtechnique.id", vec![format::SUB_TECHNIQUE.0]);
    put(o, "threat.technique.subtechnique.name", vec![format::SUB_TECHNIQUE.1]);
}

fn destination(o: &mut Map<String, Value>, dst: &str, port: u16, family: Option<&str>, transport: &str) {
    put(o, "destination.ip", dst);
    put(o, "destination.address", dst);
    put(o, "destination.port", port);
    if let Some(f) = family {
        put(o, "network.type", f);
    }
    put(o, "network.transport", transport);
}

fn user(o: &mut Map<String, Value>, uid: u32, gid: Option<u32>, name: Option<&str>) {
    put(o, "user.id", uid.to_string());
    if let Some(n) = name {
        put(o, "user.name", n);
    }
    if let Some(g) = gid {
        put(o, "group.id", g.to_string());
    }
}

/// `process.*` (when the event names a process: a summary has no pid), `user.*`, `group.*`,
/// `container.*` and `orchestrator.*`. The first ancestor is `process.parent`; the chain stays
/// whole under `imds_guard.ancestors`.
fn process(o: &mut Map<String, Value>, who: &Who) {
    user(o, who.uid, Some(who.gid), who.user.as_deref());
    if who.pid != 0 {
        put(o, "process.pid", who.pid);
        put(o, "process.thread.id", who.tid);
        put(o, "process.name", who.comm.as_str());
        put(o, "process.real_user.id", who.uid.to_string());
        put(o, "process.real_group.id", who.gid.to_string());
        if let Some(n) = &who.user {
            put(o, "process.real_user.name", n.as_str());
        }
        if let Some(exe) = &who.exe {
            put(o, "process.executable", exe.as_str());
        }
        if let Some(parent) = who.ancestors.first() {
            put(o, "process.parent.pid", parent.pid);
            put(o, "process.parent.name", parent.comm.as_str());
            if let Some(exe) = &parent.exe {
                put(o, "process.parent.executable", exe.as_str());
            }
        }
        if let Some(id) = &who.container_id {
            put(o, "container.id", id.as_str());
        }
        if let Some(rt) = who.container_runtime.and_then(|r| serde_json::to_value(r).ok()) {
            put(o, "container.runtime", rt);
        }
    }
    if let Some(pod) = &who.pod {
        put(o, "orchestrator.type", "kubernetes");
        put(o, "orchestrator.namespace", pod.namespace.as_str());
        put(o, "orchestrator.resource.type", "pod");
        put(o, "orchestrator.resource.name", pod.name.as_str());
        put(o, "orchestrator.resource.id", pod.uid.as_str());
        if let Some(c) = &pod.container {
            put(o, "container.name", c.as_str());
        }
    }
}

fn request(o: &mut Map<String, Value>, q: &Request) {
    violation(o, q.enforced, &["network", "web"], "access");
    if q.credentials || q.path.as_deref() == Some("/latest/api/token") {
        put(o, "event.severity", 73);
    }
    process(o, &q.who);
    destination(o, &q.dst, q.port, Some(&q.family), "tcp");
    put(o, "network.protocol", "http");
    if let Some(m) = q.method.as_deref().filter(|m| *m != "OTHER") {
        put(o, "http.request.method", m);
    }
    if let Some(p) = &q.path {
        put(o, "url.path", p.as_str());
    }
}

/// Credentials a process received: an allowed access, informational; the access key id, role
/// and expiry under `imds_guard.*` (ECS has no field for a cloud access key id).
fn credentials(o: &mut Map<String, Value>, c: &super::event::Credentials) {
    classify(o, &["network", "web"], &["access", "allowed"], "success", 21);
    process(o, &c.who);
    destination(o, &c.dst, c.port, Some(&c.family), "tcp");
    put(o, "network.protocol", "http");
    put(o, "http.request.method", "GET");
    if let Some(p) = &c.path {
        put(o, "url.path", p.as_str());
    }
}

fn packet(o: &mut Map<String, Value>, p: &Packet) {
    violation(o, p.enforced, &["network"], "connection");
    put(o, "source.ip", p.src.as_str());
    put(o, "source.address", p.src.as_str());
    destination(o, &p.dst, p.port, Some(&p.family), &p.protocol);
    if let Some(i) = &p.in_interface {
        put(o, "observer.ingress.interface.name", i.as_str());
    }
    if let Some(uid) = p.uid {
        user(o, uid, p.gid, p.user.as_deref());
    }
}

fn preexisting(o: &mut Map<String, Value>, p: &Preexisting) {
    let types: &[&str] = if p.closed { &["connection", "end"] } else { &["connection", "info"] };
    classify(o, &["network"], types, "success", if p.allowed { 21 } else { 47 });
    user(o, p.uid, Some(p.gid), None);
    put(o, "process.pid", p.pid);
    put(o, "process.name", p.comm.as_str());
    if let Some(exe) = &p.exe {
        put(o, "process.executable", exe.as_str());
    }
    // A connection found in /proc: its family is not recorded.
    destination(o, &p.dst, p.port, None, "tcp");
}

fn lifecycle(o: &mut Map<String, Value>, ev: &Event) {
    let (category, kind, outcome, severity) = match ev {
        Event::GuardStarted(_) => ("process", "start", "success", 21),
        Event::PolicyReloaded(_) => ("configuration", "change", "success", 21),
        Event::PolicyReloadFailed(f) => {
            put(o, "error.message", f.error.as_str());
            ("configuration", "change", "failure", 47)
        }
        Event::ProgramsDetached(_) => ("configuration", "deletion", "success", 73),
        Event::PinsLost(_) => ("configuration", "change", "failure", 47),
        Event::PinsRestored(_) => ("configuration", "change", "success", 21),
        Event::ConnectionsUninspected(_) => ("network", "info", "unknown", 73),
        _ => ("process", "info", "unknown", 21),
    };
    classify(o, &[category], &[kind], outcome, severity);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::event::{Ancestor, Connect, Pod, PolicyReloadFailed};
    use serde_json::json;

    fn ctx() -> Context {
        Context {
            hostname: Some("node-1".into()),
            now: std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
        }
    }

    fn denied() -> Event {
        Event::ConnectDenied(Connect {
            enforced: true,
            time: "2026-11-23T20:04:05.123456Z".into(),
            who: Who {
                pid: 4242,
                tid: 4243,
                uid: 1000,
                gid: 1001,
                user: Some("alice".into()),
                comm: "curl".into(),
                exe: Some("/usr/bin/curl".into()),
                cgroup: Some("/kubepods/x".into()),
                cgroup_id: 9,
                pod: Some(Pod {
                    namespace: "team".into(),
                    name: "web-0".into(),
                    uid: "u".into(),
                    container: None,
                }),
                ancestors: vec![Ancestor { pid: 4200, comm: "sh".into(), exe: None }],
                ..Who::default()
            },
            dst: "169.254.169.254".into(),
            port: 80,
            family: "ipv4".into(),
            generation: 3,
            reason: None,
            rule: None,
        })
    }

    #[test]
    fn a_refused_connect_is_a_denied_network_connection() {
        let v = event(&denied(), &ctx());
        assert_eq!(v["@timestamp"], "2026-11-23T20:04:05.123456Z");
        assert_eq!(v["event"]["category"], json!(["network"]));
        assert_eq!(v["event"]["type"], json!(["connection", "denied"]));
        assert_eq!(
            (v["event"]["outcome"].as_str(), v["event"]["action"].as_str()),
            (Some("failure"), Some("connect_denied"))
        );
        assert_eq!(v["process"]["pid"], 4242);
        assert_eq!(v["process"]["parent"], json!({"pid": 4200, "name": "sh"}));
        assert_eq!(v["user"], json!({"id": "1000", "name": "alice"}));
        assert_eq!(v["destination"]["ip"], "169.254.169.254");
        assert_eq!(v["orchestrator"]["resource"]["name"], "web-0");
        assert_eq!(v["threat"]["technique"]["subtechnique"]["id"], json!(["T1552.005"]));
        assert_eq!(v["imds_guard"]["generation"], 3);
        assert_eq!(v["imds_guard"]["ancestors"][0]["comm"], "sh");
        assert!(v["imds_guard"].get("pid").is_none(), "{v}");
    }

    #[test]
    fn a_failed_reload_is_a_failed_configuration_change() {
        let ev = Event::PolicyReloadFailed(PolicyReloadFailed {
            generation: 2,
            error: "bad".into(),
            reloads: 1,
            reload_failures: 1,
        });
        let v = event(&ev, &ctx());
        assert_eq!(v["event"]["category"], json!(["configuration"]));
        assert_eq!(v["event"]["outcome"], "failure");
        assert_eq!(v["error"]["message"], "bad");
        assert_eq!(v["@timestamp"], "2027-01-15T08:00:00.000000Z");
        let rep = denied().repeated(4, 10.0).unwrap();
        let v = event(&rep, &ctx());
        assert_eq!(v["event"]["start"], "2026-11-23T20:04:05.123456Z");
        assert_eq!(
            (v["imds_guard"]["count"].as_u64(), v["imds_guard"]["comm"].as_str()),
            (Some(4), Some("curl"))
        );
    }
}
