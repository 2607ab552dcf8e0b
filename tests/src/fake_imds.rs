//! A fake instance metadata service with IMDSv2 behaviour, listening on the metadata addresses
//! inside a sandbox's network namespace (port 80, IPv4 and IPv6).
//!
//! - `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds: 1..=21600` → a token;
//!   without the TTL header → 400; with `X-Forwarded-For` → 403.
//! - `GET` with a valid `X-aws-ec2-metadata-token` → the data; with an invalid one → 401.
//! - `GET` without a token → the data in [`ImdsMode::Optional`], 401 in [`ImdsMode::Required`].
//! - Credentials under `/latest/meta-data/iam/security-credentials/<ROLE>` (and, with
//!   [`Options::any_role`], under any role name), with the access key id of [`Options`].
//! - `/latest/meta-data/large?<n>`: `n` bytes of a known pattern ([`large_body`]).
//!
//! How it answers is [`Options`] (changed while it runs, [`FakeImds::configure`]): one request per
//! connection (`Connection: close`, the default) or keep-alive, the response in one write or in
//! pieces with pauses between them (separate TCP segments), plain or chunked.
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
/// The access key id served unless [`Options::access_key_id`] says otherwise.
pub const ACCESS_KEY_ID: &str = "ASIAIMDSGUARDTEST";
/// The secret access key and the session token of every credentials response: marks a test looks
/// for where they must never be (events, logs, maps).
pub const SECRET_ACCESS_KEY: &str = "imdsgSECRETwJalrXUtnFEMIK7MDENGbPxRfiCY";
pub const SESSION_TOKEN: &str = "imdsgTOKENIQoJb3JpZ2luX2VjEJr2wEaCXVzLWVhc3QtMSJHMEUCIQD";
pub const EXPIRATION: &str = "2099-01-01T00:00:00Z";

/// How the fake service answers (see the module's doc).
#[derive(Clone, Debug)]
pub struct Options {
    /// Answer more requests on a connection (`Connection: keep-alive`) until the client closes it
    /// or asks `Connection: close`.
    pub keep_alive: bool,
    /// The `AccessKeyId` of credentials responses, as written into the JSON (escapes included).
    pub access_key_id: String,
    /// The `Expiration`, likewise.
    pub expiration: String,
    /// Bytes added to the session token (a large credentials response).
    pub token_padding: usize,
    /// Credentials for any role name, not only [`ROLE`].
    pub any_role: bool,
    /// Write each response in pieces of this many bytes, pausing between them.
    pub pieces: Option<usize>,
    /// `Transfer-Encoding: chunked`, with chunks of this many bytes.
    pub chunked: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            keep_alive: false,
            access_key_id: ACCESS_KEY_ID.to_owned(),
            expiration: EXPIRATION.to_owned(),
            token_padding: 0,
            any_role: false,
            pieces: None,
            chunked: None,
        }
    }
}

/// The body of a credentials response under `options`.
#[must_use]
pub fn credentials_body(options: &Options) -> Vec<u8> {
    format!(
        "{{\"Code\":\"Success\",\"LastUpdated\":\"2026-01-01T00:00:00Z\",\"Type\":\"AWS-HMAC\",\
         \"AccessKeyId\":\"{}\",\"SecretAccessKey\":\"{SECRET_ACCESS_KEY}\",\"Token\":\"{SESSION_TOKEN}{}\",\
         \"Expiration\":\"{}\"}}",
        options.access_key_id,
        "x".repeat(options.token_padding),
        options.expiration
    )
    .into_bytes()
}

/// The body of `/latest/meta-data/large?<n>`: `n` bytes, each its offset's low byte mixed so that
/// a byte lost, doubled or moved shows.
#[must_use]
pub fn large_body(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3]).collect()
}

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
    options: Arc<Mutex<Options>>,
    thread: Option<JoinHandle<()>>,
}

struct State {
    mode: ImdsMode,
    tokens: Mutex<Vec<String>>,
    next: AtomicU64,
    log: Arc<Mutex<Vec<Request>>>,
    options: Arc<Mutex<Options>>,
}

