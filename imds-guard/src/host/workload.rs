//! Workload identity on a Kubernetes (or plain systemd) node, from what the node itself exposes:
//! no cluster API, no token.
//!
//! - [`classify`] reads a cgroup v2 path (relative to the cgroup2 root, as `/proc/<pid>/cgroup`
//!   shows it) and says which systemd unit, container (id and runtime) and pod (uid) it belongs
//!   to. It understands both kubelet cgroup drivers and the common runtimes:
//!
//!   | layout | example |
//!   | --- | --- |
//!   | systemd driver, containerd | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<64hex>.scope` |
//!   | systemd driver, CRI-O | `/kubepods.slice/kubepods-pod<uid>.slice/crio-<64hex>.scope` (guaranteed QoS: no QoS slice) |
//!   | cgroupfs driver | `/kubepods/besteffort/pod<uid>/<64hex>` |
//!   | Docker (systemd / cgroupfs) | `/system.slice/docker-<64hex>.scope`, `/docker/<64hex>` |
//!   | Podman | `/machine.slice/libpod-<64hex>.scope` |
//!   | systemd unit | `/system.slice/kubelet.service`, `/user.slice/user-1000.slice/session-4.scope` |
//!
//! - [`attribute`] does the same for a cgroup of the live tree from trusted names only: the path
//!   down to where it is delegated to a user (a directory that user owns, like systemd's
//!   `user@1000.service`), whose names below are that user's choice, and names that user.
//!
//! - [`PodDirectory`] maps pod uids and container ids to namespace, pod name and container name
//!   ([`PodDirectory::identify`] does both for a classified path) from kubelet's log directories: `/var/log/pods/<namespace>_<name>_<uid>/<container>/` and the
//!   symlinks `/var/log/containers/<name>_<namespace>_<container>-<containerid>.log`. Both roots
//!   are parameters (tests make their own).
//!
//! Everything here is a pure function of its input (paths, or the directory listings it reads):
//! no daemon state, no caching. Policy resolution (`pod` and `namespace` keys) and event
//! attribution both build on it.

use std::{
    io,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// The default kubelet pod log directory.
pub const DEFAULT_POD_LOGS: &str = "/var/log/pods";
/// The default directory of kubelet's per-container log symlinks.
pub const DEFAULT_CONTAINER_LOGS: &str = "/var/log/containers";

/// The container runtime a container cgroup name points to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Containerd,
    CriO,
    Docker,
    Podman,
    /// A bare `<64hex>` directory (kubelet's cgroupfs driver, or Docker's): the name does not say.
    Unknown,
}

/// What a cgroup path says about the workload in it. Fields the path does not determine are `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Workload {
    /// The deepest systemd unit (`*.service` or `*.scope`) on the path that is not a container's
    /// scope, e.g. `kubelet.service`, `session-4.scope`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The container id (64 lowercase hex characters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
    /// The pod uid, with dashes (as the API and `/var/log/pods` spell it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The pod-level cgroup (a prefix of the path): it holds every container of the pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_cgroup: Option<String>,
}

/// Classifies a cgroup v2 path relative to the cgroup2 root (`/a/b`; a missing leading `/` and
/// trailing `/` are tolerated). Never fails: an unknown layout gives a `Workload` with nothing set.
///
/// Names count only where their makers put them: a pod directly in a kubepods root or in one of
/// its QoS directories (where kubelet makes pods), a bare container id directly in a pod or in
/// `/docker`, the first container on the path, and units above it. Every name is taken as given:
/// for a path of the live tree, where some names may be a delegated user's, use [`attribute`].
#[must_use]
pub fn classify(cgroup_rel_path: &str) -> Workload {
    let mut w = Workload::default();
    let parts: Vec<&str> = cgroup_rel_path.split('/').filter(|p| !p.is_empty()).collect();
    let mut pod_at = None;
    for (i, part) in parts.iter().enumerate() {
        if w.container_id.is_some() {
            // Nothing below a container is the host's to name.
            break;
        }
        if pod_at.is_none()
            && is_pod_parent_parts(&parts[..i])
            && let Some(uid) = pod_uid_of(part)
        {
            w.pod_uid = Some(uid);
            w.pod_cgroup = Some(format!("/{}", parts[..=i].join("/")));
            pod_at = Some(i);
            continue;
        }
        let bare_ok = pod_at.is_some_and(|p| p + 1 == i) || parent_is_docker(&parts[..i]);
        if let Some((runtime, id)) = container_of(part, bare_ok) {
            w.container_id = Some(id);
            w.runtime = Some(runtime);
            continue;
        }
        if pod_at.is_none()
            && (part.ends_with(".service") || part.ends_with(".scope"))
            && !is_runtime_helper(part)
        {
            w.unit = Some((*part).to_owned());
        }
    }
    w
}

