//! Kernel events → enriched, structured [`Event`]s (one JSON object per line on stdout).
//!
//! What the kernel cannot know cheaply (the executable's path, the cgroup's path, the user's name)
//! is added here from /proc and the cgroup filesystem while the process most likely still exists.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use imds_guard_common::{
    event::{AF_INET, ConnectEvent, RequestEvent, kind},
    http::{self, Finding},
};
use serde::Serialize;

/// Version of the event schema (docs/EVENTS.md).
pub const SCHEMA_VERSION: u32 = 1;

/// A reported event: a denied connect, or a request worth reporting.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Report {
    Connect(Event),
    Request(RequestReport),
}

/// A request written to a metadata endpoint: `imdsv1_request`, `token_put_forwarded` or
/// `imds_request_unclassified`.
#[derive(Debug, Serialize)]
pub struct RequestReport {
    pub schema: u32,
    pub event: &'static str,
    /// True when the request was refused (the workload's `imdsv1 = "deny"`): the write failed
    /// and nothing reached the metadata service.
    pub enforced: bool,
    pub time: String,
    /// pid, tid, uid, gid and user of the process that wrote the request; comm and cgroup of the
    /// process that connected.
    #[serde(flatten)]
    pub who: Who,
    /// HTTP method and path (the path is cut at 96 bytes).
    pub method: Option<&'static str>,
    pub path: Option<String>,
    /// The request asks for IAM role credentials.
    pub credentials: bool,
    pub dst: String,
    pub port: u16,
    pub family: &'static str,
    /// The `[[allow]]` rule (0-based) that let the connection through; absent in monitor mode
    /// when no rule matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    pub generation: u32,
}

#[derive(Debug, Serialize)]
pub struct Event {
    pub schema: u32,
    pub event: &'static str,
    /// True when the connect was refused; false in monitor mode (let through, reported).
    pub enforced: bool,
    pub time: String,
    #[serde(flatten)]
    pub who: Who,
    pub dst: String,
    pub port: u16,
    pub family: &'static str,
    pub generation: u32,
}

/// The process behind an event, as the kernel saw it plus what /proc and the cgroup tree add.
#[derive(Debug, Serialize)]
pub struct Who {
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub comm: String,
    /// The running executable (`/proc/<pid>/exe`), when the process still exists.
    pub exe: Option<String>,
    /// The process's cgroup, relative to the cgroup2 root.
    pub cgroup: Option<String>,
    pub cgroup_id: u64,
}

/// Decodes and enriches kernel events, caching what does not change.
pub struct Enricher {
    cgroup_root: PathBuf,
    cgroups: HashMap<u64, String>,
    users: HashMap<u32, Option<String>>,
}

impl Enricher {
    #[must_use]
    pub fn new(cgroup_root: PathBuf) -> Self {
        Enricher { cgroup_root, cgroups: HashMap::new(), users: HashMap::new() }
    }

    /// Decodes one ring buffer record; `None` for a record of an unknown kind or size.
    pub fn decode(&mut self, bytes: &[u8]) -> Option<Report> {
        let kind = u32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?);
        match kind {
            kind::CONNECT_DENIED if bytes.len() >= size_of::<ConnectEvent>() => {
                // SAFETY: ConnectEvent is repr(C) plain data and the record is at least that long.
                let ev: ConnectEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
                Some(Report::Connect(self.connect(&ev)))
            }
            kind::IMDS_REQUEST if bytes.len() >= size_of::<RequestEvent>() => {
                // SAFETY: as above, for RequestEvent.
                let ev: RequestEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
                Some(Report::Request(self.request(&ev)))
            }
            _ => None,
        }
    }

    fn request(&mut self, ev: &RequestEvent) -> RequestReport {
        let (dst, family) = destination(ev.family, &ev.addr);
        let finding = Finding::from_u32(ev.finding);
        let path = (ev.path_len > 0).then(|| {
            String::from_utf8_lossy(&ev.path[..(ev.path_len as usize).min(ev.path.len())]).into_owned()
        });
        let method = match u8::try_from(ev.method).unwrap_or(0) {
            http::method::GET => Some("GET"),
            http::method::HEAD => Some("HEAD"),
            http::method::PUT => Some("PUT"),
            http::method::POST => Some("POST"),
            http::method::OTHER => Some("OTHER"),
            _ => None,
        };
        let (method, path) = match finding {
            Finding::TokenPutForwarded => (Some("PUT"), Some("/latest/api/token".to_owned())),
            _ => (method, path),
        };
        let credentials =
            path.as_deref().is_some_and(|p| p.starts_with("/latest/meta-data/iam/security-credentials/"));
        RequestReport {
            schema: SCHEMA_VERSION,
            event: match finding {
                Finding::TokenPutForwarded => "token_put_forwarded",
                Finding::Oversized => "imds_request_unclassified",
                _ => "imdsv1_request",
            },
            enforced: ev.flags & imds_guard_common::event::flags::ENFORCED != 0,
            time: wall_time(ev.time_boot_ns),
            who: self.who(ev.pid_tgid, ev.uid, ev.gid, &ev.comm, ev.cgroup_id),
            method,
            path,
            credentials,
            dst,
            port: u16::try_from(ev.port).unwrap_or(0),
            family,
            rule: (ev.rule_index != imds_guard_common::sock::NO_RULE).then_some(ev.rule_index),
            generation: ev.generation,
        }
    }

    fn connect(&mut self, ev: &ConnectEvent) -> Event {
        let (dst, family) = destination(ev.family, &ev.addr);
        Event {
            schema: SCHEMA_VERSION,
            event: "connect_denied",
            enforced: ev.enforced(),
            time: wall_time(ev.time_boot_ns),
            who: self.who(ev.pid_tgid, ev.uid, ev.gid, &ev.comm, ev.cgroup_id),
            dst,
            port: u16::try_from(ev.port).unwrap_or(0),
            family,
            generation: ev.generation,
        }
    }

    /// Who `pid_tgid` is: ids from the kernel, the user's name, the executable from /proc while
    /// the process exists, the cgroup's path.
    fn who(&mut self, pid_tgid: u64, uid: u32, gid: u32, comm: &[u8; 16], cgroup_id: u64) -> Who {
        let pid = (pid_tgid >> 32) as u32;
        Who {
            pid,
            tid: pid_tgid as u32,
            uid,
            gid,
            user: self.user(uid),
            comm: cstr(comm),
            exe: std::fs::read_link(format!("/proc/{pid}/exe"))
                .inspect_err(|e| tracing::debug!(pid, "no executable path: {e}"))
                .ok()
                .map(|p| p.display().to_string()),
            cgroup: self.cgroup(pid, cgroup_id),
            cgroup_id,
        }
    }

    fn user(&mut self, uid: u32) -> Option<String> {
        if self.users.len() > 4096 && !self.users.contains_key(&uid) {
            // Bounded like the cgroup cache: uids in user namespaces span a wide range.
            self.users.clear();
        }
        self.users
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.name)
            })
            .clone()
    }

    /// The cgroup path of `id`: from /proc/<pid>/cgroup when the process is still there and still in
    /// that cgroup, else by finding the directory with that inode under the cgroup2 root.
    fn cgroup(&mut self, pid: u32, id: u64) -> Option<String> {
        if let Some(p) = self.cgroups.get(&id) {
            return Some(p.clone());
        }
        let from_proc = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("0::").map(str::to_owned)))
            .filter(|p| {
                crate::env::cgroup_id(&self.cgroup_root.join(p.trim_start_matches('/'))).ok() == Some(id)
            });
        let path = from_proc.or_else(|| find_cgroup(&self.cgroup_root, id))?;
        if self.cgroups.len() > 4096 {
            self.cgroups.clear();
        }
        self.cgroups.insert(id, path.clone());
        Some(path)
    }
}

