//! The sandbox every privileged test (and the demo) runs in: a child cgroup and a network namespace
//! made for the test, the metadata addresses on that namespace's `lo`, a fake IMDS server there, a
//! private bpffs for pins, and the daemon pointed at all of those — never at host defaults. Every
//! piece removes itself on drop, also when a test panics.
//!
//! Under `CI=true` a test that cannot run (not root, no cgroup2) fails instead of skipping.

pub mod client;
pub mod daemon;
pub mod event_docs;
pub mod fake_imds;
pub mod holder;
pub mod sandbox;
pub mod siem;
pub mod topology;
pub mod unit;

pub use client::{Client, Probe};
pub use daemon::Daemon;
pub use fake_imds::{FakeImds, ImdsMode};
pub use holder::Holder;
pub use sandbox::Sandbox;
pub use topology::Topology;
