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
//!
//! Bounded in bytes as well as in workloads: each name a process chose is an exact string (a rule
//! is written from it) of up to 4 KiB, six times that once JSON escapes control characters, so
//! 4,096 workloads of 16 such names each could have taken gigabytes here and in the answer to
//! `suggest`. The table takes at most [`MAX_SEEN_BYTES`] (counted as the JSON the answer will
//! be); past that, a new workload is counted in `overflow` and a known one keeps the names it has.
//! When the table is full, workloads not seen for [`IDLE`] make room (counted in `expired`).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{
    bound::json_len,
    event::{Event, Who},
};

/// Workloads remembered; beyond this, new ones are counted in `overflow` only.
pub const MAX_SEEN: usize = 4096;
/// Of those, workloads seen only refused: they allow nothing, and a user who makes many of them
/// (copies of a program, cgroups of its own) against an enforcing daemon must not crowd out the
/// workloads a monitor period sees. Beyond this, their attempts are counted in `refused_overflow`.
pub const MAX_REFUSED: usize = 256;
/// Bytes the table may take, as JSON.
pub const MAX_SEEN_BYTES: usize = 4 << 20;
/// A remembered workload's fixed cost in bytes (its counters, times, field names), on top of its
/// names.
const ENTRY_BYTES: usize = 256;
/// How long a workload must have been quiet before a full table forgets it for a new one.
pub const IDLE: Duration = Duration::from_secs(3600);

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
    /// What it read beyond the harmless facts, let through by monitor mode (the classes of its
    /// `request_denied` events that were not enforced: `role-credentials`, `user-data`, ...,
    /// `unreadable-path`). Empty while [`Table::reads_observed`]: it read none of the secrets.
    #[serde(default)]
    pub reads: BTreeSet<String>,
    /// Connects and requests the enforced policy refused.
    #[serde(default)]
    pub refused: u64,
    pub first_time: Option<String>,
    pub last_time: Option<String>,
    /// When it was last seen (to expire it).
    #[serde(skip)]
    pub last_seen: Option<Instant>,
    /// What it takes in the table, in bytes.
    #[serde(skip)]
    pub bytes: usize,
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
    /// Events of workloads not remembered because the table was full ([`MAX_SEEN`] workloads or
    /// [`MAX_SEEN_BYTES`]).
    pub overflow: u64,
    /// Refused attempts of workloads not remembered because [`MAX_REFUSED`] refused-only ones were.
    #[serde(default)]
    pub refused_overflow: u64,
    /// How many of `seen` are [refused only](SeenWorkload::only_refused) (kept by `observe`).
    #[serde(skip)]
    refused_only: usize,
    /// Workloads forgotten because they had been quiet for [`IDLE`] when the table was full.
    #[serde(default)]
    pub expired: u64,
    /// The daemon that saw these workloads reported what they read beyond the harmless facts
    /// (its `guard_started` said `reports_reads`): only then does an empty
    /// [`SeenWorkload::reads`] mean that a workload read no secret.
    #[serde(default)]
    pub reads_observed: bool,
    /// Bytes taken, as JSON ([`MAX_SEEN_BYTES`]).
    #[serde(skip)]
    pub bytes: usize,
    /// When idle workloads were last looked for (at most once a minute).
    #[serde(skip)]
    last_expiry: Option<Instant>,
}

/// What an event says a workload did.
#[derive(Clone, Copy)]
enum Did<'a> {
    /// Connected (or tried to) with no table admitting it.
    Connect,
    /// Sent a tokenless request (or one the classifier could not read).
    Finding,
    /// Read beyond the harmless facts.
    Read(&'a super::event::Request),
}

/// Small sets stay small: a workload's list of pids-turned-comms cannot grow without bound.
const MAX_SET: usize = 16;

/// Adds `v` to `set` if it is new and the set and the table (`bytes`) have room for it.
fn add(set: &mut BTreeSet<String>, v: Option<&str>, bytes: &mut usize, entry: &mut usize) {
    if let Some(v) = v
        && set.len() < MAX_SET
        && !set.contains(v)
    {
        let cost = json_len(v) + 1;
        if *bytes + cost <= MAX_SEEN_BYTES {
            set.insert(v.to_owned());
            *bytes += cost;
            *entry += cost;
        }
    }
}

