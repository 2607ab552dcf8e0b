//! The policy file: TOML → [`PolicyFile`], with the position of every value kept so that errors can
//! name `file:line:col`. Unknown keys are errors. Meaning (users, endpoints, ...) is resolved in
//! [`crate::policy`].

use std::{fmt, ops::Range, path::Path};

use serde::Deserialize;
use toml::Spanned;

/// The policy file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// `"enforce"` (default) or `"monitor"`.
    pub mode: Option<Spanned<String>>,
    /// Endpoint presets and literal addresses; default `["aws-imds"]`.
    pub endpoints: Option<Spanned<Vec<Spanned<String>>>>,
    /// Default treatment of tokenless (IMDSv1) requests: `"allow"`, `"log"` (default) or `"deny"`.
    pub imdsv1: Option<Spanned<String>>,
    /// Connections to an endpoint open before imds-guard started, held by a process the policy
    /// denies: `"report"` (default) or `"close"`.
    pub preexisting: Option<Spanned<String>>,
    /// Allow rules: the keys of one table must all match; tables are alternatives.
    #[serde(default)]
    pub allow: Vec<Spanned<AllowTable>>,
    /// The nftables layer (forwarded traffic, reduced mode); see [`crate::netfilter`].
    pub netfilter: Option<Spanned<NetfilterTable>>,
    /// Where kubelet's records and the pod cgroups are (for `pod` and `namespace` keys).
    pub kubernetes: Option<Spanned<KubernetesTable>>,
}

/// The `[kubernetes]` table: where this node keeps what `pod`/`namespace`/`container` keys are
/// resolved from. Every key has a default that fits a kubelet node.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesTable {
    /// kubelet's pod log directory (default `/var/log/pods`).
    pub pod_logs: Option<Spanned<String>>,
    /// kubelet's container log symlinks (default `/var/log/containers`).
    pub container_logs: Option<Spanned<String>>,
    /// cgroups to search for pod cgroups (default: the whole tree).
    pub pod_cgroups: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[netfilter]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetfilterTable {
    /// Drop (monitor mode: report) forwarded packets to the endpoints; default true.
    pub forward: Option<Spanned<bool>>,
    /// Input interfaces whose forwarded packets are let through (`eni*`: prefix).
    pub forward_allow_interfaces: Option<Spanned<Vec<Spanned<String>>>>,
    /// Source addresses or prefixes whose forwarded packets are let through.
    pub forward_allow_sources: Option<Spanned<Vec<Spanned<String>>>>,
    /// `"auto"` (default), `"off"` or `"on"`: nftables output rules instead of the cgroup programs.
    pub reduced_mode: Option<Spanned<String>>,
    /// NFLOG group the rules log to.
    pub nflog_group: Option<Spanned<u16>>,
}

/// One `[[allow]]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowTable {
    /// A name for the rule, shown by `check`, `explain` and in events.
    pub name: Option<Spanned<String>>,
    pub uid: Option<Spanned<u32>>,
    pub user: Option<Spanned<String>>,
    pub gid: Option<Spanned<u32>>,
    pub group: Option<Spanned<String>>,
    /// The executable file (by device and inode, resolved at load and when it is replaced).
    pub exe: Option<Spanned<String>>,
    /// A cgroup path relative to the cgroup2 root; covers its descendants.
    pub cgroup: Option<Spanned<String>>,
    /// Task comm (spoofable: warned about).
    pub comm: Option<Spanned<String>>,
    /// Pods of a namespace whose name starts with a prefix: `"<namespace>/<prefix>"`.
    pub pod: Option<Spanned<String>>,
    /// Every pod of a namespace.
    pub namespace: Option<Spanned<String>>,
    /// With `pod` or `namespace`: only this container of the selected pods.
    pub container: Option<Spanned<String>>,
    /// This workload's tokenless (IMDSv1) requests: `"allow"`, `"log"` or `"deny"`.
    pub imdsv1: Option<Spanned<String>>,
}

/// Where a policy came from, to point errors at it.
#[derive(Clone, Debug)]
pub struct Source {
    /// File name as given (or `<embedded>`).
    pub name: String,
    pub text: String,
}

impl Source {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            location: path.display().to_string(),
            message: format!("cannot read the policy file: {e}"),
            snippet: None,
        })?;
        Ok(Source { name: path.display().to_string(), text })
    }

    /// Line numbers (1-based) of byte offsets, for many offsets at once (one pass over the text).
    #[must_use]
    pub fn line_index(&self) -> LineIndex {
        LineIndex(self.text.match_indices('\n').map(|(i, _)| i).collect())
    }

    /// `file:line:col` and the offending line for a byte range of the text.
    #[must_use]
    pub fn error_at(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        let message = message.into();
        let Some(span) = span else {
            return ConfigError { location: self.name.clone(), message, snippet: None };
        };
        let start = span.start.min(self.text.len());
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_no = self.text[..start].matches('\n').count() + 1;
        let col = self.text[line_start..start].chars().count() + 1;
        let line_end = self.text[start..].find('\n').map_or(self.text.len(), |i| start + i);
        let line = &self.text[line_start..line_end];
        let width = self.text[start..span.end.clamp(start, line_end)].chars().count().max(1);
        ConfigError {
            location: format!("{}:{line_no}:{col}", self.name),
            message,
            snippet: Some(format!(
                "{line_no:>4} | {line}\n     | {}{}",
                " ".repeat(col - 1),
                "^".repeat(width)
            )),
        }
    }

    pub fn parse(&self) -> Result<PolicyFile, ConfigError> {
        toml::from_str(&self.text).map_err(|e| self.error_at(e.span(), e.message().trim().to_owned()))
    }
}

/// Offsets of the newlines of a text.
pub struct LineIndex(Vec<usize>);

impl LineIndex {
    /// 1-based line of byte offset `at`.
    #[must_use]
    pub fn line(&self, at: usize) -> usize {
        self.0.partition_point(|&nl| nl < at) + 1
    }
}

/// A policy error that names where in the file it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `file:line:col`, or just the file when the problem has no position.
    pub location: String,
    pub message: String,
    pub snippet: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)?;
        if let Some(s) = &self.snippet {
            write!(f, "\n{s}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(text: &str) -> Source {
        Source { name: "policy.toml".into(), text: text.into() }
    }

    #[test]
    fn unknown_key_is_an_error_with_position() {
        let e = src("mode = \"enforce\"\n[[allow]]\nuidd = 0\n").parse().unwrap_err();
        assert_eq!(e.location, "policy.toml:3:1");
        assert!(e.message.contains("unknown field `uidd`"), "{e}");
        assert!(e.to_string().contains("uidd = 0"), "{e}");
    }

    #[test]
    fn negative_uid_is_an_error_with_position() {
        let e = src("[[allow]]\nuid = -5\n").parse().unwrap_err();
        assert_eq!(e.location, "policy.toml:2:7");
        assert!(e.message.contains("-5"), "{e}");
    }

    #[test]
    fn syntax_error_has_position() {
        let e = src("mode = enforce\n").parse().unwrap_err();
        assert!(e.location.starts_with("policy.toml:1:"), "{e}");
    }

    #[test]
    fn full_example_parses() {
        let p = src("mode = \"monitor\"\nendpoints = [\"aws-imds\", \"169.254.170.2\"]\n\
             [[allow]]\nuid = 0\n[[allow]]\nuser = \"root\"\n[[allow]]\ngroup = \"root\"\ngid = 0\n")
        .parse()
        .unwrap();
        assert_eq!(p.allow.len(), 3);
        assert_eq!(p.mode.unwrap().into_inner(), "monitor");
    }
}
