//! The netfilter layer: an nftables table of imds-guard's own, `inet imds_guard`, in the network
//! namespace the daemon runs in.
//!
//! - **forward**: packets this host *forwards* to a metadata endpoint (from VMs, from containers or
//!   pods in their own network namespace, from neighbours using it as a gateway) have no local
//!   socket behind them, so the cgroup hooks never see them. The `forward` chain drops them (in
//!   monitor mode: only reports them), except from the interfaces and sources the policy lists,
//!   and sends each to NFLOG, from which the daemon reports `forward_denied` ([`crate::netfilter::nflog`]).
//! - **output** (reduced mode only): when the cgroup programs cannot be used, an `output` chain
//!   implements the policy's `uid`/`gid` rules with `meta skuid`/`meta skgid`. Rules that need
//!   anything else (`exe`, `comm`, `cgroup`) cannot be expressed and are reported as not enforced.
//!
//! The table is written through libnftables' JSON interface with the `nftables` crate (typed
//! ruleset structs, serialised and fed to `nft -j -f -`): every value from the policy goes into a
//! JSON field, never into nft's command language, so nothing in a policy can change the meaning of
//! a rule. The crate is maintained (nftables-rs), MIT/Apache, and only needs the `nft` binary
//! (nftables >= 0.9.3), which every distribution packages; libnftnl bindings (`nftnl`) would add a
//! C build dependency, and the pure-netlink alternative (`rustables`) is GPL.
//!
//! Every change is one nftables transaction (one `nft -f` batch) that touches only this table:
//! `add table` (a no-op if it exists), `flush table` (its own rules only), chains and rules. The
//! ruleset is never flushed and no other table is read or written; the named counters survive
//! reloads (flushing a table keeps its objects). `unload` deletes the table.
//!
//! JSON limitation: libnftables' JSON parser does not accept `socket cgroupv2` (nftables 1.0.6
//! here, and upstream's `json_parse_socket_expr` still takes only `transparent`, `mark` and
//! `wildcard`), so `cgroup` rules are among the rules reduced mode does not enforce.

use std::{borrow::Cow, collections::BTreeMap};

use anyhow::{Context as _, bail};
use nftables::{
    batch::Batch,
    expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, SetItem},
    helper::NftablesError,
    schema::{self, NfListObject},
    stmt::{self, Log, Match, Operator, Statement},
    types::{NfChainPolicy, NfChainType, NfFamily, NfHook, RejectCode},
};
use serde::Serialize;

use crate::policy::Policy;
pub use crate::policy::netfilter::{DEFAULT_NFLOG_GROUP, Net, ReducedMode, Settings};
use imds_guard_common::{config::Mode, rule::field};

pub mod nflog;

/// The table's name (family `inet`: IPv4 and IPv6 in one table).
pub const TABLE: &str = "imds_guard";
/// Chains and named counters.
pub const FORWARD: &str = "forward";
pub const FORWARD_ENDPOINTS: &str = "forward_endpoints";
pub const OUTPUT: &str = "output";
pub const OUTPUT_ENDPOINTS: &str = "output_endpoints";
pub const FORWARD_COUNTER: &str = "forward_denied";
pub const OUTPUT_COUNTER: &str = "output_denied";
/// Base chain priority: just before the usual `filter` chains (0), so that our verdict is logged
/// before another table's drop could hide the packet; an `accept` here never overrides another
/// table's drop (each base chain decides on its own, and a drop anywhere is final).
const PRIORITY: i32 = -10;
/// Prefix of the NFLOG messages: `imds-guard <hook> g<generation> <mode>`.
pub const LOG_PREFIX: &str = "imds-guard";

/// Which hook a logged packet was judged at, from the NFLOG prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Forward,
    Output,
}

impl Hook {
    const fn name(self) -> &'static str {
        match self {
            Hook::Forward => "forward",
            Hook::Output => "output",
        }
    }
}

/// The prefix of the NFLOG messages of one hook, generation and mode.
#[must_use]
pub fn log_prefix(hook: Hook, generation: u32, mode: Mode) -> String {
    format!("{LOG_PREFIX} {} g{generation} {}", hook.name(), mode.name())
}

