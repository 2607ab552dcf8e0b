//! A fake instance metadata service with IMDSv2 behaviour, listening on the metadata addresses
//! inside a sandbox's network namespace (port 80, IPv4 and IPv6).
//!
//! - `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds: 1..=21600` → a token;
//!   without the TTL header → 400; with `X-Forwarded-For` → 403.
//! - `GET` with a valid `X-aws-ec2-metadata-token` → the data; with an invalid one → 401.
//! - `GET` without a token → the data in [`ImdsMode::Optional`], 401 in [`ImdsMode::Required`].
//! - Credentials under `/latest/meta-data/iam/security-credentials/<ROLE>`.
//!
//! Every request is logged so tests can show what reached the service.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

pub const ROLE: &str = "imdsg-test-role";
pub const INSTANCE_ID: &str = "i-0imdsguard0test";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImdsMode {
    /// IMDSv1 and v2 both answer (`HttpTokens=optional`).
    Optional,
    /// Only IMDSv2 answers (`HttpTokens=required`).
    Required,
    /// Token PUTs are refused with 403 (as behind a proxy that blocks them), so SDKs fall back to
    /// IMDSv1; tokenless requests answer.
    TokenForbidden,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub had_token: bool,
    pub status: u16,
}

pub struct FakeImds {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Request>>>,
    thread: Option<JoinHandle<()>>,
}

struct State {
    mode: ImdsMode,
    tokens: Mutex<Vec<String>>,
    next: AtomicU64,
    log: Arc<Mutex<Vec<Request>>>,
}

impl FakeImds {
    pub fn start(netns: &OwnedFd, mode: ImdsMode) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let fd = netns.try_clone().expect("dup netns fd");
        let (tx, rx) = std::sync::mpsc::channel();
        let state = Arc::new(State {
            mode,
            tokens: Mutex::new(Vec::new()),
            next: AtomicU64::new(1),
            log: log.clone(),
        });
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            // This thread (and the ones it spawns) live in the sandbox's network namespace.
            // SAFETY: plain syscall on a namespace fd we own.
            let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            let listeners: Vec<TcpListener> = ["169.254.169.254:80", "[fd00:ec2::254]:80"]
                .iter()
                .map(|a| {
                    let l = TcpListener::bind(a.parse::<SocketAddr>().unwrap()).expect("bind fake IMDS");
                    l.set_nonblocking(true).unwrap();
                    l
                })
                .collect();
            tx.send(()).unwrap();
            while !stop2.load(Ordering::Relaxed) {
                let mut idle = true;
                for l in &listeners {
                    if let Ok((s, _)) = l.accept() {
                        idle = false;
                        let st = state.clone();
                        std::thread::spawn(move || serve(&st, s));
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("fake IMDS did not start");
        FakeImds { stop, log, thread: Some(thread) }
    }

    /// Requests served so far.
    #[must_use]
    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for FakeImds {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(st: &State, mut s: TcpStream) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65536 {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines = text.split("\r\n");
    let mut req = lines.next().unwrap_or("").split_whitespace();
    let method = req.next().unwrap_or("").to_owned();
    let path = req.next().unwrap_or("").to_owned();
    let headers: Vec<(String, String)> = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())))
        .collect();
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let token = header("x-aws-ec2-metadata-token");
    let (status, body) = respond(st, &method, &path, token, &header);
    st.log.lock().unwrap().push(Request { method, path, had_token: token.is_some(), status });
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\nServer: EC2ws\r\n\r\n{body}",
        body.len()
    );
}

fn respond<'a>(
    st: &State,
    method: &str,
    path: &str,
    token: Option<&str>,
    header: &dyn Fn(&str) -> Option<&'a str>,
) -> (u16, String) {
    if path == "/latest/api/token" {
        if method != "PUT" {
            return (405, String::new());
        }
        if header("x-forwarded-for").is_some() || st.mode == ImdsMode::TokenForbidden {
            return (403, String::new());
        }
        let Some(ttl) = header("x-aws-ec2-metadata-token-ttl-seconds").and_then(|v| v.parse::<u32>().ok())
        else {
            return (400, String::new());
        };
        if !(1..=21600).contains(&ttl) {
            return (400, String::new());
        }
        let t = format!("AQAEA-imdsg-token-{}", st.next.fetch_add(1, Ordering::Relaxed));
        st.tokens.lock().unwrap().push(t.clone());
        return (200, t);
    }
    if method != "GET" && method != "HEAD" {
        return (405, String::new());
    }
    match token {
        Some(t) if !st.tokens.lock().unwrap().iter().any(|x| x == t) => {
            return (401, String::new());
        }
        None if st.mode == ImdsMode::Required => return (401, String::new()),
        _ => {}
    }
    let creds = format!("/latest/meta-data/iam/security-credentials/{ROLE}");
    match path {
        "/latest/meta-data/" | "/latest/meta-data" => (200, "ami-id\ninstance-id\niam/\n".into()),
        "/latest/meta-data/instance-id" => (200, INSTANCE_ID.into()),
        "/latest/meta-data/iam/security-credentials/" => (200, ROLE.into()),
        p if p == creds => (
            200,
            "{\"Code\":\"Success\",\"Type\":\"AWS-HMAC\",\"AccessKeyId\":\"ASIAIMDSGUARDTEST\",\
             \"SecretAccessKey\":\"fake-secret\",\"Token\":\"fake-session-token\",\
             \"Expiration\":\"2099-01-01T00:00:00Z\",\"LastUpdated\":\"2026-01-01T00:00:00Z\"}"
                .to_owned(),
        ),
        _ => (404, String::new()),
    }
}
