//! `imds-guard run` under test, pointed at the sandbox's cgroup, private bpffs and a policy file.
//! Its stdout events are collected as JSON; it is killed (by PID, our own child) on drop.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    os::fd::OwnedFd,
    path::Path,
    process::{Child, Command, Stdio},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Sandbox, sandbox::guard_bin};

#[derive(Default)]
struct Output {
    events: Vec<Value>,
    stderr: String,
    closed: bool,
    /// The first event with a field docs/EVENTS.md does not document (see `event_docs`).
    undocumented: Option<String>,
}

/// `g`, unless the daemon printed an event with a field docs/EVENTS.md does not document: then the
/// test fails, naming it (the lock is let go first, so that dropping the daemon still works).
fn documented(g: MutexGuard<'_, Output>) -> MutexGuard<'_, Output> {
    if let Some(why) = g.undocumented.clone() {
        drop(g);
        panic!("{why}");
    }
    g
}

pub struct Daemon {
    child: Child,
    out: Arc<(Mutex<Output>, Condvar)>,
}

/// How long a daemon may take to start enforcing (loading and verifying the programs): well under
/// a second on a host, but the kernel matrix's guests run on QEMU's software CPU, where the seven
/// programs' verification took over 30 s on a busy 2-core machine. A daemon that fails exits, and
/// the wait ends with it, so a long limit costs nothing. `IMDSG_START_TIMEOUT_S` sets another
/// (a guest under QEMU's cache plugin verifies for minutes: scripts/profile-msg.sh).
fn start_timeout() -> Duration {
    let secs = std::env::var("IMDSG_START_TIMEOUT_S").ok().and_then(|s| s.parse().ok());
    Duration::from_secs(secs.unwrap_or(120))
}

impl Daemon {
    /// `wrapper` runs the daemon (e.g. `setpriv --bounding-set ...`); `env` is added to its
    /// environment. The daemon runs in the network namespace `netns` (the sandbox's, or one of a
    /// [`crate::Topology`]), so that its nftables table is made there and never in the host's. It
    /// attaches to the sandbox cgroup, which it sees at `cgroup` (the sandbox's path, unless the
    /// wrapper gives it a mount namespace of its own where cgroup2 is mounted elsewhere).
    pub(crate) fn start_with(
        sb: &Sandbox,
        netns: &OwnedFd,
        policy: &Path,
        extra: &[&str],
        wrapper: &[&str],
        env: &[(&str, &str)],
        cgroup: &Path,
    ) -> Self {
        let bin = guard_bin();
        let mut cmd = match wrapper.split_first() {
            Some((w, rest)) => {
                let mut c = Command::new(w);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        cmd.envs(env.iter().copied());
        crate::sandbox::enter_netns(&mut cmd, netns);
        let mut child = cmd
            .args(["run", "--log-format", "json", "--config"])
            .arg(policy)
            .args(extra)
            .arg("--cgroup")
            .arg(cgroup)
            .arg("--pin-dir")
            .arg(sb.pin_dir())
            .args(if extra.contains(&"--events-socket") {
                vec![]
            } else {
                vec!["--events-socket".into(), sb.events_socket()]
            })
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn imds-guard run");
        let out = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let stdout = child.stdout.take().unwrap();
        let o = out.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("daemon stdout is not one JSON object per line ({e}): {line}")
                });
                let undocumented = crate::event_docs::undocumented(&v).map(|why| format!("{why}: {line}"));
                let mut g = o.0.lock().unwrap();
                if g.undocumented.is_none() {
                    g.undocumented = undocumented;
                }
                g.events.push(v);
                drop(g);
                o.1.notify_all();
            }
            o.0.lock().unwrap().closed = true;
            o.1.notify_all();
        });
        let mut stderr = child.stderr.take().unwrap();
        let o = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                o.0.lock().unwrap().stderr.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let d = Daemon { child, out };
        let quiet = extra.windows(2).any(|w| w[0] == "--sink" && w[1] != "stdout");
        if quiet {
            // No events on stdout: the log says when it enforces.
            let deadline = Instant::now() + start_timeout();
            while !d.stderr().contains("\"message\":\"enforcing\"") {
                assert!(Instant::now() < deadline, "daemon did not start enforcing; stderr:\n{}", d.stderr());
                std::thread::sleep(Duration::from_millis(20));
            }
        } else {
            d.wait_event(start_timeout(), |e| e["event"] == "guard_started")
                .unwrap_or_else(|| panic!("daemon did not start enforcing; stderr:\n{}", d.stderr()));
        }
        d
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's peak and current resident memory (`VmHWM`, `VmRSS`), in KiB.
    #[must_use]
    pub fn memory(&self) -> (u64, u64) {
        memory(self.pid())
    }

    /// Waits for an event matching `pred` (including ones already received).
    pub fn wait_event(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.out;
        let mut g = lock.lock().unwrap();
        // Each event is looked at once: rescanning everything on every new line would make the
        // reader fall behind a flood, fill the pipe and stall the daemon on its stdout.
        let mut seen = 0;
        loop {
            g = documented(g);
            if let Some(e) = g.events[seen..].iter().find(|e| pred(e)) {
                return Some(e.clone());
            }
            seen = g.events.len();
            let now = Instant::now();
            if now >= deadline || g.closed {
                return None;
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    /// Every event so far.
    #[must_use]
    pub fn events(&self) -> Vec<Value> {
        documented(self.out.0.lock().unwrap()).events.clone()
    }

    /// `connect_denied` events so far.
    #[must_use]
    pub fn denials(&self) -> Vec<Value> {
        self.events().into_iter().filter(|e| e["event"] == "connect_denied").collect()
    }

    /// Waits (up to 5 s) until stderr contains `needle`. Logs and events travel through different
    /// pipes read by different threads, so a log line written before an event can be seen after it.
    #[must_use]
    pub fn wait_stderr(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.stderr().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[must_use]
    pub fn stderr(&self) -> String {
        self.out.0.lock().unwrap().stderr.clone()
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid().cast_signed()), sig)
            .expect("signal daemon");
    }

    /// SIGKILL and reap.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the daemon to exit (after a signal), returning its exit status.
    pub fn wait_exit(mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "daemon did not exit; stderr:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Peak and current resident memory (`VmHWM`, `VmRSS`) of process `pid`, in KiB.
#[must_use]
pub fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmHWM:"), field("VmRSS:"))
}