/// What a cgroup of the live tree says about its workload, from the names that whoever owns the
/// tree above them chose: [`classify`] of the path down to where it is delegated, if it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attribution {
    pub workload: Workload,
    /// The uid the cgroup (or an ancestor) is delegated to: it may make and name cgroups there.
    pub delegated_to: Option<u32>,
}

/// Attributes the cgroup `rel` (relative to `cgroup_root`) from trusted positions only. Where a
/// directory on the path is owned by a user other than root (or this daemon) — systemd's
/// `Delegate=` (`user@1000.service`), a container manager's delegation — the names below it are
/// that user's choice: the path is classified down to that directory only, and the user is named
/// (`delegated_to`). The delegated directory's own name was chosen by its parent's (trusted)
/// owner, so it still names the unit or container (`user@1000.service`); but kubelet never
/// delegates a pod, so a delegated directory is never taken for one. A directory on the path that
/// is gone ends the attribution above it.
#[must_use]
pub fn attribute(cgroup_root: &Path, rel: &str) -> Attribution {
    match delegated_at(cgroup_root, rel) {
        None => Attribution { workload: classify(rel), delegated_to: None },
        Some((at, u32::MAX)) => {
            let parent = at.rsplit_once('/').map_or("", |(p, _)| p);
            Attribution { workload: classify(parent), delegated_to: None }
        }
        Some((at, uid)) => {
            let mut workload = classify(&at);
            if workload.pod_cgroup.as_deref() == Some(at.as_str()) {
                workload.pod_uid = None;
                workload.pod_cgroup = None;
            }
            Attribution { workload, delegated_to: Some(uid) }
        }
    }
}

/// Whether the cgroup path (relative to the cgroup2 root) is a directory kubelet creates pod
/// cgroups in: the kubepods root (`/kubepods.slice`, `/kubepods`) or a QoS class below it
/// (`kubepods-burstable.slice`, `burstable`, ...). Pod cgroups appear in these.
#[must_use]
pub fn is_pod_parent(cgroup_rel_path: &str) -> bool {
    let parts: Vec<&str> = cgroup_rel_path.split('/').filter(|p| !p.is_empty()).collect();
    is_pod_parent_parts(&parts)
}

fn is_pod_parent_parts(parts: &[&str]) -> bool {
    match parts {
        [.., last] if is_kubepods_root(last) => true,
        [.., parent, last] => is_kubepods_root(parent) && is_qos(last),
        _ => false,
    }
}

fn is_kubepods_root(name: &str) -> bool {
    matches!(name, "kubepods" | "kubepods.slice")
}

fn is_qos(name: &str) -> bool {
    matches!(name, "burstable" | "besteffort" | "kubepods-burstable.slice" | "kubepods-besteffort.slice")
}

/// The pod uid of a pod-level cgroup name: `pod<uid>` (cgroupfs) or
/// `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid_of(name: &str) -> Option<String> {
    let raw = if let Some(rest) = name.strip_prefix("pod") {
        rest
    } else {
        let rest = name.strip_prefix("kubepods-")?.strip_suffix(".slice")?;
        let rest =
            rest.strip_prefix("burstable-").or_else(|| rest.strip_prefix("besteffort-")).unwrap_or(rest);
        rest.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-");
    is_pod_uid(&uid).then_some(uid)
}

/// A pod uid: a UUID (`8-4-4-4-12` hex) as the API server assigns, or the 32 hex digits of a static
/// pod's config hash.
#[must_use]
pub fn is_pod_uid(s: &str) -> bool {
    let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
    let groups: Vec<&str> = s.split('-').collect();
    match groups.as_slice() {
        [a, b, c, d, e] => hex(a, 8) && hex(b, 4) && hex(c, 4) && hex(d, 4) && hex(e, 12),
        [one] => hex(one, 32),
        _ => false,
    }
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The container of a cgroup name. A bare `<64hex>` counts only under a pod or Docker's cgroupfs
/// root (`bare_ok`), where runtimes put them.
#[must_use]
pub fn container_of(name: &str, bare_ok: bool) -> Option<(Runtime, String)> {
    const PREFIXED: [(&str, Runtime); 5] = [
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("docker-", Runtime::Docker),
        ("libpod-", Runtime::Podman),
        ("containerd-", Runtime::Containerd),
    ];
    let base = name.strip_suffix(".scope").unwrap_or(name);
    for (prefix, runtime) in PREFIXED {
        if let Some(id) = base.strip_prefix(prefix)
            && is_container_id(id)
        {
            return Some((runtime, id.to_owned()));
        }
    }
    (bare_ok && is_container_id(name)).then(|| (Runtime::Unknown, name.to_owned()))
}

/// CRI-O's `crio-conmon-<id>.scope` and podman's `libpod-conmon-<id>.scope` hold the runtime's
/// monitor process, not the container or a unit of the host's own.
fn is_runtime_helper(name: &str) -> bool {
    name.starts_with("crio-conmon-") || name.starts_with("libpod-conmon-")
}

fn parent_is_docker(parents: &[&str]) -> bool {
    parents.last().is_some_and(|p| *p == "docker")
}

/// A pod as kubelet's log directory names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// A container of a pod, with its runtime id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerRef {
    pub pod: PodRef,
    /// The container's name in the pod spec.
    pub name: String,
    pub id: String,
}

