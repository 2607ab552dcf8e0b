//! The policy: the file's text ([`source`]), its TOML shape ([`schema`], read by [`parse`]),
//! validated and resolved on this host ([`resolve`]: names become ids, presets addresses, paths
//! file and cgroup identities, pod selectors the pods' cgroups) into [`Rule`]s, and compiled into
//! the kernel's tables ([`compile`]).

use std::{collections::BTreeSet, path::PathBuf};

use imds_guard_common::{
    config::Mode,
    rule::{Imdsv1Action, Read},
};
use serde::Serialize;

pub mod compile;
mod digest;
pub mod endpoints;
pub mod fast_toml;
pub mod netfilter;
pub mod parse;
pub mod pods;
mod resolve;
pub mod rule;
pub mod schema;
pub mod source;
#[cfg(test)]
mod tests;
mod users;

pub use rule::{PodRule, Rule, RuleName};

use self::{
    endpoints::Endpoints,
    source::{ConfigError, Source},
};

/// Warnings kept for a policy (the rest are counted in one more).
pub const MAX_WARNINGS: usize = 10;

/// A policy ready to be installed.
#[derive(Clone, Debug, Serialize)]
pub struct Policy {
    pub source: String,
    #[serde(serialize_with = "ser_mode")]
    pub mode: Mode,
    pub endpoints: Endpoints,
    /// IMDSv1 treatment for rules that do not set their own, and for processes no rule names
    /// (which only get a connection in monitor mode).
    #[serde(serialize_with = "ser_imdsv1")]
    pub default_imdsv1: Imdsv1Action,
    /// `read = ...` at the top: what processes no table admits may read (`Nothing`, the default:
    /// they are refused at connect).
    #[serde(serialize_with = "ser_read")]
    pub others_read: Read,
    /// With `others_read` [`Read::Listed`], the prefixes.
    #[serde(rename = "read_prefixes", skip_serializing_if = "Option::is_none", serialize_with = "ser_list")]
    pub others_prefixes: Option<rule::ReadList>,
    /// What the daemon does at start-up with connections denied processes opened before it.
    pub preexisting: Preexisting,
    /// `raw_sockets = ...`: whether processes no table admits may open raw IPv4/IPv6 sockets.
    #[serde(serialize_with = "ser_raw_sockets")]
    pub raw_sockets: imds_guard_common::config::RawSockets,
    pub rules: Vec<Rule>,
    /// `[netfilter]`: the nftables layer.
    pub netfilter: netfilter::Settings,
    /// Hex SHA-256 of the resolved policy (what the kernel enforces), shown by `status`.
    pub digest: String,
    /// Things that are allowed but deserve attention (spoofable keys, cgroups not there yet).
    pub warnings: Vec<String>,
    /// Directories whose change can change what `pod`/`namespace` rules resolve to (kubelet's
    /// log directories, the cgroups pods appear in); empty without such rules.
    #[serde(skip)]
    pub pod_watch: BTreeSet<PathBuf>,
    /// Where kubelet's log directories are (`[kubernetes]`), to name the pod of an event.
    #[serde(skip)]
    pub pods: crate::host::workload::PodDirectory,
}

/// `preexisting = ...`: connections to an endpoint that were open before imds-guard started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Preexisting {
    /// Report each one (`preexisting_connection`), leave it open.
    #[default]
    Report,
    /// Report each one, and reset those a process the policy denies holds (enforce mode only).
    Close,
}

/// What resolving a policy needs from the host.
#[derive(Clone, Debug)]
pub struct Host {
    /// The cgroup2 mount point; `cgroup` rules are relative to it.
    pub cgroup_root: PathBuf,
    /// A `user`/`group` name the user database does not know, or an `exe` path with no file,
    /// makes its table wait (like a cgroup that does not exist yet) instead of refusing the policy. The daemon resolves this way the
    /// text it starts with and re-resolves a text it already accepted: at boot, a daemon that
    /// refused to start over a user that cloud-init creates later would leave nothing enforced.
    /// An edited policy (and `check`) is resolved strictly, so that a typo is an error.
    pub waiting_names: bool,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's signature
fn ser_raw_sockets<S: serde::Serializer>(
    r: &imds_guard_common::config::RawSockets,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.name())
}

