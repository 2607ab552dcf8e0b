//! What one guest runs: the checks (a test of a test binary each, with a timeout) or a shell
//! command, and the payload disk that carries them with the binaries, the config and the run's
//! script (`guest.sh`) to the guest.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, ensure};

use super::run_quiet;

/// The run's script, PID 1 after the root image's `/sbin/imdsg-init`.
pub const GUEST_SH: &str = include_str!("guest.sh");

/// One check: the test `test` of the integration test binary `target` (tests/tests/<target>.rs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub target: String,
    pub test: String,
    pub timeout_secs: u32,
}

impl Check {
    /// Its name in results: `<target>::<test>`.
    pub fn name(&self) -> String {
        format!("{}::{}", self.target, self.test)
    }
}

/// Seconds a check may take in the guest unless `SUBSET` or `--check-timeout` says otherwise
/// (under TCG a test takes several times what it takes on the host: the subset's took 4 to 51 s
/// each on 6.12 on a busy 2-core machine, so its limits are 3 to 40 times that).
pub const DEFAULT_CHECK_TIMEOUT: u32 = 300;

/// The default checks: allowed and denied identities (uid, exe, cgroup) over IPv4, IPv6 and
/// v4-mapped; IMDSv1 reported and denied, also on a connection kept across restarts (both attach
/// paths); SIGKILL keeps enforcement and a restart adopts it; a
/// reload under a connect storm; the netfilter forward drop; nothing reported degraded that the
/// kernel supports; a traced process refused what exe and cgroup rules give; MPTCP refused where
/// requests must be inspected; raw sockets refused by rules read through BTF (the cgroup's
/// ancestors are ids before 6.0, pointers since); `read` refusing the secrets in every spelling on
/// every address family (the path classifier's loop on each verifier), and on a handed-over
/// socket; credential attribution, whose response hook (an sk_skb stream verdict program) changes
/// how the kernel delivers a metadata connection's data, with the SDK on both attach paths, every
/// byte of responses cut, chunked, kept alive and large arriving whole; the answer to a write
/// made during the handshake (past the message hook) withheld where reads are restricted (the
/// guard reads `tcp_sock->write_seq` through BTF, and each kernel's receive path drops it), and
/// `SO_RCVLOWAT` refused on such connections (`cgroup/setsockopt`; the connect hook reads
/// `sock->sk_rcvlowat` through BTF); every way of writing a request (`sendfile`, `splice` and
/// `MSG_ZEROCOPY` hand the message hook pages shared with user space on kernels before 6.5,
/// which it must pull into its own before reading).
/// (target, test, timeout in seconds)
pub const SUBSET: [(&str, &str, u32); 21] = [
    ("enforce", "allowed_uid_reaches_imds_and_denied_uid_gets_eperm_on_every_address_form", 180),
    ("identity", "exe_rule_matches_the_running_file_not_its_name", 180),
    ("identity", "cgroup_rule_covers_the_subtree_and_only_it", 180),
    ("imdsv1", "a_tokenless_get_is_reported_once_with_the_process_that_sent_it", 180),
    ("imdsv1", "imdsv1_deny_refuses_tokenless_requests_at_once_while_imdsv2_works", 180),
    ("imdsv1", "imdsv1_deny_holds_on_a_connection_kept_across_restarts_on_both_attach_paths", 240),
    ("lifecycle", "sigkill_keeps_enforcement_restart_adopts_and_unload_removes", 240),
    ("reload_storm", "a_hundred_reloads_during_a_connect_storm_make_no_wrong_decision", 300),
    (
        "netfilter",
        "forwarded_requests_are_dropped_and_reported_while_the_host_s_allowed_process_gets_through",
        300,
    ),
    ("degraded", "nothing_is_degraded_when_nothing_is_missing", 180),
    ("bypass", "a_traced_process_loses_what_exe_and_cgroup_rules_give_it", 240),
    ("bypass", "mptcp_cannot_carry_tokenless_requests_past_imdsv1_deny", 180),
    ("bypass", "raw_sockets_are_refused_to_processes_the_policy_does_not_admit", 240),
    ("read", "the_others_read_all_but_the_secrets_in_any_spelling_on_every_address_family", 300),
    ("bypass", "a_handed_over_socket_reads_no_more_than_its_holder_may", 360),
    ("bypass", "a_write_during_a_slow_handshake_gets_no_answer_where_reads_are_restricted", 240),
    ("bypass", "a_high_rcvlowat_cannot_keep_an_answer_from_the_guard", 240),
    ("bypass", "every_write_path_on_an_established_connection_is_inspected", 180),
    (
        "credentials",
        "the_aws_sdk_s_credential_fetch_is_attributed_once_with_its_key_and_never_its_secret",
        300,
    ),
    ("credentials", "responses_in_pieces_chunked_and_on_kept_connections_reach_clients_whole", 300),
    (
        "credentials",
        "large_responses_reach_clients_whole_and_a_long_credentials_response_is_still_attributed",
        240,
    ),
];