/// Reads back [`log_prefix`]: (hook, generation, enforced).
#[must_use]
pub fn parse_log_prefix(prefix: &str) -> Option<(Hook, u32, bool)> {
    let mut w = prefix.split_whitespace();
    if w.next()? != LOG_PREFIX {
        return None;
    }
    let hook = match w.next()? {
        "forward" => Hook::Forward,
        "output" => Hook::Output,
        _ => return None,
    };
    let generation = w.next()?.strip_prefix('g')?.parse().ok()?;
    let enforced = Mode::from_name(w.next()?)? == Mode::Enforce;
    Some((hook, generation, enforced))
}

/// In reduced mode: a rule (or IMDSv1 treatment) the output chain cannot enforce.
pub use crate::report::event::NotEnforced;

/// What the table should contain for one policy generation.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The generation whose number the log prefixes carry.
    pub generation: u32,
    pub forward: bool,
    pub reduced: bool,
    pub nflog_group: u16,
    /// The commands after `add table` + `flush table` (objects, chains, rules).
    objects: Vec<NfListObject<'static>>,
    /// In reduced mode: the allow rules (and IMDSv1 treatments) it cannot enforce.
    pub not_enforced: Vec<NotEnforced>,
}

fn table() -> schema::Table<'static> {
    schema::Table { family: NfFamily::INet, name: TABLE.into(), handle: None }
}

fn base_chain(name: &'static str, hook: NfHook) -> NfListObject<'static> {
    NfListObject::Chain(schema::Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        _type: Some(NfChainType::Filter),
        hook: Some(hook),
        prio: Some(PRIORITY),
        policy: Some(NfChainPolicy::Accept),
        ..schema::Chain::default()
    })
}

fn chain(name: &'static str) -> NfListObject<'static> {
    NfListObject::Chain(schema::Chain {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        ..schema::Chain::default()
    })
}

fn rule(
    chain: &'static str,
    expr: Vec<Statement<'static>>,
    comment: Option<String>,
) -> NfListObject<'static> {
    NfListObject::Rule(schema::Rule {
        family: NfFamily::INet,
        table: TABLE.into(),
        chain: chain.into(),
        expr: expr.into(),
        // nftables keeps at most 128 bytes of a rule comment.
        comment: comment.map(|c| Cow::Owned(c.chars().take(120).collect())),
        ..schema::Rule::default()
    })
}

fn eq(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match { left, right, op: Operator::EQ })
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(PayloadField {
        protocol: protocol.into(),
        field: field.into(),
    })))
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn set(items: impl IntoIterator<Item = Expression<'static>>) -> Expression<'static> {
    Expression::Named(NamedExpression::Set(items.into_iter().map(SetItem::Element).collect()))
}

fn net_expr(n: &Net) -> Expression<'static> {
    let addr = Expression::String(n.addr.to_string().into());
    if n.len == if n.addr.is_ipv4() { 32 } else { 128 } {
        addr
    } else {
        Expression::Named(NamedExpression::Prefix(Prefix { addr: Box::new(addr), len: u32::from(n.len) }))
    }
}

fn counter(name: &'static str) -> NfListObject<'static> {
    NfListObject::Counter(schema::Counter {
        family: NfFamily::INet,
        table: TABLE.into(),
        name: name.into(),
        handle: None,
        packets: None,
        bytes: None,
    })
}

/// The rules that send packets to the endpoints into `target`: one per address family.
fn endpoint_jumps(policy: &Policy, chain: &'static str, target: &'static str) -> Vec<NfListObject<'static>> {
    let mut out = Vec::new();
    let v4 = &policy.endpoints.v4;
    let v6 = &policy.endpoints.v6;
    if !v4.is_empty() {
        out.push(rule(
            chain,
            vec![
                eq(payload("ip", "daddr"), set(v4.iter().map(|a| Expression::String(a.to_string().into())))),
                Statement::Jump(stmt::JumpTarget { target: target.into() }),
            ],
            None,
        ));
    }
    if !v6.is_empty() {
        out.push(rule(
            chain,
            vec![
                eq(payload("ip6", "daddr"), set(v6.iter().map(|a| Expression::String(a.to_string().into())))),
                Statement::Jump(stmt::JumpTarget { target: target.into() }),
            ],
            None,
        ));
    }
    out
}

