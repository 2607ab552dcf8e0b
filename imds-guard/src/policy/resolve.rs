//! Resolving a parsed policy file on this host: names become ids, presets become addresses, paths
//! become file and cgroup identities, pod selectors become the pods' cgroups; duplicates, limits
//! and waiting tables are found. Every error names `file:line:col`.

use std::hash::BuildHasher as _;

use imds_guard_common::{
    config::{GenConfig, MAX_PROBES, MAX_RULES, Mode, TooManyProbes},
    rule::{Imdsv1Action, Read},
};
use toml::Spanned;

use super::{
    Host, MAX_WARNINGS, Policy, Preexisting, compile,
    endpoints::{self, Endpoints},
    netfilter,
    pods::{self, KubeConfig, Node},
    rule::{NOT_YET, PodRule, ReadList, Rule, RuleName},
    schema::{AllowTable, PolicyFile, ReadSpec},
    source::{ConfigError, LineIndex, Source},
    users::{Missing, lookup_group, lookup_user},
};
use crate::host::workload::PodSelector;

impl Policy {
    pub(super) fn resolve(source: &Source, file: PolicyFile, host: &Host) -> Result<Self, ConfigError> {
        let mode = resolve_mode(source, file.mode.as_ref())?;
        let endpoints = resolve_endpoints(source, file.endpoints.as_ref())?;
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
        let (others_read, others_prefixes) =
            parse_read(source, file.read.as_ref(), Read::Nothing, &[Read::Nothing, Read::NoSecrets])?;
        let kube = KubeConfig::from_table(source, file.kubernetes.as_ref())?;
        // The node's pods are read only when some table selects pods, once for all of them.
        let mut node = None;
        if file.allow.iter().any(|t| t.get_ref().pod.is_some() || t.get_ref().namespace.is_some()) {
            let containers = file.allow.iter().any(|t| t.get_ref().container.is_some());
            node = Some(
                Node::read(&kube, &host.cgroup_root, containers)
                    .map_err(|m| source.error_at(file.kubernetes.as_ref().map(Spanned::span), m))?,
            );
        }
        let preexisting = resolve_preexisting(source, file.preexisting.as_ref())?;
        let raw_sockets = resolve_raw_sockets(source, file.raw_sockets.as_ref())?;
        let lines = source.line_index();
        let mut set = RuleSet::with_capacity(file.allow.len());
        for (index, table) in file.allow.iter().enumerate() {
            let index = u32::try_from(index).expect("bounded by MAX_RULES");
            let mut rule = resolve_rule(source, &lines, index, table, host, node.as_mut())?;
            rule.imdsv1 = parse_imdsv1(source, table.get_ref().imdsv1.as_deref(), default_imdsv1)?;
            (rule.read, rule.read_prefixes) = parse_read(
                source,
                table.get_ref().read.as_deref(),
                Read::All,
                &[Read::All, Read::NoSecrets],
            )?;
            set.add(source, table, rule)?;
        }
        let netfilter = netfilter::Settings::resolve(source, file.netfilter.as_ref())?;
        let RuleSet { mut rules, mut warnings, .. } = set;
        // The `read` lists: tables with the same list share it, and together they must fit the
        // kernel's automaton (checked by compiling it).
        let mut lists: Vec<ReadList> = others_prefixes.iter().cloned().collect();
        for (rule, table) in rules.iter_mut().zip(&file.allow) {
            let Some(l) = &rule.read_prefixes else { continue };
            match lists.iter().find(|k| *k == l) {
                Some(k) => rule.read_prefixes = Some(k.clone()),
                None if lists.len() == imds_guard_common::lists::MAX_LISTS => {
                    return Err(source.error_at(
                        table.get_ref().read.as_deref().map(Spanned::span),
                        imds_guard_common::lists::ListError::TooManyLists(lists.len() + 1).to_string(),
                    ));
                }
                None => lists.push(l.clone()),
            }
        }
        if let Err(e) = imds_guard_common::lists::ReadLists::build(0, &lists) {
            return Err(source.error_at(None, e.to_string()));
        }
        let entries: usize = rules
            .iter()
            .filter(|r| r.duplicate_of.is_none() && !r.is_pending())
            .map(|r| r.keys().count())
            .sum();
        if entries > MAX_RULES as usize {
            return Err(source.error_at(
                None,
                format!(
                    "the rules resolve to {entries} kernel entries (pod rules count one per selected pod); at most {MAX_RULES} are supported"
                ),
            ));
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
            others_read,
            others_prefixes,
            preexisting,
            raw_sockets,
            pods: kube.dir.clone(),
            rules,
            netfilter,
            digest: String::new(),
            warnings,
            pod_watch: node.map(|n| n.watch).unwrap_or_default(),
        };
        policy.digest = policy.compute_digest();
        Ok(policy)
    }
}

