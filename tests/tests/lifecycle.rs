//! Enforcement outlives the daemon; restart adopts it; only `unload` removes it; bad policies are
//! refused and never weaken what is enforced.

use std::time::Duration;

use imds_guard_tests::{ImdsMode, Sandbox};
use nix::sys::signal::Signal;

const NOBODY: u32 = 65534;

#[test]
fn sigkill_keeps_enforcement_restart_adopts_and_unload_removes() {
    let Some(sb) = Sandbox::new("lifecycle", ImdsMode::Optional) else {
        return;
    };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);
    let nobody = sb.client(NOBODY, NOBODY);
    assert_eq!(nobody.connect("169.254.169.254", 80).result, "EPERM");

    d.kill();
    assert_eq!(nobody.connect("169.254.169.254", 80).result, "EPERM", "enforcement survives SIGKILL");
    assert_eq!(nobody.connect("fd00:ec2::254", 80).result, "EPERM");
    assert_eq!(sb.client(0, 0).connect("169.254.169.254", 80).result, "connected");
    let st = sb.cli(&["status", "--json", "--pin-dir", sb.pin_dir().to_str().unwrap()]);
    assert!(st.status.success(), "{st:?}");
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["enforcing"], true);
    assert_eq!(st["counters"]["denied"], 3, "one before and two after the kill");
    assert_eq!(st["rules"], 1);

    // A new daemon adopts the pinned links (programs replaced in place, still two attached).
    let d = sb.daemon(&policy);
    let started = d.wait_event(Duration::from_secs(1), |e| e["event"] == "guard_started").unwrap();
    assert_eq!(started["attachment"], "adopted");
    assert_eq!(started["generation"], 2);
    assert_eq!(sb.attached_programs().matches("imdsg_connect").count(), 2, "{}", sb.attached_programs());
    assert_eq!(nobody.connect("169.254.169.254", 80).result, "EPERM");
    assert!(
        d.wait_event(Duration::from_secs(5), |e| e["event"] == "connect_denied").is_some(),
        "the new daemon reports"
    );

    // SIGTERM is not an outage either.
    d.signal(Signal::SIGTERM);
    let d_status = d.wait_exit(Duration::from_secs(10));
    assert!(d_status.success(), "{d_status:?}");
    assert_eq!(nobody.connect("169.254.169.254", 80).result, "EPERM", "enforcement survives SIGTERM");

    let out = sb.cli(&["unload", "--pin-dir", sb.pin_dir().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("connect4 (program detached)") && text.contains("IMDSG_RULES"), "{text}");
    assert_eq!(nobody.connect("169.254.169.254", 80).result, "connected", "unload stops enforcement");
    assert!(!sb.attached_programs().contains("imdsg"), "{}", sb.attached_programs());
    assert!(!sb.pin_dir().exists());
    let st = sb.cli(&["status", "--pin-dir", sb.pin_dir().to_str().unwrap()]);
    assert!(!st.status.success());
}

#[test]
fn bad_policy_is_refused_with_its_position() {
    let Some(sb) = Sandbox::new("bad_policy", ImdsMode::Optional) else {
        return;
    };
    let cases = [
        (
            "mode = \"enforce\"\n[[allow]]\nuser = \"no-such-user-imdsg\"\n",
            "policy.toml:3:8",
            "unknown user `no-such-user-imdsg`",
        ),
        ("[[allow]]\nuidd = 0\n", "policy.toml:2:1", "unknown field `uidd`"),
        ("endpoints = [\"imds\"]\n", "policy.toml:1:14", "neither an endpoint preset"),
        ("[[allow]]\nuid = -1\n", "policy.toml:2:7", "-1"),
        ("[[allow]]\nname = \"everyone\"\n", "policy.toml:1:1", "no identity keys"),
    ];
    for (text, at, what) in cases {
        let p = sb.write("policy.toml", text);
        // A user the database does not know yet makes `run` wait for it (identity.rs:
        // a_user_created_after_the_daemon_started_gets_its_rule); `check` still refuses it.
        let subs: &[&str] = if what.starts_with("unknown user") { &["check"] } else { &["check", "run"] };
        for &sub in subs {
            let mut args = vec![sub, "--config", p.to_str().unwrap()];
            let pin = sb.pin_dir();
            if sub == "run" {
                args.extend(["--cgroup", sb.cgroup.to_str().unwrap(), "--pin-dir", pin.to_str().unwrap()]);
            }
            let out = sb.cli(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{sub} accepted {text:?}");
            assert!(err.contains(at) && err.contains(what), "{sub}: expected `{at}` and `{what}` in:\n{err}");
        }
    }
    assert!(!sb.attached_programs().contains("imdsg"), "a refused policy attaches nothing");
    let missing = sb.cli(&["check", "--config", "/nonexistent/policy.toml"]);
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("/nonexistent/policy.toml: cannot read the policy file")
    );
}

