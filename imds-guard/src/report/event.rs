//! Everything imds-guard reports, as one typed [`Event`], from the kernel record (or the daemon,
//! or the netfilter log) to the sinks. Consumers match on the variants; the JSON line is made
//! once, at the edge ([`super::Line`]). docs/EVENTS.md documents every field (a test holds the
//! daemon's output to it).

use serde::{Deserialize, Deserializer, Serialize, Serializer, de::DeserializeOwned};

/// Version of the event schema (docs/EVENTS.md).
pub const SCHEMA_VERSION: u32 = 1;

/// One event. Serialised with its name as `event` (`"connect_denied"`, ...); [`Stamped`] adds
/// `schema` in front.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Once, when the programs are attached and the policy is live.
    GuardStarted(GuardStarted),
    /// A connect to a metadata endpoint that no rule allows.
    ConnectDenied(Connect),
    /// A request without the token header (IMDSv1).
    Imdsv1Request(Request),
    /// A token PUT carrying `X-Forwarded-For`.
    TokenPutForwarded(Request),
    /// A request too long to classify (treated like IMDSv1).
    ImdsRequestUnclassified(Request),
    /// A request the workload may not read (`read = "no-secrets"`): refused, or reported only in
    /// monitor mode.
    RequestDenied(Request),
    /// A process received credentials from a metadata endpoint.
    CredentialsFetched(Credentials),
    /// A forwarded packet to an endpoint (no local socket behind it).
    ForwardDenied(Packet),
    /// Reduced mode: a packet of a local process that no uid/gid rule allows.
    OutputDenied(Packet),
    /// A connection to an endpoint that was open before the daemon started.
    PreexistingConnection(Preexisting),
    PolicyReloaded(PolicyReloaded),
    PolicyReloadFailed(PolicyReloadFailed),
    PinsLost(PinsLost),
    PinsRestored(PinsRestored),
    ProgramsDetached(ProgramsDetached),
    ConnectionsUninspected(ConnectionsUninspected),
    /// On the event socket: a follower too slow to keep up missed this many events.
    StreamLagged(StreamLagged),
    /// Identical repeats of a violation within the aggregation window, counted.
    ConnectDeniedRepeated(Repeated<Connect>),
    Imdsv1RequestRepeated(Repeated<Request>),
    TokenPutForwardedRepeated(Repeated<Request>),
    ImdsRequestUnclassifiedRepeated(Repeated<Request>),
    RequestDeniedRepeated(Repeated<Request>),
    CredentialsFetchedRepeated(Repeated<Credentials>),
    ForwardDeniedRepeated(Repeated<Packet>),
    OutputDeniedRepeated(Repeated<Packet>),
}

/// An event as written: `{"schema": 1, "event": ..., ...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stamped {
    pub schema: u32,
    #[serde(flatten)]
    pub event: Event,
}

