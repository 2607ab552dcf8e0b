use crate::{cli::StatusArgs, kernel::pinned, netfilter};

pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    // The nftables table of this network namespace, if any (it can outlive the pins, or be all
    // that enforces in reduced mode).
    let nf = netfilter::status()?;
    // The health check (a probe every few seconds) needs no walk of a 10,000-rule map.
    let s = match pinned::status_with(&args.pins.pin_dir, !args.check) {
        Ok(s) => s,
        Err(e) => {
            if let Some(nf) = &nf {
                print_netfilter(nf);
            }
            return Err(e);
        }
    };
    let enforcement = if s.enforcing {
        "cgroup"
    } else if nf.as_ref().is_some_and(|n| n.reduced) {
        "reduced"
    } else {
        "none"
    };
    if args.check {
        if !s.enforcing {
            anyhow::bail!(
                "not enforcing: {} of {} programs attached, generation {}",
                s.links.len(),
                s.wanted,
                s.generation
            );
        }
        println!(
            "enforcing: generation {}, mode {}, {} rules, policy sha256:{}{}",
            s.generation,
            s.mode,
            s.rules,
            s.policy_digest,
            if s.degraded.is_empty() {
                String::new()
            } else {
                format!(", degraded: {}", s.degraded.iter().map(|d| d.feature).collect::<Vec<_>>().join(","))
            }
        );
        return Ok(());
    }
    if args.json {
        let mut v = serde_json::to_value(&s)?;
        v["enforcement"] = enforcement.into();
        v["netfilter"] = serde_json::to_value(&nf)?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("pin dir:    {}", s.pin_dir.display());
    println!(
        "enforcing:  {}{}",
        match enforcement {
            "cgroup" => "yes",
            "reduced" =>
                "REDUCED MODE (nftables output rules: uid/gid rules only; the cgroup programs are not attached)",
            _ => "NO",
        },
        if s.links.is_empty() { String::new() } else { format!(" (links: {})", s.links.join(", ")) }
    );
    println!("mode:       {}", s.mode);
    println!("cgroup id:  {}", s.cgroup_id);
    println!("endpoints:  {}", s.endpoints.join(", "));
    println!(
        "rules:      {} ({} kernel entries), generation {}",
        s.rules,
        s.rule_entries.unwrap_or_default(),
        s.generation
    );
    println!("policy:     sha256:{}", s.policy_digest);
    if s.degraded.is_empty() {
        println!("degraded:   no");
    }
    for d in &s.degraded {
        println!("degraded:   {}: {}", d.feature, d.reason);
    }
    println!("counters:");
    for (k, v) in &s.counters {
        println!("  {k:<width$} {v}", width = s.counters.keys().map(|k| k.len()).max().unwrap_or(0));
    }
    match &nf {
        Some(nf) => print_netfilter(nf),
        None => println!("netfilter:  no table {} in this network namespace", netfilter::TABLE),
    }
    Ok(())
}

fn print_netfilter(nf: &netfilter::Status) {
    let mut what = Vec::new();
    if nf.forward {
        what.push("forward");
    }
    if nf.reduced {
        what.push("output (reduced mode)");
    }
    println!(
        "netfilter:  table {} ({}), {} rules, generation {}, {}",
        nf.table,
        what.join(", "),
        nf.rules,
        nf.generation.map_or_else(|| "?".to_owned(), |g| g.to_string()),
        nf.mode.unwrap_or("?")
    );
    for (k, (packets, bytes)) in &nf.counters {
        println!("  {k:<18} {packets} packets, {bytes} bytes");
    }
}