/// `v` if the table has room for it (`None`: the field stays empty).
fn take(v: &str, bytes: &mut usize, entry: &mut usize) -> Option<String> {
    let cost = json_len(v) + 16;
    (*bytes + cost <= MAX_SEEN_BYTES).then(|| {
        *bytes += cost;
        *entry += cost;
        v.to_owned()
    })
}

impl Table {
    /// Takes one event (`count` occurrences: 1, or a `*_repeated` line's count).
    pub fn observe(&mut self, event: &Event, count: u64) {
        self.observe_at(event, count, Instant::now());
    }

    fn observe_at(&mut self, event: &Event, count: u64, now: Instant) {
        let (refused, did) = match event {
            Event::GuardStarted(g) => {
                self.reads_observed |= g.reports_reads;
                return;
            }
            Event::ConnectDenied(c) => (c.enforced, Did::Connect),
            Event::ConnectDeniedRepeated(r) => (r.sample.enforced, Did::Connect),
            Event::Imdsv1Request(q) | Event::ImdsRequestUnclassified(q) => (q.enforced, Did::Finding),
            Event::Imdsv1RequestRepeated(r) | Event::ImdsRequestUnclassifiedRepeated(r) => {
                (r.sample.enforced, Did::Finding)
            }
            // What a workload with a table may read is its table's business.
            Event::RequestDenied(q) if q.rule.is_none() => (q.enforced, Did::Read(q)),
            Event::RequestDeniedRepeated(r) if r.sample.rule.is_none() => {
                (r.sample.enforced, Did::Read(&r.sample))
            }
            _ => return,
        };
        let Some(who) = event.who() else { return };
        let (workload, unit_cgroup) = key(who);
        let before = self.seen.get(&workload).map(SeenWorkload::only_refused);
        if before.is_none() {
            // The key and the `workload` field, and the unit's cgroup (which the key holds).
            let cost = ENTRY_BYTES + 2 * json_len(&workload) + unit_cgroup.as_deref().map_or(0, json_len);
            let full = |t: &Self| t.seen.len() >= MAX_SEEN || t.bytes + cost > MAX_SEEN_BYTES;
            if full(self) {
                self.expire(now);
            }
            if full(self) {
                self.overflow += count;
                return;
            }
            if refused && self.refused_only >= MAX_REFUSED {
                self.refused_overflow += count;
                return;
            }
            self.bytes += cost;
            self.seen.insert(
                workload.clone(),
                SeenWorkload {
                    workload: workload.clone(),
                    unit_cgroup,
                    bytes: cost,
                    ..SeenWorkload::default()
                },
            );
        }
        let Some(s) = self.seen.get_mut(&workload) else { return };
        match (refused, did) {
            (true, _) => s.refused += count,
            (false, Did::Connect) => s.connects += count,
            (false, Did::Finding) => s.imdsv1 += count,
            (false, Did::Read(q)) => {
                // A tokenless request is reported once, as what it read.
                if q.tokenless {
                    s.imdsv1 += count;
                }
                add(&mut s.reads, q.class.as_deref(), &mut self.bytes, &mut s.bytes);
            }
        }
        match (before, s.only_refused()) {
            (None | Some(false), true) => self.refused_only += 1,
            (Some(true), false) => self.refused_only -= 1,
            _ => {}
        }
        s.last_seen = Some(now);
        add_who(s, who, &mut self.bytes);
        let time = event.time().filter(|t| !t.is_empty() && t.len() <= 64).map(str::to_owned);
        if s.first_time.is_none() {
            s.first_time.clone_from(&time);
        }
        if time.is_some() {
            s.last_time = time;
        }
    }

