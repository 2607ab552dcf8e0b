//! imds-guard: a host firewall for the cloud instance metadata service.
//!
//! The folders follow the route of the data, one layer each; imports only run down:
//!
//! ```text
//! cmd/        thin: command-line arguments → the calls below
//! daemon/     `run`: the event loop, installing (kernel + netfilter, as one), reloads, pin watch
//! report/     typed events from the kernel record to the sinks, metrics, the event socket, suggest
//! netfilter/  the nftables table for forwarded packets (and reduced mode), its NFLOG reports
//! kernel/     the eBPF object: pin paths, loading, attaching, generations, pinned state, probes
//! policy/     the policy file: parse, resolve, compile to kernel tables
//! host/       the machine: cgroup2 and bpffs, identities of files and processes, workloads
//! ```
//!
//! Below all of them, `imds_guard_common` holds what the kernel programs share with user space:
//! the map types, the connect verdict and the HTTP request classifier. docs/ARCHITECTURE.md
//! follows a policy and an event through these folders.

pub mod cli;
pub mod cmd;
pub mod daemon;
pub mod escape;
pub mod host;
pub mod kernel;
pub mod logging;
pub mod netfilter;
pub mod policy;
pub mod report;