impl PodRef {
    /// Parses a `/var/log/pods` entry: `<namespace>_<name>_<uid>`. Namespaces and pod names
    /// cannot contain `_`, so the split is unambiguous.
    #[must_use]
    pub fn from_log_dir_name(dir: &str) -> Option<Self> {
        let mut it = dir.split('_');
        let (ns, name, uid) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() || ns.is_empty() || name.is_empty() || !is_pod_uid(uid) {
            return None;
        }
        Some(PodRef { namespace: ns.to_owned(), name: name.to_owned(), uid: uid.to_owned() })
    }
}

/// Parses a `/var/log/containers` entry, `<pod>_<namespace>_<container>-<64hex>.log`, into
/// (pod name, namespace, container name, container id).
#[must_use]
pub fn parse_container_log_name(file: &str) -> Option<(String, String, String, String)> {
    let stem = file.strip_suffix(".log")?;
    let (rest, id) = stem.rsplit_once('-')?;
    if !is_container_id(id) {
        return None;
    }
    let mut it = rest.split('_');
    let (pod, ns, container) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || pod.is_empty() || ns.is_empty() || container.is_empty() {
        return None;
    }
    Some((pod.to_owned(), ns.to_owned(), container.to_owned(), id.to_owned()))
}

/// Kubelet's log directories, read on each call (nothing cached: a pod created a moment ago is
/// found).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodDirectory {
    /// `/var/log/pods` or a test's stand-in.
    pub pod_logs: PathBuf,
    /// `/var/log/containers` or a test's stand-in.
    pub container_logs: PathBuf,
}

impl Default for PodDirectory {
    fn default() -> Self {
        PodDirectory {
            pod_logs: PathBuf::from(DEFAULT_POD_LOGS),
            container_logs: PathBuf::from(DEFAULT_CONTAINER_LOGS),
        }
    }
}

impl PodDirectory {
    #[must_use]
    pub fn new(pod_logs: impl Into<PathBuf>, container_logs: impl Into<PathBuf>) -> Self {
        PodDirectory { pod_logs: pod_logs.into(), container_logs: container_logs.into() }
    }

    /// Every pod with a log directory, sorted. A missing pod log directory means no pods (a node
    /// without kubelet); other read errors are returned.
    pub fn pods(&self) -> io::Result<Vec<PodRef>> {
        let entries = match std::fs::read_dir(&self.pod_logs) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut pods: Vec<PodRef> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| PodRef::from_log_dir_name(e.file_name().to_str()?))
            .collect();
        pods.sort();
        Ok(pods)
    }

    /// The pod with this uid (dashed form), if kubelet has a log directory for it.
    #[must_use]
    pub fn pod_by_uid(&self, uid: &str) -> Option<PodRef> {
        self.pods().ok()?.into_iter().find(|p| p.uid == uid)
    }

    /// The container names of a pod (the subdirectories of its log directory).
    pub fn container_names(&self, pod: &PodRef) -> io::Result<Vec<String>> {
        let dir = self.pod_logs.join(format!("{}_{}_{}", pod.namespace, pod.name, pod.uid));
        let mut names: Vec<String> = std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Every container with a log symlink. The pod uid comes from the symlink's target
    /// (`<pod_logs>/<namespace>_<name>_<uid>/<container>/<n>.log`); a link whose target does not
    /// say is skipped. A missing directory means no containers.
    pub fn containers(&self) -> io::Result<Vec<ContainerRef>> {
        let entries = match std::fs::read_dir(&self.container_logs) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(entries
            .filter_map(Result::ok)
            .filter_map(|e| container_from_link(&e.file_name().into_string().ok()?, &e.path()))
            .collect())
    }

    /// The container with this id (64 hex), from its log symlink.
    #[must_use]
    pub fn container_by_id(&self, id: &str) -> Option<ContainerRef> {
        if !is_container_id(id) {
            return None;
        }
        let entries = std::fs::read_dir(&self.container_logs).ok()?;
        let suffix = format!("-{id}.log");
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok().map(|n| (n, e.path())))
            .filter(|(n, _)| n.ends_with(&suffix))
            .find_map(|(n, p)| container_from_link(&n, &p))
    }
}