/// Of [`SUBSET`], the checks the default run makes on the newest kernel of the matrix (6.12) as
/// well: loading (every check starts the daemon, which loads all programs: the verifier's
/// verdict), both attach paths of the message and response hooks (6.10+ attaches them as links),
/// the path classifier's loop, enforcement kept across a SIGKILL. The rest of the subset runs on
/// 6.1 (and most of it on 5.10: [`NOT_ON_OLDEST`]), whose verifiers and kernel structures differ
/// most from the host's, and all of it runs on the host's own kernel (`./x test`, 6.18 here) and
/// partly again in the real-host VM (6.12): together they keep CI's run under 40 minutes on two
/// cores.
pub const ON_NEWEST: [&str; 6] = [
    "allowed_uid_reaches_imds_and_denied_uid_gets_eperm_on_every_address_form",
    "imdsv1_deny_holds_on_a_connection_kept_across_restarts_on_both_attach_paths",
    "sigkill_keeps_enforcement_restart_adopts_and_unload_removes",
    "nothing_is_degraded_when_nothing_is_missing",
    "the_others_read_all_but_the_secrets_in_any_spelling_on_every_address_family",
    "the_aws_sdk_s_credential_fetch_is_attributed_once_with_its_key_and_never_its_secret",
];

/// The kernel label [`ON_NEWEST`] applies to.
pub const NEWEST: &str = "6.12";

/// The oldest kernel of the matrix (Amazon Linux 2's series, whose support ended in June 2026).
pub const OLDEST: &str = "5.10";

/// Of [`SUBSET`], the checks the default run leaves out on [`OLDEST`]: what they exercise works
/// there as it does on 6.1, which runs them (the same attach path for the message hook, the same
/// helpers for cgroup ancestry, generations switched by the same map updates, pins), and on the
/// host's kernel. What differs on 5.10 (its verifier, which every check's start meets; the
/// kernel structures read through BTF; the message and response hooks' behaviour; MPTCP;
/// nftables) stays. Together with [`ON_NEWEST`] this keeps CI's run under 40 minutes on two
/// cores as slow as the slowest CI has had.
pub const NOT_ON_OLDEST: [&str; 4] = [
    "cgroup_rule_covers_the_subtree_and_only_it",
    "imdsv1_deny_holds_on_a_connection_kept_across_restarts_on_both_attach_paths",
    "sigkill_keeps_enforcement_restart_adopts_and_unload_removes",
    "a_hundred_reloads_during_a_connect_storm_make_no_wrong_decision",
];

/// The checks of `checks` (a plan) to run on the kernel `label`: all of them, except for the
/// default subset on [`NEWEST`], which keeps [`ON_NEWEST`], and on [`OLDEST`], which leaves out
/// [`NOT_ON_OLDEST`]. `default` says the plan is the default subset (no `--tests` or `--filter`).
pub fn for_kernel(checks: &[Check], label: &str, default: bool) -> Vec<Check> {
    checks
        .iter()
        .filter(|c| {
            let t = c.test.as_str();
            !default
                || match label {
                    NEWEST => ON_NEWEST.contains(&t),
                    OLDEST => !NOT_ON_OLDEST.contains(&t),
                    _ => true,
                }
        })
        .cloned()
        .collect()
}

