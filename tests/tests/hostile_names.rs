//! What a process controls — its comm, the name of the file it runs, its cgroup's and pod's names —
//! is hostile input wherever it flows. These tests do what an attacker did: choose such names so
//! that they change what imds-guard writes (a suggested policy, a terminal line) or which cgroup a
//! rule resolves to, and show that the names are shown, escaped, and never obeyed.

use std::{process::Command, time::Duration};

use imds_guard_tests::{ImdsMode, Sandbox, client::connect_bin};
use serde_json::Value;

const IMDS: &str = "169.254.169.254";
const NOBODY: u32 = 65534;
const T: Duration = Duration::from_secs(10);

/// The suggestion parsed by Python's `tomllib` (an independent TOML parser), as JSON.
fn python_toml(sb: &Sandbox, file: &std::path::Path) -> Value {
    let script = sb.write(
        "parse_toml.py",
        "import json, sys, tomllib\nprint(json.dumps(tomllib.load(open(sys.argv[1], 'rb'))))\n",
    );
    let out = Command::new("/usr/bin/python3").arg(&script).arg(file).output().unwrap();
    assert!(out.status.success(), "tomllib: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Issue 16, bypass 1: a denied user (uid 65534) names its process `"\n[[allow]]\n#"` and then
/// `"\nuid=65534\n#"` with `prctl(PR_SET_NAME)`, and runs a copy of a program from a file whose
/// name carries a whole `[[allow]]` table, so that `suggest` would write a table allowing uid
/// 65534 with any program. The names must appear escaped in comments; the tables must be exactly
/// the ones the workloads justify; installed, the suggestion refuses uid 65534 with any other
/// program.
#[test]
fn suggest_is_not_injected_through_comm_or_exe_path() {
    let Some(sb) = Sandbox::new("hn_suggest", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "mode = \"monitor\"\n\n[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);
    let prog = connect_bin().display().to_string();
    // The comm trick, in two connects, from the plain client.
    let r = sb.client(NOBODY, NOBODY).results(
        &prog,
        None,
        &["comm", "\n[[allow]]\n#", "connect", IMDS, "80", "comm", "\nuid=65534\n#", "connect", IMDS, "80"],
    );
    assert_eq!(r, ["connected", "connected"], "monitor mode");
    // The exe-path trick: a copy of the client whose file name is a table with a plausible name.
    let evil_dir = sb.dir.join("evil");
    std::fs::create_dir(&evil_dir).unwrap();
    let evil = evil_dir
        .join(format!("x\n[[allow]]\nname = \"seen: unit:{}\"\nuid = 65534\n#", "amazon-ssm-agent.service"));
    imds_guard_tests::sandbox::copy_exe(&prog, &evil, 0o755);
    imds_guard_tests::sandbox::run(Command::new("chmod").arg("-R").arg("a+rx").arg(&evil_dir));
    let r = sb.client(NOBODY, NOBODY).results(evil.to_str().unwrap(), None, &["connect", IMDS, "80"]);
    assert_eq!(r, ["connected"]);
    d.wait_event(T, |e| {
        e["event"] == "connect_denied" && e["exe"].as_str().is_some_and(|x| x.contains("[[allow]]"))
    })
    .expect("the evil exe was seen");

    let out = sb.cli(&["suggest", "--socket", sb.events_socket().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let suggested = String::from_utf8_lossy(&out.stdout).into_owned();
    // Every comment line is one line: no hostile name ended it.
    for line in suggested.lines() {
        let t = line.trim_start();
        assert!(
            t.is_empty() || t.starts_with('#') || t.starts_with("[[allow]]") || t.contains(" = "),
            "a line that is neither a comment, a table header nor a key: {line:?}\n{suggested}"
        );
    }
    assert!(suggested.contains("\\n[[allow]]\\n#"), "the comm is shown escaped: {suggested}");
    let path = sb.write("suggested.toml", &suggested);
    let parsed = python_toml(&sb, &path);
    let tables = parsed["allow"].as_array().unwrap();
    // uid 0 (kept) and two workloads: the client and the evil copy, each by executable and uid.
    assert_eq!(tables.len(), 3, "{suggested}");
    assert_eq!(tables[0], serde_json::json!({"uid": 0}));
    for t in &tables[1..] {
        let mut keys: Vec<&str> = t.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["exe", "name", "read", "uid"], "{t}\n{suggested}");
        assert_eq!(t["uid"], NOBODY);
        assert_eq!(t["read"], "no-secrets", "seen reading no secret");
        assert!([prog.as_str(), evil.to_str().unwrap()].contains(&t["exe"].as_str().unwrap()), "{t}");
    }
    let check = sb.cli(&["check", "--config", path.to_str().unwrap()]);
    assert!(check.status.success(), "{check:?}\n{suggested}");
    d.kill();

    // Installed: uid 65534 gets no further than the two programs it was seen running.
    let _d = sb.daemon(&path);
    let other = sb.dir.join("other");
    imds_guard_tests::sandbox::copy_exe(&prog, &other, 0o755);
    let r = sb.client(NOBODY, NOBODY).results(other.to_str().unwrap(), None, &["connect", IMDS, "80"]);
    assert_eq!(r, ["EPERM"], "uid 65534 with another program: {suggested}");
    let out = sb.client(NOBODY, NOBODY).curl(&["-s", "-m", "3", &format!("http://{IMDS}/latest/meta-data/")]);
    assert!(!out.status.success(), "curl as uid 65534 must be refused: {out:?}");
}
