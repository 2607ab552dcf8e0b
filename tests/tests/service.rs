//! What the systemd unit promises: `systemd-analyze verify` accepts it and `systemd-analyze
//! security` scores it at most 2.0; READY=1 only once enforcement is live; and the daemon works
//! inside the unit's sandbox (and says clearly what is missing without the capabilities it grants).
//!
//! systemd is not PID 1 where the tests run, so the unit cannot be started; the sandbox is
//! emulated instead (tests/src/bin/imdsg-confine.rs), from the unit file's own directives: every
//! `[Service]` setting is either applied or listed below with the reason it is not.

use std::{os::unix::net::UnixDatagram, path::PathBuf, process::Command, time::Duration};

use imds_guard_tests::{Holder, ImdsMode, Sandbox, sandbox::guard_bin, unit, unit::Unit};
use nix::sys::signal::Signal;
use serde_json::Value;

const NOBODY: u32 = 65534;
/// Stands for the unit's `User=imds-guard`/`Group=imds-guard` (no such user on a test machine).
const SERVICE_UID: u32 = 64077;

/// `systemd-analyze`, or `None` (with a message, or a failure under CI=true) where it is missing.
fn systemd_analyze(test: &str) -> Option<Command> {
    let found = Command::new("systemd-analyze").arg("--version").output().is_ok_and(|o| o.status.success());
    match found {
        true => Some(Command::new("systemd-analyze")),
        false if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("`{test}` cannot run under CI=true: systemd-analyze is missing (package systemd)")
        }
        false => {
            eprintln!("SKIPPED `{test}`: systemd-analyze is missing (package systemd)");
            None
        }
    }
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let Some(mut cmd) = systemd_analyze("verify") else { return };
    // verify checks that ExecStart='s programs exist, so it looks at a root that has them.
    let root = std::env::temp_dir().join(format!("imdsg-verify-{}", std::process::id()));
    let _cleanup = RemoveDir(root.clone());
    for d in ["usr/bin", "bin", "etc/systemd/system"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(guard_bin(), root.join("usr/bin/imds-guard")).unwrap();
    std::fs::copy("/bin/kill", root.join("bin/kill")).unwrap();
    std::fs::copy(unit::path(), root.join("etc/systemd/system/imds-guard.service")).unwrap();
    let out = cmd
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("imds-guard.service")
        .output()
        .unwrap();
    // verify exits 0 after many complaints ("Unknown key ..., ignoring"): there must be none.
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify: {out:?}\n{said}");
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn systemd_analyze_security_scores_the_unit_at_most_2_0() {
    let Some(mut cmd) = systemd_analyze("security") else { return };
    let out = cmd.args(["security", "--offline=true", "--no-pager"]).arg(unit::path()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for imds-guard.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| {
            panic!("no overall exposure level in:\n{text}{}", String::from_utf8_lossy(&out.stderr))
        });
    eprintln!("systemd-analyze security --offline=true: {score}");
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");
}

#[test]
fn ready_is_notified_only_once_a_denied_connect_fails() {
    let Some(sb) = Sandbox::new("notify", ImdsMode::Optional) else { return };
    let sock_path = sb.dir.join("notify.sock");
    let notify = UnixDatagram::bind(&sock_path).unwrap();
    notify.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let _d = sb.daemon_wrapped(&policy, &[], &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())]);
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 from the daemon");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    // The moment READY has arrived, a denied identity is already refused.
    assert_eq!(sb.client(NOBODY, NOBODY).connect("169.254.169.254", 80).result, "EPERM");
}

