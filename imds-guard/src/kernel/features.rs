//! What the kernel must support, probed before anything is loaded, so that an old or stripped-down
//! kernel gets one sentence per missing feature instead of a verifier log.
//!
//! The probes are aya's (`aya::sys::is_*_supported`, modelled on libbpf's): each loads a trivial
//! program or creates a tiny map of the type in question and reads the kernel's answer. Only the
//! sockmap-link probe is our own (aya has none). Each takes well under a millisecond except the
//! socket-storage one: freeing a socket-storage map waits for an RCU grace period (~25 ms here).
//! So `prepare` probes everything up front, while `run` goes straight to loading the programs
//! (the definitive test) and probes only when that fails, to say why ([`explain_failure`]).
//!
//! Three kinds of feature:
//! - [`REQUIRED`]: without one, the connect hooks cannot run at all; `prepare` and `run` stop.
//! - [`Degradation::needs`]: a part of the guard that runs only where the kernel has these (the
//!   request inspector: sockops, sockhash, sk_msg). Where the kernel truly lacks one, the guard
//!   runs without that part and says so in one sentence ([`degradations`]). Where the kernel has
//!   them but loading fails, that is an error like any other. (Open: aya creates every map of the
//!   object at load, so on a real kernel without sockhash the SOCKETS map's creation still fails
//!   before the programs are chosen; the inspector's maps need an object of their own.)
//! - facts that choose a path, not a requirement: [`Feature::SkMsgLink`] decides how the message
//!   hook is attached (a bpf_link on Linux 6.10+, else through its socket map).
//!
//! `IMDS_GUARD_PRETEND_MISSING=sk_msg,sockhash,...` (the [`Feature::name`]s) makes the probes
//! answer "missing" for those features on any kernel, so that the tests can run the degraded
//! paths on a kernel that has everything. Only the probes read it.

use std::io;

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_btf_supported, is_map_supported, is_program_supported},
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
    /// sk_skb programs (the response hook of credential attribution).
    SkSkb,
    /// Not a requirement: which way the message hook is attached.
    SkMsgLink,
    RingBuf,
    /// Only with `preexisting = "close"`.
    PidfdGetfd,
}

/// What the connect hooks need, whatever the policy says: without one, `run` cannot enforce
/// anything. (The connect hooks keep each allowed connection's rule in socket storage.)
pub const REQUIRED: [Feature; 4] =
    [Feature::Btf, Feature::CgroupSockAddr, Feature::SkStorage, Feature::RingBuf];

/// Every feature the programs use (for [`explain_failure`]: a load that fails on a kernel lacking
/// one of these is explained by it). The response hook's is last.
pub const USED: [Feature; 8] = [
    Feature::Btf,
    Feature::CgroupSockAddr,
    Feature::SkStorage,
    Feature::RingBuf,
    Feature::SockOps,
    Feature::SockHash,
    Feature::SkMsg,
    Feature::SkSkb,
];

/// A part of the guard the kernel may lack the means for, which the guard then runs without.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Degradation {
    /// The request inspector (sockops, sockhash, sk_msg): IMDSv1 requests reported or refused.
    Imdsv1Inspection,
    /// The response hook (sockops, sockhash, sk_skb): who fetched which credentials
    /// (`credentials_fetched`).
    CredentialAttribution,
}

impl Degradation {
    pub const ALL: [Degradation; 2] = [Degradation::Imdsv1Inspection, Degradation::CredentialAttribution];

    /// As the metrics, `guard_started` and `status` name it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Degradation::Imdsv1Inspection => "imdsv1_inspection",
            Degradation::CredentialAttribution => "credential_attribution",
        }
    }

    /// The kernel features this part needs (all of them).
    #[must_use]
    pub const fn needs(self) -> &'static [Feature] {
        match self {
            Degradation::Imdsv1Inspection => &[Feature::SockOps, Feature::SockHash, Feature::SkMsg],
            Degradation::CredentialAttribution => &[Feature::SockOps, Feature::SockHash, Feature::SkSkb],
        }
    }

    /// One sentence: what is off, because of which missing features, and what still runs.
    #[must_use]
    pub fn sentence(self, missing: &[Feature]) -> String {
        let what: Vec<String> = missing.iter().map(|f| f.lacks()).collect();
        let what = match what.as_slice() {
            [] => String::from("nothing"),
            [one] => one.clone(),
            [init @ .., last] => format!("{} and {last}", init.join(", ")),
        };
        match self {
            Degradation::Imdsv1Inspection => format!(
                "IMDSv1 inspection is off because this kernel has {what}, so connect rules are \
                 enforced but tokenless IMDSv1 requests are neither reported nor refused."
            ),
            Degradation::CredentialAttribution => format!(
                "Credential attribution is off because this kernel has {what}, so the guard runs \
                 but does not report which process fetched which role credentials."
            ),
        }
    }
}