fn resolve_mode(source: &Source, mode: Option<&Spanned<String>>) -> Result<Mode, ConfigError> {
    let Some(m) = mode else { return Ok(Mode::Enforce) };
    Mode::from_name(m.get_ref()).ok_or_else(|| {
        source.error_at(
            Some(m.span()),
            format!("unknown mode `{}`: expected \"enforce\" or \"monitor\"", m.get_ref()),
        )
    })
}

fn resolve_endpoints(
    source: &Source,
    list: Option<&Spanned<Vec<Spanned<String>>>>,
) -> Result<Endpoints, ConfigError> {
    let mut endpoints = Endpoints::default();
    let Some(list) = list else {
        for e in endpoints::DEFAULT {
            endpoints.add(e).expect("default endpoints are valid");
        }
        return Ok(endpoints);
    };
    if list.get_ref().is_empty() {
        return Err(source.error_at(
            Some(list.span()),
            "`endpoints` is empty: list at least one preset or address (default: [\"aws-imds\"])",
        ));
    }
    for item in list.get_ref() {
        endpoints.add(item.get_ref()).map_err(|m| source.error_at(Some(item.span()), m))?;
    }
    Ok(endpoints)
}

fn resolve_preexisting(source: &Source, v: Option<&Spanned<String>>) -> Result<Preexisting, ConfigError> {
    match v.map(|v| (v.get_ref().as_str(), v.span())) {
        None | Some(("report", _)) => Ok(Preexisting::Report),
        Some(("close", _)) => Ok(Preexisting::Close),
        Some((other, span)) => Err(source.error_at(
            Some(span),
            format!("unknown preexisting treatment `{other}`: expected \"report\" or \"close\""),
        )),
    }
}

fn resolve_raw_sockets(
    source: &Source,
    v: Option<&Spanned<String>>,
) -> Result<imds_guard_common::config::RawSockets, ConfigError> {
    use imds_guard_common::config::RawSockets;
    match v.map(|v| (v.get_ref().as_str(), v.span())) {
        None | Some(("allow", _)) => Ok(RawSockets::Allow),
        Some(("deny", _)) => Ok(RawSockets::Deny),
        Some((other, span)) => Err(source.error_at(
            Some(span),
            format!("unknown raw_sockets treatment `{other}`: expected \"allow\" or \"deny\""),
        )),
    }
}

/// The rules resolved so far, with what is checked across them: duplicates, the lookups a
/// connect would take, and the warnings.
struct RuleSet {
    rules: Vec<Rule>,
    /// The first rule of each key, by its index in `rules` (4 bytes a slot where the key itself
    /// would take 64: for 10,000 rules ~64 KB instead of ~1.1 MB first touched on a reload). Pod
    /// rules are not in it, so every rule in it has exactly one key.
    seen: hashbrown::HashTable<u32>,
    seen_hash: foldhash::fast::RandomState,
    warnings: Vec<String>,
    probe_shapes: Vec<u8>,
    probe_levels: Vec<u8>,
}

impl RuleSet {
    fn with_capacity(n: usize) -> Self {
        RuleSet {
            rules: Vec::with_capacity(n),
            seen: hashbrown::HashTable::with_capacity(n),
            seen_hash: foldhash::fast::RandomState::default(),
            warnings: Vec::new(),
            probe_shapes: Vec::new(),
            probe_levels: Vec::new(),
        }
    }

