//! Events as OCSF 1.8.0 (Open Cybersecurity Schema Framework, schema.ocsf.io), for Security Lake
//! and the SIEMs that read OCSF beside GuardDuty's and Falco's findings.
//!
//! | native event | OCSF class (uid) | activity |
//! | --- | --- | --- |
//! | `connect_denied` | Network Activity (4001) | Refuse (enforced) / Open (monitor mode) |
//! | `forward_denied`, `output_denied` | Network Activity (4001) | Refuse / Open |
//! | `preexisting_connection` | Network Activity (4001) | Reset (closed) / Traffic |
//! | `imdsv1_request`, `token_put_forwarded`, `imds_request_unclassified` | HTTP Activity (4002) | the method (Get, Put, ...; Other) |
//! | `credentials_fetched` | HTTP Activity (4002) | Get (allowed; the key id and the role under `unmapped`) |
//! | `guard_started` | Application Lifecycle (6002) | Start |
//! | `policy_reloaded`, `policy_reload_failed` | Application Lifecycle (6002) | Update (status Success / Failure) |
//! | `programs_detached` | Application Lifecycle (6002) | Disable |
//! | `pins_lost`, `pins_restored`, `connections_uninspected`, `stream_lagged` | Application Lifecycle (6002) | Other (`activity_name` says which) |
//!
//! The daemon's own events are Application Lifecycle events of the `app` imds-guard: that is what
//! they are (the guard started, was updated, disabled), and it keeps them in the same stream as
//! the violations rather than in a second, native one. A `*_repeated` summary is its event's class
//! with `count` (the repeats), `start_time` (the first occurrence) and `time` (when it was
//! written). Violations carry MITRE ATT&CK T1552.005 in `attacks`. `metadata.event_code` is the
//! native event name; every native field with no place in OCSF is under `unmapped`, by its native
//! name.

use serde_json::{Map, Value, json};

use super::{
    event::{Credentials, Event, Packet, Preexisting, Request, Who},
    format::{self, Context},
};

/// The OCSF version the events follow (`metadata.version`).
pub const VERSION: &str = "1.8.0";

/// Profiles the events use: `host` (`device`, `actor`), `container` (`process.container`),
/// `security_control` (`action`, `disposition`, `attacks`), `linux/linux_users` (the Linux
/// extension's `process.group`).
const PROFILES: [&str; 4] = ["host", "container", "security_control", "linux/linux_users"];

struct Class {
    uid: u32,
    name: &'static str,
    category_uid: u32,
    category: &'static str,
}

const NETWORK_ACTIVITY: Class =
    Class { uid: 4001, name: "Network Activity", category_uid: 4, category: "Network Activity" };
const HTTP_ACTIVITY: Class =
    Class { uid: 4002, name: "HTTP Activity", category_uid: 4, category: "Network Activity" };
const APPLICATION_LIFECYCLE: Class =
    Class { uid: 6002, name: "Application Lifecycle", category_uid: 6, category: "Application Activity" };

/// `severity_id` and its caption.
const INFORMATIONAL: (u32, &str) = (1, "Informational");
const MEDIUM: (u32, &str) = (3, "Medium");
const HIGH: (u32, &str) = (4, "High");

/// The event as one OCSF object.
#[must_use]
pub fn event(ev: &Event, ctx: &Context) -> Value {
    let ev = &*format::as_written(ev);
    let native = format::native_fields(ev);
    let (mut o, mapped): (Map<String, Value>, &[&str]) = match ev {
        Event::ConnectDenied(c) => (connect(&c.who, c.enforced, &c.dst, c.port, ev, ctx), CONNECT_KEYS),
        Event::ConnectDeniedRepeated(r) => {
            let c = &r.sample;
            (connect(&c.who, c.enforced, &c.dst, c.port, ev, ctx), CONNECT_KEYS)
        }
        Event::Imdsv1Request(q)
        | Event::TokenPutForwarded(q)
        | Event::ImdsRequestUnclassified(q)
        | Event::RequestDenied(q) => (request(q, ev, ctx), REQUEST_KEYS),
        Event::Imdsv1RequestRepeated(r)
        | Event::TokenPutForwardedRepeated(r)
        | Event::ImdsRequestUnclassifiedRepeated(r)
        | Event::RequestDeniedRepeated(r) => (request(&r.sample, ev, ctx), REQUEST_KEYS),
        Event::CredentialsFetched(c) => (credentials(c, ev, ctx), CREDENTIALS_KEYS),
        Event::CredentialsFetchedRepeated(r) => (credentials(&r.sample, ev, ctx), CREDENTIALS_KEYS),
        Event::ForwardDenied(p) | Event::OutputDenied(p) => (packet(p, ev, ctx), PACKET_KEYS),
        Event::ForwardDeniedRepeated(r) | Event::OutputDeniedRepeated(r) => {
            (packet(&r.sample, ev, ctx), PACKET_KEYS)
        }
        Event::PreexistingConnection(p) => (preexisting(p, ev, ctx), PREEXISTING_KEYS),
        Event::PolicyReloadFailed(_) => (lifecycle(ev, ctx), &["error"]),
        _ => (lifecycle(ev, ctx), &[]),
    };
    if ev.is_summary() {
        o.insert("count".into(), ev.occurrences().into());
        if let Some(first) = ev.time().and_then(format::millis) {
            o.insert("start_time".into(), first.into());
        }
    }
    let mut mapped = mapped.to_vec();
    if ev.who().is_some_and(|w| w.pid == 0) {
        // A summary names no process: its comm, cgroup and container stay under `unmapped`.
        mapped.retain(|k| !format::PROCESS_KEYS.contains(k));
    }
    if let Some(rest) = format::rest(native, &mapped) {
        o.insert("unmapped".into(), rest);
    }
    Value::Object(o)
}

