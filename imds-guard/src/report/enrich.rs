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
    event::{AF_INET, ConnectEvent, Record, RequestEvent, TaskInfo},
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
    /// The systemd unit the cgroup belongs to (`foo.service`, `session-3.scope`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The container's id, when the cgroup is a container's (containerd, CRI-O, Docker, Podman).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_runtime: Option<crate::host::workload::Runtime>,
    /// The Kubernetes pod, named from kubelet's log directories.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
    /// Parent, grandparent, ... (up to 4), as the kernel saw them at the event.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<Ancestor>,
}

/// A Kubernetes pod (and container) on this node.
#[derive(Clone, Debug, Serialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The container's name, when the cgroup is a container's and kubelet has its log link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// One ancestor: pid and comm recorded by the kernel at the event; the executable from /proc when
/// that pid still runs a task of that name.
#[derive(Debug, Serialize)]
pub struct Ancestor {
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
}

/// Decodes and enriches kernel events, caching what does not change.
pub struct Enricher {
    cgroup_root: PathBuf,
    cgroups: HashMap<u64, String>,
    users: HashMap<u32, Option<String>>,
    /// Executables by the kernel's (device, inode), learnt from processes that were still there,
    /// to name the executable of one that has already exited.
    exes: HashMap<(u64, u64), String>,
    /// kubelet's log directories (from the policy's `[kubernetes]`), to name pods.
    pub pods: crate::host::workload::PodDirectory,
    /// Pods found, by the cgroup id of the event (a pod's log directory can appear a moment after
    /// its first process runs, so only what was found is remembered).
    pod_of: HashMap<u64, Pod>,
}

impl Enricher {
    #[must_use]
    pub fn new(cgroup_root: PathBuf) -> Self {
        Enricher {
            cgroup_root,
            cgroups: HashMap::new(),
            users: HashMap::new(),
            exes: HashMap::new(),
            pods: crate::host::workload::PodDirectory::default(),
            pod_of: HashMap::new(),
        }
    }

    /// The report of one ring buffer record.
    pub fn report(&mut self, record: &Record) -> Report {
        match record {
            Record::Connect(ev) => Report::Connect(self.connect(ev)),
            Record::Request(ev) => Report::Request(self.request(ev)),
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
            who: self.who(ev.pid_tgid, ev.uid, ev.gid, &ev.comm, ev.cgroup_id, &ev.task),
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
            who: self.who(ev.pid_tgid, ev.uid, ev.gid, &ev.comm, ev.cgroup_id, &ev.task),
            dst,
            port: u16::try_from(ev.port).unwrap_or(0),
            family,
            generation: ev.generation,
        }
    }

    /// Who `pid_tgid` is: ids from the kernel, the user's name, the executable from /proc while
    /// the process exists, the cgroup's path.
    fn who(
        &mut self,
        pid_tgid: u64,
        uid: u32,
        gid: u32,
        comm: &[u8; 16],
        cgroup_id: u64,
        task: &TaskInfo,
    ) -> Who {
        let pid = (pid_tgid >> 32) as u32;
        let cgroup = self.cgroup(pid, cgroup_id);
        let workload = cgroup.as_deref().map(crate::host::workload::classify).unwrap_or_default();
        let pod = self.pod(cgroup_id, &workload);
        Who {
            pid,
            tid: pid_tgid as u32,
            uid,
            gid,
            user: self.user(uid),
            comm: cstr(comm),
            exe: self.exe(pid, task),
            cgroup,
            cgroup_id,
            unit: workload.unit,
            container_id: workload.container_id,
            container_runtime: workload.runtime,
            pod,
            ancestors: task
                .ancestors
                .iter()
                .take_while(|a| a.pid != 0)
                .map(|a| {
                    let comm = cstr(&a.comm);
                    // The pid may have been reused since: only a task of the same name counts.
                    let same = std::fs::read_to_string(format!("/proc/{}/comm", a.pid))
                        .is_ok_and(|c| c.trim_end_matches('\n') == comm);
                    let exe = same
                        .then(|| std::fs::read_link(format!("/proc/{}/exe", a.pid)).ok())
                        .flatten()
                        .map(|p| p.display().to_string());
                    Ancestor { pid: a.pid, comm, exe }
                })
                .collect(),
        }
    }

    fn pod(&mut self, cgroup_id: u64, w: &crate::host::workload::Workload) -> Option<Pod> {
        w.pod_uid.as_ref()?;
        if let Some(p) = self.pod_of.get(&cgroup_id) {
            return Some(p.clone());
        }
        let id = self.pods.identify(w)?;
        let pod = Pod { namespace: id.namespace, name: id.pod, uid: id.pod_uid, container: id.container };
        if self.pod_of.len() > 4096 {
            self.pod_of.clear();
        }
        self.pod_of.insert(cgroup_id, pod.clone());
        Some(pod)
    }

