//! Validated, resolved policy: user and group names become ids, endpoint presets become addresses,
//! and the rules become the kernel's rule keys (see `imds_guard_common::rule`).

use std::{collections::BTreeMap, path::PathBuf};

use imds_guard_common::{
    config::{GenConfig, MAX_PROBES, MAX_RULES, Mode, TooManyProbes},
    rule::{Imdsv1Action, RuleKey, RuleValue, comm_words, field},
};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use toml::Spanned;

use crate::{
    config::{AllowTable, ConfigError, LineIndex, PolicyFile, Source},
    endpoints::{self, Endpoints},
    identity::{CgroupRef, ExeId},
};

/// Warnings kept for a policy (the rest are counted in one more).
pub const MAX_WARNINGS: usize = 10;

/// A policy ready to be installed.
#[derive(Clone, Debug, Serialize)]
pub struct Policy {
    pub source: String,
    #[serde(serialize_with = "ser_mode")]
    pub mode: Mode,
    pub endpoints: Endpoints,
    /// IMDSv1 treatment for rules that do not set their own, and for processes no rule names
    /// (which only get a connection in monitor mode).
    #[serde(serialize_with = "ser_imdsv1")]
    pub default_imdsv1: Imdsv1Action,
    pub rules: Vec<Rule>,
    /// Hex SHA-256 of the resolved policy (what the kernel enforces), shown by `status`.
    pub digest: String,
    /// Things that are allowed but deserve attention (spoofable keys, cgroups not there yet).
    pub warnings: Vec<String>,
}

/// What resolving a policy needs from the host.
#[derive(Clone, Debug)]
pub struct Host {
    /// The cgroup2 mount point; `cgroup` rules are relative to it.
    pub cgroup_root: PathBuf,
}

/// One `[[allow]]` table, resolved.
#[derive(Clone, Debug, Serialize)]
pub struct Rule {
    /// 0-based position among the `[[allow]]` tables.
    pub index: u32,
    /// `name = ...`, or `allow[<index>]`.
    pub name: String,
    /// Line of the table in the policy file.
    pub line: usize,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub exe: Option<ExeId>,
    pub cgroup: Option<CgroupRef>,
    pub comm: Option<String>,
    /// What this workload's tokenless (IMDSv1) requests get.
    #[serde(serialize_with = "ser_imdsv1")]
    pub imdsv1: Imdsv1Action,
    /// What the rule's keys were written as and resolved to (e.g. `user "ssm-user" = uid 1001`).
    pub resolved: Vec<String>,
    /// A later table that is identical to this one (kept for `check` to point out).
    #[serde(skip)]
    pub duplicate_of: Option<u32>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's signature
fn ser_mode<S: serde::Serializer>(m: &Mode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(mode_name(*m))
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's signature
fn ser_imdsv1<S: serde::Serializer>(a: &Imdsv1Action, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(imdsv1_name(*a))
}

#[must_use]
pub const fn imdsv1_name(a: Imdsv1Action) -> &'static str {
    match a {
        Imdsv1Action::Allow => "allow",
        Imdsv1Action::Log => "log",
        Imdsv1Action::Deny => "deny",
    }
}

fn parse_imdsv1(
    source: &Source,
    v: Option<&Spanned<String>>,
    default: Imdsv1Action,
) -> Result<Imdsv1Action, ConfigError> {
    match v.map(|v| (v.get_ref().as_str(), v.span())) {
        None => Ok(default),
        Some(("allow", _)) => Ok(Imdsv1Action::Allow),
        Some(("log", _)) => Ok(Imdsv1Action::Log),
        Some(("deny", _)) => Ok(Imdsv1Action::Deny),
        Some((other, span)) => Err(source.error_at(
            Some(span),
            format!("unknown imdsv1 treatment `{other}`: expected \"allow\", \"log\" or \"deny\""),
        )),
    }
}

#[must_use]
pub const fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Enforce => "enforce",
        Mode::Monitor => "monitor",
    }
}

