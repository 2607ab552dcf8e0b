//! Test client: runs a sequence of steps and prints one JSON line per connect, so tests can play
//! an attacker or a workload precisely (what it is called, where it lives, what it execs).
//!
//!   connect ADDR PORT        connect() once: {"result": "connected"|"EPERM"|..., "ms": f64}
//!   repeat ADDR PORT N       connect() N times: {"repeat": {"EPERM": n, ...}}
//!   storm ADDR PORT MILLIS   connect() every 0.5 ms for MILLIS ms: {"storm": {"connected": n, "EPERM": m, ...}}
//!   get ADDR PORT PATH N     N tokenless HTTP GETs, one connection each: {"get": {"200": n, "EPERM": m, ...}}
//!   ports ADDR FROM TO       connect() once to each port FROM..=TO, as fast as possible: {"ports": {"EPERM": n, ...}}
//!   comm NAME                prctl(PR_SET_NAME)
//!   ids                      print the real and effective uid: {"uid": n, "euid": m}
//!   setuid UID               setresuid(UID, UID, UID) (a setuid-root copy can become root)
//!   cgroup PROCS             move this process into a cgroup (write its pid to PROCS)
//!   exec PROG ARGS...        fork; the child execs PROG with the rest of the arguments; wait for it
//!   sleep MILLIS             sleep
//!   pause                    wait for a line on stdin (so a test can act in between)

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{IpAddr, SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    time::{Duration, Instant},
};

fn errno_name(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(libc::EACCES) => "EACCES".into(),
        Some(libc::ETIMEDOUT) => "ETIMEDOUT".into(),
        Some(libc::ENETUNREACH) => "ENETUNREACH".into(),
        Some(n) => format!("errno {n}"),
        None => e.to_string(),
    }
}

fn connect(addr: &str, port: &str) -> String {
    let ip: IpAddr = addr.parse().expect("address");
    let sa = SocketAddr::new(ip, port.parse().expect("port"));
    match TcpStream::connect_timeout(&sa, Duration::from_secs(2)) {
        Ok(_) => "connected".into(),
        Err(e) => errno_name(&e),
    }
}

/// One tokenless GET: the status code, or the error.
fn get(addr: &str, port: &str, path: &str) -> String {
    use std::io::Read as _;
    let ip: IpAddr = addr.parse().expect("address");
    let sa = SocketAddr::new(ip, port.parse().expect("port"));
    let mut s = match TcpStream::connect_timeout(&sa, Duration::from_secs(2)) {
        Ok(s) => s,
        Err(e) => return errno_name(&e),
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if let Err(e) = s.write_all(req.as_bytes()) {
        return errno_name(&e);
    }
    let mut resp = String::new();
    match s.read_to_string(&mut resp) {
        Ok(_) => resp.split(' ').nth(1).unwrap_or("no-status").to_owned(),
        Err(e) => errno_name(&e),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = std::io::stdout();
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "connect" => {
                let t = Instant::now();
                let r = connect(&args[i + 1], &args[i + 2]);
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                writeln!(out, "{{\"result\":\"{r}\",\"ms\":{ms}}}").unwrap();
                i += 3;
            }
            "repeat" => {
                // connect() N times as fast as possible: {"repeat": {"EPERM": n, ...}}
                let n: u64 = args[i + 3].parse().expect("count");
                let mut counts: BTreeMap<String, u64> = BTreeMap::new();
                for _ in 0..n {
                    *counts.entry(connect(&args[i + 1], &args[i + 2])).or_default() += 1;
                }
                let body: Vec<String> = counts.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                writeln!(out, "{{\"repeat\":{{{}}}}}", body.join(",")).unwrap();
                i += 4;
            }
            "ports" => {
                let (from, to): (u16, u16) =
                    (args[i + 2].parse().expect("first port"), args[i + 3].parse().expect("last port"));
                let mut counts: BTreeMap<String, u64> = BTreeMap::new();
                for port in from..=to {
                    *counts.entry(connect(&args[i + 1], &port.to_string())).or_default() += 1;
                }
                let body: Vec<String> = counts.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                writeln!(out, "{{\"ports\":{{{}}}}}", body.join(",")).unwrap();
                i += 4;
            }
            "storm" => {
                let until = Instant::now() + Duration::from_millis(args[i + 3].parse().expect("millis"));
                let mut counts: BTreeMap<String, u64> = BTreeMap::new();
                while Instant::now() < until {
                    *counts.entry(connect(&args[i + 1], &args[i + 2])).or_default() += 1;
                    std::thread::sleep(Duration::from_micros(500));
                }
                let body: Vec<String> = counts.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                writeln!(out, "{{\"storm\":{{{}}}}}", body.join(",")).unwrap();
                i += 4;
            }
            "get" => {
                let n: u64 = args[i + 4].parse().expect("count");
                let mut counts: BTreeMap<String, u64> = BTreeMap::new();
                for _ in 0..n {
                    *counts.entry(get(&args[i + 1], &args[i + 2], &args[i + 3])).or_default() += 1;
                }
                let body: Vec<String> = counts.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                writeln!(out, "{{\"get\":{{{}}}}}", body.join(",")).unwrap();
                i += 5;
            }
            "comm" => {
                let name = std::ffi::CString::new(args[i + 1].as_str()).unwrap();
                // SAFETY: PR_SET_NAME with a NUL-terminated string.
                let r = unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
                assert_eq!(r, 0, "prctl");
                i += 2;
            }
            "ids" => {
                // SAFETY: plain getters.
                let (uid, euid) = unsafe { (libc::getuid(), libc::geteuid()) };
                writeln!(out, "{{\"uid\":{uid},\"euid\":{euid}}}").unwrap();
                i += 1;
            }
            "setuid" => {
                let uid: u32 = args[i + 1].parse().expect("uid");
                // SAFETY: plain syscall.
                assert_eq!(unsafe { libc::setresuid(uid, uid, uid) }, 0, "setresuid");
                i += 2;
            }
            "cgroup" => {
                std::fs::write(&args[i + 1], "0").expect("move to cgroup");
                i += 2;
            }
            "sleep" => {
                std::thread::sleep(Duration::from_millis(args[i + 1].parse().expect("millis")));
                i += 2;
            }
            "pause" => {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).unwrap();
                i += 1;
            }
            "exec" => {
                out.flush().unwrap();
                let status = std::process::Command::new(&args[i + 1])
                    .args(&args[i + 2..])
                    .arg0(&args[i + 1])
                    .status()
                    .expect("exec");
                assert!(status.code().is_some(), "child died: {status}");
                return;
            }
            other => panic!("unknown step {other}"),
        }
        out.flush().unwrap();
    }
}
