//! Types shared by the imds-guard kernel programs and the daemon, and the decision logic both use.
//!
//! Everything that crosses the kernel/user boundary is `#[repr(C)]` with explicit padding, so the
//! layout is the same in the eBPF object and in userspace. The decision logic ([`verdict`]) is plain
//! Rust, generic over how rules are looked up: the kernel program calls it with a BPF hash map, the
//! host unit tests and `imds-guard explain` call it with a `HashMap`.
#![no_std]

pub mod config;
pub mod creds;
pub mod endpoint;
pub mod event;
pub mod http;
pub mod lists;
pub mod maps;
pub mod path;
pub mod rule;
pub mod sock;
pub mod stats;
pub mod verdict;

/// `x` through a volatile stack slot: the compiler forgets where it came from, and so cannot see
/// a comparison in the arithmetic that uses it and turn that into a branch (eBPF has no
/// conditional move or set-on-condition: a `select` or a `zext(icmp)` becomes a jump, and a second
/// jump per byte is what the verifier cannot afford in a loop of 4096 bytes: it keeps one pending
/// state per jump, at most 8,192).
#[inline(always)]
pub(crate) fn hide(x: u64) -> u64 {
    let mut v = 0u64;
    // SAFETY: a local variable.
    unsafe {
        core::ptr::write_volatile(&raw mut v, x);
        core::ptr::read_volatile(&raw const v)
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)], made only of integers and integer arrays, with explicit
    // padding fields, so every bit pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for crate::rule::RuleKey {}
    unsafe impl aya::Pod for crate::rule::RuleValue {}
    unsafe impl aya::Pod for crate::config::GenConfig {}
    unsafe impl aya::Pod for crate::config::Active {}
    unsafe impl aya::Pod for crate::endpoint::Fast {}
    unsafe impl aya::Pod for crate::sock::SockState {}
    unsafe impl aya::Pod for crate::lists::ReadSlots {}
}