impl Event {
    /// The event's name, as `event` spells it.
    #[must_use]
    pub const fn name(&self) -> &'static str {
        match self {
            Event::GuardStarted(_) => "guard_started",
            Event::ConnectDenied(_) => "connect_denied",
            Event::Imdsv1Request(_) => "imdsv1_request",
            Event::TokenPutForwarded(_) => "token_put_forwarded",
            Event::ImdsRequestUnclassified(_) => "imds_request_unclassified",
            Event::RequestDenied(_) => "request_denied",
            Event::CredentialsFetched(_) => "credentials_fetched",
            Event::ForwardDenied(_) => "forward_denied",
            Event::OutputDenied(_) => "output_denied",
            Event::PreexistingConnection(_) => "preexisting_connection",
            Event::PolicyReloaded(_) => "policy_reloaded",
            Event::PolicyReloadFailed(_) => "policy_reload_failed",
            Event::PinsLost(_) => "pins_lost",
            Event::PinsRestored(_) => "pins_restored",
            Event::ProgramsDetached(_) => "programs_detached",
            Event::ConnectionsUninspected(_) => "connections_uninspected",
            Event::StreamLagged(_) => "stream_lagged",
            Event::ConnectDeniedRepeated(_) => "connect_denied_repeated",
            Event::Imdsv1RequestRepeated(_) => "imdsv1_request_repeated",
            Event::TokenPutForwardedRepeated(_) => "token_put_forwarded_repeated",
            Event::ImdsRequestUnclassifiedRepeated(_) => "imds_request_unclassified_repeated",
            Event::RequestDeniedRepeated(_) => "request_denied_repeated",
            Event::CredentialsFetchedRepeated(_) => "credentials_fetched_repeated",
            Event::ForwardDeniedRepeated(_) => "forward_denied_repeated",
            Event::OutputDeniedRepeated(_) => "output_denied_repeated",
        }
    }

    /// With `schema`, for writing out.
    #[must_use]
    pub const fn stamped(self) -> Stamped {
        Stamped { schema: SCHEMA_VERSION, event: self }
    }

    /// A violation or a finding (counted in metrics, a warning in the journal), repeated or not.
    #[must_use]
    pub const fn is_violation(&self) -> bool {
        !matches!(
            self,
            Event::GuardStarted(_)
                | Event::PreexistingConnection(_)
                | Event::PolicyReloaded(_)
                | Event::PolicyReloadFailed(_)
                | Event::PinsLost(_)
                | Event::PinsRestored(_)
                | Event::ProgramsDetached(_)
                | Event::ConnectionsUninspected(_)
                | Event::StreamLagged(_)
                | Event::CredentialsFetched(_)
                | Event::CredentialsFetchedRepeated(_)
        )
    }

    /// Written out as one of the kernel's events (a violation, a finding, credentials fetched):
    /// counted in the metrics' `events_delivered`.
    #[must_use]
    pub const fn from_kernel_or_netfilter(&self) -> bool {
        self.is_violation()
            || matches!(self, Event::CredentialsFetched(_) | Event::CredentialsFetchedRepeated(_))
    }

    /// The process an event names, when it names one (a repeat's without pid and executable).
    #[must_use]
    pub const fn who(&self) -> Option<&Who> {
        match self {
            Event::ConnectDenied(c) => Some(&c.who),
            Event::ConnectDeniedRepeated(r) => Some(&r.sample.who),
            Event::Imdsv1Request(r)
            | Event::TokenPutForwarded(r)
            | Event::ImdsRequestUnclassified(r)
            | Event::RequestDenied(r) => Some(&r.who),
            Event::Imdsv1RequestRepeated(r)
            | Event::TokenPutForwardedRepeated(r)
            | Event::ImdsRequestUnclassifiedRepeated(r)
            | Event::RequestDeniedRepeated(r) => Some(&r.sample.who),
            Event::CredentialsFetched(c) => Some(&c.who),
            Event::CredentialsFetchedRepeated(r) => Some(&r.sample.who),
            _ => None,
        }
    }

    /// This event's summary after `count` repeats within `window_s` seconds (its `_repeated`
    /// variant), or `None` for an event that is not aggregated.
    #[must_use]
    pub fn repeated(&self, count: u64, window_s: f64) -> Option<Event> {
        fn r<T: Clone>(sample: &T, time: &str, count: u64, window_s: f64) -> Repeated<T> {
            Repeated { sample: sample.clone(), count, first_time: time.to_owned(), window_s }
        }
        Some(match self {
            Event::ConnectDenied(c) => Event::ConnectDeniedRepeated(r(c, &c.time, count, window_s)),
            Event::Imdsv1Request(q) => Event::Imdsv1RequestRepeated(r(q, &q.time, count, window_s)),
            Event::TokenPutForwarded(q) => Event::TokenPutForwardedRepeated(r(q, &q.time, count, window_s)),
            Event::RequestDenied(q) => Event::RequestDeniedRepeated(r(q, &q.time, count, window_s)),
            Event::ImdsRequestUnclassified(q) => {
                Event::ImdsRequestUnclassifiedRepeated(r(q, &q.time, count, window_s))
            }
            Event::CredentialsFetched(c) => Event::CredentialsFetchedRepeated(r(c, &c.time, count, window_s)),
            Event::ForwardDenied(p) => Event::ForwardDeniedRepeated(r(p, &p.time, count, window_s)),
            Event::OutputDenied(p) => Event::OutputDeniedRepeated(r(p, &p.time, count, window_s)),
            _ => return None,
        })
    }

    /// When it happened (a summary: its first occurrence), for the events that say.
    #[must_use]
    pub fn time(&self) -> Option<&str> {
        match self {
            Event::ConnectDenied(c) => Some(&c.time),
            Event::Imdsv1Request(r)
            | Event::TokenPutForwarded(r)
            | Event::ImdsRequestUnclassified(r)
            | Event::RequestDenied(r) => Some(&r.time),
            Event::ForwardDenied(p) | Event::OutputDenied(p) => Some(&p.time),
            Event::CredentialsFetched(c) => Some(&c.time),
            Event::CredentialsFetchedRepeated(r) => Some(&r.first_time),
            Event::ConnectDeniedRepeated(r) => Some(&r.first_time),
            Event::Imdsv1RequestRepeated(r)
            | Event::TokenPutForwardedRepeated(r)
            | Event::ImdsRequestUnclassifiedRepeated(r)
            | Event::RequestDeniedRepeated(r) => Some(&r.first_time),
            Event::ForwardDeniedRepeated(r) | Event::OutputDeniedRepeated(r) => Some(&r.first_time),
            _ => None,
        }
    }

    /// A `<event>_repeated` summary of repeats.
    #[must_use]
    pub const fn is_summary(&self) -> bool {
        matches!(
            self,
            Event::ConnectDeniedRepeated(_)
                | Event::Imdsv1RequestRepeated(_)
                | Event::TokenPutForwardedRepeated(_)
                | Event::ImdsRequestUnclassifiedRepeated(_)
                | Event::RequestDeniedRepeated(_)
                | Event::CredentialsFetchedRepeated(_)
                | Event::ForwardDeniedRepeated(_)
                | Event::OutputDeniedRepeated(_)
        )
    }

    /// How many occurrences the event stands for: a repeat's count, else 1.
    #[must_use]
    pub const fn occurrences(&self) -> u64 {
        match self {
            Event::ConnectDeniedRepeated(r) => r.count,
            Event::Imdsv1RequestRepeated(r)
            | Event::TokenPutForwardedRepeated(r)
            | Event::ImdsRequestUnclassifiedRepeated(r)
            | Event::RequestDeniedRepeated(r) => r.count,
            Event::CredentialsFetchedRepeated(r) => r.count,
            Event::ForwardDeniedRepeated(r) | Event::OutputDeniedRepeated(r) => r.count,
            _ => 1,
        }
    }
}

