use crate::{cli::StatusArgs, pinned};

pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let s = pinned::status(&args.pins.pin_dir)?;
    if args.check {
        if !s.enforcing {
            anyhow::bail!(
                "not enforcing: {} of {} programs attached, generation {}",
                s.links.len(),
                crate::guard::PROGRAMS.len(),
                s.generation
            );
        }
        println!(
            "enforcing: generation {}, mode {}, {} rules, policy sha256:{}",
            s.generation, s.mode, s.rules, s.policy_digest
        );
        return Ok(());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("pin dir:    {}", s.pin_dir.display());
    println!(
        "enforcing:  {}{}",
        if s.enforcing { "yes" } else { "NO" },
        if s.links.is_empty() { String::new() } else { format!(" (links: {})", s.links.join(", ")) }
    );
    println!("mode:       {}", s.mode);
    println!("cgroup id:  {}", s.cgroup_id);
    println!("endpoints:  {}", s.endpoints.join(", "));
    println!("rules:      {} ({} kernel entries), generation {}", s.rules, s.rule_entries, s.generation);
    println!("policy:     sha256:{}", s.policy_digest);
    println!("counters:");
    for (k, v) in &s.counters {
        println!("  {k:<18} {v}");
    }
    Ok(())
}