impl FakeImds {
    pub fn start(netns: &OwnedFd, mode: ImdsMode) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let options = Arc::new(Mutex::new(Options::default()));
        let fd = netns.try_clone().expect("dup netns fd");
        let (tx, rx) = std::sync::mpsc::channel();
        let state = Arc::new(State {
            mode,
            tokens: Mutex::new(Vec::new()),
            next: AtomicU64::new(1),
            log: log.clone(),
            options: options.clone(),
        });
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            // This thread (and the ones it spawns) live in the sandbox's network namespace.
            // SAFETY: plain syscall on a namespace fd we own.
            let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            // AWS's addresses, and Alibaba Cloud's (whose service answers AWS's paths).
            let listeners: Vec<TcpListener> =
                ["169.254.169.254:80", "[fd00:ec2::254]:80", "100.100.100.200:80"]
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
        FakeImds { stop, log, options, thread: Some(thread) }
    }

    /// Changes how it answers from the next request on.
    pub fn configure(&self, f: impl FnOnce(&mut Options)) {
        f(&mut self.options.lock().unwrap());
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
    let _ = s.set_nodelay(true);
    // How long a kept-alive connection may sit idle between requests: long enough for a client
    // in a loaded QEMU guest still digesting a 300 KB response sent 5 bytes a chunk (5 s closed
    // such a connection under it: RemoteDisconnected on its next request).
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() >= 65536 {
                return;
            }
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head: Vec<u8> = buf.drain(..end).collect();
        let text = String::from_utf8_lossy(&head);
        let mut lines = text.split("\r\n");
        let mut req = lines.next().unwrap_or("").split(' ').filter(|x| !x.is_empty());
        let method = req.next().unwrap_or("").to_owned();
        let path = req.next().unwrap_or("").to_owned();
        let headers: Vec<(String, String)> = lines
            .take_while(|l| !l.is_empty())
            .filter_map(|l| {
                l.split_once(':').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            })
            .collect();
        let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let token = header("x-aws-ec2-metadata-token");
        let options = st.options.lock().unwrap().clone();
        let (status, body) = respond(st, &options, &method, &path, token, &header);
        st.log.lock().unwrap().push(Request {
            method: method.clone(),
            path,
            had_token: token.is_some(),
            status,
        });
        let keep =
            options.keep_alive && !header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            _ => "Method Not Allowed",
        };
        let body = if method == "HEAD" { Vec::new() } else { body };
        let mut out = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nConnection: {}\r\nServer: EC2ws\r\n",
            if keep { "keep-alive" } else { "close" }
        )
        .into_bytes();
        match options.chunked {
            Some(n) => {
                out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                for (i, c) in body.chunks(n.max(1)).enumerate() {
                    // Every third chunk with an extension, which a reader must skip.
                    let ext = if i % 3 == 1 { ";imdsg=1" } else { "" };
                    out.extend_from_slice(format!("{:x}{ext}\r\n", c.len()).as_bytes());
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n\r\n");
            }
            None => {
                out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                out.extend_from_slice(&body);
            }
        }
        let sent = match options.pieces {
            Some(n) => out.chunks(n.max(1)).all(|p| {
                let ok = s.write_all(p).is_ok();
                std::thread::sleep(Duration::from_millis(5));
                ok
            }),
            None => s.write_all(&out).is_ok(),
        };
        if !sent || !keep {
            return;
        }
    }
}

fn respond<'a>(
    st: &State,
    options: &Options,
    method: &str,
    path: &str,
    token: Option<&str>,
    header: &dyn Fn(&str) -> Option<&'a str>,
) -> (u16, Vec<u8>) {
    if path == "/latest/api/token" {
        if method != "PUT" {
            return (405, Vec::new());
        }
        if header("x-forwarded-for").is_some() || st.mode == ImdsMode::TokenForbidden {
            return (403, Vec::new());
        }
        let Some(ttl) = header("x-aws-ec2-metadata-token-ttl-seconds").and_then(|v| v.parse::<u32>().ok())
        else {
            return (400, Vec::new());
        };
        if !(1..=21600).contains(&ttl) {
            return (400, Vec::new());
        }
        let t = format!("AQAEA-imdsg-token-{}", st.next.fetch_add(1, Ordering::Relaxed));
        st.tokens.lock().unwrap().push(t.clone());
        return (200, t.into_bytes());
    }
    if method != "GET" && method != "HEAD" {
        return (405, Vec::new());
    }
    match token {
        Some(t) if !st.tokens.lock().unwrap().iter().any(|x| x == t) => {
            return (401, Vec::new());
        }
        None if st.mode == ImdsMode::Required => return (401, Vec::new()),
        _ => {}
    }
    const CREDS: &str = "/latest/meta-data/iam/security-credentials/";
    let role = path.strip_prefix(CREDS).filter(|r| !r.is_empty());
    let credentials = || credentials_body(options);
    match path {
        "/latest/meta-data/" | "/latest/meta-data" => (200, b"ami-id\ninstance-id\niam/\n".to_vec()),
        "/latest/meta-data/instance-id" => (200, INSTANCE_ID.into()),
        "/latest/meta-data/iam/security-credentials/" => (200, ROLE.into()),
        "/latest/meta-data/identity-credentials/ec2/security-credentials/ec2-instance" => {
            (200, credentials())
        }
        p if p.starts_with("/latest/meta-data/large?") => {
            (200, large_body(p["/latest/meta-data/large?".len()..].parse().unwrap_or(0)))
        }
        _ if role == Some(ROLE) || (options.any_role && role.is_some()) => (200, credentials()),
        _ => (404, Vec::new()),
    }
}
