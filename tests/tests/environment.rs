//! Environment discovery on a host without cgroup v2 (pure cgroup v1, e.g. Amazon Linux 2),
//! emulated for the daemon alone: it runs in a mount namespace of its own (private propagation, so
//! nothing reaches the host) from which every cgroup mount has been removed and where /run is an
//! empty tmpfs. There it mounts a cgroup2 of its own and enforces on the sandbox cgroup as usual;
//! without CAP_SYS_ADMIN it refuses to start and says what to do.

use std::{path::Path, process::Command};

use imds_guard_tests::{ImdsMode, Sandbox, sandbox::guard_bin, unit::Unit};

const NOBODY: u32 = 65534;

/// Run by `sh -c` in the daemon's new mount namespace, before it execs the daemon ("$0" "$@"):
/// remove every cgroup mount, give it an empty /run, and make sure no cgroup2 is left.
const NO_CGROUP2: &str = "umount -R /sys/fs/cgroup && mount -t tmpfs -o size=1m,mode=0755 imdsg-run /run \
     && ! grep -q ' - cgroup2 ' /proc/self/mountinfo";

fn wrapper(then: &str) -> Vec<String> {
    ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c"]
        .iter()
        .map(ToString::to_string)
        .chain([format!("{NO_CGROUP2} && exec {then} \"$0\" \"$@\"")])
        .collect()
}

/// Where the daemon sees the sandbox cgroup once it has mounted its own cgroup2.
fn seen(sb: &Sandbox) -> std::path::PathBuf {
    Path::new(imds_guard::host::env::PRIVATE_CGROUP2).join(&sb.name)
}

#[test]
fn without_cgroup2_the_daemon_mounts_its_own_and_enforces() {
    let Some(sb) = Sandbox::new("env_cgroup2", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    let w = wrapper("");
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    let d = sb.daemon_as_seen(&policy, &w, &seen(&sb));
    assert!(d.wait_stderr("no cgroup v2 filesystem is mounted: mounting one"), "{}", d.stderr());
    let started = d.events().into_iter().find(|e| e["event"] == "guard_started").unwrap();
    assert_eq!(started["cgroup"], seen(&sb).to_str().unwrap(), "{started}");
    assert_eq!(started["attachment"], "attached");

    assert_eq!(sb.client(NOBODY, NOBODY).connect("169.254.169.254", 80).result, "EPERM");
    assert_eq!(sb.client(0, 0).connect("169.254.169.254", 80).result, "connected");
    let ev = d
        .wait_event(std::time::Duration::from_secs(5), |e| e["event"] == "connect_denied")
        .expect("a connect_denied event");
    // Paths in events are relative to the cgroup2 root, wherever it is mounted.
    assert_eq!(ev["cgroup"], sb.cgroup_rel(), "{ev}");
    assert_eq!(ev["uid"], NOBODY);

    // The mount stayed in the daemon's namespace.
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host.contains(imds_guard::host::env::PRIVATE_CGROUP2), "leaked to the host:\n{host}");
}

#[test]
fn without_cgroup2_and_cap_sys_admin_the_daemon_says_to_run_prepare() {
    let Some(sb) = Sandbox::new("env_nocap", ImdsMode::Optional) else { return };
    let policy = sb.write("policy.toml", "[[allow]]\nuid = 0\n");
    // Exactly the unit's capabilities: no CAP_SYS_ADMIN, hence no mount.
    let setpriv = format!("setpriv --bounding-set={} --", Unit::load().setpriv_bounding_set());
    let w = wrapper(&setpriv);
    let out = Command::new(w[0].as_str())
        .args(&w[1..])
        .arg(guard_bin())
        .args(["run", "--config", policy.to_str().unwrap(), "--cgroup", seen(&sb).to_str().unwrap()])
        .args(["--pin-dir", sb.pin_dir().to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(
            "no cgroup v2 filesystem is mounted, and mounting one at /run/imds-guard/cgroup2 needs \
             CAP_SYS_ADMIN, which this process does not have: run `imds-guard prepare` as root first"
        ),
        "{err}"
    );
    assert!(!sb.attached_programs().contains("imdsg"), "{}", sb.attached_programs());
}
