//! What the kernel must support, probed before anything is loaded, so that an old or stripped-down
//! kernel gets one sentence per missing feature instead of a verifier log.
//!
//! The probes are aya's (`aya::sys::is_*_supported`, modelled on libbpf's): each loads a trivial
//! program or creates a tiny map of the type in question and reads the kernel's answer. Only the
//! sockmap-link probe is our own (aya has none). Each takes well under a millisecond except the
//! socket-storage one: freeing a socket-storage map waits for an RCU grace period (~25 ms here).
//! So `prepare` probes everything up front, while `run` goes straight to loading the programs
//! (the definitive test) and probes only when that fails, to say why ([`explain_failure`]).

use std::io;

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{BpfHelper, is_btf_supported, is_helper_supported, is_map_supported, is_program_supported},
};

/// A kernel feature imds-guard relies on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    Btf,
    CgroupSockAddr,
    SockOps,
    SkStorage,
    SockHash,
    SkMsg,
    SkMsgLink,
    BpfLoop,
    RingBuf,
    /// Only with `preexisting = "close"`.
    PidfdGetfd,
}

/// Every feature `run` needs whatever the policy says.
pub const ALWAYS: [Feature; 9] = [
    Feature::Btf,
    Feature::CgroupSockAddr,
    Feature::SockOps,
    Feature::SkStorage,
    Feature::SockHash,
    Feature::SkMsg,
    Feature::SkMsgLink,
    Feature::BpfLoop,
    Feature::RingBuf,
];

impl Feature {
    /// The sentence that says what is missing, since which Linux version it exists, and what
    /// imds-guard uses it for.
    #[must_use]
    pub const fn missing(self) -> &'static str {
        match self {
            Feature::Btf => {
                "The kernel does not accept BTF type information (Linux 4.18+, CONFIG_DEBUG_INFO_BTF), \
                 which describes the per-socket storage map and the rule-search callback to the verifier."
            }
            Feature::CgroupSockAddr => {
                "The kernel has no cgroup connect hooks (cgroup/connect4 and cgroup/connect6 programs, \
                 Linux 4.17+, CONFIG_CGROUP_BPF), which are how imds-guard judges every connect."
            }
            Feature::SockOps => {
                "The kernel has no sockops programs (Linux 4.13+), which hand established metadata \
                 connections to the request inspector."
            }
            Feature::SkStorage => {
                "The kernel has no socket local storage maps (BPF_MAP_TYPE_SK_STORAGE, Linux 5.2+), \
                 where each metadata connection's rule and request state are kept."
            }
            Feature::SockHash => {
                "The kernel has no socket hash maps (BPF_MAP_TYPE_SOCKHASH, Linux 4.18+, \
                 CONFIG_BPF_STREAM_PARSER), through which requests to the metadata service are inspected."
            }
            Feature::SkMsg => {
                "The kernel has no sk_msg programs (Linux 4.17+, CONFIG_BPF_STREAM_PARSER), which \
                 classify the requests written to the metadata service (IMDSv1 detection)."
            }
            Feature::SkMsgLink => {
                "The kernel cannot attach sk_msg programs through a bpf_link (Linux 6.10+), which is \
                 what keeps the request inspector attached while the daemon restarts."
            }
            Feature::BpfLoop => {
                "The kernel has no bpf_loop helper (Linux 5.17+), with which the connect hooks search \
                 the rules."
            }
            Feature::RingBuf => {
                "The kernel has no BPF ring buffer (BPF_MAP_TYPE_RINGBUF, Linux 5.8+), which carries \
                 the events to the daemon."
            }
            Feature::PidfdGetfd => {
                "The kernel has no pidfd_getfd system call (Linux 5.6+), with which preexisting = \
                 \"close\" resets the connections denied processes opened before imds-guard started."
            }
        }
    }

    /// Asks the running kernel.
    fn probe(self) -> io::Result<bool> {
        let prog = |t| is_program_supported(t).map_err(io::Error::other);
        let map = |t| is_map_supported(t).map_err(io::Error::other);
        match self {
            Feature::Btf => is_btf_supported(),
            Feature::CgroupSockAddr => prog(ProgramType::CgroupSockAddr),
            Feature::SockOps => prog(ProgramType::SockOps),
            Feature::SkStorage => map(MapType::SkStorage),
            Feature::SockHash => map(MapType::SockHash),
            Feature::SkMsg => prog(ProgramType::SkMsg),
            Feature::SkMsgLink => crate::kernel::bpf_sys::sk_msg_link_supported(),
            Feature::BpfLoop => is_helper_supported(ProgramType::CgroupSockAddr, BpfHelper::BPF_FUNC_loop)
                .map_err(io::Error::other),
            Feature::RingBuf => map(MapType::RingBuf),
            Feature::PidfdGetfd => Ok(pidfd_getfd_exists()),
        }
    }
}

/// What `imds-guard --version` says this kernel offers (the features `run` uses whatever the
/// policy says, by the names operators look up). The kernel-coverage work extends this list.
pub const SHOWN: [Feature; 6] = [
    Feature::Btf,
    Feature::CgroupSockAddr,
    Feature::SkMsg,
    Feature::SkMsgLink,
    Feature::RingBuf,
    Feature::BpfLoop,
];

