//! Real client programs (curl, python) run as real identities inside a sandbox: the child joins
//! the sandbox cgroup first, then the network namespace (so nothing remounts /sys), then drops to
//! the requested uid/gid with no supplementary groups, then execs.

use std::{
    ffi::CString,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::{Command, Output},
    time::Duration,
};

use crate::Sandbox;

/// What a connect() from inside the sandbox did.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// "connected" or the errno name ("EPERM", "ECONNREFUSED", ...).
    pub result: String,
    pub elapsed: Duration,
}

/// Python script: connect to each (family, address, port) and print one JSON line per attempt.
const PROBE_PY: &str = r#"
import errno, json, socket, sys, time
for arg in sys.argv[1:]:
    fam, addr, port = arg.split(",")
    s = socket.socket(socket.AF_INET6 if fam == "6" else socket.AF_INET, socket.SOCK_STREAM)
    t = time.monotonic()
    try:
        s.connect((addr, int(port)))
        r = "connected"
    except OSError as e:
        r = errno.errorcode.get(e.errno, str(e.errno))
    print(json.dumps({"result": r, "ms": (time.monotonic() - t) * 1000}), flush=True)
    s.close()
# Linger, so the daemon still finds /proc/<pid>/exe when it enriches the events: attributing a
# process that has already exited is not done yet (see the reporting issue).
time.sleep(0.3)
"#;

pub struct Client<'a> {
    sb: &'a Sandbox,
    uid: u32,
    gid: u32,
    /// The cgroup to start in (default: the sandbox cgroup).
    cgroup: std::path::PathBuf,
    /// The network namespace to run in (default: the sandbox's).
    netns: std::os::fd::RawFd,
}

/// The `imdsg-connect` test client (see its source for the steps it takes).
#[must_use]
pub fn connect_bin() -> std::path::PathBuf {
    let p = crate::sandbox::guard_bin().with_file_name("imdsg-connect");
    assert!(p.is_file(), "{} not built (cargo build -p imds-guard-tests)", p.display());
    p
}

impl<'a> Client<'a> {
    pub(crate) fn new(sb: &'a Sandbox, uid: u32, gid: u32) -> Self {
        Client { sb, uid, gid, cgroup: sb.cgroup.clone(), netns: sb.netns_fd.as_raw_fd() }
    }

    /// Run in `netns`, another network namespace the test made (it must outlive the client).
    #[must_use]
    pub fn in_netns(mut self, netns: &'a std::os::fd::OwnedFd) -> Self {
        self.netns = netns.as_raw_fd();
        self
    }

    /// Start in `sub`, a cgroup below the sandbox cgroup (created if missing).
    #[must_use]
    pub fn in_cgroup(mut self, sub: &str) -> Self {
        self.cgroup = self.sb.cgroup.join(sub);
        std::fs::create_dir_all(&self.cgroup).expect("create sub-cgroup");
        self
    }

    /// Start in `dir`, any cgroup v2 directory the test made (for benchmarks without the guard).
    #[must_use]
    pub fn at_cgroup(mut self, dir: &std::path::Path) -> Self {
        self.cgroup = dir.to_owned();
        self
    }

    /// Runs `program` (usually a copy of `imdsg-connect`) with `steps`, optionally from `cwd`,
    /// and returns the JSON lines it printed.
    pub fn steps(
        &self,
        program: &str,
        cwd: Option<&std::path::Path>,
        steps: &[&str],
    ) -> Vec<serde_json::Value> {
        let mut cmd = self.command(program);
        cmd.args(steps);
        if let Some(d) = cwd {
            cmd.current_dir(d);
        }
        let out = cmd.output().unwrap_or_else(|e| panic!("running {program}: {e}"));
        assert!(out.status.success(), "{program} {steps:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Results (`"connected"`, `"EPERM"`, ...) of the `connect` steps of `program`.
    pub fn results(&self, program: &str, cwd: Option<&std::path::Path>, steps: &[&str]) -> Vec<String> {
        self.steps(program, cwd, steps)
            .iter()
            .filter_map(|v| v["result"].as_str().map(str::to_owned))
            .collect()
    }

    /// A `Command` for `program` that will run inside the sandbox as this client.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let procs = CString::new(self.cgroup.join("cgroup.procs").as_os_str().as_encoded_bytes()).unwrap();
        let netns = self.netns;
        let (uid, gid) = (self.uid, self.gid);
        // SAFETY: only async-signal-safe libc calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                if libc::setns(netns, libc::CLONE_NEWNET) != 0
                    || libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(gid, gid, gid) != 0
                    || libc::setresuid(uid, uid, uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Connects to each `(addr, port)` (IPv6 syntax picks an AF_INET6 socket) with Python.
    pub fn probe(&self, targets: &[(&str, u16)]) -> Vec<Probe> {
        let script = self.sb.write("probe.py", PROBE_PY);
        let args: Vec<String> =
            targets.iter().map(|(a, p)| format!("{},{a},{p}", if a.contains(':') { 6 } else { 4 })).collect();
        let out = self.command("/usr/bin/python3").arg(&script).args(&args).output().expect("run python3");
        assert!(out.status.success(), "probe failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("probe output");
                Probe {
                    result: v["result"].as_str().unwrap().to_owned(),
                    elapsed: Duration::from_secs_f64(v["ms"].as_f64().unwrap() / 1000.0),
                }
            })
            .collect()
    }

    /// One connect; see [`Client::probe`].
    pub fn connect(&self, addr: &str, port: u16) -> Probe {
        self.probe(&[(addr, port)]).remove(0)
    }

    /// `curl` with `args`, bounded in time.
    pub fn curl(&self, args: &[&str]) -> Output {
        self.command("curl").args(["-sS", "--max-time", "5"]).args(args).output().expect("run curl")
    }

    /// The IMDSv2 flow with curl: token PUT, then GET `path` with the token. Returns the body, or
    /// the error curl printed.
    pub fn imdsv2_get(&self, host: &str, path: &str) -> Result<String, String> {
        self.imdsv2_get_via("curl", host, path)
    }

    /// [`Client::imdsv2_get`] with the curl at `program` (a copy of it is an executable of its
    /// own). The path is sent as written (`--path-as-is`: dot segments too).
    pub fn imdsv2_get_via(&self, program: &str, host: &str, path: &str) -> Result<String, String> {
        let base = if host.contains(':') { format!("http://[{host}]") } else { format!("http://{host}") };
        let curl = |args: &[&str]| {
            self.command(program).args(["-sS", "--max-time", "5"]).args(args).output().expect("run curl")
        };
        let tok = curl(&[
            "-f",
            "-X",
            "PUT",
            "-H",
            "X-aws-ec2-metadata-token-ttl-seconds: 60",
            &format!("{base}/latest/api/token"),
        ]);
        if !tok.status.success() {
            return Err(format!("token: {}", String::from_utf8_lossy(&tok.stderr)));
        }
        let token = String::from_utf8_lossy(&tok.stdout).into_owned();
        let get = curl(&[
            "-f",
            "--path-as-is",
            "-H",
            &format!("X-aws-ec2-metadata-token: {token}"),
            &format!("{base}{path}"),
        ]);
        if get.status.success() {
            Ok(String::from_utf8_lossy(&get.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&get.stderr).into_owned())
        }
    }
}
