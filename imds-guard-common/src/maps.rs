//! Map names (as pinned under `<pin-dir>/maps/`) and capacities. The kernel object declares the maps
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

/// All maps the daemon pins, in the order `unload` removes them.
pub const ALL: [&str; 6] = [ACTIVE, CONFIG, RULES, EVENTS, STATS, SOCKETS];

/// Connections to metadata endpoints tracked at once.
pub const SOCKETS_CAPACITY: u32 = 65_536;

/// Room for two full generations of rules (the live one and the one being installed).
pub const RULES_CAPACITY: u32 = 2 * crate::config::MAX_RULES;
/// Ring buffer size in bytes (a power of two, a multiple of the page size): ~2,900 connect events.
pub const EVENTS_BYTES: u32 = 1024 * 1024;
