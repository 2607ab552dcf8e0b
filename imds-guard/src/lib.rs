//! imds-guard: a host firewall for the cloud instance metadata service.
//!
//! The path a request takes: policy file → [`config`] (parse) → [`policy`] (validate, resolve) →
//! kernel maps ([`guard`]) → kernel verdict (`imds_guard_common::verdict`) → ring buffer →
//! [`events`] (enrich, report).

pub mod aggregate;
mod bpf_sys;
pub mod btf;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod endpoints;
pub mod env;
pub mod escape;
pub mod events;
pub mod fast_toml;
pub mod features;
pub mod guard;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod netfilter;
pub mod nflog;
pub mod observe;
pub mod output;
pub mod pinned;
pub mod pins;
pub mod pods;
pub mod policy;
pub mod preexisting;
pub mod reload;
pub mod stream;
pub mod uninspected;
pub mod workload;