    /// Adds the rule of `table`: marks it a duplicate of an earlier one with the same key, notes
    /// what deserves a warning, and refuses it if the lookups a connect takes grow past the limit.
    fn add(
        &mut self,
        source: &Source,
        table: &Spanned<AllowTable>,
        mut rule: Rule,
    ) -> Result<(), ConfigError> {
        // Pod rules are left out: two selectors that pick the same pods now may not later
        // (their shared keys go to the first rule anyway, see the compiled tables).
        if rule.pods.is_none() && !rule.is_pending() {
            let key_of = |r: &Rule| r.keys().next().expect("a rule without pods has one key");
            let key = key_of(&rule);
            let (rules, hash) = (&self.rules, &self.seen_hash);
            let at = |i: &u32| &rules[*i as usize];
            let first = match self.seen.entry(
                hash.hash_one(key),
                |i| key_of(at(i)) == key,
                |i| hash.hash_one(key_of(at(i))),
            ) {
                hashbrown::hash_table::Entry::Occupied(first) => *first.get(),
                hashbrown::hash_table::Entry::Vacant(slot) => *slot.insert(rule.index).get(),
            };
            if first != rule.index {
                rule.duplicate_of = Some(first);
                self.warnings.push(format!(
                    "{} (line {}) repeats allow[{first}] and is ignored",
                    rule.name, rule.line
                ));
            }
        }
        self.warnings.extend(warnings(&rule));
        self.rules.push(rule);
        // Checked as each table comes, so that the error points at the one that goes too far.
        let rule = &self.rules[self.rules.len() - 1];
        if compile::add_shape_and_levels(rule, &mut self.probe_shapes, &mut self.probe_levels)
            && let Err(TooManyProbes(n)) =
                GenConfig::default().set_probes(&self.probe_shapes, &self.probe_levels)
        {
            return Err(source.error_at(
                Some(table.span()),
                format!(
                    "with this table the rules combine {} kinds of key sets and {} cgroup depths, which \
                     takes {n} lookups per connect; at most {MAX_PROBES} are supported: use fewer key \
                     combinations or cgroup depths",
                    self.probe_shapes.len(),
                    self.probe_levels.len()
                ),
            ));
        }
        Ok(())
    }
}

/// What deserves attention in one rule: a spoofable key, or something it names that is not
/// there (yet, or any more).
fn warnings(rule: &Rule) -> Vec<String> {
    // Rendered only for a rule that has something to say (a reload of 10,000 rules has none).
    let at = || format!("{} (line {})", rule.name, rule.line);
    let mut out = Vec::new();
    if rule.comm.is_some() {
        out.push(format!(
            "{} matches on comm, which any process can set (prctl PR_SET_NAME); combine it with exe, cgroup or uid",
            at()
        ));
    }
    if let Some(w) = &rule.waiting_for {
        out.push(format!("{}: {w} does not exist yet; the rule takes effect as soon as it does", at()));
    }
    if let Some(cg) = rule.cgroup.as_ref().filter(|c| c.id.is_none()) {
        out.push(format!(
            "{}: cgroup {} does not exist yet; the rule takes effect as soon as it appears",
            at(),
            cg.path
        ));
    }
    if let Some(exe) = rule.exe.as_ref().filter(|e| e.id.is_some()) {
        use crate::host::identity::{is_interpreter, writable_by_others};
        if is_interpreter(&exe.file) && rule.uid.is_none() && rule.cgroup.is_none() && rule.pods.is_none() {
            out.push(format!(
                "{}: exe {} is an interpreter ({}): every script it runs is allowed, any user's; pair it \
                 with uid or cgroup, or name the program itself",
                at(),
                exe.path,
                exe.file.display()
            ));
        }
        if let Some(why) = writable_by_others(&exe.file) {
            out.push(format!(
                "{}: exe {}: {why}, so that user can replace the program the rule allows",
                at(),
                exe.path
            ));
        }
    }
    if let Some(exe) = rule.exe.as_ref().filter(|e| e.id.is_none()) {
        out.push(format!(
            "{}: no file is at exe {} now (removed?); the rule matches nothing until one is there",
            at(),
            exe.path
        ));
    }
    if rule.pods.as_ref().is_some_and(|p| p.matches.is_empty()) {
        out.push(format!(
            "{}: no pod it selects runs on this node now; the rule takes effect as soon as one starts",
            at()
        ));
    }
    out
}

