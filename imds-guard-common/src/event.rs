//! Events the kernel programs write to the ring buffer. Every event starts with a `u32` kind.

use crate::rule::COMM_LEN;

/// Bytes of the stream of kept values ([`crate::creds::mark`]): an access key id (16 to 128
/// characters, 20 in practice) and an expiry (`2026-12-03T20:15:31Z`) with their marks fit about
/// three times.
pub const VALUES_MAX: usize = 128;
/// Bytes of the request path kept beyond `http::PATH_MAX` (the message hook copies them), so
/// that a role name of the longest kind (64 characters) after a dated version is whole.
pub const PATH_TAIL: usize = 32;
/// Bytes of the request path an event carries.
pub const EVENT_PATH_MAX: usize = crate::http::PATH_MAX + PATH_TAIL;

pub mod kind {
    /// A connect() to a metadata endpoint that matched no allow rule ([`super::ConnectEvent`]).
    pub const CONNECT_DENIED: u32 = 1;
    /// A request to a metadata endpoint worth reporting ([`super::RequestEvent`]).
    pub const IMDS_REQUEST: u32 = 2;
    /// A response that carried credentials to a process ([`super::CredentialsEvent`]).
    pub const CREDENTIALS_FETCHED: u32 = 3;
}

pub mod flags {
    /// The connect was refused (enforce mode); otherwise it was let through (monitor mode).
    pub const ENFORCED: u32 = 1 << 0;
    /// Connect: a rule matched, but it rests on `exe`, `cgroup` or `comm` and the process is being
    /// traced (ptrace): what the rule vouches for may be a debugger's code. Refused.
    pub const TRACED: u32 = 1 << 1;
    /// Connect: a rule matched, but the socket is one the message hook cannot inspect (an MPTCP
    /// subflow) and the workload's treatment needs inspection (`imdsv1 = "deny"`). Refused.
    pub const UNINSPECTABLE: u32 = 1 << 2;
    /// Connect-denied event from the message hook: a process the policy does not admit wrote on
    /// a connection another identity made (a socket passed over `SCM_RIGHTS`, inherited across
    /// `fork`/`exec`, or kept across `setuid`). The write was refused (with [`ENFORCED`]).
    pub const HANDED_OVER: u32 = 1 << 3;
    /// Not a connect: a raw IPv4/IPv6 socket (`raw_sockets = "deny"`), refused with EPERM at
    /// `socket()` (with [`ENFORCED`]). No destination: port and address are zero.
    pub const RAW_SOCKET: u32 = 1 << 4;
    /// Request: refused because the workload may not read its path (`read = "no-secrets"`); the
    /// class is in [`super::RequestEvent::read_class`] (with [`ENFORCED`] when refused).
    pub const READ_DENIED: u32 = 1 << 5;
    /// Request: bytes were queued on a connection whose requests must all be inspected that the
    /// message hook did not see (written while the handshake was in flight); its responses are
    /// withheld from then on (with [`ENFORCED`]; only reported in monitor mode). No method or
    /// path: nothing of the request was read. See [`crate::sock::Guard`].
    pub const UNINSPECTED: u32 = 1 << 6;
}

/// Ancestors recorded with each event (parent, grandparent, ...).
pub const ANCESTORS: usize = 4;

/// One ancestor of the reporting process, read in the kernel at the event, so that a process that
/// has exited by the time the daemon looks is still placed in its tree.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ancestor {
    /// Thread group id; 0 for "none" (the chain ended, or it could not be read).
    pub pid: u32,
    pub comm: [u8; COMM_LEN],
}

/// Path components of the executable recorded with each event, and their length (longer names
/// are cut).
pub const EXE_COMPONENTS: usize = 8;
pub const COMPONENT_LEN: usize = 32;

/// What the kernel knows about the process at the event and may be gone later: its executable's
/// device and inode (0 when unknown), the executable's path within its filesystem (the last
/// [`EXE_COMPONENTS`] names, leaf first, read from the dentries), and its ancestry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskInfo {
    pub exe_dev: u64,
    pub exe_ino: u64,
    pub ancestors: [Ancestor; ANCESTORS],
    /// Number of `exe_names` filled; `EXE_COMPONENTS + 1` when the path was deeper (cut at the top).
    pub exe_depth: u32,
    pub _pad: u32,
    pub exe_names: [[u8; COMPONENT_LEN]; EXE_COMPONENTS],
}

impl Default for TaskInfo {
    fn default() -> Self {
        TaskInfo {
            exe_dev: 0,
            exe_ino: 0,
            ancestors: [Ancestor::default(); ANCESTORS],
            exe_depth: 0,
            _pad: 0,
            exe_names: [[0; COMPONENT_LEN]; EXE_COMPONENTS],
        }
    }
}

pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectEvent {
    /// [`kind::CONNECT_DENIED`].
    pub kind: u32,
    /// [`flags`].
    pub flags: u32,
    /// `bpf_ktime_get_boot_ns()` at the connect.
    pub time_boot_ns: u64,
    /// `bpf_get_current_pid_tgid()`: tgid (the process id) in the high half, thread id in the low.
    pub pid_tgid: u64,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
    /// Address family of the destination as given: [`AF_INET`], or [`AF_INET6`] (which includes
    /// IPv4-mapped addresses on an IPv6 socket).
    pub family: u32,
    /// Destination port, host byte order.
    pub port: u32,
    /// Destination address as given to connect(): the first 4 bytes for IPv4, all 16 for IPv6.
    pub addr: [u8; 16],
    /// Policy generation that judged the connect.
    pub generation: u32,
    /// The `[[allow]]` table that matched but could not admit the connect ([`flags::TRACED`],
    /// [`flags::UNINSPECTABLE`]); [`crate::sock::NO_RULE`] when none matched.
    pub rule_index: u32,
    pub task: TaskInfo,
}

