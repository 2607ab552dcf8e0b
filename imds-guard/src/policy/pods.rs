//! Kubernetes-shaped allow rules: `pod = "<namespace>/<name prefix>"`, `namespace = "..."` and
//! `container = "..."` become the cgroups of the pods (or containers) they select on this node,
//! found through kubelet's log directories and the kubepods cgroup tree
//! ([`crate::host::workload`]). A pod's cgroup holds all of its containers, whatever its network
//! (hostNetwork pods included), so the kernel's cgroup rule keys do the matching. The selection is
//! re-resolved whenever a pod appears or goes (the directories in [`Node::watch`]), like any other
//! `cgroup` rule.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use serde::Serialize;
use toml::Spanned;

use crate::{
    host::identity::{CgroupRef, resolve_cgroup},
    host::workload::{
        ContainerRef, DEFAULT_CONTAINER_LOGS, DEFAULT_POD_CGROUPS, DEFAULT_POD_LOGS, PodDirectory, PodRef,
        PodSelector, container_of, find_pod_cgroups, trusted_owner,
    },
    policy::{
        schema::KubernetesTable,
        source::{ConfigError, Source},
    },
};

/// Where this node keeps what pod rules are resolved from (`[kubernetes]` in the policy file).
#[derive(Clone, Debug)]
pub struct KubeConfig {
    pub dir: PodDirectory,
    /// Kubelet's pod cgroup roots (relative to the cgroup2 root): pods are taken from these and
    /// their QoS directories only; default [`DEFAULT_POD_CGROUPS`].
    pub pod_cgroups: Vec<String>,
}

impl KubeConfig {
    pub fn from_table(
        source: &Source,
        table: Option<&Spanned<KubernetesTable>>,
    ) -> Result<Self, ConfigError> {
        let t = table.map(Spanned::get_ref);
        let abs =
            |v: Option<&Spanned<String>>, default: &str| -> Result<PathBuf, ConfigError> {
                match v {
                    None => Ok(PathBuf::from(default)),
                    Some(s) if s.get_ref().starts_with('/') => Ok(PathBuf::from(s.get_ref())),
                    Some(s) => Err(source
                        .error_at(Some(s.span()), format!("`{}` must be an absolute path", s.get_ref()))),
                }
            };
        let pod_logs = abs(t.and_then(|t| t.pod_logs.as_ref()), DEFAULT_POD_LOGS)?;
        let container_logs = abs(t.and_then(|t| t.container_logs.as_ref()), DEFAULT_CONTAINER_LOGS)?;
        let mut pod_cgroups = Vec::new();
        match t.and_then(|t| t.pod_cgroups.as_ref()) {
            None => pod_cgroups.extend(DEFAULT_POD_CGROUPS.map(str::to_owned)),
            Some(list) => {
                if list.get_ref().is_empty() {
                    return Err(source.error_at(
                        Some(list.span()),
                        "`pod_cgroups` is empty: list the cgroups kubelet puts pods in (e.g. \"/kubepods.slice\"), \
                         or leave it out for kubelet's defaults (/kubepods.slice, /kubepods)",
                    ));
                }
                for p in list.get_ref() {
                    let v = p.get_ref();
                    if !v.starts_with('/')
                        || v.trim_matches('/').is_empty()
                        || v.split('/').any(|c| c == "." || c == "..")
                    {
                        return Err(source.error_at(
                            Some(p.span()),
                            format!(
                                "pod cgroup `{v}` must be kubelet's pod cgroup root: a cgroup path starting with `/` (relative to the cgroup2 root), not `/` itself, without `.` or `..`"
                            ),
                        ));
                    }
                    pod_cgroups.push(v.clone());
                }
            }
        }
        Ok(KubeConfig { dir: PodDirectory::new(pod_logs, container_logs), pod_cgroups })
    }
}

/// Checks a `pod` value, `<namespace>/<pod name prefix>`, and splits it.
pub fn parse_pod(v: &str) -> Result<(String, String), String> {
    let Some((ns, prefix)) = v.split_once('/') else {
        return Err(format!(
            "pod `{v}` must be `<namespace>/<pod name prefix>`, e.g. \"kube-system/aws-node-\""
        ));
    };
    check_namespace(ns).map_err(|e| format!("pod `{v}`: {e}"))?;
    if prefix.is_empty() {
        return Err(format!(
            "pod `{v}` has an empty name prefix, which selects every pod of the namespace: write namespace = \"{ns}\" for that"
        ));
    }
    if prefix.len() > 253
        || !prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(format!(
            "pod `{v}`: `{prefix}` cannot begin a pod name (lowercase letters, digits, `-` and `.` only)"
        ));
    }
    Ok((ns.to_owned(), prefix.to_owned()))
}

/// A namespace name: an RFC 1123 label.
pub fn check_namespace(ns: &str) -> Result<(), String> {
    let ok = !ns.is_empty()
        && ns.len() <= 63
        && ns.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !ns.starts_with('-')
        && !ns.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("`{ns}` is not a namespace name (lowercase letters, digits and `-`, at most 63)"))
    }
}

