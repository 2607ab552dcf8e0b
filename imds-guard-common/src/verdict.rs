//! Policy → verdict: the one place that decides. The kernel program calls these functions with BPF
//! map lookups and helpers; the daemon (`explain`) and the host unit tests call them with plain data.

use crate::config::{GenConfig, MAX_PROBES, Mode};
use crate::http::Finding;
use crate::rule::{Identity, Imdsv1Action, Read, RuleKey, RuleValue, field};
use crate::stats::Stat;

/// The key that probe `i` of `cfg` looks up for `id`, or `None` when that probe does not apply (past
/// the probe count, or a cgroup depth below the process's own cgroup). `ancestor(level)` returns
/// the id of the process's cgroup ancestor at `level` (the cgroup2 root is level 0), or 0 when the
/// process's cgroup is not that deep.
#[inline(always)]
pub fn probe_key<A: Fn(u32) -> u64>(
    cfg: &GenConfig,
    i: usize,
    id: &Identity,
    ancestor: A,
) -> Option<RuleKey> {
    if i >= MAX_PROBES || i >= cfg.probe_count as usize {
        return None;
    }
    let probe = cfg.probes[i];
    let shape = u32::from(probe.shape);
    let cgroup = if shape & field::CGROUP != 0 {
        let c = ancestor(u32::from(probe.level));
        if c == 0 {
            return None;
        }
        c
    } else {
        0
    };
    Some(RuleKey::probe(cfg.generation, shape, id, cgroup))
}

/// Finds the first (lowest `rule_index`) allow rule of `cfg`'s generation that `id` matches: one
/// lookup per probe, at most [`MAX_PROBES`]: a bounded loop, which the kernel program runs as it
/// is (verifiers since Linux 5.3 accept it; no `bpf_loop`).
#[inline(always)]
pub fn find_rule<A, L>(cfg: &GenConfig, id: &Identity, ancestor: A, lookup: L) -> Option<RuleValue>
where
    A: Fn(u32) -> u64,
    L: Fn(&RuleKey) -> Option<RuleValue>,
{
    find_match(cfg, id, ancestor, lookup).map(|m| m.value)
}

/// The rule that decides a connect, and what it rests on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Match {
    pub value: RuleValue,
    /// The fields ([`field`] bits) of the key that matched.
    pub shape: u32,
}

/// [`find_rule`], also saying which fields the deciding rule constrains.
#[inline(always)]
pub fn find_match<A, L>(cfg: &GenConfig, id: &Identity, ancestor: A, lookup: L) -> Option<Match>
where
    A: Fn(u32) -> u64,
    L: Fn(&RuleKey) -> Option<RuleValue>,
{
    let mut best: Option<Match> = None;
    for i in 0..MAX_PROBES {
        if i >= cfg.probe_count as usize {
            break;
        }
        if let Some(k) = probe_key(cfg, i, id, &ancestor)
            && let Some(v) = lookup(&k)
            && best.is_none_or(|b| v.rule_index < b.value.rule_index)
        {
            best = Some(Match { value: v, shape: k.shape });
        }
    }
    best
}

/// The terms a process gets: those of the rule it matches, or, when none does and the policy lets
/// the others read (`read = "no-secrets"` at its top), the others' terms (no rule,
/// [`crate::sock::NO_RULE`]; shape 0: nothing a debugger could borrow; the default `imdsv1`).
#[inline(always)]
#[must_use]
pub fn admit(cfg: &GenConfig, found: Option<Match>) -> Option<Match> {
    match found {
        Some(m) => Some(m),
        None if cfg.others_read != Read::Nothing as u32 => Some(Match {
            value: RuleValue {
                rule_index: crate::sock::NO_RULE,
                imdsv1: cfg.default_imdsv1,
                read: cfg.others_read,
            },
            shape: 0,
        }),
        None => None,
    }
}

/// The terms of a connection the policy lets through though no table admits it (monitor mode):
/// the policy's default `imdsv1`, and `read = "no-secrets"`, which monitor mode reports but never
/// enforces: what such a workload reads beyond the harmless facts is reported (`request_denied`,
/// not enforced), so that `suggest` can propose the narrowest `read` for the table it writes.
#[inline(always)]
#[must_use]
pub const fn monitored_terms(cfg: &GenConfig) -> RuleValue {
    RuleValue { rule_index: crate::sock::NO_RULE, imdsv1: cfg.default_imdsv1, read: MONITORED_READ as u32 }
}

/// What a process no table admits is judged to read by while monitor mode lets it through (see
/// [`monitored_terms`]).
pub const MONITORED_READ: Read = Read::NoSecrets;