/// The process behind an event, as the kernel saw it plus what /proc and the cgroup tree add.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Who {
    // `default`: a repeat's summary leaves them out.
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    pub comm: String,
    /// The running executable (`/proc/<pid>/exe`), when the process still exists.
    #[serde(default)]
    pub exe: Option<String>,
    /// The process's cgroup, relative to the cgroup2 root.
    pub cgroup: Option<String>,
    pub cgroup_id: u64,
    /// The systemd unit the cgroup belongs to (`foo.service`, `session-3.scope`), from the names
    /// above any delegation only: below `user@1000.service`, that is the unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The uid the cgroup (or an ancestor) is delegated to, which names the cgroups below the
    /// delegation as it likes: `unit`, `container_id` and `pod` come from above it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegated_to: Option<u32>,
    /// The container's id, when the cgroup is a container's (containerd, CRI-O, Docker, Podman).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_runtime: Option<crate::host::workload::Runtime>,
    /// The Kubernetes pod, named from kubelet's log directories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
    /// Parent, grandparent, ... (up to 4), as the kernel saw them at the event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<Ancestor>,
}

impl Who {
    /// The strongest identity, as one short string: `pod:<namespace>/<name>`, `unit:<unit>`,
    /// `container:<id, 12 characters>`, `exe:<path>` (not one with a name the kernel cut, `…`:
    /// it names no file), else `uid:<uid>`. The metrics' `workload` label, and how `suggest`
    /// groups what it saw.
    #[must_use]
    pub fn workload(&self) -> String {
        if let Some(p) = &self.pod {
            return format!("pod:{}/{}", p.namespace, p.name);
        }
        if let Some(unit) = &self.unit {
            return format!("unit:{unit}");
        }
        if let Some(id) = &self.container_id {
            return format!("container:{}", id.chars().take(12).collect::<String>());
        }
        if let Some(exe) = self.exe.as_deref().filter(|e| !e.contains('…')) {
            return format!("exe:{}", exe.strip_suffix(" (deleted)").unwrap_or(exe));
        }
        format!("uid:{}", self.uid)
    }
}

/// A Kubernetes pod (and container) on this node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The container's name, when the cgroup is a container's and kubelet has its log link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// One ancestor: pid and comm recorded by the kernel at the event; the executable from /proc when
/// that pid still runs a task of that name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ancestor {
    pub pid: u32,
    pub comm: String,
    pub exe: Option<String>,
}

