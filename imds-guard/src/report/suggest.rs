//! The policy `imds-guard suggest` writes from what was seen ([`super::seen`]): the path from
//! "observe" to "enforce".

use std::{collections::BTreeSet, fmt::Write as _};

use super::seen::{MAX_REFUSED, MAX_SEEN, SeenWorkload, Table};
use crate::escape::visible;

/// What `suggest` starts from besides what was seen: everything in the current policy but its
/// `mode` (endpoints, `imdsv1`, `preexisting`, `[netfilter]`, `[kubernetes]`, ...), and its
/// `[[allow]]` tables, kept first, as they are (re-written as TOML: comments are not kept).
#[derive(Debug, Default)]
pub struct Base {
    /// The policy's other keys and tables, as TOML.
    pub prelude: String,
    pub tables: Vec<String>,
}

impl Base {
    /// From a policy file's text (already validated by the caller).
    pub fn from_text(text: &str) -> anyhow::Result<Self> {
        let mut t: toml::Table = toml::from_str(text)?;
        t.remove("mode");
        let tables = match t.remove("allow") {
            Some(toml::Value::Array(a)) => a
                .into_iter()
                .map(|v| Ok(format!("[[allow]]\n{}", toml::to_string(&v)?)))
                .collect::<anyhow::Result<Vec<_>>>()?,
            _ => Vec::new(),
        };
        Ok(Base { prelude: toml::to_string(&t)?, tables })
    }
}

/// A TOML basic string, with every character [`crate::escape::is_unsafe`] finds escaped
/// (`\uXXXX`): what TOML requires (control characters) and what would mislead the person who
/// reviews the suggestion at a terminal (line separators, bidirectional overrides).
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if crate::escape::is_unsafe(c) => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The suggested policy: enforce mode, the base's tables, then one table per workload seen
/// reaching the metadata service without a rule. A workload whose every attempt the enforced
/// policy refused gets its table commented out and marked as refused: being refused is no
/// reason to be allowed.
#[must_use]
pub fn suggest(base: &Base, table: &Table) -> String {
    let mut out = String::new();
    let refused = table.seen.values().filter(|s| s.only_refused()).count();
    let _ = writeln!(
        out,
        "# Suggested by `imds-guard suggest` from {} workload(s) seen reaching the metadata service\n\
         # without a rule. Review every table, then install it (imds-guard check --config FILE first).",
        table.seen.len() - refused
    );
    if refused > 0 {
        let _ = writeln!(
            out,
            "# {refused} workload(s) were only seen refused by the enforced policy: their tables are \
             commented out (REFUSED)."
        );
    }
    if table.refused_overflow > 0 {
        let _ = writeln!(
            out,
            "# {} refused attempt(s) of further workloads are not listed (more than {MAX_REFUSED} workloads were only refused).",
            table.refused_overflow
        );
    }
    if table.overflow > 0 {
        let _ = writeln!(
            out,
            "# WARNING: {} event(s) came from workloads beyond the {MAX_SEEN} remembered; they are not covered.",
            table.overflow
        );
    }
    if !table.reads_observed && table.seen.values().any(|s| !s.only_refused()) {
        let _ = writeln!(
            out,
            "# What these workloads read was not observed (no daemon with the request inspector saw \
             them): every table may read all. Add read = \"no-secrets\" to those that need no \
             credentials or user data."
        );
    }
    out.push_str("mode = \"enforce\"\n");
    if !base.prelude.trim().is_empty() {
        out.push_str(&base.prelude);
    }
    if !base.tables.is_empty() {
        out.push_str("\n# From the current policy, unchanged.\n");
        for t in &base.tables {
            out.push('\n');
            out.push_str(t);
        }
    }
    let mut seen: Vec<&SeenWorkload> = table.seen.values().collect();
    seen.sort_by_key(|s| (s.only_refused(), rank(s), s.workload.clone()));
    for s in seen {
        out.push('\n');
        if s.only_refused() {
            let _ = writeln!(
                out,
                "# REFUSED: {} attempt(s) of this workload were refused by the enforced policy, none \
                 got through; it is not allowed here. Uncomment the table only if it must reach the \
                 metadata service.",
                s.refused
            );
            let mut t = String::new();
            write_table(&mut t, s, table.reads_observed);
            for line in t.lines() {
                if line.starts_with('#') {
                    let _ = writeln!(out, "{line}");
                } else {
                    let _ = writeln!(out, "# {line}");
                }
            }
        } else {
            write_table(&mut out, s, table.reads_observed);
        }
    }
    out
}