#[allow(clippy::ref_option)] // serde's signature
fn ser_list<S: serde::Serializer>(l: &Option<rule::ReadList>, s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&l.as_deref(), s)
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's signature
fn ser_read<S: serde::Serializer>(r: &Read, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str((*r).name())
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's signature
fn ser_mode<S: serde::Serializer>(m: &Mode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str((*m).name())
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's signature
fn ser_imdsv1<S: serde::Serializer>(a: &Imdsv1Action, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str((*a).name())
}

impl Policy {
    /// Parses and resolves a policy. Every error names the file, line and column.
    pub fn from_source(source: &Source, host: &Host) -> Result<Self, ConfigError> {
        let file = source.parse()?;
        Self::resolve(source, file, host)
    }

    /// The rules that go into the kernel: not duplicates, not waiting for their cgroup.
    pub fn installed(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(|r| r.duplicate_of.is_none() && !r.is_pending())
    }

    /// Whether some installed rule names an executable (the programs then need BTF offsets).
    #[must_use]
    pub fn needs_exe(&self) -> bool {
        self.installed().any(|r| r.exe.is_some())
    }

    /// The strictest IMDSv1 treatment of the policy (its default and every installed table's):
    /// what a metadata connection gets whose connect no hook of this build judged.
    #[must_use]
    pub fn strictest_imdsv1(&self) -> Imdsv1Action {
        self.installed()
            .map(|r| r.imdsv1)
            .fold(self.default_imdsv1, |a, b| if b as u32 > a as u32 { b } else { a })
    }

    /// The strictest `read` of the installed tables and of the others (short of `none`, which
    /// admits nothing): what a connection no connect hook of this build judged may read. Lists
    /// are not ordered with the rest: with any, such a connection may read nothing (but the token
    /// PUT).
    #[must_use]
    pub fn strictest_read(&self) -> Read {
        let others = if self.others_read == Read::Nothing { Read::All } else { self.others_read };
        let strictest = self.installed().map(|r| r.read).fold(others, Ord::max);
        if strictest == Read::Listed { Read::Nothing } else { strictest }
    }

    /// The distinct `read` lists the kernel needs (the others' first, then the installed tables'
    /// in order): list `k` of the compiled automaton is the `k`th.
    #[must_use]
    pub fn read_lists(&self) -> Vec<rule::ReadList> {
        let mut lists: Vec<rule::ReadList> = Vec::new();
        let others = self.others_prefixes.iter().filter(|_| self.others_read == Read::Listed);
        for l in others.chain(self.installed().filter_map(|r| r.read_prefixes.as_ref())) {
            if !lists.iter().any(|k| k == l) {
                lists.push(l.clone());
            }
        }
        lists
    }

    /// `read` as the kernel stores it: the class, or the list's index in `lists`
    /// ([`Policy::read_lists`]).
    #[must_use]
    pub fn encoded_read(read: Read, prefixes: Option<&rule::ReadList>, lists: &[rule::ReadList]) -> u32 {
        match prefixes {
            Some(p) if read == Read::Listed => {
                let k = lists.iter().position(|l| std::sync::Arc::ptr_eq(l, p) || l == p);
                imds_guard_common::rule::listed(
                    u32::try_from(k.expect("every list is in read_lists")).expect("bounded"),
                )
            }
            _ => read as u32,
        }
    }

    /// What in the policy needs every request read (the request inspector): a table that refuses
    /// tokenless IMDSv1 requests or restricts what it reads, said so that the operator finds it
    /// (`allow[1] "legacy" (p.toml line 7) sets imdsv1 = "deny"`), or the top-level default;
    /// `None` when nothing does. (The others' `read` is [`Policy::others_read`], checked apart:
    /// without the inspector it would admit everyone to everything.)
    #[must_use]
    pub fn imdsv1_denial(&self) -> Option<String> {
        if let Some(r) = self.installed().find(|r| r.imdsv1 == Imdsv1Action::Deny || r.read.restricted()) {
            let what = if r.imdsv1 == Imdsv1Action::Deny {
                "imdsv1 = \"deny\"".to_owned()
            } else {
                read_setting(r.read)
            };
            return Some(format!(
                "allow[{}] \"{}\" ({} line {}) sets {what}",
                r.index, r.name, self.source, r.line
            ));
        }
        (self.default_imdsv1 == Imdsv1Action::Deny)
            .then(|| format!("{} sets imdsv1 = \"deny\" for every workload", self.source))
    }
}

/// A `read` as the policy spells it, for messages: `read = "no-secrets"`, or for a list
/// `read = [...] (a list of path prefixes)`.
#[must_use]
pub fn read_setting(read: Read) -> String {
    match read {
        Read::Listed => "read = [...] (a list of path prefixes)".to_owned(),
        r => format!("read = \"{}\"", r.name()),
    }
}
