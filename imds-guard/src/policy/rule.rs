//! One `[[allow]]` table, resolved: the identities it names, the kernel keys they become, and
//! how `check` shows them.

use imds_guard_common::rule::{Imdsv1Action, Read, RuleKey, comm_words, field};
use serde::Serialize;

use super::pods::PodMatch;
use crate::host::{
    identity::{CgroupRef, ExeId, FileId},
    workload::PodSelector,
};

/// One `[[allow]]` table, resolved. (`Serialize` is written out below: `resolved` is rendered.)
#[derive(Clone, Debug)]
pub struct Rule {
    /// 0-based position among the `[[allow]]` tables.
    pub index: u32,
    /// `name = ...`, or `allow[<index>]`.
    pub name: RuleName,
    /// Line of the table in the policy file.
    pub line: usize,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    // Boxed, like `pods`: most rules have none of them, and a 10,000-rule policy is resolved
    // into a vector of these (344 bytes a rule unboxed, 160 boxed; fewer pages first touched).
    pub exe: Option<Box<ExeId>>,
    pub cgroup: Option<Box<CgroupRef>>,
    pub comm: Option<String>,
    /// `pod`/`namespace`/`container`: the selector and the cgroups it selects now.
    pub pods: Option<Box<PodRule>>,
    /// What this workload's tokenless (IMDSv1) requests get.
    pub imdsv1: Imdsv1Action,
    /// What this workload may read (`read = ...`).
    pub read: Read,
    /// With [`Read::Listed`], the prefixes (distinct, as written).
    pub read_prefixes: Option<ReadList>,
    /// The user and group names `uid` and `gid` were resolved from (`user = ...`, `group = ...`).
    pub user: Option<Box<str>>,
    pub group: Option<Box<str>>,
    /// A later table that is identical to this one (kept for `check` to point out).
    pub duplicate_of: Option<u32>,
    /// A user or group name the user database does not know yet (see [`Host::waiting_names`]).
    pub waiting_for: Option<String>,
}

/// A `read` list of path prefixes (shared: tables with the same list are compiled into one).
pub type ReadList = std::sync::Arc<[String]>;

/// `read` as `check` and `explain` show it: the class's name, or the list.
pub fn read_json(read: Read, prefixes: Option<&ReadList>) -> serde_json::Value {
    match prefixes {
        Some(p) if read == Read::Listed => serde_json::Value::from(p.to_vec()),
        _ => serde_json::Value::from(read.name()),
    }
}

/// `read` as `check` prints it: the class's name, or the list (its prefixes are printable ASCII,
/// checked when the policy was read).
pub fn read_text(read: Read, prefixes: Option<&ReadList>) -> String {
    match prefixes {
        Some(p) if read == Read::Listed => {
            format!("[{}]", p.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", "))
        }
        _ => read.name().to_owned(),
    }
}

/// The id of a user or group name the user database does not know yet (no process has it).
pub(super) const NOT_YET: u32 = u32::MAX;

/// A rule's name: `name = ...` as written, or `allow[<index>]`, rendered when it is shown (a
/// policy of 10,000 unnamed tables would otherwise make 10,000 strings on every reload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleName {
    Given(String),
    Table(u32),
}

impl std::fmt::Display for RuleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuleName::Given(name) => f.write_str(name),
            RuleName::Table(index) => write!(f, "allow[{index}]"),
        }
    }
}

impl Serialize for RuleName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Serialize for Rule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("Rule", 13)?;
        st.serialize_field("index", &self.index)?;
        st.serialize_field("name", &self.name)?;
        st.serialize_field("line", &self.line)?;
        st.serialize_field("uid", &self.uid)?;
        st.serialize_field("gid", &self.gid)?;
        st.serialize_field("exe", &self.exe)?;
        st.serialize_field("cgroup", &self.cgroup)?;
        st.serialize_field("comm", &self.comm)?;
        match &self.pods {
            Some(pods) => st.serialize_field("pods", pods)?,
            None => st.skip_field("pods")?,
        }
        st.serialize_field("imdsv1", self.imdsv1.name())?;
        st.serialize_field("read", &read_json(self.read, self.read_prefixes.as_ref()))?;
        st.serialize_field("resolved", &self.resolved())?;
        match &self.waiting_for {
            Some(w) => st.serialize_field("waiting_for", w)?,
            None => st.skip_field("waiting_for")?,
        }
        st.end()
    }
}

/// A rule's pod selector and what it resolved to on this node.
#[derive(Clone, Debug, Serialize)]
pub struct PodRule {
    pub selector: PodSelector,
    /// One cgroup per selected pod (or container) that exists now.
    pub matches: Vec<PodMatch>,
    /// What the selector was written as (`pod kube-system/aws-node-*`).
    #[serde(skip)]
    pub written: String,
}

