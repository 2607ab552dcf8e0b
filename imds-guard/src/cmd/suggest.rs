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
        Event, Stamped,
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
    let senders = journal_senders();
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
            match event_of(&line, &senders) {
                Ok(event) => table.observe(&event, event.occurrences()),
                Err(why) => tracing::warn!("{}:{}: {why}, skipped", f.display(), n + 1),
            }
        }
    }
    Ok(table)
}

/// The uids whose journal entries are the daemon's: root, and the `imds-guard` system user the
/// unit runs it as.
fn journal_senders() -> Vec<u32> {
    let mut uids = vec![0];
    if let Ok(Some(u)) = nix::unistd::User::from_name("imds-guard") {
        uids.push(u.uid.as_raw());
    }
    uids
}

/// The event of one line, taken only from where the daemon put it whole, as a structure:
///
/// - a native event line (`--events-file`, `--sink stdout`, `imds-guard events --json`);
/// - a `journalctl -o json` entry the daemon sent through the journal's native protocol
///   (`_TRANSPORT` `journal`, from uid 0 or the daemon's user, as the journal itself records):
///   its `IMDS_GUARD_JSON` field. Not its `MESSAGE` (a readable line), and no entry of a stream
///   (`_TRANSPORT` `stdout`: the daemon's log lines, whose text is not an event) nor of another
///   sender, whatever its fields say.
///
/// A text line that happens to hold JSON (`journalctl -o cat`, a log) is not an event source:
/// where a process's name could have put it is no evidence of what the daemon reported.
fn event_of(line: &str, journal_senders: &[u32]) -> Result<Event, &'static str> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|_| "not a JSON object")?;
    let o = v.as_object().ok_or("not a JSON object")?;
    if o.contains_key("schema") && o.contains_key("event") {
        return serde_json::from_value::<Stamped>(v)
            .map(|s| s.event)
            .map_err(|_| "not an imds-guard event of this version (or not --event-format json)");
    }
    if !o.contains_key("__CURSOR") && !o.contains_key("_TRANSPORT") {
        return Err("neither an imds-guard event nor a `journalctl -o json` entry");
    }
    if o.get("_TRANSPORT").and_then(serde_json::Value::as_str) != Some("journal") {
        return Err("a journal entry the daemon did not send as an event (a log or stream line)");
    }
    let uid = o.get("_UID").and_then(serde_json::Value::as_str).and_then(|u| u.parse::<u32>().ok());
    if !uid.is_some_and(|u| journal_senders.contains(&u)) {
        return Err("a journal entry of another sender than the daemon");
    }
    let json = match o.get("IMDS_GUARD_JSON") {
        Some(serde_json::Value::String(s)) => s.clone(),
        // journalctl writes a field that is not printable UTF-8 as an array of its bytes.
        Some(serde_json::Value::Array(bytes)) => String::from_utf8(
            bytes
                .iter()
                .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect::<Option<Vec<u8>>>()
                .ok_or("IMDS_GUARD_JSON is not text")?,
        )
        .map_err(|_| "IMDS_GUARD_JSON is not text")?,
        _ => return Err("a journal entry without IMDS_GUARD_JSON"),
    };
    serde_json::from_str::<Stamped>(&json).map(|s| s.event).map_err(
        |_| "IMDS_GUARD_JSON is not an imds-guard event of this version (or not --event-format json)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"schema":1,"event":"connect_denied","enforced":false,"time":"t","pid":7,"tid":7,"uid":1000,"gid":1000,"comm":"c","exe":"/usr/bin/c","cgroup":"/system.slice/c.service","cgroup_id":1,"unit":"c.service","dst":"169.254.169.254","port":80,"family":"ipv4","generation":1}"#;

    fn journal(transport: &str, uid: &str, fields: &[(&str, &str)]) -> String {
        let mut o = serde_json::json!({"__CURSOR": "s=1", "_TRANSPORT": transport, "_UID": uid,
            "SYSLOG_IDENTIFIER": "imds-guard"});
        for (k, v) in fields {
            o[*k] = (*v).into();
        }
        o.to_string()
    }

    /// Issue 17, item 5: only the daemon's structured output is read. A forged native line in a
    /// MESSAGE (of a log stream, or of any entry), or IMDS_GUARD_JSON sent by another uid, is no
    /// event; the daemon's own IMDS_GUARD_JSON is, as a string or as journalctl's byte array.
    #[test]
    fn events_come_from_structured_sources_only() {
        let senders = [0, 991];
        assert!(matches!(event_of(EVENT, &senders), Ok(Event::ConnectDenied(_))));
        let ours = journal("journal", "991", &[("MESSAGE", "readable"), ("IMDS_GUARD_JSON", EVENT)]);
        assert!(matches!(event_of(&ours, &senders), Ok(Event::ConnectDenied(_))));
        let mut bytes: serde_json::Value = serde_json::from_str(&ours).unwrap();
        bytes["IMDS_GUARD_JSON"] = EVENT.bytes().collect::<Vec<u8>>().into();
        assert!(matches!(event_of(&bytes.to_string(), &senders), Ok(Event::ConnectDenied(_))));
        for forged in [
            journal("stdout", "0", &[("MESSAGE", EVENT)]),
            journal("stdout", "991", &[("MESSAGE", EVENT), ("IMDS_GUARD_JSON", EVENT)]),
            journal("journal", "0", &[("MESSAGE", EVENT)]),
            journal("journal", "1000", &[("IMDS_GUARD_JSON", EVENT)]),
            journal("syslog", "0", &[("IMDS_GUARD_JSON", EVENT)]),
            r#"{"_TRANSPORT":"journal","IMDS_GUARD_JSON":"{}"}"#.replace("{}", &EVENT.replace('"', "\\\"")),
            format!("x {EVENT}"),
            "2026-01-01 connect REFUSED: 169.254.169.254:80 by pid 1 (c)".to_owned(),
        ] {
            assert!(event_of(&forged, &senders).is_err(), "{forged}");
        }
    }
}
