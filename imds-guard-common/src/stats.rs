//! Kernel-side counters, one `u64` per CPU per [`Stat`], summed by userspace.

#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// connect() calls to a metadata endpoint that the programs judged.
    MetadataConnects = 0,
    /// ...allowed by a rule.
    Allowed = 1,
    /// ...refused with EPERM (enforce mode).
    Denied = 2,
    /// ...matching no rule but let through because the policy is in monitor mode.
    Monitored = 3,
    /// Events that could not be written because the ring buffer was full.
    EventsDropped = 4,
    /// Events written to the ring buffer.
    EventsSent = 5,
    /// Tokenless (IMDSv1) requests seen.
    Imdsv1Requests = 6,
    /// ...of which refused (the workload's `imdsv1 = "deny"`).
    Imdsv1Denied = 7,
    /// Token PUTs carrying X-Forwarded-For.
    TokenPutForwarded = 8,
    /// Requests that could not be classified (header block too long): treated like IMDSv1.
    Unclassified = 9,
    /// Connections to a metadata endpoint that could not be put into the sockhash (full), so
    /// that nothing written on them is classified or refused.
    ConnectionsUninspected = 10,
    /// Connects a rule matched but refused because the process was being traced (ptrace) and the
    /// rule rests on `exe`, `cgroup` or `comm` (also counted in `Denied`).
    DeniedTraced = 11,
    /// Connects a rule matched but refused because the socket cannot be inspected (MPTCP, TCP Fast
    /// Open) and the workload's treatment needs inspection (also counted in `Denied`).
    DeniedUninspectable = 12,
    /// Connections to a metadata endpoint the sockhash refused as a kind of socket it cannot hold
    /// (an MPTCP subflow), not for want of room: not inspected either.
    ConnectionsUnsupported = 13,
    /// Writes refused because the writer, not the process that connected, is not admitted (a
    /// socket handed over `SCM_RIGHTS`, inherited, or kept across `setuid`).
    WritesDeniedHandedOver = 14,
    /// Raw IPv4/IPv6 sockets refused to processes no table admits (`raw_sockets = "deny"`).
    RawSocketsDenied = 15,
    /// Requests refused because the workload may not read that path (`read = "no-secrets"`: a
    /// secret, or a path not proven harmless).
    RequestsDenied = 16,
    /// Responses that carried role credentials to a process, reported (`credentials_fetched`).
    CredentialsFetched = 17,
    /// Requests for credentials whose response could not be watched (the table of watched
    /// responses was full): the process that fetched them is not named.
    CredentialsUnwatched = 18,
    /// Response segments withheld from a connection whose requests must all be inspected, because
    /// bytes the message hook did not see were queued on it (written while the handshake was in
    /// flight): see [`crate::sock::Guard`].
    ResponsesWithheld = 19,
    /// `setsockopt(SO_RCVLOWAT)` above 1 refused (EPERM) on a connection whose requests must all
    /// be inspected: it would keep its answers from the response hook (enforce mode).
    RcvlowatRefused = 20,
}

pub const STAT_COUNT: u32 = 21;

impl Stat {
    pub const ALL: [Stat; STAT_COUNT as usize] = [
        Stat::MetadataConnects,
        Stat::Allowed,
        Stat::Denied,
        Stat::Monitored,
        Stat::EventsDropped,
        Stat::EventsSent,
        Stat::Imdsv1Requests,
        Stat::Imdsv1Denied,
        Stat::TokenPutForwarded,
        Stat::Unclassified,
        Stat::ConnectionsUninspected,
        Stat::DeniedTraced,
        Stat::DeniedUninspectable,
        Stat::ConnectionsUnsupported,
        Stat::WritesDeniedHandedOver,
        Stat::RawSocketsDenied,
        Stat::RequestsDenied,
        Stat::CredentialsFetched,
        Stat::CredentialsUnwatched,
        Stat::ResponsesWithheld,
        Stat::RcvlowatRefused,
    ];

    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Stat::MetadataConnects => "metadata_connects",
            Stat::Allowed => "allowed",
            Stat::Denied => "denied",
            Stat::Monitored => "monitored",
            Stat::EventsDropped => "events_dropped",
            Stat::EventsSent => "events_sent",
            Stat::Imdsv1Requests => "imdsv1_requests",
            Stat::Imdsv1Denied => "imdsv1_denied",
            Stat::TokenPutForwarded => "token_put_forwarded",
            Stat::Unclassified => "requests_unclassified",
            Stat::ConnectionsUninspected => "connections_uninspected",
            Stat::DeniedTraced => "denied_traced",
            Stat::DeniedUninspectable => "denied_uninspectable",
            Stat::ConnectionsUnsupported => "connections_unsupported",
            Stat::WritesDeniedHandedOver => "writes_denied_handed_over",
            Stat::RawSocketsDenied => "raw_sockets_denied",
            Stat::RequestsDenied => "requests_denied",
            Stat::CredentialsFetched => "credentials_fetched",
            Stat::CredentialsUnwatched => "credentials_unwatched",
            Stat::ResponsesWithheld => "responses_withheld",
            Stat::RcvlowatRefused => "rcvlowat_refused",
        }
    }
}
