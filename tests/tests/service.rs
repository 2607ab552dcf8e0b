//! What the systemd unit promises: READY=1 only once enforcement is live, and the daemon works
//! with the capabilities the unit grants (and says clearly what is missing without them).

use std::{os::unix::net::UnixDatagram, time::Duration};

use imds_guard_tests::{ImdsMode, Sandbox};

const NOBODY: u32 = 65534;

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

/// The capabilities systemd/imds-guard.service leaves the daemon, less CAP_SYS_ADMIN (only needed
/// on kernels before 5.8 and to mount bpffs, which the unit's ExecStartPre does unsandboxed).
const CAPS: &str = "-all,+bpf,+net_admin,+perfmon,+sys_ptrace,+dac_read_search";

#[test]
fn the_daemon_enforces_with_only_the_unit_s_capabilities_and_says_what_is_missing() {
    let Some(sb) = Sandbox::new("caps", ImdsMode::Optional) else { return };
    let policy = sb.write(
        "policy.toml",
        "[[allow]]\nuid = 0\nimdsv1 = \"deny\"\n\n[[allow]]\nexe = \"/usr/bin/curl\"\n",
    );
    let bounding = format!("--bounding-set={CAPS}");
    let d = sb.daemon_wrapped(&policy, &["setpriv", &bounding, "--"], &[]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let eff = status.lines().find(|l| l.starts_with("CapEff:")).unwrap().to_owned();
    // CAP_SYS_ADMIN is bit 21: it must not be there.
    let bits = u64::from_str_radix(eff.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(bits & (1 << 21), 0, "{eff}");
    // Everything works: connect enforcement (uid and exe rules), IMDSv1 refusal, events with exe.
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
    d.kill();

    // Without CAP_BPF the daemon refuses to start, and says why.
    let mut cmd = std::process::Command::new("setpriv");
    // In the sandbox's network namespace, like every daemon of the tests (its nftables table).
    imds_guard_tests::sandbox::enter_netns(&mut cmd, &sb.netns_fd);
    let out = cmd
        .args(["--bounding-set=-all,+net_admin,+perfmon,+sys_ptrace,+dac_read_search", "--"])
        .arg(imds_guard_tests::sandbox::guard_bin())
        .args(["run", "--config", policy.to_str().unwrap(), "--cgroup", sb.cgroup.to_str().unwrap()])
        .args(["--pin-dir", sb.bpffs.join("nocaps").to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("imds-guard run is missing CAP_BPF, to load the programs"), "{err}");
    assert!(!sb.bpffs.join("nocaps").join("links").join("connect4").exists());
}
