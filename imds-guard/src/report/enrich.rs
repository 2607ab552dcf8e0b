//! Kernel records → enriched, typed [`Event`]s.
//!
//! What the kernel cannot know cheaply (the executable's path, the cgroup's path, the user's name)
//! is added here from /proc and the cgroup filesystem while the process most likely still exists.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use super::event::{Ancestor, Connect, Credentials, Event, Pod, Request, Who};
use crate::host::{
    mounts::{self, Mount},
    workload::Attribution,
};
use imds_guard_common::{
    creds,
    event::{AF_INET, ConnectEvent, CredentialsEvent, Record, RequestEvent, TaskInfo},
    http::{self, Finding},
};

/// Decodes and enriches kernel events, caching what does not change.
pub struct Enricher {
    cgroup_root: PathBuf,
    /// cgroup paths by id, with what their trusted names say; `None` for an id no longer found (a
    /// removed cgroup): looked for once, not walked again for each of its events.
    cgroups: HashMap<u64, Option<(String, Attribution)>>,
    users: HashMap<u32, Option<String>>,
    /// Executables by the kernel's (device, inode), learnt from processes that were still there,
    /// to name the executable of one that has already exited.
    exes: HashMap<(u64, u64), String>,
    /// kubelet's log directories (from the policy's `[kubernetes]`), to name pods.
    pub pods: crate::host::workload::PodDirectory,
    /// Pods found, by the cgroup id of the event (a pod's log directory can appear a moment after
    /// its first process runs, so only what was found is remembered).
    pod_of: HashMap<u64, Pod>,
    /// The mount table, read again at most once a second: it places the path the kernel read
    /// within an executable's filesystem (a snap's squashfs, a separate /opt, a container's
    /// overlay) where that filesystem is mounted.
    mounts: Option<(Instant, Vec<Mount>)>,
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
            mounts: None,
        }
    }

    /// The event of one ring buffer record.
    pub fn event(&mut self, record: &Record) -> Event {
        match record {
            Record::Connect(ev) => Event::ConnectDenied(self.connect(ev)),
            Record::Request(ev) => {
                let finding = Finding::from_u32(ev.finding);
                let r = self.request(ev, finding);
                use imds_guard_common::event::flags;
                if ev.flags & (flags::READ_DENIED | flags::UNINSPECTED) != 0 {
                    return Event::RequestDenied(r);
                }
                match finding {
                    Finding::TokenPutForwarded => Event::TokenPutForwarded(r),
                    Finding::Oversized | Finding::NotHttp | Finding::Trailing => {
                        Event::ImdsRequestUnclassified(r)
                    }
                    _ => Event::Imdsv1Request(r),
                }
            }
            Record::Credentials(ev) => Event::CredentialsFetched(self.credentials(ev)),
        }
    }

    fn credentials(&mut self, ev: &CredentialsEvent) -> Credentials {
        let (dst, family) = destination(ev.family, &ev.addr);
        let path = &ev.path[..(ev.path_len as usize).min(ev.path.len())];
        let path_cut = ev.path_bytes > ev.path_len;
        let (source, role) = match creds::source(path) {
            creds::Source::InstanceRole(role) => {
                // The role ends the kept path: cut with it when the path was.
                let end = role.as_ptr_range().end == path.as_ptr_range().end;
                let mut r = String::from_utf8_lossy(role).into_owned();
                if path_cut && end {
                    r.push('…');
                }
                ("instance_role", Some(r))
            }
            creds::Source::InstanceIdentity => ("instance_identity", None),
            creds::Source::Other => ("other", None),
        };
        let (key, expiry) = creds::values(&ev.values[..(ev.values_len as usize).min(ev.values.len())]);
        // A value the kernel had no room for to its end: what it kept, and `…`.
        let text = |v: creds::Value<'_>| {
            let mut s = json_string(v.raw);
            if v.cut {
                s.push('…');
            }
            s
        };
        Credentials {
            time: wall_time(ev.time_boot_ns),
            who: self.who(ev.pid_tgid, ev.uid, ev.gid, &ev.comm, ev.cgroup_id, &ev.task),
            source: source.to_owned(),
            role,
            path: (ev.path_len > 0).then(|| String::from_utf8_lossy(path).into_owned()),
            access_key_id: key.map(text).unwrap_or_default(),
            expiration: expiry.map(text),
            complete: ev.flags & creds::flag::COMPLETE != 0,
            dst,
            port: u16::try_from(ev.port).unwrap_or(0),
            family: family.to_owned(),
            rule: (ev.rule_index != imds_guard_common::sock::NO_RULE).then_some(ev.rule_index),
            generation: ev.generation,
        }
    }

    fn request(&mut self, ev: &RequestEvent, finding: Finding) -> Request {
        let (dst, family) = destination(ev.family, &ev.addr);
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
        let credentials = path.as_deref().is_some_and(|p| {
            imds_guard_common::path::is_credentials(imds_guard_common::path::classify_text(p.as_bytes()))
        });
        Request {
            enforced: ev.flags & imds_guard_common::event::flags::ENFORCED != 0,
            time: wall_time(ev.time_boot_ns),
            who: self.who(ev.pid_tgid, ev.uid, ev.gid, &ev.comm, ev.cgroup_id, &ev.task),
            method: method.map(str::to_owned),
            path,
            credentials,
            dst,
            port: u16::try_from(ev.port).unwrap_or(0),
            family: family.to_owned(),
            rule: (ev.rule_index != imds_guard_common::sock::NO_RULE).then_some(ev.rule_index),
            generation: ev.generation,
            unclassified: match finding {
                Finding::Oversized => Some("oversized"),
                Finding::NotHttp => Some("not_http"),
                Finding::Trailing => Some("trailing"),
                _ => None,
            }
            .map(str::to_owned),
            class: (ev.flags & imds_guard_common::event::flags::READ_DENIED != 0)
                .then(|| imds_guard_common::path::class::name(ev.read_class).to_owned()),
            tokenless: ev.flags & imds_guard_common::event::flags::READ_DENIED != 0
                && finding == Finding::Imdsv1,
            reason: (ev.flags & imds_guard_common::event::flags::UNINSPECTED != 0)
                .then(|| "uninspected".to_owned()),
        }
    }

    fn connect(&mut self, ev: &ConnectEvent) -> Connect {
        use imds_guard_common::event::flags;
        let (dst, family) = destination(ev.family, &ev.addr);
        let reason = if ev.flags & flags::RAW_SOCKET != 0 {
            Some("raw_socket")
        } else if ev.flags & flags::HANDED_OVER != 0 {
            Some("handed_over")
        } else if ev.flags & flags::TRACED != 0 {
            Some("traced")
        } else if ev.flags & flags::UNINSPECTABLE != 0 {
            Some("uninspectable")
        } else {
            None
        };
        Connect {
            enforced: ev.enforced(),
            time: wall_time(ev.time_boot_ns),
            who: self.who(ev.pid_tgid, ev.uid, ev.gid, &ev.comm, ev.cgroup_id, &ev.task),
            dst,
            port: u16::try_from(ev.port).unwrap_or(0),
            family: family.to_owned(),
            generation: ev.generation,
            reason: reason.map(str::to_owned),
            rule: reason.and((ev.rule_index != imds_guard_common::sock::NO_RULE).then_some(ev.rule_index)),
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
        let (cgroup, Attribution { workload, delegated_to }) = match self.cgroup(pid, cgroup_id) {
            Some((path, a)) => (Some(path), a),
            None => (None, Attribution::default()),
        };
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
            delegated_to,
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
    /// read from the dentries at the event — within the executable's filesystem, so placed where
    /// that filesystem is mounted when the file there is the one that ran — else that path as read.
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
                // cut leaf name stands for), on the root filesystem or where the executable's is
                // mounted: remembered like a path from /proc.
                let full = confirm_exe_path(&p, key).or_else(|| self.exe_in_mounts(&p, key));
                if let Some(full) = full {
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

    /// `fs_path` (the kernel's path within the filesystem of device `key.0`) under each mount of
    /// that filesystem, the first confirmed to be the executable.
    fn exe_in_mounts(&mut self, fs_path: &str, key: (u64, u64)) -> Option<String> {
        if key == (0, 0) || fs_path.starts_with('…') {
            return None;
        }
        let fresh = self.mounts.as_ref().is_some_and(|(at, _)| at.elapsed() < Duration::from_secs(1));
        if !fresh {
            self.mounts = Some((Instant::now(), mounts::current()));
        }
        let table = &self.mounts.as_ref()?.1;
        mounts::paths_in_mounts(table, key.0, Path::new(fs_path))
            .iter()
            .filter(|c| c.as_os_str() != fs_path)
            .find_map(|c| confirm_exe_path(c.to_str()?, key))
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
    /// that cgroup, else by finding the directory with that inode under the cgroup2 root; and its
    /// [attribution](crate::host::workload::attribute), from the names of trusted owners only.
    fn cgroup(&mut self, pid: u32, id: u64) -> Option<(String, Attribution)> {
        if let Some(p) = self.cgroups.get(&id) {
            return p.clone();
        }
        let from_proc = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("0::").map(str::to_owned)))
            .filter(|p| {
                crate::host::env::cgroup_id(&self.cgroup_root.join(p.trim_start_matches('/'))).ok()
                    == Some(id)
            });
        let path = from_proc.or_else(|| find_cgroup(&self.cgroup_root, id)).map(|p| {
            let a = crate::host::workload::attribute(&self.cgroup_root, &p);
            (p, a)
        });
        if self.cgroups.len() > 4096 {
            self.cgroups.clear();
        }
        self.cgroups.insert(id, path.clone());
        path
    }
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

/// The path (relative to `root`, the cgroup2 mount) of the cgroup whose id is `id`.
fn find_cgroup(root: &Path, id: u64) -> Option<String> {
    match cgroup_by_handle(root, id) {
        Ok(found) => found,
        // No CAP_DAC_READ_SEARCH (a daemon run by hand without it): look for it.
        Err(_) => walk_for_cgroup(root, id),
    }
}

/// A cgroup2 directory's file handle is its id (kernfs, `FILEID_KERNFS`): `open_by_handle_at`
/// finds it at once, where a walk of a large tree took a quarter of a second per event. `Ok(None)`:
/// no such cgroup any more (`ESTALE`); `Err`: this way is not available.
fn cgroup_by_handle(root: &Path, id: u64) -> std::io::Result<Option<String>> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    const FILEID_KERNFS: i32 = 0xfe;
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        id: u64,
    }
    let dir = std::fs::File::open(root)?;
    let handle = Handle { bytes: 8, kind: FILEID_KERNFS, id };
    // SAFETY: open_by_handle_at(2) with a directory descriptor, a file_handle of 8 bytes of
    // f_handle, and flags; it returns a new descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            dir.as_raw_fd(),
            std::ptr::from_ref(&handle),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ESTALE) { Ok(None) } else { Err(e) };
    }
    // SAFETY: a descriptor the call above just opened, owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).map_err(|_| std::io::Error::other("fd"))?) };
    let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    // The path is the mount's; a cgroup outside `root` (another mount of the hierarchy) is not
    // named here.
    Ok(path.strip_prefix(root).ok().map(|rel| format!("/{}", rel.display())))
}

