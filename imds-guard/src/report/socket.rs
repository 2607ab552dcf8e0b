//! The daemon's local event socket, for `imds-guard events` and `imds-guard suggest`.
//!
//! A Unix stream socket, mode 0600 in a 0700 directory (events name processes and users: they
//! are for root). A client sends one request line and reads JSON lines back:
//! - `recent`: the last events (up to [`super::sinks::RECENT`]), then the connection closes;
//! - `follow`: the same, then every new event as it happens; a client too slow to keep up gets a
//!   `{"event":"stream_lagged","missed":N}` line in place of what it missed;
//! - `observed`: one object, `{"policy": <path>, "table": <what was seen without a rule>}`.
//!
//! Bounded whoever connects: at most [`MAX_CLIENTS`] at once (more wait in the kernel's backlog,
//! holding no descriptor of ours), a request line of at most [`MAX_REQUEST`] bytes within 5 s
//! (else the client is dropped), and one `observed` answer made at a time.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

use super::{Consumers, Event, Line, event::StreamLagged};

pub const DEFAULT_SOCKET: &str = "/run/imds-guard/events.sock";

/// Clients served at once; followers hold their connection for as long as they follow.
pub const MAX_CLIENTS: usize = 64;
/// Bytes of a request line, newline included (the longest request is 9).
pub const MAX_REQUEST: usize = 64;

/// Binds the event socket at `path` (mode 0600): [`bind_mode`].
pub fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    bind_mode(path, 0o600)
}

/// Binds a Unix socket at `path` with `mode`, replacing a stale one (left by a daemon that was
/// killed) but never a live one (another daemon is serving it). A missing directory is made 0700.
pub fn bind_mode(path: &Path, mode: u32) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("{} is served by another running imds-guard", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    let l = std::os::unix::net::UnixListener::bind(path)
        .with_context(|| format!("listening on the socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    l.set_nonblocking(true)?;
    Ok(tokio::net::UnixListener::from_std(l)?)
}

/// Serves clients until the runtime ends.
pub async fn serve(listener: tokio::net::UnixListener, hub: Arc<Consumers>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    let observed = Arc::new(tokio::sync::Semaphore::new(1));
    loop {
        // A slot first, then accept: past MAX_CLIENTS, connections wait in the kernel's backlog.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and the like: the daemon goes on; the client is let go.
                tracing::warn!("event socket: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let hub = hub.clone();
        let observed = observed.clone();
        tokio::spawn(async move {
            if let Err(e) = client(stream, &hub, &observed).await {
                tracing::debug!("event socket client: {e}");
            }
            drop(slot);
        });
    }
}

/// The request line: at most [`MAX_REQUEST`] bytes, ending in a newline, within 5 s.
async fn request_line(r: impl tokio::io::AsyncRead + Unpin) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt as _;
    let mut request = Vec::new();
    let mut r = tokio::io::BufReader::new(r.take(MAX_REQUEST as u64));
    tokio::time::timeout(std::time::Duration::from_secs(5), r.read_until(b'\n', &mut request))
        .await
        .map_err(|_| std::io::Error::other("no request within 5 s"))??;
    if request.last() != Some(&b'\n') {
        return Err(std::io::Error::other(format!("no request line within {MAX_REQUEST} bytes")));
    }
    Ok(String::from_utf8_lossy(&request).into_owned())
}

async fn client(
    stream: tokio::net::UnixStream,
    hub: &Consumers,
    observed: &tokio::sync::Semaphore,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let request = request_line(r).await?;
    match request.trim() {
        "observed" => {
            // One at a time: the answer is the size of the table (bounded in bytes, seen.rs).
            let _one = observed.acquire().await.map_err(std::io::Error::other)?;
            // Written in pieces: the table is not copied again into one body.
            let policy = serde_json::Value::String(hub.policy.display().to_string());
            let table = hub.seen.to_json();
            w.write_all(format!("{{\"policy\":{policy},\"table\":").as_bytes()).await?;
            w.write_all(table.as_bytes()).await?;
            w.write_all(b"}\n").await?;
        }
        req @ ("recent" | "follow") => {
            let (recent, mut live) = hub.output.subscribe();
            for line in recent {
                w.write_all(line.as_bytes()).await?;
                w.write_all(b"\n").await?;
            }
            if req == "follow" {
                while let Some((missed, lines)) = live.next(&hub.output).await {
                    if missed > 0 {
                        let notice = Line::of(Event::StreamLagged(StreamLagged { missed }));
                        w.write_all(format!("{}\n", notice.json).as_bytes()).await?;
                    }
                    for line in lines {
                        w.write_all(line.as_bytes()).await?;
                        w.write_all(b"\n").await?;
                    }
                }
            }
        }
        other => {
            let error = serde_json::json!({ "error": format!("unknown request {other:?}") });
            w.write_all(format!("{error}\n").as_bytes()).await?;
        }
    }
    w.shutdown().await
}

/// Client side: sends `request` and calls `each` with every line until the daemon closes.
pub fn request(socket: &Path, request: &str, mut each: impl FnMut(&str) -> bool) -> anyhow::Result<()> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!("connecting to the daemon's event socket {} (is `imds-guard run` running?)", socket.display())
    })?;
    s.write_all(format!("{request}\n").as_bytes())?;
    for line in BufReader::new(s).lines() {
        if !each(&line?) {
            break;
        }
    }
    Ok(())
}

/// Where the `--events-socket` argument points; `none` disables the socket.
#[must_use]
pub fn socket_path(arg: &Path) -> Option<PathBuf> {
    (arg != Path::new("none")).then(|| arg.to_owned())
}
