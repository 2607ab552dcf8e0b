//! Connections to the metadata service opened before imds-guard started: always reported; with
//! `preexisting = "close"` (enforce mode) the ones a denied process holds are reset, so its next
//! read or write fails, while an allowed process's connection keeps working.

use imds_guard_tests::{Daemon, Holder, ImdsMode, Sandbox};
use serde_json::Value;

const NOBODY: u32 = 65534;

/// The `preexisting_connection` event about process `pid`.
fn report_of(d: &Daemon, pid: u32) -> Value {
    d.events()
        .into_iter()
        .find(|e| e["event"] == "preexisting_connection" && e["pid"] == pid)
        .unwrap_or_else(|| panic!("no preexisting_connection event for pid {pid}: {:#?}", d.events()))
}

/// What happened in one run.
struct Outcome {
    /// What the denied (nobody) and the allowed (root) process's request over its old connection got.
    denied: String,
    allowed: String,
    /// The `preexisting_connection` reports about them.
    denied_report: Value,
    allowed_report: Value,
    /// A new connect of the denied identity after the guard started.
    new_connect: String,
}

/// A denied and an allowed process connect before the guard starts with `policy`; then each sends
/// a request over its connection.
fn run(name: &str, policy: &str) -> Outcome {
    let sb = Sandbox::new(name, ImdsMode::Optional).expect("privileged");
    let go = sb.dir.join("go");
    let denied = Holder::start(&sb, NOBODY, &go);
    let allowed = Holder::start(&sb, 0, &go);
    let policy = sb.write("policy.toml", policy);
    // The fake IMDS gives an accepted connection 5 s to send its request; the daemon takes ~0.1 s.
    let d = sb.daemon(&policy);
    let (denied_report, allowed_report) = (report_of(&d, denied.pid()), report_of(&d, allowed.pid()));
    sb.write("go", "");
    Outcome {
        denied: denied.finish(),
        allowed: allowed.finish(),
        denied_report,
        allowed_report,
        new_connect: sb.client(NOBODY, NOBODY).connect("169.254.169.254", 80).result,
    }
}

fn skip() -> bool {
    !imds_guard_tests::sandbox::privileged_or_skip("preexisting")
}

#[test]
fn preexisting_close_resets_the_connections_denied_processes_hold() {
    if skip() {
        return;
    }
    let o = run("pre_close", "preexisting = \"close\"\n\n[[allow]]\nuid = 0\n");
    // The kernel disconnected the socket (RST to the peer) and left ECONNRESET for its holder.
    assert_eq!(o.denied, "ECONNRESET", "the denied process's old connection is reset");
    assert_eq!(o.allowed, "HTTP/1.1 200 OK", "the allowed process's old connection keeps working");
    assert_eq!(o.new_connect, "EPERM");
    let r = &o.denied_report;
    assert_eq!(
        (&r["uid"], &r["allowed"], &r["closed"]),
        (&Value::from(NOBODY), &false.into(), &true.into()),
        "{r}"
    );
    assert!(r.get("close_error").is_none(), "{r}");
    let r = &o.allowed_report;
    assert_eq!(
        (&r["uid"], &r["allowed"], &r["closed"]),
        (&Value::from(0), &true.into(), &false.into()),
        "{r}"
    );
}

#[test]
fn preexisting_report_and_monitor_mode_leave_them_open() {
    if skip() {
        return;
    }
    for (policy, new_connect) in [
        ("[[allow]]\nuid = 0\n", "EPERM"), // default: report
        ("preexisting = \"report\"\n[[allow]]\nuid = 0\n", "EPERM"), // explicit
        ("mode = \"monitor\"\npreexisting = \"close\"\n[[allow]]\nuid = 0\n", "connected"), // monitor blocks nothing
    ] {
        let o = run("pre_report", policy);
        assert_eq!(
            (o.denied.as_str(), o.allowed.as_str()),
            ("HTTP/1.1 200 OK", "HTTP/1.1 200 OK"),
            "{policy}"
        );
        assert_eq!(o.new_connect, new_connect, "{policy}");
        let r = &o.denied_report;
        assert_eq!((&r["allowed"], &r["closed"]), (&false.into(), &false.into()), "{policy}: {r}");
    }
}
