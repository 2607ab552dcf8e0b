//! imds-guard's kernel programs.
//!
//! `cgroup/connect4` and `cgroup/connect6` run on every connect() in the cgroup they are attached
//! to. Each first asks whether the destination is a metadata endpoint (a few compares against the
//! live config) and returns at once if not; only metadata connects look up the rules, count, and
//! report. The decision itself is `imds_guard_common::verdict`, shared with userspace.
//!
//! Request inspection touches metadata connections only: the connect hook gives such a socket
//! local storage, `sockops` puts it (once established) into a sockhash, and the `sk_msg` program
//! attached to that sockhash classifies what the process writes. A stream verdict program on the
//! same sockhash reads the responses to requests for credentials (`creds`).
#![no_std]
#![no_main]
// The tracked-connections count is a BPF atomic add (maps::track), with the nightly compiler that
// builds these programs; a host build (clippy, tests of the workspace) needs no nightly feature.
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
// Built only through imds-guard's build.rs, whose output cargo shows as build-script warnings
// that nothing fails on (clippy's gate does not cover this crate: it builds for the BPF target
// only). A warning here fails the build instead; the nightly is pinned, so its lints do not move.
#![cfg_attr(target_arch = "bpf", deny(warnings))]

mod bench;
mod connect;
mod creds;
mod dest;
mod judge;
mod maps;
mod msg;
mod sock_create;
mod sockops;
mod sockopt;
mod task;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
