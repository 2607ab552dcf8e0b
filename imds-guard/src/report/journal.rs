//! The systemd journal's native protocol (`KEY=value` fields in one datagram), so every event
//! field becomes a journal field (`journalctl IMDS_GUARD_EVENT=connect_denied`). The protocol is
//! a few lines; hand-writing it keeps the socket path configurable for tests, which the crates
//! that implement it (libsystemd, systemd-journal-logger) hard-code.
//!
//! A record too large for one datagram (a process's names are attacker-chosen: a 4 KiB executable
//! path of control characters, in the process and four ancestors, makes a 120 KB event and a
//! ~300 KB record) goes the way `sd_journal_sendv` sends it: written to a sealed memfd whose
//! descriptor is passed with `SCM_RIGHTS`. Before that, every field but `IMDS_GUARD_JSON` (the
//! record itself) is bounded to [`FIELD_MAX`] bytes, cut in the middle with a marker
//! ([`super::bound::middle`]) so that the executable's file name stays.

use std::{
    io::Write as _,
    os::{fd::AsRawFd as _, unix::net::UnixDatagram},
    path::{Path, PathBuf},
};

use serde_json::Value;

use super::{Line, bound, human};

/// The journal's native protocol socket.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// Records larger than this go in a memfd without trying a datagram first. Whether a datagram
/// fits depends on the socket buffer sizes (`net.core.wmem_default`: 208 KiB here); a fixed bound
/// makes the choice the same on every host.
pub const DATAGRAM_MAX: usize = 64 * 1024;

/// Bytes a journal field (other than `IMDS_GUARD_JSON`) may take.
pub const FIELD_MAX: usize = 8 * 1024;

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
        if msg.len() > DATAGRAM_MAX {
            return self.send_memfd(&msg);
        }
        match self.sock.send_to(&msg, &self.path) {
            Ok(_) => Ok(()),
            // Too large for a datagram (EMSGSIZE), or for the socket's buffer (ENOBUFS): what
            // sd_journal_sendv falls back on for the same errors.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMSGSIZE | libc::ENOBUFS)) => {
                self.send_memfd(&msg)
            }
            Err(e) => Err(e),
        }
    }

    /// `msg` in a sealed memfd, its descriptor passed to journald (which reads it and closes it).
    fn send_memfd(&self, msg: &[u8]) -> std::io::Result<()> {
        use nix::{
            fcntl::{FcntlArg, SealFlag, fcntl},
            sys::{
                memfd::{MFdFlags, memfd_create},
                socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg},
            },
        };
        let fd = memfd_create(c"imds-guard-journal", MFdFlags::MFD_ALLOW_SEALING | MFdFlags::MFD_CLOEXEC)?;
        let mut file = std::fs::File::from(fd);
        file.write_all(msg)?;
        // Sealed, so journald can read it without fearing that it changes under it (it refuses an
        // unsealed memfd).
        fcntl(
            &file,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK
                    | SealFlag::F_SEAL_GROW
                    | SealFlag::F_SEAL_WRITE
                    | SealFlag::F_SEAL_SEAL,
            ),
        )?;
        let addr = UnixAddr::new(&self.path)?;
        let fds = [file.as_raw_fd()];
        sendmsg(
            self.sock.as_raw_fd(),
            &[],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            Some(&addr),
        )?;
        Ok(())
    }
}