/// The last rule of an endpoints chain: count, log, and (enforce mode) refuse.
fn verdict_rule(
    chain: &'static str,
    counter_name: &'static str,
    hook: Hook,
    generation: u32,
    mode: Mode,
    group: u16,
    refuse: Option<Statement<'static>>,
) -> NfListObject<'static> {
    let mut expr = vec![
        Statement::Counter(stmt::Counter::Named(counter_name.into())),
        Statement::Log(Some(Log {
            prefix: Some(log_prefix(hook, generation, mode).into()),
            group: Some(u32::from(group)),
            ..Log::new(None)
        })),
    ];
    if mode == Mode::Enforce {
        expr.extend(refuse);
    }
    rule(chain, expr, Some(format!("imds-guard: not allowed ({})", mode.name())))
}

impl Plan {
    /// Whether `policy` would make the same table as this plan, but for the generation number in
    /// the log prefixes (then a reload need not touch nftables: two `nft` runs saved).
    #[must_use]
    pub fn same_table(&self, policy: &Policy, reduced: bool) -> bool {
        let again = Plan::new(policy, self.generation, reduced);
        again.forward == self.forward
            && again.reduced == self.reduced
            && again.nflog_group == self.nflog_group
            && serde_json::to_value(&again.objects).ok() == serde_json::to_value(&self.objects).ok()
    }

    /// The table for `policy` as `generation`; `reduced`: the cgroup programs are not attached.
    #[must_use]
    pub fn new(policy: &Policy, generation: u32, reduced: bool) -> Self {
        let s = &policy.netfilter;
        let mut objects = Vec::new();
        let mut not_enforced = Vec::new();
        if s.forward {
            objects.push(counter(FORWARD_COUNTER));
            objects.push(base_chain(FORWARD, NfHook::Forward));
            objects.push(chain(FORWARD_ENDPOINTS));
            objects.extend(endpoint_jumps(policy, FORWARD, FORWARD_ENDPOINTS));
            if !s.forward_allow_interfaces.is_empty() {
                let names = s.forward_allow_interfaces.iter().map(|i| Expression::String(i.clone().into()));
                objects.push(rule(
                    FORWARD_ENDPOINTS,
                    vec![eq(meta(MetaKey::Iifname), set(names)), Statement::Return(None)],
                    Some("imds-guard: forward_allow_interfaces".into()),
                ));
            }
            for (proto, v4) in [("ip", true), ("ip6", false)] {
                let nets: Vec<_> =
                    s.forward_allow_sources.iter().filter(|n| n.addr.is_ipv4() == v4).map(net_expr).collect();
                if !nets.is_empty() {
                    objects.push(rule(
                        FORWARD_ENDPOINTS,
                        vec![eq(payload(proto, "saddr"), set(nets)), Statement::Return(None)],
                        Some("imds-guard: forward_allow_sources".into()),
                    ));
                }
            }
            objects.push(verdict_rule(
                FORWARD_ENDPOINTS,
                FORWARD_COUNTER,
                Hook::Forward,
                generation,
                policy.mode,
                s.nflog_group,
                Some(Statement::Drop(None)),
            ));
        }
        if reduced {
            objects.push(counter(OUTPUT_COUNTER));
            objects.push(base_chain(OUTPUT, NfHook::Output));
            objects.push(chain(OUTPUT_ENDPOINTS));
            objects.extend(endpoint_jumps(policy, OUTPUT, OUTPUT_ENDPOINTS));
            for r in policy.installed() {
                // The rule's kernel key says what it constrains: nftables can match uid and gid.
                let key = r.key();
                let unsupported: Vec<&str> = field::names(key.shape & !(field::UID | field::GID)).collect();
                if !unsupported.is_empty() {
                    not_enforced.push(NotEnforced {
                        rule: r.index,
                        name: r.name.to_string(),
                        reason: format!(
                            "{} cannot be matched by nftables here; the table is left out, so the processes \
                             only it allows are refused",
                            unsupported.join(" and ")
                        ),
                    });
                    continue;
                }
                let mut expr = Vec::new();
                if key.shape & field::UID != 0 {
                    expr.push(eq(meta(MetaKey::Skuid), Expression::Number(key.uid)));
                }
                if key.shape & field::GID != 0 {
                    expr.push(eq(meta(MetaKey::Skgid), Expression::Number(key.gid)));
                }
                expr.push(Statement::Return(None));
                objects.push(rule(
                    OUTPUT_ENDPOINTS,
                    expr,
                    Some(format!("imds-guard: allow[{}] {}", r.index, r.name)),
                ));
                if r.imdsv1 == imds_guard_common::rule::Imdsv1Action::Deny {
                    not_enforced.push(NotEnforced {
                        rule: r.index,
                        name: r.name.to_string(),
                        reason:
                            "imdsv1 = \"deny\" needs the message hook: tokenless requests of this workload \
                                 go through, unreported"
                                .into(),
                    });
                }
            }
            // A locally generated packet that is dropped makes connect() wait for its timeout;
            // a reject (ICMP administratively prohibited, delivered to the sender at once) fails
            // it immediately, like the EPERM of the cgroup hook.
            objects.push(verdict_rule(
                OUTPUT_ENDPOINTS,
                OUTPUT_COUNTER,
                Hook::Output,
                generation,
                policy.mode,
                s.nflog_group,
                Some(Statement::Reject(Some(stmt::Reject::new(
                    Some(stmt::RejectType::ICMPX),
                    Some(RejectCode::AdminProhibited),
                )))),
            ));
        }
        Plan { generation, forward: s.forward, reduced, nflog_group: s.nflog_group, objects, not_enforced }
    }