/// The pod (and container) a process belongs to, as far as the node can tell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodIdentity {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    /// The container's name, when the cgroup is a container's and kubelet has its log link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

impl PodDirectory {
    /// Names the pod (and container) of a classified cgroup path, e.g. for an event:
    /// `dir.identify(&classify(&event.cgroup))`. `None` for a process outside pods, or a pod
    /// kubelet has no log directory for (already gone).
    #[must_use]
    pub fn identify(&self, w: &Workload) -> Option<PodIdentity> {
        let pod = self.pod_by_uid(w.pod_uid.as_deref()?)?;
        let container = w
            .container_id
            .as_deref()
            .and_then(|id| self.container_by_id(id))
            .filter(|c| c.pod.uid == pod.uid)
            .map(|c| c.name);
        Some(PodIdentity { namespace: pod.namespace, pod: pod.name, pod_uid: pod.uid, container })
    }
}

fn container_from_link(file: &str, link: &Path) -> Option<ContainerRef> {
    let (pod, ns, container, id) = parse_container_log_name(file)?;
    let target = std::fs::read_link(link).ok()?;
    // .../<namespace>_<name>_<uid>/<container>/<n>.log
    let pod_dir = target.parent()?.parent()?.file_name()?.to_str()?;
    let pod_ref = PodRef::from_log_dir_name(pod_dir)?;
    if pod_ref.namespace != ns || pod_ref.name != pod {
        return None;
    }
    Some(ContainerRef { pod: pod_ref, name: container, id })
}

/// A pod selector of the policy: a namespace, and optionally a pod name prefix and container name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodSelector {
    pub namespace: String,
    /// Pods whose name starts with this (`""`: every pod of the namespace).
    pub name_prefix: String,
    /// Only this container of the selected pods (`None`: the whole pod).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

impl PodSelector {
    #[must_use]
    pub fn matches(&self, pod: &PodRef) -> bool {
        pod.namespace == self.namespace && pod.name.starts_with(&self.name_prefix)
    }
}

/// Pod cgroups found under a part of the cgroup tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodCgroups {
    /// (pod uid, pod cgroup path relative to the cgroup2 root), sorted.
    pub pods: Vec<(String, String)>,
    /// Directories (absolute) in which new pod cgroups appear: the kubepods roots and QoS
    /// directories found. Watching them sees a pod start.
    pub parents: Vec<PathBuf>,
}

impl PodCgroups {
    /// The pod cgroup of a pod uid.
    #[must_use]
    pub fn of(&self, uid: &str) -> Option<&str> {
        self.pods.iter().find(|(u, _)| u == uid).map(|(_, p)| p.as_str())
    }
}

/// Where kubelet puts pods when its `cgroupRoot` is `/` (the default, and EKS's): `kubepods.slice`
/// with the systemd cgroup driver, `kubepods` with cgroupfs. Another cgroup root is configured
/// with `[kubernetes] pod_cgroups`.
pub const DEFAULT_POD_CGROUPS: [&str; 2] = ["/kubepods.slice", "/kubepods"];

/// Whether a cgroup directory's owner may have made it: root, or this daemon's own user. Any
/// other owner means the directory (or a tree below it) is delegated to that user, who can name
/// what it creates there after any pod, container or unit.
#[must_use]
pub fn trusted_owner(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// The first directory on the way from the cgroup2 root down to `rel` (inclusive) whose owner is
/// not [trusted](trusted_owner), with that owner: `Some((path, uid))` means everything at and
/// below `path` is delegated to `uid`. The root itself is the caller's to trust.
#[must_use]
pub fn delegated_at(cgroup_root: &Path, rel: &str) -> Option<(String, u32)> {
    use std::os::unix::fs::MetadataExt as _;
    let mut dir = cgroup_root.to_owned();
    let mut path = String::new();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        dir.push(part);
        path.push('/');
        path.push_str(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(md) if !trusted_owner(md.uid()) => return Some((path, md.uid())),
            Ok(_) => {}
            // Gone meanwhile: nothing to take from it.
            Err(_) => return Some((path, u32::MAX)),
        }
    }
    None
}