/// A container name: an RFC 1123 label.
pub fn check_container(name: &str) -> Result<(), String> {
    check_namespace(name).map_err(|_| {
        format!("`{name}` is not a container name (lowercase letters, digits and `-`, at most 63)")
    })
}

/// One cgroup a pod rule resolved to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodMatch {
    pub pod: PodRef,
    /// With a `container` key: that container's id (the cgroup is the container's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    pub cgroup: CgroupRef,
}

/// What this node runs now: the pods kubelet knows, their cgroups, and (when a rule names a
/// container) the containers. Read once per policy resolution.
pub struct Node {
    pods: Vec<PodRef>,
    cgroups: Vec<(String, String)>,
    containers: Vec<ContainerRef>,
    /// Directories whose change can change what pod rules resolve to.
    pub watch: BTreeSet<PathBuf>,
}

impl Node {
    pub fn read(cfg: &KubeConfig, cgroup_root: &Path, need_containers: bool) -> Result<Self, String> {
        let pods = cfg
            .dir
            .pods()
            .map_err(|e| format!("cannot read the pod log directory {}: {e}", cfg.dir.pod_logs.display()))?;
        let containers = if need_containers {
            cfg.dir.containers().map_err(|e| {
                format!("cannot read the container log directory {}: {e}", cfg.dir.container_logs.display())
            })?
        } else {
            Vec::new()
        };
        let mut watch = BTreeSet::new();
        watch.insert(existing(&cfg.dir.pod_logs));
        if need_containers {
            watch.insert(existing(&cfg.dir.container_logs));
        }
        let mut cgroups = Vec::new();
        for start in &cfg.pod_cgroups {
            let found = find_pod_cgroups(cgroup_root, start);
            cgroups.extend(found.pods);
            watch.extend(found.parents);
            // A configured place that does not exist yet (kubelet not started): see it appear.
            watch.insert(crate::host::identity::existing_ancestor(cgroup_root, start));
        }
        cgroups.sort();
        cgroups.dedup();
        Ok(Node { pods, cgroups, containers, watch })
    }

    /// The cgroups of the pods (or containers) `sel` selects that exist now, sorted by pod.
    /// Adds the pod cgroups of a container selector to `watch` (its containers' cgroups appear there).
    pub fn resolve(&mut self, sel: &PodSelector, cgroup_root: &Path) -> Vec<PodMatch> {
        let mut out = Vec::new();
        for pod in self.pods.iter().filter(|p| sel.matches(p)) {
            let Some((_, pod_cg)) = self.cgroups.iter().find(|(uid, _)| *uid == pod.uid) else {
                continue;
            };
            match &sel.container {
                None => {
                    if let Ok(cg @ CgroupRef { id: Some(_), .. }) = resolve_cgroup(cgroup_root, pod_cg) {
                        out.push(PodMatch { pod: pod.clone(), container_id: None, cgroup: cg });
                    }
                }
                Some(name) => {
                    self.watch.insert(cgroup_root.join(pod_cg.trim_start_matches('/')));
                    for c in self.containers.iter().filter(|c| c.pod.uid == pod.uid && c.name == *name) {
                        if let Some(cg) = container_cgroup(cgroup_root, pod_cg, &c.id) {
                            out.push(PodMatch {
                                pod: pod.clone(),
                                container_id: Some(c.id.clone()),
                                cgroup: cg,
                            });
                        }
                    }
                }
            }
        }
        out
    }
}

/// The cgroup of container `id` directly below the pod cgroup `pod_cg`.
fn container_cgroup(cgroup_root: &Path, pod_cg: &str, id: &str) -> Option<CgroupRef> {
    use std::os::unix::fs::MetadataExt as _;
    let dir = cgroup_root.join(pod_cg.trim_start_matches('/'));
    std::fs::read_dir(dir).ok()?.filter_map(Result::ok).find_map(|e| {
        let name = e.file_name().into_string().ok()?;
        // Below a pod cgroup (a bare id counts: kubelet's cgroupfs driver), made by the runtime.
        let (_, found) = container_of(&name, true)?;
        let owner = e.metadata().ok()?.uid();
        (found == id && trusted_owner(owner))
            .then(|| resolve_cgroup(cgroup_root, &format!("{pod_cg}/{name}")).ok())
            .flatten()
            .filter(|c| c.id.is_some())
    })
}

/// `path`, or its deepest existing ancestor.
fn existing(path: &Path) -> PathBuf {
    let mut p = path.to_owned();
    while !p.is_dir() && p.pop() {}
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_values() {
        assert_eq!(parse_pod("kube-system/aws-node-").unwrap(), ("kube-system".into(), "aws-node-".into()));
        assert!(parse_pod("aws-node").unwrap_err().contains("<namespace>/<pod name prefix>"));
        assert!(parse_pod("kube-system/").unwrap_err().contains("namespace = \"kube-system\""));
        assert!(parse_pod("Kube/x").unwrap_err().contains("not a namespace name"));
        assert!(parse_pod("ns/a*").unwrap_err().contains("cannot begin a pod name"));
        assert!(check_namespace("-a").is_err());
        assert!(check_namespace(&"a".repeat(64)).is_err());
        assert!(check_container("aws-node").is_ok());
        assert!(check_container("aws_node").is_err());
    }
}