#[test]
fn reload_switches_policy_and_a_broken_one_keeps_the_old() {
    let Some(sb) = Sandbox::new("reload", ImdsMode::Optional) else {
        return;
    };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);
    let nobody = sb.client(NOBODY, NOBODY);
    assert_eq!(nobody.connect("169.254.169.254", 80).result, "EPERM");

    // A broken policy is refused; the old one stays enforced.
    sb.write("policy.toml", "[[allow]]\nuser = \"no-such-user-imdsg\"\n");
    d.signal(Signal::SIGHUP);
    let failed = d
        .wait_event(Duration::from_secs(5), |e| e["event"] == "policy_reload_failed")
        .expect("reload refused");
    assert!(failed["error"].as_str().unwrap().contains("policy.toml:2:8"), "{failed}");
    assert_eq!(nobody.connect("169.254.169.254", 80).result, "EPERM");
    assert_eq!(sb.client(0, 0).connect("169.254.169.254", 80).result, "connected");

    // A good one takes over.
    sb.write("policy.toml", "[[allow]]\nuser = \"nobody\"\n");
    d.signal(Signal::SIGHUP);
    let ok = d.wait_event(Duration::from_secs(5), |e| e["event"] == "policy_reloaded").expect("reloaded");
    assert_eq!(ok["generation"], 2);
    assert_eq!(nobody.connect("169.254.169.254", 80).result, "connected");
    assert_eq!(sb.client(0, 0).connect("169.254.169.254", 80).result, "EPERM");
    std::thread::sleep(Duration::from_millis(300)); // the file watch and the signal may both reload
    let last = d.events().into_iter().rev().find(|e| e["event"] == "policy_reloaded").unwrap();
    let st = sb.cli(&["status", "--json", "--pin-dir", sb.pin_dir().to_str().unwrap()]);
    let st: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(st["generation"], last["generation"]);
    assert_eq!(st["rule_entries"], 1, "the old generation's rules are gone");
}