/// One workload's table. Everything in it that a process chose (its names, paths, cgroups, the
/// event times of an events file) is either a TOML string value, escaped by the serialiser, or
/// passes [`visible`] before it goes into a `#` comment: a line break in a comm or an exe path
/// cannot end the comment and add keys or tables of its own. The comment above the keys says
/// exactly what the table covers. With `reads_observed`, the table gets the narrowest `read` the
/// workload was seen using: `"no-secrets"` when it read none of the secrets, else the default
/// (all) and a comment naming what it read.
fn write_table(out: &mut String, s: &SeenWorkload, reads_observed: bool) {
    let _ = writeln!(
        out,
        "# {}: {} connect(s){}, {} to {}",
        visible(&s.workload),
        s.connects,
        if s.imdsv1 > 0 {
            format!(
                ", STILL USES IMDSv1 ({} tokenless request(s)): move it to IMDSv2, then set imdsv1 = \"deny\"",
                s.imdsv1
            )
        } else {
            String::new()
        },
        visible(s.first_time.as_deref().unwrap_or("?")),
        visible(s.last_time.as_deref().unwrap_or("?")),
    );
    let list = |set: &BTreeSet<String>| set.iter().map(|v| visible(v)).collect::<Vec<_>>().join(", ");
    let uids = s.uids.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
    let _ = writeln!(out, "#   seen as: uid {uids}; comm {}; exe {}", list(&s.comms), list(&s.exes));
    if !s.cgroups.is_empty() {
        let _ = writeln!(out, "#   cgroups: {}", list(&s.cgroups));
    }
    if let Some(uid) = s.delegated_to {
        let _ = writeln!(
            out,
            "#   its cgroup is delegated to uid {uid}, which names the cgroups below the delegation as it likes"
        );
    }
    if s.refused > 0 && !s.only_refused() {
        let _ = writeln!(out, "#   also {} attempt(s) refused by the enforced policy", s.refused);
    }
    if reads_observed && !s.reads.is_empty() {
        let _ = writeln!(out, "#   read: {} (so it may read all)", list(&s.reads));
    }
    out.push_str("[[allow]]\n");
    let _ = writeln!(out, "name = {}", toml_str(&format!("seen: {}", s.workload)));
    if let Some(p) = &s.pod {
        let _ = writeln!(
            out,
            "# covers pod {}/{} only; widen to its owner's name prefix if it is replicated",
            visible(&p.namespace),
            visible(&p.name)
        );
        let _ = writeln!(out, "pod = {}", toml_str(&format!("{}/{}", p.namespace, p.name)));
    } else if let Some(c) = &s.unit_cgroup {
        let unit = visible(s.unit.as_deref().unwrap_or("?")).into_owned();
        match s.delegated_to {
            Some(uid) => {
                let _ = writeln!(
                    out,
                    "# covers every process in cgroup {} and below: unit {unit}, delegated to uid {uid} (whatever it runs there)",
                    visible(c)
                );
            }
            None => {
                let _ =
                    writeln!(out, "# covers every process in cgroup {} and below (unit {unit})", visible(c));
            }
        }
        let _ = writeln!(out, "cgroup = {}", toml_str(c));
    } else if let Some(exe) = s.exes.iter().next().filter(|_| s.workload.starts_with("exe:")) {
        let _ = writeln!(out, "exe = {}", toml_str(exe));
        if let [uid] = s.uids.iter().collect::<Vec<_>>()[..] {
            let _ = writeln!(out, "uid = {uid}   # the only uid seen running it; remove to allow any");
        }
    } else if let [uid] = s.uids.iter().collect::<Vec<_>>()[..] {
        let _ = writeln!(out, "# no stronger identity was available: covers every process of this uid");
        let _ = writeln!(out, "uid = {uid}");
    } else {
        let _ = writeln!(out, "# no identity to write a rule for: review the events");
    }
    if s.imdsv1 > 0 {
        out.push_str("imdsv1 = \"log\"\n");
    }
    if reads_observed && s.reads.is_empty() {
        out.push_str("read = \"no-secrets\"   # it read no credentials or user data; remove if it must\n");
    }
}