/// Finds the pod cgroups kubelet made below `start`, one of its pod roots (a path relative to
/// `cgroup_root`, e.g. `/kubepods.slice`): pods directly in it (guaranteed QoS) and in its QoS
/// directories (`burstable`, `kubepods-besteffort.slice`, ...), where kubelet puts them, and
/// nowhere else: nothing is searched in other parts of the tree, nor deeper, and a directory
/// whose owner (or an ancestor's) is not [trusted](trusted_owner) is skipped, so that a user with
/// a delegated cgroup cannot make a directory that a pod rule takes for a pod.
#[must_use]
pub fn find_pod_cgroups(cgroup_root: &Path, start: &str) -> PodCgroups {
    let mut found = PodCgroups::default();
    let start = format!("/{}", start.trim_matches('/'));
    if start == "/" || delegated_at(cgroup_root, &start).is_some() {
        return found;
    }
    let mut stack = vec![(start, true)];
    while let Some((rel, is_root)) = stack.pop() {
        let dir = cgroup_root.join(rel.trim_start_matches('/'));
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        found.parents.push(dir);
        for e in rd.filter_map(Result::ok) {
            use std::os::unix::fs::MetadataExt as _;
            let Ok(md) = e.metadata() else { continue };
            if !md.is_dir() || !trusted_owner(md.uid()) {
                continue;
            }
            let Some(name) = e.file_name().into_string().ok() else { continue };
            let child = format!("{rel}/{name}");
            if let Some(uid) = pod_uid_of(&name) {
                found.pods.push((uid, child));
            } else if is_root && is_qos(&name) {
                stack.push((child, false));
            }
        }
    }
    found.pods.sort();
    found.parents.sort();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0f6c2b4e-8d1a-4e3b-9c5d-7a8b9c0d1e2f";
    const UID_US: &str = "0f6c2b4e_8d1a_4e3b_9c5d_7a8b9c0d1e2f";
    const CID: &str = "4c5f1e3b2a1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b";

    #[test]
    fn systemd_driver_containerd_burstable() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{CID}.scope"
        );
        let w = classify(&p);
        assert_eq!(w.pod_uid.as_deref(), Some(UID));
        assert_eq!(w.container_id.as_deref(), Some(CID));
        assert_eq!(w.runtime, Some(Runtime::Containerd));
        assert_eq!(
            w.pod_cgroup.as_deref(),
            Some(
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice")
                    .as_str()
            )
        );
        assert_eq!(w.unit, None, "a container's scope is not reported as a unit");
    }

    #[test]
    fn systemd_driver_guaranteed_and_besteffort_crio() {
        let w = classify(&format!("/kubepods.slice/kubepods-pod{UID_US}.slice/crio-{CID}.scope"));
        assert_eq!((w.pod_uid.as_deref(), w.runtime), (Some(UID), Some(Runtime::CriO)));
        let w = classify(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice/crio-conmon-{CID}.scope"
        ));
        assert_eq!(w.pod_uid.as_deref(), Some(UID));
        assert_eq!((w.container_id, w.unit), (None, None), "conmon is neither the container nor a unit");
        // The pod cgroup itself: a pod, no container.
        let w = classify(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice"
        ));
        assert_eq!((w.pod_uid.as_deref(), w.container_id), (Some(UID), None));
    }

    #[test]
    fn cgroupfs_driver() {
        let w = classify(&format!("/kubepods/besteffort/pod{UID}/{CID}"));
        assert_eq!(w.pod_uid.as_deref(), Some(UID));
        assert_eq!((w.container_id.as_deref(), w.runtime), (Some(CID), Some(Runtime::Unknown)));
        assert_eq!(w.pod_cgroup.as_deref(), Some(format!("/kubepods/besteffort/pod{UID}").as_str()));
        let w = classify(&format!("/kubepods/pod{UID}/{CID}/"));
        assert_eq!(w.pod_uid.as_deref(), Some(UID), "guaranteed: no QoS directory");
        // A static pod's uid is a 32-hex hash.
        let w = classify("/kubepods/burstable/pod6e0c1a5d2c4b3a29180f7e6d5c4b3a21/");
        assert_eq!(w.pod_uid.as_deref(), Some("6e0c1a5d2c4b3a29180f7e6d5c4b3a21"));
    }

    #[test]
    fn nested_below_another_root() {
        // kubelet --cgroup-root, or a test sandbox: the layout below counts, not the depth.
        let w = classify(&format!(
            "/imdsg-1-0/kubepods.slice/kubepods-pod{UID_US}.slice/cri-containerd-{CID}.scope"
        ));
        assert_eq!((w.pod_uid.as_deref(), w.container_id.as_deref()), (Some(UID), Some(CID)));
        assert_eq!(
            w.pod_cgroup.as_deref(),
            Some(format!("/imdsg-1-0/kubepods.slice/kubepods-pod{UID_US}.slice").as_str())
        );
    }

    #[test]
    fn docker_podman_and_units() {
        let w = classify(&format!("/system.slice/docker-{CID}.scope"));
        assert_eq!((w.container_id.as_deref(), w.runtime, w.unit), (Some(CID), Some(Runtime::Docker), None));
        assert_eq!(w.pod_uid, None);
        let w = classify(&format!("/docker/{CID}"));
        assert_eq!((w.container_id.as_deref(), w.runtime), (Some(CID), Some(Runtime::Unknown)));
        let w = classify(&format!("/machine.slice/libpod-{CID}.scope/container"));
        assert_eq!(w.runtime, Some(Runtime::Podman));
        let w = classify("/system.slice/kubelet.service");
        assert_eq!(w, Workload { unit: Some("kubelet.service".into()), ..Workload::default() });
        let w = classify("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service");
        assert_eq!(w.unit.as_deref(), Some("foo.service"), "the deepest unit");
        assert_eq!(
            classify("/user.slice/user-1000.slice/session-4.scope").unit.as_deref(),
            Some("session-4.scope")
        );
    }

    #[test]
    fn things_that_are_not_pods_or_containers() {
        assert_eq!(classify("/"), Workload::default());
        assert_eq!(classify(""), Workload::default());
        assert_eq!(classify("/system.slice"), Workload::default());
        // "pod..." outside kubepods is just a name.
        assert_eq!(classify(&format!("/system.slice/pod{UID}")).pod_uid, None);
        // A bare 64-hex directory outside a pod or /docker is not taken for a container.
        assert_eq!(classify(&format!("/system.slice/{CID}")).container_id, None);
        // Malformed uids and ids.
        assert_eq!(classify("/kubepods/besteffort/pod1234").pod_uid, None);
        assert_eq!(
            classify(&format!("/kubepods/pod{UID}/cri-containerd-{}.scope", &CID[..63])).container_id,
            None
        );
        assert_eq!(
            classify(&format!("/kubepods/pod{UID}/cri-containerd-{}.scope", CID.to_uppercase())).container_id,
            None
        );
    }

    #[test]
    fn pod_parents() {
        for p in [
            "/kubepods.slice",
            "/kubepods",
            "/kubepods.slice/kubepods-burstable.slice",
            "/kubepods/besteffort",
            "/x/kubepods.slice/kubepods-besteffort.slice",
        ] {
            assert!(is_pod_parent(p), "{p}");
        }
        for p in ["/", "/system.slice", "/burstable", "/kubepods/pod1", "/other/burstable"] {
            assert!(!is_pod_parent(p), "{p}");
        }
    }

    #[test]
    fn log_names() {
        assert_eq!(
            PodRef::from_log_dir_name(&format!("kube-system_aws-node-7xk2p_{UID}")),
            Some(PodRef { namespace: "kube-system".into(), name: "aws-node-7xk2p".into(), uid: UID.into() })
        );
        assert_eq!(PodRef::from_log_dir_name("kube-system_aws-node"), None);
        assert_eq!(PodRef::from_log_dir_name(&format!("a_b_c_{UID}")), None);
        assert_eq!(PodRef::from_log_dir_name("a_b_not-a-uid"), None);
        assert_eq!(
            parse_container_log_name(&format!("aws-node-7xk2p_kube-system_aws-vpc-cni-init-{CID}.log")),
            Some(("aws-node-7xk2p".into(), "kube-system".into(), "aws-vpc-cni-init".into(), CID.into()))
        );
        assert_eq!(parse_container_log_name(&format!("p_ns_c-{CID}")), None, "no .log");
        assert_eq!(parse_container_log_name("p_ns_c-1234.log"), None);
        assert_eq!(parse_container_log_name(&format!("p_c-{CID}.log")), None);
    }

    #[test]
    fn pod_directory_reads_kubelet_layout() {
        let root = std::env::temp_dir().join(format!("imdsg-workload-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = PodDirectory::new(root.join("pods"), root.join("containers"));
        assert_eq!(dir.pods().unwrap(), [], "no kubelet: no pods");
        let pod_dir = root.join(format!("pods/kube-system_aws-node-7xk2p_{UID}"));
        std::fs::create_dir_all(pod_dir.join("aws-node")).unwrap();
        std::fs::create_dir_all(pod_dir.join("aws-eks-nodeagent")).unwrap();
        std::fs::create_dir_all(root.join("pods/not-a-pod")).unwrap();
        std::fs::create_dir_all(root.join("containers")).unwrap();
        std::os::unix::fs::symlink(
            pod_dir.join("aws-node/0.log"),
            root.join(format!("containers/aws-node-7xk2p_kube-system_aws-node-{CID}.log")),
        )
        .unwrap();
        // A link whose target disagrees with its name is not trusted.
        let other = "1".repeat(64);
        std::os::unix::fs::symlink(
            pod_dir.join("aws-node/1.log"),
            root.join(format!("containers/evil_default_aws-node-{other}.log")),
        )
        .unwrap();

        let pods = dir.pods().unwrap();
        assert_eq!(pods.len(), 1);
        assert_eq!(dir.pod_by_uid(UID).unwrap().name, "aws-node-7xk2p");
        assert_eq!(dir.pod_by_uid("00000000-0000-0000-0000-000000000000"), None);
        assert_eq!(dir.container_names(&pods[0]).unwrap(), ["aws-eks-nodeagent", "aws-node"]);
        let c = dir.container_by_id(CID).unwrap();
        assert_eq!((c.name.as_str(), c.pod.uid.as_str()), ("aws-node", UID));
        assert_eq!(dir.container_by_id(&other), None);
        assert_eq!(dir.containers().unwrap().len(), 1);
        let cg = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{CID}.scope"
        );
        assert_eq!(
            dir.identify(&classify(&cg)),
            Some(PodIdentity {
                namespace: "kube-system".into(),
                pod: "aws-node-7xk2p".into(),
                pod_uid: UID.into(),
                container: Some("aws-node".into())
            })
        );
        let pod_only = dir.identify(&classify(&format!("/kubepods/pod{UID}"))).unwrap();
        assert_eq!((pod_only.pod.as_str(), pod_only.container), ("aws-node-7xk2p", None));
        assert_eq!(dir.identify(&classify("/system.slice/kubelet.service")), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn finds_pod_cgroups_and_their_parents() {
        let root = std::env::temp_dir().join(format!("imdsg-podcg-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let uid2 = "11111111-2222-3333-4444-555555555555";
        for d in [
            format!(
                "sb/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{CID}.scope"
            ),
            "sb/kubepods.slice/kubepods-besteffort.slice".to_owned(),
            format!("sb/kubepods.slice/kubepods-pod{}.slice", uid2.replace('-', "_")),
            // Not where kubelet puts pods: below a pod, below a unit, deeper than a QoS class.
            format!("sb/kubepods.slice/kubepods-pod{}.slice/kubepods/pod{UID}", uid2.replace('-', "_")),
            format!("sb/kubepods.slice/kubepods-besteffort.slice/x/pod{UID}"),
            format!("lxc.payload.evil/kubepods/pod{UID}"),
            "system.slice/kubelet.service/deep".to_owned(),
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let found = find_pod_cgroups(&root, "/sb/kubepods.slice");
        assert_eq!(found.pods.len(), 2, "{found:?}");
        assert_eq!(
            found.of(UID),
            Some(
                format!("/sb/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice")
                    .as_str()
            )
        );
        assert_eq!(
            found.of(uid2),
            Some(format!("/sb/kubepods.slice/kubepods-pod{}.slice", uid2.replace('-', "_")).as_str())
        );
        assert_eq!(
            found.parents,
            [
                root.join("sb/kubepods.slice"),
                root.join("sb/kubepods.slice/kubepods-besteffort.slice"),
                root.join("sb/kubepods.slice/kubepods-burstable.slice"),
            ]
        );
        assert_eq!(find_pod_cgroups(&root, "/"), PodCgroups::default(), "never the whole tree");
        assert_eq!(find_pod_cgroups(&root, "/system.slice").pods, [], "units are not pods");
        assert_eq!(find_pod_cgroups(&root, "/lxc.payload.evil/kubepods").pods.len(), 1, "if configured");
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// Issue 17, item 2: names are taken from their positions. A `pod<uid>` that is not directly
    /// in a kubepods root or QoS directory is no pod, and nothing below a container names one.
    #[test]
    fn pods_and_containers_only_where_kubelet_and_runtimes_put_them() {
        assert_eq!(classify(&format!("/kubepods/besteffort/x/pod{UID}")).pod_uid, None);
        assert_eq!(classify(&format!("/kubepods/burstable/pod{UID}/x/{CID}")).container_id, None);
        let w = classify(&format!("/system.slice/docker-{CID}.scope/kubepods/pod{UID}/x.service"));
        assert_eq!((w.container_id.as_deref(), w.pod_uid, w.unit), (Some(CID), None, None));
        let w = classify(&format!("/kubepods/pod{UID}/cri-containerd-{CID}.scope/kubelet.service"));
        assert_eq!((w.pod_uid.as_deref(), w.unit), (Some(UID), None), "no unit inside a pod");
    }

    /// Issue 17, item 2, as uid 1000 did it: below its delegated `user@1000.service`, a
    /// `kubelet.service` and a copy of the aws-node pod's cgroups. Attribution stops at the
    /// delegation: the unit is the user's manager, no pod, and the uid it is delegated to is named.
    /// (Needs root to chown.)
    #[test]
    fn a_delegated_subtree_is_attributed_to_its_delegation() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: chown needs root");
            return;
        }
        let root = std::env::temp_dir().join(format!("imdsg-attr-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let manager = "user.slice/user-1000.slice/user@1000.service";
        let fake_kubelet = format!("/{manager}/app.slice/kubelet.service");
        let fake_pod = format!(
            "/{manager}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{CID}.scope"
        );
        let real_pod = format!("/kubepods/besteffort/pod{UID}/{CID}");
        let delegated_pod = format!("/kubepods/besteffort/pod{}", "1".repeat(32));
        for d in [&fake_kubelet, &fake_pod, &real_pod, &delegated_pod] {
            std::fs::create_dir_all(root.join(d.trim_start_matches('/'))).unwrap();
        }
        std::os::unix::fs::chown(root.join(manager), Some(1000), Some(1000)).unwrap();
        std::os::unix::fs::chown(root.join(&delegated_pod[1..]), Some(1000), Some(1000)).unwrap();

        let a = attribute(&root, &fake_kubelet);
        assert_eq!(a.delegated_to, Some(1000));
        assert_eq!(a.workload, Workload { unit: Some("user@1000.service".into()), ..Workload::default() });
        let a = attribute(&root, &fake_pod);
        assert_eq!((a.workload.pod_uid, a.workload.container_id), (None, None), "no pod below a delegation");
        assert_eq!((a.workload.unit.as_deref(), a.delegated_to), (Some("user@1000.service"), Some(1000)));
        let a = attribute(&root, &real_pod);
        assert_eq!((a.workload.pod_uid.as_deref(), a.delegated_to), (Some(UID), None), "kubelet's own");
        assert_eq!(a.workload.container_id.as_deref(), Some(CID));
        let a = attribute(&root, &format!("{delegated_pod}/{CID}"));
        assert_eq!((a.workload.pod_uid, a.workload.container_id, a.delegated_to), (None, None, Some(1000)));
        let a = attribute(&root, &format!("/{manager}/gone/kubelet.service"));
        assert_eq!((a.workload.unit.as_deref(), a.delegated_to), (Some("user@1000.service"), Some(1000)));
        let a = attribute(&root, "/system.slice/gone.service/x");
        assert_eq!(a, Attribution::default(), "nothing from a directory that is not there");
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A pod root, QoS directory or pod directory owned by another user is delegated to it: none
    /// of it is taken for a pod. (Needs root to chown.)
    #[test]
    fn delegated_directories_are_not_pods() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: chown needs root");
            return;
        }
        let root = std::env::temp_dir().join(format!("imdsg-podcg-deleg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let uid2 = "11111111-2222-3333-4444-555555555555";
        let own = format!("kubepods/besteffort/pod{UID}");
        let theirs = format!("kubepods/besteffort/pod{uid2}");
        for d in [&own, &theirs] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::os::unix::fs::chown(root.join(&theirs), Some(1000), Some(1000)).unwrap();
        let found = find_pod_cgroups(&root, "/kubepods");
        assert_eq!(found.pods, [(UID.to_owned(), format!("/{own}"))]);
        assert_eq!(delegated_at(&root, &format!("/{theirs}/c")), Some((format!("/{theirs}"), 1000)));
        assert_eq!(delegated_at(&root, &format!("/{own}")), None);
        std::os::unix::fs::chown(root.join("kubepods/besteffort"), Some(1000), Some(1000)).unwrap();
        assert_eq!(find_pod_cgroups(&root, "/kubepods").pods, [], "the QoS directory is delegated");
        std::os::unix::fs::chown(root.join("kubepods"), Some(1000), Some(1000)).unwrap();
        assert_eq!(find_pod_cgroups(&root, "/kubepods"), PodCgroups::default());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