/// `read = ...`: one of `allowed` (a table may not say `"none"`: that is no table; the top level
/// may not say `"all"`: that is monitor mode), or a list of path prefixes ([`Read::Listed`], with
/// the prefixes, each checked).
fn parse_read(
    source: &Source,
    v: Option<&Spanned<ReadSpec>>,
    default: Read,
    allowed: &[Read],
) -> Result<(Read, Option<ReadList>), ConfigError> {
    let Some(spec) = v else { return Ok((default, None)) };
    let v = match spec.get_ref() {
        ReadSpec::Class(c) => Spanned::new(spec.span(), c),
        ReadSpec::Prefixes(list) => {
            if list.is_empty() {
                return Err(source.error_at(
                    Some(spec.span()),
                    "an empty `read` list: list the path prefixes the workload may read (the token PUT is always allowed)"
                        .to_owned(),
                ));
            }
            let mut prefixes: Vec<String> = Vec::with_capacity(list.len());
            for p in list {
                if let Some(why) = imds_guard_common::lists::prefix_problem(p.get_ref()) {
                    return Err(
                        source.error_at(Some(p.span()), format!("`read` prefix {:?}: {why}", p.get_ref()))
                    );
                }
                if !prefixes.contains(p.get_ref()) {
                    prefixes.push(p.get_ref().clone());
                }
            }
            return Ok((Read::Listed, Some(ReadList::from(prefixes))));
        }
    };
    Read::from_name(v.get_ref()).filter(|r| allowed.contains(r)).map(|r| (r, None)).ok_or_else(|| {
        let names: Vec<String> = allowed.iter().map(|r| format!("\"{}\"", r.name())).collect();
        let whom = if allowed.contains(&Read::All) {
            "for a table"
        } else {
            "for processes no table admits (at the top of the policy)"
        };
        source.error_at(
            Some(v.span()),
            format!(
                "unknown read `{}` {whom}: expected {} or a list of path prefixes",
                v.get_ref(),
                names.join(", ")
            ),
        )
    })
}

fn parse_imdsv1(
    source: &Source,
    v: Option<&Spanned<String>>,
    default: Imdsv1Action,
) -> Result<Imdsv1Action, ConfigError> {
    let Some(v) = v else { return Ok(default) };
    Imdsv1Action::from_name(v.get_ref()).ok_or_else(|| {
        source.error_at(
            Some(v.span()),
            format!("unknown imdsv1 treatment `{}`: expected \"allow\", \"log\" or \"deny\"", v.get_ref()),
        )
    })
}

/// A table's `uid` or `user` (`gid` or `group`: `keys`): the id as written, or the name's from the
/// user (group) database; with [`Host::waiting_names`], a name it does not know yet makes the rule
/// wait for it ([`NOT_YET`] meanwhile; `waiting` says for what). A name is kept in `written`, for
/// [`Rule::resolved`].
fn resolve_id(
    source: &Source,
    host: &Host,
    (id_key, name_key): (&str, &str),
    (id, name): (Option<&Spanned<u32>>, Option<&Spanned<String>>),
    lookup: fn(&str) -> Result<u32, Missing>,
    (written, waiting): (&mut Option<Box<str>>, &mut Option<String>),
) -> Result<Option<u32>, ConfigError> {
    match (id, name) {
        (Some(_), Some(name)) => Err(source.error_at(
            Some(name.span()),
            format!("`{id_key}` and `{name_key}` in one [[allow]] table both name the {name_key}; keep one"),
        )),
        (Some(id), None) => Ok(Some(*id.get_ref())),
        (None, Some(name)) => match lookup(name.get_ref()) {
            Ok(id) => {
                *written = Some(name.get_ref().as_str().into());
                Ok(Some(id))
            }
            Err(Missing::Unknown(_)) if host.waiting_names => {
                waiting.get_or_insert_with(|| format!("{name_key} `{}`", name.get_ref()));
                *written = Some(name.get_ref().as_str().into());
                Ok(Some(NOT_YET))
            }
            Err(m) => Err(source.error_at(Some(name.span()), m.to_string())),
        },
        (None, None) => Ok(None),
    }
}