/// Fields a debugger attached to the process can borrow: the executable it runs, the cgroup it
/// is in and its comm say nothing about whose code runs while it is traced. (uid and gid do: a
/// tracer needs the same uid, or more.)
pub const TRACE_SENSITIVE: u32 = field::EXE | field::CGROUP | field::COMM;

/// Why a connect to a metadata endpoint is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No rule matches and the policy enforces.
    NoRule,
    /// A rule on `exe`, `cgroup` or `comm` matches, but the process is being traced.
    Traced,
    /// A rule matches, but the socket cannot be inspected and the workload's treatment
    /// (`imdsv1 = "deny"`, or a restricted `read`) needs every request inspected.
    Uninspectable,
}

/// What is known about the connecting socket and task beyond the identity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectContext {
    /// The thread, or its process's leader, is being traced.
    pub traced: bool,
    /// The message hook will not see what is written on this socket (an MPTCP subflow, which
    /// sockmap does not take; a TCP Fast Open connect, whose first data leaves with the SYN).
    pub uninspectable: bool,
}

/// The whole connect decision: [`connect_verdict`] on the match, then the refusals that only a
/// matching rule can earn. Monitor mode refuses nothing.
#[inline(always)]
#[must_use]
pub fn judge_connect(
    mode: Mode,
    matched: Option<Match>,
    ctx: ConnectContext,
) -> (ConnectVerdict, Option<Refusal>) {
    let verdict = connect_verdict(mode, matched.map(|m| m.value));
    let Some(m) = matched else {
        return (verdict, if verdict == ConnectVerdict::Deny { Some(Refusal::NoRule) } else { None });
    };
    let refusal = if ctx.traced && m.shape & TRACE_SENSITIVE != 0 {
        Some(Refusal::Traced)
    } else if ctx.uninspectable && m.value.needs_inspection() {
        Some(Refusal::Uninspectable)
    } else {
        None
    };
    match (refusal, mode) {
        (Some(r), Mode::Enforce) => (ConnectVerdict::Deny, Some(r)),
        (Some(r), Mode::Monitor) => (ConnectVerdict::AllowAndReport, Some(r)),
        (None, _) => (verdict, None),
    }
}

/// What to do with a connect() to a metadata endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectVerdict {
    /// A rule allows it.
    Allow,
    /// No rule allows it and the policy enforces: refuse with EPERM and report.
    Deny,
    /// No rule allows it but the policy only monitors: let it through and report.
    AllowAndReport,
}

impl ConnectVerdict {
    /// As kept in [`crate::sock::SockState::writer_verdict`].
    #[inline(always)]
    #[must_use]
    pub const fn as_u32(self) -> u32 {
        match self {
            ConnectVerdict::Allow => 0,
            ConnectVerdict::Deny => 1,
            ConnectVerdict::AllowAndReport => 2,
        }
    }

    #[inline(always)]
    #[must_use]
    pub const fn from_u32(v: u32) -> Self {
        match v {
            0 => ConnectVerdict::Allow,
            2 => ConnectVerdict::AllowAndReport,
            _ => ConnectVerdict::Deny,
        }
    }

    /// The return value of a `cgroup/connect*` program: 1 lets the connect proceed, 0 fails it
    /// with EPERM.
    #[inline(always)]
    #[must_use]
    pub const fn retval(self) -> i32 {
        match self {
            ConnectVerdict::Allow | ConnectVerdict::AllowAndReport => 1,
            ConnectVerdict::Deny => 0,
        }
    }
}

#[inline(always)]
#[must_use]
pub const fn connect_verdict(mode: Mode, matched: Option<RuleValue>) -> ConnectVerdict {
    match (matched, mode) {
        (Some(_), _) => ConnectVerdict::Allow,
        (None, Mode::Enforce) => ConnectVerdict::Deny,
        (None, Mode::Monitor) => ConnectVerdict::AllowAndReport,
    }
}

/// What the message hook does with a write whose request is complete (`finding` final) on a
/// connection whose workload's IMDSv1 treatment is `action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestVerdict {
    /// Fail the write (SK_DROP: `sendmsg` gets EACCES at once, nothing reaches the service).
    pub refuse: bool,
    /// Send a request event.
    pub report: bool,
    /// The counter the finding adds to (none for requests that are fine).
    pub stat: Option<Stat>,
}