/// The checks to run. `tests` (`--tests`): `<target>` (every test of that binary, from `list`) or
/// `<target>::<test>`; none means the subset. `filters` (`--filter`): keep the checks whose name
/// contains one of them. `list(target)` lists a binary's tests.
pub fn plan(
    tests: &[String],
    filters: &[String],
    timeout: Option<u32>,
    mut list: impl FnMut(&str) -> anyhow::Result<Vec<String>>,
) -> anyhow::Result<Vec<Check>> {
    let mut checks: Vec<Check> = Vec::new();
    if tests.is_empty() {
        checks.extend(SUBSET.iter().map(|(t, n, s)| Check {
            target: (*t).to_owned(),
            test: (*n).to_owned(),
            timeout_secs: *s,
        }));
    }
    for spec in tests {
        let (target, test) = match spec.split_once("::") {
            Some((t, n)) => (t, Some(n)),
            None => (spec.as_str(), None),
        };
        let names = list(target)?;
        let chosen: Vec<&String> = match test {
            Some(n) => {
                let found = names.iter().filter(|x| x.as_str() == n).collect::<Vec<_>>();
                ensure!(!found.is_empty(), "tests/tests/{target}.rs has no test `{n}`");
                found
            }
            None => names.iter().collect(),
        };
        for n in chosen {
            let timeout_secs = SUBSET
                .iter()
                .find(|(t, x, _)| *t == target && *x == n.as_str())
                .map_or(DEFAULT_CHECK_TIMEOUT, |s| s.2);
            let c = Check { target: target.to_owned(), test: n.clone(), timeout_secs };
            if !checks.contains(&c) {
                checks.push(c);
            }
        }
    }
    if !filters.is_empty() {
        checks.retain(|c| filters.iter().any(|f| c.name().contains(f.as_str())));
    }
    if let Some(t) = timeout {
        for c in &mut checks {
            c.timeout_secs = t;
        }
    }
    ensure!(!checks.is_empty(), "no check left to run (--tests {tests:?}, --filter {filters:?})");
    Ok(checks)
}

/// The test names a libtest binary lists (`--list --format terse`: `name: test` lines).
pub fn parse_test_list(out: &str) -> Vec<String> {
    out.lines().filter_map(|l| l.strip_suffix(": test")).map(str::to_owned).collect()
}

/// What the guest does.
pub enum Mode<'a> {
    Tests(&'a [Check]),
    Shell { cmd: &'a str, timeout_secs: u32 },
}

/// The files the payload carries besides what `Mode` says.
pub struct Files<'a> {
    /// Programs put on the guest's PATH (`/imdsg/bin/<name>`): the daemon as `imds-guard`
    /// (whatever `--guard-bin` is called), the tests' helpers.
    pub bins: &'a [(String, PathBuf)],
    /// Test binaries by target name (`/imdsg/tests/<target>`).
    pub tests: &'a [(String, PathBuf)],
    /// Anything else the caller wants in the guest (`--put`), in `/imdsg/files/`.
    pub extra: &'a [PathBuf],
    /// Workspace directories tests read at their build path (symlinked there in the guest).
    pub workspace: &'a Path,
}

/// Lays out the payload in `dir` and makes `img`, an ext4 image of it (mke2fs -d, no mount).
pub fn payload(
    dir: &Path,
    img: &Path,
    label: &str,
    mode: &Mode<'_>,
    files: &Files<'_>,
) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    for d in ["bin", "tests", "files", "out", "workspace"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    for (name, b) in files.bins {
        link_or_copy(b, &dir.join("bin").join(name))?;
    }
    for (target, exe) in files.tests {
        link_or_copy(exe, &dir.join("tests").join(target))?;
    }
    for f in files.extra {
        let to =
            dir.join("files").join(f.file_name().with_context(|| format!("{} has no name", f.display()))?);
        run_quiet(Command::new("cp").arg("-a").arg(f).arg(&to))?;
    }
    // unit.rs reads systemd/imds-guard.service at its build path.
    let systemd = files.workspace.join("systemd");
    if systemd.is_dir() {
        run_quiet(Command::new("cp").arg("-a").arg(&systemd).arg(dir.join("workspace")))?;
    }
    let mut config = format!(
        "LABEL={}\nWORKSPACE={}\n",
        shell_quote(label),
        shell_quote(&files.workspace.to_string_lossy())
    );
    match mode {
        Mode::Tests(checks) => {
            config.push_str("MODE=tests\n");
            std::fs::write(dir.join("plan"), plan_file(checks))?;
        }
        Mode::Shell { cmd, timeout_secs } => {
            let _ = writeln!(config, "MODE=shell\nSHELL_TIMEOUT={timeout_secs}");
            std::fs::write(dir.join("shell-cmd"), format!("{cmd}\n"))?;
        }
    }
    std::fs::write(dir.join("config"), config)?;
    let script = dir.join("guest.sh");
    std::fs::write(&script, GUEST_SH)?;
    set_mode(&script, 0o755)?;

    let bytes = du(dir)?;
    let mib = (bytes + bytes / 4) / (1 << 20) + 128;
    let _ = std::fs::remove_file(img);
    run_quiet(
        Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-L", "imdsg-payload", "-d"])
            .arg(dir)
            .arg(img)
            .arg(format!("{mib}M")),
    )
}