/// Order of the suggested tables: pods, units, containers, executables, uids.
fn rank(s: &SeenWorkload) -> u8 {
    match s.workload.split(':').next() {
        Some("pod") => 0,
        Some("cgroup") => 1,
        Some("container") => 2,
        Some("exe") => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Event, Stamped, event::PolicyReloadFailed, seen::SeenWorkload};
    use serde_json::{Value, json};

    /// An event from the fields a test cares about (the others get plain values).
    fn ev(mut v: Value) -> Event {
        let o = v.as_object_mut().unwrap();
        for (k, d) in [
            ("schema", json!(1)),
            ("uid", json!(0)),
            ("gid", json!(0)),
            ("comm", json!("")),
            ("cgroup", Value::Null),
            ("cgroup_id", json!(0)),
            ("enforced", json!(false)),
            ("dst", json!("169.254.169.254")),
            ("port", json!(80)),
            ("family", json!("ipv4")),
            ("generation", json!(1)),
            ("method", Value::Null),
            ("path", Value::Null),
            ("credentials", json!(false)),
        ] {
            o.entry(k).or_insert(d);
        }
        if let Some(p) = o.get_mut("pod").and_then(Value::as_object_mut) {
            p.entry("uid").or_insert(json!("u"));
        }
        serde_json::from_value::<Stamped>(v).unwrap().event
    }

    #[test]
    fn groups_by_strongest_identity() {
        let mut t = Table::default();
        let unit = json!({"event": "connect_denied", "uid": 0, "comm": "agent", "exe": "/usr/bin/agent",
            "unit": "agent.service", "cgroup": "/system.slice/agent.service/worker", "time": "t1"});
        t.observe(&ev(unit), 1);
        t.observe(
            &ev(
                json!({"event": "connect_denied_repeated", "uid": 0, "comm": "agent", "unit": "agent.service",
            "cgroup": "/system.slice/agent.service/worker", "count": 41, "first_time": "t2"}),
            ),
            41,
        );
        t.observe(
            &ev(json!({"event": "imdsv1_request", "uid": 1000, "comm": "curl", "exe": "/usr/bin/curl"})),
            1,
        );
        t.observe(
            &ev(json!({"event": "connect_denied", "uid": 1000, "comm": "curl", "exe": "/usr/bin/curl"})),
            1,
        );
        t.observe(&ev(json!({"event": "connect_denied", "uid": 33, "comm": "x", "exe": null})), 1);
        t.observe(
            &Event::PolicyReloadFailed(PolicyReloadFailed {
                generation: 1,
                error: String::new(),
                reloads: 0,
                reload_failures: 1,
            }),
            1,
        );
        assert_eq!(t.seen.len(), 3);
        let u = &t.seen["cgroup:/system.slice/agent.service"];
        assert_eq!((u.connects, u.unit_cgroup.as_deref()), (42, Some("/system.slice/agent.service")));
        let base = Base::from_text(
            "mode = \"monitor\"\nendpoints = [\"aws-imds\"]\n[kubernetes]\npod_logs = \"/l\"\n[[allow]]\nuid = 0\n",
        )
        .unwrap();
        let policy = suggest(&base, &t);
        let parsed: toml::Value = toml::from_str(&policy).expect(&policy);
        let tables = parsed["allow"].as_array().unwrap();
        assert_eq!(tables.len(), 4, "{policy}");
        assert_eq!(tables[1]["cgroup"].as_str(), Some("/system.slice/agent.service"));
        assert_eq!(tables[2]["exe"].as_str(), Some("/usr/bin/curl"));
        assert_eq!(tables[2]["uid"].as_integer(), Some(1000));
        assert_eq!(tables[2]["imdsv1"].as_str(), Some("log"));
        assert_eq!(tables[3]["uid"].as_integer(), Some(33));
        assert!(policy.contains("STILL USES IMDSv1 (1 tokenless"), "{policy}");
        assert_eq!(parsed["mode"].as_str(), Some("enforce"));
        assert_eq!(parsed["kubernetes"]["pod_logs"].as_str(), Some("/l"), "other tables are kept");
        assert_eq!(parsed["endpoints"][0].as_str(), Some("aws-imds"));
        assert_eq!(tables[0]["uid"].as_integer(), Some(0));
    }

    /// Issue 21: each table proposes the narrowest `read` its workload was seen using, once a
    /// daemon that reports reads saw them; a tokenless read of a secret still counts as IMDSv1;
    /// reads of workloads that have a table, and refused ones, change nothing.
    #[test]
    fn proposes_the_narrowest_read_each_workload_was_seen_using() {
        let connect =
            |uid: u32, exe: &str| ev(json!({"event": "connect_denied", "uid": uid, "comm": "c", "exe": exe}));
        let read = |uid: u32, exe: &str, class: &str, extra: Value| {
            let mut v = json!({"event": "request_denied", "uid": uid, "comm": "c", "exe": exe,
                "method": "GET", "path": "/latest/meta-data/iam/security-credentials/r", "class": class});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            ev(v)
        };
        let mut t = Table::default();
        for (uid, exe) in
            [(1, "/usr/bin/agent"), (2, "/usr/bin/sdk"), (3, "/usr/bin/raw"), (4, "/usr/bin/placement")]
        {
            t.observe(&connect(uid, exe), 1);
        }
        t.observe(&read(2, "/usr/bin/sdk", "role-credentials", json!({})), 1);
        t.observe(&read(2, "/usr/bin/sdk", "user-data", json!({"tokenless": true})), 1);
        t.observe(&read(3, "/usr/bin/raw", "unreadable-path", json!({})), 1);
        // A workload's table's business, and a refusal: neither is what it read.
        t.observe(&read(1, "/usr/bin/agent", "role-credentials", json!({"rule": 0})), 1);
        t.observe(&read(4, "/usr/bin/placement", "role-credentials", json!({"enforced": true})), 1);
        // Not yet known to be observed: no table gets a read.
        let before = suggest(&Base::default(), &t);
        let parsed: toml::Value = toml::from_str(&before).expect(&before);
        assert!(parsed["allow"].as_array().unwrap().iter().all(|t| t.get("read").is_none()), "{before}");
        assert!(before.contains("was not observed"), "{before}");
        t.observe(
            &ev(json!({"event": "guard_started", "attachment": "attached", "mode": "monitor", "generation": 1,
                "policy": "p", "policy_digest": "d", "rules": 0, "cgroup": "/", "pin_dir": "/p",
                "metrics": null, "events_socket": null, "enforcement": "cgroup",
                "netfilter": {"table": null, "forward": false, "reduced": false, "nflog_group": 0, "not_enforced": []},
                "reports_reads": true})),
            1,
        );
        let policy = suggest(&Base::default(), &t);
        let parsed: toml::Value = toml::from_str(&policy).expect(&policy);
        let by_exe = |exe: &str| {
            parsed["allow"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["exe"].as_str() == Some(exe))
                .unwrap()
                .clone()
        };
        assert_eq!(
            by_exe("/usr/bin/agent").get("read").and_then(|r| r.as_str()),
            Some("no-secrets"),
            "{policy}"
        );
        assert_eq!(by_exe("/usr/bin/placement").get("read").and_then(|r| r.as_str()), Some("no-secrets"));
        assert!(by_exe("/usr/bin/sdk").get("read").is_none(), "{policy}");
        assert!(by_exe("/usr/bin/raw").get("read").is_none(), "{policy}");
        assert_eq!(by_exe("/usr/bin/sdk")["imdsv1"].as_str(), Some("log"), "a tokenless read is IMDSv1");
        assert!(policy.contains("#   read: role-credentials, user-data (so it may read all)"), "{policy}");
        assert!(policy.contains("#   read: unreadable-path (so it may read all)"), "{policy}");
        assert!(!policy.contains("was not observed"), "{policy}");
        // The installed suggestion parses as a policy (the daemon's parser, not only TOML's).
        crate::policy::source::Source { name: "suggested.toml".into(), text: policy.clone() }
            .parse()
            .expect(&policy);
    }

    /// Issue 17, items 3 and 4: a delegated user's `…/user@1000.service/app.slice/kubelet.service`
    /// (attributed to its delegation) and the real `kubelet.service` are two workloads, each with
    /// the cgroup its own events carry; what the enforced policy refused is commented out.
    #[test]
    fn keyed_by_cgroup_and_refused_attempts_allow_nothing() {
        let mut t = Table::default();
        let manager = "/user.slice/user-1000.slice/user@1000.service";
        t.observe(
            &ev(json!({"event": "connect_denied", "uid": 1000, "comm": "kubelet", "exe": "/home/u/kubelet",
                "unit": "user@1000.service", "delegated_to": 1000,
                "cgroup": format!("{manager}/app.slice/kubelet.service")})),
            1,
        );
        t.observe(
            &ev(json!({"event": "connect_denied", "uid": 0, "comm": "kubelet", "exe": "/usr/bin/kubelet",
                "unit": "kubelet.service", "cgroup": "/system.slice/kubelet.service"})),
            1,
        );
        // Against the enforcing daemon: refused, twice (one a repeat summary).
        let refused = json!({"event": "connect_denied", "enforced": true, "uid": 1001, "comm": "ssm",
            "unit": "user@1001.service", "delegated_to": 1001,
            "cgroup": "/user.slice/user-1001.slice/user@1001.service/amazon-ssm-agent.service"});
        t.observe(&ev(refused.clone()), 1);
        let mut rep = refused;
        rep["event"] = json!("connect_denied_repeated");
        rep["count"] = json!(7);
        t.observe(&ev(rep), 7);
        t.observe(
            &ev(json!({"event": "imdsv1_request", "enforced": true, "uid": 1002, "exe": "/usr/bin/curl"})),
            1,
        );
        assert_eq!(t.seen.len(), 4, "{:#?}", t.seen);
        let policy = suggest(&Base::default(), &t);
        let parsed: toml::Value = toml::from_str(&policy).expect(&policy);
        let tables = parsed["allow"].as_array().unwrap();
        let cgroups: Vec<&str> = tables.iter().filter_map(|t| t["cgroup"].as_str()).collect();
        assert_eq!(cgroups, ["/system.slice/kubelet.service", manager], "{policy}");
        assert_eq!(tables.len(), 2, "refused workloads get no table: {policy}");
        assert!(policy.contains(&format!(
            "# covers every process in cgroup {manager} and below: unit user@1000.service, delegated to uid 1000"
        )));
        assert!(policy.contains(
            "# covers every process in cgroup /system.slice/kubelet.service and below (unit kubelet.service)"
        ));
        assert!(!policy.contains("covers every process of kubelet.service"), "{policy}");
        assert!(policy.contains("# REFUSED: 8 attempt(s)"), "{policy}");
        assert!(policy.contains("# cgroup = \"/user.slice/user-1001.slice/user@1001.service\""), "{policy}");
        assert!(policy.contains("# REFUSED: 1 attempt(s)"), "{policy}");
        assert!(
            policy.contains("from 2 workload(s) seen")
                && policy.contains("2 workload(s) were only seen refused")
        );
    }

    #[test]
    fn bounded() {
        let mut t = Table::default();
        for uid in 0..(MAX_SEEN as u64 + 10) {
            t.observe(&ev(json!({"event": "connect_denied", "uid": uid})), 1);
        }
        assert_eq!((t.seen.len(), t.overflow), (MAX_SEEN, 10));
    }

    /// A user refused many times under many names (against an enforcing daemon) fills at most
    /// [`MAX_REFUSED`] places: the workloads a monitor period sees afterwards are all kept.
    #[test]
    fn refused_workloads_cannot_crowd_out_the_others() {
        let mut t = Table::default();
        for n in 0..MAX_SEEN {
            let e = json!({"event": "connect_denied", "enforced": true, "uid": 1000, "exe": format!("/tmp/copy-{n}")});
            t.observe(&ev(e), 1);
        }
        assert_eq!((t.seen.len(), t.refused_overflow), (MAX_REFUSED, (MAX_SEEN - MAX_REFUSED) as u64));
        // A refused-only workload later let through (monitor mode) frees its place.
        t.observe(&ev(json!({"event": "connect_denied", "uid": 1000, "exe": "/tmp/copy-0"})), 1);
        t.observe(
            &ev(json!({"event": "connect_denied", "enforced": true, "uid": 1000, "exe": "/tmp/new"})),
            1,
        );
        assert!(t.seen.contains_key("exe:/tmp/new"));
        for uid in 0..(MAX_SEEN - MAX_REFUSED - 1) as u64 {
            t.observe(&ev(json!({"event": "connect_denied", "uid": 2000 + uid})), 1);
        }
        assert_eq!((t.seen.len(), t.overflow), (MAX_SEEN, 0), "every workload let through is kept");
        let policy = suggest(&Base::default(), &t);
        assert!(
            policy.contains(&format!("# {} refused attempt(s) of further workloads", MAX_SEEN - MAX_REFUSED))
        );
    }

    /// Hostile strings: TOML structure, line breaks of every kind, terminal escapes, quotes.
    fn hostile() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let piece = prop_oneof![
            Just("\n".to_owned()),
            Just("\r\n".to_owned()),
            Just("\r".to_owned()),
            Just("[[allow]]".to_owned()),
            Just("uid = 65534".to_owned()),
            Just("mode = \"monitor\"".to_owned()),
            Just("#".to_owned()),
            Just("\"".to_owned()),
            Just("'''".to_owned()),
            Just("\\".to_owned()),
            Just("\u{1b}[2K".to_owned()),
            Just("\u{2028}".to_owned()),
            Just("\u{85}".to_owned()),
            Just("\u{202e}".to_owned()),
            any::<String>(),
        ];
        proptest::collection::vec(piece, 0..6).prop_map(|v| v.concat())
    }

    /// The keys a suggested table for `s` must have, and no others.
    fn intended(s: &SeenWorkload) -> Vec<&'static str> {
        let mut k = vec!["name"];
        if s.pod.is_some() {
            k.push("pod");
        } else if s.unit_cgroup.is_some() {
            k.push("cgroup");
        } else if s.workload.starts_with("exe:") && !s.exes.is_empty() {
            k.push("exe");
            if s.uids.len() == 1 {
                k.push("uid");
            }
        } else if s.uids.len() == 1 {
            k.push("uid");
        }
        if s.imdsv1 > 0 {
            k.push("imdsv1");
        }
        k.sort_unstable();
        k
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 400,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x5_0661),
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]

        /// Whatever bytes a process puts in any field an event carries, the suggestion parses to
        /// exactly the tables and keys its workloads justify, with the values as seen.
        #[test]
        fn hostile_fields_cannot_change_the_suggestion(
            events in proptest::collection::vec(
                (hostile(), hostile(), hostile(), hostile(), hostile(), hostile(), hostile(), hostile(),
                 0u32..3, 0u8..5, proptest::bool::ANY, proptest::bool::ANY),
                1..4,
            )
        ) {
            let mut t = Table::default();
            for (comm, exe, cgroup, unit, container, ns, pod, time, uid, shape, v1, refused) in events {
                let mut e = json!({
                    "event": if v1 { "imdsv1_request" } else { "connect_denied" },
                    "uid": 1000 + uid, "comm": comm, "exe": exe, "cgroup": format!("/{cgroup}/{unit}"),
                    "time": time, "enforced": refused,
                });
                match shape {
                    0 => e["pod"] = json!({"namespace": ns, "name": pod, "uid": "u"}),
                    1 => e["unit"] = json!(unit),
                    2 => e["container_id"] = json!(container),
                    3 => { e.as_object_mut().unwrap().remove("exe"); }
                    _ => {}
                }
                t.observe(&ev(e), 1);
            }
            let policy = suggest(&Base::default(), &t);
            let parsed: toml::Table = toml::from_str(&policy).map_err(|e| {
                proptest::test_runner::TestCaseError::fail(format!("{e}\n{policy}"))
            })?;
            let mut seen: Vec<&SeenWorkload> = t.seen.values().filter(|s| !s.only_refused()).collect();
            seen.sort_by_key(|s| (rank(s), s.workload.clone()));
            let top: Vec<&str> = parsed.keys().map(String::as_str).collect();
            let want: &[&str] = if seen.is_empty() { &["mode"] } else { &["allow", "mode"] };
            proptest::prop_assert_eq!(&top[..], want, "{}", policy);
            proptest::prop_assert_eq!(parsed["mode"].as_str(), Some("enforce"));
            let no_tables = Vec::new();
            let tables = parsed.get("allow").and_then(|a| a.as_array()).unwrap_or(&no_tables);
            // A refused workload's table is there, commented out, for the reviewer.
            for r in t.seen.values().filter(|s| s.only_refused()) {
                let marked = format!("# name = {}", toml_str(&format!("seen: {}", r.workload)));
                proptest::prop_assert!(policy.contains(&marked), "{}\n{}", marked, policy);
            }
            proptest::prop_assert_eq!(tables.len(), seen.len(), "{}", policy);
            for (table, s) in tables.iter().zip(seen) {
                let table = table.as_table().unwrap();
                let mut keys: Vec<&str> = table.keys().map(String::as_str).collect();
                keys.sort_unstable();
                proptest::prop_assert_eq!(&keys, &intended(s), "{}", policy);
                let name = format!("seen: {}", s.workload);
                proptest::prop_assert_eq!(table["name"].as_str(), Some(name.as_str()));
                if let Some(exe) = table.get("exe") {
                    proptest::prop_assert_eq!(exe.as_str(), s.exes.iter().next().map(String::as_str));
                }
                if let Some(cg) = table.get("cgroup") {
                    proptest::prop_assert_eq!(cg.as_str(), s.unit_cgroup.as_deref());
                }
                if let (Some(pod), Some(p)) = (table.get("pod"), &s.pod) {
                    let want = format!("{}/{}", p.namespace, p.name);
                    proptest::prop_assert_eq!(pod.as_str(), Some(want.as_str()));
                }
            }
            // Comment lines stay single lines of safe characters.
            for line in policy.lines() {
                proptest::prop_assert!(!line.chars().any(crate::escape::is_unsafe), "{:?}", line);
            }
        }
    }
}