    /// The executable: /proc/<pid>/exe while the process exists, else what an earlier process with
    /// the same executable (device and inode, read by the kernel) showed, else the path the kernel
    /// read from the dentries at the event (within the executable's filesystem).
    fn exe(&mut self, pid: u32, task: &TaskInfo) -> Option<String> {
        let key = (task.exe_dev, task.exe_ino);
        match std::fs::read_link(format!("/proc/{pid}/exe")) {
            Ok(p) => {
                let p = p.display().to_string();
                if key != (0, 0) && !self.exes.contains_key(&key) {
                    if self.exes.len() > 4096 {
                        self.exes.clear();
                    }
                    self.exes.insert(key, p.clone());
                }
                Some(p)
            }
            Err(e) => {
                tracing::debug!(pid, "no executable path in /proc: {e}");
                if let Some(p) = self.exes.get(&key) {
                    return Some(p.clone());
                }
                let p = kernel_exe_path(task)?;
                // Confirmed on disk (the file at that path is the one that ran, or the one its
                // cut leaf name stands for): remembered like a path from /proc.
                if let Some(full) = confirm_exe_path(&p, key) {
                    if self.exes.len() > 4096 {
                        self.exes.clear();
                    }
                    self.exes.insert(key, full.clone());
                    return Some(full);
                }
                Some(p)
            }
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
                crate::host::env::cgroup_id(&self.cgroup_root.join(p.trim_start_matches('/'))).ok()
                    == Some(id)
            });
        let path = from_proc.or_else(|| find_cgroup(&self.cgroup_root, id))?;
        if self.cgroups.len() > 4096 {
            self.cgroups.clear();
        }
        self.cgroups.insert(id, path.clone());
        Some(path)
    }
}

/// Event types that report a violation or a finding (counted in metrics, shown as warnings).
#[must_use]
pub fn is_violation(event: &str) -> bool {
    matches!(
        event.strip_suffix("_repeated").unwrap_or(event),
        "connect_denied"
            | "imdsv1_request"
            | "token_put_forwarded"
            | "imds_request_unclassified"
            | "forward_denied"
            | "output_denied"
    )
}

/// The strongest identity an event carries, as one short string: `pod:<namespace>/<name>`,
/// `unit:<unit>`, `container:<id, 12 hex>`, `exe:<path>`, else `uid:<uid>`. Used as the
/// metrics' `workload` label and by `suggest` to group what it saw.
#[must_use]
pub fn workload_name(v: &serde_json::Value) -> String {
    if let (Some(ns), Some(name)) = (v["pod"]["namespace"].as_str(), v["pod"]["name"].as_str()) {
        return format!("pod:{ns}/{name}");
    }
    if let Some(unit) = v["unit"].as_str() {
        return format!("unit:{unit}");
    }
    if let Some(id) = v["container_id"].as_str() {
        // The first 12 characters (an id from an events file need not be hex, nor ASCII).
        return format!("container:{}", id.chars().take(12).collect::<String>());
    }
    // A path with a cut name (`…`, from the kernel's record) names no file a rule could use.
    if let Some(exe) = v["exe"].as_str().filter(|e| !e.contains('…')) {
        return format!("exe:{}", exe.strip_suffix(" (deleted)").unwrap_or(exe));
    }
    match v["uid"].as_u64() {
        Some(uid) => format!("uid:{uid}"),
        None => "unknown".into(),
    }
}

