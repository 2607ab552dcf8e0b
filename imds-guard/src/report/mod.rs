//! What imds-guard tells operators: events from the kernel's records (enriched with what /proc and
//! the cgroup tree know), aggregated, written to the sinks, counted in the metrics, remembered for
//! `suggest`, and streamed on the event socket.

pub mod aggregate;
pub mod enrich;
pub mod metrics;
pub mod seen;
pub mod sinks;
pub mod socket;