/// The request verdict: tokenless requests and writes the classifier cannot vouch for are
/// refused where the treatment is `deny` and reported unless it is `allow`; token PUTs with
/// X-Forwarded-For are always reported and never refused (the service refuses them itself);
/// IMDSv2 requests and plain token PUTs pass unreported. An incomplete request is not judged yet.
#[inline(always)]
#[must_use]
pub const fn request_verdict(finding: Finding, action: Imdsv1Action) -> RequestVerdict {
    let unverified = finding.is_unverified();
    let stat = match finding {
        Finding::TokenPutForwarded => Some(Stat::TokenPutForwarded),
        Finding::Imdsv1 => Some(Stat::Imdsv1Requests),
        Finding::Oversized | Finding::NotHttp | Finding::Trailing => Some(Stat::Unclassified),
        Finding::Incomplete | Finding::Imdsv2 | Finding::TokenPut | Finding::OtherCloud => None,
    };
    let refuse = unverified && matches!(action, Imdsv1Action::Deny);
    let report = (unverified && !matches!(action, Imdsv1Action::Allow))
        || matches!(finding, Finding::TokenPutForwarded);
    RequestVerdict { refuse, report, stat }
}

/// What a workload that may read `read` gets for a complete request (`finding` final) whose path
/// is of class `path_class` ([`crate::path::classify`]): `None` when it may have it, else the class
/// that refuses it. A restricted workload is refused the secrets, a path not proven harmless, and
/// any write the classifier cannot vouch for (not HTTP, oversized, bytes after the request: a
/// second request could hide there). The token PUT is always allowed (IMDSv2 needs it). A
/// workload that may read a list ([`Read::Listed`]) is refused what the list does not grant
/// (`grant`, from [`crate::lists::grant`]): a path under none of its prefixes
/// ([`crate::path::class::UNLISTED`]), a secret under none of its prefixes that reads that secret
/// (the secret's class).
#[inline(always)]
#[must_use]
pub const fn read_verdict(read: Read, grant: u32, finding: Finding, path_class: u32) -> Option<u32> {
    use crate::path::class;
    if !read.restricted() {
        return None;
    }
    match finding {
        Finding::Incomplete | Finding::TokenPut | Finding::TokenPutForwarded => None,
        Finding::NotHttp | Finding::Oversized | Finding::Trailing => Some(class::UNREADABLE),
        Finding::Imdsv1 | Finding::Imdsv2 | Finding::OtherCloud => match read {
            Read::Nothing => Some(class::UNREADABLE),
            _ if path_class == class::UNREADABLE => Some(class::UNREADABLE),
            Read::Listed if path_class == class::NONE => {
                if grant & 1 != 0 {
                    None
                } else {
                    Some(class::UNLISTED)
                }
            }
            Read::Listed if grant & 2 != 0 => None,
            _ if path_class == class::NONE => None,
            _ => Some(path_class),
        },
    }
}

/// [`read_verdict`] under the policy's `mode`: the class that refuses the request, and whether it
/// is refused (`true`, enforce mode) or only reported (monitor mode refuses nothing).
#[inline(always)]
#[must_use]
pub const fn read_judgement(
    read: Read,
    grant: u32,
    finding: Finding,
    path_class: u32,
    mode: Mode,
) -> Option<(u32, bool)> {
    match read_verdict(read, grant, finding, path_class) {
        Some(class) => Some((class, matches!(mode, Mode::Enforce))),
        None => None,
    }
}

/// [`read_verdict`] for every `read` kind, grant, finding and path class, in one table (0:
/// allowed), so that the message hook judges a request with one load and no branch: it judges
/// each write against two `read`s (the connecting workload's and the writer's), and a branch
/// per judgement multiplied the paths the verifier of Linux 5.10 walks past its limit.
static READ_VERDICTS: [u8; 4096] = {
    let mut t = [0u8; 4096];
    let mut i = 0;
    while i < 4096 {
        let (read, grant, finding, class) = (i >> 10, (i >> 8) & 3, (i >> 4) & 15, i & 15);
        if finding <= Finding::OtherCloud as usize {
            t[i] = match read_verdict(
                Read::from_u32(read as u32),
                grant as u32,
                Finding::from_u32(finding as u32),
                class as u32,
            ) {
                Some(c) => c as u8,
                None => 0,
            };
        }
        i += 1;
    }
    t
};

/// [`read_verdict`] as the kernel takes it: the class that refuses the request, 0 when it may
/// be read. `read` is the encoded `read` ([`RuleValue::read`]), `grant` from
/// [`crate::lists::grant`], `finding` a [`Finding`] as u32 and `path_class` from
/// [`crate::path::classify`].
#[inline(always)]
#[must_use]
pub fn read_class(read: u32, grant: u32, finding: u32, path_class: u32) -> u32 {
    let i = ((read & 3) << 10) | ((grant & 3) << 8) | ((finding & 15) << 4) | (path_class & 15);
    u32::from(READ_VERDICTS[crate::path::ix(i, 4095)])
}

