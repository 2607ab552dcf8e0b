//! `imds-guard events`: the running daemon's events, readable or as JSON lines.

use crate::{
    cli::EventsArgs,
    escape::visible,
    report::{Stamped, human, socket},
};

pub fn events(args: &EventsArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let mut ok = true;
    socket::request(&args.socket, if args.follow { "follow" } else { "recent" }, |line| {
        let text = if args.json {
            line.to_owned()
        } else {
            // An event this version does not know is shown as it came, made printable.
            match serde_json::from_str::<Stamped>(line) {
                Ok(s) => human::line(&s.event),
                Err(_) => visible(line).into_owned(),
            }
        };
        // Stop quietly when the reader goes away (`imds-guard events -f | head`).
        ok = writeln!(out, "{text}").and_then(|()| out.flush()).is_ok();
        ok
    })
}