/// One event as a line for a person at a terminal (`imds-guard events`, the journal's MESSAGE).
#[must_use]
pub fn human(v: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let event = v["event"].as_str().unwrap_or("?");
    let base = event.strip_suffix("_repeated");
    let s = |k: &str| v[k].as_str().map(str::to_owned).unwrap_or_else(|| v[k].to_string());
    let mut out = String::new();
    if let Some(t) = v["time"].as_str().or(v["first_time"].as_str()) {
        let _ = write!(out, "{t} ");
    }
    let verdict = if v["enforced"].as_bool() == Some(true) { "REFUSED" } else { "reported" };
    match base.unwrap_or(event) {
        "connect_denied" => {
            let _ = write!(out, "connect {verdict}: {}:{}", s("dst"), s("port"));
        }
        "imdsv1_request" | "token_put_forwarded" | "imds_request_unclassified" => {
            let what = match base.unwrap_or(event) {
                "imdsv1_request" => "IMDSv1 (tokenless) request",
                "token_put_forwarded" => "token PUT with X-Forwarded-For",
                _ => "unclassified request",
            };
            let _ = write!(out, "{what} {verdict}: {} {}", s("method"), s("path"));
        }
        "forward_denied" => {
            let _ = write!(out, "forwarded packet {verdict}: {} -> {}:{}", s("src"), s("dst"), s("port"));
            if let Some(i) = v["in_interface"].as_str() {
                let _ = write!(out, " in on {i}");
            }
        }
        "output_denied" => {
            let _ =
                write!(out, "packet {verdict} (reduced mode): {} -> {}:{}", s("src"), s("dst"), s("port"));
        }
        _ => {
            let _ = write!(out, "{event}");
            if let Some(o) = v.as_object() {
                for (k, val) in o {
                    if matches!(k.as_str(), "schema" | "event" | "time") || val.is_null() || val.is_object() {
                        continue;
                    }
                    let text = val.as_str().map(str::to_owned).unwrap_or_else(|| val.to_string());
                    let _ = write!(out, " {k}={text}");
                }
            }
            return out;
        }
    }
    if base.is_some() {
        let _ = write!(out, " x{} more in {}s", s("count"), s("window_s"));
    }
    if v["pid"].is_u64() {
        let _ = write!(out, " by pid {} ({})", s("pid"), s("comm"));
    } else if v["comm"].is_string() {
        let _ = write!(out, " by {}", s("comm"));
    }
    if v["uid"].is_u64() {
        let _ = write!(out, " uid {}", s("uid"));
        if let Some(u) = v["user"].as_str() {
            let _ = write!(out, " ({u})");
        }
    }
    for k in ["exe", "unit", "container_id"] {
        if let Some(x) = v[k].as_str() {
            let _ = write!(out, " {k} {x}");
        }
    }
    if let (Some(ns), Some(name)) = (v["pod"]["namespace"].as_str(), v["pod"]["name"].as_str()) {
        let _ = write!(out, " pod {ns}/{name}");
        if let Some(c) = v["pod"]["container"].as_str() {
            let _ = write!(out, " container {c}");
        }
    }
    if let Some(c) = v["cgroup"].as_str() {
        let _ = write!(out, " cgroup {c}");
    }
    out
}

/// The executable's path as the kernel recorded it (leaf first); `…/` in front when cut at the
/// top, `…` after a name that filled its slot (it may have been longer).
fn kernel_exe_path(task: &TaskInfo) -> Option<String> {
    use imds_guard_common::event::{COMPONENT_LEN, EXE_COMPONENTS};
    let depth = task.exe_depth as usize;
    if depth == 0 {
        return None;
    }
    let names: Vec<String> = task.exe_names[..depth.min(EXE_COMPONENTS)]
        .iter()
        .rev()
        .map(|n| {
            let name = cstr(n);
            let len = n.iter().position(|&c| c == 0).unwrap_or(n.len());
            if len + 1 >= COMPONENT_LEN { format!("{name}…") } else { name }
        })
        .collect();
    let prefix = if depth > EXE_COMPONENTS { "…/" } else { "/" };
    Some(format!("{prefix}{}", names.join("/")))
}

/// Directory entries read to find a cut leaf name (bounds the cost of one event).
const MAX_DIR_SCAN: usize = 4096;

/// The full path of the executable whose kernel path is `kernel_path` and whose (device, inode) is
/// `key`, when the file system confirms it: the path as recorded, or — when only the leaf name was
/// cut — the entry of its directory with that inode. `None` when it cannot be confirmed (another
/// file system or mount namespace, deleted, a cut directory name).
fn confirm_exe_path(kernel_path: &str, key: (u64, u64)) -> Option<String> {
    use std::os::unix::fs::DirEntryExt as _;
    if key == (0, 0) || kernel_path.starts_with('…') {
        return None;
    }
    let same = |p: &Path| {
        crate::host::identity::resolve_exe(p.to_str()?, false)
            .ok()?
            .id
            .filter(|id| (id.dev, id.ino) == key)
            .map(|_| p.display().to_string())
    };
    let Some(dir_part) = kernel_path.strip_suffix('…') else {
        return same(Path::new(kernel_path));
    };
    let (dir, leaf) = dir_part.rsplit_once('/')?;
    if dir.contains('…') {
        return None;
    }
    let dir = if dir.is_empty() { "/" } else { dir };
    std::fs::read_dir(dir)
        .ok()?
        .take(MAX_DIR_SCAN)
        .filter_map(Result::ok)
        .filter(|e| e.ino() == key.1 && e.file_name().to_string_lossy().starts_with(leaf))
        .find_map(|e| same(&e.path()))
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
    use imds_guard_common::event::{AF_INET6, flags, kind};

    fn decode(en: &mut Enricher, bytes: &[u8]) -> Option<Report> {
        Record::parse(bytes).map(|r| en.report(&r))
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
        let Report::Connect(e) = decode(&mut en, ev.as_bytes()).unwrap() else { panic!("a connect event") };
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
        let Report::Connect(e) = decode(&mut en, ev.as_bytes()).unwrap() else { panic!("a connect event") };
        assert_eq!(e.dst, "::ffff:169.254.169.254");
        assert!(!e.enforced);
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains("\"event\":\"connect_denied\""), "{json}");
        assert!(decode(&mut en, &[9, 0, 0, 0]).is_none());
        assert!(decode(&mut en, &ev.as_bytes()[..20]).is_none());
    }
}