/// `connect_denied`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Connect {
    /// True when the connect was refused; false in monitor mode (let through, reported).
    pub enforced: bool,
    #[serde(default)]
    pub time: String,
    #[serde(flatten)]
    pub who: Who,
    pub dst: String,
    pub port: u16,
    pub family: String,
    pub generation: u32,
    /// Why a rule that matched did not admit the connect: `"traced"` (the process is being
    /// traced and the rule rests on `exe`, `cgroup` or `comm`) or `"uninspectable"` (an MPTCP
    /// socket, whose requests cannot be inspected, for an `imdsv1 = "deny"` workload). Absent when
    /// no rule matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The `[[allow]]` table (0-based) that matched, with `reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
}

/// `imdsv1_request`, `token_put_forwarded` and `imds_request_unclassified`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// True when the request was refused (the workload's `imdsv1 = "deny"`): the write failed
    /// and nothing reached the metadata service.
    pub enforced: bool,
    #[serde(default)]
    pub time: String,
    /// pid, tid, uid, gid and user of the process that wrote the request; comm and cgroup of the
    /// process that connected.
    #[serde(flatten)]
    pub who: Who,
    /// HTTP method and path (the path is cut at 96 bytes).
    pub method: Option<String>,
    pub path: Option<String>,
    /// The request asks for IAM role credentials.
    pub credentials: bool,
    pub dst: String,
    pub port: u16,
    pub family: String,
    /// The `[[allow]]` rule (0-based) that let the connection through; absent in monitor mode
    /// when no rule matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    pub generation: u32,
    /// Only on `imds_request_unclassified`: why the write was not classified — `"oversized"` (a
    /// header block over 8192 bytes, or a write over 4096), `"not_http"` (not an HTTP request
    /// line) or `"trailing"` (bytes after the request's header block in the same write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unclassified: Option<String>,
    /// Only on `request_denied`: what the path reads that the workload may not —
    /// `"role-credentials"`, `"identity-credentials"`, `"user-data"`, or `"unreadable-path"` (not
    /// proven harmless: percent-encoded, dot or empty segments, longer than 96 bytes, a request
    /// line split across writes, not HTTP, or a second request in the same write).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Only on `request_denied`, `true` when the request carried no session token: it is also an
    /// IMDSv1 request, reported as this one event.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tokenless: bool,
    /// Only on `request_denied`, `"uninspected"`: bytes the message hook did not see were
    /// queued on a connection whose requests must all be inspected (written while the handshake
    /// was in flight, past the hook). They reached the service, but its responses on the
    /// connection are withheld from the process from then on (`enforced`); no method or path.
    /// The process is the one that connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `credentials_fetched`: a process received credentials from a metadata endpoint (the access key
/// id and the expiry the response named; never the secret access key or the session token).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Credentials {
    #[serde(default)]
    pub time: String,
    /// pid, tid, uid, gid and user of the process that wrote the request; comm and cgroup of the
    /// process that connected (as for request events).
    #[serde(flatten)]
    pub who: Who,
    /// `"instance_role"` (`/<version>/meta-data/iam/security-credentials/<role>`),
    /// `"instance_identity"` (`.../identity-credentials/ec2/security-credentials/ec2-instance`) or
    /// `"other"` (another path: a container credentials endpoint, an unusual spelling).
    pub source: String,
    /// The role, for `instance_role` (`…` at the end when the path was cut).
    pub role: Option<String>,
    /// The request path as written, cut at 128 bytes; `None` when it was not read as one.
    pub path: Option<String>,
    /// The access key id the response named (`…` at the end when the kernel could not keep it
    /// whole: 128 bytes for it and the expiry).
    pub access_key_id: String,
    /// The credentials' `Expiration` (`None` when the response ended before it).
    pub expiration: Option<String>,
    /// The response's JSON document was read to its end.
    pub complete: bool,
    pub dst: String,
    pub port: u16,
    pub family: String,
    /// The `[[allow]]` rule (0-based) that let the connection through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    pub generation: u32,
}

/// `forward_denied` (forwarded, no local socket) and `output_denied` (reduced mode: sent by a
/// local process that no uid/gid rule allows).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Packet {
    /// True: dropped (forward) or refused (output); false: monitor mode, let through.
    pub enforced: bool,
    #[serde(default)]
    pub time: String,
    pub src: String,
    pub dst: String,
    pub port: u16,
    /// `"tcp"`, `"udp"`, or the IP protocol number as a string.
    pub protocol: String,
    pub family: String,
    /// The interface the forwarded packet came in on; absent for output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_interface: Option<String>,
    /// Output: the socket owner's uid and gid, and the user's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The policy generation whose rules refused it.
    pub generation: u32,
}