/// The plan the guest reads: `<check>\t<binary>\t<test>\t<timeout>` per line.
pub fn plan_file(checks: &[Check]) -> String {
    checks.iter().map(|c| format!("{}\t{}\t{}\t{}\n", c.name(), c.target, c.test, c.timeout_secs)).collect()
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn link_or_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

pub fn set_mode(p: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", p.display()))
}

/// Bytes of the files below `dir`.
pub fn du(dir: &Path) -> anyhow::Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.path().symlink_metadata()?;
        n += if m.is_dir() { du(&e.path())? } else { m.len() };
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lister(target: &str) -> anyhow::Result<Vec<String>> {
        Ok(match target {
            "enforce" => vec![
                "allowed_uid_reaches_imds_and_denied_uid_gets_eperm_on_every_address_form".into(),
                "b".into(),
            ],
            "lifecycle" => vec!["bad_policy_is_refused_with_its_position".into()],
            _ => anyhow::bail!("no binary {target}"),
        })
    }

    #[test]
    fn default_plan_is_the_subset_and_filters_narrow_it() {
        let all = plan(&[], &[], None, lister).unwrap();
        assert_eq!(all.len(), SUBSET.len());
        assert_eq!(all[0].name(), format!("enforce::{}", SUBSET[0].1));
        let v1 = plan(&[], &["imdsv1::".into()], Some(42), lister).unwrap();
        assert_eq!(v1.len(), SUBSET.iter().filter(|(t, _, _)| *t == "imdsv1").count());
        assert!(v1.iter().all(|c| c.timeout_secs == 42 && c.target == "imdsv1"));
        assert!(plan(&[], &["nothing-matches".into()], None, lister).is_err());
    }

    #[test]
    fn the_newest_and_oldest_kernels_run_part_of_the_default_subset_only() {
        let all = plan(&[], &[], None, lister).unwrap();
        for n in ON_NEWEST {
            assert!(SUBSET.iter().any(|(_, t, _)| *t == n), "{n} is in the subset");
        }
        for n in NOT_ON_OLDEST {
            assert!(SUBSET.iter().any(|(_, t, _)| *t == n), "{n} is in the subset");
        }
        assert_eq!(for_kernel(&all, OLDEST, true).len(), SUBSET.len() - NOT_ON_OLDEST.len());
        assert_eq!(for_kernel(&all, "6.1", true).len(), SUBSET.len());
        assert_eq!(for_kernel(&all, NEWEST, true).len(), ON_NEWEST.len());
        // Checks asked for by name run everywhere.
        assert_eq!(for_kernel(&all, NEWEST, false).len(), SUBSET.len());
        assert_eq!(for_kernel(&all, OLDEST, false).len(), SUBSET.len());
    }

    #[test]
    fn tests_pick_whole_binaries_or_single_tests() {
        let p = plan(
            &["enforce".into(), "lifecycle::bad_policy_is_refused_with_its_position".into()],
            &[],
            None,
            lister,
        )
        .unwrap();
        let names: Vec<_> = p.iter().map(Check::name).collect();
        assert_eq!(
            names,
            [
                "enforce::allowed_uid_reaches_imds_and_denied_uid_gets_eperm_on_every_address_form",
                "enforce::b",
                "lifecycle::bad_policy_is_refused_with_its_position"
            ]
        );
        // A subset test keeps its own timeout, others get the default.
        assert_eq!(p[0].timeout_secs, SUBSET[0].2);
        assert_eq!(p[1].timeout_secs, DEFAULT_CHECK_TIMEOUT);
        assert!(plan(&["lifecycle::nope".into()], &[], None, lister).is_err());
        assert!(plan(&["nobinary".into()], &[], None, lister).is_err());
    }

    #[test]
    fn plan_file_and_test_lists() {
        let c = Check { target: "enforce".into(), test: "t1".into(), timeout_secs: 9 };
        assert_eq!(plan_file(&[c]), "enforce::t1\tenforce\tt1\t9\n");
        assert_eq!(parse_test_list("a: test\nb::c: test\nd: bench\n\n"), ["a", "b::c"]);
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
