//! The systemd journal's native protocol (`KEY=value` fields in one datagram), so every event
//! field becomes a journal field (`journalctl IMDS_GUARD_EVENT=connect_denied`). The protocol is
//! a few lines; hand-writing it keeps the socket path configurable for tests, which the crates
//! that implement it (libsystemd, systemd-journal-logger) hard-code.

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
};

use serde_json::Value;

use super::{Line, human};

/// The journal's native protocol socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// A client of the journal's socket.
pub struct Journal {
    sock: UnixDatagram,
    path: PathBuf,
}

impl Journal {
    pub fn new(path: &Path) -> anyhow::Result<Self> {
        let sock = UnixDatagram::unbound()?;
        Ok(Journal { sock, path: path.to_owned() })
    }

    pub fn send(&self, line: &Line) -> std::io::Result<()> {
        let msg = journal_message(line);
        self.sock.send_to(&msg, &self.path).map(drop)
    }
}

/// Journal fields of one event: `MESSAGE` (the human-readable line), `PRIORITY` (warning for
/// violations, info otherwise), `SYSLOG_IDENTIFIER`, one `IMDS_GUARD_<KEY>` per top-level key
/// (strings as is, everything else as JSON: the native fields whatever `--event-format` says, so
/// that `journalctl IMDS_GUARD_EVENT=...` works the same) and `IMDS_GUARD_JSON` with the whole
/// event in the chosen format.
#[must_use]
pub fn journal_message(line: &Line) -> Vec<u8> {
    let json = &line.out;
    let mut out = Vec::with_capacity(json.len() * 3);
    let priority = if line.event.is_violation() { "4" } else { "6" };
    field(&mut out, "MESSAGE", &human::line(&line.event));
    field(&mut out, "PRIORITY", priority);
    field(&mut out, "SYSLOG_IDENTIFIER", "imds-guard");
    {
        for (k, val) in line.fields.iter() {
            let name: String = k
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
                .collect();
            let text = match val {
                Value::String(s) => s.clone(),
                Value::Null => continue,
                other => other.to_string(),
            };
            field(&mut out, &format!("IMDS_GUARD_{name}"), &text);
        }
    }
    field(&mut out, "IMDS_GUARD_JSON", json);
    out
}

fn field(out: &mut Vec<u8>, key: &str, value: &str) {
    if value.contains('\n') {
        out.extend_from_slice(key.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    } else {
        out.extend_from_slice(key.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::event::{Connect, Event, Who};

    #[test]
    fn journal_fields() {
        let line = Line::of(Event::ConnectDenied(Connect {
            enforced: true,
            time: "t".into(),
            who: Who { pid: 7, comm: "curl".into(), ..Who::default() },
            dst: "169.254.169.254".into(),
            port: 80,
            family: "ipv4".into(),
            generation: 1,
            reason: None,
            rule: None,
        }));
        let msg = String::from_utf8(journal_message(&line)).unwrap();
        assert!(msg.contains("PRIORITY=4\n"), "{msg}");
        assert!(msg.contains("IMDS_GUARD_EVENT=connect_denied\n"));
        assert!(msg.contains("IMDS_GUARD_PID=7\n"));
        assert!(!msg.contains("IMDS_GUARD_EXE"), "null fields are left out");
        assert!(msg.contains(&format!("IMDS_GUARD_JSON={}\n", line.json)));
        assert!(
            msg.contains("MESSAGE=t connect REFUSED: 169.254.169.254:80 by pid 7 (curl) uid 0\n"),
            "{msg}"
        );
        let mut multi = Vec::new();
        field(&mut multi, "K", "a\nb");
        assert_eq!(multi, b"K\n\x03\0\0\0\0\0\0\0a\nb\n");
    }
}
