//! `imds-guard explain --pid N`: would this process be allowed to reach the metadata service, by
//! which rule, or why not. The verdict is the kernel's: the shared decision logic run against the
//! pinned maps the programs use. The per-rule reasons come from the policy file.

use anyhow::Context as _;
use imds_guard_common::{
    config::{GENERATION_SLOTS, GenConfig, Mode},
    rule::{Read, RuleKey},
    verdict::{ConnectVerdict, admit, connect_verdict, find_match},
};

use crate::{
    cli::ExplainArgs,
    escape::visible,
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
    // The rule that admits it, or the others' terms (`read` at the top of the policy).
    let matched = admit(
        &cfg,
        find_match(
            &cfg,
            &id,
            |level| who.cgroup_ancestry.get(level as usize).copied().unwrap_or(0),
            |k| maps.rules.get(k, 0).ok(),
        ),
    )
    .map(|m| m.value);
    let verdict = connect_verdict(cfg.mode(), matched);
    let live_digest: String = cfg.digest.iter().map(|b| format!("{b:02x}")).collect();

    say(&format!(
        "process {} ({}): uid {} gid {}, exe {}, cgroup {}",
        who.pid,
        who.comm,
        who.uid,
        who.gid,
        who.exe.as_ref().map_or("(none)".into(), |p| p.display().to_string()),
        who.cgroup
    ));
    let mode = (Mode::from_u32(cfg.mode)).name();
    match (verdict, matched) {
        (ConnectVerdict::Allow, Some(v)) => {
            let read = match Read::from_u32(v.read) {
                Read::All => "everything".to_owned(),
                Read::NoSecrets => "everything but the secrets (role and identity credentials, user data): read = \"no-secrets\"".to_owned(),
                Read::Nothing => "nothing".to_owned(),
                Read::Listed => format!(
                    "only the paths under the prefixes of its `read` list (list {} of the policy; the secrets only under a prefix inside them; the token PUT always)",
                    imds_guard_common::rule::list_of(v.read)
                ),
            };
            if v.rule_index == imds_guard_common::sock::NO_RULE {
                say(&format!(
                    "ALLOWED as one of the processes no table admits (enforced policy generation {}, {mode}); may read {read}",
                    cfg.generation
                ));
            } else {
                say(&format!(
                    "ALLOWED by allow[{}] (enforced policy generation {}, {mode}); may read {read}",
                    v.rule_index, cfg.generation
                ));
            }
        }
        (ConnectVerdict::Deny, _) => {
            say(&format!(
                "DENIED: no rule matches; connect() to the metadata endpoints fails with EPERM ({mode})"
            ));
        }
        _ => say("NOT ALLOWED, but let through and reported: the policy is in monitor mode"),
    }

    let source = match Source::read(&args.config) {
        Ok(s) => s,
        Err(e) => {
            say(&format!("(no per-rule reasons: {e})"));
            return Ok(());
        }
    };
    let policy = Policy::from_source(&source, &Host { cgroup_root, waiting_names: true })
        .context("the policy file")?;
    if policy.digest != live_digest {
        say(&format!(
            "note: {} differs from the enforced policy (digest {} vs {}); reasons below are for the file",
            source.name,
            &policy.digest[..12],
            &live_digest[..12]
        ));
    }
    for rule in &policy.rules {
        match mismatch(rule, &who) {
            None => say(&format!("  {} (line {}): matches", rule.name, rule.line)),
            Some(why) => say(&format!("  {} (line {}): no: {why}", rule.name, rule.line)),
        }
    }
    Ok(())
}

/// Prints one line of the explanation. It names what processes chose (comm, executable, cgroup)
/// and the policy's names: every character that could end the line or drive the terminal is
/// escaped ([`visible`]).
fn say(line: &str) {
    println!("{}", visible(line));
}

/// Why `rule` does not match `who`, or `None` when it matches. Whether it matches is decided the
/// way the kernel decides: the key the process would be looked up by, for each of the rule's keys'
/// shapes (and cgroup depths), equals that key (`RuleKey::probe`). The reason names the first
/// field in which they differ.
fn mismatch(rule: &Rule, who: &ProcessIdentity) -> Option<String> {
    if let Some(w) = &rule.waiting_for {
        return Some(format!("the rule waits for {w}, which does not exist yet"));
    }
    if let Some(exe) = rule.exe.as_ref().filter(|e| e.id.is_none()) {
        return Some(format!("no file is at {} now (the rule waits for one)", exe.path));
    }
    if let Some(cg) = rule.cgroup.as_ref().filter(|c| c.id.is_none()) {
        return Some(format!("cgroup {} is not inside {} (which does not exist)", who.cgroup, cg.path));
    }
    let id = who.kernel_identity();
    let ancestor = |level: Option<u8>| {
        level.map_or(0, |l| who.cgroup_ancestry.get(usize::from(l)).copied().unwrap_or(0))
    };
    let probe = |k: &RuleKey, level| RuleKey::probe(k.generation, k.shape, &id, ancestor(level));
    let keys: Vec<(RuleKey, Option<u8>)> = rule.keys().collect();
    if keys.iter().any(|(k, level)| probe(k, *level) == *k) {
        return None;
    }
    if let Some(p) = &rule.pods {
        return Some(format!(
            "cgroup {} is not inside any of the {} pod cgroups the rule selects now",
            who.cgroup,
            p.matches.len()
        ));
    }
    let (k, level) = keys.first()?;
    let p = probe(k, *level);
    // In the order the reasons were always given: uid, gid, executable, cgroup, comm.
    Some(if p.uid != k.uid {
        format!("uid is {}, the rule wants {}", who.uid, k.uid)
    } else if p.gid != k.gid {
        format!("gid is {}, the rule wants {}", who.gid, k.gid)
    } else if (p.exe_dev, p.exe_ino) != (k.exe_dev, k.exe_ino) {
        let file = rule.exe.as_ref().map_or_else(String::new, |e| e.file.display().to_string());
        format!("the executable is not {file} (another file)")
    } else if p.cgroup_id != k.cgroup_id {
        let path = rule.cgroup.as_ref().map_or("", |c| c.path.as_str());
        format!("cgroup {} is not inside {path}", who.cgroup)
    } else {
        format!("comm is \"{}\", the rule wants \"{}\"", who.comm, rule.comm.as_deref().unwrap_or(""))
    })
}