    /// Forgets the workloads quiet for [`IDLE`] (looked for at most once a minute).
    fn expire(&mut self, now: Instant) {
        if self.last_expiry.is_some_and(|t| now.duration_since(t) < Duration::from_secs(60)) {
            return;
        }
        self.last_expiry = Some(now);
        let before = self.seen.len();
        let (mut freed, mut refused_only) = (0, 0);
        self.seen.retain(|_, s| {
            let keep = s.last_seen.is_none_or(|t| now.duration_since(t) < IDLE);
            if !keep {
                freed += s.bytes;
                refused_only += usize::from(s.only_refused());
            }
            keep
        });
        self.bytes -= freed;
        self.refused_only -= refused_only;
        self.expired += (before - self.seen.len()) as u64;
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

fn add_who(s: &mut SeenWorkload, who: &Who, bytes: &mut usize) {
    let entry = &mut s.bytes;
    if s.pod.is_none()
        && let Some(p) = &who.pod
        && let Some(namespace) = take(&p.namespace, bytes, entry)
    {
        match take(&p.name, bytes, entry) {
            Some(name) => s.pod = Some(Pod { namespace, name }),
            None => {
                *bytes -= json_len(&namespace) + 16;
                *entry -= json_len(&namespace) + 16;
            }
        }
    }
    if s.unit.is_none()
        && let Some(unit) = &who.unit
    {
        s.unit = take(unit, bytes, entry);
    }
    if s.delegated_to.is_none() {
        s.delegated_to = who.delegated_to;
    }
    if s.uids.len() < MAX_SET && !s.uids.contains(&who.uid) && *bytes + 11 <= MAX_SEEN_BYTES {
        s.uids.insert(who.uid);
        *bytes += 11;
        *entry += 11;
    }
    add(&mut s.exes, who.exe.as_deref().map(|e| e.strip_suffix(" (deleted)").unwrap_or(e)), bytes, entry);
    add(&mut s.comms, Some(&who.comm), bytes, entry);
    add(&mut s.cgroups, who.cgroup.as_deref(), bytes, entry);
}

impl Seen {
    pub fn observe(&self, event: &Event, count: u64) {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).observe(event, count);
    }

    #[must_use]
    pub fn snapshot(&self) -> Table {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The table as JSON, made under the lock (no copy of the table first).
    #[must_use]
    pub fn to_json(&self) -> String {
        let t = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        serde_json::to_string(&*t).unwrap_or_else(|_| "{}".to_owned())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::event::Connect;

    fn denied(exe: String, uid: u32) -> Event {
        Event::ConnectDenied(Connect {
            enforced: false,
            time: "t".into(),
            who: Who { uid, comm: "c".into(), exe: Some(exe), cgroup: Some("/x".into()), ..Who::default() },
            dst: "169.254.169.254".into(),
            port: 80,
            family: "ipv4".into(),
            generation: 1,
            reason: None,
            rule: None,
        })
    }

    #[test]
    fn the_table_is_bounded_in_bytes_and_quiet_workloads_make_room() {
        let mut t = Table::default();
        let t0 = Instant::now();
        // 6,000 workloads named by 4 KiB executable paths of control characters.
        for i in 0..6000 {
            t.observe_at(&denied(format!("/{i}/{}", "\u{1}".repeat(4000)), 1000), 1, t0);
        }
        let json = serde_json::to_string(&t).unwrap();
        assert!(t.bytes <= MAX_SEEN_BYTES && json.len() <= MAX_SEEN_BYTES, "{} {}", t.bytes, json.len());
        assert!(t.seen.len() < 6000 && t.overflow == 6000 - t.seen.len() as u64, "{}", t.seen.len());
        // A known workload's names stop growing when the table is full, its counts do not.
        let first = t.seen.keys().next().unwrap().clone();
        let n = t.seen[&first].connects;
        t.observe_at(&denied(first.trim_start_matches("exe:").to_owned(), 2000), 1, t0);
        assert_eq!(t.seen[&first].connects, n + 1);
        // An hour later, a new workload replaces the quiet ones.
        let later = t0 + IDLE + Duration::from_secs(1);
        let new = format!("/new/{}", "\u{1}".repeat(4000));
        t.observe_at(&denied(new.clone(), 1), 1, later);
        assert!(t.seen.contains_key(&format!("exe:{new}")));
        assert_eq!(t.seen.len(), 1);
        assert!(t.expired > 0);
        let recount: usize = t.seen.values().map(|s| s.bytes).sum();
        assert_eq!(recount, t.bytes, "what is freed is what was counted");
    }
}
