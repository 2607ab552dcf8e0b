//! Map names (as pinned under `<pin-dir>/maps-<layout>/`) and capacities. The kernel object declares the maps
//! with these names; the daemon, `status` and `unload` find them by the same names.

/// `Array<Active>`, one entry: which generation of the policy is live.
pub const ACTIVE: &str = "IMDSG_ACTIVE";
/// `Array<GenConfig>`, [`crate::config::GENERATION_SLOTS`] entries indexed by `generation % slots`.
pub const CONFIG: &str = "IMDSG_CONFIG";
/// `HashMap<RuleKey, RuleValue>`: the allow rules of every live generation.
pub const RULES: &str = "IMDSG_RULES";
/// `RingBuf` of events (connect_denied, ...).
pub const EVENTS: &str = "IMDSG_EVENTS";
/// `PerCpuArray<u64>` of counters, indexed by [`crate::stats::Stat`].
pub const STATS: &str = "IMDSG_STATS";

/// `SockHash<u64>` of established connections to metadata endpoints (socket cookie → socket):
/// the message hook is attached to it, so it sees metadata traffic and nothing else.
pub const SOCKETS: &str = "IMDSG_SOCKETS";

/// The programs' global [`crate::endpoint::Fast`] (its section, loaded as a one-entry array map;
/// not pinned: each loaded program set has its own, written by the daemon that loaded it).
pub const FAST: &str = ".data.imdsg";

/// All maps the daemon pins, in the order `unload` removes them.
/// Per-socket state of metadata connections (socket-local storage): pinned like the rest, so
/// that a restarted daemon's message hook finds what the previous one's connect hook recorded.
pub const SOCKSTATE: &str = "IMDSG_SOCKSTATE";
pub const ALL: [&str; 11] =
    [ACTIVE, CONFIG, RULES, EVENTS, STATS, SOCKETS, SOCKSTATE, TRACKED, CREDS, READS, GUARDS];

/// `Array<lists::ReadSlots>`, one entry: each generation's `read` lists, compiled
/// ([`crate::lists`]), in slots indexed like [`CONFIG`].
pub const READS: &str = "IMDSG_READS";

/// `HashMap<u64, creds::Watch>`: connections whose request asked for credentials, by socket
/// cookie, while their response is read (armed by the message hook, read by the response hook,
/// removed when the response has been read or the connection closes).
pub const CREDS: &str = "IMDSG_CREDS";

/// `HashMap<u64, sock::Guard>`: connections whose requests must all be inspected, by socket
/// cookie (made by `sockops` when the connection is established, before it joins the sockhash;
/// advanced by the message hook; checked by the response hook; removed at close).
pub const GUARDS: &str = "IMDSG_GUARDS";

/// Responses watched at once (entries are allocated as needed, about 720 bytes each).
pub const CREDS_CAPACITY: u32 = 4096;

/// `Array<u64>`, one entry: connections in [`SOCKETS`] now (added by `sockops` when it puts one
/// in, taken away when the connection closes). The connect hook refuses connects that need
/// inspection when the table is about to be full ([`TRACKED_LIMIT`]).
pub const TRACKED: &str = "IMDSG_TRACKED";

/// Connects whose requests must be inspected are refused once this many connections are tracked:
/// the table's capacity less room for connects already judged but not yet established.
pub const TRACKED_LIMIT: u64 = SOCKETS_CAPACITY as u64 - 1024;

/// Connections to metadata endpoints tracked at once.
pub const SOCKETS_CAPACITY: u32 = 65_536;

/// Room for two full generations of rules (the live one and the one being installed).
pub const RULES_CAPACITY: u32 = 2 * crate::config::MAX_RULES;
/// Ring buffer size in bytes (a power of two, a multiple of the page size): ~2,300 connect events.
pub const EVENTS_BYTES: u32 = 1024 * 1024;

/// Bumped by hand when a map's meaning changes without its size changing.
const LAYOUT_REVISION: u64 = 4;

/// Identifies the layout of the pinned maps (their value and key sizes and capacities). Maps are
/// pinned under `maps-<LAYOUT as 16 hex digits>`: a daemon of the same layout adopts them (state and
/// counters survive a restart); one of another layout (an upgrade that changed a struct) creates its
/// own and swaps its programs in, so an upgrade never needs `unload`.
pub const LAYOUT: u64 = {
    let parts: [u64; 18] = [
        LAYOUT_REVISION,
        size_of::<crate::config::Active>() as u64,
        size_of::<crate::config::GenConfig>() as u64,
        crate::config::GENERATION_SLOTS as u64,
        size_of::<crate::rule::RuleKey>() as u64,
        size_of::<crate::rule::RuleValue>() as u64,
        RULES_CAPACITY as u64,
        EVENTS_BYTES as u64,
        crate::stats::STAT_COUNT as u64,
        SOCKETS_CAPACITY as u64,
        size_of::<crate::event::ConnectEvent>() as u64,
        size_of::<crate::event::RequestEvent>() as u64,
        size_of::<crate::sock::SockState>() as u64,
        size_of::<crate::event::CredentialsEvent>() as u64,
        size_of::<crate::creds::Watch>() as u64,
        CREDS_CAPACITY as u64,
        size_of::<crate::lists::ReadSlots>() as u64,
        size_of::<crate::sock::Guard>() as u64,
    ];
    // FNV-1a over the parts.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < parts.len() {
        let mut b = 0;
        while b < 8 {
            h ^= (parts[i] >> (8 * b)) & 0xff;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
            b += 1;
        }
        i += 1;
    }
    h
};
