//! One event as a line for a person at a terminal (`imds-guard events`, the journal's MESSAGE).
//! Every name a process chose (comm, executable, cgroup, unit, container, pod) is shown through
//! [`visible`]: an escape sequence cannot drive the terminal, a line break cannot forge a line.

use std::fmt::Write as _;

use super::event::{Event, Packet, Who};
use crate::escape::visible;

/// The readable line of `event`.
#[must_use]
pub fn line(event: &Event) -> String {
    let mut out = String::new();
    let verdict = |enforced: bool| if enforced { "REFUSED" } else { "reported" };
    // (time, what happened, who, repeats)
    let (time, who, repeats): (&str, Option<&Who>, Option<(u64, f64)>) = match event {
        Event::ConnectDenied(c) => {
            let _ = write!(out, "connect {}: {}:{}", verdict(c.enforced), c.dst, c.port);
            (&c.time, Some(&c.who), None)
        }
        Event::ConnectDeniedRepeated(r) => {
            let c = &r.sample;
            let _ = write!(out, "connect {}: {}:{}", verdict(c.enforced), c.dst, c.port);
            (&r.first_time, Some(&c.who), Some((r.count, r.window_s)))
        }
        Event::Imdsv1Request(q)
        | Event::TokenPutForwarded(q)
        | Event::ImdsRequestUnclassified(q)
        | Event::RequestDenied(q) => {
            request(&mut out, event, q);
            (&q.time, Some(&q.who), None)
        }
        Event::Imdsv1RequestRepeated(r)
        | Event::TokenPutForwardedRepeated(r)
        | Event::ImdsRequestUnclassifiedRepeated(r)
        | Event::RequestDeniedRepeated(r) => {
            request(&mut out, event, &r.sample);
            (&r.first_time, Some(&r.sample.who), Some((r.count, r.window_s)))
        }
        Event::CredentialsFetched(c) => {
            credentials(&mut out, c);
            (&c.time, Some(&c.who), None)
        }
        Event::CredentialsFetchedRepeated(r) => {
            credentials(&mut out, &r.sample);
            (&r.first_time, Some(&r.sample.who), Some((r.count, r.window_s)))
        }
        Event::ForwardDenied(p) | Event::OutputDenied(p) => {
            packet(&mut out, event, p);
            (&p.time, None, None)
        }
        Event::ForwardDeniedRepeated(r) | Event::OutputDeniedRepeated(r) => {
            packet(&mut out, event, &r.sample);
            (&r.first_time, None, Some((r.count, r.window_s)))
        }
        other => return fields(other),
    };
    let mut line = String::new();
    if !time.is_empty() {
        let _ = write!(line, "{} ", visible(time));
    }
    line.push_str(&out);
    if let Some((count, window)) = repeats {
        let _ = write!(line, " x{count} more in {window}s");
    }
    if let Some(w) = who {
        describe(&mut line, w, repeats.is_none());
    }
    line
}

fn request(out: &mut String, event: &Event, q: &super::event::Request) {
    if q.reason.as_deref() == Some("uninspected") {
        let verdict = if q.enforced { "its answers WITHHELD" } else { "reported" };
        let _ = write!(out, "request written during the handshake, past the inspection: {verdict}");
        return;
    }
    let what = match event {
        Event::Imdsv1Request(_) | Event::Imdsv1RequestRepeated(_) => "IMDSv1 (tokenless) request",
        Event::TokenPutForwarded(_) | Event::TokenPutForwardedRepeated(_) => "token PUT with X-Forwarded-For",
        Event::RequestDenied(_) | Event::RequestDeniedRepeated(_) => match q.class.as_deref() {
            Some("role-credentials") => "request for role credentials",
            Some("identity-credentials") => "request for identity credentials",
            Some("user-data") => "request for user data",
            _ => "request for a path not proven harmless",
        },
        _ => "unclassified request",
    };
    let verdict = if q.enforced { "REFUSED" } else { "reported" };
    let _ = write!(
        out,
        "{what} {verdict}: {} {}",
        q.method.as_deref().unwrap_or("null"),
        visible(q.path.as_deref().unwrap_or("null"))
    );
}

fn credentials(out: &mut String, c: &super::event::Credentials) {
    let _ = write!(out, "credentials fetched: access key {}", visible(&c.access_key_id));
    match (&c.role, c.source.as_str()) {
        (Some(r), _) => {
            let _ = write!(out, " of role {}", visible(r));
        }
        (None, "instance_identity") => out.push_str(" (instance identity)"),
        (None, _) => {
            let _ = write!(out, " from {}", visible(c.path.as_deref().unwrap_or("null")));
        }
    }
    if let Some(e) = &c.expiration {
        let _ = write!(out, " expiring {}", visible(e));
    }
    if !c.complete {
        out.push_str(" (response not read to its end)");
    }
}

