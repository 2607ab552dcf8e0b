//! Hostile policy files, through `imds-guard check` and through a running daemon's reload: huge and
//! negative numbers, 100,000 tables, paths that are not UTF-8, NUL bytes, very long strings, deep
//! nesting, too many lookups, duplicates. Each bad one gets a clear error at its `file:line:col`
//! (the same from `check` and in the `policy_reload_failed` event), and the policy in force stays
//! enforced, shown with a denied connect after every refused reload. The largest policy allowed
//! (16,384 tables) and one made only of duplicates work.

use std::time::{Duration, Instant};

use imds_guard_tests::{Daemon, ImdsMode, Sandbox};
use nix::sys::signal::Signal;
use serde_json::Value;

const NOBODY: u32 = 65534;
const IMDS: &str = "169.254.169.254";

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// `imds-guard check` on `file`: its stderr, which must be a refusal.
fn check_refuses(sb: &Sandbox, file: &std::path::Path) -> String {
    let out = sb.cli(&["check", "--config", s(file)]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "check accepted it: {out:?}");
    err
}

/// The digest `imds-guard check --json` gives the policy in `file`.
fn digest_of(sb: &Sandbox, file: &std::path::Path) -> Value {
    let out = sb.cli(&["check", "--json", "--config", s(file)]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["digest"].clone()
}

/// The `policy_reloaded` event that installed `digest`.
fn installed(d: &Daemon, digest: &Value) -> Value {
    d.wait_event(Duration::from_secs(30), |e| {
        e["event"] == "policy_reloaded" && e["policy_digest"] == *digest
    })
    .unwrap_or_else(|| panic!("{digest} not installed: {:#?}\n{}", d.events(), d.stderr()))
}

fn reload_failures(d: &Daemon) -> usize {
    d.events().iter().filter(|e| e["event"] == "policy_reload_failed").count()
}

/// The policy in force (`uid = 0`) still decides: nobody refused (and reported), root through.
fn old_policy_enforced(sb: &Sandbox, d: &Daemon, what: &str) {
    let before = d.denials().len();
    assert_eq!(sb.client(NOBODY, NOBODY).connect(IMDS, 80).result, "EPERM", "{what}: nobody");
    assert_eq!(sb.client(0, 0).connect(IMDS, 80).result, "connected", "{what}: root");
    let deadline = Instant::now() + Duration::from_secs(5);
    while d.denials().len() == before {
        assert!(Instant::now() < deadline, "{what}: the denial was not reported");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn hostile_values_are_refused_by_check_and_by_a_running_daemon_which_keeps_its_policy() {
    let Some(sb) = Sandbox::new("hostile_values", ImdsMode::Optional) else { return };
    // Directories for a policy that needs too many lookups (cgroup rules at twelve depths).
    let deep: Vec<String> = (1..=12).map(|d| vec!["d"; d].join("/")).collect();
    std::fs::create_dir_all(sb.cgroup.join(&deep[11])).unwrap();
    let many_lookups: String = deep
        .iter()
        .flat_map(|d| {
            ["", "uid = 1\n", "gid = 1\n", "comm = \"c\"\n"]
                .map(|extra| format!("[[allow]]\ncgroup = \"{}/{d}\"\n{extra}", sb.cgroup_rel()))
        })
        .collect();
    let hundred_thousand = "[[allow]]\nuid=0\n".repeat(100_000); // 1.6 MB
    let three_mib = format!("# {}\n[[allow]]\nuid = 0\n", "x".repeat(3 << 20));
    let long_name = format!("[[allow]]\nuser = \"{}\"\n", "a".repeat(1 << 20));
    let deep_nesting = format!("x = {}{}\n", "[".repeat(100_000), "]".repeat(100_000));

    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        ("uid above u32", b"[[allow]]\nuid = 4294967296\n".to_vec(), ":2:7", "expected u32"),
        ("negative gid", b"[[allow]]\ngid = -1\n".to_vec(), ":2:7", "invalid value: integer `-1`"),
        ("uid beyond i64", b"[[allow]]\nuid = 99999999999999999999\n".to_vec(), ":2:7", "expected u32"),
        ("100,000 tables", hundred_thousand.into_bytes(), ":32769:1", "table 16385 of 100000: at most 16384"),
        ("a 3 MiB file", three_mib.into_bytes(), ": cannot read", "larger than 2097152 bytes (2 MiB)"),
        (
            "exe not UTF-8",
            b"[[allow]]\nexe = \"/opt/caf\xe9/bin/agent\"\n".to_vec(),
            ":2:16",
            "byte 0xe9 is not UTF-8",
        ),
        ("cgroup not UTF-8", b"[[allow]]\ncgroup = \"/\xff\"\n".to_vec(), ":2:12", "is not UTF-8"),
        ("NUL in exe", b"[[allow]]\nexe = \"/bin/sh\\u0000.evil\"\n".to_vec(), ":2:7", "nul byte"),
        ("NUL in cgroup", b"[[allow]]\ncgroup = \"/a\\u0000b\"\n".to_vec(), ":2:10", "nul byte"),
        ("NUL in comm", b"[[allow]]\ncomm = \"curl\\u0000\"\n".to_vec(), ":2:8", "1 to 15 bytes"),
        (
            "escape in user",
            b"[[allow]]\nuser = \"\\u001b[2J\"\n".to_vec(),
            ":2:8",
            "unknown user `\\u{1b}[2J`",
        ),
        ("a 1 MiB user name", long_name.into_bytes(), ":2:8", "characters not shown"),
        ("nesting", deep_nesting.into_bytes(), ":1:", "recursion"),
        ("the same key twice", b"[[allow]]\nuid = 0\nuid = 65534\n".to_vec(), ":3:1", "duplicate key"),
        ("too many lookups", many_lookups.into_bytes(), ":89:1", "at most 32 are supported"),
    ];

    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);
    let digest = sb.status_json()["policy_digest"].clone();
    for (what, bytes, at, message) in &cases {
        std::fs::write(&policy, bytes).unwrap();
        let location = format!("{}{at}", policy.display());
        let err = check_refuses(&sb, &policy);
        assert!(
            err.contains(&location) && err.to_lowercase().contains(&message.to_lowercase()),
            "{what}: check should say `{location}` and `{message}`:\n{}",
            &err[..err.len().min(2000)]
        );
        assert!(err.len() < 2048, "{what}: {} bytes of error", err.len());
        assert!(!err.chars().any(|c| c.is_control() && c != '\n'), "{what}: {err:?}");

        let n = reload_failures(&d);
        d.signal(Signal::SIGHUP);
        let ev = d
            .wait_event(Duration::from_secs(20), |e| {
                e["event"] == "policy_reload_failed"
                    && e["error"].as_str().is_some_and(|m| m.contains(&location))
                    && e["reload_failures"].as_u64() > Some(n as u64)
            })
            .unwrap_or_else(|| panic!("{what}: no refused reload; events: {:#?}", d.events()));
        assert_eq!(ev["generation"], 1, "{what}");
        assert!(
            ev["error"].as_str().unwrap().to_lowercase().contains(&message.to_lowercase()),
            "{what}: {ev}"
        );
        old_policy_enforced(&sb, &d, what);
    }
    let st = sb.status_json();
    assert_eq!(st["generation"], 1, "nothing was ever installed: {st}");
    assert_eq!(st["policy_digest"], digest);
    assert_eq!(st["rule_entries"], 1);
    assert!(!d.events().iter().any(|e| e["event"] == "policy_reloaded"));
    let status_file = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let hwm = status_file.lines().find(|l| l.starts_with("VmHWM")).unwrap_or_default().to_owned();
    eprintln!(
        "{} hostile policies refused by check and by the daemon; the policy in force stayed (daemon {hwm})",
        cases.len()
    );
}

#[test]
fn the_largest_policy_and_one_of_duplicates_work() {
    let Some(sb) = Sandbox::new("hostile_large", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);

    // 16,384 tables: root, then uids 100000.. (the limit, exactly).
    let mut text = String::from("[[allow]]\nuid = 0\n");
    text.extend((0..16_383).map(|i| format!("[[allow]]\nuid = {}\n", 100_000 + i)));
    sb.write("policy.toml", &text);
    let t = Instant::now();
    let out = sb.cli(&["check", "--config", s(&policy)]);
    assert!(out.status.success(), "{out:?}");
    let check_ms = t.elapsed().as_millis();
    d.signal(Signal::SIGHUP);
    let ev = installed(&d, &digest_of(&sb, &policy));
    let st = sb.status_json();
    assert_eq!((st["rules"].as_u64(), st["rule_entries"].as_u64()), (Some(16_384), Some(16_384)), "{st}");
    assert_eq!(sb.client(NOBODY, NOBODY).connect(IMDS, 80).result, "EPERM");
    assert_eq!(sb.client(0, 0).connect(IMDS, 80).result, "connected");
    assert_eq!(sb.client(116_382, 116_382).connect(IMDS, 80).result, "connected", "the last table");
    assert_eq!(sb.client(116_383, 116_383).connect(IMDS, 80).result, "EPERM", "one past it");
    eprintln!(
        "16,384 tables: check {check_ms} ms, installed by the daemon in {} ms",
        ev["elapsed_us"].as_u64().unwrap() / 1000
    );

    // 16,384 copies of one table: accepted, installed once, the repeats warned about (briefly).
    let stderr_before = d.stderr().len();
    let reloads_before = d.events().iter().filter(|e| e["event"] == "policy_reloaded").count();
    sb.write("policy.toml", &"[[allow]]\nuid = 65534\n".repeat(16_384));
    let out = sb.cli(&["check", "--config", s(&policy)]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text.matches("(duplicate of allow[0], ignored)").count(), 16_383);
    d.signal(Signal::SIGHUP);
    let ev = installed(&d, &digest_of(&sb, &policy));
    assert_eq!(ev["rules"], 16_384);
    let st = sb.status_json();
    assert_eq!((st["rules"].as_u64(), st["rule_entries"].as_u64()), (Some(16_384), Some(1)), "{st}");
    assert_eq!(sb.client(NOBODY, NOBODY).connect(IMDS, 80).result, "connected");
    assert_eq!(sb.client(0, 0).connect(IMDS, 80).result, "EPERM");
    // The file watch and SIGHUP each install it: 11 warning lines each, not 16,383. (Polled: the
    // log and the events come through different pipes.)
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logged = d.stderr()[stderr_before..].to_owned();
        let reloads = d.events().iter().filter(|e| e["event"] == "policy_reloaded").count() - reloads_before;
        let summaries = logged.matches("and 16373 more warnings like these").count();
        let warn_lines = logged.lines().filter(|l| l.contains("WARN")).count();
        if summaries == reloads && warn_lines == 11 * reloads {
            break;
        }
        assert!(Instant::now() < deadline, "{reloads} reloads, {warn_lines} warning lines:\n{logged}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `check` prints what the file names (rule names, paths) escaped: a policy cannot drive the
/// operator's terminal.
#[test]
fn check_prints_names_escaped() {
    let Some(sb) = Sandbox::new("hostile_check_print", ImdsMode::Optional) else { return };
    let p = sb.write("policy.toml", "[[allow]]\nname = \"a\\u001b[2Jb\"\nuid = 0\n");
    let out = sb.cli(&["check", "--config", s(&p)]);
    assert!(out.status.success(), "{out:?}");
    assert!(!out.stdout.contains(&0x1b), "raw escape printed: {:?}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("a\\u{1b}[2Jb (line 1)"));
}
