use crate::{
    cli::CheckArgs,
    host::env,
    policy::source::Source,
    policy::{Host, Policy},
};

pub fn check(args: &CheckArgs) -> anyhow::Result<()> {
    let source = Source::read(&args.config)?;
    let host = Host { cgroup_root: env::cgroup2_root()?, waiting_names: false };
    let policy = Policy::from_source(&source, &host)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&policy)?);
        return Ok(());
    }
    println!("{}: ok", source.name);
    println!("  mode: {}", policy.mode.name());
    println!("  imdsv1 (default): {}", policy.default_imdsv1.name());
    println!(
        "  read (processes no table admits): {}",
        match policy.others_read {
            imds_guard_common::rule::Read::Nothing => "none (refused at connect)".to_owned(),
            imds_guard_common::rule::Read::NoSecrets =>
                "no-secrets (all but credentials and user data)".to_owned(),
            imds_guard_common::rule::Read::All => "all".to_owned(),
            imds_guard_common::rule::Read::Listed => format!(
                "the paths under {}",
                crate::policy::rule::read_text(policy.others_read, policy.others_prefixes.as_ref())
            ),
        }
    );
    let eps: Vec<String> = policy
        .endpoints
        .v4
        .iter()
        .map(ToString::to_string)
        .chain(policy.endpoints.v6.iter().map(ToString::to_string))
        .collect();
    println!("  endpoints: {} (any port; IPv4 also as ::ffff:a.b.c.d)", eps.join(", "));
    let nf = &policy.netfilter;
    let mut forward = if nf.forward {
        "forwarded packets to the endpoints judged".to_owned()
    } else {
        "forward off".to_owned()
    };
    if nf.forward && !nf.forward_allow_interfaces.is_empty() {
        forward.push_str(&format!(" (allowed interfaces: {})", nf.forward_allow_interfaces.join(", ")));
    }
    if nf.forward && !nf.forward_allow_sources.is_empty() {
        let s: Vec<String> = nf.forward_allow_sources.iter().map(ToString::to_string).collect();
        forward.push_str(&format!(" (allowed sources: {})", s.join(", ")));
    }
    println!(
        "  netfilter: {forward}; reduced_mode {}; NFLOG group {}",
        serde_json::to_value(nf.reduced_mode)?.as_str().unwrap_or("?"),
        nf.nflog_group
    );
    if policy.rules.is_empty() && policy.others_read == imds_guard_common::rule::Read::Nothing {
        println!("  no [[allow]] rules: every process is denied");
    }
    for r in &policy.rules {
        let dup = r.duplicate_of.map(|i| format!(" (duplicate of allow[{i}], ignored)")).unwrap_or_default();
        // Names and paths come from the file: escaped, so that none can drive the terminal.
        let p = crate::policy::source::printable_message;
        println!(
            "  {} (line {}): {}; imdsv1 {}; read {}{dup}",
            p(&r.name.to_string()),
            r.line,
            p(&r.resolved().join(" and ")),
            r.imdsv1.name(),
            crate::policy::rule::read_text(r.read, r.read_prefixes.as_ref())
        );
    }
    for w in &policy.warnings {
        println!("  warning: {}", crate::policy::source::printable_message(w));
    }
    println!("  digest: {}", policy.digest);
    Ok(())
}
