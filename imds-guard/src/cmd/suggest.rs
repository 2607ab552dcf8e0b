//! `imds-guard suggest`: a policy that allows what was seen, from the daemon or from event files.

use std::{
    io::BufRead as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use crate::{
    cli::{DEFAULT_CONFIG, SuggestArgs},
    policy::{schema::PolicyFile, source::Source},
    report::{
        Stamped,
        seen::Table,
        socket,
        suggest::{Base, suggest as render},
    },
};

pub fn suggest(args: &SuggestArgs) -> anyhow::Result<()> {
    let (table, daemon_policy) =
        if args.events.is_empty() { from_daemon(&args.socket)? } else { (from_files(&args.events)?, None) };
    let config = args.config.clone().or(daemon_policy).or_else(|| {
        let default = PathBuf::from(DEFAULT_CONFIG);
        default.exists().then_some(default)
    });
    let base = match &config {
        Some(path) => {
            let source = Source::read(path)?;
            let _: PolicyFile = source.parse()?;
            Base::from_text(&source.text).with_context(|| format!("re-reading {}", path.display()))?
        }
        None => Base::default(),
    };
    if table.seen.is_empty() {
        tracing::warn!(
            "nothing was seen reaching the metadata service without a rule: the suggestion is the current policy"
        );
    }
    print!("{}", render(&base, &table));
    Ok(())
}

fn from_daemon(socket: &Path) -> anyhow::Result<(Table, Option<PathBuf>)> {
    let mut body = None;
    socket::request(socket, "observed", |line| {
        body = Some(line.to_owned());
        false
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&body.context("the daemon closed the event socket without answering")?)?;
    let table: Table =
        serde_json::from_value(v["table"].clone()).context("the daemon's table of what it saw")?;
    Ok((table, v["policy"].as_str().map(PathBuf::from)))
}

fn from_files(files: &[PathBuf]) -> anyhow::Result<Table> {
    let mut table = Table::default();
    for f in files {
        let reader: Box<dyn std::io::BufRead> = if f == Path::new("-") {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(std::io::BufReader::new(
                std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?,
            ))
        };
        for (n, line) in reader.lines().enumerate() {
            let line = line.with_context(|| format!("reading {}", f.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let Ok(Stamped { event, .. }) = serde_json::from_str::<Stamped>(&line) else {
                tracing::warn!("{}:{}: not an imds-guard event, skipped", f.display(), n + 1);
                continue;
            };
            table.observe(&event, event.occurrences());
        }
    }
    Ok(table)
}
