//! `imds-guard events`: the running daemon's events, readable or as JSON lines.

use crate::{cli::EventsArgs, report::enrich::human, report::socket};

pub fn events(args: &EventsArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let mut ok = true;
    socket::request(&args.socket, if args.follow { "follow" } else { "recent" }, |line| {
        let text = if args.json {
            line.to_owned()
        } else {
            match serde_json::from_str(line) {
                Ok(v) => human(&v),
                Err(_) => line.to_owned(),
            }
        };
        // Stop quietly when the reader goes away (`imds-guard events -f | head`).
        ok = writeln!(out, "{text}").and_then(|()| out.flush()).is_ok();
        ok
    })
}
