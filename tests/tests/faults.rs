//! Faults under a running daemon: the pin filesystem unmounted, the programs detached, the policy
//! file deleted, the rules map full, a watched cgroup tree removed, the daemon killed during a
//! storm of denied connects. In every case the guard keeps enforcing what it enforced (or says
//! clearly that it no longer does, and why), says what happened, and recovers.

use std::{process::Command, time::Duration};

use imds_guard_tests::{Daemon, ImdsMode, Sandbox, client::connect_bin, sandbox::run};
use nix::sys::signal::Signal;
use serde_json::Value;

const NOBODY: u32 = 65534;
const IMDS: &str = "169.254.169.254";

fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

fn wait(d: &Daemon, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    d.wait_event(Duration::from_secs(10), pred)
        .unwrap_or_else(|| panic!("no {what}; events: {:#?}\nstderr:\n{}", d.events(), d.stderr()))
}

/// The denied identity is refused and reported; root gets through.
fn still_enforced(sb: &Sandbox, d: &Daemon, what: &str) {
    let before = d.denials().len();
    assert_eq!(sb.client(NOBODY, NOBODY).connect(IMDS, 80).result, "EPERM", "{what}: nobody");
    assert_eq!(sb.client(0, 0).connect(IMDS, 80).result, "connected", "{what}: root");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while d.denials().len() == before {
        assert!(std::time::Instant::now() < deadline, "{what}: the denial was not reported\n{}", d.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bpffs_unmounted_under_the_daemon_keeps_enforcing_is_reported_and_repinned() {
    let Some(sb) = Sandbox::new("fault_bpffs", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);
    still_enforced(&sb, &d, "at start");

    // The pins go with the filesystem. The daemon holds the links, so nothing is detached.
    nix::mount::umount2(&sb.bpffs, nix::mount::MntFlags::empty()).expect("unmount the sandbox bpffs");
    still_enforced(&sb, &d, "right after the unmount");
    let lost = wait(&d, "pins_lost", |e| e["event"] == "pins_lost");
    assert_eq!(lost["enforcing"], true);
    assert_eq!(
        lost["pins"].as_array().unwrap().len(),
        20,
        "9 links and 11 maps (the socket state, the credentials watches, the read lists and the guards among them): {lost}"
    );
    let why = lost["error"].as_str().unwrap();
    assert!(why.contains("is not on a bpffs") && why.contains("mount -t bpf"), "{why}");
    assert!(d.wait_stderr("enforcement continues while this daemon runs, but ends when it exits"));

    // A second daemon cannot take over without a bpffs, and says why; the first one goes on.
    let second =
        sb.cli(&["run", "--config", s(&policy), "--cgroup", s(&sb.cgroup), "--pin-dir", s(&sb.pin_dir())]);
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success() && err.contains("is not on a bpffs"), "{second:?}");
    still_enforced(&sb, &d, "with the pins lost");

    // bpffs back: the daemon pins its links and maps again, so enforcement outlives it again.
    run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&sb.bpffs));
    let restored = wait(&d, "pins_restored", |e| e["event"] == "pins_restored");
    assert_eq!(restored["pins"].as_array().unwrap().len(), 20, "{restored}");
    let st = sb.status_json();
    assert_eq!((st["enforcing"].as_bool(), st["generation"].as_u64()), (Some(true), Some(1)), "{st}");
    assert_eq!(st["counters"]["denied"], 3, "the counters are the live maps' ({st})");
    d.kill();
    assert_eq!(sb.client(NOBODY, NOBODY).connect(IMDS, 80).result, "EPERM", "enforcement outlives it");
    let d = sb.daemon(&policy);
    let started = wait(&d, "guard_started", |e| e["event"] == "guard_started");
    assert_eq!(started["attachment"], "adopted", "{started}");
    still_enforced(&sb, &d, "after the restart");

    // Pins lost and the daemon exits: the links go with it, and it says so.
    nix::mount::umount2(&sb.bpffs, nix::mount::MntFlags::empty()).expect("unmount again");
    wait(&d, "pins_lost", |e| e["event"] == "pins_lost");
    d.signal(Signal::SIGTERM);
    let stderr_at_exit = {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !d.stderr().contains("exiting") && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        d.stderr()
    };
    assert!(d.wait_exit(Duration::from_secs(10)).success());
    assert!(
        stderr_at_exit.contains("the programs are detached now that this daemon exits"),
        "{stderr_at_exit}"
    );
    assert_eq!(sb.client(NOBODY, NOBODY).connect(IMDS, 80).result, "connected", "as it said");
}

