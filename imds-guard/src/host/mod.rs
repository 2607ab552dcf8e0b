//! The machine imds-guard runs on: where cgroup v2 and bpffs are (and the rest of the mount
//! table), what a file or a process is as the kernel identifies it, and which unit, container
//! or pod a cgroup belongs to.

pub mod env;
pub mod identity;
pub mod mounts;
pub mod workload;