/// The unit's `[Service]` sandbox as `imdsg-confine` options followed by `setpriv` with exactly the
/// unit's capabilities. `pin_fs` stands for /sys/fs/bpf (the sandbox's own bpffs).
fn unit_sandbox(u: &Unit, pin_fs: &std::path::Path) -> Vec<String> {
    let confine = guard_bin().with_file_name("imdsg-confine");
    assert!(confine.is_file(), "{} not built (cargo build -p imds-guard-tests)", confine.display());
    let mut w: Vec<String> = vec![confine.display().to_string()];
    let mut proc = Vec::new();
    let mut push = |args: &[&str]| w.extend(args.iter().map(ToString::to_string));
    for (k, v) in &u.service {
        let v = v.as_str();
        match (k.as_str(), v) {
            ("ProtectSystem", "strict") => push(&["--ro-root"]),
            // Read-only /sys and /sys/fs/cgroup: part of --ro-root.
            ("ReadOnlyPaths", "/sys") | ("ProtectControlGroups", "yes") => {}
            // systemd's ProtectKernelTunables= table marks /sys/fs/bpf read-only, and the more
            // restrictive of two entries for one path wins over ReadWritePaths=/sys/fs/bpf.
            ("ProtectKernelTunables", "yes") => panic!(
                "ProtectKernelTunables=yes makes /sys/fs/bpf read-only whatever ReadWritePaths= says \
                 (systemd src/core/namespace.c), so the daemon could not pin: use ReadOnlyPaths=/sys"
            ),
            ("ReadWritePaths", "/sys/fs/bpf") => push(&["--rw", pin_fs.to_str().unwrap()]),
            ("ProcSubset", "pid") => proc.push("subset=pid"),
            ("ProtectProc", "invisible") => proc.push("hidepid=invisible"),
            ("ProtectHome", "yes") => push(&["--hide", "/home", "--hide", "/root", "--hide", "/run/user"]),
            ("PrivateDevices", "yes") => push(&["--private-dev"]),
            ("PrivateNetwork", "yes") => push(&["--private-net"]),
            ("UMask", _) => push(&["--umask", v]),
            ("LimitMEMLOCK", "infinity") => push(&["--memlock-infinity"]),
            // Not emulated: limits the daemon lives within (tests/tests/surfaces.rs runs it at a
            // hard limit of 1,024 descriptors and measures its memory under floods).
            ("LimitNOFILE" | "MemoryMax", _) => {}
            ("NoNewPrivileges", "yes") => push(&["--no-new-privs"]),
            ("MemoryDenyWriteExecute", "yes") => push(&["--deny-write-exec"]),
            ("SystemCallErrorNumber", "EPERM") => push(&["--syscall-errno", &libc::EPERM.to_string()]),
            // Both enforced by the filter built below (seccompiler checks the architecture).
            ("SystemCallFilter", _) | ("SystemCallArchitectures", "native") => {}
            ("RestrictAddressFamilies", _) => {
                let f: Vec<String> = u.socket_families().iter().map(ToString::to_string).collect();
                push(&["--socket-families", &f.join(",")]);
            }
            ("CapabilityBoundingSet", _) => {}
            // Applied by setpriv below (--reuid/--regid, then inheritable + ambient = bounding).
            ("AmbientCapabilities", _) => {
                assert_eq!(Some(v), u.get("CapabilityBoundingSet"), "ambient = bounding set");
            }
            ("User" | "Group", "imds-guard") => {}
            // The mount namespace imdsg-confine makes.
            ("PrivateMounts", "yes") => {}
            // Not emulated: the sandbox keeps the policy file and the pin bpffs under /tmp.
            ("PrivateTmp", "yes") => {}
            // Not emulated: they remove capabilities outside the bounding set (CAP_SYS_MODULE,
            // CAP_SYSLOG, CAP_SYS_TIME, CAP_SYS_ADMIN), system calls outside the filter and
            // /dev, /proc entries the private /dev and the /proc subset already lack.
            ("ProtectKernelModules" | "ProtectKernelLogs" | "ProtectClock" | "ProtectHostname", "yes") => {}
            // Not emulated: seccomp rules on namespace creation, realtime scheduling, setuid bits
            // and personality(), none of which the daemon uses.
            ("RestrictNamespaces" | "RestrictRealtime" | "RestrictSUIDSGID" | "LockPersonality", "yes") => {}
            // Not emulated: a BPF filter on the unit's cgroup; the daemon has no network here at all.
            ("IPAddressDeny", "any") => {}
            // Lifecycle: ready_is_notified_only_once_a_denied_connect_fails, and `prepare` (which
            // runs unsandboxed, "+") in the test below.
            ("Type" | "NotifyAccess" | "ExecStartPre" | "ExecStart" | "ExecReload" | "Restart", _)
            | ("RestartSec" | "TimeoutStopSec", _) => {}
            // Directories systemd creates; the daemon under test is given its paths.
            (
                "ConfigurationDirectory"
                | "RuntimeDirectory"
                | "RuntimeDirectoryMode"
                | "RuntimeDirectoryPreserve"
                | "StateDirectory",
                _,
            ) => {}
            (k, v) => panic!(
                "systemd/imds-guard.service sets {k}={v}, which this emulation does not know: apply it in \
                 imdsg-confine or say here why not"
            ),
        }
    }
    if !proc.is_empty() {
        push(&["--proc", &proc.join(",")]);
    }
    let syscalls: Vec<String> = u.allowed_syscalls().iter().map(ToString::to_string).collect();
    push(&["--syscalls", &syscalls.join(","), "--"]);
    let caps = u.setpriv_bounding_set();
    match u.get("User") {
        Some("imds-guard") => push(&[
            "setpriv",
            &format!("--reuid={SERVICE_UID}"),
            &format!("--regid={SERVICE_UID}"),
            "--clear-groups",
            &format!("--inh-caps={caps}"),
            &format!("--ambient-caps={caps}"),
            &format!("--bounding-set={caps}"),
            "--",
        ]),
        None => push(&["setpriv", &format!("--bounding-set={caps}"), "--"]),
        Some(other) => panic!("User={other}: not emulated"),
    }
    w
}