/// `preexisting_connection`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Preexisting {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub cgroup: String,
    pub dst: String,
    pub port: u16,
    /// `ESTABLISHED` or `SYN_SENT`.
    pub state: String,
    /// Whether the enforced policy would let this process connect now.
    pub allowed: bool,
    /// Whether imds-guard reset the connection (`preexisting = "close"`, enforce mode, and some
    /// process that holds it is denied).
    pub closed: bool,
    /// Why resetting it failed, when it was tried and failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_error: Option<String>,
}

/// `guard_started`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GuardStarted {
    /// `attached`, `adopted` or `not_attached`.
    pub attachment: String,
    pub mode: String,
    pub generation: u32,
    pub policy: String,
    pub policy_digest: String,
    pub rules: usize,
    pub cgroup: String,
    pub pin_dir: String,
    pub metrics: Option<String>,
    pub events_socket: Option<String>,
    /// `cgroup` or `reduced`.
    pub enforcement: String,
    pub netfilter: NetfilterSummary,
    /// What this kernel makes the guard run without (empty: nothing).
    #[serde(default)]
    pub degraded: Vec<DegradedPart>,
    /// How the message hook is attached: `link` (Linux 6.10+) or `map`; `None` without it.
    #[serde(default)]
    pub msg_attach: Option<String>,
    /// What processes no table admits read beyond the harmless facts is reported while monitor
    /// mode lets them through (`request_denied`, not enforced): `suggest` proposes each table's
    /// `read` from it. `false` without the message hook, and in events of earlier versions.
    #[serde(default)]
    pub reports_reads: bool,
}

/// A part of the guard the kernel lacks the means for (in `guard_started` and `status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DegradedPart {
    /// `imdsv1_inspection`.
    pub feature: String,
    /// The kernel features it lacks (`sk_msg`, `sockhash`, `sockops`).
    pub missing: Vec<String>,
    /// One sentence: what is off, why, and what still runs.
    pub reason: String,
}

/// What the nftables table of the daemon's network namespace does (in `guard_started`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetfilterSummary {
    /// `"inet imds_guard"`, or `None` when there is no table.
    pub table: Option<String>,
    pub forward: bool,
    pub reduced: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nflog_group: Option<u16>,
    /// In reduced mode: the tables (or IMDSv1 treatments) it cannot enforce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_enforced: Option<Vec<NotEnforced>>,
}

/// A rule reduced mode cannot enforce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotEnforced {
    pub rule: u32,
    pub name: String,
    pub reason: String,
}

/// `policy_reloaded`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyReloaded {
    /// `sighup`, `file_changed` or `identity_changed`.
    pub reason: String,
    pub generation: u32,
    pub mode: String,
    pub policy_digest: String,
    pub rules: usize,
    pub elapsed_us: u64,
    pub enforced_us: u64,
    pub reloads: u64,
    pub reload_failures: u64,
}

/// `policy_reload_failed`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyReloadFailed {
    pub generation: u32,
    pub error: String,
    pub reloads: u64,
    pub reload_failures: u64,
}

/// `pins_lost`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PinsLost {
    pub pin_dir: String,
    pub pins: Vec<String>,
    pub enforcing: bool,
    pub error: String,
}

/// `pins_restored`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PinsRestored {
    pub pin_dir: String,
    pub pins: Vec<String>,
    pub enforcing: bool,
}

/// `programs_detached`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProgramsDetached {
    pub pin_dir: String,
    pub links: Vec<String>,
    pub enforcing: bool,
}

/// `connections_uninspected`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectionsUninspected {
    pub count: u64,
    pub total: u64,
    pub capacity: u32,
    /// Why the message hook does not see them: `"table_full"` (the sockhash holds `capacity`
    /// connections) or `"unsupported_socket"` (a socket the sockhash does not take: an MPTCP
    /// subflow).
    #[serde(default = "table_full")]
    pub cause: String,
}

fn table_full() -> String {
    "table_full".to_owned()
}

/// `stream_lagged`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamLagged {
    pub missed: u64,
}

/// `<event>_repeated`: the first occurrence's fields without `pid`, `tid`, `time` and `exe`, and
/// how many repeats followed it within the window.
#[derive(Clone, Debug, PartialEq)]
pub struct Repeated<T> {
    pub sample: T,
    pub count: u64,
    /// `time` of the first occurrence.
    pub first_time: String,
    pub window_s: f64,
}