/// Journal fields of one event: `MESSAGE` (the human-readable line), `PRIORITY` (warning for
/// violations, info otherwise), `SYSLOG_IDENTIFIER`, one `IMDS_GUARD_<KEY>` per top-level key
/// (strings as is, everything else as JSON: the native fields whatever `--event-format` says, so
/// that `journalctl IMDS_GUARD_EVENT=...` works the same) and `IMDS_GUARD_JSON` with the whole
/// event in the chosen format. Every field but `IMDS_GUARD_JSON` is bounded to [`FIELD_MAX`].
#[must_use]
pub fn journal_message(line: &Line) -> Vec<u8> {
    let json = &line.out;
    let mut out = Vec::with_capacity(json.len() * 3);
    let priority = if line.event.is_violation() { "4" } else { "6" };
    field(&mut out, "MESSAGE", &bound::middle(&human::line(&line.event), FIELD_MAX));
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
            field(&mut out, &format!("IMDS_GUARD_{name}"), &bound::middle(&text, FIELD_MAX));
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

    /// An event of the size an attacker can make (a 4 KiB path of control characters, for the
    /// process and four ancestors): its fields bounded, the record whole in a sealed memfd.
    fn huge() -> Line {
        use crate::report::event::Ancestor;
        let exe = format!("/tmp/{}/evil", "\u{1}".repeat(4000));
        let ancestors =
            (0..4).map(|i| Ancestor { pid: 10 + i, comm: "evil".into(), exe: Some(exe.clone()) }).collect();
        Line::of(Event::ConnectDenied(Connect {
            enforced: true,
            time: "t".into(),
            who: Who { pid: 7, comm: "evil".into(), exe: Some(exe), ancestors, ..Who::default() },
            dst: "169.254.169.254".into(),
            port: 80,
            family: "ipv4".into(),
            generation: 1,
            reason: None,
            rule: None,
        }))
    }

    /// The fields of a native-protocol record (multi-line values with their length).
    fn parse(mut msg: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        while !msg.is_empty() {
            let nl = msg.iter().position(|&b| b == b'\n').unwrap();
            let line = &msg[..nl];
            if let Some(eq) = line.iter().position(|&b| b == b'=') {
                out.push((String::from_utf8(line[..eq].to_vec()).unwrap(), line[eq + 1..].to_vec()));
                msg = &msg[nl + 1..];
            } else {
                let len =
                    usize::try_from(u64::from_le_bytes(msg[nl + 1..nl + 9].try_into().unwrap())).unwrap();
                out.push((String::from_utf8(line.to_vec()).unwrap(), msg[nl + 9..nl + 9 + len].to_vec()));
                msg = &msg[nl + 9 + len + 1..];
            }
        }
        out
    }

    #[test]
    fn a_record_too_large_for_a_datagram_goes_in_a_sealed_memfd_with_bounded_fields() {
        use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
        use std::{io::Read as _, os::fd::FromRawFd as _};
        let line = huge();
        assert!(line.json.len() > 100_000, "{}", line.json.len());
        let dir = std::env::temp_dir().join(format!("imdsg-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("socket");
        let server = UnixDatagram::bind(&path).unwrap();
        Journal::new(&path).unwrap().send(&line).unwrap();
        let mut buf = [0u8; 64];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(server.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::empty()).unwrap();
        assert_eq!(msg.bytes, 0, "the datagram itself is empty");
        let Some(ControlMessageOwned::ScmRights(fds)) = msg.cmsgs().unwrap().next() else {
            panic!("no descriptor passed")
        };
        // SAFETY: the descriptor just received is ours alone.
        let mut file = unsafe { std::fs::File::from_raw_fd(fds[0]) };
        let seals = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GET_SEALS).unwrap();
        assert_eq!(seals & 0xf, 0xf, "sealed against shrinking, growing, writing and more seals");
        let mut record = Vec::new();
        // journald maps the file whole; its offset is where the daemon's write left it.
        std::io::Seek::rewind(&mut file).unwrap();
        file.read_to_end(&mut record).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(record == journal_message(&line), "the record, {} bytes", record.len());
        let fields = parse(&record);
        let get = |k: &str| &fields.iter().find(|(n, _)| n == k).unwrap_or_else(|| panic!("no {k}")).1;
        assert!(get("IMDS_GUARD_JSON") == line.out.as_bytes(), "the record itself, whole");
        for (k, v) in &fields {
            assert!(k == "IMDS_GUARD_JSON" || v.len() <= FIELD_MAX, "{k}: {} bytes", v.len());
        }
        // The executable's identity: its file name, and a digest of the whole path.
        let message = String::from_utf8(get("MESSAGE").clone()).unwrap();
        assert!(message.contains("…[cut "), "{message}");
        let exe = String::from_utf8(get("IMDS_GUARD_EXE").clone()).unwrap();
        assert!(exe.ends_with("/evil") && exe.starts_with("/tmp/"), "{exe}");
        assert!(String::from_utf8_lossy(get("IMDS_GUARD_ANCESTORS")).contains("sha256:"));
    }
}