/// A policy rewritten in place by a writer that pauses (`cat > policy.toml` fed slowly; a
/// configuration tool that truncates, then writes) is never installed half-written: the daemon
/// installs a changed file when its writer closes it, and a text nobody was seen finishing only
/// once it has stayed the same for seconds. (Under QEMU a 120 ms pause once installed the first
/// line alone: an enforce policy with no rules.)
#[test]
fn a_policy_rewritten_in_place_is_installed_once_its_writer_is_done() {
    use std::io::Write as _;
    let Some(sb) = Sandbox::new("reload_in_place", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);
    let nobody = sb.client(NOBODY, NOBODY);
    let reloads = |d: &imds_guard_tests::Daemon| {
        d.events().into_iter().filter(|e| e["event"] == "policy_reloaded").collect::<Vec<_>>()
    };
    let before = reloads(&d).len();

    // Truncated, its first line written, then a pause longer than the periodic look (2 s).
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(&policy).unwrap();
    f.write_all(b"mode = \"enforce\"\n").unwrap();
    f.flush().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(reloads(&d).len(), before, "installed half-written: {:?}", reloads(&d));
    assert_eq!(sb.client(0, 0).connect("169.254.169.254", 80).result, "connected");
    f.write_all(b"\n[[allow]]\nuid = 0\n\n[[allow]]\nuser = \"nobody\"\n").unwrap();
    drop(f);
    let ok = d
        .wait_event(Duration::from_secs(10), |e| e["event"] == "policy_reloaded")
        .expect("installed once closed");
    assert_eq!(ok["rules"], 2, "{ok}");
    assert_eq!(reloads(&d).len(), before + 1, "{:?}", reloads(&d));
    assert_eq!(nobody.connect("169.254.169.254", 80).result, "connected");

    // A writer that keeps the file open: the text goes in once it has stayed the same for 5 s.
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(&policy).unwrap();
    let written = std::time::Instant::now();
    f.write_all(b"[[allow]]\nuid = 0\n").unwrap();
    f.flush().unwrap();
    let deadline = written + Duration::from_secs(30);
    while reloads(&d).len() < before + 2 {
        assert!(std::time::Instant::now() < deadline, "never installed: {}", d.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    let waited = written.elapsed();
    assert!(waited >= Duration::from_secs(5), "installed after {waited:?}, before it was quiet for 5 s");
    assert_eq!(reloads(&d)[before + 1]["rules"], 1);
    assert_eq!(nobody.connect("169.254.169.254", 80).result, "EPERM");
    drop(f);
}

/// A writer's close says the text it wrote is whole, not what the file holds later: the next
/// writer, which truncated the file and has not written yet, is not installed on the word of the
/// one before. (`reload_storm` once had an enforce policy with no rules installed, root refused
/// for a generation: the close notice of a text already installed was taken for a new one while
/// the next write's open(O_TRUNC) waited 200 ms for the old data's writeback.)
#[test]
fn a_file_truncated_by_the_next_writer_is_not_installed_on_the_last_writers_close() {
    use std::io::Write as _;
    let Some(sb) = Sandbox::new("reload_truncated", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);
    let reloads = |d: &imds_guard_tests::Daemon| {
        d.events().into_iter().filter(|e| e["event"] == "policy_reloaded").collect::<Vec<_>>()
    };
    let before = reloads(&d).len();
    let rewrite = |text: &str| {
        let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(&policy).unwrap();
        f.write_all(text.as_bytes()).unwrap();
    };
    // Once the daemon has looked at its start's own changes (its event socket, in the policy's
    // directory), a whole text, closed twice: the second close is noticed while the daemon lets
    // the first settle, and queues behind it.
    std::thread::sleep(Duration::from_millis(500));
    rewrite("[[allow]]\nuid = 0\n\n[[allow]]\nuid = 4242\n");
    std::thread::sleep(Duration::from_millis(30));
    drop(std::fs::OpenOptions::new().write(true).open(&policy).unwrap());
    let ok = d
        .wait_event(Duration::from_secs(10), |e| e["event"] == "policy_reloaded")
        .expect("installed once closed");
    assert_eq!(ok["rules"], 2, "{ok}");
    // At once, the next writer truncates the file and pauses before it writes.
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(&policy).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(reloads(&d).len(), before + 1, "the truncated file was installed: {:?}", reloads(&d));
    assert_eq!(sb.client(0, 0).connect("169.254.169.254", 80).result, "connected");
    f.write_all(b"[[allow]]\nuid = 0\n").unwrap();
    drop(f);
    let next = d
        .wait_event(Duration::from_secs(10), |e| {
            e["event"] == "policy_reloaded" && e["generation"].as_u64() > ok["generation"].as_u64()
        })
        .expect("installed once closed");
    assert_eq!(next["rules"], 1, "{:?}", reloads(&d));
    assert_eq!(reloads(&d).len(), before + 2, "{:?}", reloads(&d));

    // A writer done, and at once the next one truncates the file and pauses: the close is news,
    // but what the file holds by the time it is read is the next writer's empty file, which waits
    // until it has stayed empty for 5 s.
    rewrite("[[allow]]\nuid = 0\n\n[[allow]]\nuid = 4243\n");
    let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(&policy).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        reloads(&d).iter().all(|e| e["rules"] != 0),
        "the truncated file was installed: {:?}",
        reloads(&d)
    );
    assert_eq!(sb.client(0, 0).connect("169.254.169.254", 80).result, "connected");
    f.write_all(b"[[allow]]\nuid = 0\n\n[[allow]]\nuid = 4244\n\n[[allow]]\nuid = 4245\n").unwrap();
    drop(f);
    d.wait_event(Duration::from_secs(10), |e| e["event"] == "policy_reloaded" && e["rules"] == 3)
        .unwrap_or_else(|| panic!("installed once closed: {:?}", reloads(&d)));
    assert!(reloads(&d).iter().all(|e| e["rules"] != 0), "{:?}", reloads(&d));
}

/// A denied identity connecting every 0.5 ms never gets through while the daemon is SIGKILLed,
/// restarted, and upgraded twice to binaries whose maps have another layout (new maps, programs
/// swapped into the same links, the message hook moved to the new sockhash, old maps removed).
#[test]
fn a_denied_storm_gets_nothing_across_sigkill_restart_and_upgrades() {
    let Some(sb) = Sandbox::new("upgrade_storm", ImdsMode::Optional) else {
        return;
    };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let old = [("IMDS_GUARD_LAYOUT_TAG", "oldlayout")];
    let d = sb.daemon_wrapped(&policy, &[], &old);
    let storm = sb
        .client(NOBODY, NOBODY)
        .command(imds_guard_tests::client::connect_bin().to_str().unwrap())
        .args(["storm", "169.254.169.254", "80", "9000"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    d.kill();
    std::thread::sleep(Duration::from_millis(500));
    // Restart, same layout: adopted.
    let d = sb.daemon_wrapped(&policy, &[], &old);
    let e = d.wait_event(Duration::from_secs(1), |e| e["event"] == "guard_started").unwrap();
    assert_eq!(e["attachment"], "adopted");
    std::thread::sleep(Duration::from_millis(500));
    d.kill();
    // Upgrade: another layout.
    let d = sb.daemon_wrapped(&policy, &[], &[("IMDS_GUARD_LAYOUT_TAG", "newlayout")]);
    let e = d.wait_event(Duration::from_secs(1), |e| e["event"] == "guard_started").unwrap();
    assert_eq!(e["attachment"], "adopted", "the links were kept: {e}");
    assert!(sb.pin_dir().join("maps-newlayout").is_dir());
    assert!(!sb.pin_dir().join("maps-oldlayout").exists(), "old maps removed");
    std::thread::sleep(Duration::from_millis(800));
    d.signal(Signal::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(10)).success());
    // And to this build's real layout.
    let d = sb.daemon(&policy);
    assert_eq!(
        d.wait_event(Duration::from_secs(1), |e| e["event"] == "guard_started").unwrap()["attachment"],
        "adopted"
    );
    assert!(!sb.pin_dir().join("maps-newlayout").exists());

    let out = storm.wait_with_output().unwrap();
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("storm result");
    let counts = line["storm"].as_object().unwrap();
    assert!(counts.get("connected").is_none(), "a denied connect got through: {line}");
    assert!(counts["EPERM"].as_u64().unwrap() > 1000, "{line}");
    assert_eq!(counts.len(), 1, "only EPERM: {line}");
    assert_eq!(
        sb.attached_programs().matches("imdsg_").count(),
        7,
        "connect4, connect6, sendmsg4, sendmsg6, sock_create, setsockopt, sockops: {}",
        sb.attached_programs()
    );

    // Request inspection works on the new sockhash: a tokenless GET by root is reported.
    let res = sb.client(0, 0).steps(
        imds_guard_tests::client::connect_bin().to_str().unwrap(),
        None,
        &["get", "169.254.169.254", "80", "/latest/meta-data/", "1"],
    );
    assert_eq!(res[0]["get"]["200"], 1);
    assert!(
        d.wait_event(Duration::from_secs(5), |e| e["event"] == "imdsv1_request").is_some(),
        "{:?}",
        d.events()
    );
    let st = sb.cli(&["status", "--json", "--pin-dir", sb.pin_dir().to_str().unwrap()]);
    assert!(st.status.success(), "{st:?}");
}

/// Issue 19: a command whose reader goes away (`imds-guard status | head -1`) ends quietly, killed
/// by SIGPIPE as Unix tools are, not with a panic.
#[test]
fn a_command_whose_reader_goes_away_ends_quietly() {
    use std::{io::Read as _, os::unix::process::ExitStatusExt as _, process::Stdio};
    let Some(sb) = Sandbox::new("closed_pipe", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let _d = sb.daemon(&policy);
    // `check` of a large policy prints a line per table: more than a pipe holds.
    let big: String = (0..5000).map(|i| format!("[[allow]]\nuid = {i}\n")).collect();
    let big = sb.write("big.toml", &big);
    for args in [
        vec!["status", "--pin-dir", sb.pin_dir().to_str().unwrap()],
        vec!["check", "--config", big.to_str().unwrap()],
    ] {
        let mut child = std::process::Command::new(imds_guard_tests::sandbox::guard_bin())
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 1];
        child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
        drop(child.stdout.take());
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let status = child.wait().unwrap();
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(status.success() || status.signal() == Some(libc::SIGPIPE), "{args:?}: {status:?} {err}");
    }
}
