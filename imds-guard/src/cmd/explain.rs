//! `imds-guard explain --pid N`: would this process be allowed to reach the metadata service, by
//! which rule, or why not. The verdict is the kernel's: the shared decision logic run against the
//! pinned maps the programs use. The per-rule reasons come from the policy file.

use std::collections::BTreeMap;

use anyhow::Context as _;
use imds_guard_common::{
    config::{GENERATION_SLOTS, GenConfig, Mode},
    verdict::{ConnectVerdict, connect_verdict, find_rule},
};

use crate::{
    cli::ExplainArgs,
    host::env,
    host::identity::ProcessIdentity,
    kernel::pinned,
    policy::source::Source,
    policy::{Host, Policy, Rule},
};

pub fn explain(args: &ExplainArgs) -> anyhow::Result<()> {
    let cgroup_root = env::cgroup2_root()?;
    let who = ProcessIdentity::of(args.pid, &cgroup_root).map_err(anyhow::Error::msg)?;
    let id = who.kernel_identity();
    let maps = pinned::open_maps(&args.pins.pin_dir)?;
    let cfg: GenConfig = maps.config.get(&(maps.active.generation % GENERATION_SLOTS), 0)?;
    let matched = find_rule(
        &cfg,
        &id,
        |level| who.cgroup_ancestry.get(level as usize).copied().unwrap_or(0),
        |k| maps.rules.get(k, 0).ok(),
    );
    let verdict = connect_verdict(cfg.mode(), matched);
    let live_digest: String = cfg.digest.iter().map(|b| format!("{b:02x}")).collect();

    println!(
        "process {} ({}): uid {} gid {}, exe {}, cgroup {}",
        who.pid,
        who.comm,
        who.uid,
        who.gid,
        who.exe.as_ref().map_or("(none)".into(), |p| p.display().to_string()),
        who.cgroup
    );
    let mode = (Mode::from_u32(cfg.mode)).name();
    match (verdict, matched) {
        (ConnectVerdict::Allow, Some(v)) => {
            println!(
                "ALLOWED by allow[{}] (enforced policy generation {}, {mode})",
                v.rule_index, cfg.generation
            );
        }
        (ConnectVerdict::Deny, _) => {
            println!(
                "DENIED: no rule matches; connect() to the metadata endpoints fails with EPERM ({mode})"
            );
        }
        _ => println!("NOT ALLOWED, but let through and reported: the policy is in monitor mode"),
    }

    let source = match Source::read(&args.config) {
        Ok(s) => s,
        Err(e) => {
            println!("(no per-rule reasons: {e})");
            return Ok(());
        }
    };
    let policy = Policy::from_source(&source, &Host { cgroup_root, waiting_names: true })
        .context("the policy file")?;
    if policy.digest != live_digest {
        println!(
            "note: {} differs from the enforced policy (digest {} vs {}); reasons below are for the file",
            source.name,
            &policy.digest[..12],
            &live_digest[..12]
        );
    }
    for rule in &policy.rules {
        match mismatch(rule, &who) {
            None => println!("  {} (line {}): matches", rule.name, rule.line),
            Some(why) => println!("  {} (line {}): no: {why}", rule.name, rule.line),
        }
    }
    Ok(())
}

/// Why `rule` does not match `who` (the first key that fails), or `None` when it matches.
fn mismatch(rule: &Rule, who: &ProcessIdentity) -> Option<String> {
    let mut why = BTreeMap::new();
    if let Some(uid) = rule.uid.filter(|u| *u != who.uid) {
        why.insert(0, format!("uid is {}, the rule wants {uid}", who.uid));
    }
    if let Some(gid) = rule.gid.filter(|g| *g != who.gid) {
        why.insert(1, format!("gid is {}, the rule wants {gid}", who.gid));
    }
    if let Some(exe) = &rule.exe {
        match exe.id {
            None => {
                why.insert(2, format!("no file is at {} now (the rule waits for one)", exe.path));
            }
            Some(id) if (id.dev, id.ino) != (who.exe_dev, who.exe_ino) => {
                why.insert(2, format!("the executable is not {} (another file)", exe.file.display()));
            }
            Some(_) => {}
        }
    }
    if let Some(cg) = &rule.cgroup {
        let inside = cg.id.is_some_and(|id| who.cgroup_ancestry.get(usize::from(cg.level)) == Some(&id));
        if !inside {
            let state = if cg.id.is_none() { " (which does not exist)" } else { "" };
            why.insert(3, format!("cgroup {} is not inside {}{state}", who.cgroup, cg.path));
        }
    }
    if let Some(p) = &rule.pods {
        let level_id =
            |m: &crate::policy::pods::PodMatch| who.cgroup_ancestry.get(usize::from(m.cgroup.level)).copied();
        if !p.matches.iter().any(|m| m.cgroup.id.is_some() && level_id(m) == m.cgroup.id) {
            why.insert(
                3,
                format!(
                    "cgroup {} is not inside any of the {} pod cgroups the rule selects now",
                    who.cgroup,
                    p.matches.len()
                ),
            );
        }
    }
    if let Some(comm) = rule.comm.as_ref().filter(|c| **c != who.comm) {
        why.insert(4, format!("comm is \"{}\", the rule wants \"{comm}\"", who.comm));
    }
    if rule.duplicate_of.is_some() && why.is_empty() {
        return None;
    }
    why.into_values().next()
}