impl Rule {
    /// This rule's key in the kernel (without the generation).
    #[must_use]
    pub fn key(&self) -> RuleKey {
        let mut key = RuleKey::default();
        if let Some(uid) = self.uid {
            key.shape |= field::UID;
            key.uid = uid;
        }
        if let Some(gid) = self.gid {
            key.shape |= field::GID;
            key.gid = gid;
        }
        if let Some(exe) = &self.exe {
            key.shape |= field::EXE;
            key.exe_dev = exe.dev;
            key.exe_ino = exe.ino;
        }
        if let Some(cg) = &self.cgroup {
            key.shape |= field::CGROUP;
            key.cgroup_id = cg.id.unwrap_or(0);
        }
        if let Some(comm) = &self.comm {
            key.shape |= field::COMM;
            let mut b = [0u8; 16];
            b[..comm.len()].copy_from_slice(comm.as_bytes());
            key.comm = comm_words(&b);
        }
        key
    }

    /// A cgroup rule whose cgroup does not exist yet is not installed (nothing can be in it).
    #[must_use]
    pub fn is_pending(&self) -> bool {
        self.cgroup.as_ref().is_some_and(|c| c.id.is_none())
    }
}

impl Policy {
    /// Parses and resolves a policy. Every error names the file, line and column.
    pub fn from_source(source: &Source, host: &Host) -> Result<Self, ConfigError> {
        let file = source.parse()?;
        Self::resolve(source, file, host)
    }

    /// The rules that go into the kernel: not duplicates, not waiting for their cgroup.
    pub fn installed(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter().filter(|r| r.duplicate_of.is_none() && !r.is_pending())
    }

    /// Whether some installed rule names an executable (the programs then need BTF offsets).
    #[must_use]
    pub fn needs_exe(&self) -> bool {
        self.installed().any(|r| r.exe.is_some())
    }

    fn resolve(source: &Source, file: PolicyFile, host: &Host) -> Result<Self, ConfigError> {
        let mode = match file.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
            None | Some(("enforce", _)) => Mode::Enforce,
            Some(("monitor", _)) => Mode::Monitor,
            Some((other, span)) => {
                return Err(source.error_at(
                    Some(span),
                    format!("unknown mode `{other}`: expected \"enforce\" or \"monitor\""),
                ));
            }
        };

        let mut endpoints = Endpoints::default();
        match &file.endpoints {
            None => {
                for e in endpoints::DEFAULT {
                    endpoints.add(e).expect("default endpoints are valid");
                }
            }
            Some(list) => {
                if list.get_ref().is_empty() {
                    return Err(source.error_at(
                        Some(list.span()),
                        "`endpoints` is empty: list at least one preset or address (default: [\"aws-imds\"])",
                    ));
                }
                for item in list.get_ref() {
                    endpoints.add(item.get_ref()).map_err(|m| source.error_at(Some(item.span()), m))?;
                }
            }
        }

        if let Some(first_extra) = file.allow.get(MAX_RULES as usize) {
            return Err(source.error_at(
                Some(first_extra.span()),
                format!(
                    "[[allow]] table {} of {}: at most {MAX_RULES} are supported",
                    MAX_RULES + 1,
                    file.allow.len()
                ),
            ));
        }
        let default_imdsv1 = parse_imdsv1(source, file.imdsv1.as_ref(), Imdsv1Action::Log)?;
        let mut rules = Vec::with_capacity(file.allow.len());
        let lines = source.line_index();
        let mut seen: BTreeMap<RuleKey, u32> = BTreeMap::new();
        let mut warnings = Vec::new();
        let (mut probe_shapes, mut probe_levels): (Vec<u8>, Vec<u8>) = (Vec::new(), Vec::new());
        for (index, table) in file.allow.iter().enumerate() {
            let index = u32::try_from(index).expect("bounded by MAX_RULES");
            let mut rule = resolve_rule(source, &lines, index, table, host)?;
            rule.imdsv1 = parse_imdsv1(source, table.get_ref().imdsv1.as_ref(), default_imdsv1)?;
            if let Some(first) = seen.get(&rule.key()) {
                if !rule.is_pending() {
                    rule.duplicate_of = Some(*first);
                    warnings.push(format!(
                        "{} (line {}) repeats allow[{first}] and is ignored",
                        rule.name, rule.line
                    ));
                }
            } else {
                seen.insert(rule.key(), index);
            }
            if rule.comm.is_some() {
                warnings.push(format!(
                    "{} (line {}) matches on comm, which any process can set (prctl PR_SET_NAME); \
                     combine it with exe, cgroup or uid",
                    rule.name, rule.line
                ));
            }
            if let Some(cg) = rule.cgroup.as_ref().filter(|c| c.id.is_none()) {
                warnings.push(format!(
                    "{} (line {}): cgroup {} does not exist yet; the rule takes effect as soon as it appears",
                    rule.name, rule.line, cg.path
                ));
            }
            rules.push(rule);
            // Checked as each table comes, so that the error points at the one that goes too far.
            let (shapes, levels) = shapes_and_levels(&rules[rules.len() - 1..]);
            let new_shape = shapes.first().filter(|s| !probe_shapes.contains(s));
            let new_level = levels.first().filter(|l| !probe_levels.contains(l));
            if new_shape.is_some() || new_level.is_some() {
                probe_shapes.extend(new_shape);
                probe_levels.extend(new_level);
                if let Err(TooManyProbes(n)) = GenConfig::default().set_probes(&probe_shapes, &probe_levels) {
                    return Err(source.error_at(
                        Some(table.span()),
                        format!(
                            "with this table the rules combine {} kinds of key sets and {} cgroup depths, which \
                             takes {n} lookups per connect; at most {MAX_PROBES} are supported: use fewer key \
                             combinations or cgroup depths",
                            probe_shapes.len(),
                            probe_levels.len()
                        ),
                    ));
                }
            }
        }