fn destination(family: u32, addr: &[u8; 16]) -> (String, &'static str) {
    if family == AF_INET {
        let a: [u8; 4] = addr[..4].try_into().expect("4 bytes");
        (Ipv4Addr::from(a).to_string(), "ipv4")
    } else {
        (Ipv6Addr::from(*addr).to_string(), "ipv6")
    }
}

fn find_cgroup(root: &Path, id: u64) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let mut stack = vec![root.to_owned()];
    let mut budget = 20_000;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            budget -= 1;
            if budget == 0 {
                return None;
            }
            let Ok(md) = entry.metadata() else { continue };
            if md.is_dir() {
                if md.ino() == id {
                    let rel = entry.path().strip_prefix(root).ok()?.display().to_string();
                    return Some(format!("/{rel}"));
                }
                stack.push(entry.path());
            }
        }
    }
    None
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Converts a `bpf_ktime_get_boot_ns()` stamp to RFC 3339 wall-clock time.
fn wall_time(boot_ns: u64) -> String {
    let now_boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| Duration::new(t.tv_sec().cast_unsigned(), u32::try_from(t.tv_nsec()).unwrap_or(0)))
        .unwrap_or_default();
    let age = now_boot.saturating_sub(Duration::from_nanos(boot_ns));
    let at = SystemTime::now().checked_sub(age).unwrap_or_else(SystemTime::now);
    humantime::format_rfc3339_micros(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use imds_guard_common::event::{AF_INET6, flags};

    fn raw(ev: &ConnectEvent) -> Vec<u8> {
        // SAFETY: plain repr(C) data.
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(ev).cast::<u8>(), size_of::<ConnectEvent>()) }
            .to_vec()
    }

    #[test]
    fn decodes_v4_and_mapped_events() {
        let mut en = Enricher::new(PathBuf::from("/nonexistent"));
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"curl");
        let mut ev = ConnectEvent {
            kind: kind::CONNECT_DENIED,
            flags: flags::ENFORCED,
            pid_tgid: (4_000_000u64 << 32) | 4_000_001,
            uid: 0,
            comm,
            family: AF_INET,
            port: 80,
            ..ConnectEvent::default()
        };
        ev.addr[..4].copy_from_slice(&[169, 254, 169, 254]);
        let Report::Connect(e) = en.decode(&raw(&ev)).unwrap() else { panic!("a connect event") };
        assert_eq!((e.who.pid, e.who.tid, e.port), (4_000_000, 4_000_001, 80));
        assert_eq!(e.dst, "169.254.169.254");
        assert_eq!(e.who.comm, "curl");
        assert_eq!(e.who.user.as_deref(), Some("root"));
        assert!(e.enforced);
        assert!(e.who.exe.is_none(), "no such process");
        let mut mapped = [0u8; 16];
        mapped[10..12].copy_from_slice(&[0xff, 0xff]);
        mapped[12..].copy_from_slice(&[169, 254, 169, 254]);
        ev.family = AF_INET6;
        ev.addr = mapped;
        ev.flags = 0;
        let Report::Connect(e) = en.decode(&raw(&ev)).unwrap() else { panic!("a connect event") };
        assert_eq!(e.dst, "::ffff:169.254.169.254");
        assert!(!e.enforced);
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains("\"event\":\"connect_denied\""), "{json}");
        assert!(en.decode(&[9, 0, 0, 0]).is_none());
        assert!(en.decode(&raw(&ev)[..20]).is_none());
    }
}