impl Rule {
    /// This rule's key in the kernel (without the generation).
    #[must_use]
    pub fn key(&self) -> RuleKey {
        let mut key = RuleKey::default();
        if let Some(uid) = self.uid {
            key.shape |= field::UID;
            key.uid = uid;
        }
        if let Some(gid) = self.gid {
            key.shape |= field::GID;
            key.gid = gid;
        }
        if let Some(exe) = &self.exe {
            key.shape |= field::EXE;
            // A waiting rule (no file) is not installed; its key is never looked up.
            let id = exe.id.unwrap_or(FileId { dev: 0, ino: 0 });
            key.exe_dev = id.dev;
            key.exe_ino = id.ino;
        }
        if let Some(cg) = &self.cgroup {
            key.shape |= field::CGROUP;
            key.cgroup_id = cg.id.unwrap_or(0);
        }
        if self.pods.is_some() {
            key.shape |= field::CGROUP;
        }
        if let Some(comm) = &self.comm {
            key.shape |= field::COMM;
            let mut b = [0u8; 16];
            b[..comm.len()].copy_from_slice(comm.as_bytes());
            key.comm = comm_words(&b);
        }
        key
    }

    /// The keys this rule puts in the kernel, each with the cgroup depth it is probed at: one,
    /// or for a pod rule one per selected pod (or container) cgroup.
    pub fn keys(&self) -> impl Iterator<Item = (RuleKey, Option<u8>)> + '_ {
        let key = self.key();
        // Allocation-free: a reload of 10,000 rules walks these several times.
        let single = self.pods.is_none().then(|| (key, self.cgroup.as_ref().map(|c| c.level)));
        let pods = self.pods.iter().flat_map(|p| &p.matches);
        single.into_iter().chain(
            pods.filter_map(move |m| {
                Some((RuleKey { cgroup_id: m.cgroup.id?, ..key }, Some(m.cgroup.level)))
            }),
        )
    }

    /// What the rule's keys were written as and resolved to (e.g. `user "ssm-user" = uid 1001`),
    /// rendered when asked for (`check`).
    #[must_use]
    pub fn resolved(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (id, name, id_key, name_key) in
            [(self.uid, &self.user, "uid", "user"), (self.gid, &self.group, "gid", "group")]
        {
            match (id, name) {
                (Some(id), None) => out.push(format!("{id_key} {id}")),
                (Some(NOT_YET), Some(name)) => {
                    out.push(format!("{name_key} \"{name}\" = (not in the {name_key} database yet)"));
                }
                (Some(id), Some(name)) => out.push(format!("{name_key} \"{name}\" = {id_key} {id}")),
                (None, _) => {}
            }
        }
        if let Some(exe) = &self.exe {
            out.push(match exe.id {
                Some(id) => format!(
                    "exe {} = file {} (dev {}:{}, inode {})",
                    exe.path,
                    exe.file.display(),
                    id.dev >> 20,
                    id.dev & 0xfffff,
                    id.ino
                ),
                None => format!("exe {} (no such file now: matches nothing until one is there)", exe.path),
            });
        }
        if let Some(c) = &self.cgroup {
            out.push(match c.id {
                Some(id) => format!("cgroup {} (id {id}, depth {}) and below", c.path, c.level),
                None => format!("cgroup {} (not there yet) and below", c.path),
            });
        }
        if let Some(comm) = &self.comm {
            out.push(format!("comm \"{comm}\" (spoofable)"));
        }
        if let Some(p) = &self.pods {
            let list: Vec<String> = p
                .matches
                .iter()
                .map(|m| format!("{} ({}, id {})", m.pod.name, m.cgroup.path, m.cgroup.id.unwrap_or(0)))
                .collect();
            out.push(if list.is_empty() {
                format!("{}: none running now", p.written)
            } else {
                format!("{}: {}", p.written, list.join(", "))
            });
        }
        out
    }

    /// A cgroup rule whose cgroup does not exist yet is not installed (nothing can be in it), nor
    /// is an exe rule with no file at its path (deleted: its inode number may go to another file),
    /// nor a pod rule that selects no running pod.
    #[must_use]
    pub fn is_pending(&self) -> bool {
        self.waiting_for.is_some()
            || self.cgroup.as_ref().is_some_and(|c| c.id.is_none())
            || self.exe.as_ref().is_some_and(|e| e.id.is_none())
            || self.pods.as_ref().is_some_and(|p| p.matches.is_empty())
    }
}