fn packet(out: &mut String, event: &Event, p: &Packet) {
    let verdict = if p.enforced { "REFUSED" } else { "reported" };
    if matches!(event, Event::ForwardDenied(_) | Event::ForwardDeniedRepeated(_)) {
        let _ = write!(out, "forwarded packet {verdict}: {} -> {}:{}", p.src, p.dst, p.port);
        if let Some(i) = &p.in_interface {
            let _ = write!(out, " in on {}", visible(i));
        }
    } else {
        let _ = write!(out, "packet {verdict} (reduced mode): {} -> {}:{}", p.src, p.dst, p.port);
    }
    if let Some(uid) = p.uid {
        let _ = write!(out, " uid {uid}");
        if let Some(u) = &p.user {
            let _ = write!(out, " ({})", visible(u));
        }
    }
}

fn describe(out: &mut String, w: &Who, with_pid: bool) {
    if with_pid {
        let _ = write!(out, " by pid {} ({})", w.pid, visible(&w.comm));
    } else {
        let _ = write!(out, " by {}", visible(&w.comm));
    }
    let _ = write!(out, " uid {}", w.uid);
    if let Some(u) = &w.user {
        let _ = write!(out, " ({})", visible(u));
    }
    for (k, v) in [("exe", &w.exe), ("unit", &w.unit), ("container_id", &w.container_id)] {
        if let Some(v) = v {
            let _ = write!(out, " {k} {}", visible(v));
        }
    }
    if let Some(uid) = w.delegated_to {
        let _ = write!(out, " delegated to uid {uid}");
    }
    if let Some(p) = &w.pod {
        let _ = write!(out, " pod {}/{}", visible(&p.namespace), visible(&p.name));
        if let Some(c) = &p.container {
            let _ = write!(out, " container {}", visible(c));
        }
    }
    if let Some(c) = &w.cgroup {
        let _ = write!(out, " cgroup {}", visible(c));
    }
}

/// The other events: their name and top-level fields (`key=value`; nested objects left out).
fn fields(event: &Event) -> String {
    let mut out = event.name().to_owned();
    let Ok(serde_json::Value::Object(o)) = serde_json::to_value(event) else { return out };
    for (k, val) in &o {
        if matches!(k.as_str(), "event" | "time") || val.is_null() || val.is_object() {
            continue;
        }
        let text = val.as_str().map_or_else(|| val.to_string(), str::to_owned);
        let _ = write!(out, " {k}={}", visible(&text));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::event::{Connect, Pod, PolicyReloaded};

    fn connect(comm: &str, exe: &str) -> Event {
        Event::ConnectDenied(Connect {
            enforced: true,
            time: "2026-11-23T20:04:05.123456Z".into(),
            who: Who {
                pid: 4242,
                tid: 4242,
                uid: 1000,
                gid: 1000,
                user: Some("alice".into()),
                comm: comm.into(),
                exe: Some(exe.into()),
                cgroup: Some("/user.slice/user-1000.slice/session-3.scope".into()),
                pod: Some(Pod {
                    namespace: "ns".into(),
                    name: "p\u{1b}[31m".into(),
                    uid: "u".into(),
                    container: None,
                }),
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

    #[test]
    fn the_documented_line() {
        let l = line(&connect("curl", "/usr/bin/curl"));
        assert_eq!(
            l,
            "2026-11-23T20:04:05.123456Z connect REFUSED: 169.254.169.254:80 by pid 4242 (curl) uid 1000 (alice) \
             exe /usr/bin/curl pod ns/p\\u{1b}[31m cgroup /user.slice/user-1000.slice/session-3.scope"
        );
        let r = line(&connect("curl", "/usr/bin/curl").repeated(9, 10.0).unwrap());
        assert!(r.contains(" x9 more in 10s by curl uid 1000"), "{r}");
        let other = line(&Event::PolicyReloaded(PolicyReloaded {
            reason: "sighup".into(),
            generation: 2,
            mode: "enforce".into(),
            policy_digest: "ab".into(),
            rules: 3,
            elapsed_us: 1,
            enforced_us: 1,
            reloads: 1,
            reload_failures: 0,
        }));
        assert!(other.starts_with("policy_reloaded reason=sighup generation=2"), "{other}");
    }

    #[test]
    fn a_delegated_cgroup_says_so() {
        let Event::ConnectDenied(mut c) = connect("kubelet", "/home/u/kubelet") else { unreachable!() };
        c.who.pod = None;
        c.who.unit = Some("user@1000.service".into());
        c.who.delegated_to = Some(1000);
        c.who.cgroup = Some("/user.slice/user-1000.slice/user@1000.service/app.slice/kubelet.service".into());
        let l = line(&Event::ConnectDenied(c));
        assert!(
            l.contains(" unit user@1000.service delegated to uid 1000 cgroup /user.slice/user-1000.slice/user@1000.service/app.slice/kubelet.service"),
            "{l}"
        );
    }

    #[test]
    fn names_a_process_chose_cannot_forge_a_line_or_drive_the_terminal() {
        let l = line(&connect("x\n2026-01-01 connect", "/tmp/\u{1b}]0;owned\u{7}\r"));
        assert!(!l.chars().any(crate::escape::is_unsafe), "{l:?}");
        assert!(l.contains("(x\\n2026-01-01 connect)"), "{l}");
    }
}
