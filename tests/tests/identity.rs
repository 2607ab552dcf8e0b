//! Workload identity: executables by file identity, cgroup subtrees, comm, and keeping the enforced
//! policy true to the host as binaries are replaced and cgroups come and go.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use imds_guard_tests::{ImdsMode, Sandbox, client::connect_bin};

const NOBODY: u32 = 65534;
const IMDS: &str = "169.254.169.254";

/// Copies the test client into `dir` as `name` (a new file: a new inode).
fn install(dir: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = dir.join(name);
    imds_guard_tests::sandbox::copy_exe(connect_bin(), &p, 0o755);
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn exe_rule_matches_the_running_file_not_its_name() {
    let Some(sb) = Sandbox::new("exe_rule", ImdsMode::Optional) else { return };
    let bin = sb.dir.join("bin");
    let allowed = install(&bin, "allowed");
    let copy = install(&bin, "copy"); // byte-identical, another inode
    std::fs::hard_link(&allowed, bin.join("hardlink")).unwrap();
    std::os::unix::fs::symlink(&allowed, bin.join("symlink")).unwrap();
    let policy = sb.write("policy.toml", &format!("[[allow]]\nexe = \"{}\"\n", s(&allowed)));
    let d = sb.daemon(&policy);
    let c = sb.client(NOBODY, NOBODY);
    let once = ["connect", IMDS, "80"];

    assert_eq!(c.results(s(&allowed), None, &once), ["connected"], "the allowed file");
    assert_eq!(c.results(s(&copy), None, &once), ["EPERM"], "a byte-identical copy is another file");
    assert_eq!(c.results(s(&bin.join("hardlink")), None, &once), ["connected"], "hard link: same file");
    assert_eq!(c.results(s(&bin.join("symlink")), None, &once), ["connected"], "symlink: same file");
    assert_eq!(c.results("./allowed", Some(&bin), &once), ["connected"], "relative path: same file");
    // Renaming itself does not help the copy.
    assert_eq!(
        c.results(
            s(&copy),
            None,
            // (it lingers, so that the daemon still finds /proc/<pid>/exe for the event)
            &["comm", "allowed", "connect", IMDS, "80", "connect", "fd00:ec2::254", "80", "sleep", "300"]
        ),
        ["EPERM", "EPERM"]
    );
    // A child that the allowed binary forks and that execs another program is that program.
    assert_eq!(
        c.results(s(&allowed), None, &["connect", IMDS, "80", "exec", s(&copy), "connect", IMDS, "80"]),
        ["connected", "EPERM"]
    );
    let curl = c
        .command(s(&allowed))
        .args(["exec", "/usr/bin/curl", "-sS", "--max-time", "3", "http://169.254.169.254/"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&curl.stderr).contains("Couldn't connect"), "{curl:?}");

    let ev =
        d.wait_event(Duration::from_secs(5), |e| e["comm"] == "allowed").expect("event for the renamed copy");
    assert_eq!(
        ev["exe"],
        s(&copy),
        "the event names the real executable, not the comm: {ev}\n{}",
        d.stderr()
    );
    assert!(d.wait_event(Duration::from_secs(5), |e| e["comm"] == "curl").is_some());
    assert_eq!(d.denials().len(), 5, "{:#?}", d.denials());
}

#[test]
fn exe_rule_follows_the_binary_when_it_is_replaced() {
    let Some(sb) = Sandbox::new("exe_upgrade", ImdsMode::Optional) else { return };
    let bin = sb.dir.join("bin");
    let agent = install(&bin, "agent");
    let policy = sb.write("policy.toml", &format!("[[allow]]\nexe = \"{}\"\n", s(&agent)));
    let d = sb.daemon(&policy);
    let c = sb.client(NOBODY, NOBODY);
    assert_eq!(c.results(s(&agent), None, &["connect", IMDS, "80"]), ["connected"]);

    // An upgrade as package managers do it: write the new file beside, rename over.
    let new = install(&bin, "agent.new");
    std::fs::rename(&new, &agent).unwrap();
    let ev = d
        .wait_event(Duration::from_secs(5), |e| {
            e["event"] == "policy_reloaded" && e["reason"] == "identity_changed"
        })
        .expect("re-resolved after the replacement");
    assert_eq!(ev["generation"], 2);
    assert_eq!(
        c.results(s(&agent), None, &["connect", IMDS, "80"]),
        ["connected"],
        "the new binary is allowed"
    );
}

/// A process that runs `exe` as `uid` in the sandbox and waits for a line on stdin before its one
/// connect to the metadata service; killed (our own child) on drop.
struct Paused(Option<std::process::Child>);

impl Paused {
    fn start(sb: &Sandbox, uid: u32, exe: &Path) -> Self {
        use std::process::Stdio;
        let child = sb
            .client(uid, uid)
            .command(s(exe))
            .args(["pause", "connect", IMDS, "80"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // The file is mapped once the process runs it: wait until it does.
        let exe_link = format!("/proc/{}/exe", child.id());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(&exe_link).ok().as_deref() != Some(exe) {
            assert!(std::time::Instant::now() < deadline, "{} did not start", exe.display());
            std::thread::sleep(Duration::from_millis(10));
        }
        Paused(Some(child))
    }

    /// Lets it connect; its result.
    fn connect(mut self) -> String {
        use std::io::Write as _;
        let mut child = self.0.take().unwrap();
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        let out = child.wait_with_output().unwrap();
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        let v: serde_json::Value =
            serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"));
        v["result"].as_str().unwrap().to_owned()
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Issue 16, bypass 2: the file an `exe` rule names is removed (its package uninstalled). Its
/// (device, inode) must stop matching at once, since the inode number goes to whatever file is
/// made next — a copy of python in a world-writable directory, say. A process still running the
/// removed file stands for any file that gets its inode: it is refused. The file's return, and a
/// replacement by rename, are followed; the replaced file's inode stops matching too.
#[test]
fn a_removed_or_replaced_exe_stops_matching_at_once() {
    let Some(sb) = Sandbox::new("exe_removed", ImdsMode::Optional) else { return };
    let bin = sb.dir.join("opt/agent/bin");
    let agent = install(&bin, "agent");
    let policy = sb.write("policy.toml", &format!("[[allow]]\nexe = \"{}\"\n", s(&agent)));
    let d = sb.daemon(&policy);
    let c = sb.client(NOBODY, NOBODY);
    let once = ["connect", IMDS, "80"];
    assert_eq!(c.results(s(&agent), None, &once), ["connected"]);
    let reloaded = |generation: u64| {
        d.wait_event(Duration::from_secs(5), |e| {
            e["event"] == "policy_reloaded"
                && e["reason"] == "identity_changed"
                && e["generation"] == generation
        })
        .unwrap_or_else(|| {
            panic!("no re-resolution to generation {generation}: {:#?}\n{}", d.events(), d.stderr())
        })
    };

    // The package goes, directory and all, while a process of it still runs.
    let old = Paused::start(&sb, NOBODY, &agent);
    std::fs::remove_dir_all(sb.dir.join("opt/agent")).unwrap();
    reloaded(2);
    assert_eq!(old.connect(), "EPERM", "the removed file's inode matches nothing any more");
    assert!(d.events().iter().all(|e| e["event"] != "policy_reload_failed"), "a removal is no error");

    // The package comes back (a new file, a new inode): allowed again.
    let agent = install(&bin, "agent");
    reloaded(3);
    assert_eq!(c.results(s(&agent), None, &once), ["connected"]);

    // An upgrade by rename: the running old version is refused, the new file allowed.
    let old = Paused::start(&sb, NOBODY, &agent);
    let new = install(&bin, "agent.new");
    std::fs::rename(&new, &agent).unwrap();
    reloaded(4);
    assert_eq!(old.connect(), "EPERM", "the replaced file's inode matches nothing any more");
    assert_eq!(c.results(s(&agent), None, &once), ["connected"]);
}

#[test]
fn exe_rules_without_kernel_btf_refuse_to_start() {
    let Some(sb) = Sandbox::new("exe_no_btf", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nexe = \"/usr/bin/curl\"\n");
    let pin = sb.pin_dir();
    let args = [
        "run",
        "--config",
        s(&policy),
        "--cgroup",
        s(&sb.cgroup),
        "--pin-dir",
        s(&pin),
        "--btf",
        "/nonexistent/vmlinux",
    ];
    let out = sb.cli(&args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("/nonexistent/vmlinux") && err.contains("refuses to guess"), "{err}");
    assert!(!sb.attached_programs().contains("imdsg"));
}

#[test]
fn cgroup_rule_covers_the_subtree_and_only_it() {
    let Some(sb) = Sandbox::new("cgroup_rule", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", &format!("[[allow]]\ncgroup = \"{}/svc\"\n", sb.cgroup_rel()));
    for sub in ["svc/worker", "other"] {
        std::fs::create_dir_all(sb.cgroup.join(sub)).unwrap();
    }
    let _d = sb.daemon(&policy);
    let prog = connect_bin();
    let prog = s(&prog);
    let once = ["connect", IMDS, "80"];
    assert_eq!(sb.client(NOBODY, NOBODY).in_cgroup("svc").results(prog, None, &once), ["connected"]);
    assert_eq!(
        sb.client(NOBODY, NOBODY).in_cgroup("svc/worker").results(prog, None, &once),
        ["connected"],
        "descendant"
    );
    assert_eq!(
        sb.client(0, 0).in_cgroup("other").results(prog, None, &once),
        ["EPERM"],
        "sibling, even as root"
    );
    assert_eq!(sb.client(0, 0).results(prog, None, &once), ["EPERM"], "parent");
    // A process that leaves the allowed cgroup loses the right.
    let other = sb.cgroup.join("other/cgroup.procs");
    assert_eq!(
        sb.client(0, 0).in_cgroup("svc").results(
            prog,
            None,
            &["connect", IMDS, "80", "cgroup", s(&other), "connect", IMDS, "80"]
        ),
        ["connected", "EPERM"]
    );
}

#[test]
fn cgroup_rule_takes_effect_when_the_cgroup_appears_and_survives_its_recreation() {
    let Some(sb) = Sandbox::new("cgroup_later", ImdsMode::Optional) else { return };
    let policy =
        sb.write("policy.toml", &format!("[[allow]]\ncgroup = \"{}/later.service\"\n", sb.cgroup_rel()));
    let check = sb.cli(&["check", "--config", s(&policy)]);
    assert!(String::from_utf8_lossy(&check.stdout).contains("does not exist yet"), "{check:?}");
    let d = sb.daemon(&policy);
    let prog = connect_bin();
    let unit = sb.cgroup.join("later.service");

    // The unit starts: its cgroup appears and the rule applies.
    std::fs::create_dir(&unit).unwrap();
    d.wait_event(Duration::from_secs(5), |e| e["event"] == "policy_reloaded" && e["generation"] == 2)
        .unwrap_or_else(|| {
            panic!("not re-resolved when the cgroup appeared: {:#?}\n{}", d.events(), d.stderr())
        });
    assert_eq!(
        sb.client(NOBODY, NOBODY).in_cgroup("later.service").results(
            s(&prog),
            None,
            &["connect", IMDS, "80"]
        ),
        ["connected"]
    );

    // The unit restarts: a new cgroup with a new id under the same path.
    std::fs::remove_dir(&unit).unwrap();
    d.wait_event(Duration::from_secs(5), |e| e["event"] == "policy_reloaded" && e["generation"] == 3)
        .expect("gone");
    std::fs::create_dir(&unit).unwrap();
    d.wait_event(Duration::from_secs(5), |e| e["event"] == "policy_reloaded" && e["generation"] == 4)
        .expect("back");
    assert_eq!(
        sb.client(NOBODY, NOBODY).in_cgroup("later.service").results(
            s(&prog),
            None,
            &["connect", IMDS, "80"]
        ),
        ["connected"]
    );
}

#[test]
fn comm_rules_work_and_are_flagged_as_spoofable() {
    let Some(sb) = Sandbox::new("comm_rule", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\ncomm = \"ssm-agent\"\nuid = 65534\n");
    let check = sb.cli(&["check", "--config", s(&policy)]);
    assert!(String::from_utf8_lossy(&check.stdout).contains("PR_SET_NAME"), "{check:?}");
    let d = sb.daemon(&policy);
    assert!(d.wait_stderr("PR_SET_NAME"), "run warns too: {}", d.stderr());
    let prog = connect_bin();
    let c = sb.client(NOBODY, NOBODY);
    assert_eq!(
        c.results(s(&prog), None, &["connect", IMDS, "80", "comm", "ssm-agent", "connect", IMDS, "80"]),
        ["EPERM", "connected"]
    );
    assert_eq!(
        sb.client(1, 1).results(s(&prog), None, &["comm", "ssm-agent", "connect", IMDS, "80"]),
        ["EPERM"],
        "uid must match too"
    );
}

#[test]
fn explain_names_the_rule_or_the_reason() {
    let Some(sb) = Sandbox::new("explain", ImdsMode::Optional) else { return };
    std::fs::create_dir_all(sb.cgroup.join("svc")).unwrap();
    let policy = sb.write(
        "policy.toml",
        &format!(
            "[[allow]]\nname = \"root\"\nuid = 0\n\n[[allow]]\nname = \"the service\"\ncgroup = \"{}/svc\"\nuid = 65534\n",
            sb.cgroup_rel()
        ),
    );
    let _d = sb.daemon(&policy);
    let prog = connect_bin();
    let spawn =
        |c: imds_guard_tests::Client<'_>| c.command(s(&prog)).args(["sleep", "5000"]).spawn().unwrap();
    let explain = |pid: u32| {
        let out = sb.cli(&[
            "explain",
            "--pid",
            &pid.to_string(),
            "--pin-dir",
            s(&sb.pin_dir()),
            "--config",
            s(&policy),
        ]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut root = spawn(sb.client(0, 0));
    let mut svc = spawn(sb.client(NOBODY, NOBODY).in_cgroup("svc"));
    let mut other = spawn(sb.client(NOBODY, NOBODY));
    std::thread::sleep(Duration::from_millis(200));

    let r = explain(root.id());
    assert!(r.contains("ALLOWED by allow[0]") && r.contains("root (line 1): matches"), "{r}");
    let r = explain(svc.id());
    assert!(r.contains("ALLOWED by allow[1]"), "{r}");
    assert!(r.contains("root (line 1): no: uid is 65534, the rule wants 0"), "{r}");
    let r = explain(other.id());
    assert!(r.contains("DENIED"), "{r}");
    assert!(
        r.contains(&format!(
            "the service (line 5): no: cgroup {} is not inside {}/svc",
            sb.cgroup_rel(),
            sb.cgroup_rel()
        )),
        "{r}"
    );

    for c in [&mut root, &mut svc, &mut other] {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let out = sb.cli(&["explain", "--pid", "999999999", "--pin-dir", s(&sb.pin_dir())]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("process 999999999"), "{out:?}");
}

/// A user the policy names but the user database does not know yet (at boot, cloud-init creates
/// it later): the daemon starts anyway, with that table waiting, and installs it once the user
/// exists. An edited policy naming an unknown user is still refused (a typo is an error).
#[test]
fn a_user_created_after_the_daemon_started_gets_its_rule() {
    use std::process::Command;
    let Some(sb) = Sandbox::new("id_late_user", ImdsMode::Optional) else { return };
    let name = format!("imdsgw{}", std::process::id());
    let uid = (47_000..48_000)
        .map(|u: u32| u + std::process::id() % 1000)
        .find(|u| nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(*u)).ok().flatten().is_none())
        .expect("a free uid");
    /// Removes the test's user however the test ends.
    struct UserGuard(String);
    impl Drop for UserGuard {
        fn drop(&mut self) {
            let _ = Command::new("userdel").arg(&self.0).status();
        }
    }
    let policy = sb.write("policy.toml", &format!("[[allow]]\nuid = 0\n\n[[allow]]\nuser = \"{name}\"\n"));
    let check = sb.cli(&["check", "--config", s(&policy)]);
    assert!(!check.status.success(), "check is strict: {check:?}");
    let d = sb.daemon(&policy);
    assert!(d.wait_stderr(&format!("user `{name}` does not exist yet")), "{}", d.stderr());
    let prog = connect_bin();
    let r = || sb.client(uid, 100).results(s(&prog), None, &["connect", IMDS, "80"]);
    assert_eq!(r(), ["EPERM"], "no such user yet: nobody with its uid is allowed");

    let out = Command::new("useradd")
        .args(["-u", &uid.to_string(), "-g", "100", "-M", "-s", "/usr/sbin/nologin", &name])
        .output()
        .unwrap();
    let _user = UserGuard(name.clone());
    assert!(out.status.success(), "useradd: {out:?}");
    let ev = d
        .wait_event(Duration::from_secs(10), |e| e["event"] == "policy_reloaded")
        .unwrap_or_else(|| panic!("not picked up: {:#?}\n{}", d.events(), d.stderr()));
    assert_eq!(ev["reason"], "identity_changed");
    assert_eq!(r(), ["connected"], "the user's table is installed");

    // An edit that names another unknown user is refused; the policy in force stays.
    sb.write(
        "policy.toml",
        &format!("[[allow]]\nuid = 0\n\n[[allow]]\nuser = \"{name}\"\n\n[[allow]]\nuser = \"{name}x\"\n"),
    );
    let ev = d
        .wait_event(Duration::from_secs(10), |e| e["event"] == "policy_reload_failed")
        .unwrap_or_else(|| panic!("not refused: {:#?}", d.events()));
    assert!(ev["error"].as_str().unwrap().contains(&format!("unknown user `{name}x`")), "{ev}");
    assert_eq!(r(), ["connected"]);
}

/// Issue 16, weakness 3: rules that do not prove what they seem to are named, with the risk, by
/// `check` and by `run`: an interpreter (every script it runs is allowed) and a program in a
/// directory anyone may write (whoever can replace it owns the rule).
#[test]
fn check_and_run_warn_about_interpreters_and_replaceable_programs() {
    use std::os::unix::fs::PermissionsExt as _;
    let Some(sb) = Sandbox::new("exe_warn", ImdsMode::Optional) else { return };
    let open = sb.dir.join("open");
    let agent = install(&open, "agent");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let python = std::fs::canonicalize("/usr/bin/python3").unwrap();
    let policy = sb.write(
        "policy.toml",
        &format!(
            "[[allow]]\nname = \"scripts\"\nexe = \"{}\"\n\n[[allow]]\nname = \"agent\"\nexe = \"{}\"\n\n\
             [[allow]]\nname = \"pinned\"\nexe = \"{}\"\nuid = 0\n",
            python.display(),
            s(&agent),
            python.display()
        ),
    );
    let check = sb.cli(&["check", "--config", s(&policy)]);
    assert!(check.status.success(), "{check:?}");
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(out.contains("scripts (line 1): exe") && out.contains("is an interpreter"), "{out}");
    assert!(!out.contains("pinned (line 9): exe"), "an interpreter paired with a uid is not flagged: {out}");
    assert!(out.contains(&format!("everyone may write {}", open.display())), "{out}");
    let d = sb.daemon(&policy);
    assert!(d.wait_stderr("is an interpreter"), "run warns too: {}", d.stderr());
}
