//! The maps, pinned by name so that enforcement and its state outlive the daemon.

use aya_ebpf::{
    btf_maps::{Pinned, SkStorage},
    macros::{btf_map, map},
    maps::{Array, HashMap, PerCpuArray, RingBuf, SockHash},
};
use imds_guard_common::{
    config::{Active, GENERATION_SLOTS, GenConfig},
    creds::Watch,
    endpoint::{Fast, Prefilter, may_be_v6_with, passes},
    lists::ReadSlots,
    maps::{CREDS_CAPACITY, EVENTS_BYTES, RULES_CAPACITY, SOCKETS_CAPACITY},
    rule::{RuleKey, RuleValue},
    sock::{Guard, SockState},
    stats::{STAT_COUNT, Stat},
};

#[map(name = "IMDSG_ACTIVE")]
pub static ACTIVE: Array<Active> = Array::pinned(1, 0);

#[map(name = "IMDSG_CONFIG")]
pub static CONFIG: Array<GenConfig> = Array::pinned(GENERATION_SLOTS, 0);

#[map(name = "IMDSG_RULES")]
pub static RULES: HashMap<RuleKey, RuleValue> = HashMap::pinned(RULES_CAPACITY, 0);

#[map(name = "IMDSG_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

#[map(name = "IMDSG_STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(STAT_COUNT, 0);

#[map(name = "IMDSG_SOCKETS")]
pub static SOCKETS: SockHash<u64> = SockHash::pinned(SOCKETS_CAPACITY, 0);

/// Connections whose requests must all be inspected, by socket cookie (see
/// `imds_guard_common::sock::Guard`): made by `sockops` before the connection joins the sockhash,
/// removed at its close. Allocated per entry (only such workloads' connections have one).
#[map(name = "IMDSG_GUARDS")]
pub static GUARDS: HashMap<u64, Guard> =
    HashMap::pinned(SOCKETS_CAPACITY, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// Responses to requests for credentials being read, by socket cookie (see `crate::creds`).
/// Entries are allocated when a request for credentials is written (no preallocation: the table
/// is empty almost always).
#[map(name = "IMDSG_CREDS")]
pub static CREDS: HashMap<u64, Watch> =
    HashMap::pinned(CREDS_CAPACITY, aya_ebpf::bindings::BPF_F_NO_PREALLOC);

/// How many connections are in `SOCKETS` (see `imds_guard_common::maps::TRACKED`).
/// Each generation's `read` lists, compiled (see `imds_guard_common::lists`).
#[map(name = "IMDSG_READS")]
pub static READS: Array<ReadSlots> = Array::pinned(1, 0);

#[map(name = "IMDSG_TRACKED")]
pub static TRACKED: Array<u64> = Array::pinned(1, 0);

/// Adds `delta` (wrapping: `u64::MAX` takes one away) to the tracked count, atomically.
#[inline(always)]
pub fn track(delta: u64) {
    if let Some(p) = TRACKED.get_ptr_mut(0) {
        // SAFETY: an aligned u64 in a map value, changed only atomically.
        unsafe { atomic_add(p, delta) };
    }
}

/// Adds `delta` (wrapping) to the u64 at `p`, atomically. The result is unused, so this is
/// BPF_XADD, which every supported kernel has (fetching atomics are 5.12+). (The bpf target
/// offers no `AtomicU64`: the intrinsic is what it compiles to.)
///
/// # Safety
/// `p` is an aligned u64 in a map value that is changed only atomically.
#[inline(always)]
pub unsafe fn atomic_add(p: *mut u64, delta: u64) {
    #[cfg(target_arch = "bpf")]
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(p, delta)
    };
    #[cfg(not(target_arch = "bpf"))]
    unsafe { core::sync::atomic::AtomicU64::from_ptr(p) }
        .fetch_add(delta, core::sync::atomic::Ordering::Relaxed);
}

/// The tracked count is at [`imds_guard_common::maps::TRACKED_LIMIT`] or more.
#[inline(always)]
pub fn nearly_full() -> bool {
    TRACKED.get(0).is_some_and(|&n| n >= imds_guard_common::maps::TRACKED_LIMIT && n < u64::MAX / 2)
}

/// Per-socket state of connections to metadata endpoints; freed with the socket. Pinned with the
/// other maps: a restarted daemon's message hook reads what the previous one's connect hook wrote.
#[btf_map]
pub static IMDSG_SOCKSTATE: Pinned<SkStorage<SockState>> = SkStorage::new().pin_by_name();

/// The live generation and each config slot's endpoint prefilter, as a global: read with plain
/// loads, no map lookup, so that a connect to anything but an endpoint is over quickly. Alone in
/// its section, which the daemon writes as the map `.data.imdsg`.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data.imdsg")]
pub static mut IMDSG_FAST: Fast = Fast {
    generation: 0,
    _pad: 0,
    // Until the daemon writes it: everything passes on to the exact check.
    filters: [Prefilter { v4_net: 0, v4_mask: 0, v6_net: 0, v6_mask: 0 }; GENERATION_SLOTS as usize],
};

/// The live generation's prefilter.
#[inline(always)]
fn live_filter() -> *const Prefilter {
    // SAFETY: a volatile read of an aligned u32 of a global the daemon rewrites.
    unsafe {
        use core::ptr::{addr_of, read_volatile};
        let g = read_volatile(addr_of!(IMDSG_FAST.generation));
        addr_of!(IMDSG_FAST.filters[(g % GENERATION_SLOTS) as usize])
    }
}

/// False: `ip` (network order) is certainly not an endpoint of the live generation.
#[inline(always)]
pub fn may_be_endpoint_v4(ip: u32) -> bool {
    let f = live_filter();
    // SAFETY: volatile reads of aligned u32s of the global.
    let (net, mask) = unsafe {
        use core::ptr::{addr_of, read_volatile as rd};
        (rd(addr_of!((*f).v4_net)), rd(addr_of!((*f).v4_mask)))
    };
    passes(ip, net, mask)
}

/// As [`may_be_endpoint_v4`], for an AF_INET6 destination whose words `word(0..4)` returns:
/// [`may_be_v6_with`], on the live generation's filter.
#[inline(always)]
pub fn may_be_endpoint_v6(word: impl Fn(usize) -> u32) -> bool {
    use core::ptr::{addr_of, read_volatile as rd};
    // SAFETY (both): volatile reads of aligned u32s of the global.
    may_be_v6_with(
        word,
        || unsafe {
            let f = live_filter();
            (rd(addr_of!((*f).v4_net)), rd(addr_of!((*f).v4_mask)))
        },
        || unsafe {
            let f = live_filter();
            (rd(addr_of!((*f).v6_net)), rd(addr_of!((*f).v6_mask)))
        },
    )
}

/// The live generation's config.
#[inline(always)]
pub fn live_config() -> Option<&'static GenConfig> {
    let active = ACTIVE.get(0)?;
    CONFIG.get(active.slot())
}

#[inline(always)]
pub fn count(stat: Stat) {
    if let Some(c) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot; programs on one CPU do not run concurrently with each other here.
        unsafe { *c += 1 };
    }
}