impl Feature {
    /// A short name: `BTF`, `cgroup sock_addr`, ...
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Feature::Btf => "BTF",
            Feature::CgroupSockAddr => "cgroup sock_addr",
            Feature::SockOps => "sockops",
            Feature::SkStorage => "sk_storage",
            Feature::SockHash => "sockhash",
            Feature::SkMsg => "sk_msg",
            Feature::SkMsgLink => "sk_msg link",
            Feature::BpfLoop => "bpf_loop",
            Feature::RingBuf => "ring buffer",
            Feature::PidfdGetfd => "pidfd_getfd",
        }
    }
}

/// Each of `features`, probed on the running kernel (an error: the probe could not tell, e.g.
/// without the privilege to use bpf()).
#[must_use]
pub fn probe_each(features: &[Feature]) -> Vec<(Feature, io::Result<bool>)> {
    features.iter().map(|&f| (f, f.probe())).collect()
}

/// The features the daemon runs without on this kernel (`imds_guard_build_info{degraded}`,
/// comma-separated). None today: a missing feature of [`ALWAYS`] stops `run`. The hook for a
/// daemon that runs on with less (the kernel-coverage work): fill this in and the metric follows.
#[must_use]
pub fn degraded() -> Vec<&'static str> {
    Vec::new()
}

/// pidfd_getfd(-1, ...) fails with EBADF where the system call exists and ENOSYS where it does not.
fn pidfd_getfd_exists() -> bool {
    // SAFETY: an invalid pidfd; the call only validates its arguments.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, -1, 0, 0) };
    !(r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS))
}

/// Probes `features` and fails with one sentence per missing one (a probe that cannot tell, e.g.
/// for lack of privilege, is an error naming the feature).
pub fn require(features: &[Feature]) -> anyhow::Result<()> {
    report(features, Feature::probe)
}

/// For an error loading or attaching the programs: when the kernel lacks some of `features`, an
/// error with one sentence per missing feature (and the loader's own message last); otherwise
/// (or when a probe cannot tell) the original error.
#[must_use]
pub fn explain_failure(error: anyhow::Error, features: &[Feature]) -> anyhow::Error {
    explain_with(error, features, Feature::probe)
}

fn explain_with(
    error: anyhow::Error,
    features: &[Feature],
    probe: impl Fn(Feature) -> io::Result<bool>,
) -> anyhow::Error {
    match report(features, probe) {
        Err(missing) if !missing.to_string().starts_with("probing") => {
            missing.context(format!("the loader said: {error:#}"))
        }
        _ => error,
    }
}

fn report(features: &[Feature], probe: impl Fn(Feature) -> io::Result<bool>) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for &f in features {
        let t = std::time::Instant::now();
        let found = probe(f);
        tracing::debug!(feature = ?f, ?found, us = t.elapsed().as_micros(), "probed");
        match found {
            Ok(true) => {}
            Ok(false) => missing.push(f.missing()),
            Err(e) => anyhow::bail!("probing the kernel for {f:?} support failed: {e}"),
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "this kernel lacks {} feature{} imds-guard needs:\n  - {}",
        missing.len(),
        if missing.len() == 1 { "" } else { "s" },
        missing.join("\n  - ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sentence_per_missing_feature() {
        let absent = [Feature::Btf, Feature::BpfLoop, Feature::SkMsgLink];
        let e = report(&ALWAYS, |f| Ok(!absent.contains(&f))).unwrap_err().to_string();
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines[0], "this kernel lacks 3 features imds-guard needs:", "{e}");
        assert_eq!(
            lines[1..],
            [Feature::Btf, Feature::SkMsgLink, Feature::BpfLoop].map(|f| format!("  - {}", f.missing())),
            "{e}"
        );
        for l in &lines[1..] {
            // One sentence each: it ends with the only full stop, and names a kernel version.
            assert!(l.ends_with('.') && l.matches(". ").count() == 0 && l.contains("Linux "), "{l}");
        }
        assert!(report(&ALWAYS, |_| Ok(true)).is_ok());
        let e = report(&[Feature::PidfdGetfd], |_| Ok(false)).unwrap_err().to_string();
        assert!(
            e.starts_with("this kernel lacks 1 feature imds-guard needs:\n  - The kernel has no pidfd_getfd"),
            "{e}"
        );
    }

    #[test]
    fn a_load_failure_is_explained_by_the_missing_features_or_left_as_it_was() {
        let load = || anyhow::anyhow!("loading imdsg_connect4 (verifier)");
        let e = explain_with(load(), &ALWAYS, |f| Ok(f != Feature::RingBuf));
        let text = format!("{e:#}");
        assert!(
            text.starts_with(
                "the loader said: loading imdsg_connect4 (verifier): this kernel lacks 1 feature"
            ),
            "{text}"
        );
        assert!(text.contains(Feature::RingBuf.missing()), "{text}");
        assert_eq!(
            format!("{:#}", explain_with(load(), &ALWAYS, |_| Ok(true))),
            "loading imdsg_connect4 (verifier)"
        );
        let cannot_tell = explain_with(load(), &ALWAYS, |_| Err(io::Error::from_raw_os_error(libc::EPERM)));
        assert_eq!(format!("{cannot_tell:#}"), "loading imdsg_connect4 (verifier)");
    }

    #[test]
    fn a_probe_that_cannot_tell_is_an_error_not_a_missing_feature() {
        let e = report(&ALWAYS, |f| {
            if f == Feature::RingBuf { Err(io::Error::from_raw_os_error(libc::EPERM)) } else { Ok(true) }
        })
        .unwrap_err();
        assert!(e.to_string().contains("probing the kernel for RingBuf support failed"), "{e}");
    }
}