fn walk_for_cgroup(root: &Path, id: u64) -> Option<String> {
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

/// The text of a JSON string value as the kernel kept it (between its quotes, escapes as
/// written): decoded when it is a valid JSON string, else as it stands (invalid UTF-8 replaced).
fn json_string(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    serde_json::from_str::<String>(&format!("\"{text}\"")).unwrap_or_else(|_| text.into_owned())
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

    /// The process's own cgroup, found by its id (its directory's inode) the way events are.
    #[test]
    fn a_cgroup_is_found_by_its_id() {
        use std::os::unix::fs::MetadataExt as _;
        let Some(root) = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.procs").exists())
        else {
            return; // no cgroup2 mounted: nothing to find
        };
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let rel = own.lines().find_map(|l| l.strip_prefix("0::")).unwrap().to_owned();
        let id = std::fs::metadata(root.join(rel.trim_start_matches('/'))).unwrap().ino();
        let want = if rel == "/" { "/".to_owned() } else { rel.clone() };
        match cgroup_by_handle(&root, id) {
            Ok(found) => assert_eq!(found.as_deref(), Some(want.as_str())),
            // Without CAP_DAC_READ_SEARCH the handle cannot be opened; the walk is what is left.
            Err(e) => assert!(!nix::unistd::geteuid().is_root(), "{e}"),
        }
        assert_eq!(find_cgroup(&root, id).as_deref(), Some(want.as_str()));
        assert_eq!(cgroup_by_handle(&root, u64::MAX - 7).ok().flatten(), None, "no such cgroup");
    }

    fn decode(en: &mut Enricher, bytes: &[u8]) -> Option<Event> {
        Record::parse(bytes).map(|r| en.event(&r))
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
        let Some(Event::ConnectDenied(e)) = decode(&mut en, ev.as_bytes()) else { panic!("a connect event") };
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
        let Some(Event::ConnectDenied(e)) = decode(&mut en, ev.as_bytes()) else { panic!("a connect event") };
        assert_eq!(e.dst, "::ffff:169.254.169.254");
        assert!(!e.enforced);
        let json = serde_json::to_string(&Event::ConnectDenied(e).stamped()).unwrap();
        assert!(json.contains("\"event\":\"connect_denied\""), "{json}");
        assert!(decode(&mut en, &[9, 0, 0, 0]).is_none());
        assert!(decode(&mut en, &ev.as_bytes()[..20]).is_none());
    }
}