/// Fields of a first occurrence that differ between its repeats, left out of the summary.
const VOLATILE: [&str; 4] = ["pid", "tid", "time", "exe"];

impl<T: Serialize> Serialize for Repeated<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        // Once per aggregation window, never per event: through a JSON object is fine.
        let mut v = serde_json::to_value(&self.sample).map_err(S::Error::custom)?;
        let o = v.as_object_mut().ok_or_else(|| S::Error::custom("an event is an object"))?;
        for k in VOLATILE {
            o.remove(k);
        }
        o.insert("count".into(), self.count.into());
        o.insert("first_time".into(), self.first_time.clone().into());
        o.insert("window_s".into(), self.window_s.into());
        v.serialize(s)
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Repeated<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let mut o = serde_json::Map::deserialize(d)?;
        let count =
            o.remove("count").and_then(|v| v.as_u64()).ok_or_else(|| D::Error::missing_field("count"))?;
        let first_time =
            o.remove("first_time").and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        let window_s = o.remove("window_s").and_then(|v| v.as_f64()).unwrap_or_default();
        let sample = serde_json::from_value(serde_json::Value::Object(o)).map_err(D::Error::custom)?;
        Ok(Repeated { sample, count, first_time, window_s })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect() -> Connect {
        Connect {
            enforced: true,
            time: "2026-11-23T20:04:05.123456Z".into(),
            who: Who {
                pid: 4242,
                tid: 4242,
                uid: 1000,
                gid: 1000,
                user: Some("alice".into()),
                comm: "curl".into(),
                exe: Some("/usr/bin/curl".into()),
                cgroup: Some("/user.slice/user-1000.slice/session-3.scope".into()),
                cgroup_id: 8812,
                ..Who::default()
            },
            dst: "169.254.169.254".into(),
            port: 80,
            family: "ipv4".into(),
            generation: 1,
            reason: None,
            rule: None,
        }
    }

    #[test]
    fn lines_carry_schema_and_name_and_read_back() {
        let ev = Event::ConnectDenied(connect());
        let json = serde_json::to_string(&ev.clone().stamped()).unwrap();
        assert!(json.starts_with(r#"{"schema":1,"event":"connect_denied","enforced":true,"#), "{json}");
        assert!(json.contains(r#""exe":"/usr/bin/curl""#), "{json}");
        let back: Stamped = serde_json::from_str(&json).unwrap();
        assert_eq!(back.event, ev);
        assert_eq!(back.event.name(), "connect_denied");
    }

    #[test]
    fn a_repeat_summary_drops_what_varies_and_reads_back() {
        let ev = Event::ConnectDenied(connect());
        let rep = ev.repeated(41, 10.0).unwrap();
        assert_eq!(rep.name(), "connect_denied_repeated");
        assert_eq!(rep.occurrences(), 41);
        let v = serde_json::to_value(rep.clone().stamped()).unwrap();
        for k in VOLATILE {
            assert!(v.get(k).is_none(), "{k}: {v}");
        }
        assert_eq!(
            (v["count"].as_u64(), v["first_time"].as_str()),
            (Some(41), Some("2026-11-23T20:04:05.123456Z"))
        );
        let back: Stamped = serde_json::from_value(v).unwrap();
        let Event::ConnectDeniedRepeated(r) = back.event else { panic!("{back:?}") };
        assert_eq!((r.count, r.sample.who.uid, r.sample.who.exe), (41, 1000, None));
        assert!(
            Event::PolicyReloadFailed(PolicyReloadFailed {
                generation: 1,
                error: String::new(),
                reloads: 0,
                reload_failures: 1
            })
            .repeated(1, 1.0)
            .is_none()
        );
    }

    #[test]
    fn workload_names_the_strongest_identity() {
        let mut w = connect().who;
        assert_eq!(w.workload(), "exe:/usr/bin/curl");
        w.exe = Some("/tmp/x/a-name-the-kernel-cut-at-thirty-one-b…".into());
        assert_eq!(w.workload(), "uid:1000", "a cut path names no file");
        w.container_id = Some("é".repeat(20));
        assert_eq!(w.workload(), format!("container:{}", "é".repeat(12)));
        w.unit = Some("kubelet.service".into());
        assert_eq!(w.workload(), "unit:kubelet.service");
    }
}
