//! The eBPF programs and maps: where they are pinned, loading and attaching them, writing policy
//! generations into the maps, reading what is pinned, and what the running kernel supports.

pub mod attach;
pub mod bpf_sys;
pub mod btf;
pub mod features;
pub mod generations;
pub mod guard;
pub mod paths;
pub mod pinned;