/// Native fields placed elsewhere (the rest goes to `unmapped`).
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
    "ancestors",
    "dst",
    "port",
    "first_time",
    "count",
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
    "ancestors",
    "dst",
    "port",
    "method",
    "path",
    "first_time",
    "count",
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
    "ancestors",
    "dst",
    "port",
    "path",
    "first_time",
    "count",
];
const PACKET_KEYS: &[&str] =
    &["time", "src", "dst", "port", "protocol", "in_interface", "uid", "user", "first_time", "count"];
const PREEXISTING_KEYS: &[&str] = &["pid", "uid", "gid", "comm", "exe", "dst", "port"];

/// The fields every event has: class, activity, severity, time, metadata, the device.
fn base(
    class: &Class,
    activity: (u32, &str),
    severity: (u32, &str),
    ev: &Event,
    ctx: &Context,
) -> Map<String, Value> {
    let time = format::epoch_millis(format::occurred(ev, ctx));
    let mut o = Map::new();
    o.insert("class_uid".into(), class.uid.into());
    o.insert("class_name".into(), class.name.into());
    o.insert("category_uid".into(), class.category_uid.into());
    o.insert("category_name".into(), class.category.into());
    o.insert("activity_id".into(), activity.0.into());
    o.insert("activity_name".into(), activity.1.into());
    o.insert("type_uid".into(), (u64::from(class.uid) * 100 + u64::from(activity.0)).into());
    o.insert("type_name".into(), format!("{}: {}", class.name, activity.1).into());
    o.insert("severity_id".into(), severity.0.into());
    o.insert("severity".into(), severity.1.into());
    o.insert("time".into(), time.into());
    o.insert("message".into(), super::human::line(ev).into());
    o.insert(
        "metadata".into(),
        json!({
            "version": VERSION,
            "product": {"name": format::PRODUCT, "vendor_name": format::PRODUCT, "version": format::VERSION},
            "profiles": PROFILES,
            "event_code": ev.name(),
            "log_name": "events",
        }),
    );
    if let Some(h) = &ctx.hostname {
        // type_id 0 (Unknown): a node may be a server, a VM or an instance; OCSF wants one.
        o.insert("device".into(), json!({"hostname": h, "type_id": 0, "type": "Unknown"}));
    }
    o
}

/// `action_id`/`action` and `disposition_id`/`disposition` of a violation: refused, or (monitor
/// mode) observed and logged.
fn verdict(o: &mut Map<String, Value>, enforced: bool) {
    let ((a, an), (d, dn)) =
        if enforced { ((2, "Denied"), (2, "Blocked")) } else { ((3, "Observed"), (17, "Logged")) };
    o.insert("action_id".into(), a.into());
    o.insert("action".into(), an.into());
    o.insert("disposition_id".into(), d.into());
    o.insert("disposition".into(), dn.into());
    o.insert(
        "attacks".into(),
        json!([{
            "tactic": {"uid": format::TACTIC.0, "name": format::TACTIC.1},
            "technique": {"uid": format::TECHNIQUE.0, "name": format::TECHNIQUE.1},
            "sub_technique": {"uid": format::SUB_TECHNIQUE.0, "name": format::SUB_TECHNIQUE.1},
        }]),
    );
}