#[test]
fn unload_under_a_running_daemon_stops_enforcement_and_is_reported() {
    let Some(sb) = Sandbox::new("fault_unload", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);
    still_enforced(&sb, &d, "at start");
    let out = sb.cli(&["unload", "--pin-dir", s(&sb.pin_dir())]);
    assert!(out.status.success(), "{out:?}");
    // The daemon still holds the links, but unload detaches them.
    assert_eq!(sb.client(NOBODY, NOBODY).connect(IMDS, 80).result, "connected", "unload wins");
    assert!(!sb.attached_programs().contains("imdsg"), "{}", sb.attached_programs());
    let ev = wait(&d, "programs_detached", |e| e["event"] == "programs_detached");
    assert_eq!((ev["enforcing"].as_bool(), ev["links"].as_array().map(Vec::len)), (Some(false), Some(9)));
    std::thread::sleep(Duration::from_secs(3));
    assert!(!sb.pin_dir().exists(), "a detached link is not pinned again");
    assert_eq!(d.events().iter().filter(|e| e["event"] == "programs_detached").count(), 1, "said once");
    // A restart enforces again (from scratch).
    d.kill();
    let d = sb.daemon(&policy);
    assert_eq!(wait(&d, "start", |e| e["event"] == "guard_started")["attachment"], "attached");
    still_enforced(&sb, &d, "after the restart");
}