/// Whether a complete request needs no judging past its finding: an IMDSv2 request written on a
/// connection whose workload, and whose writer, may read everything (`read` "all": 0 in the
/// encoded value's low byte). [`request_verdict`] and [`read_class`] always let such a request
/// through with nothing to count or report, whatever the path and the IMDSv1 treatment (a test
/// checks every combination), so the message hook skips them: the common request.
#[inline(always)]
#[must_use]
pub const fn needs_no_judging(read: u32, writer_read: u32, finding: u32) -> bool {
    (read | writer_read) & 0xff == 0 && finding == Finding::Imdsv2 as u32
}

/// `a` unless it is 0, then `b`, without a branch.
#[inline(always)]
#[must_use]
pub const fn first_refusal(a: u32, b: u32) -> u32 {
    // All ones when a is 0.
    let none = (((a | a.wrapping_neg()) >> 31) ^ 1).wrapping_neg();
    a | (b & none)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::collections::HashMap;
    use std::vec::Vec;

    use super::*;
    use crate::rule::Imdsv1Action;

    /// A policy under construction, stored the way the daemon stores it in the kernel.
    struct Table {
        cfg: GenConfig,
        rules: HashMap<RuleKey, RuleValue>,
        shapes: Vec<u8>,
        levels: Vec<u8>,
    }

    impl Table {
        fn new(generation: u32) -> Self {
            Table {
                cfg: GenConfig { generation, ..GenConfig::default() },
                rules: HashMap::new(),
                shapes: Vec::new(),
                levels: Vec::new(),
            }
        }

        fn rule(mut self, index: u32, key: RuleKey, cgroup_level: Option<u8>) -> Self {
            let key = RuleKey { generation: self.cfg.generation, ..key };
            let shape = key.shape as u8;
            if !self.shapes.contains(&shape) {
                self.shapes.push(shape);
            }
            if let Some(level) = cgroup_level
                && !self.levels.contains(&level)
            {
                self.levels.push(level);
            }
            self.cfg.set_probes(&self.shapes, &self.levels).unwrap();
            self.rules.entry(key).or_insert(RuleValue {
                rule_index: index,
                imdsv1: Imdsv1Action::Log as u32,
                read: 0,
            });
            self
        }

        fn find(&self, id: &Identity, ancestry: &[u64]) -> Option<u32> {
            find_rule(
                &self.cfg,
                id,
                |level| ancestry.get(level as usize).copied().unwrap_or(0),
                |k| self.rules.get(k).copied(),
            )
            .map(|v| v.rule_index)
        }
    }

    fn uid(uid: u32) -> RuleKey {
        RuleKey { shape: field::UID, uid, ..RuleKey::default() }
    }

    fn gid(gid: u32) -> RuleKey {
        RuleKey { shape: field::GID, gid, ..RuleKey::default() }
    }

    fn who(uid: u32, gid: u32) -> Identity {
        Identity { uid, gid, ..Identity::default() }
    }

    #[test]
    fn empty_policy_matches_nobody() {
        let t = Table::new(1);
        assert_eq!(t.find(&who(0, 0), &[1]), None);
        assert_eq!(connect_verdict(Mode::Enforce, None), ConnectVerdict::Deny);
        assert_eq!(connect_verdict(Mode::Monitor, None), ConnectVerdict::AllowAndReport);
    }

    #[test]
    fn uid_rule_matches_only_that_uid() {
        let t = Table::new(1).rule(0, uid(0), None);
        assert_eq!(t.find(&who(0, 5), &[1]), Some(0));
        assert_eq!(t.find(&who(1000, 0), &[1]), None);
    }

    #[test]
    fn tables_are_alternatives() {
        let t = Table::new(3).rule(0, uid(0), None).rule(1, gid(42), None);
        assert_eq!(t.find(&who(0, 0), &[1]), Some(0));
        assert_eq!(t.find(&who(7, 42), &[1]), Some(1));
        assert_eq!(t.find(&who(7, 43), &[1]), None);
    }

    #[test]
    fn keys_in_one_table_all_must_match() {
        let both = RuleKey { shape: field::UID | field::GID, uid: 7, gid: 42, ..RuleKey::default() };
        let t = Table::new(1).rule(0, both, None);
        assert_eq!(t.find(&who(7, 42), &[1]), Some(0));
        assert_eq!(t.find(&who(7, 41), &[1]), None);
        assert_eq!(t.find(&who(8, 42), &[1]), None);
    }

    #[test]
    fn first_matching_table_wins() {
        let t = Table::new(1).rule(0, gid(42), None).rule(1, uid(7), None);
        assert_eq!(t.find(&who(7, 42), &[1]), Some(0));
        let t = Table::new(1).rule(0, uid(7), None).rule(1, gid(42), None);
        assert_eq!(t.find(&who(7, 42), &[1]), Some(0));
    }

    #[test]
    fn cgroup_rule_covers_descendants_only() {
        // root(1) / system.slice(10) / ssm.service(100) / child(1000)
        let cg = RuleKey { shape: field::CGROUP, cgroup_id: 100, ..RuleKey::default() };
        let t = Table::new(1).rule(0, cg, Some(2));
        assert_eq!(t.find(&who(0, 0), &[1, 10, 100]), Some(0));
        assert_eq!(t.find(&who(0, 0), &[1, 10, 100, 1000]), Some(0));
        assert_eq!(t.find(&who(0, 0), &[1, 10]), None, "parent is not covered");
        assert_eq!(t.find(&who(0, 0), &[1, 10, 101]), None, "sibling is not covered");
    }

    #[test]
    fn cgroup_and_uid_combine() {
        let k = RuleKey { shape: field::CGROUP | field::UID, cgroup_id: 100, uid: 0, ..RuleKey::default() };
        let t = Table::new(1).rule(0, k, Some(2));
        assert_eq!(t.find(&who(0, 0), &[1, 10, 100]), Some(0));
        assert_eq!(t.find(&who(1, 0), &[1, 10, 100]), None);
    }

    #[test]
    fn other_generations_are_invisible() {
        let mut t = Table::new(1).rule(0, uid(0), None);
        t.cfg.generation = 2;
        assert_eq!(t.find(&who(0, 0), &[1]), None);
    }

    #[test]
    fn exe_and_comm_rules() {
        let exe = RuleKey { shape: field::EXE, exe_dev: 8, exe_ino: 1234, ..RuleKey::default() };
        let mut comm = [0u8; 16];
        comm[..3].copy_from_slice(b"aws");
        let comm = crate::rule::comm_words(&comm);
        let c = RuleKey { shape: field::COMM, comm, ..RuleKey::default() };
        let t = Table::new(1).rule(0, exe, None).rule(1, c, None);
        let mut id = Identity { exe_dev: 8, exe_ino: 1234, ..Identity::default() };
        assert_eq!(t.find(&id, &[1]), Some(0));
        id.exe_ino = 1235;
        assert_eq!(t.find(&id, &[1]), None);
        id.comm = comm;
        assert_eq!(t.find(&id, &[1]), Some(1));
    }

    #[test]
    fn probes_cover_shapes_and_levels_and_are_bounded() {
        let mut cfg = GenConfig::default();
        let cg = field::CGROUP as u8;
        let uid = field::UID as u8;
        cfg.set_probes(&[uid, cg, cg | uid], &[2, 4]).unwrap();
        assert_eq!(cfg.probe_count, 5);
        // Most specific first.
        assert_eq!(cfg.probes[0].shape, cg | uid);
        let all: Vec<u8> = (0..32).collect();
        assert!(cfg.set_probes(&all, &[1, 2, 3]).is_err());
    }

    #[test]
    fn cgroup_rules_at_two_depths() {
        let a = RuleKey { shape: field::CGROUP, cgroup_id: 10, ..RuleKey::default() };
        let b = RuleKey { shape: field::CGROUP, cgroup_id: 1000, ..RuleKey::default() };
        let t = Table::new(1).rule(0, b, Some(3)).rule(1, a, Some(1));
        assert_eq!(t.find(&who(0, 0), &[1, 10, 100, 1000]), Some(0));
        assert_eq!(t.find(&who(0, 0), &[1, 10, 100]), Some(1));
        assert_eq!(t.find(&who(0, 0), &[1, 11]), None);
    }

    #[test]
    fn endpoints_v4_v6_and_mapped() {
        let mut cfg = GenConfig::default();
        let v4 = u32::from_ne_bytes([169, 254, 169, 254]);
        cfg.v4[0] = v4;
        cfg.v4_count = 1;
        let v6: [u8; 16] = [0xfd, 0, 0, 0xec, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54];
        cfg.v6[0] = words(v6);
        cfg.v6_count = 1;
        assert!(cfg.is_endpoint_v4(v4));
        assert!(!cfg.is_endpoint_v4(u32::from_ne_bytes([169, 254, 169, 253])));
        assert!(cfg.is_endpoint_v6(words(v6)));
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&[169, 254, 169, 254]);
        assert!(cfg.is_endpoint_v6(words(mapped)));
        mapped[15] = 1;
        assert!(!cfg.is_endpoint_v6(words(mapped)));
        // ::169.254.169.254 (IPv4-compatible, not mapped) is a different, unroutable address.
        let mut compat = [0u8; 16];
        compat[12..].copy_from_slice(&[169, 254, 169, 254]);
        assert!(!cfg.is_endpoint_v6(words(compat)));
        // Entries past the count are ignored.
        cfg.v4_count = 0;
        assert!(!cfg.is_endpoint_v4(v4));
    }

    fn words(b: [u8; 16]) -> [u32; 4] {
        let w: Vec<u32> = b.chunks(4).map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect();
        [w[0], w[1], w[2], w[3]]
    }

    #[test]
    fn a_request_that_needs_no_judging_is_let_through_with_nothing_counted_or_reported() {
        use crate::path::class;
        let reads = [
            Read::All as u32,
            Read::NoSecrets as u32,
            Read::Nothing as u32,
            Read::Listed as u32,
            crate::rule::listed(1),
            crate::rule::listed(7),
            MONITORED_READ as u32,
            0x100, // "all" with stray upper bits
        ];
        let classes = [class::NONE, class::UNREADABLE, class::UNLISTED, 1, 2, 3, 4, 5, 6, 7, 15];
        let mut skipped = 0;
        for read in reads {
            for writer_read in reads {
                for f in 0..16u32 {
                    if !needs_no_judging(read, writer_read, f) {
                        continue;
                    }
                    skipped += 1;
                    let finding = Finding::from_u32(f);
                    assert_eq!(finding, Finding::Imdsv2);
                    for action in [Imdsv1Action::Allow, Imdsv1Action::Log, Imdsv1Action::Deny] {
                        let v = request_verdict(finding, action);
                        assert!(
                            !v.refuse && !v.report && v.stat.is_none(),
                            "{read:#x} {writer_read:#x} {action:?}"
                        );
                    }
                    for grant in 0..4 {
                        for c in classes {
                            assert_eq!(read_class(read, grant, f, c), 0, "{read:#x} grant {grant} class {c}");
                            assert_eq!(read_class(writer_read, grant, f, c), 0, "{writer_read:#x}");
                        }
                    }
                }
            }
        }
        // All, and "all" with upper bits, as either read: 2 x 2 pairs, one finding.
        assert_eq!(skipped, 4);
        // And a restricted read, on either side, or any other finding, is judged.
        assert!(!needs_no_judging(Read::NoSecrets as u32, 0, Finding::Imdsv2 as u32));
        assert!(!needs_no_judging(0, crate::rule::listed(1), Finding::Imdsv2 as u32));
        assert!(!needs_no_judging(0, 0, Finding::Imdsv1 as u32));
        assert!(!needs_no_judging(0, 0, Finding::TokenPutForwarded as u32));
    }

    #[test]
    fn request_verdicts_by_finding_and_treatment() {
        use Finding::*;
        use Imdsv1Action::{Allow, Deny, Log};
        let v = |f, a| {
            let r = request_verdict(f, a);
            (r.refuse, r.report)
        };
        for f in [Imdsv1, Oversized, NotHttp, Trailing] {
            assert_eq!(v(f, Deny), (true, true), "{f:?}");
            assert_eq!(v(f, Log), (false, true), "{f:?}");
            assert_eq!(v(f, Allow), (false, false), "{f:?}");
        }
        for a in [Deny, Log, Allow] {
            assert_eq!(v(TokenPutForwarded, a), (false, true), "forwarded PUTs are reported, never refused");
            for f in [Imdsv2, TokenPut, Incomplete] {
                assert_eq!(v(f, a), (false, false), "{f:?} {a:?}");
                assert_eq!(request_verdict(f, a).stat, None);
            }
        }
        assert_eq!(request_verdict(Trailing, Log).stat, Some(Stat::Unclassified));
        assert_eq!(
            request_verdict(Imdsv1, Allow).stat,
            Some(Stat::Imdsv1Requests),
            "counted even when allowed"
        );
    }

    #[test]
    fn traced_processes_lose_what_exe_cgroup_and_comm_rules_give_them() {
        use crate::config::Mode::{Enforce, Monitor};
        let m = |shape, imdsv1: Imdsv1Action| {
            Some(Match { value: RuleValue { rule_index: 3, imdsv1: imdsv1 as u32, read: 0 }, shape })
        };
        let traced = ConnectContext { traced: true, uninspectable: false };
        let mptcp = ConnectContext { traced: false, uninspectable: true };
        let plain = ConnectContext::default();
        for shape in
            [field::EXE, field::CGROUP, field::COMM, field::UID | field::EXE, field::GID | field::CGROUP]
        {
            assert_eq!(
                judge_connect(Enforce, m(shape, Imdsv1Action::Log), traced),
                (ConnectVerdict::Deny, Some(Refusal::Traced))
            );
            assert_eq!(
                judge_connect(Monitor, m(shape, Imdsv1Action::Log), traced),
                (ConnectVerdict::AllowAndReport, Some(Refusal::Traced)),
                "monitor mode reports what it would refuse"
            );
            assert_eq!(
                judge_connect(Enforce, m(shape, Imdsv1Action::Log), plain),
                (ConnectVerdict::Allow, None)
            );
        }
        // A tracer needs the uid (or more) already: uid and gid rules are not weakened by it.
        for shape in [field::UID, field::GID, field::UID | field::GID] {
            assert_eq!(
                judge_connect(Enforce, m(shape, Imdsv1Action::Log), traced),
                (ConnectVerdict::Allow, None)
            );
        }
        // MPTCP: refused only where requests must be inspected.
        assert_eq!(
            judge_connect(Enforce, m(field::UID, Imdsv1Action::Deny), mptcp),
            (ConnectVerdict::Deny, Some(Refusal::Uninspectable))
        );
        for a in [Imdsv1Action::Log, Imdsv1Action::Allow] {
            assert_eq!(
                judge_connect(Enforce, m(field::UID, a), mptcp),
                (ConnectVerdict::Allow, None),
                "{a:?}"
            );
        }
        assert_eq!(judge_connect(Enforce, None, traced), (ConnectVerdict::Deny, Some(Refusal::NoRule)));
        assert_eq!(judge_connect(Monitor, None, plain), (ConnectVerdict::AllowAndReport, None));
    }

    #[test]
    fn others_are_admitted_only_to_read_what_the_policy_lets_them() {
        use crate::config::Mode::Enforce;
        let mut cfg = GenConfig::default();
        assert_eq!(admit(&cfg, None), None, "by default the others are refused at connect");
        assert_eq!(
            judge_connect(Enforce, admit(&cfg, None), ConnectContext::default()).0,
            ConnectVerdict::Deny
        );
        cfg.others_read = Read::NoSecrets as u32;
        cfg.default_imdsv1 = Imdsv1Action::Deny as u32;
        let others = admit(&cfg, None).unwrap();
        assert_eq!(
            (others.value.rule_index, others.value.imdsv1, others.value.read, others.shape),
            (crate::sock::NO_RULE, Imdsv1Action::Deny as u32, Read::NoSecrets as u32, 0)
        );
        assert_eq!(
            judge_connect(Enforce, Some(others), ConnectContext::default()),
            (ConnectVerdict::Allow, None)
        );
        // What the message hook could not read is refused to them, whatever their imdsv1.
        cfg.default_imdsv1 = Imdsv1Action::Allow as u32;
        let uninspectable = ConnectContext { traced: true, uninspectable: true };
        assert_eq!(
            judge_connect(Enforce, admit(&cfg, None), uninspectable),
            (ConnectVerdict::Deny, Some(Refusal::Uninspectable)),
            "shape 0: a debugger borrows nothing, but the socket cannot be read"
        );
        // A table's match is never replaced by the others' terms.
        let table = Match { value: RuleValue { rule_index: 0, imdsv1: 1, read: 0 }, shape: field::UID };
        assert_eq!(admit(&cfg, Some(table)), Some(table));
    }

    #[test]
    fn monitor_mode_reports_what_enforce_mode_refuses_to_read() {
        use crate::path::class;
        let creds = class::ROLE_CREDENTIALS;
        for (mode, refused) in [(Mode::Enforce, true), (Mode::Monitor, false)] {
            assert_eq!(
                read_judgement(Read::NoSecrets, 0, Finding::Imdsv2, creds, mode),
                Some((creds, refused))
            );
            assert_eq!(read_judgement(Read::NoSecrets, 0, Finding::Imdsv2, class::NONE, mode), None);
            assert_eq!(read_judgement(Read::All, 0, Finding::Imdsv2, creds, mode), None);
        }
        // What monitor mode judges the workloads no table admits by.
        let cfg = GenConfig::default();
        assert_eq!(monitored_terms(&cfg).read, Read::NoSecrets as u32);
        assert_eq!(monitored_terms(&cfg).rule_index, crate::sock::NO_RULE);
    }

    #[test]
    fn read_verdicts_by_finding_and_path_class() {
        use crate::path::class;
        use Finding::*;
        for f in [Imdsv1, Imdsv2, TokenPut, TokenPutForwarded, NotHttp, Oversized, Trailing, Incomplete] {
            for c in [class::NONE, class::ROLE_CREDENTIALS, class::UNREADABLE] {
                assert_eq!(read_verdict(Read::All, 0, f, c), None, "{f:?} {c}");
            }
        }
        for f in [Imdsv1, Imdsv2] {
            assert_eq!(read_verdict(Read::NoSecrets, 0, f, class::NONE), None);
            for c in
                [class::ROLE_CREDENTIALS, class::IDENTITY_CREDENTIALS, class::USER_DATA, class::UNREADABLE]
            {
                assert_eq!(read_verdict(Read::NoSecrets, 0, f, c), Some(c), "{f:?}");
            }
        }
        for f in [NotHttp, Oversized, Trailing] {
            assert_eq!(read_verdict(Read::NoSecrets, 0, f, class::NONE), Some(class::UNREADABLE), "{f:?}");
        }
        for f in [TokenPut, TokenPutForwarded, Incomplete] {
            assert_eq!(read_verdict(Read::NoSecrets, 0, f, class::UNREADABLE), None, "{f:?}");
        }
    }

    #[test]
    fn the_kernel_s_table_is_read_verdict() {
        for read in [Read::All, Read::NoSecrets, Read::Nothing, Read::Listed] {
            for grant in 0..4 {
                for f in 0..=8 {
                    for c in 0..=8 {
                        let want = read_verdict(read, grant, Finding::from_u32(f), c).unwrap_or(0);
                        let encoded = if read == Read::Listed { crate::rule::listed(7) } else { read as u32 };
                        assert_eq!(read_class(encoded, grant, f, c), want, "{read:?} {grant} {f} {c}");
                    }
                }
            }
        }
        assert_eq!((first_refusal(0, 5), first_refusal(3, 5), first_refusal(0, 0)), (5, 3, 0));
    }

    #[test]
    fn a_list_grants_what_its_prefixes_cover() {
        use crate::path::class;
        use Finding::*;
        let l = Read::Listed;
        for f in [Imdsv1, Imdsv2, OtherCloud] {
            assert_eq!(read_verdict(l, 1, f, class::NONE), None, "listed");
            assert_eq!(read_verdict(l, 0, f, class::NONE), Some(class::UNLISTED), "not listed");
            assert_eq!(
                read_verdict(l, 1, f, class::ROLE_CREDENTIALS),
                Some(class::ROLE_CREDENTIALS),
                "{f:?}"
            );
            assert_eq!(read_verdict(l, 3, f, class::ROLE_CREDENTIALS), None, "a prefix inside the secret");
            assert_eq!(read_verdict(l, 3, f, class::UNREADABLE), Some(class::UNREADABLE));
            assert_eq!(read_verdict(l, 0, f, class::USER_DATA), Some(class::USER_DATA));
        }
        for f in [NotHttp, Oversized, Trailing] {
            assert_eq!(read_verdict(l, 3, f, class::NONE), Some(class::UNREADABLE), "{f:?}");
        }
        for f in [TokenPut, TokenPutForwarded, Incomplete] {
            assert_eq!(read_verdict(l, 0, f, class::UNREADABLE), None, "{f:?}");
        }
        assert_eq!(read_judgement(l, 0, Imdsv2, class::NONE, Mode::Monitor), Some((class::UNLISTED, false)));
        let v = crate::rule::listed(5);
        assert_eq!((Read::from_u32(v), crate::rule::list_of(v)), (Read::Listed, 5));
        assert!(RuleValue { rule_index: 0, imdsv1: 0, read: v }.needs_inspection());
    }

    #[test]
    fn the_match_names_the_shape_of_the_deciding_rule() {
        let t = Table::new(1)
            .rule(0, RuleKey { shape: field::EXE, exe_dev: 1, exe_ino: 2, ..RuleKey::default() }, None)
            .rule(1, uid(1000), None);
        let id = Identity { uid: 1000, exe_dev: 1, exe_ino: 2, ..Identity::default() };
        let m = find_match(&t.cfg, &id, |_| 0, |k| t.rules.get(k).copied()).unwrap();
        assert_eq!((m.value.rule_index, m.shape), (0, field::EXE), "the first table decides, with its shape");
        let other_exe = Identity { exe_ino: 9, ..id };
        let m = find_match(&t.cfg, &other_exe, |_| 0, |k| t.rules.get(k).copied()).unwrap();
        assert_eq!((m.value.rule_index, m.shape), (1, field::UID));
    }
}