fn endpoint(dst: &str, port: u16) -> Value {
    json!({"ip": dst, "port": port})
}

/// Outbound TCP from this host.
fn outbound(protocol: &str) -> Value {
    json!({"protocol_name": protocol, "direction_id": 2, "direction": "Outbound"})
}

fn connect(who: &Who, enforced: bool, dst: &str, port: u16, ev: &Event, ctx: &Context) -> Map<String, Value> {
    let activity = if enforced { (5, "Refuse") } else { (1, "Open") };
    let mut o = base(&NETWORK_ACTIVITY, activity, MEDIUM, ev, ctx);
    verdict(&mut o, enforced);
    o.insert("actor".into(), actor(who));
    o.insert("dst_endpoint".into(), endpoint(dst, port));
    o.insert("connection_info".into(), outbound("tcp"));
    o
}

fn request(q: &Request, ev: &Event, ctx: &Context) -> Map<String, Value> {
    let activity = match q.method.as_deref() {
        Some("GET") => (3, "Get"),
        Some("HEAD") => (4, "Head"),
        Some("POST") => (6, "Post"),
        Some("PUT") => (7, "Put"),
        _ => (99, "Other"),
    };
    let severity =
        if matches!(ev, Event::TokenPutForwarded(_) | Event::TokenPutForwardedRepeated(_)) || q.credentials {
            HIGH
        } else {
            MEDIUM
        };
    let mut o = base(&HTTP_ACTIVITY, activity, severity, ev, ctx);
    verdict(&mut o, q.enforced);
    o.insert("actor".into(), actor(&q.who));
    o.insert("dst_endpoint".into(), endpoint(&q.dst, q.port));
    o.insert("connection_info".into(), outbound("tcp"));
    let mut http = Map::new();
    if let Some(m) = q.method.as_deref().filter(|m| *m != "OTHER") {
        http.insert("http_method".into(), m.into());
    }
    if let Some(p) = &q.path {
        http.insert("url".into(), json!({"path": p, "port": q.port}));
    }
    if !http.is_empty() {
        o.insert("http_request".into(), Value::Object(http));
    }
    o
}

/// Credentials a process received: an allowed HTTP GET (only a GET's response carries them),
/// informational; the access key id, role and expiry have no OCSF field and stay under `unmapped`.
fn credentials(c: &Credentials, ev: &Event, ctx: &Context) -> Map<String, Value> {
    let mut o = base(&HTTP_ACTIVITY, (3, "Get"), INFORMATIONAL, ev, ctx);
    o.insert("action_id".into(), 1.into());
    o.insert("action".into(), "Allowed".into());
    o.insert("disposition_id".into(), 1.into());
    o.insert("disposition".into(), "Allowed".into());
    o.insert("actor".into(), actor(&c.who));
    o.insert("dst_endpoint".into(), endpoint(&c.dst, c.port));
    o.insert("connection_info".into(), outbound("tcp"));
    let mut http = json!({"http_method": "GET"});
    if let Some(p) = &c.path {
        http["url"] = json!({"path": p, "port": c.port});
    }
    o.insert("http_request".into(), http);
    o
}

fn packet(p: &Packet, ev: &Event, ctx: &Context) -> Map<String, Value> {
    let activity = if p.enforced { (5, "Refuse") } else { (1, "Open") };
    let mut o = base(&NETWORK_ACTIVITY, activity, MEDIUM, ev, ctx);
    verdict(&mut o, p.enforced);
    let mut src = json!({"ip": p.src});
    if let Some(i) = &p.in_interface {
        src["interface_name"] = i.as_str().into();
    }
    o.insert("src_endpoint".into(), src);
    o.insert("dst_endpoint".into(), endpoint(&p.dst, p.port));
    let connection = if p.in_interface.is_some() || p.uid.is_none() {
        // Forwarded through this host: from a VM, pod or neighbour, not out of it.
        json!({"protocol_name": p.protocol, "direction_id": 99, "direction": "Forwarded"})
    } else {
        outbound(&p.protocol)
    };
    o.insert("connection_info".into(), connection);
    if let Some(uid) = p.uid {
        o.insert("actor".into(), json!({"user": user(uid, p.user.as_deref())}));
    }
    o
}