/// A part of the guard this kernel cannot run, with the features it lacks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Degraded {
    pub what: Degradation,
    pub missing: Vec<Feature>,
}

impl Degraded {
    /// See [`Degradation::sentence`].
    #[must_use]
    pub fn sentence(&self) -> String {
        self.what.sentence(&self.missing)
    }
}

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
            Feature::SkSkb => {
                "The kernel has no sk_skb programs (Linux 4.14+, CONFIG_BPF_STREAM_PARSER), which \
                 read the responses to requests for credentials (credential attribution)."
            }
            Feature::SkMsgLink => {
                "The kernel cannot attach sk_msg programs through a bpf_link (Linux 6.10+), so the \
                 request inspector is attached through its socket map instead."
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

    /// The missing feature as a noun phrase for a degradation's sentence.
    fn lacks(self) -> String {
        let config = match self {
            Feature::SockHash | Feature::SkMsg | Feature::SkSkb => ", CONFIG_BPF_STREAM_PARSER",
            _ => "",
        };
        let what = match self {
            Feature::Btf => "BTF",
            Feature::CgroupSockAddr => "cgroup connect hooks",
            Feature::SockOps => "sockops programs",
            Feature::SkStorage => "socket local storage maps",
            Feature::SockHash => "socket hash maps",
            Feature::SkMsg => "sk_msg programs",
            Feature::SkSkb => "sk_skb programs",
            Feature::SkMsgLink => "sockmap links",
            Feature::RingBuf => "BPF ring buffers",
            Feature::PidfdGetfd => "pidfd_getfd",
        };
        format!("no {what} ({}{config})", self.since())
    }

    /// The Linux version that brought it.
    const fn since(self) -> &'static str {
        match self {
            Feature::Btf | Feature::SockHash => "Linux 4.18+",
            Feature::CgroupSockAddr | Feature::SkMsg => "Linux 4.17+",
            Feature::SockOps => "Linux 4.13+",
            Feature::SkStorage => "Linux 5.2+",
            Feature::SkSkb => "Linux 4.14+",
            Feature::SkMsgLink => "Linux 6.10+",
            Feature::RingBuf => "Linux 5.8+",
            Feature::PidfdGetfd => "Linux 5.6+",
        }
    }

    /// A name without spaces, as `IMDS_GUARD_PRETEND_MISSING` takes it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Feature::Btf => "btf",
            Feature::CgroupSockAddr => "cgroup_sock_addr",
            Feature::SockOps => "sockops",
            Feature::SkStorage => "sk_storage",
            Feature::SockHash => "sockhash",
            Feature::SkMsg => "sk_msg",
            Feature::SkSkb => "sk_skb",
            Feature::SkMsgLink => "sk_msg_link",
            Feature::RingBuf => "ringbuf",
            Feature::PidfdGetfd => "pidfd_getfd",
        }
    }

    /// Asks the running kernel (unless `IMDS_GUARD_PRETEND_MISSING` names it: then missing).
    pub fn probe(self) -> io::Result<bool> {
        if pretend_missing(self) {
            tracing::warn!(
                feature = self.name(),
                "IMDS_GUARD_PRETEND_MISSING (a test knob) makes this kernel feature count as missing"
            );
            return Ok(false);
        }
        self.probe_kernel()
    }

    fn probe_kernel(self) -> io::Result<bool> {
        let prog = |t| is_program_supported(t).map_err(io::Error::other);
        let map = |t| is_map_supported(t).map_err(io::Error::other);
        match self {
            Feature::Btf => is_btf_supported(),
            Feature::CgroupSockAddr => prog(ProgramType::CgroupSockAddr),
            Feature::SockOps => prog(ProgramType::SockOps),
            Feature::SkStorage => map(MapType::SkStorage),
            Feature::SockHash => map(MapType::SockHash),
            Feature::SkMsg => prog(ProgramType::SkMsg),
            Feature::SkSkb => prog(ProgramType::SkSkb),
            Feature::SkMsgLink => crate::kernel::bpf_sys::sk_msg_link_supported(),
            Feature::RingBuf => map(MapType::RingBuf),
            Feature::PidfdGetfd => Ok(pidfd_getfd_exists()),
        }
    }
}

