//! What the daemon has seen using the metadata service without a rule (monitor mode's
//! `connect_denied` with `"enforced": false`, and IMDSv1 findings), grouped by workload: what
//! `imds-guard suggest` ([`super::suggest`]) writes a policy from. Attempts the enforced policy
//! refused (`"enforced": true`) are counted apart: they are no reason to allow anything.
//!
//! A workload is keyed by the strongest identity its events carry ([`key`]): a Kubernetes pod,
//! else a systemd unit's cgroup (its full path: two units of one name in different places, such
//! as `kubelet.service` and a delegated user's `…/user@1000.service/app.slice/kubelet.service`,
//! are two workloads), else the executable (with the uid when only one was seen), else the uid.
//! Container ids are not used for rules: they change at every container restart.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
};

use serde::{Deserialize, Serialize};

use super::event::{Event, Who};

/// Workloads remembered; beyond this, new ones are counted in `overflow` only.
pub const MAX_SEEN: usize = 4096;
/// Of those, workloads seen only refused: they allow nothing, and a user who makes many of them
/// (copies of a program, cgroups of its own) against an enforcing daemon must not crowd out the
/// workloads a monitor period sees. Beyond this, their attempts are counted in `refused_overflow`.
pub const MAX_REFUSED: usize = 256;

/// One workload seen reaching the metadata service without a rule.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SeenWorkload {
    /// The workload's [`key`].
    pub workload: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
    /// The systemd unit and its cgroup (relative to the cgroup2 root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_cgroup: Option<String>,
    /// The uid its cgroup is delegated to (the names below the delegation are that user's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegated_to: Option<u32>,
    #[serde(default)]
    pub uids: BTreeSet<u32>,
    #[serde(default)]
    pub exes: BTreeSet<String>,
    #[serde(default)]
    pub comms: BTreeSet<String>,
    #[serde(default)]
    pub cgroups: BTreeSet<String>,
    /// Connects no rule allowed, let through (monitor mode).
    pub connects: u64,
    /// Tokenless (IMDSv1) requests and other findings, let through.
    pub imdsv1: u64,
    /// Connects and requests the enforced policy refused.
    #[serde(default)]
    pub refused: u64,
    pub first_time: Option<String>,
    pub last_time: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
}

/// The daemon's [`Table`], shared by the event loop and the event socket.
#[derive(Debug, Default)]
pub struct Seen {
    inner: Mutex<Table>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Table {
    pub seen: BTreeMap<String, SeenWorkload>,
    /// Events of workloads not remembered because [`MAX_SEEN`] were already.
    pub overflow: u64,
    /// Refused attempts of workloads not remembered because [`MAX_REFUSED`] refused-only ones were.
    #[serde(default)]
    pub refused_overflow: u64,
    /// How many of `seen` are [refused only](SeenWorkload::only_refused) (kept by `observe`).
    #[serde(skip)]
    refused_only: usize,
}

/// Small sets stay small: a workload's list of pids-turned-comms cannot grow without bound.
const MAX_SET: usize = 16;

fn add(set: &mut BTreeSet<String>, v: Option<&str>) {
    if let Some(v) = v
        && set.len() < MAX_SET
    {
        set.insert(v.to_owned());
    }
}

impl Table {
    /// Takes one event (`count` occurrences: 1, or a `*_repeated` line's count).
    pub fn observe(&mut self, event: &Event, count: u64) {
        let (refused, findings) = match event {
            Event::ConnectDenied(c) => (c.enforced, false),
            Event::ConnectDeniedRepeated(r) => (r.sample.enforced, false),
            Event::Imdsv1Request(q) | Event::ImdsRequestUnclassified(q) => (q.enforced, true),
            Event::Imdsv1RequestRepeated(r) | Event::ImdsRequestUnclassifiedRepeated(r) => {
                (r.sample.enforced, true)
            }
            _ => return,
        };
        let Some(who) = event.who() else { return };
        let (workload, unit_cgroup) = key(who);
        let before = self.seen.get(&workload).map(SeenWorkload::only_refused);
        if before.is_none() {
            if self.seen.len() >= MAX_SEEN {
                self.overflow += count;
                return;
            }
            if refused && self.refused_only >= MAX_REFUSED {
                self.refused_overflow += count;
                return;
            }
        }
        let s = self.seen.entry(workload.clone()).or_insert_with(|| SeenWorkload {
            workload,
            unit_cgroup,
            ..SeenWorkload::default()
        });
        match (refused, findings) {
            (true, _) => s.refused += count,
            (false, false) => s.connects += count,
            (false, true) => s.imdsv1 += count,
        }
        match (before, s.only_refused()) {
            (None | Some(false), true) => self.refused_only += 1,
            (Some(true), false) => self.refused_only -= 1,
            _ => {}
        }
        add_who(s, who);
        let time = event.time().filter(|t| !t.is_empty()).map(str::to_owned);
        if s.first_time.is_none() {
            s.first_time.clone_from(&time);
        }
        if time.is_some() {
            s.last_time = time;
        }
    }
}

impl SeenWorkload {
    /// Every attempt it made was refused: nothing it did reached the metadata service without a
    /// rule, so nothing justifies a rule for it.
    #[must_use]
    pub fn only_refused(&self) -> bool {
        self.connects == 0 && self.imdsv1 == 0
    }
}

/// The key a workload is remembered by, and the unit's cgroup when it is a unit: `pod:<namespace>/
/// <name>`; `cgroup:<path>` for a systemd unit, `path` the unit's own cgroup (the event's cut after
/// the unit's name: the unit is named from above any delegation, so its first occurrence is it);
/// else [`Who::workload`] (`container:`, `exe:`, `uid:`).
#[must_use]
pub fn key(who: &Who) -> (String, Option<String>) {
    if let Some(p) = &who.pod {
        return (format!("pod:{}/{}", p.namespace, p.name), None);
    }
    if let Some(c) = who.unit.as_deref().zip(who.cgroup.as_deref()).and_then(|(u, c)| unit_cgroup(c, u)) {
        return (format!("cgroup:{c}"), Some(c));
    }
    (who.workload(), None)
}

fn add_who(s: &mut SeenWorkload, who: &Who) {
    if s.pod.is_none()
        && let Some(p) = &who.pod
    {
        s.pod = Some(Pod { namespace: p.namespace.clone(), name: p.name.clone() });
    }
    if s.unit.is_none() {
        s.unit.clone_from(&who.unit);
    }
    if s.delegated_to.is_none() {
        s.delegated_to = who.delegated_to;
    }
    if s.uids.len() < MAX_SET {
        s.uids.insert(who.uid);
    }
    add(&mut s.exes, who.exe.as_deref().map(|e| e.strip_suffix(" (deleted)").unwrap_or(e)));
    add(&mut s.comms, Some(&who.comm));
    add(&mut s.cgroups, who.cgroup.as_deref());
}

impl Seen {
    pub fn observe(&self, event: &Event, count: u64) {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).observe(event, count);
    }

    #[must_use]
    pub fn snapshot(&self) -> Table {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// The unit's own cgroup: `cgroup` cut after the component named `unit`
/// (`/system.slice/foo.service/sub` → `/system.slice/foo.service`).
fn unit_cgroup(cgroup: &str, unit: &str) -> Option<String> {
    let mut out = String::new();
    for part in cgroup.split('/').filter(|p| !p.is_empty()) {
        out.push('/');
        out.push_str(part);
        if part == unit {
            return Some(out);
        }
    }
    None
}