fn preexisting(p: &Preexisting, ev: &Event, ctx: &Context) -> Map<String, Value> {
    let activity = if p.closed { (3, "Reset") } else { (6, "Traffic") };
    let mut o = base(&NETWORK_ACTIVITY, activity, if p.allowed { INFORMATIONAL } else { MEDIUM }, ev, ctx);
    let (a, d) = match (p.allowed, p.closed) {
        (true, _) => ((1, "Allowed"), (1, "Allowed")),
        (false, true) => ((2, "Denied"), (21, "Reset")),
        (false, false) => ((3, "Observed"), (17, "Logged")),
    };
    o.insert("action_id".into(), a.0.into());
    o.insert("action".into(), a.1.into());
    o.insert("disposition_id".into(), d.0.into());
    o.insert("disposition".into(), d.1.into());
    let mut process =
        json!({"pid": p.pid, "name": p.comm, "user": user(p.uid, None), "group": {"uid": p.gid.to_string()}});
    if let Some(exe) = &p.exe {
        process["file"] = file(exe);
    }
    o.insert("actor".into(), json!({"process": process, "user": user(p.uid, None)}));
    o.insert("dst_endpoint".into(), endpoint(&p.dst, p.port));
    o.insert("connection_info".into(), outbound("tcp"));
    o
}

/// The daemon's own events, as Application Lifecycle events of imds-guard.
fn lifecycle(ev: &Event, ctx: &Context) -> Map<String, Value> {
    let (activity, severity, ok) = match ev {
        Event::GuardStarted(_) => ((3, "Start"), INFORMATIONAL, Some(true)),
        Event::PolicyReloaded(_) => ((8, "Update"), INFORMATIONAL, Some(true)),
        Event::PolicyReloadFailed(_) => ((8, "Update"), MEDIUM, Some(false)),
        Event::ProgramsDetached(_) => ((7, "Disable"), HIGH, None),
        Event::PinsLost(_) => ((99, "Pins Lost"), MEDIUM, None),
        Event::PinsRestored(_) => ((99, "Pins Restored"), INFORMATIONAL, None),
        Event::ConnectionsUninspected(_) => ((99, "Connections Uninspected"), HIGH, None),
        _ => ((99, "Stream Lagged"), INFORMATIONAL, None),
    };
    let mut o = base(&APPLICATION_LIFECYCLE, activity, severity, ev, ctx);
    o.insert(
        "app".into(),
        json!({"name": format::PRODUCT, "vendor_name": format::PRODUCT, "version": format::VERSION}),
    );
    if let Some(ok) = ok {
        let (id, name) = if ok { (1, "Success") } else { (2, "Failure") };
        o.insert("status_id".into(), id.into());
        o.insert("status".into(), name.into());
    }
    if let Event::PolicyReloadFailed(f) = ev {
        o.insert("status_detail".into(), f.error.as_str().into());
    }
    o
}

fn user(uid: u32, name: Option<&str>) -> Value {
    let mut u = json!({"uid": uid.to_string()});
    if let Some(n) = name {
        u["name"] = n.into();
    }
    u
}

fn file(path: &str) -> Value {
    // type_id 1: Regular File (what an executable is on disk).
    json!({"path": path, "name": format::file_name(path), "type_id": 1, "type": "Regular File"})
}

/// `actor`: the process (when the event names one: a repeat summary has no pid), its user, its
/// container and pod, and its parents as `parent_process`, nested.
fn actor(who: &Who) -> Value {
    let mut actor = json!({"user": user(who.uid, who.user.as_deref())});
    if who.pid == 0 {
        return actor;
    }
    let mut p = json!({
        "pid": who.pid,
        "tid": who.tid,
        "name": who.comm,
        "user": user(who.uid, who.user.as_deref()),
        "group": {"uid": who.gid.to_string()},
    });
    if let Some(exe) = &who.exe {
        p["file"] = file(exe);
    }
    if let Some(c) = container(who) {
        p["container"] = c;
    }
    let mut parent: Option<Value> = None;
    for a in who.ancestors.iter().rev() {
        let mut v = json!({"pid": a.pid, "name": a.comm});
        if let Some(exe) = &a.exe {
            v["file"] = file(exe);
        }
        if let Some(older) = parent.take() {
            v["parent_process"] = older;
        }
        parent = Some(v);
    }
    if let Some(parent) = parent {
        p["parent_process"] = parent;
    }
    actor["process"] = p;
    actor
}