        if warnings.len() > MAX_WARNINGS {
            // Every reload logs them: a policy of thousands of repeated tables must not flood the
            // journal. `check` still marks every table.
            let more = warnings.len() - MAX_WARNINGS;
            warnings.truncate(MAX_WARNINGS);
            warnings.push(format!(
                "... and {more} more warnings like these (imds-guard check shows every table)"
            ));
        }
        let mut policy = Policy {
            source: source.name.clone(),
            mode,
            endpoints,
            default_imdsv1,
            rules,
            digest: String::new(),
            warnings,
        };
        policy.digest = policy.compute_digest();
        Ok(policy)
    }

    fn compute_digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(mode_name(self.mode));
        h.update(imdsv1_name(self.default_imdsv1));
        for a in &self.endpoints.v4 {
            h.update(a.octets());
        }
        for a in &self.endpoints.v6 {
            h.update(a.octets());
        }
        for r in &self.rules {
            let k = r.key();
            h.update(r.index.to_le_bytes());
            h.update(k.shape.to_le_bytes());
            h.update(k.uid.to_le_bytes());
            h.update(k.gid.to_le_bytes());
            h.update(k.cgroup_id.to_le_bytes());
            h.update(k.exe_dev.to_le_bytes());
            h.update(k.exe_ino.to_le_bytes());
            h.update(k.comm[0].to_le_bytes());
            h.update(k.comm[1].to_le_bytes());
            h.update([u8::from(r.is_pending()), r.cgroup.as_ref().map_or(0, |c| c.level), r.imdsv1 as u8]);
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The map contents that enforce this policy as `generation`.
    #[must_use]
    pub fn kernel_tables(&self, generation: u32) -> (GenConfig, Vec<(RuleKey, RuleValue)>) {
        let mut cfg = GenConfig { generation, mode: self.mode as u32, ..GenConfig::default() };
        let v4 = self.endpoints.v4_words();
        cfg.v4[..v4.len()].copy_from_slice(&v4);
        cfg.v4_count = u32::try_from(v4.len()).expect("bounded");
        let v6 = self.endpoints.v6_words();
        cfg.v6[..v6.len()].copy_from_slice(&v6);
        cfg.v6_count = u32::try_from(v6.len()).expect("bounded");
        let digest: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&self.digest[2 * i..2 * i + 2], 16).expect("hex digest"))
            .collect();
        cfg.digest.copy_from_slice(&digest);

        let entries = self
            .installed()
            .map(|rule| {
                let key = RuleKey { generation, ..rule.key() };
                (key, RuleValue { rule_index: rule.index, imdsv1: rule.imdsv1 as u32 })
            })
            .collect();
        let (shapes, levels) = shapes_and_levels(&self.rules);
        cfg.set_probes(&shapes, &levels).expect("checked when the policy was resolved");
        cfg.needs_exe = u32::from(self.needs_exe());
        cfg.default_imdsv1 = self.default_imdsv1 as u32;
        (cfg, entries)
    }
}