/// A field of /proc/<pid>/status.
fn status_field(pid: u32, name: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix(name)).unwrap_or_else(|| panic!("no {name}")).trim().to_owned()
}

#[test]
fn the_daemon_works_inside_the_unit_s_sandbox_and_says_what_is_missing_without_its_capabilities() {
    let Some(sb) = Sandbox::new("unit_sandbox", ImdsMode::Optional) else { return };
    // The policy below closes pre-existing connections, which takes the drop-in.
    let u = Unit::load_with(&["preexisting-close.conf"]);
    assert!(
        !Unit::load().allowed_syscalls().contains(&libc::SYS_pidfd_getfd),
        "the unit alone leaves pidfd_getfd out (systemd counts it in @debug)"
    );
    assert!(u.allowed_syscalls().contains(&libc::SYS_pidfd_getfd), "the drop-in allows it");
    // ExecStartPre=+: prepare runs as full root; here the pin bpffs exists and cgroup2 is mounted.
    // It hands the pin directory to the daemon's user.
    let owner = format!("{SERVICE_UID}:{SERVICE_UID}");
    let prep = sb.cli(&["prepare", "--pin-dir", sb.pin_dir().to_str().unwrap(), "--owner", &owner]);
    assert!(prep.status.success(), "imds-guard prepare: {prep:?}");
    // It says how far processes may debug each other (what exe and cgroup rules stand against).
    let said = String::from_utf8_lossy(&prep.stderr);
    let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").ok();
    let expect = match scope.as_deref().map(str::trim) {
        None | Some("0") => "do not stand against code that runs as the same uid",
        Some(_) => "kernel.yama.ptrace_scope = ",
    };
    assert!(said.contains(expect), "prepare's report of ptrace_scope ({scope:?}): {said}");

    let go = sb.dir.join("go");
    let early = Holder::start(&sb, NOBODY, &go);
    let policy = sb.write(
        "policy.toml",
        "preexisting = \"close\"\n\n[[allow]]\nuid = 0\nimdsv1 = \"deny\"\n\n[[allow]]\nexe = \"/usr/bin/curl\"\n",
    );
    let wrapper = unit_sandbox(&u, &sb.bpffs);
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let d = sb.daemon_wrapped(&policy, &wrapper, &[]);

    // It really is confined: exactly the unit's capabilities, no new privileges, a seccomp filter,
    // a read-only root, the /proc subset, its own network namespace.
    let pid = d.pid();
    let bits = |f: &str| u64::from_str_radix(&status_field(pid, f), 16).unwrap();
    assert_eq!(bits("CapEff:"), u.capability_bits(), "CapEff");
    assert_eq!(bits("CapBnd:"), u.capability_bits(), "CapBnd");
    assert_eq!(bits("CapEff:") & (1 << 21), 0, "no CAP_SYS_ADMIN");
    assert_eq!((status_field(pid, "NoNewPrivs:"), status_field(pid, "Seccomp:")), ("1".into(), "2".into()));
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let opts = |mp: &str| {
        mounts.lines().rfind(|l| l.split_whitespace().nth(4) == Some(mp)).unwrap_or_default().to_owned()
    };
    assert!(opts("/").split_whitespace().nth(5).unwrap().starts_with("ro"), "{}", opts("/"));
    assert!(
        opts("/proc").contains("subset=pid") && opts("/proc").contains("hidepid=invisible"),
        "{}",
        opts("/proc")
    );
    assert!(opts(sb.bpffs.to_str().unwrap()).split_whitespace().nth(5).unwrap().starts_with("rw"));
    let netns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/net")).unwrap();
    if u.get("PrivateNetwork") == Some("yes") {
        assert_ne!(netns(&pid.to_string()), netns("self"), "PrivateNetwork");
    }
    // User=: not root, with its capabilities as ambient ones.
    let uid_line = status_field(pid, "Uid:");
    assert!(uid_line.split_whitespace().all(|x| x == SERVICE_UID.to_string()), "Uid: {uid_line}");
    assert_eq!(bits("CapAmb:"), u.capability_bits(), "CapAmb");

    // Everything works: connect enforcement (uid and exe rules), IMDSv1 refusal, events that name
    // other users' executables (ProtectProc=invisible hides nobody from it), closing a connection
    // opened before it started (pidfd_getfd), a reload, a clean stop.
    let r = d
        .wait_event(Duration::from_secs(1), |e| e["event"] == "preexisting_connection")
        .expect("the early connection is reported");
    assert_eq!((&r["closed"], &r["allowed"]), (&Value::Bool(true), &Value::Bool(false)), "{r}");
    sb.write("go", "");
    assert_eq!(early.finish(), "ECONNRESET");
    assert_eq!(sb.client(NOBODY, NOBODY).connect("169.254.169.254", 80).result, "EPERM");
    let curl = sb.client(NOBODY, NOBODY).curl(&["-f", "http://169.254.169.254/latest/meta-data/instance-id"]);
    assert!(curl.status.success(), "the exe rule lets curl in: {curl:?}");
    assert!(
        !sb.client(0, 0).curl(&["-f", "http://169.254.169.254/latest/meta-data/"]).status.success(),
        "v1 refused"
    );
    let ev = d.wait_event(Duration::from_secs(5), |e| e["event"] == "connect_denied").expect("event");
    assert!(
        ev["exe"].as_str().is_some_and(|e| e.starts_with("/usr/bin/python3")),
        "reads other users' /proc: {ev}"
    );
    sb.write("policy.toml", "[[allow]]\nuid = 0\n[[allow]]\nuid = 65534\n");
    d.signal(Signal::SIGHUP);
    d.wait_event(Duration::from_secs(5), |e| e["event"] == "policy_reloaded").expect("reloaded");
    assert_eq!(sb.client(NOBODY, NOBODY).connect("169.254.169.254", 80).result, "connected");
    d.signal(Signal::SIGTERM);
    let code = d.wait_exit(Duration::from_secs(10));
    assert!(code.success(), "{code:?}");

    // Without CAP_BPF the daemon refuses to start, and says why.
    let without_bpf = u.setpriv_bounding_set().replace(",+bpf", "");
    let out = std::process::Command::new("setpriv")
        .args([&format!("--bounding-set={without_bpf}"), "--"])
        .arg(guard_bin())
        .args(["run", "--config", policy.to_str().unwrap(), "--cgroup", sb.cgroup.to_str().unwrap()])
        .args(["--pin-dir", sb.bpffs.join("nocaps").to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("imds-guard run is missing CAP_BPF, to load the programs"), "{err}");
    assert!(!sb.bpffs.join("nocaps").join("links").join("connect4").exists());
}