/// `container`: the id and runtime; the pod's uid and the container's name in it (the pod's
/// namespace and name have no place in OCSF's container: they stay under `unmapped.pod`).
fn container(who: &Who) -> Option<Value> {
    let id = who.container_id.as_deref();
    let name = who.pod.as_ref().and_then(|p| p.container.as_deref());
    if id.is_none() && name.is_none() {
        return None;
    }
    let mut c = Map::new();
    if let Some(id) = id {
        c.insert("uid".into(), id.into());
    }
    if let Some(name) = name {
        c.insert("name".into(), name.into());
    }
    if let Some(rt) = who.container_runtime.and_then(|r| serde_json::to_value(r).ok()) {
        c.insert("runtime".into(), rt);
    }
    if let Some(pod) = &who.pod {
        c.insert("pod_uuid".into(), pod.uid.as_str().into());
        c.insert("orchestrator".into(), "Kubernetes".into());
    }
    Some(Value::Object(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::event::{Ancestor, Connect, Pod};

    fn ctx() -> Context {
        Context {
            hostname: Some("node-1".into()),
            now: std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
        }
    }

    fn denied(enforced: bool) -> Event {
        Event::ConnectDenied(Connect {
            enforced,
            time: "2026-11-23T20:04:05.123456Z".into(),
            who: Who {
                pid: 4242,
                tid: 4243,
                uid: 1000,
                gid: 1001,
                user: Some("alice".into()),
                comm: "curl".into(),
                exe: Some("/usr/bin/curl".into()),
                cgroup: Some("/kubepods/pod1/cri-containerd-ab.scope".into()),
                cgroup_id: 8812,
                container_id: Some("ab".repeat(32)),
                container_runtime: Some(crate::host::workload::Runtime::Containerd),
                pod: Some(Pod {
                    namespace: "team".into(),
                    name: "web-0".into(),
                    uid: "0f1e2d3c-4b5a-6978-8a9b-acbdcedfe0f1".into(),
                    container: Some("app".into()),
                }),
                ancestors: vec![
                    Ancestor { pid: 4200, comm: "sh".into(), exe: Some("/bin/sh".into()) },
                    Ancestor { pid: 1, comm: "containerd-shim".into(), exe: None },
                ],
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
    fn a_refused_connect_is_a_refused_network_activity_with_its_process_and_attack() {
        let v = event(&denied(true), &ctx());
        assert_eq!((v["class_uid"].as_u64(), v["activity_id"].as_u64()), (Some(4001), Some(5)));
        assert_eq!(v["type_uid"], 400_105);
        assert_eq!(v["time"], 1_795_464_245_123_i64);
        assert_eq!((v["action"].as_str(), v["disposition"].as_str()), (Some("Denied"), Some("Blocked")));
        let p = &v["actor"]["process"];
        assert_eq!((p["pid"].as_u64(), p["name"].as_str()), (Some(4242), Some("curl")));
        assert_eq!(p["file"]["path"], "/usr/bin/curl");
        assert_eq!(p["user"], json!({"uid": "1000", "name": "alice"}));
        assert_eq!(p["parent_process"]["name"], "sh");
        assert_eq!(p["parent_process"]["parent_process"], json!({"pid": 1, "name": "containerd-shim"}));
        assert_eq!(p["container"]["runtime"], "containerd");
        assert_eq!(p["container"]["name"], "app");
        assert_eq!(v["dst_endpoint"], json!({"ip": "169.254.169.254", "port": 80}));
        assert_eq!(v["attacks"][0]["sub_technique"]["uid"], "T1552.005");
        assert_eq!(v["metadata"]["event_code"], "connect_denied");
        assert_eq!(v["device"]["hostname"], "node-1");
        // What OCSF has no place for, by its native name.
        let u = &v["unmapped"];
        assert_eq!((u["generation"].as_u64(), u["family"].as_str()), (Some(3), Some("ipv4")));
        assert_eq!(u["pod"]["namespace"], "team");
        assert!(u.get("pid").is_none() && u.get("dst").is_none(), "{u}");
    }

    #[test]
    fn monitor_mode_is_observed_and_a_summary_counts_from_its_first_occurrence() {
        let v = event(&denied(false), &ctx());
        assert_eq!((v["activity_name"].as_str(), v["action_id"].as_u64()), (Some("Open"), Some(3)));
        let rep = denied(false).repeated(9, 10.0).unwrap();
        let v = event(&rep, &ctx());
        assert_eq!((v["count"].as_u64(), v["start_time"].as_i64()), (Some(9), Some(1_795_464_245_123)));
        assert_eq!(v["time"], 1_800_000_000_000_i64);
        assert!(v["actor"].get("process").is_none(), "a summary names no pid: {v}");
        assert_eq!(v["unmapped"]["comm"], "curl");
        assert_eq!(v["metadata"]["event_code"], "connect_denied_repeated");
    }
}