fn resolve_rule(
    source: &Source,
    lines: &LineIndex,
    index: u32,
    table: &Spanned<AllowTable>,
    host: &Host,
    node: Option<&mut Node>,
) -> Result<Rule, ConfigError> {
    let t = table.get_ref();
    let line = lines.line(table.span().start);
    let name = t.name.as_ref().map_or(RuleName::Table(index), |n| RuleName::Given(n.get_ref().clone()));
    let mut rule = Rule {
        index,
        name,
        line,
        uid: None,
        gid: None,
        exe: None,
        cgroup: None,
        comm: None,
        pods: None,
        imdsv1: Imdsv1Action::Log,
        read: Read::All,
        read_prefixes: None,
        user: None,
        group: None,
        duplicate_of: None,
        waiting_for: None,
    };

    rule.uid = resolve_id(
        source,
        host,
        ("uid", "user"),
        (t.uid.as_ref(), t.user.as_deref()),
        lookup_user,
        (&mut rule.user, &mut rule.waiting_for),
    )?;
    rule.gid = resolve_id(
        source,
        host,
        ("gid", "group"),
        (t.gid.as_ref(), t.group.as_deref()),
        lookup_group,
        (&mut rule.group, &mut rule.waiting_for),
    )?;
    if let Some(exe) = &t.exe {
        let id = crate::host::identity::resolve_exe(exe.get_ref(), host.waiting_names)
            .map_err(|m| source.error_at(Some(exe.span()), m))?;
        rule.exe = Some(Box::new(id));
    }
    if let Some(cg) = &t.cgroup {
        let c = crate::host::identity::resolve_cgroup(&host.cgroup_root, cg.get_ref())
            .map_err(|m| source.error_at(Some(cg.span()), m))?;
        rule.cgroup = Some(Box::new(c));
    }
    if let Some(comm) = &t.comm {
        let v = comm.get_ref();
        if v.is_empty() || v.len() > 15 || v.contains('\0') {
            return Err(source.error_at(
                Some(comm.span()),
                format!("comm `{v}` must be 1 to 15 bytes (the kernel keeps 15 bytes of a task name)"),
            ));
        }
        rule.comm = Some(v.clone());
    }
    if let Some(sel) = pod_selector(source, t)? {
        let node = node.expect("the node is read when a table selects pods");
        let matches = node.resolve(&sel, &host.cgroup_root);
        let written = match (&t.pod, &sel.container) {
            (Some(p), None) => format!("pod {}*", p.get_ref()),
            (Some(p), Some(c)) => format!("container {c} of pod {}*", p.get_ref()),
            (None, None) => format!("namespace {}", sel.namespace),
            (None, Some(c)) => format!("container {c} of namespace {}", sel.namespace),
        };
        rule.pods = Some(Box::new(PodRule { selector: sel, matches, written }));
    }
    if rule.key().shape == 0 {
        return Err(source.error_at(
            Some(table.span()),
            "this [[allow]] table has no identity keys (uid, user, gid, group, exe, cgroup, comm, pod, \
             namespace), so it would allow every process; to let everything through while watching, use \
             mode = \"monitor\"",
        ));
    }
    Ok(rule)
}

/// The pod selector of a table (`pod` or `namespace`, and `container`), checked.
fn pod_selector(source: &Source, t: &AllowTable) -> Result<Option<PodSelector>, ConfigError> {
    let at = |v: &Spanned<String>, m: String| source.error_at(Some(v.span()), m);
    if let Some(cg) = &t.cgroup
        && (t.pod.is_some() || t.namespace.is_some())
    {
        return Err(at(
            cg,
            "`cgroup` and `pod`/`namespace` in one [[allow]] table both name the cgroup; keep one".into(),
        ));
    }
    let (namespace, name_prefix) = match (&t.pod, &t.namespace) {
        (Some(_), Some(ns)) => {
            return Err(at(ns, "`pod` already names the namespace; keep `pod` or `namespace`".into()));
        }
        (Some(p), None) => pods::parse_pod(p.get_ref()).map_err(|m| at(p, m))?,
        (None, Some(ns)) => {
            pods::check_namespace(ns.get_ref()).map_err(|m| at(ns, m))?;
            (ns.get_ref().clone(), String::new())
        }
        (None, None) => {
            if let Some(c) = &t.container {
                return Err(at(
                    c,
                    "`container` needs `pod` or `namespace` in the same table: any pod can name a container \
                     anything"
                        .into(),
                ));
            }
            return Ok(None);
        }
    };
    let container = match &t.container {
        Some(c) => {
            pods::check_container(c.get_ref()).map_err(|m| at(c, m))?;
            Some(c.get_ref().clone())
        }
        None => None,
    };
    Ok(Some(PodSelector { namespace, name_prefix, container }))
}
