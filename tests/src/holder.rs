//! A process of a sandbox that connected to the fake IMDS (e.g. before the daemon started) and
//! sends a request over that connection when told to.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, ChildStdout},
};

use serde_json::Value;

use crate::Sandbox;

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
pub struct Holder {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Holder {
    pub fn start(sb: &Sandbox, uid: u32, go: &std::path::Path) -> Self {
        let script = sb.write("holder.py", HOLDER_PY);
        let (child, out) = sb.python_ready(uid, &script, &[go.to_str().expect("a UTF-8 path")]);
        Holder { child, out }
    }

    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What its request over the old connection got: an HTTP status line, "EOF" or an errno name.
    pub fn finish(mut self) -> String {
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