    /// Whether the table should exist at all.
    #[must_use]
    pub fn wants_table(&self) -> bool {
        self.forward || self.reduced
    }

    fn chains(&self) -> Vec<&'static str> {
        let mut c = Vec::new();
        if self.forward {
            c.extend([FORWARD, FORWARD_ENDPOINTS]);
        }
        if self.reduced {
            c.extend([OUTPUT, OUTPUT_ENDPOINTS]);
        }
        c
    }

    /// The one transaction that turns the table as it is (`existing`: its chains and counters, or
    /// `None` when there is no table) into this plan.
    #[must_use]
    pub fn batch(&self, existing: Option<&Existing>) -> schema::Nftables<'static> {
        let mut b = Batch::new();
        if !self.wants_table() {
            if existing.is_some() {
                b.delete(NfListObject::Table(table()));
            }
            return b.to_nftables();
        }
        b.add(NfListObject::Table(table()));
        b.add_cmd(schema::NfCmd::Flush(schema::FlushObject::Table(table())));
        for o in &self.objects {
            b.add(o.clone());
        }
        if let Some(e) = existing {
            let wanted = self.chains();
            // Chains of the previous plan that this one has no use for (reduced mode switched off,
            // forward = false): empty after the flush, so they can go. Base chains first.
            let mut stale: Vec<&String> = e.chains.iter().filter(|c| !wanted.contains(&c.as_str())).collect();
            stale.sort_by_key(|c| !matches!(c.as_str(), FORWARD | OUTPUT));
            for c in stale {
                b.delete(NfListObject::Chain(schema::Chain {
                    family: NfFamily::INet,
                    table: TABLE.into(),
                    name: c.clone().into(),
                    ..schema::Chain::default()
                }));
            }
        }
        b.to_nftables()
    }
}

/// What the table holds now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Existing {
    pub chains: Vec<String>,
    /// Named counters: (packets, bytes).
    pub counters: BTreeMap<String, (u64, u64)>,
    pub rules: usize,
    /// The first NFLOG prefix of each hook's verdict rule, e.g. `imds-guard forward g3 enforce`.
    pub log_prefixes: Vec<String>,
}

/// Errors of the netfilter layer, with what to do about them.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// There is no `nft` program: nothing imds-guard could have installed exists either.
    #[error(
        "{what}: the `nft` program ({program}) is not installed; install nftables (apt-get install nftables), or \
         set [netfilter] forward = false and reduced_mode = \"off\" to run without the netfilter layer"
    )]
    NotInstalled { what: String, program: String },
    #[error("{what}: nft said: {stderr}")]
    Refused { what: String, stderr: String },
    #[error("{what}: {source}")]
    Other {
        what: String,
        #[source]
        source: anyhow::Error,
    },
}

fn nft_error(e: NftablesError, what: &str) -> NftError {
    let what = what.to_owned();
    match e {
        NftablesError::NftExecution { program, inner } if inner.kind() == std::io::ErrorKind::NotFound => {
            NftError::NotInstalled { what, program: program.to_string_lossy().into_owned() }
        }
        NftablesError::NftFailed { stderr, .. } => {
            NftError::Refused { what, stderr: stderr.trim().to_owned() }
        }
        other => NftError::Other { what, source: anyhow::Error::from(other) },
    }
}

