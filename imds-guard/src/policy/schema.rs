//! The policy file as written: TOML → [`PolicyFile`], with the position of every value kept so
//! that errors can name `file:line:col`. Unknown keys are errors. Meaning (users, endpoints, ...)
//! is resolved in [`crate::policy`].

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
    /// Raw IPv4/IPv6 sockets for processes no table admits: `"allow"` (default) or `"deny"`.
    pub raw_sockets: Option<Spanned<String>>,
    /// What processes no table admits may read: `"none"` (default: refused at connect),
    /// `"no-secrets"`, or a list of path prefixes.
    pub read: Option<Spanned<ReadSpec>>,
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
///
/// Its text keys are boxed: a policy of 10,000 tables moved and first touched every table's
/// eleven 40-byte slots while parsing (the memory copies and page faults cost more than the
/// parse); a table now takes ~140 bytes, and only the keys it has allocate.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowTable {
    /// A name for the rule, shown by `check`, `explain` and in events.
    pub name: Option<Box<Spanned<String>>>,
    pub uid: Option<Spanned<u32>>,
    pub user: Option<Box<Spanned<String>>>,
    pub gid: Option<Spanned<u32>>,
    pub group: Option<Box<Spanned<String>>>,
    /// The executable file (by device and inode, resolved at load and when it is replaced).
    pub exe: Option<Box<Spanned<String>>>,
    /// A cgroup path relative to the cgroup2 root; covers its descendants.
    pub cgroup: Option<Box<Spanned<String>>>,
    /// Task comm (spoofable: warned about).
    pub comm: Option<Box<Spanned<String>>>,
    /// Pods of a namespace whose name starts with a prefix: `"<namespace>/<prefix>"`.
    pub pod: Option<Box<Spanned<String>>>,
    /// Every pod of a namespace.
    pub namespace: Option<Box<Spanned<String>>>,
    /// With `pod` or `namespace`: only this container of the selected pods.
    pub container: Option<Box<Spanned<String>>>,
    /// This workload's tokenless (IMDSv1) requests: `"allow"`, `"log"` or `"deny"`.
    pub imdsv1: Option<Box<Spanned<String>>>,
    /// What this workload may read: `"all"` (default), `"no-secrets"`, or a list of path prefixes.
    pub read: Option<Box<Spanned<ReadSpec>>>,
}

/// `read = "<class>"` or `read = ["/path/prefix/", ...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadSpec {
    Class(String),
    Prefixes(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for ReadSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ReadSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"all\", \"no-secrets\", \"none\" or a list of path prefixes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ReadSpec, E> {
                Ok(ReadSpec::Class(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<ReadSpec, A::Error> {
                let mut v = Vec::new();
                while let Some(p) = seq.next_element::<Spanned<String>>()? {
                    v.push(p);
                }
                Ok(ReadSpec::Prefixes(v))
            }
        }
        d.deserialize_any(V)
    }
}
