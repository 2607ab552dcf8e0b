//! A kernel that lacks what a part of the guard needs (today: sk_msg/sockhash for the request
//! inspector) still gets the rest: the connect hooks enforce, and `prepare`, `guard_started`,
//! `status` and the metrics say what is off and why, in one sentence. This host has every feature,
//! so `IMDS_GUARD_PRETEND_MISSING` makes the probes answer "missing" (only the probes read it).

use std::process::Command;

use imds_guard_tests::{ImdsMode, Sandbox, sandbox::guard_bin};
use serde_json::Value;

const NOBODY: u32 = 65534;
/// CONFIG_BPF_STREAM_PARSER off: no socket hash maps, no sk_msg programs.
const NO_STREAM_PARSER: (&str, &str) = ("IMDS_GUARD_PRETEND_MISSING", "sk_msg,sockhash");

fn started(d: &imds_guard_tests::Daemon) -> Value {
    d.events().into_iter().find(|e| e["event"] == "guard_started").expect("guard_started")
}

/// GET `path` from the daemon's metrics server, in the sandbox's network namespace.
fn metrics(sb: &Sandbox, addr: &str) -> String {
    let out = sb.client(0, 0).curl(&["-sf", &format!("http://{addr}/metrics")]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One sentence: ends with its only full stop (version numbers have dots).
fn one_sentence(s: &str) -> bool {
    s.ends_with('.') && !s.contains(". ")
}

fn status(sb: &Sandbox, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(guard_bin());
    imds_guard_tests::sandbox::enter_netns(&mut cmd, &sb.netns_fd);
    cmd.envs(env.iter().copied())
        .arg("status")
        .args(args)
        .args(["--pin-dir", sb.pin_dir().to_str().unwrap()])
        .output()
        .unwrap()
}

#[test]
fn without_the_request_inspector_connect_rules_are_enforced_and_the_degradation_is_said() {
    let Some(sb) = Sandbox::new("degraded", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "mode = \"enforce\"\n[[allow]]\nuid = 0\n");
    let d = sb.daemon_env(&policy, &["--metrics-addr", "127.0.0.1:0"], &[NO_STREAM_PARSER]);

    // Connect rules still hold: a denied uid gets EPERM, root gets through.
    let denied = sb.client(NOBODY, NOBODY).connect("169.254.169.254", 80);
    assert_eq!(denied.result, "EPERM", "{denied:?}");
    assert_eq!(sb.client(0, 0).connect("169.254.169.254", 80).result, "connected");
    // Only the connect hooks are attached.
    let attached = sb.attached_programs();
    assert!(attached.contains("connect4") && attached.contains("connect6"), "{attached}");
    assert!(!attached.contains("sock_ops") && !attached.contains("setsockopt"), "{attached}");
    for pin in ["links/msg", "links/msg_prog", "links/resp", "links/resp_prog"] {
        assert!(!sb.pin_dir().join(pin).exists(), "{pin}");
    }

    // guard_started names it, in one sentence.
    let g = started(&d);
    let degraded = g["degraded"].as_array().expect("degraded is a list");
    assert_eq!(degraded.len(), 2, "{g}");
    assert_eq!(degraded[0]["feature"], "imdsv1_inspection", "{g}");
    assert_eq!(degraded[0]["missing"], serde_json::json!(["sockhash", "sk_msg"]), "{g}");
    // The response hook is attached to the same sockhash: credential attribution is off too.
    assert_eq!(degraded[1]["feature"], "credential_attribution", "{g}");
    assert_eq!(degraded[1]["missing"], serde_json::json!(["sockhash"]), "{g}");
    let reason = degraded[0]["reason"].as_str().unwrap();
    assert!(one_sentence(reason) && reason.contains("sk_msg programs"), "{reason}");
    assert_eq!(g["msg_attach"], Value::Null, "{g}");
    // The log says it once, as a warning.
    assert!(d.wait_stderr("IMDSv1 inspection is off because this kernel has no socket hash maps"));

    // status: still enforcing (all a daemon on this kernel attaches), and says what is off.
    let s = status(&sb, &[NO_STREAM_PARSER], &["--json"]);
    assert!(s.status.success(), "{s:?}");
    let s: Value = serde_json::from_slice(&s.stdout).unwrap();
    assert_eq!(s["enforcing"], true, "{s}");
    assert_eq!(s["degraded"][0]["feature"], "imdsv1_inspection", "{s}");
    assert_eq!(s["degraded"][0]["reason"], reason, "{s}");
    let text = status(&sb, &[NO_STREAM_PARSER], &[]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("degraded:   imdsv1_inspection: {reason}\n")), "{text}");
    let check = status(&sb, &[NO_STREAM_PARSER], &["--check"]);
    assert!(check.status.success(), "{check:?}");
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("degraded: imdsv1_inspection,credential_attribution"),
        "{check:?}"
    );

    // The metrics.
    let m = metrics(&sb, g["metrics"].as_str().unwrap());
    let info = m.lines().find(|l| l.starts_with("imds_guard_build_info{")).expect(&m);
    assert!(info.ends_with("degraded=\"imdsv1_inspection,credential_attribution\"} 1"), "{info}");
    assert!(m.contains("imds_guard_feature_degraded{feature=\"imdsv1_inspection\"} 1"), "{m}");
    drop(d);
}

