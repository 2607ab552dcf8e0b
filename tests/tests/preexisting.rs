//! Connections to the metadata service opened before imds-guard started: always reported; with
//! `preexisting = "close"` (enforce mode) the ones a denied process holds are reset, so its next
//! read or write fails, while an allowed process's connection keeps working.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, ChildStdout, Stdio},
    time::Duration,
};

use imds_guard_tests::{Daemon, ImdsMode, Sandbox};
use serde_json::Value;

const NOBODY: u32 = 65534;

/// Connects to the metadata service, says `ready`, waits for the file `argv[1]`, then sends a
/// tokenless GET on that old connection and prints what happened.
const HOLDER_PY: &str = r#"
import errno, json, os, socket, sys, time
s = socket.create_connection(("169.254.169.254", 80), timeout=3)
print("ready", flush=True)
deadline = time.monotonic() + 10
while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
    time.sleep(0.01)
r = {"pid": os.getpid(), "uid": os.getuid()}
try:
    s.sendall(b"GET /latest/meta-data/instance-id HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    r["result"] = data.split(b"\r\n")[0].decode() if data else "EOF"
except OSError as e:
    r["result"] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(r), flush=True)
"#;

/// A process of the sandbox holding a connection to the fake IMDS; killed (our own child) on drop.
struct Holder {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Holder {
    fn start(sb: &Sandbox, uid: u32, go: &std::path::Path) -> Self {
        let script = sb.write("holder.py", HOLDER_PY);
        let mut child = sb
            .client(uid, uid)
            .command("/usr/bin/python3")
            .arg(&script)
            .arg(go)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the holder");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the holder (uid {uid}) did not connect");
        Holder { child, out }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What its request over the old connection got: an HTTP status line, "EOF" or an errno name.
    fn finish(mut self) -> String {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert!(self.child.wait().unwrap().success());
        v["result"].as_str().unwrap().to_owned()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `preexisting_connection` event about process `pid`.
fn report_of(d: &Daemon, pid: u32) -> Value {
    d.events()
        .into_iter()
        .find(|e| e["event"] == "preexisting_connection" && e["pid"] == pid)
        .unwrap_or_else(|| panic!("no preexisting_connection event for pid {pid}: {:#?}", d.events()))
}

/// What happened in one run.
struct Outcome {
    /// What the denied (nobody) and the allowed (root) process's request over its old connection got.
    denied: String,
    allowed: String,
    /// The `preexisting_connection` reports about them.
    denied_report: Value,
    allowed_report: Value,
    /// A new connect of the denied identity after the guard started.
    new_connect: String,
}

/// A denied and an allowed process connect before the guard starts with `policy`; then each sends
/// a request over its connection.
fn run(name: &str, policy: &str) -> Outcome {
    let sb = Sandbox::new(name, ImdsMode::Optional).expect("privileged");
    let go = sb.dir.join("go");
    let denied = Holder::start(&sb, NOBODY, &go);
    let allowed = Holder::start(&sb, 0, &go);
    let policy = sb.write("policy.toml", policy);
    // The fake IMDS gives an accepted connection 5 s to send its request; the daemon takes ~0.1 s.
    let d = sb.daemon(&policy);
    let (denied_report, allowed_report) = (report_of(&d, denied.pid()), report_of(&d, allowed.pid()));
    sb.write("go", "");
    Outcome {
        denied: denied.finish(),
        allowed: allowed.finish(),
        denied_report,
        allowed_report,
        new_connect: sb.client(NOBODY, NOBODY).connect("169.254.169.254", 80).result,
    }
}

fn skip() -> bool {
    !imds_guard_tests::sandbox::privileged_or_skip("preexisting")
}

#[test]
fn preexisting_close_resets_the_connections_denied_processes_hold() {
    if skip() {
        return;
    }
    let o = run("pre_close", "preexisting = \"close\"\n\n[[allow]]\nuid = 0\n");
    // The kernel disconnected the socket (RST to the peer) and left ECONNRESET for its holder.
    assert_eq!(o.denied, "ECONNRESET", "the denied process's old connection is reset");
    assert_eq!(o.allowed, "HTTP/1.1 200 OK", "the allowed process's old connection keeps working");
    assert_eq!(o.new_connect, "EPERM");
    let r = &o.denied_report;
    assert_eq!(
        (&r["uid"], &r["allowed"], &r["closed"]),
        (&Value::from(NOBODY), &false.into(), &true.into()),
        "{r}"
    );
    assert!(r.get("close_error").is_none(), "{r}");
    let r = &o.allowed_report;
    assert_eq!(
        (&r["uid"], &r["allowed"], &r["closed"]),
        (&Value::from(0), &true.into(), &false.into()),
        "{r}"
    );
}

#[test]
fn preexisting_report_and_monitor_mode_leave_them_open() {
    if skip() {
        return;
    }
    for (policy, new_connect) in [
        ("[[allow]]\nuid = 0\n", "EPERM"), // default: report
        ("preexisting = \"report\"\n[[allow]]\nuid = 0\n", "EPERM"), // explicit
        ("mode = \"monitor\"\npreexisting = \"close\"\n[[allow]]\nuid = 0\n", "connected"), // monitor blocks nothing
    ] {
        let o = run("pre_report", policy);
        assert_eq!(
            (o.denied.as_str(), o.allowed.as_str()),
            ("HTTP/1.1 200 OK", "HTTP/1.1 200 OK"),
            "{policy}"
        );
        assert_eq!(o.new_connect, new_connect, "{policy}");
        let r = &o.denied_report;
        assert_eq!((&r["allowed"], &r["closed"]), (&false.into(), &false.into()), "{policy}: {r}");
    }
}