#[test]
fn policy_file_deleted_keeps_the_policy_says_so_once_and_is_read_when_back() {
    let Some(sb) = Sandbox::new("fault_config", ImdsMode::Optional) else { return };
    let text = "[[allow]]\nuid = 0\n";
    let policy = sb.write("policy.toml", text);
    let d = sb.daemon(&policy);
    let failed = |d: &Daemon| d.events().into_iter().filter(|e| e["event"] == "policy_reload_failed").count();

    std::fs::remove_file(&policy).unwrap();
    let ev = wait(&d, "policy_reload_failed", |e| e["event"] == "policy_reload_failed");
    let err = ev["error"].as_str().unwrap();
    assert!(
        err.contains("policy.toml: cannot read the policy file") && err.contains("No such file"),
        "{err}"
    );
    assert_eq!(ev["generation"], 1, "the policy in force stays");
    assert!(d.wait_stderr("the policy in force stays enforced until it can be read again"));
    still_enforced(&sb, &d, "with the policy file gone");
    std::thread::sleep(Duration::from_secs(5)); // two re-checks and more
    assert_eq!(failed(&d), 1, "said once, not at every re-check");
    // SIGHUP asks for it explicitly: refused again, and said.
    d.signal(Signal::SIGHUP);
    wait(&d, "a refused SIGHUP", |e| e["event"] == "policy_reload_failed" && e["reload_failures"] == 2);
    still_enforced(&sb, &d, "after SIGHUP without a policy file");

    // Back unchanged: nothing to install, but it is noticed.
    sb.write("policy.toml", text);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !d.stderr().contains("the policy file can be read again") {
        assert!(std::time::Instant::now() < deadline, "not noticed:\n{}", d.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!d.events().iter().any(|e| e["event"] == "policy_reloaded"));
    // A file that is not UTF-8 is refused with its position (it used to be ignored as unreadable).
    std::fs::write(&policy, b"[[allow]]\nuid = 0\nname = \"caf\xe9\"\n").unwrap();
    let ev = wait(&d, "refused non-UTF-8", |e| {
        e["event"] == "policy_reload_failed" && e["error"].as_str().is_some_and(|m| m.contains("not UTF-8"))
    });
    assert!(ev["error"].as_str().unwrap().contains("policy.toml:3:12"), "{ev}");
    still_enforced(&sb, &d, "after a policy that is not UTF-8");
    // Deleted and back changed: installed.
    std::fs::remove_file(&policy).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    sb.write("policy.toml", "[[allow]]\nuid = 65534\n");
    let ev = wait(&d, "policy_reloaded", |e| e["event"] == "policy_reloaded");
    assert_eq!((ev["reason"].as_str(), ev["generation"].as_u64()), (Some("file_changed"), Some(2)));
    assert_eq!(sb.client(NOBODY, NOBODY).connect(IMDS, 80).result, "connected");
    assert_eq!(sb.client(0, 0).connect(IMDS, 80).result, "EPERM");
}

#[test]
fn a_full_rules_map_refuses_the_reload_and_keeps_the_policy() {
    use aya::maps::{HashMap, Map, MapData};
    use imds_guard_common::{
        maps::{RULES, RULES_CAPACITY},
        rule::{RuleKey, RuleValue},
    };
    let Some(sb) = Sandbox::new("fault_mapfull", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon(&policy);
    // Fill the pinned rules map (it holds two generations of the largest policy) with entries of
    // a generation that is never live, as a leak or another writer would.
    let pin = imds_guard::kernel::paths::map_pin(&sb.pin_dir(), RULES);
    let mut rules: HashMap<MapData, RuleKey, RuleValue> =
        HashMap::try_from(Map::HashMap(MapData::from_pin(&pin).expect("open the pinned rules map"))).unwrap();
    let mut junk = 0u32;
    while rules
        .insert(
            &RuleKey { generation: 0xdead_0000, uid: junk, shape: 1, ..RuleKey::default() },
            &RuleValue::default(),
            0,
        )
        .is_ok()
    {
        junk += 1;
    }
    assert_eq!(junk, RULES_CAPACITY - 1, "the live policy's one rule and the junk fill it");

    // A reload needs room for its rules next to the live ones: refused, with the reason.
    sb.write("policy.toml", "[[allow]]\nuid = 0\n[[allow]]\nuid = 65534\n");
    let ev = wait(&d, "policy_reload_failed", |e| e["event"] == "policy_reload_failed");
    let err = ev["error"].as_str().unwrap();
    let expected = "writing rule 1 of 2: 32768 of the 32768 entries of the kernel's rules map are in use (1 by \
                    the policy in force, 0 by this one, 32767 by neither); the previous policy stays enforced";
    assert!(err.contains(expected), "{err}");
    assert_eq!(ev["generation"], 1);
    eprintln!("refused: {err}");
    still_enforced(&sb, &d, "after the refused reload");
    let st = sb.status_json();
    assert_eq!((st["generation"].as_u64(), st["rule_entries"].as_u64()), (Some(1), Some(1)), "{st}");

    // Room again: the next attempt installs it and clears out every other generation, junk included.
    for uid in 0..100 {
        rules.remove(&RuleKey { generation: 0xdead_0000, uid, shape: 1, ..RuleKey::default() }).unwrap();
    }
    d.signal(Signal::SIGHUP);
    let ev = wait(&d, "policy_reloaded", |e| e["event"] == "policy_reloaded");
    assert_eq!(ev["generation"], 2);
    assert_eq!(sb.client(NOBODY, NOBODY).connect(IMDS, 80).result, "connected");
    assert_eq!(rules.keys().count(), 2, "only the live generation's two rules are left");
}

#[test]
fn sigkill_during_a_storm_of_denied_connects_lets_none_through() {
    let Some(sb) = Sandbox::new("fault_sigkill_storm", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let mut d = Some(sb.daemon(&policy));
    let prog = connect_bin();
    let storm = |uid: u32, addr: &'static str| {
        let c = sb.client(uid, uid);
        c.steps(s(&prog), None, &["storm", addr, "80", "7000"]).remove(0)["storm"].clone()
    };
    std::thread::scope(|scope| {
        let denied4 = scope.spawn(|| storm(NOBODY, IMDS));
        let denied6 = scope.spawn(|| storm(NOBODY, "fd00:ec2::254"));
        let allowed = scope.spawn(|| storm(0, IMDS));
        // Kill the daemon, restart it, kill it again, and leave it dead for a while.
        for pause in [800, 1200, 1500] {
            std::thread::sleep(Duration::from_millis(pause));
            if let Some(old) = d.take() {
                old.kill();
            } else {
                let new = sb.daemon(&policy);
                assert_eq!(wait(&new, "start", |e| e["event"] == "guard_started")["attachment"], "adopted");
                d = Some(new);
            }
        }
        let (denied4, denied6, allowed) =
            (denied4.join().unwrap(), denied6.join().unwrap(), allowed.join().unwrap());
        let refused = |v: &Value| v["EPERM"].as_u64().unwrap_or(0);
        assert_eq!(denied4.as_object().unwrap().len(), 1, "nobody got through over IPv4: {denied4}");
        assert_eq!(denied6.as_object().unwrap().len(), 1, "nobody got through over IPv6: {denied6}");
        assert_eq!(allowed.as_object().unwrap().len(), 1, "root was refused at some instant: {allowed}");
        let ok = allowed["connected"].as_u64().unwrap();
        // The kernel counted every attempt, across the kills (the counters are pinned).
        let st = sb.status_json();
        let c = &st["counters"];
        assert_eq!(c["denied"].as_u64(), Some(refused(&denied4) + refused(&denied6)), "{st}");
        assert_eq!(c["allowed"].as_u64(), Some(ok), "{st}");
        assert_eq!(c["metadata_connects"].as_u64(), Some(refused(&denied4) + refused(&denied6) + ok));
        eprintln!(
            "{} + {} denied and {ok} allowed connects through two SIGKILLs and a restart, no wrong decision",
            refused(&denied4),
            refused(&denied6)
        );
    });
}

#[test]
fn a_watched_cgroup_tree_removed_and_recreated_is_followed() {
    let Some(sb) = Sandbox::new("fault_cgroup_tree", ImdsMode::Optional) else { return };
    let policy = sb.write(
        "policy.toml",
        &format!("[[allow]]\ncgroup = \"{}/app.slice/app.service\"\n", sb.cgroup_rel()),
    );
    for sub in ["app.slice/app.service", "other"] {
        std::fs::create_dir_all(sb.cgroup.join(sub)).unwrap();
    }
    let d = sb.daemon(&policy);
    let prog = connect_bin();
    let once = ["connect", IMDS, "80"];
    let from =
        |cg: &str, uid: u32| sb.client(uid, uid).in_cgroup(cg).results(s(&prog), None, &once).remove(0);
    assert_eq!(from("app.slice/app.service", NOBODY), "connected");
    assert_eq!(from("other", 0), "EPERM");

    // The unit and its slice go (the watch on the slice goes with it).
    std::fs::remove_dir(sb.cgroup.join("app.slice/app.service")).unwrap();
    std::fs::remove_dir(sb.cgroup.join("app.slice")).unwrap();
    let ev =
        wait(&d, "re-resolution", |e| e["event"] == "policy_reloaded" && e["reason"] == "identity_changed");
    assert_eq!(ev["generation"], 2);
    assert!(d.wait_stderr("does not exist yet"), "the rule waits for its cgroup:\n{}", d.stderr());
    assert_eq!(from("other", 0), "EPERM", "everyone else is still judged");
    assert_eq!(sb.client(NOBODY, NOBODY).connect(IMDS, 80).result, "EPERM");

    // Both come back, with new ids: the rule follows.
    std::fs::create_dir(sb.cgroup.join("app.slice")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::create_dir(sb.cgroup.join("app.slice/app.service")).unwrap();
    wait(&d, "the cgroup back", |e| e["event"] == "policy_reloaded" && e["generation"].as_u64() >= Some(3));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while from("app.slice/app.service", NOBODY) != "connected" {
        assert!(std::time::Instant::now() < deadline, "the recreated cgroup is not allowed:\n{}", d.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(from("app.slice", NOBODY), "EPERM", "the parent is not covered");
    assert_eq!(from("other", 0), "EPERM");
}

/// Listens on 20 ports of the endpoint address with full backlogs and never accepts: the
/// connections complete in the kernel and wait in the queues (81,920 places), so that a few
/// processes can hold tens of thousands of them without a descriptor for the server side.
const LISTEN_PY: &str = r#"
import socket, sys
ls = []
for p in range(9000, 9020):
    l = socket.socket()
    l.bind(("169.254.169.254", p))
    l.listen(4096)
    ls.append(l)
print("ready", flush=True)
sys.stdin.readline()
"#;

/// Opens and holds N connections to those ports (argv: N, an offset to spread them).
const HOLD_PY: &str = r#"
import resource, socket, sys
n, k = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
for i in range(n):
    s = socket.socket()
    s.connect(("169.254.169.254", 9000 + (i * 8 + k) % 20))
    held.append(s)
print("ready", flush=True)
sys.stdin.readline()
"#;

/// A tokenless GET on a fresh connection: "refused" (EACCES) or the status line.
const GET_PY: &str = r#"
import socket
try:
    s = socket.create_connection(("169.254.169.254", 80))
except PermissionError:
    print("connect refused", flush=True)
    raise SystemExit(0)
try:
    s.sendall(b"GET /latest/meta-data/instance-id HTTP/1.0\r\nHost: 169.254.169.254\r\n\r\n")
    head = b""
    while b"\r\n" not in head:
        chunk = s.recv(100)
        if not chunk:
            break
        head += chunk
    print(head.split(b"\r\n")[0].decode(), flush=True)
except PermissionError:
    print("refused", flush=True)
"#;

/// A process in the sandbox that prints `ready` when set up and ends when its stdin gets a line
/// (or is closed); our own child, waited for on drop.
struct Held(std::process::Child);

impl Held {
    fn start(sb: &Sandbox, uid: u32, script: &std::path::Path, args: &[&str]) -> Self {
        Held(sb.python_ready(uid, script, args).0)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

/// The kernel's table of connections to inspect (65,536) fills up. Issue 16: connects whose
/// requests must be inspected (`imdsv1 = "deny"`) are refused once it is about to be full
/// (`connect_denied`, `"reason": "uninspectable"`), instead of getting a connection nothing
/// inspects; other workloads' connections beyond it go uninspected, counted and reported. Once
/// connections close, the count comes down (state callbacks) and the same connect works again.
#[test]
fn a_full_sockhash_refuses_connects_that_need_inspection_and_reports_the_rest() {
    let Some(sb) = Sandbox::new("fault_sockhash", ImdsMode::Optional) else { return };
    // Root's tokenless requests are refused; uid 1000 is a legacy workload whose are only logged.
    let policy = sb.write(
        "policy.toml",
        "[[allow]]\nuid = 0\nimdsv1 = \"deny\"\n\n[[allow]]\nuid = 1000\nimdsv1 = \"log\"\n",
    );
    let d = sb.daemon(&policy);
    let get = sb.write("get.py", GET_PY);
    let tokenless_get_as = |uid: u32| {
        let out = sb.client(uid, uid).command("/usr/bin/python3").arg(&get).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let tokenless_get = || tokenless_get_as(0);
    assert_eq!(tokenless_get(), "refused");

    // The legacy workload holds 68,000 connections to the endpoint (any port counts): more than
    // the 65,536 the kernel tracks for inspection.
    let listen = sb.write("listen.py", LISTEN_PY);
    let hold = sb.write("hold.py", HOLD_PY);
    let t = std::time::Instant::now();
    let listener = Held::start(&sb, 0, &listen, &[]);
    let holders: Vec<Held> =
        (0..8).map(|k| Held::start(&sb, 1000, &hold, &["8500", &k.to_string()])).collect();
    let filled = t.elapsed();
    let c = &sb.status_json()["counters"];
    let uninspected = c["connections_uninspected"].as_u64().unwrap();
    assert_eq!(uninspected, 68_000 - u64::from(imds_guard_common::maps::SOCKETS_CAPACITY), "{c}");

    // Root's next connect would not be inspected: refused at connect, and said why.
    let before = d.denials().len();
    assert_eq!(tokenless_get(), "connect refused", "a connection that could not be inspected");
    let e = d
        .wait_event(Duration::from_secs(10), |e| e["event"] == "connect_denied")
        .unwrap_or_else(|| panic!("not reported: {:#?}", d.events()));
    assert_eq!((&e["reason"], &e["rule"], &e["uid"]), (&"uninspectable".into(), &0.into(), &0.into()), "{e}");
    assert_eq!(d.denials().len(), before + 1);
    // The legacy workload's next one goes through uninspected, and the daemon says so.
    let requests_before = sb.status_json()["counters"]["imdsv1_requests"].as_u64();
    assert_eq!(tokenless_get_as(1000), "HTTP/1.1 200 OK", "a log workload is not refused");
    assert_eq!(sb.status_json()["counters"]["imdsv1_requests"].as_u64(), requests_before, "not counted");
    let ev = wait(&d, "connections_uninspected", |e| {
        e["event"] == "connections_uninspected" && e["total"].as_u64() == Some(uninspected + 1)
    });
    assert_eq!(ev["cause"], "table_full", "{ev}");
    assert_eq!(ev["capacity"], 65_536, "{ev}");
    let reported: u64 = d
        .events()
        .iter()
        .filter(|e| e["event"] == "connections_uninspected")
        .map(|e| e["count"].as_u64().unwrap())
        .sum();
    assert_eq!(reported, uninspected + 1, "every one is counted in some event");
    assert!(
        d.wait_stderr("workloads with imdsv1 = \\\"deny\\\" are refused new connections"),
        "{}",
        d.stderr()
    );

    // Once the connections close, the count comes down: root connects again, and its tokenless
    // request is inspected (refused at the write).
    drop(holders);
    drop(listener);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while tokenless_get() != "refused" {
        assert!(std::time::Instant::now() < deadline, "inspection did not come back");
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "68,000 connections held in {filled:?}; {} went uninspected, root's was refused, then inspection came back",
        uninspected + 1
    );
}

/// The event file's disk fills up (a 64 KiB tmpfs of the test's): enforcement and the other sinks go
/// on, the failure is logged once, the file keeps only whole lines, and writing resumes by itself
/// once there is room again.
#[test]
fn a_full_disk_for_the_event_file_loses_lines_not_enforcement_and_recovers() {
    let Some(sb) = Sandbox::new("fault_diskfull", ImdsMode::Optional) else { return };
    let disk = sb.dir.join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    run(Command::new("mount").args(["-t", "tmpfs", "-o", "size=64k,mode=0755", "imdsg-disk"]).arg(&disk));
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(disk.clone());
    let file = disk.join("events.jsonl");
    // A filler that leaves ~4 KiB free.
    let filler = disk.join("filler");
    std::fs::write(&filler, vec![0u8; 60 * 1024]).unwrap();
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let d = sb.daemon_with(
        &policy,
        &[
            "--aggregate-window",
            "0",
            "--events-file",
            file.to_str().unwrap(),
            "--events-file-max-bytes",
            "1048576",
        ],
    );
    // Far more events than fit: each denied connect is one line of ~500 bytes.
    let prog = connect_bin();
    let res = sb.client(NOBODY, NOBODY).steps(prog.to_str().unwrap(), None, &["repeat", IMDS, "80", "60"]);
    assert_eq!(res[0]["repeat"]["EPERM"], 60, "enforcement goes on: {res:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while d.denials().len() < 60 {
        assert!(std::time::Instant::now() < deadline, "stdout lost events: {}", d.denials().len());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(d.wait_stderr("No space left on device"), "{}", d.stderr());
    let err = d.stderr();
    assert_eq!(err.matches("cannot write events").count(), 1, "logged once: {err}");
    assert!(err.contains("No space left on device"), "{err}");
    let kept = std::fs::read_to_string(&file).unwrap();
    let whole: Vec<Value> =
        kept.lines().map(|l| serde_json::from_str(l).expect("whole lines only")).collect();
    assert!(!whole.is_empty() && whole.len() < 60, "{} lines fitted", whole.len());
    // Room again: the next events are written, and the recovery is logged.
    std::fs::remove_file(&filler).unwrap();
    still_enforced(&sb, &d, "after the disk filled");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = std::fs::read_to_string(&file).unwrap();
        if now.lines().count() > whole.len() {
            for l in now.lines() {
                serde_json::from_str::<Value>(l).expect("whole lines only");
            }
            break;
        }
        assert!(std::time::Instant::now() < deadline, "writing did not resume");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d.wait_stderr("events are being written again"), "{}", d.stderr());
    drop(d);
}