#[test]
fn a_policy_that_denies_imdsv1_is_refused_on_such_a_kernel_unless_allowed() {
    let Some(sb) = Sandbox::new("degraded_deny", ImdsMode::Optional) else { return };
    let policy = sb.write(
        "policy.toml",
        "mode = \"enforce\"\n[[allow]]\nuid = 0\n[[allow]]\nname = \"legacy\"\nuid = 1\nimdsv1 = \"deny\"\n",
    );
    let run = |extra: &[&str]| {
        let mut cmd = Command::new(guard_bin());
        imds_guard_tests::sandbox::enter_netns(&mut cmd, &sb.netns_fd);
        cmd.env(NO_STREAM_PARSER.0, NO_STREAM_PARSER.1)
            .args(["run", "--config"])
            .arg(&policy)
            .arg("--cgroup")
            .arg(&sb.cgroup)
            .arg("--pin-dir")
            .arg(sb.pin_dir())
            .arg("--events-socket")
            .arg(sb.events_socket())
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        err.contains("allow[1] \"legacy\"")
            && err.contains(
                "sets imdsv1 = \"deny\", which this kernel cannot enforce: IMDSv1 inspection is off"
            )
            && err.contains("--allow-degraded"),
        "{err}"
    );
    // Refused before anything was attached.
    assert!(!sb.pin_dir().join("links/connect4").exists(), "{err}");
    assert!(sb.attached_programs().lines().all(|l| !l.contains("connect4")), "{}", sb.attached_programs());

    let d = sb.daemon_env(&policy, &["--allow-degraded"], &[NO_STREAM_PARSER]);
    assert_eq!(started(&d)["degraded"][0]["feature"], "imdsv1_inspection");
    assert!(d.wait_stderr("which this kernel cannot enforce (--allow-degraded)"), "{}", d.stderr());
    assert_eq!(sb.client(NOBODY, NOBODY).connect("169.254.169.254", 80).result, "EPERM");
}

#[test]
fn nothing_is_degraded_when_nothing_is_missing() {
    let Some(sb) = Sandbox::new("not_degraded", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon_env(&policy, &["--metrics-addr", "127.0.0.1:0"], &[]);
    let g = started(&d);
    assert_eq!(g["degraded"], serde_json::json!([]), "{g}");
    assert!(g["msg_attach"] == "link" || g["msg_attach"] == "map", "{g}");
    let s = sb.status_json();
    assert_eq!(
        (s["enforcing"].clone(), s["degraded"].clone()),
        (Value::Bool(true), serde_json::json!([])),
        "{s}"
    );
    let m = metrics(&sb, g["metrics"].as_str().unwrap());
    assert!(m.contains("degraded=\"\"} 1"), "{m}");
    assert!(m.contains("imds_guard_feature_degraded{feature=\"imdsv1_inspection\"} 0"), "{m}");
    assert!(m.contains("imds_guard_feature_degraded{feature=\"credential_attribution\"} 0"), "{m}");
    assert!(!d.stderr().contains("IMDSv1 inspection is off"), "{}", d.stderr());
}

#[test]
fn prepare_names_the_degradation_and_the_attach_path() {
    let Some(sb) = Sandbox::new("degraded_prepare", ImdsMode::Optional) else { return };
    let prepare = |env: &[(&str, &str)]| {
        let out = Command::new(guard_bin())
            .envs(env.iter().copied())
            .args(["prepare", "--pin-dir"])
            .arg(sb.pin_dir())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let said = prepare(&[NO_STREAM_PARSER]);
    assert!(said.contains("IMDSv1 inspection is off because this kernel has no socket hash maps"), "{said}");
    assert!(said.contains("the kernel has every feature the connect rules need"), "{said}");
    let said = prepare(&[]);
    assert!(!said.contains("IMDSv1 inspection is off"), "{said}");
    assert!(said.contains("the request inspector will be attached through a bpf_link"), "{said}");
    let said = prepare(&[("IMDS_GUARD_PRETEND_MISSING", "sk_msg_link")]);
    assert!(said.contains("the request inspector will be attached through its socket map"), "{said}");
}