/// The distinct shapes and cgroup depths of the rules that are installed.
fn shapes_and_levels(rules: &[Rule]) -> (Vec<u8>, Vec<u8>) {
    let mut shapes: Vec<u8> = Vec::new();
    let mut levels: Vec<u8> = Vec::new();
    for r in rules.iter().filter(|r| r.duplicate_of.is_none() && !r.is_pending()) {
        let shape = u8::try_from(r.key().shape).expect("shape fits u8");
        if !shapes.contains(&shape) {
            shapes.push(shape);
        }
        if let Some(c) = &r.cgroup
            && !levels.contains(&c.level)
        {
            levels.push(c.level);
        }
    }
    (shapes, levels)
}

fn resolve_rule(
    source: &Source,
    lines: &LineIndex,
    index: u32,
    table: &Spanned<AllowTable>,
    host: &Host,
) -> Result<Rule, ConfigError> {
    let t = table.get_ref();
    let line = lines.line(table.span().start);
    let name = t.name.as_ref().map_or_else(|| format!("allow[{index}]"), |n| n.get_ref().clone());
    let mut rule = Rule {
        index,
        name,
        line,
        uid: None,
        gid: None,
        exe: None,
        cgroup: None,
        comm: None,
        imdsv1: Imdsv1Action::Log,
        resolved: Vec::new(),
        duplicate_of: None,
    };

    match (&t.uid, &t.user) {
        (Some(_), Some(user)) => {
            return Err(source.error_at(
                Some(user.span()),
                "`uid` and `user` in one [[allow]] table both name the user; keep one",
            ));
        }
        (Some(uid), None) => {
            rule.uid = Some(*uid.get_ref());
            rule.resolved.push(format!("uid {}", uid.get_ref()));
        }
        (None, Some(user)) => {
            let uid = lookup_user(user.get_ref()).map_err(|m| source.error_at(Some(user.span()), m))?;
            rule.uid = Some(uid);
            rule.resolved.push(format!("user \"{}\" = uid {uid}", user.get_ref()));
        }
        (None, None) => {}
    }
    match (&t.gid, &t.group) {
        (Some(_), Some(group)) => {
            return Err(source.error_at(
                Some(group.span()),
                "`gid` and `group` in one [[allow]] table both name the group; keep one",
            ));
        }
        (Some(gid), None) => {
            rule.gid = Some(*gid.get_ref());
            rule.resolved.push(format!("gid {}", gid.get_ref()));
        }
        (None, Some(group)) => {
            let gid = lookup_group(group.get_ref()).map_err(|m| source.error_at(Some(group.span()), m))?;
            rule.gid = Some(gid);
            rule.resolved.push(format!("group \"{}\" = gid {gid}", group.get_ref()));
        }
        (None, None) => {}
    }
    if let Some(exe) = &t.exe {
        let id =
            crate::identity::resolve_exe(exe.get_ref()).map_err(|m| source.error_at(Some(exe.span()), m))?;
        rule.resolved.push(format!(
            "exe {} = file {} (dev {}:{}, inode {})",
            id.path,
            id.file.display(),
            id.dev >> 20,
            id.dev & 0xfffff,
            id.ino
        ));
        rule.exe = Some(id);
    }
    if let Some(cg) = &t.cgroup {
        let c = crate::identity::resolve_cgroup(&host.cgroup_root, cg.get_ref())
            .map_err(|m| source.error_at(Some(cg.span()), m))?;
        rule.resolved.push(match c.id {
            Some(id) => format!("cgroup {} (id {id}, depth {}) and below", c.path, c.level),
            None => format!("cgroup {} (not there yet) and below", c.path),
        });
        rule.cgroup = Some(c);
    }
    if let Some(comm) = &t.comm {
        let v = comm.get_ref();
        if v.is_empty() || v.len() > 15 || v.contains('\0') {
            return Err(source.error_at(
                Some(comm.span()),
                format!("comm `{v}` must be 1 to 15 bytes (the kernel keeps 15 bytes of a task name)"),
            ));
        }
        rule.resolved.push(format!("comm \"{v}\" (spoofable)"));
        rule.comm = Some(v.clone());
    }
    if rule.key().shape == 0 {
        return Err(source.error_at(
            Some(table.span()),
            "this [[allow]] table has no identity keys (uid, user, gid, group, exe, cgroup, comm), so \
             it would allow every process; to let everything through while watching, use mode = \"monitor\"",
        ));
    }
    Ok(rule)
}