/// Reads the table (`None` when it does not exist) in this network namespace. Only this table is
/// listed; other tables are neither read nor parsed.
pub fn existing() -> Result<Option<Existing>, NftError> {
    let tables =
        nftables::helper::get_current_ruleset_raw(nftables::helper::DEFAULT_NFT, ["list", "tables", "inet"])
            .map_err(|e| nft_error(e, "listing nftables tables"))?;
    let tables: serde_json::Value = serde_json::from_str(&tables)
        .map_err(|e| NftError::Other { what: "nft -j list tables".into(), source: e.into() })?;
    let present = tables["nftables"]
        .as_array()
        .is_some_and(|a| a.iter().any(|o| o["table"]["name"] == TABLE && o["table"]["family"] == "inet"));
    if !present {
        return Ok(None);
    }
    let raw = nftables::helper::get_current_ruleset_raw(
        nftables::helper::DEFAULT_NFT,
        ["list", "table", "inet", TABLE],
    )
    .map_err(|e| nft_error(e, "listing table inet imds_guard"))?;
    let existing = parse_existing(&raw)
        .map_err(|e| NftError::Other { what: "nft -j list table inet imds_guard".into(), source: e })?;
    Ok(Some(existing))
}

fn parse_existing(raw: &str) -> anyhow::Result<Existing> {
    let v: serde_json::Value = serde_json::from_str(raw).context("nft -j list table: not JSON")?;
    let mut e = Existing::default();
    for o in v["nftables"].as_array().into_iter().flatten() {
        if let Some(c) = o.get("chain") {
            e.chains.extend(c["name"].as_str().map(str::to_owned));
        } else if let Some(c) = o.get("counter") {
            if let Some(name) = c["name"].as_str() {
                e.counters.insert(
                    name.to_owned(),
                    (c["packets"].as_u64().unwrap_or(0), c["bytes"].as_u64().unwrap_or(0)),
                );
            }
        } else if let Some(r) = o.get("rule") {
            e.rules += 1;
            for s in r["expr"].as_array().into_iter().flatten() {
                if let Some(p) = s["log"]["prefix"].as_str() {
                    e.log_prefixes.push(p.to_owned());
                }
            }
        }
    }
    Ok(e)
}

/// Makes the table what `plan` says, in one transaction.
pub fn apply(plan: &Plan) -> anyhow::Result<()> {
    let existing = match existing() {
        // Nothing to install, and without nft nothing imds-guard installed can exist.
        Err(NftError::NotInstalled { .. }) if !plan.wants_table() => return Ok(()),
        e => e?,
    };
    if !plan.wants_table() && existing.is_none() {
        return Ok(());
    }
    let batch = plan.batch(existing.as_ref());
    nftables::helper::apply_ruleset(&batch).map_err(|e| nft_error(e, "installing table inet imds_guard"))?;
    Ok(())
}

/// Deletes the table if it exists (`unload`). Returns whether there was one.
pub fn remove() -> anyhow::Result<bool> {
    let existing = match existing() {
        Ok(e) => e,
        // Without nft there is nothing imds-guard could have installed.
        Err(NftError::NotInstalled { .. }) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if existing.is_none() {
        return Ok(false);
    }
    let mut b = Batch::new();
    b.delete(NfListObject::Table(table()));
    nftables::helper::apply_ruleset(&b.to_nftables())
        .map_err(|e| nft_error(e, "deleting table inet imds_guard"))?;
    Ok(true)
}

/// The table as `status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub table: String,
    pub forward: bool,
    /// The output chain is there: the policy's uid/gid rules are enforced by nftables.
    pub reduced: bool,
    pub chains: Vec<String>,
    pub rules: usize,
    pub counters: BTreeMap<String, (u64, u64)>,
    /// The generation and mode the rules were installed as (from their log prefix).
    pub generation: Option<u32>,
    pub mode: Option<&'static str>,
}

