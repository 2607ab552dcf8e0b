//! The daemon's local event socket, for `imds-guard events` and `imds-guard suggest`.
//!
//! A Unix stream socket, mode 0600 in a 0700 directory (events name processes and users: they
//! are for root). A client sends one request line and reads JSON lines back:
//! - `recent`: the last events (up to [`super::sinks::RECENT`]), then the connection closes;
//! - `follow`: the same, then every new event as it happens; a client too slow to keep up gets a
//!   `{"event":"stream_lagged","missed":N}` line in place of what it missed;
//! - `observed`: one object, `{"policy": <path>, "table": <what was seen without a rule>}`.

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

/// Binds the socket at `path`, replacing a stale one (left by a daemon that was killed) but never
/// a live one (another daemon is serving it).
pub fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
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
        .with_context(|| format!("listening on the event socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    Ok(tokio::net::UnixListener::from_std(l)?)
}

/// Serves clients until the runtime ends.
pub async fn serve(listener: tokio::net::UnixListener, hub: Arc<Consumers>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("event socket: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            if let Err(e) = client(stream, &hub).await {
                tracing::debug!("event socket client: {e}");
            }
        });
    }
}

async fn client(stream: tokio::net::UnixStream, hub: &Consumers) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut request = String::new();
    let mut r = tokio::io::BufReader::new(r);
    tokio::time::timeout(std::time::Duration::from_secs(5), r.read_line(&mut request))
        .await
        .map_err(|_| std::io::Error::other("no request"))??;
    match request.trim() {
        "observed" => {
            let body = serde_json::json!({
                "policy": hub.policy.display().to_string(),
                "table": hub.seen.snapshot(),
            });
            w.write_all(format!("{body}\n").as_bytes()).await?;
        }
        req @ ("recent" | "follow") => {
            let (recent, mut live) = hub.output.subscribe();
            for line in recent {
                w.write_all(line.as_bytes()).await?;
                w.write_all(b"\n").await?;
            }
            if req == "follow" {
                loop {
                    match live.recv().await {
                        Ok(line) => {
                            w.write_all(line.as_bytes()).await?;
                            w.write_all(b"\n").await?;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            let notice = Line::of(Event::StreamLagged(StreamLagged { missed: n }));
                            w.write_all(format!("{}\n", notice.json).as_bytes()).await?;
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    }
                }
            }
        }
        other => {
            w.write_all(format!("{{\"error\":\"unknown request {other:?}\"}}\n").as_bytes()).await?;
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