fn lookup_user(name: &str) -> Result<u32, String> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err(format!("unknown user `{name}`: no such user in the passwd database")),
        Err(e) => Err(format!("cannot look up user `{name}`: {e}")),
    }
}

fn lookup_group(name: &str) -> Result<u32, String> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("unknown group `{name}`: no such group in the group database")),
        Err(e) => Err(format!("cannot look up group `{name}`: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(text: &str) -> Result<Policy, ConfigError> {
        let host = Host { cgroup_root: PathBuf::from("/nonexistent-cgroup-root") };
        Policy::from_source(&Source { name: "p.toml".into(), text: text.into() }, &host)
    }

    #[test]
    fn imdsv1_treatment() {
        let p = policy("imdsv1 = \"deny\"\n[[allow]]\nuid = 0\nimdsv1 = \"allow\"\n[[allow]]\nuid = 1\n")
            .unwrap();
        assert_eq!(p.default_imdsv1, Imdsv1Action::Deny);
        assert_eq!((p.rules[0].imdsv1, p.rules[1].imdsv1), (Imdsv1Action::Allow, Imdsv1Action::Deny));
        let (cfg, entries) = p.kernel_tables(1);
        assert_eq!(cfg.default_imdsv1, Imdsv1Action::Deny as u32);
        assert_eq!(entries[0].1.imdsv1, Imdsv1Action::Allow as u32);
        let e = policy("[[allow]]\nuid = 0\nimdsv1 = \"block\"\n").unwrap_err();
        assert_eq!(e.location, "p.toml:3:10");
        assert_ne!(policy("").unwrap().digest, policy("imdsv1 = \"deny\"\n").unwrap().digest);
    }

    #[test]
    fn exe_cgroup_and_comm_rules() {
        let p = policy("[[allow]]\nexe = \"/bin/sh\"\nuid = 0\n[[allow]]\ncgroup = \"/system.slice/ssm.service\"\n[[allow]]\ncomm = \"aws\"\n").unwrap();
        assert!(p.needs_exe());
        assert!(p.rules[1].is_pending(), "cgroup not there");
        assert!(p.warnings.iter().any(|w| w.contains("does not exist yet")), "{:?}", p.warnings);
        assert!(p.warnings.iter().any(|w| w.contains("prctl")), "{:?}", p.warnings);
        let (cfg, entries) = p.kernel_tables(1);
        assert_eq!(entries.len(), 2, "the pending cgroup rule is not installed");
        assert_eq!(cfg.needs_exe, 1);
        let e = policy("[[allow]]\nexe = \"/no/such/binary\"\n").unwrap_err();
        assert_eq!(e.location, "p.toml:2:7");
        assert!(
            policy("[[allow]]\ncomm = \"a-name-longer-than-15\"\n").unwrap_err().message.contains("15 bytes")
        );
        assert!(policy("[[allow]]\ncgroup = \"/\"\n").unwrap_err().message.contains("every process"));
    }

    #[test]
    fn defaults() {
        let p = policy("[[allow]]\nuid = 0\n").unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.endpoints.v4, vec!["169.254.169.254".parse::<std::net::Ipv4Addr>().unwrap()]);
        assert_eq!(p.endpoints.v6, vec!["fd00:ec2::254".parse::<std::net::Ipv6Addr>().unwrap()]);
        assert_eq!(p.digest.len(), 64);
    }

    #[test]
    fn an_empty_policy_allows_nobody() {
        let p = policy("").unwrap();
        assert!(p.rules.is_empty());
        let (cfg, entries) = p.kernel_tables(1);
        assert_eq!(cfg.probe_count, 0);
        assert!(entries.is_empty());
    }

    #[test]
    fn user_and_group_resolve() {
        let p = policy("[[allow]]\nuser = \"root\"\ngroup = \"root\"\n").unwrap();
        assert_eq!((p.rules[0].uid, p.rules[0].gid), (Some(0), Some(0)));
        assert_eq!(p.rules[0].resolved, ["user \"root\" = uid 0", "group \"root\" = gid 0"]);
    }

    #[test]
    fn unknown_user_names_line_and_value() {
        let e = policy("mode = \"enforce\"\n\n[[allow]]\nuser = \"no-such-user-xyz\"\n").unwrap_err();
        assert_eq!(e.location, "p.toml:4:8");
        assert!(e.message.contains("unknown user `no-such-user-xyz`"), "{e}");
    }

    #[test]
    fn unknown_group_and_mode_and_endpoint() {
        assert!(
            policy("[[allow]]\ngroup = \"no-such-group-xyz\"\n")
                .unwrap_err()
                .message
                .contains("unknown group")
        );
        let e = policy("mode = \"enforcing\"\n").unwrap_err();
        assert_eq!(e.location, "p.toml:1:8");
        let e = policy("endpoints = [\"aws-imds\", \"imds\"]\n").unwrap_err();
        assert_eq!(e.location, "p.toml:1:26");
        assert!(policy("endpoints = []\n").is_err());
    }

    #[test]
    fn empty_table_and_conflicts_are_refused() {
        assert!(policy("[[allow]]\nname = \"x\"\n").unwrap_err().message.contains("no identity keys"));
        assert!(policy("[[allow]]\nuid = 0\nuser = \"root\"\n").unwrap_err().message.contains("keep one"));
        assert!(policy("[[allow]]\ngid = 0\ngroup = \"root\"\n").unwrap_err().message.contains("keep one"));
    }

    #[test]
    fn limits_are_errors_at_the_table_that_exceeds_them() {
        let many: String = (0..=MAX_RULES).map(|i| format!("[[allow]]\nuid = {i}\n")).collect();
        let e = policy(&many).unwrap_err();
        assert_eq!(e.location, format!("p.toml:{}:1", 2 * MAX_RULES + 1));
        assert!(e.message.contains("at most 16384"), "{e}");
        assert!(policy(&many[..many.rfind("[[allow]]").unwrap()]).is_ok(), "16384 tables are fine");

        // Four key sets with a cgroup, at 12 depths: 4 * 12 lookups > 32.
        let root = std::env::temp_dir().join(format!("imdsg-probes-{}", std::process::id()));
        let deep: Vec<String> = (1..=12).map(|d| vec!["x"; d].join("/")).collect();
        std::fs::create_dir_all(root.join(&deep[11])).unwrap();
        let mut text = String::new();
        for d in &deep {
            for extra in ["", "uid = 1\n", "gid = 1\n", "comm = \"c\"\n"] {
                text.push_str(&format!("[[allow]]\ncgroup = \"/{d}\"\n{extra}"));
            }
        }
        let host = Host { cgroup_root: root.clone() };
        let e = Policy::from_source(&Source { name: "p.toml".into(), text }, &host).unwrap_err();
        std::fs::remove_dir_all(&root).unwrap();
        // Depths 1 to 8 take 4 * 8 = 32 lookups (11 lines each); the first table at depth 9 adds 4.
        assert!(e.message.contains("36 lookups per connect; at most 32"), "{e}");
        assert_eq!(e.location, "p.toml:89:1", "{e}");
    }

    #[test]
    fn kernel_tables() {
        let p = policy("mode = \"monitor\"\n[[allow]]\nuid = 0\n[[allow]]\ngid = 5\n[[allow]]\nuid = 7\ngid = 8\n[[allow]]\nuid = 0\n").unwrap();
        assert_eq!(p.rules[3].duplicate_of, Some(0));
        let (cfg, entries) = p.kernel_tables(9);
        assert_eq!(cfg.generation, 9);
        assert_eq!(cfg.mode, Mode::Monitor as u32);
        assert_eq!(cfg.probe_count, 3);
        assert_eq!(cfg.probes[0].shape, (field::UID | field::GID) as u8);
        assert_eq!(entries.len(), 3);
        assert!(entries.iter().all(|(k, _)| k.generation == 9));
        assert_eq!(cfg.v4_count, 1);
        assert_eq!(cfg.v4[0], u32::from_ne_bytes([169, 254, 169, 254]));
        // The digest changes with the policy.
        let q = policy("mode = \"monitor\"\n[[allow]]\nuid = 1\n").unwrap();
        assert_ne!(p.digest, q.digest);
    }
}
