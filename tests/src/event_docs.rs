//! What docs/EVENTS.md documents: the top-level fields of each event type, read from the field
//! tables of its sections. Every event a test's daemon prints is checked against it (see
//! [`crate::Daemon`]), so a field added to an event without a line in the docs fails the tests.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::OnceLock,
};

use serde_json::Value;

const EVENTS_MD: &str = include_str!("../../docs/EVENTS.md");

/// The names in backticks in `text` (`a_b`, not `"x"` or `a b`).
fn names(text: &str) -> impl Iterator<Item = &str> {
    text.split('`').skip(1).step_by(2).filter(|n| {
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// The first cell of a table row.
fn first_cell(row: &str) -> &str {
    row.split('|').nth(1).unwrap_or("")
}

/// Event type → the fields its section's tables name. A section is titled by the types it covers
/// (`## \`forward_denied\` and \`output_denied\``); one without a type in its title lists them in
/// a table whose first column is `event` (the request events).
fn documented() -> &'static BTreeMap<String, BTreeSet<String>> {
    static DOCS: OnceLock<BTreeMap<String, BTreeSet<String>>> = OnceLock::new();
    DOCS.get_or_init(|| {
        let mut docs = BTreeMap::new();
        for section in EVENTS_MD.split("\n## ").skip(1) {
            let (title, body) = section.split_once('\n').unwrap_or((section, ""));
            let rows: Vec<&str> = body.lines().filter(|l| l.starts_with("| `")).collect();
            let fields: BTreeSet<String> =
                rows.iter().flat_map(|r| names(first_cell(r))).map(str::to_owned).collect();
            let mut types: Vec<&str> = names(title).collect();
            if types.is_empty() {
                let header = body.lines().find(|l| l.starts_with("| `event` |"));
                if header.is_some() {
                    types = rows.iter().flat_map(|r| names(first_cell(r))).collect();
                }
            }
            for t in types {
                docs.insert(t.to_owned(), fields.clone());
            }
        }
        docs
    })
}

/// The top-level keys of `ev` that docs/EVENTS.md does not document for its type, or why it
/// cannot tell (an undocumented type). `schema` and `event` are every event's. A `*_repeated`
/// event has the fields of the repeated-events section and those of the event it repeats.
#[must_use]
pub fn undocumented(ev: &Value) -> Option<String> {
    let docs = documented();
    let kind = ev["event"].as_str()?;
    let mut allowed: BTreeSet<&str> = ["schema", "event"].into();
    let own = match kind.strip_suffix("_repeated") {
        Some(base) => {
            allowed.extend(docs.get("connect_denied_repeated").into_iter().flatten().map(String::as_str));
            docs.get(base)
        }
        None => docs.get(kind),
    };
    let Some(own) = own else { return Some(format!("event type `{kind}` has no section in docs/EVENTS.md")) };
    allowed.extend(own.iter().map(String::as_str));
    let obj = ev.as_object()?;
    let extra: Vec<&str> = obj.keys().map(String::as_str).filter(|k| !allowed.contains(k)).collect();
    (!extra.is_empty()).then(|| format!("`{kind}` fields not in docs/EVENTS.md: {}", extra.join(", ")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_section_is_read() {
        let docs = documented();
        for t in [
            "guard_started",
            "connect_denied",
            "imdsv1_request",
            "token_put_forwarded",
            "imds_request_unclassified",
            "forward_denied",
            "output_denied",
            "preexisting_connection",
            "policy_reloaded",
            "policy_reload_failed",
            "pins_lost",
            "pins_restored",
            "programs_detached",
            "connections_uninspected",
        ] {
            assert!(docs.get(t).is_some_and(|f| !f.is_empty()), "no fields read for {t}");
        }
        assert!(docs["policy_reloaded"].contains("enforced_us"));
        assert!(docs["imdsv1_request"].contains("finding") || docs["imdsv1_request"].contains("path"));
    }

    #[test]
    fn extra_fields_and_unknown_types_are_found() {
        let ok = json!({"schema": 1, "event": "policy_reloaded", "generation": 2, "enforced_us": 1});
        assert_eq!(undocumented(&ok), None);
        let extra = json!({"schema": 1, "event": "policy_reloaded", "shiny": true});
        assert!(undocumented(&extra).unwrap().contains("shiny"));
        let repeated =
            json!({"schema": 1, "event": "connect_denied_repeated", "count": 3, "uid": 1, "window_s": 1.0});
        assert_eq!(undocumented(&repeated), None);
        assert!(undocumented(&json!({"schema": 1, "event": "no_such"})).unwrap().contains("no section"));
    }

    /// Each JSON example of the page has only documented fields (the examples drift otherwise).
    #[test]
    fn the_examples_are_documented_events() {
        let mut n = 0;
        for block in EVENTS_MD.split("```json\n").skip(1) {
            let block = block.split("```").next().unwrap();
            for line in block.lines().filter(|l| l.starts_with('{')) {
                let ev: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
                assert_eq!(undocumented(&ev), None, "{line}");
                n += 1;
            }
        }
        assert!(n >= 12, "{n} examples");
    }
}