/// What `imds-guard --version` says this kernel offers (the features `run` uses whatever the
/// policy says, by the names operators look up; `sk_msg link` only says how the message hook is
/// attached).
pub const SHOWN: [Feature; 9] = [
    Feature::Btf,
    Feature::CgroupSockAddr,
    Feature::SkStorage,
    Feature::RingBuf,
    Feature::SockOps,
    Feature::SockHash,
    Feature::SkMsg,
    Feature::SkSkb,
    Feature::SkMsgLink,
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
            Feature::SkSkb => "sk_skb",
            Feature::SkMsgLink => "sk_msg link",
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

/// Whether `IMDS_GUARD_PRETEND_MISSING` (comma-separated [`Feature::name`]s) names `f`.
fn pretend_missing(f: Feature) -> bool {
    std::env::var("IMDS_GUARD_PRETEND_MISSING")
        .is_ok_and(|v| v.split(',').any(|n| n.trim().eq_ignore_ascii_case(f.name())))
}

/// The parts of the guard this kernel cannot run, each with the features it lacks for it (empty:
/// nothing is degraded). A probe that cannot tell is an error, not a degradation.
pub fn degradations() -> anyhow::Result<Vec<Degraded>> {
    degradations_with(Feature::probe)
}

fn degradations_with(probe: impl Fn(Feature) -> io::Result<bool>) -> anyhow::Result<Vec<Degraded>> {
    let mut out = Vec::new();
    for what in Degradation::ALL {
        let mut missing = Vec::new();
        for &f in what.needs() {
            match probe(f) {
                Ok(true) => {}
                Ok(false) => missing.push(f),
                Err(e) => anyhow::bail!("probing the kernel for {f:?} support failed: {e}"),
            }
        }
        if !missing.is_empty() {
            out.push(Degraded { what, missing });
        }
    }
    Ok(out)
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
        let absent = [Feature::Btf, Feature::SkStorage, Feature::RingBuf];
        let e = report(&REQUIRED, |f| Ok(!absent.contains(&f))).unwrap_err().to_string();
        let lines: Vec<&str> = e.lines().collect();
        assert_eq!(lines[0], "this kernel lacks 3 features imds-guard needs:", "{e}");
        assert_eq!(lines[1..], absent.map(|f| format!("  - {}", f.missing())), "{e}");
        for l in &lines[1..] {
            // One sentence each: it ends with the only full stop, and names a kernel version.
            assert!(l.ends_with('.') && l.matches(". ").count() == 0 && l.contains("Linux "), "{l}");
        }
        assert!(report(&REQUIRED, |_| Ok(true)).is_ok());
        let e = report(&[Feature::PidfdGetfd], |_| Ok(false)).unwrap_err().to_string();
        assert!(
            e.starts_with("this kernel lacks 1 feature imds-guard needs:\n  - The kernel has no pidfd_getfd"),
            "{e}"
        );
    }

    #[test]
    fn a_load_failure_is_explained_by_the_missing_features_or_left_as_it_was() {
        let load = || anyhow::anyhow!("loading imdsg_connect4 (verifier)");
        let e = explain_with(load(), &USED, |f| Ok(f != Feature::RingBuf));
        let text = format!("{e:#}");
        assert!(
            text.starts_with(
                "the loader said: loading imdsg_connect4 (verifier): this kernel lacks 1 feature"
            ),
            "{text}"
        );
        assert!(text.contains(Feature::RingBuf.missing()), "{text}");
        assert_eq!(
            format!("{:#}", explain_with(load(), &USED, |_| Ok(true))),
            "loading imdsg_connect4 (verifier)"
        );
        let cannot_tell = explain_with(load(), &USED, |_| Err(io::Error::from_raw_os_error(libc::EPERM)));
        assert_eq!(format!("{cannot_tell:#}"), "loading imdsg_connect4 (verifier)");
    }

    #[test]
    fn a_probe_that_cannot_tell_is_an_error_not_a_missing_feature() {
        let e = report(&REQUIRED, |f| {
            if f == Feature::RingBuf { Err(io::Error::from_raw_os_error(libc::EPERM)) } else { Ok(true) }
        })
        .unwrap_err();
        assert!(e.to_string().contains("probing the kernel for RingBuf support failed"), "{e}");
    }

    /// One sentence: a full stop at the end and none before (version numbers have dots).
    fn one_sentence(s: &str) -> bool {
        s.ends_with('.') && !s.contains(". ")
    }

    #[test]
    fn every_sentence_is_one_sentence_naming_a_kernel_version() {
        let all = [
            Feature::Btf,
            Feature::CgroupSockAddr,
            Feature::SockOps,
            Feature::SkStorage,
            Feature::SockHash,
            Feature::SkMsg,
            Feature::SkSkb,
            Feature::SkMsgLink,
            Feature::RingBuf,
            Feature::PidfdGetfd,
        ];
        for f in all {
            assert!(f.missing().contains("Linux ") && f.missing().ends_with('.'), "{}", f.missing());
            assert!(!f.name().contains(' ') && !f.name().is_empty());
        }
        for what in Degradation::ALL {
            for n in 1..=what.needs().len() {
                let s = what.sentence(&what.needs()[..n]);
                assert!(one_sentence(&s) && s.contains("Linux "), "{s}");
            }
        }
    }

    #[test]
    fn a_kernel_without_the_stream_parser_runs_without_imdsv1_inspection() {
        // CONFIG_BPF_STREAM_PARSER off: no sockhash, no sk_msg; sockops is still there.
        let d = degradations_with(|f| Ok(!matches!(f, Feature::SockHash | Feature::SkMsg))).unwrap();
        assert_eq!(
            d,
            [
                Degraded {
                    what: Degradation::Imdsv1Inspection,
                    missing: vec![Feature::SockHash, Feature::SkMsg]
                },
                // The response hook is attached to the same sockhash.
                Degraded { what: Degradation::CredentialAttribution, missing: vec![Feature::SockHash] },
            ]
        );
        assert_eq!(d[0].what.name(), "imdsv1_inspection");
        assert_eq!(
            d[0].sentence(),
            "IMDSv1 inspection is off because this kernel has no socket hash maps (Linux 4.18+, \
             CONFIG_BPF_STREAM_PARSER) and no sk_msg programs (Linux 4.17+, CONFIG_BPF_STREAM_PARSER), \
             so connect rules are enforced but tokenless IMDSv1 requests are neither reported nor refused."
        );
        let one = degradations_with(|f| Ok(f != Feature::SkMsg)).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].missing, [Feature::SkMsg]);
        assert!(
            one[0].sentence().contains("has no sk_msg programs (Linux 4.17+, CONFIG_BPF_STREAM_PARSER), so")
        );
        // Everything there: nothing degraded. What the connect hooks need is never a degradation.
        assert!(degradations_with(|_| Ok(true)).unwrap().is_empty());
        assert!(degradations_with(|f| Ok(!REQUIRED.contains(&f))).unwrap().is_empty());
        // A probe that cannot tell is an error, not a degradation.
        let e = degradations_with(|_| Err(io::Error::from_raw_os_error(libc::EPERM))).unwrap_err();
        assert!(e.to_string().starts_with("probing the kernel for SockOps support failed"), "{e}");
    }

    #[test]
    fn a_kernel_without_sk_skb_runs_without_credential_attribution_only() {
        let d = degradations_with(|f| Ok(f != Feature::SkSkb)).unwrap();
        assert_eq!(d, [Degraded { what: Degradation::CredentialAttribution, missing: vec![Feature::SkSkb] }]);
        assert_eq!(d[0].what.name(), "credential_attribution");
        assert_eq!(
            d[0].sentence(),
            "Credential attribution is off because this kernel has no sk_skb programs (Linux 4.14+, \
             CONFIG_BPF_STREAM_PARSER), so the guard runs but does not report which process fetched \
             which role credentials."
        );
    }

    #[test]
    fn the_inspector_is_never_required_and_the_link_is_never_a_degradation() {
        for what in Degradation::ALL {
            for f in what.needs() {
                assert!(!REQUIRED.contains(f) && USED.contains(f), "{f:?}");
            }
        }
        // The response hook's feature is the last of USED (the daemon leaves it out of what
        // explains a load failure where it does not load the hook).
        assert_eq!(USED[USED.len() - 1], Feature::SkSkb);
        assert!(!REQUIRED.contains(&Feature::SkMsgLink) && !USED.contains(&Feature::SkMsgLink));
        assert!(Degradation::ALL.iter().all(|d| !d.needs().contains(&Feature::SkMsgLink)));
        // The metrics have a gauge for each.
        assert_eq!(Degradation::ALL.map(Degradation::name), crate::report::metrics::DEGRADABLE);
    }
}