impl ConnectEvent {
    #[must_use]
    pub const fn tgid(&self) -> u32 {
        (self.pid_tgid >> 32) as u32
    }

    #[must_use]
    pub const fn tid(&self) -> u32 {
        self.pid_tgid as u32
    }

    #[must_use]
    pub const fn enforced(&self) -> bool {
        self.flags & flags::ENFORCED != 0
    }
}

/// A request written to a metadata endpoint that is reported: tokenless (IMDSv1), a token PUT with
/// X-Forwarded-For, or one too long to classify.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RequestEvent {
    /// [`kind::IMDS_REQUEST`].
    pub kind: u32,
    /// [`flags::ENFORCED`] when the request was refused.
    pub flags: u32,
    pub time_boot_ns: u64,
    /// The process that wrote the request.
    pub pid_tgid: u64,
    pub uid: u32,
    pub gid: u32,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
    pub family: u32,
    pub port: u32,
    pub addr: [u8; 16],
    pub generation: u32,
    /// [`crate::http::Finding`] as u32.
    pub finding: u32,
    /// [`crate::http::method`].
    pub method: u32,
    pub path_len: u32,
    /// The `[[allow]]` rule that let the connection through, or [`crate::sock::NO_RULE`].
    pub rule_index: u32,
    /// With [`flags::READ_DENIED`]: the [`crate::path::class`] the path was refused as.
    pub read_class: u32,
    pub task: TaskInfo,
    pub path: [u8; crate::http::PATH_MAX],
}

/// Credentials a metadata endpoint sent to a process: who asked (the process that wrote the
/// request, as [`RequestEvent`] names it), for what (the request path), and what the response
/// named: the access key id and the expiry, read in the kernel ([`crate::creds`]). Never the
/// secret access key or the session token.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CredentialsEvent {
    /// [`kind::CREDENTIALS_FETCHED`].
    pub kind: u32,
    /// [`crate::creds::flag`]s.
    pub flags: u32,
    /// When the response was read (or, for one that did not end, when that was found).
    pub time_boot_ns: u64,
    /// The process that wrote the request.
    pub pid_tgid: u64,
    pub uid: u32,
    pub gid: u32,
    /// The cgroup and comm of the process that connected (as [`RequestEvent`]).
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
    pub family: u32,
    /// Destination port, host byte order.
    pub port: u32,
    pub addr: [u8; 16],
    pub generation: u32,
    pub rule_index: u32,
    /// Bytes of `path` kept, and bytes the request path had (more: it was cut).
    pub path_len: u32,
    pub path_bytes: u32,
    /// Bytes of `values` written.
    pub values_len: u32,
    pub _pad: u32,
    pub task: TaskInfo,
    pub path: [u8; EVENT_PATH_MAX],
    /// The access key id and the expiry, as the scanner kept them ([`crate::creds::mark`],
    /// read back with [`crate::creds::values`]).
    pub values: [u8; VALUES_MAX],
}

/// One ring buffer record, read once: the daemon decides from it whether it repeats an earlier
/// event and, if not, reports it.
#[derive(Clone, Copy, Debug)]
pub enum Record {
    Connect(ConnectEvent),
    Request(RequestEvent),
    Credentials(CredentialsEvent),
}

impl Record {
    /// Reads a record by its `kind`; `None` for an unknown kind or a record too short for it.
    #[must_use]
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let k = u32::from_ne_bytes([*bytes.first()?, *bytes.get(1)?, *bytes.get(2)?, *bytes.get(3)?]);
        match k {
            kind::CONNECT_DENIED if bytes.len() >= size_of::<ConnectEvent>() => {
                // SAFETY: ConnectEvent is repr(C) plain data and the record is at least that long.
                Some(Record::Connect(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) }))
            }
            kind::IMDS_REQUEST if bytes.len() >= size_of::<RequestEvent>() => {
                // SAFETY: as above, for RequestEvent.
                Some(Record::Request(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) }))
            }
            kind::CREDENTIALS_FETCHED if bytes.len() >= size_of::<CredentialsEvent>() => {
                // SAFETY: as above, for CredentialsEvent.
                Some(Record::Credentials(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast()) }))
            }
            _ => None,
        }
    }
}

impl CredentialsEvent {
    /// The record's bytes, as the kernel writes them (for tests of the readers).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: repr(C) plain data without padding bytes (every gap is an explicit field).
        unsafe { core::slice::from_raw_parts(core::ptr::from_ref(self).cast::<u8>(), size_of::<Self>()) }
    }
}

impl ConnectEvent {
    /// The record's bytes, as the kernel writes them (for tests of the readers).
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: repr(C) plain data without padding bytes (every gap is an explicit field).
        unsafe { core::slice::from_raw_parts(core::ptr::from_ref(self).cast::<u8>(), size_of::<Self>()) }
    }
}
