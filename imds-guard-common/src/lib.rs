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
mod opaque;
pub mod path;
pub mod rule;
pub mod sock;
pub mod stats;
pub mod verdict;

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