/// `None` when there is no table (or no nft) in this network namespace.
pub fn status() -> anyhow::Result<Option<Status>> {
    let e = match existing() {
        Ok(Some(e)) => e,
        Ok(None) => return Ok(None),
        Err(NftError::NotInstalled { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let parsed = e.log_prefixes.iter().find_map(|p| parse_log_prefix(p));
    Ok(Some(Status {
        table: format!("inet {TABLE}"),
        forward: e.chains.iter().any(|c| c == FORWARD),
        reduced: e.chains.iter().any(|c| c == OUTPUT),
        chains: e.chains,
        rules: e.rules,
        counters: e.counters,
        generation: parsed.map(|p| p.1),
        mode: parsed.map(|p| if p.2 { Mode::Enforce } else { Mode::Monitor }.name()),
    }))
}

/// Whether this kernel can run the cgroup programs (the connect hooks' program type).
#[must_use]
pub fn cgroup_bpf_supported() -> bool {
    // The probe loads a program (a few hundred µs); every reload asks, the kernel's answer stays.
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        matches!(aya::sys::is_program_supported(aya::programs::ProgramType::CgroupSockAddr), Ok(true))
    })
}

/// Decides reduced mode for a policy on this kernel.
pub fn decide_reduced(settings: &Settings) -> anyhow::Result<bool> {
    match settings.reduced_mode {
        ReducedMode::On => Ok(true),
        ReducedMode::Auto => Ok(!cgroup_bpf_supported()),
        ReducedMode::Off if cgroup_bpf_supported() => Ok(false),
        ReducedMode::Off => bail!(
            "this kernel cannot run cgroup socket address programs (CONFIG_CGROUP_BPF), and [netfilter] \
             reduced_mode = \"off\" forbids the nftables fallback"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::policy::{
        Host,
        source::{ConfigError, Source},
    };

    fn policy(text: &str) -> Result<Policy, ConfigError> {
        let host = Host { cgroup_root: PathBuf::from("/nonexistent-cgroup-root"), waiting_names: false };
        Policy::from_source(&Source { name: "p.toml".into(), text: text.into() }, &host)
    }

    fn json(p: &Plan, existing: Option<&Existing>) -> String {
        serde_json::to_string(&p.batch(existing)).unwrap()
    }

    #[test]
    fn defaults_forward_on_reduced_auto() {
        let p = policy("").unwrap();
        assert_eq!(p.netfilter, Settings::default());
        let plan = Plan::new(&p, 3, false);
        assert!(plan.wants_table() && plan.forward && !plan.reduced);
        let j = json(&plan, None);
        // One transaction: add table, flush it (ours only), then counters, chains and rules.
        assert!(j.starts_with(r#"{"nftables":[{"add":{"table":{"family":"inet","name":"imds_guard"}}},{"flush":{"table":{"family":"inet","name":"imds_guard"}}}"#), "{j}");
        assert!(j.contains(r#""hook":"forward","prio":-10,"policy":"accept""#), "{j}");
        assert!(j.contains(r#"{"match":{"left":{"payload":{"protocol":"ip","field":"daddr"}},"right":{"set":["169.254.169.254"]},"op":"=="}},{"jump":{"target":"forward_endpoints"}}"#), "{j}");
        assert!(j.contains(r#""right":{"set":["fd00:ec2::254"]}"#), "{j}");
        assert!(
            j.contains(r#"{"log":{"prefix":"imds-guard forward g3 enforce","group":169}},{"drop":null}"#),
            "{j}"
        );
        assert!(!j.contains("output"), "no output chain outside reduced mode: {j}");
        assert!(!j.contains("ruleset"), "never the whole ruleset: {j}");
    }

    #[test]
    fn monitor_mode_logs_without_dropping() {
        let p = policy("mode = \"monitor\"\n").unwrap();
        let j = json(&Plan::new(&p, 1, true), None);
        assert!(j.contains("imds-guard forward g1 monitor"), "{j}");
        assert!(!j.contains("drop") && !j.contains("reject"), "{j}");
    }

    #[test]
    fn exceptions_and_sources() {
        let p = policy(
            "[netfilter]\nforward_allow_interfaces = [\"docker0\", \"eni*\"]\n\
             forward_allow_sources = [\"10.0.0.0/8\", \"192.0.2.7\", \"fd00:1::/64\"]\nnflog_group = 5\n",
        )
        .unwrap();
        let j = json(&Plan::new(&p, 2, false), None);
        assert!(j.contains(r#"{"match":{"left":{"meta":{"key":"iifname"}},"right":{"set":["docker0","eni*"]},"op":"=="}},{"return":null}"#), "{j}");
        assert!(j.contains(r#"{"set":[{"prefix":{"addr":"10.0.0.0","len":8}},"192.0.2.7"]}"#), "{j}");
        assert!(j.contains(r#"{"protocol":"ip6","field":"saddr"}},"right":{"set":[{"prefix":{"addr":"fd00:1::","len":64}}]}"#), "{j}");
        assert!(j.contains(r#""group":5"#), "{j}");
    }

    #[test]
    fn bad_values_are_refused_with_their_position() {
        let e = policy("[netfilter]\nforward_allow_sources = [\"10.0.0.1/8\"]\n").unwrap_err();
        assert_eq!(e.location, "p.toml:2:26");
        assert!(e.message.contains("did you mean `10.0.0.0/8`"), "{e}");
        assert!(policy("[netfilter]\nforward_allow_sources = [\"10.0.0.0/33\"]\n").is_err());
        assert!(
            policy("[netfilter]\nforward_allow_sources = [\"eth0\"]\n")
                .unwrap_err()
                .message
                .contains("not an IP")
        );
        assert!(
            policy("[netfilter]\nforward_allow_sources = [\"0.0.0.0/0\"]\n")
                .unwrap_err()
                .message
                .contains("every")
        );
        let e = policy("[netfilter]\nforward_allow_interfaces = [\"a\\\"b\"]\n").unwrap_err();
        assert!(e.message.contains("contains"), "{e}");
        assert!(policy("[netfilter]\nforward_allow_interfaces = [\"*\"]\n").is_err());
        assert!(policy("[netfilter]\nforward_allow_interfaces = [\"a*b\"]\n").is_err());
        assert!(policy("[netfilter]\nforward_allow_interfaces = [\"a-very-long-name0\"]\n").is_err());
        let e = policy("[netfilter]\nreduced_mode = \"maybe\"\n").unwrap_err();
        assert_eq!(e.location, "p.toml:2:16");
        assert!(policy("[netfilter]\nnflog_group = 70000\n").is_err());
        assert!(policy("[netfilter]\nforwards = true\n").unwrap_err().message.contains("unknown field"));
    }

    #[test]
    fn reduced_mode_expresses_uid_and_gid_rules_only() {
        let p = policy(
            "[[allow]]\nuid = 0\n[[allow]]\nuid = 7\ngid = 8\nimdsv1 = \"deny\"\n[[allow]]\ncomm = \"aws\"\n\
             [[allow]]\nuid = 5\nexe = \"/bin/sh\"\n",
        )
        .unwrap();
        let plan = Plan::new(&p, 4, true);
        let j = json(&plan, None);
        assert!(j.contains(r#""hook":"output""#), "{j}");
        assert!(
            j.contains(r#"{"match":{"left":{"meta":{"key":"skuid"}},"right":0,"op":"=="}},{"return":null}"#),
            "{j}"
        );
        assert!(j.contains(r#"{"meta":{"key":"skuid"}},"right":7,"op":"=="}},{"match":{"left":{"meta":{"key":"skgid"}},"right":8"#), "{j}");
        assert!(!j.contains(r#""right":5,"#), "a rule with exe is left out whole, never widened: {j}");
        assert!(j.contains(r#"{"reject":{"type":"icmpx","expr":"admin-prohibited"}}"#), "{j}");
        let ne: Vec<(u32, &str)> = plan.not_enforced.iter().map(|n| (n.rule, n.reason.as_str())).collect();
        assert_eq!(ne.len(), 3, "{ne:?}");
        assert!(ne[0].0 == 1 && ne[0].1.contains("imdsv1"), "{ne:?}");
        assert!(ne[1].0 == 2 && ne[1].1.starts_with("comm"), "{ne:?}");
        assert!(ne[2].0 == 3 && ne[2].1.starts_with("exe"), "{ne:?}");
    }

    /// A pod rule is a cgroup rule: reduced mode cannot express it and must not widen it into an
    /// allow-all (before the rule's kernel key decided, a pod rule without a uid became a bare
    /// `return`, letting every process through).
    #[test]
    fn reduced_mode_leaves_pod_rules_out() {
        let root = std::env::temp_dir().join(format!("imdsg-nf-pods-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let uid = "aaaaaaaa-0000-4000-8000-000000000001";
        std::fs::create_dir_all(root.join(format!("logs/pods/kube-system_aws-node-1_{uid}/main"))).unwrap();
        std::fs::create_dir_all(root.join(format!("cg/kubepods/pod{uid}"))).unwrap();
        let text = format!(
            "[[allow]]\npod = \"kube-system/aws-node-\"\n[kubernetes]\npod_logs = \"{}\"\npod_cgroups = [\"/kubepods\"]\n",
            root.join("logs/pods").display()
        );
        let host = Host { cgroup_root: root.join("cg"), waiting_names: false };
        let p = Policy::from_source(&Source { name: "p.toml".into(), text }, &host).unwrap();
        assert_eq!(p.installed().count(), 1, "the pod is found");
        let plan = Plan::new(&p, 1, true);
        let j = json(&plan, None);
        assert!(!j.contains(r#"{"return":null}"#), "no allow rule at all: {j}");
        assert_eq!(plan.not_enforced.len(), 1, "{:?}", plan.not_enforced);
        assert!(
            plan.not_enforced[0].reason.starts_with("cgroup cannot be matched"),
            "{:?}",
            plan.not_enforced
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn switching_off_deletes_only_our_table_and_stale_chains() {
        let off = policy("[netfilter]\nforward = false\n").unwrap();
        let plan = Plan::new(&off, 1, false);
        assert!(!plan.wants_table());
        assert_eq!(json(&plan, None), r#"{"nftables":[]}"#);
        let existing =
            Existing { chains: vec!["forward".into(), "forward_endpoints".into()], ..Existing::default() };
        assert_eq!(
            json(&plan, Some(&existing)),
            r#"{"nftables":[{"delete":{"table":{"family":"inet","name":"imds_guard"}}}]}"#
        );
        // Reduced mode off again: its (flushed) chains go, base chain first.
        let on = policy("").unwrap();
        let existing = Existing {
            chains: vec![
                "forward".into(),
                "forward_endpoints".into(),
                "output_endpoints".into(),
                "output".into(),
            ],
            ..Existing::default()
        };
        let j = json(&Plan::new(&on, 2, false), Some(&existing));
        let a =
            j.find(r#"{"delete":{"chain":{"family":"inet","table":"imds_guard","name":"output"}}}"#).unwrap();
        let b = j
            .find(r#"{"delete":{"chain":{"family":"inet","table":"imds_guard","name":"output_endpoints"}}}"#)
            .unwrap();
        assert!(a < b, "{j}");
    }

    #[test]
    fn log_prefix_round_trip() {
        let p = log_prefix(Hook::Output, 42, Mode::Monitor);
        assert_eq!(p, "imds-guard output g42 monitor");
        assert_eq!(parse_log_prefix(&p), Some((Hook::Output, 42, false)));
        assert_eq!(parse_log_prefix("imds-guard forward g1 enforce"), Some((Hook::Forward, 1, true)));
        assert_eq!(parse_log_prefix("other forward g1 enforce"), None);
        assert!(p.len() < 128, "NFLOG prefixes are cut at 127 bytes");
    }

    #[test]
    fn parses_a_listed_table() {
        let raw = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "inet", "name": "imds_guard", "handle": 1}},
            {"counter": {"family": "inet", "name": "forward_denied", "table": "imds_guard", "handle": 2, "packets": 3, "bytes": 180}},
            {"chain": {"family": "inet", "table": "imds_guard", "name": "forward", "handle": 3, "type": "filter", "hook": "forward", "prio": -10, "policy": "accept"}},
            {"rule": {"family": "inet", "table": "imds_guard", "chain": "forward_endpoints", "handle": 7, "expr": [{"counter": "forward_denied"}, {"log": {"prefix": "imds-guard forward g9 enforce", "group": 169}}, {"drop": null}]}}]}"#;
        let e = parse_existing(raw).unwrap();
        assert_eq!(e.chains, ["forward"]);
        assert_eq!(e.counters["forward_denied"], (3, 180));
        assert_eq!(e.rules, 1);
        assert_eq!(parse_log_prefix(&e.log_prefixes[0]), Some((Hook::Forward, 9, true)));
    }
}
